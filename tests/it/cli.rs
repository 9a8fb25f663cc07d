//! The command line on a new user's path (issue 16): `operator keygen` into a directory that
//! does not exist yet, `node add | list | remove` that never create a store by accident and say
//! which one they used, the agent config `node add` prints, the CLI clients' defaults (the
//! local controller and its token file, sent nowhere else), `node list`'s columns and
//! `operator password` on an empty stdin.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Env, FLEET, InProcess, Process, eventually, run_fleet};

/// Runs `fleet` in `dir` with none of the variables that would name a controller, a token or a
/// store; returns (success, stdout, stderr).
fn fleet_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = clean(Command::new(FLEET), dir)
        .args(args)
        .output()
        .expect("run fleet");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `command` in `dir` without the `FLEET_*` variables a developer's shell may have set.
fn clean(mut command: Command, dir: &Path) -> Command {
    command.current_dir(dir);
    for var in [
        "FLEET_CONTROLLER",
        "FLEET_API_TOKEN",
        "FLEET_NODE",
        "FLEET_NODE_KEY",
        "FLEET_NATS_URL",
        "FLEET_CONFIG",
        "FLEET_DATA_DIR",
        "FLEET_DATABASE_URL",
        "FLEET_SIGNING_KEY",
        "FLEET_CA_CERT",
    ] {
        command.env_remove(var);
    }
    command
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_makes_missing_directories_private_and_says_what_really_failed() {
    let dir = tempfile::tempdir().unwrap();
    // As the README writes it, on a machine where ~/.fleet does not exist yet.
    let key = dir.path().join("home/.fleet/operator.key");
    let (ok, public, err) = fleet_in(
        dir.path(),
        &["operator", "keygen", "--out", key.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(public.starts_with("ed25519:"), "{public}");
    assert_eq!(mode_of(&dir.path().join("home")), 0o700);
    assert_eq!(mode_of(&dir.path().join("home/.fleet")), 0o700);
    assert_eq!(mode_of(&key), 0o600);

    // The file is there: that, and only that, is what --force is for.
    let before = std::fs::read(&key).unwrap();
    let (ok, _, err) = fleet_in(
        dir.path(),
        &["operator", "keygen", "--out", key.to_str().unwrap()],
    );
    assert!(!ok && err.contains("exists already: pass --force"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "nothing was changed");

    // Anything else is said as it is, without the --force hint.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (ok, _, err) = fleet_in(
        dir.path(),
        &[
            "operator",
            "keygen",
            "--out",
            file.join("sub/operator.key").to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains(&format!("{} is a file, not a directory", file.display())),
        "{err}"
    );
    assert!(!err.contains("--force"), "{err}");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    let (ok, _, err) = fleet_in(
        dir.path(),
        &[
            "operator",
            "keygen",
            "--out",
            locked.join("operator.key").to_str().unwrap(),
        ],
    );
    // root may write anywhere: then the key is simply made.
    if !ok {
        assert!(
            err.contains("cannot create") && !err.contains("--force"),
            "{err}"
        );
    }
}

#[test]
fn node_commands_refuse_a_store_that_does_not_exist_and_name_the_one_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("fleet-data/fleet.db");
    // Run from a directory where no controller keeps its data: refused, nothing made.
    for args in [
        vec!["node", "add", "web1"],
        vec!["node", "list"],
        vec!["node", "remove", "web1"],
    ] {
        let (ok, out, err) = fleet_in(dir.path(), &args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            err.contains(&format!("no store at {}", store.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains("--data-dir"), "{err}");
        if args[1] != "remove" {
            assert!(err.contains("--create"), "{err}");
        }
        assert!(
            !dir.path().join("fleet-data").exists(),
            "{args:?} made a data dir"
        );
    }
    // The same for a SQLite URL naming a file that is not there, even one SQLite may create.
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("other/x.db").display()
    );
    let (ok, _, err) = fleet_in(dir.path(), &["node", "list", "--database-url", &url]);
    assert!(!ok && err.contains("no store at"), "{err}");
    assert!(!dir.path().join("other").exists());

    // --create says a new store is meant; each command names the store.
    let (ok, out, err) = fleet_in(dir.path(), &["node", "add", "web1", "--create"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "enrolled node web1 in the store {}",
            store.display()
        )),
        "{out}"
    );
    assert!(store.exists());
    // Once it exists, no --create is needed.
    let (ok, _, err) = fleet_in(dir.path(), &["node", "add", "web2"]);
    assert!(ok, "{err}");
    let (ok, out, err) = fleet_in(dir.path(), &["node", "list"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("nodes of the store {}", store.display())),
        "{err}"
    );
    assert!(out.contains("web1") && out.contains("web2"), "{out}");
    let (ok, out, err) = fleet_in(dir.path(), &["node", "remove", "web2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("from the store {}", store.display())),
        "{out}"
    );
}

/// The uncommented part of a printed config, as the agent reads it.
fn agent_config(text: &str) -> fleet::config::AgentConfig {
    let config: fleet::config::AgentConfig =
        toml::from_str(text).unwrap_or_else(|e| panic!("not an agent config: {e}\n{text}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_config_node_add_prints_works_as_printed() {
    let env = Env::new(crate::harness::Backend::Embedded).await;
    // A URL TOML must escape: pasted as it was, the config would not even parse.
    let odd = "http://127.0.0.1:1/a\"b\\c";
    let mut args: Vec<String> = ["node", "add", "odd", "--create", "--controller-url", odd]
        .map(String::from)
        .to_vec();
    args.extend(env.store_flags());
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{err}");
    let printed = out
        .split_once("\n\n")
        .expect("the config follows a blank line")
        .1;
    let config = agent_config(printed);
    assert_eq!(config.controller, odd);
    assert_eq!(config.node, "odd");

    // The commented variants: a second agent on this host (its own data dir and app socket)
    // and commands, uncommented as the comments say.
    let operator = fleet::command::OperatorKey::generate().public();
    let variant: String = printed
        .lines()
        .filter(|l| !l.starts_with("data_dir = "))
        .map(|l| {
            let bare = l.strip_prefix("# ").unwrap_or(l);
            let is_toml = bare.starts_with('[')
                || bare
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if is_toml {
                bare.replace("ed25519:…", &operator)
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let second = agent_config(&variant);
    assert_eq!(
        second.data_dir,
        std::path::PathBuf::from("/var/lib/fleet-agent-odd")
    );
    assert_eq!(second.app_socket.name, "fleet-odd");
    assert_eq!(second.commands.trusted_keys, vec![operator]);
    assert_eq!(second.commands.allow, ["uptime", "systemctl restart *"]);

    // And the config of a real node reaches a running controller as printed (its data dir
    // moved into this test's own: the printed one is the system's).
    let mut config = env.controller_config();
    config.registry_refresh = Duration::from_millis(200);
    let ctl = InProcess::start(config).await;
    let mut args: Vec<String> = ["node", "add", "web1", "--controller-url", &ctl.url]
        .map(String::from)
        .to_vec();
    args.extend(env.store_flags());
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{err}");
    let file = env.dir.path().join("agent.toml");
    std::fs::write(&file, out.split_once("\n\n").unwrap().1).unwrap();
    let agent_dir = env.dir.path().join("agent");
    let mut agent = Process::spawn(
        &[
            "agent".into(),
            "--config".into(),
            file.display().to_string(),
            "--data-dir".into(),
            agent_dir.display().to_string(),
        ],
        &env.dir.path().join("agent.log"),
    );
    let client = ctl.client();
    eventually(
        Duration::from_secs(20),
        "the agent's first batch",
        || async {
            let (_, nodes) = client.get("/api/v1/nodes").await;
            nodes["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == "web1" && !n["last_seen"].is_null())
                .then_some(())
        },
    )
    .await;
    assert!(agent.terminate(), "{}", agent.log_text());
    ctl.stop().await;
}

#[test]
fn node_list_columns_line_up() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a-node-name-longer-than-the-old-thirty-two-column";
    for args in [
        vec!["node", "add", "w1", "--create", "--label", "role=web"],
        vec!["node", "add", long, "--allow", "10.0.0.0/8"],
    ] {
        let (ok, _, err) = fleet_in(dir.path(), &args);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = fleet_in(dir.path(), &["node", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for column in ["SOURCE", "ALLOW", "LABELS"] {
        let at = lines[0].find(column).unwrap();
        for line in &lines[1..] {
            let Some(cell) = line.get(at..).filter(|c| !c.is_empty()) else {
                continue; // no labels
            };
            assert!(
                !cell.starts_with(' ') && line.as_bytes()[at - 1] == b' ',
                "{column} is not aligned:\n{out}"
            );
        }
    }
}

#[test]
fn operator_password_says_an_empty_stdin_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let output = clean(Command::new(FLEET), dir.path())
        .args(["operator", "password", "alice"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("stdin is empty: pipe the password in"),
        "{err}"
    );
}

/// The CLI clients without --controller, --api-token or their variables, run where the quick
/// start's controller keeps its data: they use it, and say so. Run in a network namespace of
/// its own (`unshare -rn`), where the default address 127.0.0.1:7070 is this test's alone.
#[test]
fn the_clients_default_to_the_local_controller_and_its_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
set -e
ip link set lo up
"$FLEET" controller >controller.log 2>&1 &
controller=$!
trap 'kill $controller; wait $controller' EXIT
# Until it answers: the token file is written and an authenticated request succeeds.
tries=0
until [ -s fleet-data/operator-token ] && "$FLEET" events --limit 1 >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -gt 600 ]; then echo "the controller did not start" >&2; cat controller.log >&2; exit 1; fi
  sleep 0.05
done
"$FLEET" pulse backup --next-in 1d >pulse.out 2>pulse.err
"$FLEET" run --heartbeat nightly --next-in 1d -- true >run.out 2>run.err
"$FLEET" events >events.out 2>events.err
"$FLEET" send --status 01ARZ3NDEKTSV4RRFFQ69G5FAV >send.out 2>send.err || true
"#;
    let mut command = clean(Command::new("unshare"), dir.path());
    let output = command
        .args(["-rn", "sh", "-c", script])
        .env("FLEET", FLEET)
        .env("FLEET_LOG", "warn")
        .output()
        .expect("run unshare");
    assert!(
        output.status.success(),
        "this test needs `unshare -rn` (user and network namespaces): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let said = "using the controller at http://127.0.0.1:7070 and the operator token in ./fleet-data/operator-token";
    for client in ["pulse", "run", "events", "send"] {
        let err = read(&format!("{client}.err"));
        assert!(err.contains(said), "{client}: {err}");
    }
    assert!(
        read("pulse.out").starts_with("backup: new"),
        "{}",
        read("pulse.out")
    );
    // Authenticated: the controller looked the id up (an unknown one), it did not refuse.
    assert!(
        read("send.err").contains("404 Not Found: no command"),
        "{}",
        read("send.err")
    );
}

/// The default token file goes to the default controller only: another URL, from a flag or a
/// variable, gets no token unless one is given for it.
#[test]
fn the_default_token_file_is_never_sent_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fleet-data")).unwrap();
    std::fs::write(
        dir.path().join("fleet-data/operator-token"),
        "fleet_local-secret\n",
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let elsewhere = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    for args in [
        vec!["events", "--controller", &elsewhere],
        vec![
            "send",
            "--status",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "--controller",
            &elsewhere,
        ],
    ] {
        let (ok, _, err) = fleet_in(dir.path(), &args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(&format!("no operator token for {elsewhere}")),
            "{args:?}: {err}"
        );
    }
    let output = clean(Command::new(FLEET), dir.path())
        .args(["pulse", "backup", "--next-in", "1d"])
        .env("FLEET_CONTROLLER", &elsewhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("no credentials"),
        "{err}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a client connected to {elsewhere}"
    );
    // Without a token file, the default controller is still said, and the missing token named
    // (before any connection is tried).
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = fleet_in(empty.path(), &["events"]);
    assert!(!ok);
    assert!(
        err.contains("using the controller at http://127.0.0.1:7070 (the default"),
        "{err}"
    );
    assert!(err.contains("no operator token"), "{err}");
}
