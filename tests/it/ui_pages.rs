//! The dashboard pages beyond the overview, over HTTP (written by a helper): the node page
//! (server-drawn charts, legend, ranges, the live tail from the hot ring) on both backends;
//! escaping of everything users and nodes supply on /events, /errors, /nodes/{node} and
//! /commands; the event log's filters and empty states; the live streams `/live/events`,
//! `/live/nodes/{node}` and `/live/commands` (resuming with `Last-Event-ID`, filters); the
//! command form's two steps, with and without a dashboard key, CSRF and cross-site posts;
//! sparklines; the heartbeat list; and the login wall in front of every new page.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet::command::{Kind, Method, OperatorKey};
use fleet::model::{BatchBody, Record, Sample};
use fleet::pipeline::commands::Submission;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Batch, Client, Env, InProcess, eventually, node};

const TOKEN: &str = "ui-pages-test-operator-token";
const KEY1: &str = "key-of-web1-0123456789";
const KEY2: &str = "key-of-web2-0123456789";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// How long a live stream may take to send what a test waits for (streams look every 250 ms
/// or every second).
const LIVE_WAIT: Duration = Duration::from_secs(6);

/// A controller in process with a logged-in dashboard session.
struct Ui {
    c: InProcess,
    http: reqwest::Client,
    cookie: String,
}

impl Ui {
    async fn start(env: &Env, tweak: impl FnOnce(&mut fleet::config::ControllerConfig)) -> Self {
        let mut config = env.controller_config();
        config.api_tokens = vec![TOKEN.into()];
        tweak(&mut config);
        let c = InProcess::start(config).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut ui = Self {
            c,
            http,
            cookie: String::new(),
        };
        let response = ui
            .post_form_as("/login", &[("token", TOKEN), ("next", "/")], None, None)
            .await;
        assert_eq!(response.status(), 303, "logging in");
        let set = response.headers()["set-cookie"].to_str().unwrap();
        ui.cookie = set.split(';').next().unwrap().to_owned();
        ui
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.c.url)
    }

    async fn get_as(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    /// A page with this session: its status and text. Every page read here is also checked
    /// for the security headers and for inline code the CSP would refuse.
    async fn page(&self, path: &str) -> (u16, String) {
        let response = self.get_as(path, Some(&self.cookie)).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        csp_clean(&format!("GET {path}"), &headers, &text);
        (status, text)
    }

    /// A page that must be there.
    async fn ok(&self, path: &str) -> String {
        let (status, page) = self.page(path).await;
        assert_eq!(status, 200, "GET {path}: {page}");
        page
    }

    async fn post_form_as(
        &self,
        path: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> reqwest::Response {
        let body: String = {
            let mut url = reqwest::Url::parse("http://x/").unwrap();
            url.query_pairs_mut().extend_pairs(form);
            url.query().unwrap_or_default().to_owned()
        };
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }

    /// Posts a form with this session; returns the status and the page.
    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let response = self
            .post_form_as(path, form, Some(&self.cookie), origin)
            .await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        csp_clean(&format!("POST {path}"), &headers, &text);
        (status, text, headers)
    }

    /// This session's CSRF token (every page's logout form carries it).
    async fn csrf(&self) -> String {
        csrf_of(&self.ok("/commands").await)
    }

    fn api(&self) -> Client {
        Client::new(&self.c.url, TOKEN)
    }

    /// Adds an entry to the event log through the API; returns its id.
    async fn event(&self, body: Value) -> i64 {
        let (status, v) = self.api().post("/api/v1/events", body.to_string()).await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().expect("an event id")
    }

    /// Sends one signed batch of `records` as `node`.
    async fn ingest(&self, node: &str, key: &str, seq: u64, records: Vec<Record>) {
        let body = BatchBody {
            interval_ms: 10_000,
            dropped_batches: 0,
            records,
        };
        let batch = Batch::new(node, key, seq).body(serde_json::to_vec(&body).unwrap());
        let (status, v) = self.c.client().send(&batch).await;
        assert_eq!(status, 200, "ingest: {v}");
    }

    /// The ring sequence number of the newest record of `collector` on `node` that `pick`
    /// chooses (the tail's row ids and the live cursor are made of them).
    async fn seq(&self, node: &str, collector: &str, pick: impl Fn(&Value) -> bool) -> u64 {
        let path = format!("/api/v1/nodes/{node}/recent/{collector}?limit=100");
        let (status, v) = self.api().get(&path).await;
        assert_eq!(status, 200, "{path}: {v}");
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| pick(r))
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or_else(|| panic!("no such record of {collector} in the ring: {v}"))
    }

    /// The tail row id of `node`'s record of `collector` at `ts`.
    async fn tail_id(&self, node: &str, collector: &str, ts: i64) -> String {
        let seq = self.seq(node, collector, |r| r["ts"] == ts).await;
        format!("tail-{collector}-{seq}")
    }

    /// Opens a live stream with this session (optionally resuming after `last_event_id`).
    async fn sse(&self, path: &str, last_event_id: Option<&str>) -> Sse {
        let response = self.sse_response(path, last_event_id).await;
        assert_eq!(response.status(), 200, "GET {path}");
        crate::ui::assert_security_headers(path, response.headers());
        let kind = response.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Sse {
            response,
            buf: Vec::new(),
        }
    }

    async fn sse_response(&self, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .get(self.url(path))
            .header("cookie", &self.cookie)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    async fn stop(self) {
        self.c.stop().await;
    }
}

/// Every response carries the security headers; an HTML page (or SVG) holds no inline code.
#[track_caller]
fn csp_clean(what: &str, headers: &reqwest::header::HeaderMap, text: &str) {
    crate::ui::assert_security_headers(what, headers);
    let kind = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if kind.starts_with("text/html") || kind.starts_with("image/svg+xml") {
        crate::ui::assert_no_inline_code(what, text);
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

/// The text from `start` to the first `end` after it (inclusive): one element of a page.
fn element<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let at = page
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} is not on the page: {page}"));
    let rest = &page[at..];
    let stop = rest.find(end).map_or(rest.len(), |e| e + end.len());
    &rest[..stop]
}

/// The hidden fields of a confirmation page's send form, as the browser would post them.
fn send_fields(page: &str) -> Vec<(String, String)> {
    let form = element(page, "action=\"/commands/send\"", "</form>");
    form.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once('"').unwrap();
            let value = rest
                .split_once("value=\"")
                .map_or("", |(_, v)| v.split('"').next().unwrap());
            (
                name.to_owned(),
                value
                    .replace("&#39;", "'")
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

fn as_pairs(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// An open SSE response, read a block at a time.
struct Sse {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    /// The next event (keep-alive comments skipped), or `None` if none comes within `within`.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => return None,
                Ok(Err(err)) => panic!("the stream failed: {err}"),
                Err(_) => return None,
            }
        }
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 events");
            self.buf.drain(..end + 2);
            let mut event = SseEvent {
                event: "message".into(),
                id: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.split('\n') {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => event.event = value.to_owned(),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                // Fragments go into the page as they are: the CSP holds for them too.
                crate::ui::assert_no_inline_code(
                    &format!("a live {:?} event", event.event),
                    &event.data,
                );
                return Some(event);
            }
        }
    }

    /// Reads events until one passes `want`; returns it and those before it.
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&SseEvent) -> bool,
    ) -> (SseEvent, Vec<SseEvent>) {
        let deadline = tokio::time::Instant::now() + LIVE_WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) if want(&e) => return (e, before),
                Some(e) => before.push(e),
                None => panic!("no {what} within {LIVE_WAIT:?}; got {before:#?}"),
            }
        }
    }
}

