//! The node page shows what the agent collects (issue 17), in Chromium, fed by a real
//! `fleet agent` against a controller in process: a tailed nginx access log (two vhosts, 2xx and
//! 5xx lines), two TCP checks (one up, one down), a Nagios plugin in WARNING, the processes
//! collector and an app writing to the agent's socket. Each test first sees the data arrive
//! through the API (so a failure on the page is the page's), then checks the page's sections
//! by the markup the issue's contract gives them: `section#host`, `#traffic`, `#checks`,
//! `#processes`, `#log-lines`, `#apps`, `#other`, every chart carrying `data-metric`.
//!
//! Everything runs on 127.0.0.1; every file is in the test's temp dir; each test has its own
//! controller, agent, ports and app socket name. Waits poll for at most 30 s.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::elements::Element;
use serde_json::Value;

use crate::browser::{self, Browser, WAIT, mark_page, page_was_not_reloaded};
use crate::harness::{Backend, Client, Env, InProcess, Process, node};

const NODE: &str = "web1";
const KEY: &str = "key-of-web1-0123456789";
const PAGE: &str = "/nodes/web1";
/// The two virtual hosts of the access log.
const SHOP: &str = "shop.example";
const API: &str = "api.example";

/// A `vhost_combined` access line stamped now (the tail dates a line's record by its time).
fn access_line(vhost: &str, method: &str, path: &str, status: u16, bytes: u64) -> String {
    let now = chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S +0000");
    format!(
        "{vhost}:443 203.0.113.9 - - [{now}] \"{method} {path} HTTP/1.1\" {status} {bytes} \
         \"-\" \"curl/8.5\" 0.042\n"
    )
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

/// Writes an executable shell script at `path`, atomically (a new file renamed over the old,
/// so the agent never runs a half-written one nor hits "text file busy").
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The plugin's script in WARNING: the contract's example line and exit 1.
const PLUGIN_WARNING: &str = "echo 'WARNING - load 5|load=5;4;10'; exit 1";
const PLUGIN_CRITICAL: &str = "echo 'CRITICAL - load 12|load=12;4;10'; exit 2";

/// Writes `payload` to the agent's abstract app socket `name` as an app would, and returns the
/// agent's answer line. Retries the connection while the agent starts.
async fn app_write(name: &str, payload: String) -> Value {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixStream};
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
        let started = Instant::now();
        let mut stream = loop {
            match UnixStream::connect_addr(&addr) {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() > WAIT => {
                    panic!("the agent's app socket @{name} did not accept within {WAIT:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(payload.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("the agent answers the app");
        serde_json::from_str(answer.trim())
            .unwrap_or_else(|e| panic!("the agent's answer {answer:?} is not JSON: {e}"))
    })
    .await
    .expect("the app's thread")
}

/// A stand-in for nginx's `stub_status` page on a loopback port, for a `nginx_status` check:
/// answers every request with the same counters. Serves until dropped.
struct StubStatus {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StubStatus {
    fn serve() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut socket, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = socket.set_nonblocking(false);
                let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf);
                let body = "Active connections: 3 \nserver accepts handled requests\n \
                            120 120 480 \nReading: 0 Writing: 1 Waiting: 2 \n";
                let _ = write!(
                    socket,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, stop }
    }
}

impl Drop for StubStatus {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Web traffic as a busy site writes it: every 700 ms a 2xx line on each vhost, and every
/// third time a 5xx line on each (`POST /checkout` 503, `POST /v1/orders` 502), so the traffic
/// charts have lines to draw and the newest log lines always hold a 5xx. Writes until dropped.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(log: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut tick = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let mut lines =
                    access_line(SHOP, "GET", &format!("/product/{}", tick % 4), 200, 2048);
                lines.push_str(&access_line(API, "GET", "/v1/items", 200, 512));
                if tick.is_multiple_of(3) {
                    lines.push_str(&access_line(SHOP, "POST", "/checkout", 503, 157));
                    lines.push_str(&access_line(API, "POST", "/v1/orders", 502, 99));
                }
                append(&log, &lines);
                tick += 1;
                // Pacing the writer, not waiting for anything.
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a scenario runs besides the agent's usual sources.
#[derive(Default, Clone, Copy)]
struct Extras {
    /// A third check on a stand-in `stub_status` page, for the `nginx.*` series.
    nginx_status: bool,
    /// Lines written to the access log all along ([`Traffic`]).
    traffic: bool,
}

/// One node with a real agent and every source the node page draws.
struct Scenario {
    ctl: InProcess,
    api: Client,
    agent: Process,
    /// The tailed access log.
    log: PathBuf,
    /// What the `web-port` check connects to: dropped to take the check down.
    up: Option<TcpListener>,
    plugin: PathBuf,
    socket: String,
    _stub: Option<StubStatus>,
    _traffic: Option<Traffic>,
}

impl Scenario {
    /// The controller (operator token `browser::TOKEN`), the access log's first lines, the
    /// plugin, and the agent at a 1 s interval. `nginx_status`: a third check on a stand-in
    /// `stub_status` page, for the `nginx.*` series.
    async fn start(env: &Env, extras: Extras) -> Self {
        let ctl = browser::controller(env, vec![node(NODE, KEY, &[])]).await;
        let api = ctl.client();
        let dir = env.dir.path().to_owned();
        let log = dir.join("access.log");
        let mut first = String::new();
        for i in 0..4 {
            first.push_str(&access_line(
                SHOP,
                "GET",
                &format!("/product/{i}"),
                200,
                2048,
            ));
            first.push_str(&access_line(API, "GET", "/v1/items", 200, 512));
        }
        first.push_str(&access_line(SHOP, "POST", "/checkout", 503, 157));
        first.push_str(&access_line(API, "POST", "/v1/orders", 502, 99));
        append(&log, &first);
        let plugin = dir.join("check_load");
        write_script(&plugin, PLUGIN_WARNING);
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_port = up.local_addr().unwrap().port();
        // A port that was free a moment ago: nothing listens there.
        let down_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stub = extras.nginx_status.then(StubStatus::serve);
        let mut config = format!(
            r#"interval = "1s"

[[logs]]
name = "nginx"
paths = ["{log}"]
format = "vhost_combined"
from_beginning = true
ship_lines_per_second = 1000

[[checks]]
name = "web-port"
tcp = "127.0.0.1:{up_port}"
timeout = "2s"

[[checks]]
name = "db-port"
tcp = "127.0.0.1:{down_port}"
timeout = "2s"

[[plugins]]
name = "load"
command = ["{plugin}"]
timeout = "5s"
"#,
            log = log.display(),
            plugin = plugin.display(),
        );
        if let Some(stub) = &stub {
            config.push_str(&format!(
                "\n[[checks]]\nname = \"nginx-status\"\nnginx_status = \"http://127.0.0.1:{}/status\"\n",
                stub.port
            ));
        }
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let socket = format!("fleettest-nodepage-{}", ulid::Ulid::new());
        let args: Vec<String> = [
            "agent",
            "--config",
            &config_path.display().to_string(),
            "--controller",
            &ctl.url,
            "--node",
            NODE,
            "--key",
            KEY,
            "--data-dir",
            &dir.join("agent").display().to_string(),
            "--app-socket",
            &socket,
        ]
        .map(String::from)
        .to_vec();
        let agent = Process::spawn(&args, &dir.join("agent.log"));
        let traffic = extras.traffic.then(|| Traffic::start(log.clone()));
        Self {
            ctl,
            api,
            agent,
            log,
            up: Some(up),
            plugin,
            socket,
            _stub: stub,
            _traffic: traffic,
        }
    }

    /// Polls `check` for up to 30 s; fails with the agent's log.
    async fn until<T>(&self, what: &str, mut check: impl AsyncFnMut(&Self) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            if started.elapsed() > WAIT {
                let log = self.agent.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "expected {what} within {WAIT:?} (through the API); the agent's log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The newest records of a collector (hot ring), newest first.
    async fn recent(&self, collector: &str) -> Vec<Value> {
        let (status, body) = self
            .api
            .get(&format!("/api/v1/nodes/{NODE}/recent/{collector}?limit=50"))
            .await;
        assert_eq!(status, 200, "recent/{collector}: {body}");
        body["records"].as_array().cloned().unwrap_or_default()
    }

    /// The node's series: (metric name, labels).
    async fn series(&self) -> Vec<(String, Value)> {
        let (status, body) = self.api.get(&format!("/api/v1/nodes/{NODE}/metrics")).await;
        assert_eq!(status, 200, "metrics: {body}");
        body["series"]
            .as_array()
            .unwrap_or_else(|| panic!("the metrics list has series: {body}"))
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_owned(),
                    s["labels"].clone(),
                )
            })
            .collect()
    }

    /// The newest record of check `name`.
    async fn check(&self, name: &str) -> Option<Value> {
        self.recent("check")
            .await
            .into_iter()
            .find(|r| r["data"]["check"] == name)
    }

    /// Writes the app's record: collector `shop`, two metrics and two fields, plus `extra`
    /// fields.
    async fn app(&self, extra: serde_json::Map<String, Value>) {
        let mut item = serde_json::json!({
            "collector": "shop",
            "version": "2.4.1",
            "region": "eu-west",
            "metrics": { "orders": 7, "queue_depth": 3 },
        });
        item.as_object_mut().unwrap().extend(extra);
        let answer = app_write(&self.socket, item.to_string()).await;
        assert_eq!(
            answer["accepted"], 1,
            "the agent took the app's item: {answer}"
        );
    }

    /// Waits until every source's data is in the stores, through the API: both vhosts' traffic
    /// with 2xx and 5xx, the shipped lines, both checks (up and down, with its reason), the
    /// plugin in WARNING with its thresholds, the processes, and the app's record and series.
    async fn arrived(&self) {
        self.until("a 5xx line shipped (recent/logs.nginx)", async |s| {
            let lines = s.recent("logs.nginx").await;
            lines
                .iter()
                .any(|r| r["data"]["status"] == 503 && r["data"]["path"] == "/checkout")
                .then_some(())
        })
        .await;
        let up = self
            .until("the web-port check up", async |s| {
                s.check("web-port")
                    .await
                    .filter(|r| r["data"]["ok"] == true)
            })
            .await;
        assert_eq!(up["data"]["kind"], "tcp", "{up}");
        let down = self
            .until("the db-port check down", async |s| {
                s.check("db-port")
                    .await
                    .filter(|r| r["data"]["ok"] == false)
            })
            .await;
        assert!(
            down["data"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("connect failed")),
            "a failed check says why: {down}"
        );
        let plugin = self
            .until("the plugin in WARNING", async |s| {
                s.recent("plugin")
                    .await
                    .into_iter()
                    .next()
                    .filter(|r| r["data"]["status"] == "WARNING")
            })
            .await;
        assert_eq!(plugin["data"]["text"], "WARNING - load 5", "{plugin}");
        assert_eq!(plugin["data"]["perfdata"][0]["warn"], "4", "{plugin}");
        assert_eq!(plugin["data"]["perfdata"][0]["crit"], "10", "{plugin}");
        self.until("the processes collector's top list", async |s| {
            s.recent("processes").await.into_iter().next().filter(|r| {
                r["data"]["top"]
                    .as_array()
                    .is_some_and(|top| !top.is_empty())
            })
        })
        .await;
        self.until("the app's record", async |s| {
            s.recent("shop")
                .await
                .into_iter()
                .next()
                .filter(|r| r["data"]["version"] == "2.4.1")
        })
        .await;
        self.until(
            "the series of web traffic (2xx and 5xx on both vhosts), checks, plugin, \
             processes and the app",
            async |s| {
                let series = s.series().await;
                let has = |name: &str, labels: &[(&str, &str)]| {
                    series.iter().any(|(n, l)| {
                        n == name && labels.iter().all(|(k, v)| l[*k].as_str() == Some(*v))
                    })
                };
                let all = [SHOP, API].iter().all(|vhost| {
                    has(
                        "web.requests_per_second",
                        &[("vhost", vhost), ("class", "2xx")],
                    ) && has(
                        "web.requests_per_second",
                        &[("vhost", vhost), ("class", "5xx")],
                    )
                }) && has("check.up", &[("check", "web-port")])
                    && has("check.up", &[("check", "db-port")])
                    && has("plugin.perf", &[("plugin", "load"), ("label", "load")])
                    && has("plugin.status", &[("plugin", "load")])
                    && has("processes.count", &[])
                    && has("shop.orders", &[])
                    && has("shop.queue_depth", &[])
                    && has("tail.lines_per_second", &[("log", "nginx")]);
                all.then_some(())
            },
        )
        .await;
    }

    async fn stop(mut self) {
        assert!(
            self.agent.terminate(),
            "the agent stops cleanly:\n{}",
            self.agent.log_text()
        );
        self.ctl.stop().await;
    }
}

/// Where the page disagrees with the contract, gathered so that one run names every
/// disagreement (each with the element and what was seen); the test fails at its end if any.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("the page disagrees with the contract: {what}");
            self.0.push(what);
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "the page disagrees with the contract (/tmp/w/contract.md):\n- {}",
            self.0.join("\n- ")
        );
    }
}

