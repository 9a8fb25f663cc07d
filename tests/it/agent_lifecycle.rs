//! The agent as a whole process: a source that cannot start is left out and reported while the
//! rest runs (the app socket taken by a second agent on the host), and a fatal error in one of
//! its loops ends the process non-zero instead of leaving it alive and useless.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Backend, Env, InProcess, Process, enroll, eventually};

fn agent_args(url: &str, node: &str, key: &str, data_dir: &Path, socket: &str) -> Vec<String> {
    [
        "agent",
        "--controller",
        url,
        "--node",
        node,
        "--key",
        key,
        "--interval",
        "200ms",
        "--data-dir",
        &data_dir.display().to_string(),
        "--app-socket",
        socket,
    ]
    .map(String::from)
    .to_vec()
}

/// The newest records of `node`'s `collector` in the hot ring.
async fn recent(ctl: &InProcess, node: &str, collector: &str) -> Vec<serde_json::Value> {
    let (status, body) = ctl
        .client()
        .get(&format!("/api/v1/nodes/{node}/recent/{collector}?limit=10"))
        .await;
    if status != 200 {
        return Vec::new();
    }
    body["records"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_host_ships_its_records_and_reports_the_taken_app_socket() {
    let env = Env::new(Backend::Embedded).await;
    let first_key = enroll(&env, "first");
    let second_key = enroll(&env, "second");
    let ctl = InProcess::start(env.controller_config()).await;
    let dir = env.dir.path();
    let socket = format!("fleettest-taken-{}", ulid::Ulid::new());
    let first = Process::spawn(
        &agent_args(&ctl.url, "first", &first_key, &dir.join("a1"), &socket),
        &dir.join("agent-first.log"),
    );
    eventually(
        Duration::from_secs(20),
        "the first agent to listen on the app socket",
        || async {
            first
                .log_text()
                .contains("app socket listening")
                .then_some(())
        },
    )
    .await;

    // The second agent on the host gets the same socket name: taken.
    let mut second = Process::spawn(
        &agent_args(&ctl.url, "second", &second_key, &dir.join("a2"), &socket),
        &dir.join("agent-second.log"),
    );
    let report = eventually(
        Duration::from_secs(20),
        "the second agent's first record",
        || async {
            recent(&ctl, "second", "agent")
                .await
                .first()
                .map(|r| r["data"].clone())
        },
    )
    .await;
    let broken = report["broken_sources"].as_array().expect("broken_sources");
    assert_eq!(broken.len(), 1, "{report}");
    assert_eq!(
        broken[0]["source"],
        format!("app_socket @{socket}"),
        "{report}"
    );
    let error = broken[0]["error"].as_str().unwrap();
    for words in ["another agent", "--app-socket", "[app_socket]"] {
        assert!(error.contains(words), "{words:?} in {error}");
    }
    assert_eq!(
        report["sources"], 4,
        "the four host collectors run: {report}"
    );
    // Its collectors keep shipping, tick after tick, and the process lives on.
    eventually(
        Duration::from_secs(20),
        "several system records from the second agent",
        || async { (recent(&ctl, "second", "system").await.len() >= 3).then_some(()) },
    )
    .await;
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the second agent runs:\n{}",
        second.log_text()
    );
    assert!(second.terminate(), "{}", second.log_text());
    ctl.stop().await;
}

/// A fatal error provoked for real: the spool directory is removed under a running agent
/// (`rm -rf DATA_DIR/spool`). The next batch cannot be written, and no retry could ever write
/// one: every loop stops and the process exits non-zero (before, collection stopped for good
/// while the command loop kept the process alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_spool_is_gone_stops_all_its_loops_and_exits_non_zero() {
    let env = Env::new(Backend::Embedded).await;
    let key = enroll(&env, "doomed");
    let ctl = InProcess::start(env.controller_config()).await;
    let dir = env.dir.path();
    let data_dir = dir.join("agent");
    let socket = format!("fleettest-doomed-{}", ulid::Ulid::new());
    let mut agent = Process::spawn(
        &agent_args(&ctl.url, "doomed", &key, &data_dir, &socket),
        &dir.join("agent.log"),
    );
    eventually(
        Duration::from_secs(20),
        "the agent's system records",
        || async { (!recent(&ctl, "doomed", "system").await.is_empty()).then_some(()) },
    )
    .await;
    assert!(agent.child.try_wait().unwrap().is_none());

    std::fs::remove_dir_all(data_dir.join("spool")).unwrap();
    let status = eventually(Duration::from_secs(20), "the agent to exit", || {
        let exited = agent.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let log = agent.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("spool"), "{log}");
    assert!(log.contains("the agent stops"), "{log}");
    ctl.stop().await;
}