/// One tick of a host's system collectors: CPU, memory, swap and load (`system`), the root
/// disk (`disk`, 1 ms earlier) and two interfaces (`network`, 2 ms earlier).
fn system_records(ts: i64, cpu: f64) -> Vec<Record> {
    vec![
        Record {
            collector: "system".into(),
            ts,
            data: json!({ "uptime_s": 1000, "tick": ts }),
            samples: vec![
                Sample::new("cpu.used_percent", cpu),
                Sample::new("memory.used_percent", 63.4),
                Sample::new("swap.used_bytes", 3.0 * GIB),
                Sample::new("load.1", 0.75),
            ],
        },
        Record {
            collector: "disk".into(),
            ts: ts - 1,
            data: json!({ "mounts": 1 }),
            samples: vec![Sample::new("disk.used_percent", 61.0).with_label("mount", "/")],
        },
        Record {
            collector: "network".into(),
            ts: ts - 2,
            data: json!({ "interfaces": 2 }),
            samples: vec![
                Sample::new("net.rx_bytes_per_sec", 20.0 * 1024.0).with_label("interface", "eth0"),
                Sample::new("net.rx_bytes_per_sec", 5.0e6).with_label("interface", "lo"),
            ],
        },
    ]
}

/// Reads the stream for a moment: nothing of `collector` may come (it was all sent).
async fn nothing_more_of(sse: &mut Sse, collector: &str) {
    let until = std::time::Instant::now() + Duration::from_millis(1_500);
    while let Some(e) = sse
        .next(until.saturating_duration_since(std::time::Instant::now()))
        .await
    {
        assert!(!e.data.contains(collector), "sent twice: {e:?}");
    }
}

fn now_ms() -> i64 {
    fleet::timefmt::now_ms()
}

// ---- the node page -----------------------------------------------------------------------------

both_backends!(the_node_page_draws_charts_and_tails_the_hot_ring);
async fn the_node_page_draws_charts_and_tails_the_hot_ring(backend: Backend) {
    let env = Env::new(backend).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
    })
    .await;
    // Three ticks 30 s apart: three points on the hour's chart (12 s buckets), joined (the gap
    // that breaks a line is 36 s there).
    let now = now_ms();
    let ticks = [now - 60_000, now - 30_000, now];
    for (i, (ts, cpu)) in ticks.iter().zip([10.0, 25.0, 42.0]).enumerate() {
        ui.ingest("web1", KEY1, i as u64 + 1, system_records(*ts, cpu))
            .await;
    }
    let page = ui.ok("/nodes/web1").await;
    assert!(page.contains("<h1>web1</h1>"), "{page}");

    for id in [
        "chart-cpu",
        "chart-memory",
        "chart-swap",
        "chart-disk",
        "chart-network",
        "chart-load",
    ] {
        let chart = element(&page, &format!("id=\"{id}\""), "</figure>");
        assert!(chart.contains("<svg"), "{id}: {chart}");
        assert!(chart.contains("<path d=\"M"), "{id}: {chart}");
        assert!(chart.contains("Times in UTC."), "{id}: {chart}");
    }
    let cpu = element(&page, "id=\"chart-cpu\"", "</figure>");
    assert!(
        cpu.contains("used: <strong>42 %</strong> now"),
        "the legend says the latest value in words: {cpu}"
    );
    assert!(cpu.contains("(10 % – 42 %)"), "and the range: {cpu}");
    let d = element(cpu, "<path d=\"", "\" ");
    assert_eq!(
        (d.matches('M').count(), d.matches('L').count()),
        (1, 2),
        "three points 30 s apart make one line: {d}"
    );
    let memory = element(&page, "id=\"chart-memory\"", "</figure>");
    assert!(memory.contains("<strong>63 %</strong>"), "{memory}");
    let swap = element(&page, "id=\"chart-swap\"", "</figure>");
    assert!(swap.contains("<strong>3.00 GiB</strong>"), "{swap}");
    let disk = element(&page, "id=\"chart-disk\"", "</figure>");
    assert!(disk.contains("used /: <strong>61 %</strong>"), "{disk}");
    let network = element(&page, "id=\"chart-network\"", "</figure>");
    assert!(
        network.contains("received eth0: <strong>20.0 KiB/s</strong>"),
        "{network}"
    );
    assert!(
        !network.contains("received lo"),
        "loopback is left out: {network}"
    );
    let load = element(&page, "id=\"chart-load\"", "</figure>");
    assert!(load.contains("1 min: <strong>0.75</strong>"), "{load}");

    // The vitals line, in words.
    let vitals = element(&page, "id=\"vitals\"", "</dl>");
    for word in ["up", "42 %", "63 %", "61 %", "0.75"] {
        assert!(vitals.contains(word), "{word}: {vitals}");
    }
    assert!(
        page.contains("data-live=\"/live/nodes/web1?after="),
        "{page}"
    );

    // Range links: the current one is not a link.
    assert!(
        page.contains("<strong aria-current=\"true\">1h</strong>"),
        "{page}"
    );
    for r in ["6h", "24h", "7d"] {
        assert!(
            page.contains(&format!("href=\"/nodes/web1?range={r}\"")),
            "{r}: {page}"
        );
    }
    assert!(!page.contains("href=\"/nodes/web1?range=1h\""), "{page}");

    // The live tail: every record of the ring, newest first.
    let tail = element(&page, "id=\"tail\"", "</tbody>");
    let position = |id: String| {
        tail.find(&format!("<tr id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} in the tail: {tail}"))
    };
    let newest = position(ui.tail_id("web1", "system", ticks[2]).await);
    let disk_row = position(ui.tail_id("web1", "disk", ticks[2] - 1).await);
    let network_row = position(ui.tail_id("web1", "network", ticks[2] - 2).await);
    let older = position(ui.tail_id("web1", "system", ticks[1]).await);
    let oldest = position(ui.tail_id("web1", "system", ticks[0]).await);
    assert!(
        newest < disk_row && disk_row < network_row && network_row < older && older < oldest,
        "newest first: {tail}"
    );
    assert_eq!(tail.matches("<tr id=\"tail-").count(), 9, "{tail}");
    assert!(tail.contains("uptime_s"), "the record's document: {tail}");

    // A week: the newest point of each bucket is kept, so the legend still says it.
    let week = ui.ok("/nodes/web1?range=7d").await;
    assert!(
        week.contains("<strong aria-current=\"true\">7d</strong>"),
        "{week}"
    );
    assert!(week.contains("href=\"/nodes/web1?range=1h\""), "{week}");
    let cpu = element(&week, "id=\"chart-cpu\"", "</figure>");
    assert!(cpu.contains("<path d=\"M"), "{cpu}");
    assert!(cpu.contains("<strong>42 %</strong> now"), "{cpu}");
    for range in ["6h", "24h", ""] {
        assert_eq!(
            ui.page(&format!("/nodes/web1?range={range}")).await.0,
            200,
            "{range:?}"
        );
    }

    // Bad ranges and unknown parameters are refused; an unknown node is not found.
    for path in [
        "/nodes/web1?range=2y",
        "/nodes/web1?range=1H",
        "/nodes/web1?zoom=2",
    ] {
        let (status, body) = ui.page(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, body) = ui.page("/nodes/web1?range=2y").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("1h, 6h, 24h, 7d"),
        "says what is allowed: {body}"
    );
    let response = ui.get_as("/nodes/nope", Some(&ui.cookie)).await;
    assert_eq!(response.status(), 404);
    // Not a node name at all: refused (400, or 404 as no such node), never as HTML.
    let response = ui.get_as("/nodes/%3Cscript%3E", Some(&ui.cookie)).await;
    assert!(
        [400, 404].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    assert!(
        !response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("html"),
        "an error echoing the name is not HTML"
    );

    // An enrolled node that has sent nothing says so in words.
    let quiet = ui.ok("/nodes/web2").await;
    assert!(quiet.contains("No cpu data in this range."), "{quiet}");
    assert!(
        quiet.contains("Nothing from web2 in the hot ring yet."),
        "{quiet}"
    );
    assert!(!quiet.contains("<svg"), "{quiet}");
    assert!(!quiet.contains("<tr id=\"tail-"), "{quiet}");
    ui.stop().await;
}