/// The text of every element `css` matches (none: empty).
async fn texts(b: &Browser, css: &str) -> Vec<String> {
    // In one script: the live stream replaces whole sections every second, and elements found
    // first and read one by one afterwards may be gone (read as empty) by then.
    let found = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText);",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap_or_default();
    found
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn attr(el: &Element, name: &str) -> String {
    el.attr(name).await.ok().flatten().unwrap_or_default()
}

/// What one row of `table#check-table` shows.
#[derive(Debug)]
struct CheckRow {
    status: String,
    class: String,
    cells: Vec<String>,
    strips: usize,
}

/// The row of check or plugin `name`, as the contract lays it out, or `None` while it is
/// missing.
async fn check_row(b: &Browser, kind: &str, name: &str) -> Option<CheckRow> {
    // In one script: the live stream may replace the table between two reads.
    let css = format!("table#check-table tr[data-kind='{kind}'][data-name='{name}']");
    let v = b
        .client
        .execute(
            "const r = document.querySelector(arguments[0]);
             if (!r) return null;
             const s = r.querySelector('span.status');
             if (!s) return null;
             return [s.innerText, s.getAttribute('class') || '',
                     Array.from(r.querySelectorAll('td')).map(td => td.innerText),
                     r.querySelectorAll('svg.strip').length];",
            vec![serde_json::json!(css)],
        )
        .await
        .ok()?;
    let v = v.as_array()?;
    Some(CheckRow {
        status: v[0].as_str()?.to_owned(),
        class: v[1].as_str()?.to_owned(),
        cells: v[2]
            .as_array()?
            .iter()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect(),
        strips: v[3].as_u64()? as usize,
    })
}

