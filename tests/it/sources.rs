//! What the agent watches besides the host: the log tail on real files rotated under it, the
//! app socket with a real client process, proof-of-life checks against local servers going up
//! and down, and shell-script plugins. Each source is driven directly (its records are the
//! result); `agent_ships_every_source` runs them all in a real `fleet agent`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet::collectors::logs::LogTail;
use fleet::collectors::{Collected, Collector, Inbox, Probe};
use fleet::config::{AppSocketConfig, CheckConfig, LogConfig, LogFormat, PluginConfig};
use fleet::model::Record;

fn log_config(name: &str, paths: &[&Path]) -> LogConfig {
    LogConfig {
        name: name.into(),
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        format: LogFormat::Raw,
        filter: None,
        vhost: None,
        from_beginning: true,
        ship_lines_per_second: 100_000.0,
        max_line_bytes: 16 * 1024,
        interval: None,
    }
}

fn tail(config: &LogConfig, data_dir: &Path) -> LogTail {
    LogTail::new(config, data_dir, Duration::from_secs(1)).expect("the tail starts")
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The shipped lines of one run, and its `tail.*` document.
fn run(tail: &mut LogTail) -> (Vec<String>, serde_json::Value) {
    let Collected { data, records, .. } = tail.collect().expect("the tail reads");
    let lines = records
        .iter()
        .filter(|r| r.collector.starts_with("logs."))
        .map(|r| r.data["line"].as_str().unwrap_or_default().to_owned())
        .collect();
    (lines, data)
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> (String, Vec<String>) {
    let list: Vec<String> = range.map(|i| format!("{prefix} {i}")).collect();
    let text = list.iter().map(|l| format!("{l}\n")).collect();
    (text, list)
}

#[test]
fn the_tail_follows_appends_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let pattern = dir.path().join("*.log");
    append(&log, "old 1\nold 2\n");
    let mut config = log_config("app", &[&pattern]);
    config.from_beginning = false;
    let mut tail = tail(&config, dir.path());
    let (shipped, doc) = run(&mut tail);
    assert!(
        shipped.is_empty(),
        "a file found at the first start is read from its end"
    );
    assert_eq!(doc["files"].as_array().unwrap().len(), 1);

    append(&log, "a 1\na 2\n");
    assert_eq!(run(&mut tail).0, ["a 1", "a 2"]);

    // An unended line waits for its end.
    append(&log, "half");
    assert!(run(&mut tail).0.is_empty());
    append(&log, " and half\n");
    assert_eq!(run(&mut tail).0, ["half and half"]);

    // logrotate's rename + create: the writer still appends to the old file until it reopens.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "late 1\n");
    append(&log, "new 1\n");
    let (shipped, doc) = run(&mut tail);
    assert_eq!(shipped, ["late 1", "new 1"]);
    assert_eq!(doc["rotations"], 1);
    append(&dir.path().join("app.log.1"), "later\n");
    append(&log, "new 2\n");
    assert_eq!(
        run(&mut tail).0,
        ["later", "new 2"],
        "the old file is read until quiet"
    );
    assert!(run(&mut tail).0.is_empty());

    // copytruncate: the file is copied away and cut to nothing in place, and written again past
    // the old position before the tail looks (only its changed start tells).
    std::fs::copy(&log, dir.path().join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, "after truncate\n");
    let (shipped, doc) = run(&mut tail);
    assert_eq!(shipped, ["after truncate"]);
    assert_eq!(doc["truncations"], 1);

    // A file that appears later is read whole.
    append(&dir.path().join("other.log"), "other 1\n");
    assert_eq!(run(&mut tail).0, ["other 1"]);
}

#[test]
fn a_pattern_that_matches_rotated_names_reads_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // `access.log*` matches the rotated `access.log.1` as well.
    let pattern = dir.path().join("access.log*");
    let mut tail = tail(&log_config("app", &[&pattern]), dir.path());
    append(&log, "one\ntwo\n");
    assert_eq!(run(&mut tail).0, ["one", "two"]);
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    append(&dir.path().join("access.log.1"), "three\n");
    append(&log, "four\n");
    let (shipped, _) = run(&mut tail);
    assert_eq!(
        shipped,
        ["three", "four"],
        "the renamed file is the same file, not a new one"
    );
    append(&dir.path().join("access.log.1"), "five\n");
    assert_eq!(run(&mut tail).0, ["five"]);
    assert!(run(&mut tail).0.is_empty());
}