// ---- escaping ----------------------------------------------------------------------------------

/// Event messages, fields and services, command arguments and output, node labels and record
/// documents are shown as text on every page, never as markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_users_and_nodes_supply_is_escaped_on_every_page() {
    let env = Env::new(Backend::Embedded).await;
    let mut web1 = node("web1", KEY1, &[]);
    web1.labels = BTreeMap::from([("note".to_owned(), "<script>alert(2)</script>".to_owned())]);
    let ui = Ui::start(&env, |config| config.nodes = vec![web1]).await;

    ui.event(json!({
        "service": "<b>svc</b>",
        "node": "web1",
        "level": "error",
        "message": "<script>alert(1)</script>",
        "fields": { "x": "<img src=x onerror=alert(8)>" },
    }))
    .await;
    ui.ingest(
        "web1",
        KEY1,
        1,
        vec![Record {
            collector: "app".into(),
            ts: now_ms(),
            data: json!({ "msg": "<script>alert(7)</script>" }),
            samples: vec![],
        }],
    )
    .await;

    // A command with <script> in its arguments, and its node's report with <script> in the
    // output and the error (a failure: it goes to the error log too).
    let key = OperatorKey::generate();
    let command = fleet::command::build(
        &key,
        "web1",
        Kind::CommandAck,
        Method::CliCommand,
        vec!["echo".into(), "<script>alert(4)</script>".into()],
        Duration::from_secs(10),
        Duration::from_secs(3600),
        false,
    );
    let id = command.id.clone();
    let submission = Submission {
        command,
        retries: 0,
    };
    let (status, v) = ui
        .api()
        .post(
            "/api/v1/commands",
            json!({ "commands": [submission] }).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let polled = agent_request(
        &ui,
        "web1",
        KEY1,
        "GET",
        "/api/v1/agent/commands?wait_ms=100",
        "",
    )
    .await;
    assert_eq!(polled["commands"][0]["id"], id.as_str(), "{polled}");
    // The error log's live stream is open when the failure comes in.
    let mut live_errors = ui.sse("/live/errors", None).await;
    let report = json!({ "reports": [{
        "id": id,
        "state": "failed",
        "result": {
            "exit_code": 1,
            "stdout": "<script>alert(5)</script>",
            "stderr": "<b>x</b>",
            "error": "<script>alert(6)</script>",
        },
    }]});
    agent_request(
        &ui,
        "web1",
        KEY1,
        "POST",
        "/api/v1/agent/reports",
        &report.to_string(),
    )
    .await;
    let (_, stored) = ui.api().get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(stored["state"], "failed", "{stored}");

    let no_markup = |path: &str, page: &str| {
        assert!(!page.contains("<script>"), "{path}: {page}");
        assert!(!page.contains("<img src=x"), "{path}: {page}");
        assert!(!page.contains("<b>"), "{path}: {page}");
    };
    let events = ui.ok("/events").await;
    no_markup("/events", &events);
    for text in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(8)&gt;",
        "&lt;b&gt;svc&lt;/b&gt;",
    ] {
        assert!(events.contains(text), "{text}: {events}");
    }

    let node_page = ui.ok("/nodes/web1").await;
    no_markup("/nodes/web1", &node_page);
    for text in [
        "&lt;script&gt;alert(2)&lt;/script&gt;",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;script&gt;alert(4)&lt;/script&gt;",
        "&lt;script&gt;alert(5)&lt;/script&gt;",
        "&lt;script&gt;alert(7)&lt;/script&gt;",
    ] {
        assert!(node_page.contains(text), "{text}: {node_page}");
    }

    let commands = ui.ok("/commands").await;
    no_markup("/commands", &commands);
    for text in [
        "&lt;script&gt;alert(4)&lt;/script&gt;",
        "&lt;script&gt;alert(5)&lt;/script&gt;",
        "&lt;b&gt;x&lt;/b&gt;",
        "&lt;script&gt;alert(6)&lt;/script&gt;",
    ] {
        assert!(commands.contains(text), "{text}: {commands}");
    }
    assert!(commands.contains(&format!("id=\"cmd-{id}\"")), "{commands}");

    let errors = ui.ok("/errors").await;
    no_markup("/errors", &errors);
    assert!(
        errors.contains("&lt;script&gt;alert(6)&lt;/script&gt;"),
        "the failure is in the error log: {errors}"
    );
    let (got, _) = live_errors
        .until("the failure, live", |e| e.event == "prepend")
        .await;
    assert!(got.data.starts_with("events\n<tr id=\"event-"), "{got:?}");
    assert!(!got.data.contains("<script>"), "{got:?}");
    assert!(
        got.data.contains("&lt;script&gt;alert(6)&lt;/script&gt;"),
        "{got:?}"
    );
    drop(live_errors);

    // What the form is given comes back escaped, in text and in attributes.
    let csrf = ui.csrf().await;
    let (status, page, _) = ui
        .post_form(
            "/commands/confirm",
            &[
                ("csrf", &csrf),
                ("targets", "web1"),
                ("command", "echo \"<script>alert(9)</script>\""),
            ],
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    no_markup("/commands/confirm", &page);
    assert!(page.contains("&lt;script&gt;alert(9)"), "{page}");
    let (status, page, _) = ui
        .post_form(
            "/commands/confirm",
            &[
                ("csrf", &csrf),
                ("targets", "\"><script>alert(10)</script>"),
                ("command", "uptime"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    no_markup("/commands/confirm", &page);
    assert!(!page.contains("\"><script>"), "{page}");
    ui.stop().await;
}

/// A request to the agent side of the HTTP bus, signed with the node's key as the agent signs.
async fn agent_request(
    ui: &Ui,
    node: &str,
    key: &str,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> Value {
    let path = path_and_query.split('?').next().unwrap();
    let ts = fleet::wire::request_timestamp_ms();
    let signed_as = format!("{method} {path}");
    let sig = fleet::wire::sign_agent(key.as_bytes(), node, &signed_as, ts, body.as_bytes());
    let response = ui
        .http
        .request(
            method.parse().unwrap(),
            format!("{}{path_and_query}", ui.c.url),
        )
        .header("x-fleet-node", node)
        .header("x-fleet-timestamp", ts.to_string())
        .header("x-fleet-signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{signed_as}");
    response.json().await.unwrap()
}

// ---- the event log -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_filters_by_level_node_service_and_text() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[])];
    })
    .await;

    // Empty, it says how entries get here; so does the error log.
    let page = ui.ok("/events").await;
    assert!(page.contains("No events yet."), "{page}");
    assert!(page.contains("POST /api/v1/events"), "{page}");
    let page = ui.ok("/errors").await;
    assert!(page.contains("No errors."), "{page}");

    for (service, node, level, message) in [
        ("web", Some("web1"), "info", "request served"),
        ("db", None, "error", "replication behind"),
        ("db", Some("web1"), "warning", "Slow disk"),
        ("cron", None, "debug", "tick"),
    ] {
        let mut body = json!({ "service": service, "level": level, "message": message });
        if let Some(node) = node {
            body["node"] = json!(node);
        }
        ui.event(body).await;
    }
    let listed = |page: &str| -> Vec<&'static str> {
        ["request served", "replication behind", "Slow disk", "tick"]
            .into_iter()
            .filter(|m| page.contains(&format!("<td class=\"message\">{m}</td>")))
            .collect()
    };

    let page = ui.ok("/events").await;
    assert_eq!(
        listed(&page),
        ["request served", "replication behind", "Slow disk", "tick"]
    );
    assert_eq!(page.matches("<tr id=\"event-").count(), 4, "{page}");
    assert!(!page.contains("No events yet."), "{page}");
    // Newest first.
    assert!(page.find("tick").unwrap() < page.find("request served").unwrap());

    for (query, expected) in [
        ("level=error", vec!["replication behind"]),
        ("level=warning", vec!["replication behind", "Slow disk"]),
        ("level=4", vec!["replication behind"]),
        ("node=web1", vec!["request served", "Slow disk"]),
        ("service=db", vec!["replication behind", "Slow disk"]),
        ("q=SLOW", vec!["Slow disk"]),
        ("service=db&node=web1", vec!["Slow disk"]),
        ("service=web&level=error", vec![]),
        // A browser submits every field of the form, empty ones too: they mean "any".
        (
            "node=&service=&level=&q=&from=&to=",
            vec!["request served", "replication behind", "Slow disk", "tick"],
        ),
        (
            "node=&service=db&level=&q=",
            vec!["replication behind", "Slow disk"],
        ),
        (
            "from=-1h&to=now",
            vec!["request served", "replication behind", "Slow disk", "tick"],
        ),
    ] {
        let page = ui.ok(&format!("/events?{query}")).await;
        assert_eq!(listed(&page), expected, "{query}");
        if expected.is_empty() {
            assert!(page.contains("Nothing matches these filters."), "{page}");
        }
    }

    // The form shows the filters again, and the live stream follows the same ones.
    let page = ui.ok("/events?service=db&level=warning&q=").await;
    assert!(page.contains("name=\"service\" value=\"db\""), "{page}");
    assert!(
        page.contains("<option value=\"warning\" selected>"),
        "{page}"
    );
    let latest = ui.api().get("/api/v1/events").await.1["latest_id"]
        .as_i64()
        .unwrap();
    assert!(
        page.contains(&format!(
            "data-live=\"/live/events?service=db&amp;level=warning&amp;after={latest}\""
        )),
        "{page}"
    );
    // A window into the past is not followed live.
    let page = ui.ok("/events?to=now").await;
    assert!(!page.contains("data-live=\"/live/events"), "{page}");

    for bad in ["level=loud", "level=9", "from=yesterday-ish", "colour=red"] {
        let (status, body) = ui.page(&format!("/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Events are not errors.
    let page = ui.ok("/errors").await;
    assert!(page.contains("No errors."), "{page}");
    ui.stop().await;
}

// ---- live streams ------------------------------------------------------------------------------

both_backends!(the_live_event_log_resumes_without_loss_or_repeats);
async fn the_live_event_log_resumes_without_loss_or_repeats(backend: Backend) {
    let env = Env::new(backend).await;
    let ui = Ui::start(&env, |_| {}).await;
    let a = ui
        .event(json!({ "service": "web", "message": "before the page" }))
        .await;
    let page = ui.ok("/events").await;
    assert!(
        page.contains(&format!("data-live=\"/live/events?after={a}\"")),
        "{page}"
    );
    let live = format!("/live/events?after={a}");
    let mut sse = ui.sse(&live, None).await;
    let b = ui
        .event(json!({ "service": "web", "level": "warning", "message": "second <b>" }))
        .await;
    let (got, before) = sse.until("the new event", |e| e.event == "prepend").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(got.id.as_deref(), Some(b.to_string().as_str()), "{got:?}");
    assert!(
        got.data
            .starts_with(&format!("events\n<tr id=\"event-{b}\"")),
        "{got:?}"
    );
    assert!(got.data.contains("second &lt;b&gt;"), "{got:?}");
    assert!(got.data.contains("warning"), "{got:?}");
    drop(sse);

    // The browser reconnects to the same URL, saying the last id it saw: it gets what came
    // after that id, once, and not what it already has.
    let mut sse = ui.sse(&live, Some(&b.to_string())).await;
    let c = ui
        .event(json!({ "service": "web", "message": "third" }))
        .await;
    let (got, before) = sse.until("the third event", |e| e.event == "prepend").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(got.id.as_deref(), Some(c.to_string().as_str()), "{got:?}");
    assert!(
        got.data
            .starts_with(&format!("events\n<tr id=\"event-{c}\"")),
        "{got:?}"
    );
    assert!(
        sse.next(Duration::from_millis(700)).await.is_none(),
        "nothing else"
    );
    drop(sse);

    // A filtered stream sends only what passes its filter.
    let mut sse = ui
        .sse(&format!("/live/events?level=error&after={c}"), None)
        .await;
    let d = ui
        .event(json!({ "service": "web", "level": "info", "message": "fine" }))
        .await;
    let e = ui
        .event(json!({ "service": "web", "level": "error", "message": "broken" }))
        .await;
    let (got, before) = sse.until("the error", |e| e.event == "prepend").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        got.id.as_deref(),
        Some(e.to_string().as_str()),
        "{d} is info: {got:?}"
    );
    assert!(got.data.contains("broken") && !got.data.contains("fine"));
    drop(sse);

    // Empty filter fields mean "any"; bad ones are refused before streaming.
    let mut sse = ui
        .sse(
            &format!("/live/events?service=&node=&level=&q=&after={e}"),
            None,
        )
        .await;
    let f = ui
        .event(json!({ "service": "db", "level": "debug", "message": "any" }))
        .await;
    let (got, _) = sse.until("any event", |e| e.event == "prepend").await;
    assert_eq!(got.id.as_deref(), Some(f.to_string().as_str()), "{got:?}");
    drop(sse);
    for (path, last) in [
        ("/live/events?level=loud", None),
        ("/live/events?after=-1", None),
        ("/live/events?colour=red", None),
        ("/live/events", Some("not-an-id")),
    ] {
        let response = ui.sse_response(path, last).await;
        assert_eq!(response.status(), 400, "{path} {last:?}");
    }
    ui.stop().await;
}

both_backends!(the_live_node_page_sends_new_records_vitals_and_events);
async fn the_live_node_page_sends_new_records_vitals_and_events(backend: Backend) {
    let env = Env::new(backend).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
    })
    .await;
    let t1 = now_ms() - 5_000;
    ui.ingest("web1", KEY1, 1, system_records(t1, 10.0)).await;
    let other = ui
        .event(json!({ "node": "web2", "service": "x", "message": "another node" }))
        .await;
    let page = ui.ok("/nodes/web1").await;
    // The page's stream starts after what it shows: its newest event and newest records.
    let seq = |collector: &'static str, ts: i64| {
        let ui = &ui;
        async move { ui.seq("web1", collector, |r| r["ts"] == ts).await }
    };
    let (d1, n1, s1) = (
        seq("disk", t1 - 1).await,
        seq("network", t1 - 2).await,
        seq("system", t1).await,
    );
    let live = format!(
        "/live/nodes/web1?after={other}&tail=disk%3A{d1}+network%3A{n1}+system%3A{s1}&range=1h"
    );
    assert!(
        page.contains(&format!("data-live=\"{}\"", live.replace('&', "&amp;"))),
        "{page}"
    );
    let mut sse = ui.sse(&live, None).await;

    // An event of this node (which also shows the stream has made its first look).
    let e1 = ui
        .event(json!({ "node": "web1", "level": "notice", "message": "deployed" }))
        .await;
    let (got, before) = sse
        .until("the node's event", |e| e.event == "prepend")
        .await;
    // The first look sends the vitals once (the page may be older than the stream); nothing
    // else the page already shows comes again.
    assert!(
        before.len() <= 1
            && before
                .iter()
                .all(|e| e.event == "replace" && e.data.contains("id=\"vitals\"")),
        "the page is current: {before:#?}"
    );
    assert!(
        got.data
            .starts_with(&format!("events\n<tr id=\"event-{e1}\"")),
        "{got:?}"
    );
    let cursor = |event: i64, disk: u64, network: u64, system: u64| {
        format!("{event} disk:{disk} network:{network} system:{system}")
    };
    assert_eq!(
        got.id.as_deref(),
        Some(cursor(e1, d1, n1, s1).as_str()),
        "{got:?}"
    );

    // Another node's event is not this page's; a new batch is.
    let other_again = ui
        .event(json!({ "node": "web2", "service": "x", "message": "another node again" }))
        .await;
    let t2 = now_ms();
    ui.ingest("web1", KEY1, 2, system_records(t2, 77.0)).await;
    let mut seen = Vec::new();
    let mut vitals = None;
    let mut host = None;
    while seen.len() < 3 || vitals.is_none() || host.is_none() {
        let e = sse.next(LIVE_WAIT).await.unwrap_or_else(|| {
            panic!("the batch's records, vitals and host charts; got {seen:#?} {vitals:?}")
        });
        match e.event.as_str() {
            "replace" if e.data.contains("id=\"vitals\"") => vitals = Some(e),
            // The sections the batch's collectors feed are drawn again.
            "replace" if e.data.starts_with("<section id=\"host\"") => host = Some(e),
            "replace" => assert!(e.data.starts_with("<section id=\"other\""), "{e:?}"),
            "prepend" => seen.push(e),
            other => panic!("{other}: {e:?}"),
        }
    }
    let host = host.unwrap();
    assert!(
        host.data.contains("<strong>77 %</strong> now"),
        "the CPU chart says the new value: {host:?}"
    );
    assert!(
        !seen.iter().any(|e| e.data.contains("another node")),
        "{seen:#?}"
    );
    // Oldest first, so the newest ends up on top; each id says where the stream is.
    let (d2, n2, s2) = (
        seq("disk", t2 - 1).await,
        seq("network", t2 - 2).await,
        seq("system", t2).await,
    );
    assert!(d2 > d1 && n2 > n1 && s2 > s1, "sequence numbers rise");
    let expected = [
        ("network", n2, cursor(e1, d1, n2, s1)),
        ("disk", d2, cursor(e1, d2, n2, s1)),
        ("system", s2, cursor(e1, d2, n2, s2)),
    ];
    for (e, (collector, seq, id)) in seen.iter().zip(&expected) {
        assert!(
            e.data
                .starts_with(&format!("tail\n<tr id=\"tail-{collector}-{seq}\"")),
            "{e:?}"
        );
        // The event part is where the stream is in the whole log: past the other node's
        // event once a look has read it (it may have, before the batch came).
        let passed_other = id.replacen(&e1.to_string(), &other_again.to_string(), 1);
        assert!(
            e.id.as_deref() == Some(id.as_str()) || e.id.as_deref() == Some(passed_other.as_str()),
            "{e:?} should have the id {id:?} or {passed_other:?}"
        );
    }
    let system = &seen[2];
    assert!(system.data.contains("uptime_s"), "{system:?}");
    let vitals = vitals.unwrap();
    assert!(vitals.data.starts_with("<dl"), "{vitals:?}");
    assert!(vitals.data.contains("id=\"vitals\""), "{vitals:?}");
    assert!(vitals.data.contains("77 %"), "{vitals:?}");
    drop(sse);

    // Reconnecting with the last id: only what is newer comes, nothing twice.
    let last = seen[2].id.clone().unwrap();
    let mut sse = ui.sse(&live, Some(&last)).await;
    let t3 = now_ms();
    ui.ingest("web1", KEY1, 3, system_records(t3, 50.0)).await;
    let (got, before) = sse.until("the third batch", |e| e.event == "prepend").await;
    assert!(before.iter().all(|e| e.event == "replace"), "{before:#?}");
    let network3 = ui.tail_id("web1", "network", t3 - 2).await;
    assert!(
        got.data
            .starts_with(&format!("tail\n<tr id=\"{network3}\"")),
        "{got:?}"
    );
    // Records of one time over several batches (a log's lines of one second), and one from
    // an app whose clock is a year ahead: each comes, once, and the far-future time holds
    // nothing back.
    let t4 = now_ms();
    let line = |n: u32, ts: i64| Record {
        collector: "logs.app".into(),
        ts,
        data: json!({ "line": format!("line number {n}") }),
        samples: Vec::new(),
    };
    let year_ahead = t4 + 365 * 86_400_000;
    ui.ingest("web1", KEY1, 4, vec![line(0, t4), line(1, t4)])
        .await;
    ui.ingest("web1", KEY1, 5, vec![line(2, t4)]).await;
    ui.ingest("web1", KEY1, 6, vec![line(3, year_ahead)]).await;
    ui.ingest("web1", KEY1, 7, vec![line(4, t4), line(5, t4)])
        .await;
    let mut lines = Vec::new();
    while lines.len() < 6 {
        let e = sse
            .next(LIVE_WAIT)
            .await
            .unwrap_or_else(|| panic!("six lines; got {lines:#?}"));
        if e.event == "prepend" && e.data.contains("logs.app") {
            lines.push(e);
        }
    }
    // One collector's records come in ring order, whatever their times, and each id resumes
    // after exactly what was sent before it.
    for (n, e) in lines.iter().enumerate() {
        let text = format!("line number {n}");
        let seq = ui
            .seq("web1", "logs.app", |r| r["data"]["line"] == text.as_str())
            .await;
        assert!(
            e.data
                .starts_with(&format!("tail\n<tr id=\"tail-logs.app-{seq}\"")),
            "line {n} in its place: {e:?}"
        );
        assert!(e.data.contains(&text), "{e:?}");
        let id = e.id.as_deref().unwrap();
        assert!(
            id.split(' ').any(|part| part == format!("logs.app:{seq}")),
            "{id}"
        );
    }
    nothing_more_of(&mut sse, "logs.app").await;
    drop(sse);
    // Reconnecting after the year-ahead line: the two after it, and nothing else of the log.
    let mut sse = ui.sse(&live, lines[3].id.as_deref()).await;
    for n in [4, 5] {
        let (e, _) = sse
            .until("the lines after the reconnect", |e| {
                e.event == "prepend" && e.data.contains("logs.app")
            })
            .await;
        assert!(e.data.contains(&format!("line number {n}")), "{e:?}");
    }
    nothing_more_of(&mut sse, "logs.app").await;
    drop(sse);

    for (path, last) in [
        ("/live/nodes/web1", Some("not a cursor")),
        ("/live/nodes/web1", Some("3 <b>:1")),
        ("/live/nodes/bad%20name", None),
        ("/live/nodes/web1?colour=red", None),
    ] {
        let response = ui.sse_response(path, last).await;
        assert_eq!(response.status(), 400, "{path} {last:?}");
    }
    ui.stop().await;
}