/// Waits for the check or plugin row `name` to show `status` with class `state-<class>`.
async fn row_in_state(b: &Browser, kind: &str, name: &str, status: &str, class: &str) -> CheckRow {
    b.until(
        &format!(
            "table#check-table's {kind} row {name:?} to say {status:?} in span.status.state-{class}"
        ),
        async |b| {
            check_row(b, kind, name).await.filter(|r| {
                r.status.trim() == status
                    && r.class
                        .split_whitespace()
                        .any(|c| c == format!("state-{class}"))
            })
        },
    )
    .await
}

/// The legend entries of chart `id` (`ul.legend li`).
async fn legend(b: &Browser, id: &str) -> Vec<String> {
    texts(b, &format!("figure#{id} ul.legend li")).await
}

/// Waits for chart `id`'s legend to have an entry starting with each of `labels`.
async fn legend_with(b: &Browser, id: &str, labels: &[&str]) -> Vec<String> {
    b.until(
        &format!("figure#{id}'s legend to name {labels:?}"),
        async |b| {
            let entries = legend(b, id).await;
            labels
                .iter()
                .all(|l| entries.iter().any(|e| e.trim_start().starts_with(l)))
                .then_some(entries)
        },
    )
    .await
}

/// Scrolls `css` into view, for a screenshot of that part of the page.
async fn scroll_to(b: &Browser, css: &str) {
    b.element(&format!("{css} to scroll to"), css).await;
    b.client
        .execute(
            "document.querySelector(arguments[0]).scrollIntoView(true); return true",
            vec![Value::String(css.to_owned())],
        )
        .await
        .expect("scroll");
}

/// Every value of every `data-metric` attribute in `html`, split at spaces.
fn data_metrics(html: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = html;
    while let Some(at) = rest.find("data-metric=") {
        rest = &rest[at + "data-metric=".len()..];
        let (quote, body) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => (q, &rest[1..]),
            _ => (' ', rest),
        };
        let end = body
            .find(|c: char| c == quote || (quote == ' ' && c == '>'))
            .unwrap_or(body.len());
        out.extend(body[..end].split_whitespace().map(str::to_owned));
        rest = &body[end..];
    }
    out
}