#[test]
fn lines_rotated_away_while_the_agent_was_down_are_read_and_a_failed_spool_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let config = log_config("app", &[&log]);
    append(&log, "a\nb\n");
    let mut before = tail(&config, dir.path());
    assert_eq!(run(&mut before).0, ["a", "b"]);
    before.committed();
    // The spool could not take the next run: its lines come again.
    append(&log, "c\n");
    assert_eq!(run(&mut before).0, ["c"]);
    before.rolled_back();
    assert_eq!(run(&mut before).0, ["c"]);
    before.committed();
    drop(before);
    // While the agent is down: more lines, then logrotate renames the file (to a name the
    // pattern does not match) and a new one starts.
    append(&log, "d\ne\n");
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&log, "f\n");
    let mut after = tail(&config, dir.path());
    let (mut shipped, _) = run(&mut after);
    shipped.sort();
    assert_eq!(shipped, ["d", "e", "f"]);
    after.committed();
    append(&dir.path().join("app.log.1"), "g\n");
    assert_eq!(
        run(&mut after).0,
        ["g"],
        "the rotated file is followed until quiet"
    );
}

#[test]
fn a_restarted_tail_neither_repeats_nor_skips() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let config = log_config("app", &[&log]);
    let (text, first) = lines("line", 0..50);
    append(&log, &text);
    let mut before = tail(&config, dir.path());
    assert_eq!(run(&mut before).0, first);
    before.committed();
    // Read but never spooled (the agent died first): read again after the restart.
    let (text, second) = lines("line", 50..60);
    append(&log, &text);
    assert_eq!(run(&mut before).0, second);
    drop(before);

    let (text, third) = lines("line", 60..75);
    append(&log, &text);
    let mut after = tail(&config, dir.path());
    let expected: Vec<String> = second.iter().chain(&third).cloned().collect();
    assert_eq!(run(&mut after).0, expected);
    after.committed();
    drop(after);

    // Rotated while the agent was down: the file at the path is new, read from its start.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&log, "fresh\n");
    let mut again = tail(&config, dir.path());
    assert_eq!(run(&mut again).0, ["fresh"]);
}

#[test]
fn a_huge_line_and_binary_garbage_are_bounded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut config = log_config("web", &[&log]);
    config.format = LogFormat::Combined;
    config.max_line_bytes = 4096;
    let mut tail = tail(&config, dir.path());
    // 100 MB without a newline, written in pieces, then the rest of the line and one more.
    {
        let mut file = std::fs::File::create(&log).unwrap();
        let piece = vec![b'x'; 1024 * 1024];
        for _ in 0..100 {
            file.write_all(&piece).unwrap();
        }
    }
    let (shipped, doc) = run(&mut tail);
    assert_eq!(doc["lines"], 1, "the cut line counts once, when cut: {doc}");
    assert_eq!(doc["truncated"], 1);
    assert_eq!(shipped[0].len(), 4096);
    append(&log, "still the same line\nGET nothing\n");
    let mut garbage: Vec<u8> = (0..20_000u32)
        .map(|i| (i * 7919 % 251) as u8)
        .map(|b| if b == b'\n' { b'x' } else { b })
        .collect();
    garbage.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&garbage)
        .unwrap();
    let (_, doc) = run(&mut tail);
    let lines = doc["lines"].as_u64().unwrap();
    assert!(lines >= 2, "{doc}");
    assert_eq!(
        doc["unparsed"].as_u64().unwrap(),
        lines,
        "none of it parses, all counted"
    );
    assert!(
        doc["truncated"].as_u64().unwrap() >= 1,
        "the garbage is cut too: {doc}"
    );
}