/// A page that reconnects may have missed changes while it was away (the node went down, say):
/// like the overview's stream, the node's stream should send the vitals again on a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_node_page_gets_its_vitals_again() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.nodes = vec![node("web1", KEY1, &[])]).await;
    let t1 = now_ms();
    ui.ingest("web1", KEY1, 1, system_records(t1, 10.0)).await;
    let latest = ui
        .event(json!({ "node": "web1", "message": "hello" }))
        .await;
    // The page was open with its vitals from before this batch; its stream dropped; the batch
    // came; the browser reconnects with the last id it saw.
    let last = format!("{latest} disk:{} network:{} system:{}", t1 - 1, t1 - 2, t1);
    ui.ingest("web1", KEY1, 2, system_records(t1 + 1000, 88.0))
        .await;
    let mut sse = ui.sse("/live/nodes/web1", Some(&last)).await;
    let (got, _) = sse
        .until("the vitals", |e| {
            e.event == "replace" && e.data.contains("id=\"vitals\"")
        })
        .await;
    assert!(got.data.contains("88 %"), "{got:?}");
    ui.stop().await;
}

/// The page shows the tail and vitals as they were when it was made; its stream starts from
/// what the hot ring holds when the browser connects. A batch stored in between (the page is
/// loading its script) is on neither: the tail should come to hold it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_between_the_node_page_and_its_stream_reach_the_page() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.nodes = vec![node("web1", KEY1, &[])]).await;
    let t1 = now_ms() - 1000;
    ui.ingest("web1", KEY1, 1, system_records(t1, 10.0)).await;
    let page = ui.ok("/nodes/web1").await;
    let live = element(&page, "data-live=\"", "\">")
        .trim_start_matches("data-live=\"")
        .trim_end_matches("\">")
        .replace("&amp;", "&");
    let t2 = now_ms();
    ui.ingest("web1", KEY1, 2, system_records(t2, 90.0)).await;
    let mut sse = ui.sse(&live, None).await;
    let id = ui.tail_id("web1", "system", t2).await;
    let (got, _) = sse
        .until("the record the page did not show", |e| {
            e.data.starts_with(&format!("tail\n<tr id=\"{id}\""))
        })
        .await;
    assert!(got.data.contains("90.0"), "{got:?}");
    ui.stop().await;
}