/// 1 and 4: every part of the page with the right values, and screenshots at desktop and
/// phone widths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_page_shows_traffic_checks_plugins_processes_logs_and_apps() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let traffic = Extras {
        traffic: true,
        ..Extras::default()
    };
    let s = Scenario::start(&env, traffic).await;
    s.app(serde_json::Map::new()).await;
    s.arrived().await;

    // This host's swap, as the agent reports it: without any, the Swap chart says so.
    let system = s.recent("system").await;
    let no_swap = system
        .first()
        .is_some_and(|r| r["data"]["swap"]["total_bytes"] == 0);
    let mut found = Findings::default();

    let b = Browser::open(&env, &s.ctl.url).await;
    b.log_in().await;
    b.goto(PAGE).await;
    b.element("the tail", "tbody#tail").await;
    let served_tail_rows = b
        .client
        .find_all(Locator::Css("tbody#tail > tr"))
        .await
        .unwrap()
        .len();

    // Host charts: the six figures, each a chart or one line saying it has nothing.
    for id in [
        "chart-cpu",
        "chart-memory",
        "chart-swap",
        "chart-disk",
        "chart-network",
        "chart-load",
    ] {
        // Read in one script: the live stream replaces the section every second, and an
        // element read piece by piece may be gone between two reads.
        let facts = b
            .until(&format!("section#host figure#{id}"), async |b| {
                let v = b
                    .client
                    .execute(
                        "const f = document.querySelector('section#host figure#' + arguments[0]);
                         if (!f) return null;
                         return [f.getAttribute('class') || '',
                                 f.getAttribute('data-metric') || '',
                                 f.querySelectorAll('svg:not(.swatch)').length,
                                 Array.from(f.querySelectorAll('p.empty')).map(p => p.textContent)];",
                        vec![serde_json::json!(id)],
                    )
                    .await
                    .ok()?;
                (!v.is_null()).then_some(v)
            })
            .await;
        let class = facts[0].as_str().unwrap_or_default().to_owned();
        found.check(class.split_whitespace().any(|c| c == "chart"), || {
            format!("figure#{id} is not a figure.chart: class {class:?}")
        });
        let svgs = facts[2].as_u64().unwrap_or_default() as usize;
        let empty: Vec<String> = facts[3]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            (svgs >= 1 && empty.is_empty()) || (svgs == 0 && empty.len() == 1),
            "figure#{id} draws a chart or says in one p.empty line that it has no data \
             (svg: {svgs}, p.empty: {empty:?})"
        );
        let metric = facts[1].as_str().unwrap_or_default().to_owned();
        found.check(!metric.trim().is_empty(), || {
            format!("figure#{id} has no data-metric")
        });
        if id == "chart-swap" && no_swap {
            found.check(svgs == 0 && empty.len() == 1, || {
                format!(
                    "figure#chart-swap on a host without swap (swap.total_bytes 0) draws \
                     {svgs} svg instead of one p.empty line (\"No swap data in this range.\"); \
                     p.empty: {empty:?}"
                )
            });
        }
    }
    let cpu = legend_with(&b, "chart-cpu", &[]).await;
    assert!(
        cpu.iter().any(|l| l.contains("now")),
        "the CPU legend says the value now: {cpu:?}"
    );

    // Web traffic: both vhosts offered, requests by class with 2xx and 5xx, the 5xx share as a
    // percentage, bytes, and the request time's mean and slowest.
    b.element("section#traffic's h2", "section#traffic h2")
        .await;
    assert_eq!(
        texts(&b, "section#traffic h2")
            .await
            .first()
            .map(|t| t.trim().to_owned()),
        Some("Web traffic".to_owned())
    );
    b.element("nav#vhosts", "section#traffic nav#vhosts").await;
    // Read in one script each: the live stream replaces the section every second.
    let nav_text = texts(&b, "section#traffic nav#vhosts").await.join(" ");
    assert!(
        nav_text.contains(SHOP) && nav_text.contains(API),
        "nav#vhosts offers both vhosts: {nav_text:?}"
    );
    let links: Vec<String> = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('section#traffic nav#vhosts a'))
                 .map(a => a.getAttribute('href') || '');",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    let current = texts(&b, "section#traffic nav#vhosts strong")
        .await
        .first()
        .cloned()
        .expect("nav#vhosts shows the current vhost in strong");
    let other = if current.contains(SHOP) { API } else { SHOP };
    assert!(
        current.contains(SHOP) || current.contains(API),
        "the current vhost is one of the log's: {current:?}"
    );
    assert!(
        links.iter().any(|h| h.contains(&format!("vhost={other}"))),
        "a link to the other vhost ({other}) with ?vhost=: {links:?}"
    );
    let requests = legend_with(&b, "chart-web-requests", &["2xx", "5xx"]).await;
    let classes = ["2xx", "3xx", "4xx", "5xx"];
    found.check(
        requests
            .iter()
            .all(|l| classes.iter().any(|c| l.starts_with(&format!("{c}:")))),
        || {
            format!(
                "figure#chart-web-requests' legend has labels besides {classes:?} (for the \
                 classes present): {requests:?}"
            )
        },
    );
    let share = legend_with(&b, "chart-web-errors", &["5xx share"]).await;
    assert!(
        share
            .iter()
            .any(|l| l.starts_with("5xx share") && l.contains('%')),
        "the 5xx share is a percentage: {share:?}"
    );
    b.element(
        "figure#chart-web-bytes with a chart",
        "section#traffic figure#chart-web-bytes svg",
    )
    .await;
    legend_with(&b, "chart-web-time", &["mean", "slowest"]).await;
    let bytes = legend(&b, "chart-web-bytes").await;
    found.check(
        bytes.iter().all(|l| {
            l.split(':')
                .next()
                .is_some_and(|label| !label.trim().is_empty())
        }),
        || format!("figure#chart-web-bytes' legend entries have an empty label: {bytes:?}"),
    );
    // With traffic all along, the charts draw lines (a path of more than one point).
    for id in [
        "chart-web-requests",
        "chart-web-errors",
        "chart-web-bytes",
        "chart-web-time",
    ] {
        b.until(
            &format!("figure#{id} to draw a line (an svg path with more than one point)"),
            async |b| {
                for path in b
                    .client
                    .find_all(Locator::Css(&format!(
                        "section#traffic figure#{id} > svg path"
                    )))
                    .await
                    .ok()?
                {
                    if attr(&path, "d").await.contains('L') {
                        return Some(());
                    }
                }
                None
            },
        )
        .await;
    }

    // The other vhost, chosen through its link's query.
    b.goto(&format!("{PAGE}?vhost={other}")).await;
    b.until(
        &format!("nav#vhosts to show {other} as the current vhost (strong)"),
        async |b| {
            let strong = texts(b, "nav#vhosts strong").await;
            strong.iter().any(|t| t.contains(other)).then_some(())
        },
    )
    .await;
    legend_with(&b, "chart-web-requests", &["2xx", "5xx"]).await;
    b.goto(PAGE).await;

    // Checks and plugins: one table, the up check with its latency, the down one with its
    // reason, the plugin in WARNING with its first line, history strips, no certificate.
    b.element("section#checks's h2", "section#checks h2").await;
    assert_eq!(
        texts(&b, "section#checks h2")
            .await
            .first()
            .map(|t| t.trim().to_owned()),
        Some("Checks and plugins".to_owned())
    );
    let up = row_in_state(&b, "check", "web-port", "up", "up").await;
    assert!(
        up.cells.first().is_some_and(|c| c.starts_with("web-port")),
        "the first cell is the name: {up:?}"
    );
    assert_eq!(
        up.cells.len(),
        6,
        "name, state, since, detail, cert, history: {up:?}"
    );
    assert!(
        up.cells.get(3).is_some_and(|d| d.contains("ms")),
        "the up check's detail is its latency (\"3 ms\"): {up:?}"
    );
    assert!(
        up.cells.get(4).is_some_and(|c| c.trim().is_empty()),
        "no certificate cell text for a TCP check: {up:?}"
    );
    assert!(up.strips >= 1, "a history strip: {up:?}");
    let down = row_in_state(&b, "check", "db-port", "down", "down").await;
    assert!(
        down.cells
            .get(3)
            .is_some_and(|d| d.contains("connect failed") || d.contains("refused")),
        "the down check's detail is its error reason: {down:?}"
    );
    assert!(down.strips >= 1, "a history strip: {down:?}");
    let plugin = row_in_state(&b, "plugin", "load", "WARNING", "warning").await;
    assert!(
        plugin
            .cells
            .get(3)
            .is_some_and(|d| d.contains("WARNING - load 5")),
        "the plugin's detail is its first line: {plugin:?}"
    );
    let metric = attr(
        &b.element("table#check-table", "table#check-table").await,
        "data-metric",
    )
    .await;
    for m in ["check.up", "plugin.status"] {
        assert!(
            metric.split_whitespace().any(|x| x == m),
            "table#check-table's data-metric names {m}: {metric:?}"
        );
    }
    let ids: Vec<String> = texts_of(
        &b,
        "return Array.from(document.querySelectorAll('section#checks figure')).map(f => f.id);",
    )
    .await;
    found.check(ids.iter().any(|i| i == "chart-plugin-load"), || {
        format!("no figure#chart-plugin-load for plugin \"load\"; the figures in section#checks have ids {ids:?}")
    });
    // Whatever its id, the plugin's chart draws both thresholds.
    b.element(
        "the plugin's perfdata chart with its warning line",
        "section#checks figure[id^='chart-plugin-load'] svg line.warn",
    )
    .await;
    b.element(
        "the plugin's perfdata chart with its critical line",
        "section#checks figure[id^='chart-plugin-load'] svg line.crit",
    )
    .await;

    // Top processes.
    b.element("section#processes's h2", "section#processes h2")
        .await;
    assert_eq!(
        texts(&b, "section#processes h2")
            .await
            .first()
            .map(|t| t.trim().to_owned()),
        Some("Top processes".to_owned())
    );
    let head = texts(&b, "table#process-table th").await;
    assert!(
        head.len() >= 4
            && ["Name", "PID", "CPU", "Memory"]
                .iter()
                .zip(&head)
                .all(|(h, t)| t.trim() == *h),
        "table#process-table's header starts Name, PID, CPU, Memory: {head:?}"
    );
    if head.len() > 4 {
        eprintln!("note: table#process-table has more columns than the contract's: {head:?}");
    }
    let rows = b
        .until("table#process-table's rows", async |b| {
            let rows = texts(b, "table#process-table tbody tr").await;
            (!rows.is_empty()).then_some(rows)
        })
        .await;
    assert!(rows.len() <= 5, "at most the five busiest: {rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().any(|w| w.parse::<u32>().is_ok())),
        "each process row shows its PID: {rows:?}"
    );
    let said = texts(&b, "section#processes p")
        .await
        .join(" ")
        .to_lowercase();
    assert!(
        said.contains("five") || said.contains('5'),
        "the section says the agent sends the five busiest by CPU: {said:?}"
    );

    // Log lines: readable rows with status, method and path, and the text filter.
    b.element("section#log-lines's h2", "section#log-lines h2")
        .await;
    assert_eq!(
        texts(&b, "section#log-lines h2")
            .await
            .first()
            .map(|t| t.trim().to_owned()),
        Some("Log lines".to_owned())
    );
    b.element(
        "the log filter's text field in a GET form",
        "section#log-lines form input[name='lines']",
    )
    .await;
    b.element("the log filter's form", "section#log-lines form")
        .await;
    let method = texts_of(
        &b,
        "return Array.from(document.querySelectorAll('section#log-lines form'))
             .map(f => f.getAttribute('method') || '');",
    )
    .await;
    assert!(
        method
            .first()
            .is_some_and(|m| m.eq_ignore_ascii_case("get")),
        "the filter form is a GET form: {method:?}"
    );
    let row = b
        .until(
            "a tr.access row for POST /checkout 503 in table#log-table",
            async |b| access_row(b, "/checkout").await,
        )
        .await;
    assert!(
        has_cells(&row, &["503", "POST", "/checkout", "157"]),
        "the row shows status, method, path and bytes: {row:?}"
    );
    let head = texts(&b, "table#log-table thead th").await;
    found.check(
        // The log's name may follow, as a sixth cell.
        (row.len() == 5 || row.len() == 6)
            && row[1].trim() == "503"
            && row[2].trim() == "POST"
            && row[3].trim() == "/checkout"
            && row[4].trim() == "157",
        || {
            format!(
                "table#log-table's tr.access cells are not time, status, method, path, bytes: \
                 header {head:?}, row {row:?}"
            )
        },
    );
    b.until("a 2xx GET row for /product/0", async |b| {
        access_row(b, "/product/0")
            .await
            .filter(|r| has_cells(r, &["200", "GET", "2048"]))
    })
    .await;
    b.goto(&format!("{PAGE}?lines=checkout")).await;
    let filtered = b
        .until("the log rows filtered to \"checkout\"", async |b| {
            let rows = texts(b, "table#log-table tr.access").await;
            (!rows.is_empty()).then_some(rows)
        })
        .await;
    assert!(
        filtered.iter().all(|r| r.contains("checkout")),
        "?lines=checkout keeps only matching lines: {filtered:?}"
    );
    b.goto(PAGE).await;

    // The app's section: a chart per metric and the latest fields.
    b.element("section#apps's h2", "section#apps h2").await;
    assert_eq!(
        texts(&b, "section#apps h2")
            .await
            .first()
            .map(|t| t.trim().to_owned()),
        Some("Applications".to_owned())
    );
    b.element(
        "the app's section",
        "section#apps section.app[data-collector='shop']",
    )
    .await;
    let drawn: BTreeSet<String> = texts_of(
        &b,
        "return Array.from(document.querySelectorAll(
             \"section#apps section.app[data-collector='shop'] figure.chart\"))
             .map(f => f.getAttribute('data-metric') || '');",
    )
    .await
    .iter()
    .flat_map(|m| m.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    .collect();
    for m in ["shop.orders", "shop.queue_depth"] {
        assert!(
            drawn.contains(m),
            "a chart of {m} in the app's section: {drawn:?}"
        );
    }
    let fields = app_fields(&b).await;
    for (k, v) in [("version", "2.4.1"), ("region", "eu-west")] {
        assert!(
            fields.iter().any(|(f, x)| f == k && x == v),
            "table.app-fields shows {k} = {v}: {fields:?}"
        );
    }

    // Other series, and the raw tail folded and bounded.
    b.element("section#other's h2", "section#other h2").await;
    b.until("the tail's rows with their JSON folded", async |b| {
        let folded = b
            .client
            .find_all(Locator::Css("tbody#tail tr details.raw"))
            .await
            .ok()?;
        (!folded.is_empty()).then_some(())
    })
    .await;
    // Served again now that every collector has records (ten each): at most 50 rows, or
    // trimmed to 50 as the next records arrive.
    b.goto(PAGE).await;
    b.element("the tail", "tbody#tail").await;
    let served = tail_rows(&b).await;
    let keep = attr(&b.element("the tail", "tbody#tail").await, "data-keep").await;
    eprintln!(
        "tbody#tail rows: {served_tail_rows} as served at first, {served} as served now \
         (data-keep {keep:?})"
    );
    found.check(served <= 50, || {
        format!(
            "tbody#tail as served (on a second load, ~10 s after the agent started) holds \
             {served} rows (data-keep={keep:?}); the contract keeps at most 50 on screen"
        )
    });
    if served > 50 {
        let started = Instant::now();
        let mut now = served;
        while now > 50 && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = tail_rows(&b).await;
        }
        found.check(now <= 50, || {
            format!(
                "tbody#tail still holds {now} rows after {WAIT:?} of live records (live.js \
                 trims to data-keep only when a row is prepended)"
            )
        });
    }

    // Screenshots: desktop (1280 wide), each part; then a phone's width.
    b.screenshot("node-page-desktop").await;
    for (css, name) in [
        ("section#traffic", "node-page-desktop-traffic"),
        ("section#checks", "node-page-desktop-checks"),
        ("section#processes", "node-page-desktop-processes"),
        ("section#log-lines", "node-page-desktop-log-lines"),
        ("section#apps", "node-page-desktop-apps"),
    ] {
        scroll_to(&b, css).await;
        b.screenshot(name).await;
    }
    b.client
        .set_window_size(390, 844)
        .await
        .expect("resize the window");
    b.goto(PAGE).await;
    b.element("the node page on a phone", "section#host").await;
    b.screenshot("node-page-phone").await;
    for (css, name) in [
        ("section#traffic", "node-page-phone-traffic"),
        ("section#checks", "node-page-phone-checks"),
        ("section#log-lines", "node-page-phone-log-lines"),
    ] {
        scroll_to(&b, css).await;
        b.screenshot(name).await;
    }
    let widths = b
        .client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .unwrap();
    eprintln!("on a phone: [page width, window width] = {widths}");

    b.close().await;
    s.stop().await;
    eprintln!("took {:?}", started.elapsed());
    found.assert_none();
}