#[test]
fn an_access_log_becomes_traffic_and_ships_a_sample_past_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shop.example.access.log");
    let mut config = log_config("nginx", &[&log]);
    config.format = LogFormat::Combined;
    config.vhost = Some("$file".into());
    config.filter = Some(r#"^(?:[^"]*)"(?:GET|POST) "#.into());
    config.ship_lines_per_second = 20.0;
    let mut text = String::new();
    for i in 0..1000 {
        let status = if i % 10 == 0 { 503 } else { 200 };
        text.push_str(&format!(
            "10.0.0.{} - - [01/Dec/2026:10:00:00 +0000] \"GET /item/{i} HTTP/1.1\" {status} 1000 \"-\" \"bench\" 0.010\n",
            i % 250
        ));
    }
    text.push_str(
        "10.0.0.1 - - [01/Dec/2026:10:00:00 +0000] \"HEAD /health HTTP/1.1\" 200 0 \"-\" \"lb\"\n",
    );
    text.push_str("not an access log line\n");
    append(&log, &text);
    let mut tail = tail(&config, dir.path());
    let Collected { data, records, .. } = tail.collect().unwrap();
    assert_eq!(data["lines"], 1002);
    assert_eq!(
        data["filtered_out"], 2,
        "HEAD and the odd line do not match the filter"
    );
    assert_eq!(data["unparsed"], 0);
    let shipped: Vec<&Record> = records
        .iter()
        .filter(|r| r.collector == "logs.nginx")
        .collect();
    assert_eq!(shipped.len(), 20, "one second's worth at 20 lines/s");
    assert_eq!(data["shipped"], 20);
    assert_eq!(data["sampled_out"], 980);
    let paths: Vec<u64> = shipped
        .iter()
        .map(|r| r.data["path"].as_str().unwrap()[6..].parse().unwrap())
        .collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "shipped in the order read"
    );
    assert!(
        *paths.last().unwrap() > 100,
        "a sample of the whole interval: {paths:?}"
    );
    assert_eq!(shipped[0].data["vhost"], "shop.example");
    assert_eq!(
        shipped[0].ts, 1_796_119_200_000,
        "stamped with the request's time"
    );
    let web = records.iter().find(|r| r.collector == "web.nginx").unwrap();
    let value = |name: &str, class: Option<&str>| {
        web.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels["vhost"] == "shop.example"
                    && s.labels.get("class").map(String::as_str) == class
            })
            .unwrap_or_else(|| panic!("{name} {class:?} in {:?}", web.samples))
            .value
    };
    // The first run counts over the configured interval (1 s).
    assert_eq!(value("web.requests_per_second", None), 1000.0);
    assert_eq!(value("web.requests_per_second", Some("5xx")), 100.0);
    assert_eq!(value("web.requests_per_second", Some("2xx")), 900.0);
    assert_eq!(value("web.bytes_per_second", None), 1_000_000.0);
    assert_eq!(value("web.request_time_avg_ms", None), 10.0);
}

// ---- the app socket ---------------------------------------------------------------------

/// A client process: writes `payload` to the abstract socket `@name`, half-closes, and prints
/// the agent's answer.
fn socket_client(name: &str, payload: &[u8]) -> serde_json::Value {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect("\0" + sys.argv[1])
data = sys.stdin.buffer.read()
try:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
except BrokenPipeError:
    pass
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
sys.stdout.write(answer.decode())
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the socket client (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "one answer line, got {text:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap()
}

/// What the agent's collect loop does with the inbox, for a socket served alone: takes what
/// waits and settles it as spooled (or, with `store` false, as not), keeping what it took.
struct Spooler {
    taken: Arc<std::sync::Mutex<Vec<Record>>>,
    store: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Spooler {
    fn start(inbox: Arc<Inbox>) -> Self {
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task = tokio::spawn({
            let (taken, store) = (taken.clone(), store.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = inbox.wanted() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    let (records, receipts) = inbox.drain();
                    let stored = store.load(std::sync::atomic::Ordering::SeqCst);
                    if stored {
                        taken.lock().unwrap().extend(records);
                    }
                    receipts.settle(stored);
                }
            }
        });
        Self { taken, store, task }
    }

    fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.taken.lock().unwrap())
    }
}