// ---- commands ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dashboard_key_the_form_shows_the_fleet_send_line_and_sends_nothing() {
    let env = Env::new(Backend::Embedded).await;
    let mut web1 = node("web1", KEY1, &[]);
    web1.labels = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
    let mut web2 = node("web2", KEY2, &[]);
    web2.labels = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
    let ui = Ui::start(&env, |config| config.nodes = vec![web1, web2]).await;

    let page = ui.ok("/commands").await;
    assert!(page.contains("Sending from this page is off"), "{page}");
    assert!(page.contains("action=\"/commands/confirm\""), "{page}");
    assert!(page.contains("No commands yet."), "{page}");
    let csrf = csrf_of(&page);
    let prefilled = ui.ok("/commands?nodes=web2").await;
    assert!(
        prefilled.contains("name=\"targets\" value=\"web2\""),
        "{prefilled}"
    );

    // No CSRF token, a wrong one, or another site's form: refused.
    let form = [("targets", "web1"), ("command", "uptime")];
    let (status, _, _) = ui.post_form("/commands/confirm", &form, None).await;
    assert_eq!(status, 403);
    let wrong = "0".repeat(64);
    let (status, _, _) = ui
        .post_form(
            "/commands/confirm",
            &[("csrf", &wrong), ("targets", "web1"), ("command", "uptime")],
            None,
        )
        .await;
    assert_eq!(status, 403);

    let confirm = |targets: &'static str, command: &'static str| {
        let csrf = csrf.clone();
        let ui = &ui;
        async move {
            ui.post_form(
                "/commands/confirm",
                &[
                    ("csrf", &csrf),
                    ("targets", targets),
                    ("command", command),
                    ("timeout", ""),
                ],
                None,
            )
            .await
        }
    };
    let (status, page, _) = confirm("nope", "uptime").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("Not enrolled: nope."), "{page}");
    assert!(
        page.contains("name=\"targets\" value=\"nope\""),
        "the form is filled again: {page}"
    );
    let (status, page, _) = confirm("web1", "echo 'open").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("quotes do not close"), "{page}");
    let (status, page, _) = confirm("", "uptime").await;
    assert_eq!(status, 400, "{page}");
    let (status, page, _) = confirm("label:role=db", "uptime").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("No node matches."), "{page}");

    let (status, page, _) = confirm("web1", "uptime").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<strong>1 node</strong>: web1?"), "{page}");
    assert!(
        page.contains(
            "<pre id=\"fleet-send\">fleet send --node web1 --timeout 30s --ttl 1h -- uptime</pre>"
        ),
        "{page}"
    );
    assert!(!page.contains("action=\"/commands/send\""), "{page}");
    assert!(page.contains("holds no dashboard key"), "{page}");
    let (status, page, _) = confirm("label:role=web", "systemctl restart 'my app'").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<strong>2 nodes</strong>: web1, web2?"),
        "{page}"
    );
    assert!(
        page.contains(
            "fleet send --label 'role=web' --timeout 30s --ttl 1h -- systemctl restart 'my app'"
        ),
        "{page}"
    );
    let (status, page, _) = confirm("web1 web2", "uptime").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("fleet send --nodes web1,web2 "), "{page}");
    let (status, page, _) = confirm("all", "uptime").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("fleet send --all "), "{page}");

    // Sending anyway (a hand-made post): refused, nothing stored.
    let (status, page, _) = ui
        .post_form(
            "/commands/send",
            &[("csrf", &csrf), ("targets", "web1"), ("command", "uptime")],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("no dashboard key"), "{page}");
    let (status, v) = ui.api().get("/api/v1/commands").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["commands"], json!([]), "{v}");
    ui.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_dashboard_key_the_form_signs_and_queues_the_command() {
    let env = Env::new(Backend::Embedded).await;
    let key = OperatorKey::generate();
    let key_file = env.dir.path().join("dashboard.key");
    std::fs::write(&key_file, key.secret_text()).unwrap();
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
        config.ui.signing_key = Some(key_file.clone());
    })
    .await;
    let page = ui.ok("/commands").await;
    assert!(
        page.contains(&format!("<code>{}</code>", key.public())),
        "the page names the key nodes must trust: {page}"
    );
    let csrf = csrf_of(&page);
    let form = [
        ("csrf", csrf.as_str()),
        ("targets", "web1"),
        ("command", "uptime"),
        ("timeout", "5s"),
    ];
    let (status, page, _) = ui.post_form("/commands/confirm", &form, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("action=\"/commands/send\""), "{page}");
    assert!(
        page.contains(
            "<pre id=\"fleet-send\">fleet send --node web1 --timeout 5s --ttl 1h -- uptime</pre>"
        ),
        "{page}"
    );
    assert!(
        page.contains("<input type=\"hidden\" name=\"command\" value=\"uptime\">"),
        "{page}"
    );

    let confirmed = send_fields(&page);
    let form = as_pairs(&confirmed);
    assert_eq!(form[0].0, "csrf", "{form:?}");
    let mut live = ui.sse("/live/commands", None).await;

    // Another site's form, or one without the token: refused, nothing stored.
    let (status, _, _) = ui
        .post_form("/commands/send", &form, Some("http://evil.example"))
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = ui.post_form("/commands/send", &form[1..], None).await;
    assert_eq!(status, 403);
    let response = ui.post_form_as("/commands/send", &form, None, None).await;
    assert_eq!(response.status(), 303, "logged out: to the login page");
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login"),
    );
    assert_eq!(
        ui.api().get("/api/v1/commands").await.1["commands"],
        json!([])
    );

    let same_site = ui.c.url.clone();
    let (status, page, headers) = ui
        .post_form("/commands/send", &form, Some(&same_site))
        .await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(headers["location"], "/commands");
    let (status, v) = ui.api().get("/api/v1/commands?node=web1").await;
    assert_eq!(status, 200, "{v}");
    let commands = v["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{v}");
    let stored = &commands[0];
    let id = stored["id"].as_str().unwrap().to_owned();
    assert!(
        stored["sent_by"].as_str().unwrap().contains("(dashboard)"),
        "{stored}"
    );
    assert_eq!(stored["via"], "ui", "{stored}");
    assert_eq!(stored["args"], json!(["uptime"]), "{stored}");
    assert_eq!(stored["timeout_ms"], 5000, "{stored}");
    assert_eq!(stored["state"], "queued", "{stored}");
    assert_eq!(
        ui.api().get("/api/v1/commands?node=web2").await.1["commands"],
        json!([])
    );

    // What the node receives is signed with the dashboard key.
    let polled = agent_request(
        &ui,
        "web1",
        KEY1,
        "GET",
        "/api/v1/agent/commands?wait_ms=100",
        "",
    )
    .await;
    let envelope: fleet::command::Command =
        serde_json::from_value(polled["commands"][0].clone()).expect("a command");
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.key, key.public());
    envelope.verify_signature().expect("a valid signature");

    // The history shows it, and the live history sent it.
    let page = ui.ok("/commands").await;
    assert!(page.contains(&format!("<tr id=\"cmd-{id}\"")), "{page}");
    let (got, _) = live
        .until("the new command", |e| {
            e.event == "prepend" || e.event == "replace"
        })
        .await;
    assert!(
        got.data
            .starts_with(&format!("commands\n<tr id=\"cmd-{id}\""))
            || got.data.starts_with(&format!("<tr id=\"cmd-{id}\"")),
        "{got:?}"
    );

    // A draft that does not check out is refused there too, and stores nothing.
    let (status, page, _) = ui
        .post_form(
            "/commands/send",
            &[
                ("csrf", &csrf),
                ("targets", "web1"),
                ("command", "echo 'open"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("quotes do not close"), "{page}");
    assert_eq!(
        ui.api().get("/api/v1/commands").await.1["commands"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ui.stop().await;
}

/// A node named twice is one node: the confirmation counts it once and the send queues one
/// command for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_named_twice_gets_the_command_once() {
    let env = Env::new(Backend::Embedded).await;
    let key = OperatorKey::generate();
    let key_file = env.dir.path().join("dashboard.key");
    std::fs::write(&key_file, key.secret_text()).unwrap();
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
        config.ui.signing_key = Some(key_file.clone());
    })
    .await;
    let csrf = ui.csrf().await;
    let form = [
        ("csrf", csrf.as_str()),
        ("targets", "web1, web2, web1"),
        ("command", "uptime"),
    ];
    let (status, page, _) = ui.post_form("/commands/confirm", &form, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<strong>2 nodes</strong>: web1, web2?"),
        "{page}"
    );
    assert!(page.contains("fleet send --nodes web1,web2 "), "{page}");
    let confirmed = send_fields(&page);
    // Sent twice (a double click): each node's command is queued once.
    for _ in 0..2 {
        let (status, page, _) = ui
            .post_form("/commands/send", &as_pairs(&confirmed), None)
            .await;
        assert_eq!(status, 303, "{page}");
    }
    let (_, v) = ui.api().get("/api/v1/commands?node=web1").await;
    assert_eq!(v["commands"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = ui.api().get("/api/v1/commands?node=web2").await;
    assert_eq!(v["commands"].as_array().unwrap().len(), 1, "{v}");
    // Without the confirmed nodes and ids (a form made by hand), nothing is sent.
    let (status, page, _) = ui.post_form("/commands/send", &form, None).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("changed since you reviewed"), "{page}");
    ui.stop().await;
}

// ---- sparklines, heartbeats, the login wall ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparklines_are_svg_and_every_new_page_is_behind_the_login() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
    })
    .await;
    let now = now_ms();
    ui.ingest("web1", KEY1, 1, system_records(now - 20_000, 30.0))
        .await;
    ui.ingest("web1", KEY1, 2, system_records(now, 40.0)).await;

    for which in ["cpu", "memory"] {
        let response = ui
            .get_as(&format!("/ui/spark/web1/{which}.svg"), Some(&ui.cookie))
            .await;
        assert_eq!(response.status(), 200, "{which}");
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
        let svg = response.text().await.unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.contains("<path d=\"M"), "{which}: {svg}");
    }
    // A node without samples: an empty sparkline, no line.
    let response = ui.get_as("/ui/spark/web2/cpu.svg", Some(&ui.cookie)).await;
    assert_eq!(response.status(), 200);
    let svg = response.text().await.unwrap();
    assert!(svg.contains("<svg") && !svg.contains("<path"), "{svg}");
    for (path, status) in [
        ("/ui/spark/web1/x.svg", 404),
        ("/ui/spark/web1/cpu.png", 404),
        ("/ui/spark/bad%20name/cpu.svg", 400),
    ] {
        assert_eq!(
            ui.get_as(path, Some(&ui.cookie)).await.status(),
            status,
            "{path}"
        );
    }
    // The overview links them.
    let overview = ui.ok("/").await;
    assert!(
        overview.contains("src=\"/ui/spark/web1/cpu.svg\""),
        "{overview}"
    );

    // Without a session every new page and stream sends to the login page, and back.
    for path in [
        "/nodes/web1",
        "/nodes/web1?range=7d",
        "/events",
        "/events?level=error",
        "/errors",
        "/heartbeats",
        "/commands",
        "/ui/spark/web1/cpu.svg",
        "/live/events",
        "/live/errors",
        "/live/nodes/web1",
        "/live/commands",
    ] {
        let response = ui.get_as(path, None).await;
        assert_eq!(response.status(), 303, "{path}");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let mut expected = reqwest::Url::parse("http://x/login").unwrap();
        expected.query_pairs_mut().append_pair("next", path);
        assert_eq!(
            location,
            format!("/login?{}", expected.query().unwrap()),
            "{path}"
        );
        // A cookie that is no session is no better.
        let fake = format!("fleet_session={}", "a".repeat(64));
        assert_eq!(ui.get_as(path, Some(&fake)).await.status(), 303, "{path}");
    }
    for path in ["/commands/confirm", "/commands/send"] {
        let response = ui
            .post_form_as(
                path,
                &[("targets", "web1"), ("command", "uptime")],
                None,
                None,
            )
            .await;
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], "/login?next=%2F", "{path}");
    }
    ui.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_list_shows_pulsed_services() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.nodes = vec![node("web1", KEY1, &[])]).await;
    let page = ui.ok("/heartbeats").await;
    assert!(page.contains("Nothing is watched yet."), "{page}");
    assert!(page.contains("fleet pulse backup"), "{page}");
    assert!(!page.contains("<tr id=\"hb-"), "{page}");

    let api = ui.api();
    for body in [
        json!({ "service": "backup", "next_in": 60 }),
        json!({ "service": "nightly", "next_in": "1d", "grace": "1h", "node": "web1" }),
        json!({ "service": "<script>alert(11)</script>", "next_in": 60 }),
    ] {
        let (status, v) = api.post("/api/v1/heartbeats", body.to_string()).await;
        assert_eq!(status, 200, "{body}: {v}");
    }
    let page = eventually(Duration::from_secs(5), "the pulses listed", || async {
        let page = ui.ok("/heartbeats").await;
        page.contains("id=\"hb-nightly\"").then_some(page)
    })
    .await;
    assert!(!page.contains("Nothing is watched yet."), "{page}");
    let backup = element(&page, "<tr id=\"hb-backup\"", "</tr>");
    assert!(backup.contains(">new<"), "a first pulse is new: {backup}");
    assert!(backup.contains("every 1 min, no grace"), "{backup}");
    let nightly_every = element(&page, "<tr id=\"hb-nightly\"", "</tr>");
    assert!(
        nightly_every.contains("every 1 d + 1 h grace"),
        "spans written like the dashboard's others: {nightly_every}"
    );
    let nightly = element(&page, "<tr id=\"hb-nightly\"", "</tr>");
    assert!(nightly.contains("href=\"/nodes/web1\""), "{nightly}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(11)"), "{page}");
    // By name: backup before nightly.
    assert!(page.find("hb-backup").unwrap() < page.find("hb-nightly").unwrap());

    // The node page lists the heartbeat that names it.
    let node_page = ui.ok("/nodes/web1").await;
    assert!(node_page.contains("id=\"hb-nightly\""), "{node_page}");
    assert!(!node_page.contains("id=\"hb-backup\""), "{node_page}");
    ui.stop().await;
}

