//! The dashboard's HTML, rendered with maud: a layout, the login page, the overview. Text
//! first: every status is a word as well as a colour, times are relative with the absolute
//! time on hover. maud escapes every value put into the markup, so user-supplied text (labels,
//! messages, output) can never become markup. No inline style, inline script or `on…=`
//! handler anywhere (the Content Security Policy refuses them): styles are classes in [`CSS`],
//! behaviour is in [`LIVE_JS`].

use maud::{DOCTYPE, Markup, html};

use crate::model::NodeState;
use crate::web::api::NodeSummary;

/// The stylesheet, served by the binary itself (`/ui/app.css`).
pub const CSS: &str = r#"
:root { --up: #1a7f37; --stale: #9a6700; --down: #cf222e; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: baseline;
  padding: .6rem 1rem; border-bottom: 1px solid #d0d7de; }
header .brand { font-weight: 700; }
header nav { display: flex; flex-wrap: wrap; gap: .2rem 1rem; }
header form { margin-left: auto; }
main { padding: 1rem; max-width: 80rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #eaeef2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: 600; }
.status.up { color: var(--up); } .status.stale { color: var(--stale); }
.status.down { color: var(--down); }
.muted { color: var(--muted); }
.counts { display: flex; flex-wrap: wrap; gap: 1.5rem; margin: .5rem 0 1rem; }
.counts a { text-decoration: none; }
.empty { padding: 1rem; border: 1px dashed #d0d7de; }
.error { color: var(--down); }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; margin-bottom: 1rem; }
input, select, button { font: inherit; padding: .25rem .5rem; }
a { color: #0969da; }
h2 { margin-top: 2rem; font-size: 1.15rem; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: .4rem .6rem; margin: .2rem 0; max-height: 16rem; overflow: auto; }
td.message, td.record { word-break: break-word; }
td.record code { white-space: pre-wrap; word-break: break-all; }
td.output { max-width: 36rem; }
pre.stderr { background: #fff8f5; }
.level.warn { color: var(--stale); font-weight: 600; } .level.high { color: var(--down); font-weight: 600; }
.state { font-weight: 600; } .state.good { color: var(--up); } .state.bad { color: var(--down); }
.state.pending { color: var(--stale); } .state.muted, .status.muted { color: var(--muted); }
tr.fresh { animation: fresh 2s ease-out; }
@keyframes fresh { from { background: #fff8c5; } to { background: transparent; } }
dl.vitals { display: flex; flex-wrap: wrap; gap: .5rem 2rem; margin: .5rem 0 1rem; }
dl.vitals dt { color: var(--muted); font-size: .85rem; } dl.vitals dd { margin: 0; font-weight: 600; }
nav.ranges { margin: .5rem 0; } nav.ranges a, nav.ranges strong { margin-right: .5rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 30rem), 1fr)); gap: 1rem; }
figure.chart { margin: 0; border: 1px solid #eaeef2; padding: .5rem; }
figure.chart > svg { width: 100%; height: 12rem; display: block; }
ul.legend { list-style: none; padding: 0; margin: .3rem 0 0; font-size: .9rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; vertical-align: middle; }
.axis-note { font-size: .8rem; margin: .2rem 0 0; }
td.spark img { display: block; }
section.send { border: 1px solid #d0d7de; padding: .5rem 1rem; }
body.offline header::after { content: "live updates paused: reconnecting…"; color: var(--stale); }
@media (max-width: 40rem) {
  .wide { display: none; }
  table { display: block; overflow-x: auto; }
  figure.chart > svg { height: 9rem; }
  main { padding: .6rem; }
  th, td { padding: .3rem .3rem; }
}
"#;

/// The one script: follows `data-live` streams and puts the fragments they send in place
/// (`replace`: the element with the fragment's id; `reload`: the page), and keeps relative
/// times current. Served by the binary (`/ui/live.js`); pages work without it.
pub const LIVE_JS: &str = r#"
"use strict";
const KEEP = 500;
function fragment(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  const fresh = t.content.firstElementChild;
  return fresh && fresh.id ? fresh : null;
}
function place(html) {
  const fresh = fragment(html);
  if (!fresh) return;
  const old = document.getElementById(fresh.id);
  if (old) old.replaceWith(fresh);
}
function prepend(data) {
  const cut = data.indexOf("\n");
  if (cut < 0) return;
  const into = document.getElementById(data.slice(0, cut));
  const fresh = fragment(data.slice(cut + 1));
  if (!into || !fresh) return;
  const old = document.getElementById(fresh.id);
  if (old) { old.replaceWith(fresh); return; }
  into.prepend(fresh);
  fresh.classList.add("fresh");
  while (into.children.length > KEEP) into.lastElementChild.remove();
  const empty = into.closest("section, main").querySelector(".empty[data-until-rows]");
  if (empty) empty.remove();
}
function span(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}
function ago(seconds) {
  if (Math.abs(seconds) < 5) return "just now";
  return seconds < 0 ? "in " + span(-seconds) : span(seconds) + " ago";
}
function refreshTimes() {
  for (const t of document.querySelectorAll("time[datetime]:not([data-fixed])")) {
    const at = Date.parse(t.getAttribute("datetime"));
    if (!isNaN(at)) t.textContent = ago(Math.trunc((Date.now() - at) / 1000));
  }
}
// A page told to reload more than once in 10 s waits out the rest: never a reload loop.
function reloadSoon() {
  const last = Number(sessionStorage.getItem("fleet-reload")) || 0;
  setTimeout(() => {
    sessionStorage.setItem("fleet-reload", String(Date.now()));
    location.reload();
  }, Math.max(0, 10000 - (Date.now() - last)));
}
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(el.dataset.live);
    source.addEventListener("replace", (e) => { place(e.data); refreshTimes(); });
    source.addEventListener("prepend", (e) => { prepend(e.data); refreshTimes(); });
    source.addEventListener("reload", () => { source.close(); reloadSoon(); });
    source.addEventListener("open", () => document.body.classList.remove("offline"));
    source.addEventListener("error", () => document.body.classList.add("offline"));
  }
  setInterval(refreshTimes, 5000);
});
"#;

/// A whole page: the header (with the logout form, which carries the CSRF token) and `body`.
pub fn layout(title: &str, viewer: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleet" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/live.js" defer {}
            }
            body {
                header {
                    span.brand { "fleet" }
                    @if let Some((who, csrf)) = viewer {
                        nav {
                            a href="/" { "Overview" }
                            a href="/events" { "Events" }
                            a href="/heartbeats" { "Heartbeats" }
                            a href="/commands" { "Commands" }
                            a href="/errors" { "Errors" }
                        }
                        span.muted { "signed in with " (who) }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login page; `problem` is shown above the form after a failed attempt. With `users`,
/// a second form takes a name and password.
pub fn login(next: &str, problem: Option<&str>, users: bool) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                p {
                    label for="token" { "Operator token" }
                    br;
                    input #token type="password" name="token" autocomplete="current-password" required size="48";
                }
                button type="submit" { "Log in" }
            }
            p.muted {
                "The controller printed a token on its first start (also in "
                code { "fleet-data/operator-token" }
                "); make another with "
                code { "fleet token create" }
                "."
            }
            @if users {
                h2 { "Or with a name and password" }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    p {
                        label for="user" { "Name" }
                        br;
                        input #user type="text" name="user" autocomplete="username" required size="24";
                    }
                    p {
                        label for="password" { "Password" }
                        br;
                        input #password type="password" name="password" autocomplete="current-password" required size="24";
                    }
                    button type="submit" { "Log in with password" }
                }
            }
        },
    )
}