impl Drop for Spooler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unique_name(what: &str) -> String {
    format!("fleettest-{what}-{}", ulid::Ulid::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_write_objects_arrays_and_ndjson_and_bad_input_is_answered() {
    let name = unique_name("app");
    let config = AppSocketConfig {
        name: name.clone(),
        ..AppSocketConfig::default()
    };
    let inbox = Arc::new(Inbox::new(10_000, 8 << 20));
    let spooler = Spooler::start(inbox.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sockets = fleet::collectors::app_socket::start(&config, inbox.clone(), stop.clone());
    assert!(sockets.take_broken().is_empty());
    // A second agent on the same name is told so, and what to do about it.
    let broken =
        fleet::collectors::app_socket::start(&config, inbox.clone(), stop.clone()).take_broken();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].0, format!("app_socket @{name}"));
    let err = format!("{:#}", broken[0].1);
    for words in ["another agent", "--app-socket", "[app_socket]"] {
        assert!(err.contains(words), "{words}: {err}");
    }

    let client = |payload: Vec<u8>| {
        let name = name.clone();
        tokio::task::spawn_blocking(move || socket_client(&name, &payload))
    };
    let answer = client(br#"{"collector":"deploy","version":"1.4.2","ts":1764580000}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!({"ok": true, "accepted": 1}));
    let answer = client(
        br#"[{"collector":"orders","metrics":{"open":3}},{"collector":"orders","metrics":{"open":4}}]"#
            .to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(answer["accepted"], 2);
    let answer =
        client(b"{\"collector\":\"jobs\",\"n\":1}\n{\"collector\":\"jobs\",\"n\":2}\n".to_vec())
            .await
            .unwrap();
    assert_eq!(answer["accepted"], 2);
    let got = spooler.take();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].collector, "deploy");
    assert_eq!(got[0].ts, 1_764_580_000_000);
    assert_eq!(got[0].data["version"], "1.4.2");
    assert_eq!(got[1].samples[0].name, "orders.open");
    assert_eq!(got[4].data["n"], 2);

    // Bad input: answered with an error line, nothing of the bad value kept.
    for (payload, says) in [
        (
            b"{\"collector\":\"jobs\",\"n\":3}\n{\"collector\": oops}\n".to_vec(),
            "not JSON",
        ),
        (vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01], "not JSON"),
        (
            br#"{"collector":"system","cpu":99}"#.to_vec(),
            "the agent's own",
        ),
        (
            br#"{"collector":"logs.nginx","line":"forged"}"#.to_vec(),
            "the agent's own",
        ),
        (
            br#"[{"collector":"ok"},{"nocollector":1}]"#.to_vec(),
            "item 1: collector",
        ),
        (
            format!(
                "{{\"collector\":\"big\",\"x\":\"{}\"}}",
                "x".repeat(2 << 20)
            )
            .into_bytes(),
            "over",
        ),
    ] {
        let answer = client(payload).await.unwrap();
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        assert!(error.contains(says), "{error} should say {says}");
    }
    let got = spooler.take();
    assert_eq!(
        got.len(),
        1,
        "only the good line before the bad one: {got:?}"
    );
    assert_eq!(got[0].data["n"], 3);
    // Nothing else is affected: the next client is served.
    let answer = client(br#"{"collector":"deploy","version":"1.4.3"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 1);
    // "accepted" means spooled: when the spool cannot take them, the app is told.
    spooler
        .store
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let answer = client(br#"{"collector":"deploy","version":"1.4.4"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("could not store"),
        "{answer}"
    );

    stop.cancel();
    sockets.stopped_accepting().await;
    sockets.answered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_socket_gets_its_mode_and_replaces_a_stale_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    // What a killed agent leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let config = AppSocketConfig {
        name: String::new(),
        path: Some(path.clone()),
        mode: 0o600,
        ..AppSocketConfig::default()
    };
    let inbox = Arc::new(Inbox::new(100, 1 << 20));
    let spooler = Spooler::start(inbox.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sockets = fleet::collectors::app_socket::start(&config, inbox.clone(), stop.clone());
    assert!(sockets.take_broken().is_empty());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream
            .write_all(br#"{"collector":"cron","job":"backup"}"#)
            .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert_eq!(answer, "{\"accepted\":1,\"ok\":true}\n");
    assert_eq!(spooler.take()[0].data["job"], "backup");
    // A regular file in the way is not removed.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "keep me").unwrap();
    let broken = fleet::collectors::app_socket::start(
        &AppSocketConfig {
            path: Some(blocker.clone()),
            ..config
        },
        inbox,
        stop.clone(),
    )
    .take_broken();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].1.to_string().contains("not a socket"),
        "{:#}",
        broken[0].1
    );
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "keep me");
    stop.cancel();
    sockets.stopped_accepting().await;
    sockets.answered().await;
}

// ---- proof of life ----------------------------------------------------------------------