/// What the CPU chart draws: its lines' `d` and its legend's text.
async fn cpu_chart(b: &Browser) -> String {
    b.client
        .execute(
            "const f = document.querySelector('section#host figure#chart-cpu'); \
             if (!f) return ''; \
             const d = Array.from(f.querySelectorAll('svg path')).map(p => p.getAttribute('d')); \
             const legend = f.querySelector('ul.legend'); \
             return JSON.stringify([d, legend ? legend.textContent : null]);",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// How many rows `tbody#tail` holds.
async fn tail_rows(b: &Browser) -> usize {
    b.client
        .find_all(Locator::Css("tbody#tail > tr"))
        .await
        .map_or(0, |rows| rows.len())
}

/// Whether `row` has a cell for each of `values` (trimmed, exactly).
fn has_cells(row: &[String], values: &[&str]) -> bool {
    values.iter().all(|v| row.iter().any(|c| c.trim() == *v))
}

/// The cells of the first `tr.access` row of table#log-table one of whose cells is `path`.
async fn access_row(b: &Browser, path: &str) -> Option<Vec<String>> {
    // In one script: the live stream may replace the table between two reads.
    let v = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('table#log-table tr.access'))
                 .map(r => Array.from(r.querySelectorAll('td')).map(td => td.innerText));",
            vec![],
        )
        .await
        .ok()?;
    v.as_array()?.iter().find_map(|row| {
        let cells: Vec<String> = row
            .as_array()?
            .iter()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect();
        cells.iter().any(|c| c.trim() == path).then_some(cells)
    })
}