/// What the overview shows besides the nodes.
pub struct Counts {
    pub down_heartbeats: i64,
    pub failed_commands: i64,
}

/// The overview's filters, as given in the query string.
#[derive(Default)]
pub struct Filters {
    pub status: Option<NodeState>,
    pub label: Option<(String, String)>,
}

impl Filters {
    /// Whether a node with this status passes (the status given, so a caller may ask about
    /// another moment than now).
    pub fn passes(&self, n: &NodeSummary, status: NodeState) -> bool {
        self.status.is_none_or(|s| status == s)
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| n.labels.get(k) == Some(v))
    }
}

/// `/`: every node with its status, last seen and vitals.
pub fn overview(
    viewer: (&str, &str),
    nodes: &[NodeSummary],
    total: usize,
    counts: &Counts,
    filters: &Filters,
    now_ms: i64,
) -> Markup {
    // The live stream follows the same filters as the page, from when it was made.
    let live_query = {
        let mut url = reqwest::Url::parse("http://live.invalid/").expect("a literal URL");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("rendered", &now_ms.to_string())
                .append_pair("rows", &rows_digest(nodes.iter().map(|n| &n.name)));
            if let Some(s) = filters.status {
                q.append_pair("status", state_word(s));
            }
            if let Some((k, v)) = &filters.label {
                q.append_pair("label", &format!("{k}={v}"));
            }
        }
        match url.query() {
            Some(q) if !q.is_empty() => format!("?{q}"),
            _ => String::new(),
        }
    };
    layout(
        "Overview",
        Some(viewer),
        html! {
            h1 { "Overview" }
            (counts_block(nodes, total, counts))
            form.filters method="get" action="/" {
                label { "Status "
                    select name="status" {
                        option value="" { "any" }
                        @for s in [NodeState::Up, NodeState::Stale, NodeState::Down] {
                            option value=(state_word(s)) selected[filters.status == Some(s)] { (state_word(s)) }
                        }
                    }
                }
                label { "Label "
                    input type="text" name="label" placeholder="role=web"
                        value=[filters.label.as_ref().map(|(k, v)| format!("{k}={v}"))];
                }
                button type="submit" { "Filter" }
            }
            @if total == 0 {
                div.empty {
                    p { "No node is enrolled yet." }
                    p { "Enroll one on the controller's host, then start its agent with the key it prints:" }
                    pre { "fleet node add web1 --controller-url https://this-controller:7070\nfleet agent --controller https://this-controller:7070 --node web1 --key KEY" }
                }
            } @else if nodes.is_empty() {
                p.empty { "No node matches these filters. " a href="/" { "Show all" } }
            } @else {
                table #nodes data-live={ "/live/overview" (live_query) } {
                    thead {
                        tr {
                            th { "Node" }
                            th { "Status" }
                            th { "Last seen" }
                            th.num { "CPU" }
                            th.num { "Memory" }
                            th.num { "Disk" }
                            th.num { "Load" }
                            th.wide { "CPU, last hour" }
                            th.wide { "Memory, last hour" }
                            th.wide { "Labels" }
                        }
                    }
                    tbody {
                        @for n in nodes {
                            (node_row(n, now_ms))
                        }
                    }
                }
            }
        },
    )
}