fn check_config(name: &str) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        file: None,
        max_age: None,
        tcp: None,
        unix: None,
        http: None,
        nginx_status: None,
        expect_status: 200,
        ca_cert: None,
        interval: None,
        timeout: Duration::from_secs(2),
    }
}

async fn probe(check: &mut dyn Probe) -> serde_json::Value {
    let Collected { data, samples, .. } = check.probe().await.expect("the check runs");
    let up = samples
        .iter()
        .find(|s| s.name == "check.up")
        .map(|s| s.value);
    let mut data = data;
    if let Some(up) = up {
        data["up_sample"] = up.into();
    }
    for s in samples {
        data[format!("sample:{}", s.name)] = s.value.into();
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_see_servers_come_and_go() {
    use fleet::collectors::checks::Check;
    fleet::install_crypto();
    let dir = tempfile::tempdir().unwrap();

    // TCP: a listener, then none.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut tcp = Check::new(&CheckConfig {
        tcp: Some(addr.clone()),
        ..check_config("db")
    })
    .unwrap();
    let up = probe(&mut tcp).await;
    assert_eq!(up["ok"], true, "{up}");
    assert_eq!(up["up_sample"], 1.0);
    drop(listener);
    let down = probe(&mut tcp).await;
    assert_eq!(down["ok"], false);
    assert_eq!(down["up_sample"], 0.0);
    assert!(
        down["error"].as_str().unwrap().contains("connect failed"),
        "{down}"
    );

    // Unix socket: path and abstract.
    let sock = dir.path().join("php.sock");
    let unix_listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut unix = Check::new(&CheckConfig {
        unix: Some(sock.clone()),
        ..check_config("php")
    })
    .unwrap();
    assert_eq!(probe(&mut unix).await["ok"], true);
    drop(unix_listener);
    std::fs::remove_file(&sock).unwrap();
    assert_eq!(probe(&mut unix).await["ok"], false);

    // A file touched within max_age, then too long ago.
    let stamp = dir.path().join("backup.done");
    std::fs::write(&stamp, "").unwrap();
    let mut file = Check::new(&CheckConfig {
        file: Some(stamp.clone()),
        max_age: Some(Duration::from_secs(3600)),
        ..check_config("backup")
    })
    .unwrap();
    assert_eq!(probe(&mut file).await["ok"], true);
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stamp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let stale = probe(&mut file).await;
    assert_eq!(stale["ok"], false);
    assert!(stale["error"].as_str().unwrap().contains("ago"), "{stale}");
    std::fs::remove_file(&stamp).unwrap();
    assert_eq!(probe(&mut file).await["ok"], false);

    // HTTP: the expected status, another one, then nobody there.
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/broken",
            axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
        )
        .route(
            "/nginx_status",
            axum::routing::get(|| async {
                "Active connections: 3 \nserver accepts handled requests\n 10 10 20 \nReading: 0 Writing: 1 Waiting: 2 \n"
            }),
        );
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let serving = tokio::spawn(async move { axum::serve(server, app).await });
    let mut health = Check::new(&CheckConfig {
        http: Some(format!("http://127.0.0.1:{port}/health")),
        ..check_config("site")
    })
    .unwrap();
    let ok = probe(&mut health).await;
    assert_eq!(
        (ok["ok"].clone(), ok["status"].clone()),
        (true.into(), 200.into()),
        "{ok}"
    );
    let mut broken = Check::new(&CheckConfig {
        http: Some(format!("http://127.0.0.1:{port}/broken")),
        ..check_config("api")
    })
    .unwrap();
    let bad = probe(&mut broken).await;
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("answered 503, expected 200"),
        "{bad}"
    );
    let mut nginx = Check::new(&CheckConfig {
        nginx_status: Some(format!("http://127.0.0.1:{port}/nginx_status")),
        ..check_config("nginx")
    })
    .unwrap();
    assert_eq!(nginx.name(), "nginx");
    let status = probe(&mut nginx).await;
    assert_eq!(status["sample:nginx.active_connections"], 3.0, "{status}");
    assert_eq!(status["sample:nginx.waiting"], 2.0);
    serving.abort();
    let _ = serving.await;
    let gone = probe(&mut health).await;
    assert_eq!(gone["ok"], false);
    assert!(
        gone["error"].as_str().unwrap().contains("cannot connect"),
        "{gone}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_check_says_how_many_days_the_certificate_has_left() {
    use fleet::collectors::checks::Check;
    let env = crate::harness::Env::new(crate::harness::Backend::Embedded).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let expiry = chrono::Utc::now() + chrono::Duration::days(30);
    use chrono::Datelike;
    params.not_after =
        rcgen::date_time_ymd(expiry.year(), expiry.month() as u8, expiry.day() as u8);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = env.dir.path().join("cert.pem");
    let key_path = env.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut config = env.controller_config();
    config.tls_cert = Some(cert_path.clone());
    config.tls_key = Some(key_path);
    let ctl = crate::harness::InProcess::start(config).await;
    let mut https = Check::new(&CheckConfig {
        http: Some(format!("{}/healthz", ctl.url)),
        ca_cert: Some(cert_path),
        ..check_config("controller")
    })
    .unwrap();
    let result = probe(&mut https).await;
    assert_eq!(result["ok"], true, "{result}");
    let days = result["cert_days_left"].as_f64().unwrap();
    assert!(
        (29.0..=30.5).contains(&days),
        "{days} days left, expected about 30"
    );
    // Not trusted: the check fails and says why.
    let mut untrusted = Check::new(&CheckConfig {
        http: Some(format!("{}/healthz", ctl.url)),
        ..check_config("controller2")
    })
    .unwrap();
    let result = probe(&mut untrusted).await;
    assert_eq!(result["ok"], false);
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{result}"
    );
    ctl.stop().await;
}

