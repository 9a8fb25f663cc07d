//! Files and permissions (issue 14, point 11): a controller, an agent and `fleet operator
//! keygen` started from a shell with umask 022 leave nothing under their data dirs that other
//! users (or the group) can read, and a store or data dir that others can read is refused at
//! start with the `chmod` that fixes it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{FLEET, Process, eventually, free_port, wait_healthy};

/// `sh -c 'umask 022; exec fleet ARGS…'`: fleet started as from an ordinary login shell.
fn under_umask_022(args: &[String]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"umask 022 && exec "$0" "$@""#)
        .arg(FLEET)
        .args(args)
        .env("FLEET_LOG", "fleet=debug,warn")
        .env(
            "FLEET_APP_SOCKET",
            format!("fleettest_{:016x}", rand::random::<u64>()),
        )
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_DATABASE_URL")
        .env_remove("FLEET_REDIS_URL");
    command
}

fn spawn_022(args: &[String], log: &Path) -> Process {
    let out = std::fs::File::create(log).expect("create the log file");
    let child = under_umask_022(args)
        .stdout(out.try_clone().expect("clone the log handle"))
        .stderr(out)
        .spawn()
        .expect("start fleet");
    Process {
        child,
        log: log.to_owned(),
    }
}

/// Runs fleet to completion under umask 022: (success, stdout, stderr).
fn run_022(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = under_umask_022(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run fleet");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every path under `root` (itself included) with its permission bits.
fn modes_under(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile (a spool file acknowledged)
        };
        out.push((path.clone(), meta.mode() & 0o7777));
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out
}

fn assert_private(root: &Path, expected: &[&str]) {
    let modes = modes_under(root);
    let open: Vec<String> = modes
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .map(|(p, mode)| format!("{} {mode:04o}", p.display()))
        .collect();
    assert!(
        open.is_empty(),
        "group or other bits under {}: {open:?}",
        root.display()
    );
    // What the test is about is really there: a check of an empty dir proves nothing.
    for name in expected {
        assert!(
            modes.iter().any(|(p, _)| p == &root.join(name)),
            "{} was not written; the tree: {:?}",
            root.join(name).display(),
            modes
        );
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A scratch dir whose own mode does not matter (tempfile makes it with the umask's); and
/// rustls's provider for the test's HTTP clients.
fn scratch() -> tempfile::TempDir {
    fleet::install_crypto();
    tempfile::tempdir().expect("a temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_and_an_agent_started_under_umask_022_write_nothing_others_can_read() {
    let dir = scratch();
    let root = dir.path();
    let data = root.join("controller");
    let agent_dir = root.join("agent");

    // An operator key, as `fleet operator keygen` writes it.
    let key_file = root.join("operator.key");
    let key_arg = key_file.display().to_string();
    let (ok, _, err) = run_022(&["operator", "keygen", "--out", &key_arg]);
    assert!(ok, "{err}");
    assert_eq!(mode_of(&key_file), 0o600, "the secret key");
    // Replaced with --force over a file someone left readable: private again.
    chmod(&key_file, 0o644);
    let (ok, public, err) = run_022(&["operator", "keygen", "--force", "--out", &key_arg]);
    assert!(ok, "{err}");
    assert_eq!(
        mode_of(&key_file),
        0o600,
        "the secret key replaced with --force"
    );
    let public = public.trim().to_owned();

    // The controller on the embedded store in its data dir (no --database-url).
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut controller = spawn_022(
        &[
            "controller".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        &root.join("controller.log"),
    );
    wait_healthy(&url).await;
    let token = std::fs::read_to_string(data.join("operator-token"))
        .expect("the first token is saved in the data dir")
        .trim()
        .to_owned();
    let (ok, out, err) = run_022(&["node", "add", "web1", "--data-dir", &data.to_string_lossy()]);
    assert!(ok, "{err}");
    let node_key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("node add prints the key")
        .to_owned();

    // The agent: commands (journal, events log) and a log tail (its positions file).
    let app_log = root.join("app.log");
    std::fs::write(&app_log, "first line\n").unwrap();
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[commands]\ntrusted_keys = [{public:?}]\nallow = [\"sh -c *\"]\npoll_timeout = \"5s\"\n\
             [[logs]]\nname = \"app\"\npaths = [{:?}]\nfrom_beginning = true\n",
            app_log.display().to_string()
        ),
    )
    .unwrap();
    let mut agent = spawn_022(
        &[
            "agent",
            "--config",
            &config.display().to_string(),
            "--controller",
            &url,
            "--node",
            "web1",
            "--key",
            &node_key,
            "--interval",
            "200ms",
            "--data-dir",
            &agent_dir.display().to_string(),
        ]
        .map(String::from),
        &root.join("agent.log"),
    );

    let send = |args: &[&str]| {
        let output = Command::new(FLEET)
            .arg("send")
            .args(["--node", "web1"])
            .args(args)
            .env("FLEET_CONTROLLER", &url)
            .env("FLEET_API_TOKEN", &token)
            .env("FLEET_SIGNING_KEY", &key_file)
            .env_remove("FLEET_NATS_URL")
            .output()
            .expect("run fleet send");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // What a command creates is as it would be outside fleet: it runs with the umask the
    // agent was started with, not the agent's own 077.
    let (code, out, err) = send(&["--", "sh", "-c", "umask"]);
    assert_eq!(code, 0, "{err}\n{}", agent.log_text());
    assert_eq!(out.trim(), "0022", "a command's umask");
    let (code, _, err) = send(&[
        "--method",
        "TextLogging",
        "--",
        "into",
        "the",
        "events",
        "log",
    ]);
    assert_eq!(code, 0, "{err}");
    eventually(
        Duration::from_secs(20),
        "the tail's positions saved",
        || {
            let saved = agent_dir.join("tail-app.json").exists();
            async move { saved.then_some(()) }
        },
    )
    .await;

    // While both run: SQLite's -wal and -shm are there too.
    assert_private(
        &data,
        &["fleet.db", "fleet.db-wal", "fleet.db-shm", "operator-token"],
    );
    assert_private(
        &agent_dir,
        &[
            "instance",
            "seq",
            "spool",
            "commands",
            "commands/commands.journal",
            "events.log",
            "tail-app.json",
        ],
    );

    assert!(agent.terminate(), "{}", agent.log_text());
    assert!(controller.terminate(), "{}", controller.log_text());
    assert_private(&data, &["fleet.db", "operator-token"]);
    assert_private(
        &agent_dir,
        &["instance", "seq", "commands/commands.journal"],
    );
}

/// Makes a store the way an earlier version left it: created by fleet, then opened up.
fn make_store(data: &Path) {
    let (ok, _, err) = run_022(&[
        "node",
        "add",
        "web1",
        "--create",
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(mode_of(data), 0o700);
    assert_eq!(mode_of(&data.join("fleet.db")), 0o600);
}

/// Starts a controller on `data`; returns its process once healthy, or its failure's stderr.
async fn start_controller(data: &Path, log: &Path) -> Result<Process, String> {
    let port = free_port();
    let mut process = spawn_022(
        &[
            "controller".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        log,
    );
    let exited = eventually(
        Duration::from_secs(20),
        "the controller to start or stop",
        || {
            let exited = process.child.try_wait().unwrap();
            let port_open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            async move {
                match (exited, port_open) {
                    (Some(status), _) => Some(Some(status)),
                    (None, true) => Some(None),
                    (None, false) => None,
                }
            }
        },
    )
    .await;
    match exited {
        None => {
            wait_healthy(&format!("http://127.0.0.1:{port}")).await;
            Ok(process)
        }
        Some(status) => {
            assert!(!status.success(), "the controller exited 0");
            Err(process.log_text())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_other_users_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let dir = scratch();
    let data = dir.path().join("controller");
    make_store(&data);
    let db = data.join("fleet.db");

    chmod(&db, 0o644);
    let refused = start_controller(&data, &dir.path().join("c1.log"))
        .await
        .err()
        .expect("a readable store is refused");
    let fix = format!("run `chmod 600 {}` and start again", db.display());
    assert!(
        refused.contains(&format!(
            "{} is readable by other users (mode 0644); {fix}",
            db.display()
        )),
        "{refused}"
    );
    // Every command that opens the store says the same, and nothing was changed.
    let (ok, _, err) = run_022(&["node", "list", "--data-dir", &data.to_string_lossy()]);
    assert!(!ok && err.contains(&fix), "{err}");
    assert_eq!(mode_of(&db), 0o644);

    // An install made by an earlier version under umask 022: everything open. One command
    // fixes it all, and it is the one the refusal gives.
    chmod(&data, 0o755);
    let refused = start_controller(&data, &dir.path().join("c2.log"))
        .await
        .err()
        .expect("a readable data dir is refused");
    let suggested = refused
        .split("run `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no command in: {refused}"))
        .to_owned();
    assert_eq!(suggested, format!("chmod -R g-w,o-rwx {}", data.display()));
    assert!(
        refused.contains(&format!(
            "{} is readable by other users (mode 0755)",
            data.display()
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!(
            "{} is readable by other users (mode 0644)",
            db.display()
        )),
        "{refused}"
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(&suggested)
        .status()
        .unwrap();
    assert!(status.success());

    let mut controller = start_controller(&data, &dir.path().join("c3.log"))
        .await
        .expect("the fixed data dir is accepted");
    assert!(controller.terminate(), "{}", controller.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_named_by_url_is_created_private_and_refused_when_readable() {
    let dir = scratch();
    let db = dir.path().join("elsewhere").join("my.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let (ok, _, err) = run_022(&["token", "create", "--database-url", &url]);
    assert!(ok, "{err}");
    assert_eq!(mode_of(&db), 0o600, "created private");
    assert_eq!(
        mode_of(db.parent().unwrap()),
        0o700,
        "its new directory too"
    );

    chmod(&db, 0o604);
    let (ok, _, err) = run_022(&["token", "create", "--database-url", &url]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the store {} is readable by other users (mode 0604); run `chmod 600 {}` and start again",
            db.display(),
            db.display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_data_dir_other_users_can_read_is_refused() {
    let dir = scratch();
    let agent_dir = dir.path().join("agent");
    // Made by hand (or by an earlier agent) under umask 022.
    std::fs::create_dir(&agent_dir).unwrap();
    chmod(&agent_dir, 0o755);
    std::fs::write(agent_dir.join("instance"), "01HZZZZZZZZZZZZZZZZZZZZZZZ").unwrap();
    chmod(&agent_dir.join("instance"), 0o600);
    let (ok, _, err) = run_022(&[
        "agent",
        "--controller",
        "http://127.0.0.1:9",
        "--node",
        "web1",
        "--key",
        "0123456789abcdef0123",
        "--data-dir",
        &agent_dir.to_string_lossy(),
    ]);
    assert!(!ok, "the agent started on an open data dir");
    assert!(
        err.contains(&format!(
            "the agent's data dir {} is readable by other users (mode 0755); run `chmod 700 {}` and start again",
            agent_dir.display(),
            agent_dir.display()
        )),
        "{err}"
    );
    // Nothing was written: no spool, no journal.
    assert!(!agent_dir.join("spool").exists());
    assert!(!agent_dir.join("commands").exists());
}

/// ARCHITECTURE.md's invariant for `src/files.rs`, kept by a test rather than by goodwill: no
/// code outside `files.rs` creates a file or directory with the umask's mode. The exceptions
/// are named with their reason.
#[test]
fn nothing_in_src_creates_files_with_the_umask_mode() {
    const ALLOWED: &[(&str, &str, &str)] = &[
        (
            "src/modes/operator.rs",
            "std::fs::write(&pub_path",
            "the public key: meant to be read",
        ),
        (
            "src/executor/journal.rs",
            "self.file = OpenOptions::new()",
            "reopens the journal just renamed into place (created by files::create)",
        ),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("src")];
    let mut found = Vec::new();
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // files.rs is the one place; benchmarks make throwaway temp dirs of their own.
        if !rel.ends_with(".rs") || rel == "src/files.rs" || rel.starts_with("src/modes/bench/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests write fixtures in temp dirs.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let creates = line.contains("File::create(")
                || line.contains("fs::write(")
                || line.contains("create_dir_all(")
                || line.contains("DirBuilder::new()")
                || (line.contains("OpenOptions::new()")
                    && lines[i..lines.len().min(i + 8)]
                        .iter()
                        .any(|l| l.contains(".create(") || l.contains(".create_new(")));
            let excused = ALLOWED
                .iter()
                .any(|(file, needle, _)| *file == rel && line.contains(needle));
            if creates && !excused {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "create these through fleet::files (create_dir, options, create) so they are private \
         whatever the umask:\n{}",
        found.join("\n")
    );
}