/// A short digest of which rows a page shows, in order: the live overview compares it with
/// its own rows to tell that the page's set of nodes is out of date.
pub fn rows_digest<'a>(names: impl Iterator<Item = &'a String>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for name in names {
        hash.update(name.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..8])
}

/// The counts above the table; replaced live as a whole.
pub fn counts_block(nodes: &[NodeSummary], total: usize, counts: &Counts) -> Markup {
    let count_of = |s: NodeState| nodes.iter().filter(|n| n.status == s).count();
    html! {
        div #counts .counts {
            span { (total) @if total == 1 { " node" } @else { " nodes" } }
            span.status.up { (count_of(NodeState::Up)) " up" }
            span.status.stale { (count_of(NodeState::Stale)) " stale" }
            span.status.down { (count_of(NodeState::Down)) " down" }
            a href="/heartbeats" { (counts.down_heartbeats) " heartbeats down" }
            a href="/commands?state=failed" { (counts.failed_commands) " commands failed (24 h)" }
        }
    }
}

/// One node's row of the overview; replaced live by its id.
pub fn node_row(n: &NodeSummary, now_ms: i64) -> Markup {
    html! {
        tr id={ "node-" (n.name) } {
            td { a href={ "/nodes/" (n.name) } { (n.name) } }
            td { span class={ "status " (state_word(n.status)) } { (state_word(n.status)) } }
            td { (when(n.last_seen_ms, now_ms)) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.cpu_percent))) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.memory_percent))) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.disk_percent))) }
            td.num { (number(n.vitals.as_ref().and_then(|v| v.load1))) }
            @for (which, word) in [("cpu", "CPU"), ("memory", "Memory")] {
                td.wide.spark {
                    @if n.last_seen_ms.is_some() {
                        // Loaded lazily and cached briefly: 1,000 rows do not wait for
                        // 2,000 series, and a row replaced live does not refetch them.
                        img src={ "/ui/spark/" (n.name) "/" (which) ".svg" } width="80" height="20"
                            loading="lazy" alt={ (word) " of " (n.name) " over the last hour" };
                    }
                }
            }
            td.wide.muted {
                @for (i, (k, v)) in n.labels.iter().enumerate() {
                    @if i > 0 { ", " }
                    (k) "=" (v)
                }
            }
        }
    }
}

pub fn state_word(s: NodeState) -> &'static str {
    match s {
        NodeState::Up => "up",
        NodeState::Stale => "stale",
        NodeState::Down => "down",
    }
}