// ---- slow clients ------------------------------------------------------------------------------

/// A client a page or more behind the log (it stopped reading, or comes back after a long
/// time) is told to reload, once, and the stream ends: nothing piles up for it. A client that
/// keeps up meanwhile gets every entry, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_far_behind_is_told_to_reload_and_one_that_keeps_up_misses_nothing() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.nodes = vec![node("web1", KEY1, &[])]).await;
    let first = ui
        .event(json!({ "node": "web1", "message": "before the others" }))
        .await;
    let mut keeping_up = ui.sse(&format!("/live/events?after={first}"), None).await;
    let mut written = Vec::new();
    for i in 0..600 {
        let id =
            ui.c.store
                .add_event(
                    &fleet::store::events::NewEvent {
                        node: Some("web1".into()),
                        service: None,
                        level: 1,
                        message: format!("entry {i}"),
                        fields: json!({}),
                        category: "event",
                    },
                    now_ms(),
                )
                .await
                .unwrap();
        written.push(id);
        // About 2 ms an entry: a reader polling four times a second sees a tenth of a page.
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The reader keeps up: it takes what has arrived so far.
        while let Some(e) = keeping_up.next(Duration::from_millis(1)).await {
            let id: i64 = e.id.as_deref().unwrap().parse().unwrap();
            assert_eq!(e.event, "prepend", "{e:?}");
            written.retain(|w| *w != id);
        }
    }
    let started = std::time::Instant::now();
    while !written.is_empty() {
        let e = keeping_up
            .next(LIVE_WAIT)
            .await
            .unwrap_or_else(|| panic!("{} entries never arrived", written.len()));
        assert_eq!(
            e.event, "prepend",
            "a client that keeps up is never told to reload: {e:?}"
        );
        let id: i64 = e.id.as_deref().unwrap().parse().unwrap();
        assert_eq!(Some(&id), written.first(), "in order, none twice");
        written.remove(0);
        assert!(started.elapsed() < LIVE_WAIT * 4);
    }

    // Resuming from the first entry: 600 behind.
    let mut behind = ui
        .sse(
            &format!("/live/events?after={first}"),
            Some(&first.to_string()),
        )
        .await;
    let (reload, before) = behind
        .until("a reload for a client far behind", |e| e.event == "reload")
        .await;
    assert!(
        before.is_empty(),
        "nothing is fed row by row first: {before:?}"
    );
    assert_eq!(reload.data, "too far behind");
    assert!(
        behind.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends after its reload"
    );
    // The node page's stream does the same.
    let mut node_behind = ui
        .sse(&format!("/live/nodes/web1?after={first}"), None)
        .await;
    node_behind
        .until("a reload on the node page", |e| e.event == "reload")
        .await;
    ui.stop().await;
}