/// The (field, value) pairs of the `shop` app section's `table.app-fields`, read in one script.
async fn app_fields(b: &Browser) -> Vec<(String, String)> {
    texts_of(
        b,
        "return Array.from(document.querySelectorAll(
             \"section.app[data-collector='shop'] table.app-fields tr\"))
             .filter(tr => tr.querySelector('th') && tr.querySelector('td'))
             .map(tr => tr.querySelector('th').innerText.trim() + '\\u0000' +
                        tr.querySelector('td').innerText.trim());",
    )
    .await
    .into_iter()
    .filter_map(|pair| {
        pair.split_once('\u{0}')
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    })
    .collect()
}

/// The strings a script returns as an array, or none.
async fn texts_of(b: &Browser, script: &str) -> Vec<String> {
    b.client
        .execute(script, vec![])
        .await
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// 2: with the page open, a new 5xx line, a check going down, the plugin going CRITICAL and
/// the host charts' new points all show without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_page_follows_new_lines_and_states_live() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let traffic = Extras {
        traffic: true,
        ..Extras::default()
    };
    let mut s = Scenario::start(&env, traffic).await;
    s.app(serde_json::Map::new()).await;
    s.arrived().await;

    let b = Browser::open(&env, &s.ctl.url).await;
    b.log_in().await;
    b.goto(PAGE).await;
    row_in_state(&b, "check", "web-port", "up", "up").await;
    row_in_state(&b, "plugin", "load", "WARNING", "warning").await;
    b.element("the CPU chart", "section#host figure#chart-cpu svg path")
        .await;
    let cpu_before = cpu_chart(&b).await;
    let requests_before = legend(&b, "chart-web-requests").await;
    mark_page(&b).await;

    // A new 5xx line: its row arrives in the log table.
    append(
        &s.log,
        &access_line(SHOP, "DELETE", "/live/5xx-line", 500, 42),
    );
    let row = b
        .until(
            "the new 500 line's row in table#log-table, live",
            async |b| access_row(b, "/live/5xx-line").await,
        )
        .await;
    assert!(has_cells(&row, &["500", "DELETE", "42"]), "{row:?}");
    assert!(
        page_was_not_reloaded(&b).await,
        "the row came without a reload"
    );

    // The listening port goes away: the up check goes down, with its reason.
    drop(s.up.take());
    let down = row_in_state(&b, "check", "web-port", "down", "down").await;
    assert!(
        down.cells
            .get(3)
            .is_some_and(|d| d.contains("connect failed") || d.contains("refused")),
        "the check that went down shows why: {down:?}"
    );
    assert!(page_was_not_reloaded(&b).await);

    // The plugin's script now exits 2: CRITICAL, with its new first line.
    write_script(&s.plugin, PLUGIN_CRITICAL);
    let critical = row_in_state(&b, "plugin", "load", "CRITICAL", "critical").await;
    assert!(
        critical
            .cells
            .get(3)
            .is_some_and(|d| d.contains("CRITICAL - load 12")),
        "the plugin's new first line: {critical:?}"
    );
    assert!(page_was_not_reloaded(&b).await);

    // The host charts follow too (new points every second): the CPU chart's lines or its
    // legend's values change.
    let cpu_after = b
        .until(
            &format!(
                "figure#chart-cpu's lines (path d) or legend to change without a reload; \
                 before: {cpu_before}"
            ),
            async |b| {
                let now = cpu_chart(b).await;
                (now != cpu_before).then_some(now)
            },
        )
        .await;
    eprintln!("the CPU chart before: {cpu_before}\nafter: {cpu_after}");
    let requests_after = legend(&b, "chart-web-requests").await;
    eprintln!("requests legend before {requests_before:?}, after {requests_after:?}");
    assert!(
        page_was_not_reloaded(&b).await,
        "every change came without a reload"
    );
    // The live tail stays bounded while records keep arriving.
    let rows = b
        .client
        .find_all(Locator::Css("tbody#tail > tr"))
        .await
        .unwrap()
        .len();
    let mut found = Findings::default();
    found.check(rows <= 50, || {
        format!(
            "tbody#tail holds {rows} rows after live updates, more than the 50 the contract \
             keeps on screen"
        )
    });
    b.screenshot("node-page-live").await;

    b.close().await;
    s.stop().await;
    eprintln!("took {:?}", started.elapsed());
    found.assert_none();
}