/// "3 min ago", with the absolute time on hover; "never" without a time.
pub fn when(ms: Option<i64>, now_ms: i64) -> Markup {
    let Some(ms) = ms else {
        return html! { span.muted { "never" } };
    };
    let seconds = (now_ms - ms) / 1000;
    let span = |s: i64| match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    // A deadline is in the future: "in 3 min".
    let text = match seconds {
        -4..=4 => "just now".to_owned(),
        s if s < 0 => format!("in {}", span(-s)),
        s => format!("{} ago", span(s)),
    };
    let absolute = crate::timefmt::rfc3339(ms);
    html! { time datetime=(absolute) title=(absolute) { (text) } }
}

fn percent(v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! { (format!("{v:.0} %")) },
        None => html! { span.muted { "–" } },
    }
}

fn number(v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! { (format!("{v:.2}")) },
        None => html! { span.muted { "–" } },
    }
}

/// A time as "3 min ago" with the absolute time on hover, from milliseconds.
fn at(ms: i64, now_ms: i64) -> Markup {
    when(Some(ms), now_ms)
}

/// An event level as a word, coloured by severity.
pub fn level_word(level: i64) -> Markup {
    let word = crate::heartbeat::LEVELS
        .get(level.clamp(0, 7) as usize)
        .copied()
        .unwrap_or("?");
    let class = match level {
        ..=2 => "level low",
        3 => "level warn",
        _ => "level high",
    };
    html! { span class=(class) { (word) } }
}

/// A JSON value on one line, cut at `max` characters (the full value is in the API).
fn compact_json(value: &serde_json::Value, max: usize) -> String {
    let text = value.to_string();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// One entry of the event log (or the error log), a table row replaced or prepended live.
pub fn event_row(e: &crate::store::events::EventEntry, now_ms: i64) -> Markup {
    html! {
        tr id={ "event-" (e.id) } {
            td { (at(e.ts_ms, now_ms)) }
            td { (level_word(e.level)) }
            td {
                @if let Some(node) = &e.node { a href={ "/nodes/" (node) } { (node) } }
            }
            td { @if let Some(service) = &e.service { (service) } }
            td.message { (e.message) }
            td.wide.muted.fields {
                @if e.fields.as_object().is_some_and(|o| !o.is_empty()) { (compact_json(&e.fields, 300)) }
            }
        }
    }
}

/// The table of events (or errors); `live` is the stream that prepends new ones.
pub fn event_table(
    entries: &[crate::store::events::EventEntry],
    live: Option<&str>,
    now_ms: i64,
) -> Markup {
    html! {
        table.events {
            thead { tr { th { "When" } th { "Level" } th { "Node" } th { "Service" } th { "Message" } th.wide { "Fields" } } }
            tbody #events data-live=[live] {
                @for e in entries { (event_row(e, now_ms)) }
            }
        }
    }
}

/// A command's state as a word, coloured.
fn command_state(state: crate::command::CommandState) -> Markup {
    use crate::command::CommandState as S;
    let class = match state {
        S::Succeeded => "state good",
        S::Failed | S::TimedOut | S::Expired => "state bad",
        S::Cancelled => "state muted",
        S::Queued | S::Delivered | S::Running => "state pending",
    };
    html! { span class=(class) { (state.as_str().replace('_', " ")) } }
}

/// Most output a list shows of one stream; the whole is in the API.
const OUTPUT_SHOWN: usize = 4096;

/// The end of a command's output, where the answer usually is, cut at [`OUTPUT_SHOWN`] bytes.
fn output_tail(text: &str) -> String {
    if text.len() <= OUTPUT_SHOWN {
        return text.to_owned();
    }
    let mut cut = text.len() - OUTPUT_SHOWN;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!(
        "… {} bytes before this (GET /api/v1/commands/{{id}} has them)\n{}",
        cut,
        &text[cut..]
    )
}

/// One command with its result: a row replaced live as its state changes.
pub fn command_row(c: &crate::store::commands::CommandRecord, now_ms: i64) -> Markup {
    let created = crate::timefmt::parse_time(&c.created_at, now_ms).ok();
    // A program as a shell would read it; another method by name, then its arguments.
    let args =
        shlex::try_join(c.args.iter().map(String::as_str)).unwrap_or_else(|_| c.args.join(" "));
    let what = match c.method {
        crate::command::Method::CliCommand => args,
        method if args.is_empty() => method.as_str().to_owned(),
        method => format!("{} {args}", method.as_str()),
    };
    html! {
        tr id={ "cmd-" (c.id) } data-state=(c.state.as_str()) {
            td { (when(created, now_ms)) }
            td { a href={ "/nodes/" (c.node) } { (c.node) } }
            td { code { (what) } }
            td { (command_state(c.state)) }
            td.num {
                @if let Some(code) = c.result.as_ref().and_then(|r| r.exit_code) { (code) }
            }
            td.output {
                @if let Some(r) = &c.result {
                    @if let Some(error) = &r.error { p.error { (error) } }
                    @if !r.stdout.is_empty() { pre.stdout { (output_tail(&r.stdout)) } }
                    @if !r.stderr.is_empty() { pre.stderr { (output_tail(&r.stderr)) } }
                    @if r.truncated { p.muted { "Output was cut at the node's limit." } }
                    @if r.duration_ms > 0 { span.muted { "took " (crate::timefmt::span(r.duration_ms as i64)) } }
                }
            }
            td.wide.muted { (c.id) br; "by " (c.sent_by) }
        }
    }
}

