//! Enrollment: `fleet node add | list | remove` against a running controller, static nodes in
//! the config file, and config errors that name the key.

use std::time::{Duration, Instant};

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, eventually, run_fleet};

async fn node_add_and_remove_take_effect_on_a_running_controller(backend: Backend) {
    let env = Env::new(backend).await;
    // The default refresh (2 s): the promise is "within 5 s" with the shipped settings.
    let ctl = InProcess::start(env.controller_config()).await;
    let client = ctl.client();

    let mut args: Vec<String> = [
        "node",
        "add",
        "db1",
        "--allow",
        "127.0.0.0/8",
        "--label",
        "role=db",
    ]
    .map(String::from)
    .to_vec();
    args.extend(env.store_flags());
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("the key is printed")
        .to_owned();
    assert!(
        out.contains("node = \"db1\""),
        "a ready agent config is printed: {out}"
    );

    let added = Instant::now();
    let mut seq = 0;
    eventually(
        Duration::from_secs(5),
        "the new node to be accepted",
        || {
            seq += 1;
            let batch = Batch::new("db1", &key, seq);
            let client = &client;
            async move { (client.send(&batch).await.0 == 200).then_some(()) }
        },
    )
    .await;
    assert!(added.elapsed() < Duration::from_secs(5));
    let (_, nodes) = client.get("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["labels"]["role"], "db");

    let mut list = vec!["node".to_owned(), "list".to_owned()];
    list.extend(env.store_flags());
    let (ok, out, _) = run_fleet(&list);
    assert!(
        ok && out.contains("db1") && out.contains("role=db"),
        "{out}"
    );

    // Enrolling the same name twice is refused and changes nothing.
    let (ok, _, err) = run_fleet(&args);
    assert!(!ok && err.contains("already enrolled"), "{err}");

    let mut remove = vec!["node".to_owned(), "remove".to_owned(), "db1".to_owned()];
    remove.extend(env.store_flags());
    let (ok, _, err) = run_fleet(&remove);
    assert!(ok, "{err}");
    let removed = Instant::now();
    let before = ctl.store.stored_sequences("db1").await.unwrap().len();
    let refused_seq = eventually(
        Duration::from_secs(5),
        "the removed node to be refused",
        || {
            seq += 1;
            let batch = Batch::new("db1", &key, seq);
            let client = &client;
            async move { (client.send(&batch).await.0 == 401).then_some(batch.seq) }
        },
    )
    .await;
    assert!(removed.elapsed() < Duration::from_secs(5));
    let stored = ctl.store.stored_sequences("db1").await.unwrap();
    assert!(!stored.iter().any(|(_, s)| *s == refused_seq as i64));
    assert!(stored.len() >= before);

    let (ok, _, err) = run_fleet(&remove);
    assert!(!ok && err.contains("no node named db1"), "{err}");
    // Its heartbeat is withdrawn, not reported: batches still accepted before the registry
    // caught up do not bring it back.
    let beat = ctl
        .store
        .heartbeat("node:db1", fleet::timefmt::now_ms())
        .await
        .unwrap()
        .expect("the node's batches pulsed its heartbeat");
    assert_eq!(beat.state, fleet::heartbeat::HeartbeatState::Cancelled);
    // Enrolled again, it is watched afresh from its first batch.
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("the key is printed")
        .to_owned();
    eventually(Duration::from_secs(8), "the node's heartbeat again", || {
        seq += 1;
        let batch = Batch::new("db1", &key, seq);
        let client = &client;
        let store = &ctl.store;
        async move {
            client.send(&batch).await;
            let beat = store
                .heartbeat("node:db1", fleet::timefmt::now_ms())
                .await
                .unwrap()?;
            (beat.state == fleet::heartbeat::HeartbeatState::New).then_some(())
        }
    })
    .await;
    ctl.stop().await;
}

async fn bad_names_and_cidrs_are_refused_by_node_add(backend: Backend) {
    let env = Env::new(backend).await;
    for bad in [
        vec!["node", "add", "bad name"],
        vec!["node", "add", "ok", "--allow", "10.0.0.0/99"],
        vec!["node", "add", "ok", "--label", "novalue"],
    ] {
        let mut args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
        args.extend(env.store_flags());
        let (ok, _, err) = run_fleet(&args);
        assert!(!ok, "{bad:?} was accepted");
        assert!(!err.is_empty());
    }
    // Nothing was written: on SQLite not even the store, which `node list` will not create.
    let mut list = vec!["node".to_owned(), "list".to_owned()];
    list.extend(env.store_flags());
    if backend == Backend::Embedded {
        let (ok, _, err) = run_fleet(&list);
        assert!(!ok && err.contains("no store at"), "{err}");
    }
    list.push("--create".into());
    let (_, out, _) = run_fleet(&list);
    assert!(out.contains("no nodes enrolled"), "{out}");
}

both_backends!(
    node_add_and_remove_take_effect_on_a_running_controller,
    bad_names_and_cidrs_are_refused_by_node_add,
);

#[test]
fn unknown_config_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n[ingest]\nmax_body = 5\n").unwrap();
    let (ok, _, err) = run_fleet(&[
        "controller".into(),
        "--config".into(),
        path.display().to_string(),
    ]);
    assert!(!ok);
    assert!(err.contains("max_body"), "{err}");

    let agent = dir.path().join("agent.toml");
    std::fs::write(
        &agent,
        "controller = \"http://127.0.0.1:1\"\nnode = \"a\"\nkey = \"k\"\nintervall = \"1s\"\n",
    )
    .unwrap();
    let (ok, _, err) = run_fleet(&[
        "agent".into(),
        "--config".into(),
        agent.display().to_string(),
    ]);
    assert!(!ok);
    assert!(err.contains("intervall"), "{err}");
}