/// The tail can follow one collector: the page shows only its records, links the others, and
/// its stream sends only that collector's new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_follows_one_collector_when_asked() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.nodes = vec![node("web1", KEY1, &[])]).await;
    let t1 = now_ms() - 1000;
    ui.ingest("web1", KEY1, 1, system_records(t1, 10.0)).await;
    let page = ui.ok("/nodes/web1?range=6h&collector=system").await;
    let row = ui.tail_id("web1", "system", t1).await;
    assert!(page.contains(&format!("id=\"{row}\"")), "{page}");
    assert!(
        !page.contains("id=\"tail-disk-") && !page.contains("id=\"tail-network-"),
        "only the system collector's records: {page}"
    );
    assert!(
        page.contains("href=\"/nodes/web1?range=6h&amp;collector=disk\""),
        "the other collectors are linked, keeping the range: {page}"
    );
    assert!(
        page.contains("href=\"/nodes/web1?range=24h&amp;collector=system\""),
        "the ranges keep the collector: {page}"
    );
    let live = element(&page, "data-live=\"", "\">")
        .trim_start_matches("data-live=\"")
        .trim_end_matches("\">")
        .replace("&amp;", "&");
    assert!(live.contains("&collector=system"), "{live}");
    let mut sse = ui.sse(&live, None).await;
    let t2 = now_ms();
    ui.ingest("web1", KEY1, 2, system_records(t2, 50.0)).await;
    let (got, before) = sse
        .until("the system record", |e| e.event == "prepend")
        .await;
    let row = ui.tail_id("web1", "system", t2).await;
    assert!(
        got.data.starts_with(&format!("tail\n<tr id=\"{row}\"")),
        "{got:?} after {before:?}"
    );
    // Nothing of the other collectors follows it.
    while let Some(e) = sse.next(Duration::from_millis(2500)).await {
        assert!(
            e.event != "prepend" || !e.data.starts_with("tail\n"),
            "only system records: {e:?}"
        );
    }
    for bad in [
        "/nodes/web1?collector=no%20such",
        "/live/nodes/web1?collector=a%2Fb",
    ] {
        assert_eq!(ui.page(bad).await.0, 400, "{bad}");
    }
    ui.stop().await;
}