pub fn command_table(
    commands: &[crate::store::commands::CommandRecord],
    live: Option<&str>,
    now_ms: i64,
) -> Markup {
    html! {
        table.commands {
            thead { tr { th { "Sent" } th { "Node" } th { "Command" } th { "State" } th.num { "Exit" } th { "Output" } th.wide { "Id" } } }
            tbody #commands data-live=[live] {
                @for c in commands { (command_row(c, now_ms)) }
            }
        }
    }
}

fn heartbeat_state(state: crate::heartbeat::HeartbeatState) -> Markup {
    use crate::heartbeat::HeartbeatState as S;
    let class = match state {
        S::Up | S::New => "status up",
        S::Late => "status stale",
        S::Down => "status down",
        S::Cancelled => "status muted",
    };
    html! { span class=(class) { (state.as_str()) } }
}

pub fn heartbeat_table(beats: &[crate::heartbeat::Heartbeat], now_ms: i64) -> Markup {
    html! {
        table.heartbeats {
            thead { tr { th { "Service" } th { "State" } th { "Last pulse" } th { "Due by" } th.wide { "Expects" } th.wide.num { "Pulses" } } }
            tbody {
                @for h in beats {
                    tr id={ "hb-" (h.service) } {
                        td { (h.service) @if let Some(node) = &h.node { " " a.muted href={ "/nodes/" (node) } { "(" (node) ")" } } }
                        td { (heartbeat_state(h.state)) " " span.muted { "for " (crate::timefmt::span(h.for_ms)) } }
                        td { (at(h.last_pulse_ms, now_ms)) }
                        td { (at(h.deadline_ms, now_ms)) }
                        td.wide.muted {
                            "every " (crate::timefmt::span(h.next_in_ms))
                            @if h.grace_ms > 0 { " + " (crate::timefmt::span(h.grace_ms)) " grace" } @else { ", no grace" }
                        }
                        td.wide.num { (h.pulses) }
                    }
                }
            }
        }
    }
}

/// One record of a node's live tail.
pub fn tail_row(entry: &super::node::TailEntry, now_ms: i64) -> Markup {
    html! {
        tr id=(entry.element_id()) {
            td { (at(entry.ts_ms, now_ms)) }
            td { (entry.collector) }
            td.record { code { (compact_json(&entry.data, 600)) } }
        }
    }
}

/// What the node page shows.
pub struct NodePage<'a> {
    pub summary: &'a NodeSummary,
    pub range: super::node::Range,
    pub charts: Vec<Markup>,
    pub events: &'a [crate::store::events::EventEntry],
    /// The newest event id when the page was made: the live stream starts after it.
    pub latest_event: i64,
    pub commands: &'a [crate::store::commands::CommandRecord],
    pub heartbeats: &'a [crate::heartbeat::Heartbeat],
    pub tail: &'a Result<Vec<super::node::TailEntry>, String>,
    /// The collectors the node has a ring for (the tail's filter links).
    pub collectors: &'a [String],
    /// The tail shows only this collector.
    pub only: Option<&'a str>,
}

/// The node's status line: replaced live.
pub fn node_vitals(n: &NodeSummary, now_ms: i64) -> Markup {
    let v = n.vitals.as_ref();
    html! {
        dl #vitals .vitals {
            div { dt { "Status" } dd { span class={ "status " (state_word(n.status)) } { (state_word(n.status)) } } }
            div { dt { "Last seen" } dd { (when(n.last_seen_ms, now_ms)) } }
            div { dt { "CPU" } dd { (percent(v.and_then(|v| v.cpu_percent))) } }
            div { dt { "Memory" } dd { (percent(v.and_then(|v| v.memory_percent))) } }
            div { dt { "Disk" } dd { (percent(v.and_then(|v| v.disk_percent))) } }
            div { dt { "Load" } dd { (number(v.and_then(|v| v.load1))) } }
        }
    }
}