// ---- plugins ----------------------------------------------------------------------------

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn plugin_config(name: &str, command: &Path) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        command: vec![command.display().to_string()],
        interval: None,
        timeout: Duration::from_secs(5),
        max_output_bytes: 8 * 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_report_each_exit_code_and_their_perfdata() {
    use fleet::collectors::plugins::Plugin;
    let dir = tempfile::tempdir().unwrap();
    for (code, state) in [
        (0, "OK"),
        (1, "WARNING"),
        (2, "CRITICAL"),
        (3, "UNKNOWN"),
        (7, "UNKNOWN"),
    ] {
        let path = script(
            dir.path(),
            &format!("check_{code}"),
            &format!(
                "echo \"LOAD {state} - load average: 0.{code} | load1={code}.5;5;10;0 'free mem'=42%;;;0;100\"\necho \"second line\"\nexit {code}"
            ),
        );
        let mut plugin = Plugin::new(&plugin_config("load", &path));
        let Collected { data, samples, .. } = plugin.probe().await.unwrap();
        assert_eq!(data["status"], state, "exit {code}: {data}");
        assert_eq!(data["code"], code.min(3));
        assert_eq!(
            data["text"],
            format!("LOAD {state} - load average: 0.{code}")
        );
        let status = samples.iter().find(|s| s.name == "plugin.status").unwrap();
        assert_eq!(status.value, code.min(3) as f64);
        assert_eq!(status.labels["plugin"], "load");
        let perf: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "plugin.perf")
            .map(|s| {
                (
                    s.labels["label"].as_str(),
                    s.value,
                    s.labels.get("uom").cloned(),
                )
            })
            .collect();
        assert_eq!(
            perf,
            [
                ("load1", code as f64 + 0.5, None),
                ("free mem", 42.0, Some("%".to_owned()))
            ]
        );
    }
    // Too slow: killed at the timeout and UNKNOWN.
    let slow = script(dir.path(), "check_slow", "sleep 30 & sleep 30\necho never");
    let mut plugin = Plugin::new(&PluginConfig {
        timeout: Duration::from_millis(300),
        ..plugin_config("slow", &slow)
    });
    let started = std::time::Instant::now();
    let Collected { data, .. } = plugin.probe().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(data["status"], "UNKNOWN");
    assert!(data["text"].as_str().unwrap().contains("timeout"), "{data}");
    // Endless output: bounded.
    let loud = script(
        dir.path(),
        "check_loud",
        "yes 'OK | x=1' | head -c 10000000; exit 0",
    );
    let mut plugin = Plugin::new(&PluginConfig {
        max_output_bytes: 1024,
        ..plugin_config("loud", &loud)
    });
    let Collected { data, .. } = plugin.probe().await.unwrap();
    assert_eq!(data["status"], "OK");
    assert_eq!(data["truncated"], true);
    // Missing: UNKNOWN with the reason.
    let mut plugin = Plugin::new(&plugin_config("missing", &dir.path().join("nope")));
    let Collected { data, .. } = plugin.probe().await.unwrap();
    assert_eq!(data["status"], "UNKNOWN");
    assert!(
        data["text"].as_str().unwrap().contains("cannot start"),
        "{data}"
    );
}