/// The history narrows to one node or one state, and its stream follows the same filter; the
/// overview's failed-commands count links to the failed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_history_filters_by_node_and_state() {
    let env = Env::new(Backend::Embedded).await;
    let key = OperatorKey::generate();
    let key_file = env.dir.path().join("dashboard.key");
    std::fs::write(&key_file, key.secret_text()).unwrap();
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", KEY1, &[]), node("web2", KEY2, &[])];
        config.ui.signing_key = Some(key_file);
    })
    .await;
    let overview = ui.ok("/").await;
    assert!(
        overview.contains("href=\"/commands?state=failed\""),
        "{overview}"
    );
    let mut web2_only = ui.sse("/live/commands?node=web2", None).await;
    let csrf = ui.csrf().await;
    for node in ["web1", "web2"] {
        let (status, page, _) = ui
            .post_form(
                "/commands/confirm",
                &[("csrf", &csrf), ("targets", node), ("command", "uptime")],
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let (status, page, _) = ui
            .post_form("/commands/send", &as_pairs(&send_fields(&page)), None)
            .await;
        assert_eq!(status, 303, "{page}");
    }
    let page = ui.ok("/commands?node=web1&state=queued").await;
    assert_eq!(page.matches("<tr id=\"cmd-").count(), 1, "{page}");
    assert!(page.contains("<a href=\"/nodes/web1\">web1</a>"), "{page}");
    assert!(!page.contains("<a href=\"/nodes/web2\">web2</a>"), "{page}");
    assert!(
        page.contains("data-live=\"/live/commands?node=web1&amp;state=queued\""),
        "the stream follows the page's filter: {page}"
    );
    assert!(
        page.contains("<option value=\"queued\" selected>"),
        "{page}"
    );
    let none = ui.ok("/commands?state=failed").await;
    assert!(none.contains("No command matches these filters."), "{none}");
    let (got, _) = web2_only
        .until("web2's command", |e| e.event == "prepend")
        .await;
    assert!(got.data.contains("/nodes/web2"), "{got:?}");
    while let Some(e) = web2_only.next(Duration::from_millis(1500)).await {
        assert!(!e.data.contains("/nodes/web1"), "only web2's: {e:?}");
    }
    for bad in [
        "/commands?state=sideways",
        "/commands?node=a%2Fb",
        "/live/commands?state=x",
    ] {
        assert_eq!(ui.page(bad).await.0, 400, "{bad}");
    }
    ui.stop().await;
}

/// What the operator confirmed is what is sent: a label that reaches another node by the time
/// of the click is refused, not signed for the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_reaches_only_the_nodes_that_were_confirmed() {
    let env = Env::new(Backend::Embedded).await;
    let key = OperatorKey::generate();
    let key_file = env.dir.path().join("dashboard.key");
    std::fs::write(&key_file, key.secret_text()).unwrap();
    let mut web1 = node("web1", KEY1, &[]);
    web1.labels = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![web1, node("web2", KEY2, &[])];
        config.ui.signing_key = Some(key_file.clone());
    })
    .await;
    let csrf = ui.csrf().await;
    let (status, page, _) = ui
        .post_form(
            "/commands/confirm",
            &[
                ("csrf", &csrf),
                ("targets", "label:role=web"),
                ("command", "uptime"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut confirmed = send_fields(&page);
    // As if web2 had been labelled role=web meanwhile: the form says web1 and web2 now.
    for (name, value) in &mut confirmed {
        if name == "targets" {
            *value = "web1,web2".into();
        }
    }
    let (status, page, _) = ui
        .post_form("/commands/send", &as_pairs(&confirmed), None)
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("changed since you reviewed it (now web1, web2)"),
        "{page}"
    );
    assert_eq!(
        ui.api().get("/api/v1/commands").await.1["commands"],
        json!([])
    );
    ui.stop().await;
}