/// `/nodes/{node}`
pub fn node_page(viewer: (&str, &str), p: &NodePage, now_ms: i64) -> Markup {
    let n = p.summary;
    // The stream starts after what this page shows: its newest event and, per collector, its
    // newest record.
    let live = {
        let mut newest: std::collections::BTreeMap<&str, u64> = Default::default();
        for e in p.tail.as_ref().map(Vec::as_slice).unwrap_or_default() {
            let at = newest.entry(&e.collector).or_insert(e.seq);
            *at = (*at).max(e.seq);
        }
        let tail: Vec<String> = newest.iter().map(|(c, seq)| format!("{c}:{seq}")).collect();
        let mut url = reqwest::Url::parse("http://live.invalid/").expect("a literal URL");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("after", &p.latest_event.to_string())
                .append_pair("tail", &tail.join(" "));
            if let Some(only) = p.only {
                q.append_pair("collector", only);
            }
        }
        format!("/live/nodes/{}?{}", n.name, url.query().unwrap_or_default())
    };
    layout(
        &n.name,
        Some(viewer),
        html! {
            p.muted { a href="/" { "Overview" } " › node" }
            h1 { (n.name) }
            div data-live=(live) {
                (node_vitals(n, now_ms))
            }
            @if !n.labels.is_empty() {
                p.muted { "Labels: "
                    @for (i, (k, v)) in n.labels.iter().enumerate() {
                        @if i > 0 { ", " }
                        (k) "=" (v)
                    }
                }
            }
            nav.ranges aria-label="Chart range" {
                "Range: "
                @for r in super::node::Range::ALL {
                    @if r == p.range {
                        strong aria-current="true" { (r.as_str()) }
                    } @else {
                        a href={ "/nodes/" (n.name) "?range=" (r.as_str())
                            @if let Some(only) = p.only { "&collector=" (only) } } { (r.as_str()) }
                    }
                    " "
                }
            }
            div.charts { @for c in &p.charts { (c) } }
            h2 { "Live tail" }
            p.muted { "The newest records of each collector, newest first; new ones appear as they arrive." }
            @if p.collectors.len() > 1 || p.only.is_some() {
                nav.ranges aria-label="Collectors" {
                    "Collector: "
                    @let base = format!("/nodes/{}?range={}", n.name, p.range.as_str());
                    @if p.only.is_none() { strong aria-current="true" { "all" } } @else { a href=(base) { "all" } }
                    " "
                    @for c in p.collectors {
                        @if p.only == Some(c.as_str()) {
                            strong aria-current="true" { (c) }
                        } @else {
                            a href={ (base) "&collector=" (c) } { (c) }
                        }
                        " "
                    }
                }
            }
            @match p.tail {
                Err(problem) => p.error { "The hot ring cannot be read: " (problem) },
                Ok(entries) => {
                    table.tail {
                        thead { tr { th { "When" } th { "Collector" } th { "Record" } } }
                        tbody #tail {
                            @for e in entries { (tail_row(e, now_ms)) }
                        }
                    }
                    @if entries.is_empty() {
                        p.empty data-until-rows { "Nothing from " (n.name) " in the hot ring yet. Records appear here within one agent interval of its start." }
                    }
                }
            }
            h2 { "Recent events" }
            (event_table(p.events, None, now_ms))
            @if p.events.is_empty() { p.empty.muted { "No events from this node." } }
            p { a href={ "/events?node=" (n.name) } { "All events of " (n.name) } }
            h2 { "Commands" }
            (command_table(p.commands, None, now_ms))
            @if p.commands.is_empty() { p.empty.muted { "No commands sent to this node yet. " a href={ "/commands?nodes=" (n.name) } { "Send one" } } }
            h2 { "Heartbeats" }
            (heartbeat_table(p.heartbeats, now_ms))
            @if p.heartbeats.is_empty() { p.empty.muted { "No heartbeat names this node." } }
        },
    )
}