/// A plugin stopped midway (the agent is stopping) takes its whole process group with it: a
/// shell's children do not outlive the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_running_at_stop_is_killed_with_its_children() {
    use fleet::collectors::plugins::Plugin;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let plugin = script(
        dir.path(),
        "check_hangs",
        &format!("sleep 300 &\necho $! > {}\nwait", pid_file.display()),
    );
    let inbox = Arc::new(Inbox::new(100, 1 << 20));
    let stop = tokio_util::sync::CancellationToken::new();
    let probe = Box::new(Plugin::new(&PluginConfig {
        timeout: Duration::from_secs(600),
        ..plugin_config("hangs", &plugin)
    }));
    let running = tokio::spawn(fleet::collectors::run_probe(
        probe,
        Duration::from_secs(3600),
        inbox.clone(),
        stop.clone(),
    ));
    let started = std::time::Instant::now();
    let child: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the plugin starts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let alive = |pid: i32| {
        // Gone, or a zombie waiting for whoever adopted it: not running either way.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]);
                state != Some(b'Z')
            })
            .unwrap_or(false)
    };
    assert!(alive(child), "the plugin's child runs");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the probe stops at once")
        .unwrap();
    let started = std::time::Instant::now();
    while alive(child) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the plugin's child {child} outlived the stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (records, _) = inbox.drain();
    assert!(
        records.is_empty(),
        "a stopped run reports nothing: {records:?}"
    );
}

// ---- all of it in a real agent ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ships_every_source_and_a_restart_mid_file_loses_and_repeats_nothing() {
    use crate::harness::{Backend, Env, InProcess, Process, enroll, eventually};
    let env = Env::new(Backend::Embedded).await;
    let key = enroll(&env, "watch1");
    let ctl = InProcess::start(env.controller_config()).await;
    let dir = env.dir.path();
    let log = dir.join("app.log");
    let (text, mut expected) = lines("request", 0..300);
    append(&log, &text);
    let plugin = script(
        dir,
        "check_queue",
        "echo 'QUEUE WARNING - 12 jobs waiting | jobs=12;10;20;0'; exit 1",
    );
    let port_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = port_listener.local_addr().unwrap().port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[logs]]
name = "app"
paths = ["{log}"]
from_beginning = true
ship_lines_per_second = 100000
interval = "200ms"

[[checks]]
name = "db"
tcp = "127.0.0.1:{port}"
interval = "200ms"

[[plugins]]
name = "queue"
command = ["{plugin}"]
interval = "200ms"

# Two sources that cannot start: the others run without them, and the agent says so.
[[logs]]
name = "broken"
paths = ["{log}"]