/// Markup payloads: each carries a class no page would use, so an element made from it is
/// found by that class.
const PATH_MARKUP: &str = "/<b/class=pwn-path>bold</b>";
const PATH_SCRIPT: &str = "/<script/class=pwn-path2>window.__pwned=1</script>";
const VHOST_MARKUP: &str = "<i/class=pwn-vhost>v</i>";
const APP_MARKUP: &str = "<img src=x onerror=\"window.__pwned=2\" class=pwn-app>";
const CHECK_MARKUP: &str = "<img src=x onerror=window.__pwned=3 class=pwn-check>";
const ERROR_MARKUP: &str = "<script class=pwn-error>window.__pwned=4</script>";
const PLUGIN_MARKUP: &str = "<b class=pwn-plugin>p</b>";
const PLUGIN_TEXT_MARKUP: &str = "<img src=x class=pwn-ptext> CRITICAL";
const PWN: &str = ".pwn-path, .pwn-path2, .pwn-vhost, .pwn-app, .pwn-check, .pwn-error, \
                   .pwn-plugin, .pwn-ptext, [onerror]";

/// A batch as a node would send it (signed with the node's key) holding a check and a plugin
/// record whose names and texts are markup: names a real agent's config refuses, but a node's
/// batch is the node's to word.
fn marked_up_batch(seq: u64) -> crate::harness::Batch {
    use fleet::model::{BatchBody, Record, Sample};
    let now = fleet::timefmt::now_ms();
    let body = BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![
            Record {
                collector: "check".into(),
                ts: now,
                data: serde_json::json!({
                    "check": CHECK_MARKUP, "kind": "tcp", "target": "127.0.0.1:1",
                    "ok": false, "latency_ms": 0.2, "error": ERROR_MARKUP,
                }),
                samples: vec![
                    Sample::new("check.up", 0.0).with_label("check", CHECK_MARKUP),
                    Sample::new("check.latency_ms", 0.2).with_label("check", CHECK_MARKUP),
                ],
            },
            Record {
                collector: "plugin".into(),
                ts: now,
                data: serde_json::json!({
                    "plugin": PLUGIN_MARKUP, "status": "CRITICAL", "code": 2, "exit_code": 2,
                    "text": PLUGIN_TEXT_MARKUP,
                    "perfdata": [{ "label": "x", "value": 3.0, "uom": "", "warn": "1",
                                   "crit": "2", "min": null, "max": null }],
                    "duration_ms": 3, "truncated": false,
                }),
                samples: vec![
                    Sample::new("plugin.status", 2.0).with_label("plugin", PLUGIN_MARKUP),
                    Sample::new("plugin.perf", 3.0)
                        .with_label("plugin", PLUGIN_MARKUP)
                        .with_label("label", "x"),
                ],
            },
        ],
    };
    let mut batch =
        crate::harness::Batch::new(NODE, KEY, seq).body(serde_json::to_vec(&body).unwrap());
    batch.instance = "markup-sender".into();
    batch
}