/// `/events` (and, with `errors`, `/errors`): the log, newest first, live.
pub fn events_page(
    viewer: (&str, &str),
    errors: bool,
    filters: &super::logs::LogQuery,
    entries: &[crate::store::events::EventEntry],
    next_before: Option<i64>,
    latest_id: Option<i64>,
    now_ms: i64,
) -> Markup {
    let (title, path) = if errors {
        ("Errors", "/errors")
    } else {
        ("Events", "/events")
    };
    let query = filters.filter_query();
    let typed = |v: &Option<String>| v.clone().unwrap_or_default();
    // Filtered up to a time, or a page of older entries, the page is a window into the past:
    // nothing new belongs in it.
    let live = latest_id
        .filter(|_| typed(&filters.to).is_empty())
        .map(|latest_id| {
            format!(
                "/live/{}?{}{}after={latest_id}",
                if errors { "errors" } else { "events" },
                query,
                if query.is_empty() { "" } else { "&" }
            )
        });
    layout(
        title,
        Some(viewer),
        html! {
            h1 { (title) }
            @if errors {
                p.muted { "The central error log: commands that failed, refusals, and what nodes report as errors." }
            }
            form.filters method="get" action=(path) {
                label { "Node " input type="text" name="node" value=(typed(&filters.node)) size="12"; }
                @if !errors {
                    label { "Service " input type="text" name="service" value=(typed(&filters.service)) size="12"; }
                    label { "Level at least "
                        select name="level" {
                            option value="" { "any" }
                            @for name in crate::heartbeat::LEVELS {
                                option value=(name) selected[filters.level.as_deref() == Some(name)] { (name) }
                            }
                        }
                    }
                    label { "Text " input type="search" name="q" value=(typed(&filters.q)) size="16"; }
                    label { "From " input type="text" name="from" value=(typed(&filters.from)) placeholder="-1h" size="10"; }
                    label { "To " input type="text" name="to" value=(typed(&filters.to)) placeholder="now" size="10"; }
                }
                button type="submit" { "Filter" }
            }
            (event_table(entries, live.as_deref(), now_ms))
            @if entries.is_empty() {
                @if query.is_empty() {
                    div.empty data-until-rows {
                        @if errors {
                            p { "No errors. Failed commands and refusals land here." }
                        } @else {
                            p { "No events yet. Scripts add them with "
                                code { "fleet send --event --node central -- \"deploy started\"" }
                                " or " code { "POST /api/v1/events" } "; missed heartbeats add them too." }
                        }
                    }
                } @else {
                    p.empty { "Nothing matches these filters. " a href=(path) { "Show all" } }
                }
            }
            @if let Some(before) = next_before {
                p { a href={ (path) "?" (query) (if query.is_empty() { "" } else { "&" }) "before=" (before) } { "Older" } }
            }
        },
    )
}

/// `/heartbeats`
pub fn heartbeats_page(
    viewer: (&str, &str),
    beats: &[crate::heartbeat::Heartbeat],
    next_after: Option<&str>,
    now_ms: i64,
) -> Markup {
    layout(
        "Heartbeats",
        Some(viewer),
        html! {
            h1 { "Heartbeats" }
            @if beats.is_empty() {
                div.empty {
                    p { "Nothing is watched yet. Every agent pulses " code { "node:<name>" } " with its batches; scripts and cron jobs pulse with:" }
                    pre { "fleet pulse backup --next-in 1d --grace 1h\nfleet run --heartbeat nightly-dump --next-in 1d -- pg_dump -f /backup/db.sql mydb" }
                }
            } @else {
                (heartbeat_table(beats, now_ms))
            }
            @if let Some(after) = next_after {
                @let more = {
                    let mut url = reqwest::Url::parse("http://q.invalid/heartbeats").expect("a literal URL");
                    url.query_pairs_mut().append_pair("after", after);
                    format!("/heartbeats?{}", url.query().unwrap_or_default())
                };
                p { a href=(more) { "More" } }
            }
        },
    )
}

/// What the command form was given, to show it again (the confirmation, a refusal).
#[derive(Default, Clone)]
pub struct CommandDraft {
    /// Node names, comma or space separated, or `label:key=value`, or `all`.
    pub targets: String,
    pub command: String,
    pub timeout: String,
}

/// What the commands page says about sending.
pub enum SendForm<'a> {
    /// The form, empty or filled again with a problem.
    Draft {
        draft: &'a CommandDraft,
        problem: Option<&'a str>,
    },
    /// The nodes a draft resolves to, with the button that sends it.
    Confirm {
        draft: &'a CommandDraft,
        nodes: &'a [String],
        /// One command id per node, chosen now: the send form carries them.
        ids: &'a [String],
        fleet_send: &'a str,
    },
}

