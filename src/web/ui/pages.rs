//! The dashboard's HTML, rendered with maud: a layout, the login page, the overview. Text
//! first: every status is a word as well as a colour, times are relative with the absolute
//! time on hover. maud escapes every value put into the markup, so user-supplied text (labels,
//! messages, output) can never become markup.

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
header nav a { margin-right: 1rem; }
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
@media (max-width: 40rem) {
  .wide { display: none; }
  th, td { padding: .3rem .3rem; }
}
"#;

/// The one script: follows `data-live` streams and puts the fragments they send in place
/// (`replace`: the element with the fragment's id; `reload`: the page), and keeps relative
/// times current. Served by the binary (`/ui/live.js`); pages work without it.
pub const LIVE_JS: &str = r#"
"use strict";
function place(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  const fresh = t.content.firstElementChild;
  if (!fresh || !fresh.id) return;
  const old = document.getElementById(fresh.id);
  if (old) old.replaceWith(fresh);
}
function ago(seconds) {
  if (seconds < 5) return "just now";
  if (seconds < 60) return seconds + " s ago";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
  return Math.floor(seconds / 86400) + " d ago";
}
function refreshTimes() {
  for (const t of document.querySelectorAll("time[datetime]")) {
    const at = Date.parse(t.getAttribute("datetime"));
    if (!isNaN(at)) t.textContent = ago(Math.max(0, Math.floor((Date.now() - at) / 1000)));
  }
}
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(el.dataset.live);
    source.addEventListener("replace", (e) => { place(e.data); refreshTimes(); });
    source.addEventListener("reload", () => location.reload());
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
                        nav { a href="/" { "Overview" } }
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

/// The login page; `problem` is shown above the form after a failed attempt.
pub fn login(next: &str, problem: Option<&str>) -> Markup {
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

/// `/`: every node with its status, last seen and vitals.
pub fn overview(
    viewer: (&str, &str),
    nodes: &[NodeSummary],
    total: usize,
    counts: &Counts,
    filters: &Filters,
    now_ms: i64,
) -> Markup {
    // The live stream follows the same filters as the page.
    let live_query = {
        let mut url = reqwest::Url::parse("http://live.invalid/").expect("a literal URL");
        {
            let mut q = url.query_pairs_mut();
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

/// The counts above the table; replaced live as a whole.
pub fn counts_block(nodes: &[NodeSummary], total: usize, counts: &Counts) -> Markup {
    let count_of = |s: NodeState| nodes.iter().filter(|n| n.status == s).count();
    html! {
        div #counts .counts {
            span { (total) @if total == 1 { " node" } @else { " nodes" } }
            span.status.up { (count_of(NodeState::Up)) " up" }
            span.status.stale { (count_of(NodeState::Stale)) " stale" }
            span.status.down { (count_of(NodeState::Down)) " down" }
            span { (counts.down_heartbeats) " heartbeats down" }
            span { (counts.failed_commands) " commands failed (24 h)" }
        }
    }
}

/// One node's row of the overview; replaced live by its id.
pub fn node_row(n: &NodeSummary, now_ms: i64) -> Markup {
    html! {
        tr id={ "node-" (n.name) } {
            td { (n.name) }
            td { span class={ "status " (state_word(n.status)) } { (state_word(n.status)) } }
            td { (when(n.last_seen_ms, now_ms)) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.cpu_percent))) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.memory_percent))) }
            td.num { (percent(n.vitals.as_ref().and_then(|v| v.disk_percent))) }
            td.num { (number(n.vitals.as_ref().and_then(|v| v.load1))) }
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
fn when(ms: Option<i64>, now_ms: i64) -> Markup {
    let Some(ms) = ms else {
        return html! { span.muted { "never" } };
    };
    let ago = (now_ms - ms).max(0) / 1000;
    let text = match ago {
        0..=4 => "just now".to_owned(),
        5..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
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