/// What a page made of the payloads: elements by their classes, and whether any ran.
async fn assert_nothing_made(b: &Browser, when: &str) {
    let made = b.client.find_all(Locator::Css(PWN)).await.unwrap();
    let mut html = Vec::new();
    for el in &made {
        html.push(el.html(false).await.unwrap_or_default());
    }
    assert!(
        made.is_empty(),
        "markup from the node became elements ({when}): {html:?}"
    );
    let ran = b
        .client
        .execute("return window.__pwned === undefined", vec![])
        .await
        .unwrap();
    assert_eq!(ran, Value::Bool(true), "a payload's script ran ({when})");
}

/// 3: markup in a log line's path, a vhost, a check's name and reason, a plugin's name and
/// line, and an app's field is shown as text, at load and when it arrives live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_from_the_node_is_shown_never_run() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let s = Scenario::start(&env, Extras::default()).await;
    append(
        &s.log,
        &access_line(VHOST_MARKUP, "GET", PATH_MARKUP, 404, 10),
    );
    append(
        &s.log,
        &access_line(VHOST_MARKUP, "GET", PATH_SCRIPT, 500, 10),
    );
    let mut extra = serde_json::Map::new();
    extra.insert("note".into(), APP_MARKUP.into());
    s.app(extra).await;
    let (status, answer) = s.api.send(&marked_up_batch(1)).await;
    assert_eq!(status, 200, "{answer}");
    s.arrived().await;
    s.until("the marked-up line shipped", async |s| {
        s.recent("logs.nginx")
            .await
            .iter()
            .any(|r| r["data"]["path"] == PATH_MARKUP && r["data"]["vhost"] == VHOST_MARKUP)
            .then_some(())
    })
    .await;

    let b = Browser::open(&env, &s.ctl.url).await;
    b.log_in().await;
    // The marked-up vhost is a vhost of its own: open the page on it.
    let query: String = url_encode(VHOST_MARKUP);
    b.goto(&format!("{PAGE}?vhost={query}")).await;
    for (what, css, text) in [
        ("the log line's path", "table#log-table", PATH_MARKUP),
        ("the other log line's path", "table#log-table", PATH_SCRIPT),
        ("the vhost in nav#vhosts", "nav#vhosts", VHOST_MARKUP),
        ("the check's name", "table#check-table", CHECK_MARKUP),
        ("the check's reason", "table#check-table", ERROR_MARKUP),
        ("the plugin's name", "table#check-table", PLUGIN_MARKUP),
        (
            "the plugin's line",
            "table#check-table",
            "<img src=x class=pwn-ptext>",
        ),
        ("the app's field", "section#apps", APP_MARKUP),
    ] {
        b.until(&format!("{what} shown as text in {css}"), async |b| {
            texts(b, css)
                .await
                .iter()
                .any(|t| t.contains(text))
                .then_some(())
        })
        .await;
    }
    assert_nothing_made(&b, "at load").await;
    b.screenshot("node-page-markup").await;

    // Live: new marked-up data arrives through the stream's fragments.
    mark_page(&b).await;
    let live_path = "/<u/class=pwn-path>live</u>";
    append(&s.log, &access_line(VHOST_MARKUP, "GET", live_path, 500, 1));
    let (status, answer) = s.api.send(&marked_up_batch(2)).await;
    assert_eq!(status, 200, "{answer}");
    let mut extra = serde_json::Map::new();
    extra.insert("note".into(), format!("{APP_MARKUP} again").into());
    s.app(extra).await;
    b.until("the live line's path as text", async |b| {
        texts(b, "table#log-table")
            .await
            .iter()
            .any(|t| t.contains(live_path))
            .then_some(())
    })
    .await;
    b.until("the app's new field as text", async |b| {
        texts(b, "section#apps")
            .await
            .iter()
            .any(|t| t.contains(&format!("{APP_MARKUP} again")))
            .then_some(())
    })
    .await;
    assert_nothing_made(&b, "after live updates").await;
    assert!(page_was_not_reloaded(&b).await);

    b.close().await;
    s.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// 5: every series the node reports (the API's list) is drawn on some chart of the page:
/// its metric name is in some `data-metric`. Plain HTTP, with an nginx `stub_status` check as
/// well so `nginx.*` series are among them.
async fn every_series_of_the_node_is_on_some_chart_of_its_page(backend: Backend) {
    let env = Env::new(backend).await;
    let extras = Extras {
        nginx_status: true,
        traffic: true,
    };
    let s = Scenario::start(&env, extras).await;
    s.app(serde_json::Map::new()).await;
    s.arrived().await;
    s.until("the nginx.* series of the stub_status check", async |s| {
        s.series()
            .await
            .iter()
            .any(|(n, _)| n == "nginx.active_connections")
            .then_some(())
    })
    .await;
    let series = s.series().await;
    let names: BTreeSet<String> = series.into_iter().map(|(n, _)| n).collect();
    for family in [
        "web.",
        "tail.",
        "check.",
        "plugin.",
        "processes.",
        "shop.",
        "nginx.",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(family)),
            "the node reports {family}* series: {names:?}"
        );
    }

    let (http, cookie) = crate::harness::dashboard_login(&s.ctl.url, browser::TOKEN).await;
    let response = http
        .get(format!("{}{PAGE}", s.ctl.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    let drawn = data_metrics(&html);
    let missing: Vec<&String> = names.iter().filter(|n| !drawn.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "series the node reports that no chart's data-metric names: {missing:?}\n\
         (data-metric names on the page: {drawn:?})"
    );
    // And every chart names what it draws.
    let figures = html.matches("<figure").count();
    let named = html
        .split("<figure")
        .skip(1)
        .filter(|f| f[..f.find('>').unwrap_or(f.len())].contains("data-metric="))
        .count();
    assert_eq!(
        figures, named,
        "every figure on the page carries data-metric ({named} of {figures})"
    );
    s.stop().await;
}

crate::both_backends!(every_series_of_the_node_is_on_some_chart_of_its_page);

#[test]
fn data_metric_attributes_are_read_whole_and_split() {
    let html = r#"<figure class="chart" data-metric="cpu.used_percent">x</figure>
        <table id="check-table" data-metric="check.up plugin.status"></table>
        <figure data-metric='web.requests_per_second'></figure>"#;
    let got: Vec<String> = data_metrics(html).into_iter().collect();
    assert_eq!(
        got,
        [
            "check.up",
            "cpu.used_percent",
            "plugin.status",
            "web.requests_per_second"
        ]
    );
}