/// `/commands`: the form, then the history (live).
pub fn commands_page(
    viewer: (&str, &str),
    dashboard_key: Option<&str>,
    form: SendForm,
    filter: &super::commands::HistoryFilter,
    commands: &[crate::store::commands::CommandRecord],
    now_ms: i64,
) -> Markup {
    let (_, csrf) = viewer;
    let live = match filter.query() {
        q if q.is_empty() => "/live/commands".to_owned(),
        q => format!("/live/commands?{q}"),
    };
    let filtered = filter.node.is_some() || filter.state.is_some();
    layout(
        "Commands",
        Some(viewer),
        html! {
            h1 { "Commands" }
            section.send {
                h2 { "Send a command" }
                @match form {
                    SendForm::Draft { draft, problem } => {
                        @if let Some(problem) = problem { p.error role="alert" { (problem) } }
                        form method="post" action="/commands/confirm" {
                            input type="hidden" name="csrf" value=(csrf);
                            p { label { "Nodes " br;
                                input #targets type="text" name="targets" value=(draft.targets) required size="40"
                                    placeholder="web1, web2   or   label:role=web   or   all"; } }
                            p { label { "Command " br;
                                input #command type="text" name="command" value=(draft.command) required size="60"
                                    placeholder="uptime"; } }
                            p { label { "Timeout " br;
                                input #timeout type="text" name="timeout" value=(draft.timeout) size="8" placeholder="30s"; } }
                            button type="submit" { "Review" }
                        }
                    }
                    SendForm::Confirm { draft, nodes, ids, fleet_send } => {
                        p { "Run " code { (draft.command) } " on " strong { (nodes.len()) @if nodes.len() == 1 { " node" } @else { " nodes" } } ": " (nodes.join(", ")) "?" }
                        @if dashboard_key.is_some() {
                            form method="post" action="/commands/send" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="targets" value=(draft.targets);
                                input type="hidden" name="command" value=(draft.command);
                                input type="hidden" name="timeout" value=(draft.timeout);
                                input type="hidden" name="nodes" value=(nodes.join(","));
                                input type="hidden" name="ids" value=(ids.join(","));
                                button #send type="submit" { "Send to " (nodes.len()) @if nodes.len() == 1 { " node" } @else { " nodes" } }
                                " " a href="/commands" { "Cancel" }
                            }
                            p.muted { "Or from a terminal:" }
                        } @else {
                            p { "This controller holds no dashboard key, so it cannot sign commands. Run this where your operator key is:" }
                        }
                        pre #fleet-send { (fleet_send) }
                        @if dashboard_key.is_none() { p { a href="/commands" { "Back" } } }
                    }
                }
                @match dashboard_key {
                    Some(key) => p.muted { "Commands from this form are signed with the dashboard key "
                        code { (key) } "; a node runs them only if its " code { "[commands] trusted_keys" }
                        " lists that key and its policy allows the command." },
                    None => p.muted { "Sending from this page is off: it needs a dashboard key ("
                        code { "[ui] signing_key" } ", made with " code { "fleet operator keygen" }
                        ") that the nodes trust. Until then the page shows the " code { "fleet send" } " command to run." },
                }
            }
            h2 { "History" }
            form.filters method="get" action="/commands" {
                label { "Node " input type="text" name="node" value=[filter.node.as_deref()] size="12"; }
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for s in crate::command::CommandState::ALL {
                            option value=(s.as_str()) selected[filter.state == Some(s)] { (s.as_str().replace('_', " ")) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            (command_table(commands, Some(&live), now_ms))
            @if commands.is_empty() {
                @if filtered {
                    p.empty { "No command matches these filters. " a href="/commands" { "Show all" } }
                } @else {
                    p.empty data-until-rows { "No commands yet. Send one above, or with " code { "fleet send --node web1 -- uptime" } "." }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_relative_both_ways() {
        let now = 1_800_000_000_000;
        let text = |ms: i64| when(Some(ms), now).into_string();
        assert!(
            text(now - 2_000).contains(">just now<"),
            "{}",
            text(now - 2_000)
        );
        assert!(text(now - 90_000).contains(">1 min ago<"));
        assert!(
            text(now + 3 * 3_600_000).contains(">in 3 h<"),
            "a deadline ahead"
        );
        assert!(
            text(now).contains("title=\"2027-01-15T08:00:00.000Z\""),
            "{}",
            text(now)
        );
        assert!(when(None, now).into_string().contains("never"));
    }

    #[test]
    fn long_output_shows_its_end_and_says_how_much_is_left_out() {
        assert_eq!(output_tail("short"), "short");
        let long = format!("{}é{}", "a".repeat(10_000), "the answer");
        let shown = output_tail(&long);
        assert!(shown.ends_with("the answer"), "{shown}");
        assert!(shown.starts_with("… 5"), "{shown}");
        assert!(shown.len() < OUTPUT_SHOWN + 100);
    }
}