[[checks]]
name = "tls"
http = "https://127.0.0.1:{port}/"
ca_cert = "{missing_ca}"
"#,
            log = log.display(),
            plugin = plugin.display(),
            missing_ca = dir.join("no-such-ca.pem").display(),
        ),
    )
    .unwrap();
    // The broken log's state file cannot be read (a directory where the file should be). Made
    // private, as the agent makes its data dir: it refuses one other users can read.
    fleet::files::create_dir(&dir.join("agent").join("tail-broken.json")).unwrap();
    let socket = unique_name("agent");
    let args: Vec<String> = [
        "agent",
        "--controller",
        &ctl.url,
        "--node",
        "watch1",
        "--key",
        &key,
        "--interval",
        "200ms",
        "--data-dir",
        &dir.join("agent").display().to_string(),
        "--config",
        &config.display().to_string(),
        "--app-socket",
        &socket,
    ]
    .map(String::from)
    .to_vec();
    let mut agent = Process::spawn(&args, &dir.join("agent-1.log"));
    let store = ctl.store.clone();
    let stored_lines = || {
        let store = store.clone();
        async move {
            let records = store.records("watch1", "logs.app", 10_000).await.unwrap();
            let mut lines: Vec<String> = records
                .iter()
                .map(|(_, d)| d["line"].as_str().unwrap().to_owned())
                .collect();
            lines.sort();
            lines
        }
    };
    let mut sorted = expected.clone();
    sorted.sort();
    eventually(
        Duration::from_secs(20),
        "the first 300 lines are stored",
        || {
            let sorted = sorted.clone();
            async move { (stored_lines().await == sorted).then_some(()) }
        },
    )
    .await;

    // An app writes to the agent's socket.
    let answer = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || socket_client(&socket, br#"{"collector":"deploy","version":"2.0.1"}"#)
    })
    .await
    .unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    eventually(Duration::from_secs(20), "the app's item is stored", || {
        let store = store.clone();
        async move {
            let records = store.records("watch1", "deploy", 10).await.unwrap();
            records
                .first()
                .filter(|(_, d)| d["version"] == "2.0.1")
                .map(|_| ())
        }
    })
    .await;
    // The check and the plugin land in the hot ring (and their samples in history).
    let client = ctl.client();
    let (status, body) = client.get("/api/v1/nodes/watch1/recent/agent").await;
    assert_eq!(status, 200, "{body}");
    let report = &body["records"][0]["data"];
    let broken: Vec<&str> = report["broken_sources"]
        .as_array()
        .unwrap_or_else(|| panic!("the agent reports its sources: {body}"))
        .iter()
        .map(|b| b["source"].as_str().unwrap())
        .collect();
    assert_eq!(broken, ["logs.broken", "check tls"], "{report}");
    assert!(
        report["broken_sources"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-ca.pem"),
        "{report}"
    );
    let recent = |collector: &'static str| {
        let client = &client;
        async move {
            let (status, body) = client
                .get(&format!("/api/v1/nodes/watch1/recent/{collector}?limit=1"))
                .await;
            assert_eq!(status, 200, "{body}");
            body["records"].get(0).cloned()
        }
    };
    let check = eventually(Duration::from_secs(20), "a check record", || {
        recent("check")
    })
    .await;
    assert_eq!(check["data"]["check"], "db");
    assert_eq!(check["data"]["ok"], true, "{check}");
    let plugin = eventually(Duration::from_secs(20), "a plugin record", || {
        recent("plugin")
    })
    .await;
    assert_eq!(plugin["data"]["status"], "WARNING", "{plugin}");
    assert_eq!(plugin["data"]["perfdata"][0]["label"], "jobs");
    drop(port_listener);
    eventually(
        Duration::from_secs(20),
        "the check sees the port closed",
        || async {
            recent("check")
                .await
                .filter(|c| c["data"]["ok"] == false)
                .map(|_| ())
        },
    )
    .await;

    // An app is midway through writing when the agent stops: what it handed in is stored
    // and it hears so, with the reason it was cut off.
    let mut app = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(socket.as_bytes()).unwrap();
        let app = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        app
    };
    std::io::Write::write_all(
        &mut app,
        b"{\"collector\":\"deploy\",\"version\":\"2.0.2\"}\n",
    )
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "the half-sent item is stored",
        || {
            let store = store.clone();
            async move {
                let records = store.records("watch1", "deploy", 10).await.unwrap();
                records
                    .iter()
                    .any(|(_, d)| d["version"] == "2.0.2")
                    .then_some(())
            }
        },
    )
    .await;

    // Restart in the middle of the file: lines written while it was down come once.
    let (text, more) = lines("request", 300..400);
    append(&log, &text);
    assert!(
        agent.terminate(),
        "the agent stops cleanly:\n{}",
        agent.log_text()
    );
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut app, &mut answer).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("stopping"),
        "{answer}"
    );
    let (text, while_down) = lines("request", 400..500);
    append(&log, &text);
    let mut agent = Process::spawn(&args, &dir.join("agent-2.log"));
    let (text, after) = lines("request", 500..550);
    append(&log, &text);
    expected.extend(more);
    expected.extend(while_down);
    expected.extend(after);
    expected.sort();
    let got = eventually(Duration::from_secs(20), "all 550 lines", || async move {
        let got = stored_lines().await;
        (got.len() >= 550).then_some(got)
    })
    .await;
    // A moment more: a repeat would come in the next ticks.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got_later = stored_lines().await;
    assert_eq!(got, got_later, "nothing came twice");
    assert_eq!(got, expected, "every line exactly once");
    assert!(agent.terminate(), "{}", agent.log_text());
    ctl.stop().await;
}
