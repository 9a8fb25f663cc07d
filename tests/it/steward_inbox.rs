//! steward's inbox: `fleet send --watch FILE` as a real process against a real controller and
//! agent. Messages appended while it drains are each run once; a watcher killed between sending
//! a drained file and removing it sends the same ids again, which the controller takes once.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::commands::{Rig, TOKEN, lines};
use crate::harness::{Backend, Process, enroll, eventually};

fn watcher(rig: &Rig, inbox: &Path, run: usize) -> Process {
    let args: Vec<String> = [
        "send",
        "--watch",
        &inbox.display().to_string(),
        "--controller",
        &rig.controller.url(),
        "--api-token",
        TOKEN,
        "--signing-key",
        &rig.key_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Process::spawn(&args, &rig.env.dir.path().join(format!("watch-{run}.log")))
}

/// A message in steward's later names, appending `line` to `marker` on `node`.
fn message(node: &str, marker: &Path, line: &str) -> String {
    format!(
        r#"[{{"toNodes": [{node:?}], "method": "REQCliCommand",
             "methodArgs": ["sh", "-c", "echo {line} >> {}"],
             "ACKTimeout": 10, "retries": 1, "methodTimeout": 10, "replyMethod": "REQToFileAppend"}}]
"#,
        marker.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_inbox_runs_each_appended_message_once() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "ship1");
    let config = rig.agent_config("ship1", &["sh -c **"], "");
    let _agent = rig.start_agent("ship1", &key, &config, 1);
    rig.wait_enrolled(&["ship1"]).await;
    let marker = rig.env.dir.path().join("ran");
    let inbox = rig.env.dir.path().join("inmsg.txt");
    let mut watch = watcher(&rig, &inbox, 1);

    // A writer appends twenty messages, some in two writes (a half array for a moment), while
    // the watcher drains the file.
    for i in 0..20 {
        let text = message("ship1", &marker, &format!("m{i}"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&inbox)
            .unwrap();
        if i % 3 == 0 {
            let (a, b) = text.split_at(text.len() / 2);
            file.write_all(a.as_bytes()).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            file.write_all(b.as_bytes()).unwrap();
        } else {
            file.write_all(text.as_bytes()).unwrap();
        }
        drop(file);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran = eventually(
        Duration::from_secs(60),
        "twenty lines on the node",
        || async {
            let ran = lines(&marker);
            (ran.len() >= 20).then_some(ran)
        },
    )
    .await;
    let mut sorted = ran.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "each message once: {ran:?}");
    assert_eq!(ran.len(), 20, "nothing twice: {ran:?}");
    assert!(
        !inbox.exists() || std::fs::metadata(&inbox).unwrap().len() == 0,
        "the inbox was emptied"
    );

    // Killed between sending a drained file and removing it: the file is back where it was
    // when the watcher died, and the next watcher sends it again with the same ids.
    watch.kill();
    let aside = rig
        .env
        .dir
        .path()
        .join(format!("inmsg.txt.draining-{}", fleet::timefmt::now_ms()));
    std::fs::write(&aside, message("ship1", &marker, "once")).unwrap();
    let mut watch = watcher(&rig, &inbox, 2);
    eventually(Duration::from_secs(30), "the drained file sent", || async {
        lines(&marker).contains(&"once".to_owned()).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the drained file removed",
        || async { (!aside.exists()).then_some(()) },
    )
    .await;
    watch.kill();
    std::fs::write(&aside, message("ship1", &marker, "once")).unwrap();
    let _watch = watcher(&rig, &inbox, 3);
    eventually(
        Duration::from_secs(30),
        "the resent file removed",
        || async { (!aside.exists()).then_some(()) },
    )
    .await;
    let commands = rig.api_get("/api/v1/commands?node=ship1").await;
    let commands = commands["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 21, "the resent message is stored once");
    eventually(Duration::from_secs(15), "every command settled", || async {
        let v = rig.api_get("/api/v1/commands?node=ship1").await;
        v["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "succeeded")
            .then_some(())
    })
    .await;
    let once = lines(&marker).iter().filter(|l| *l == "once").count();
    assert_eq!(once, 1, "run once: {:?}", lines(&marker));
}