/// The subcommands `fleet PATH --help` lists (its `Commands:` section), `help` aside.
fn subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .iter()
        // Entries are indented two spaces; deeper lines continue a description.
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The lines of one section of a help text (`Options:`, `Arguments:` …), up to the next one.
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| l.trim_end() != title)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// Walks every subcommand's `--help` (found from `fleet --help`, so a new one is covered
/// without being listed here) and checks that each flag and each positional argument says what
/// it is for: on its own line after two spaces, or (the long layout) on the next line.
#[test]
fn every_subcommand_explains_its_flags() {
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args = path.clone();
        args.push("--help".into());
        let (ok, out, _) = run_fleet(&args);
        assert!(ok, "{path:?} --help failed");
        let children = subcommands(&out);
        for child in &children {
            let mut sub = path.clone();
            sub.push(child.clone());
            pending.push(sub);
        }
        if !children.is_empty() {
            continue;
        }
        seen += 1;
        for title in ["Options:", "Arguments:"] {
            let lines = section(&out, title);
            for (i, line) in lines.iter().enumerate() {
                let item = line.trim();
                let starts_item = match title {
                    "Options:" => item.starts_with('-'),
                    _ => item.starts_with('<') || item.starts_with('['),
                };
                // An indented description line of the long layout is not an item.
                if !starts_item || line.len() - line.trim_start().len() > 6 {
                    continue;
                }
                let name = item
                    .split_whitespace()
                    .find(|w| w.starts_with("--") || !w.starts_with('-'))
                    .unwrap_or(item);
                if name == "--help" || name == "--version" || name == "-h," || name == "-V," {
                    continue;
                }
                let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
                let explained = item.contains("  ")
                    || (!next.is_empty()
                        && !next.starts_with('-')
                        && !next.starts_with('<')
                        && !next.starts_with('['));
                assert!(explained, "{path:?}: {item} has no explanation");
            }
        }
    }
    assert!(seen > 15, "only {seen} subcommands were walked");
}

#[tokio::test]
async fn static_nodes_in_the_config_file_are_accepted() {
    let env = Env::new(Backend::Embedded).await;
    let path = env.dir.path().join("controller.toml");
    std::fs::write(
        &path,
        "[[nodes]]\nname = \"edge1\"\nkey = \"static-key-0123456789\"\nallow = [\"127.0.0.1/32\"]\nlabels = { role = \"edge\" }\n",
    )
    .unwrap();
    let mut config: fleet::config::ControllerConfig = fleet::config::load_toml(&path).unwrap();
    let base = env.controller_config();
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config.database_url = base.database_url;
    let ctl = InProcess::start(config).await;
    let (status, _) = ctl
        .client()
        .send(&Batch::new("edge1", "static-key-0123456789", 1))
        .await;
    assert_eq!(status, 200);
    let (_, nodes) = ctl.client().get("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["source"], "config");
    assert_eq!(nodes["nodes"][0]["labels"]["role"], "edge");
    ctl.stop().await;
}
