//! The dashboard's HTML, rendered with maud: the layout every page shares, the fragments
//! several pages use (statuses, levels and times as words), the stylesheet and the one script;
//! each page, with its own fragments, is in a file of its own below. Text first: every status
//! is a word as well as a colour, times are relative with the absolute time on hover. maud
//! escapes every value put into the markup, so user-supplied text (labels, messages, output)
//! can never become markup. No inline style, inline script or `on…=` handler anywhere, here or
//! below (the Content Security Policy refuses them): styles are classes in [`CSS`], behaviour
//! is in [`LIVE_JS`], both served as files.

mod commands;
mod heartbeats;
mod login;
mod logs;
mod node;
mod overview;
pub mod sections;

use maud::{DOCTYPE, Markup, html};

use crate::model::NodeState;

pub use commands::{CommandDraft, SendForm, command_row, command_table, commands_page};
pub use heartbeats::{heartbeat_table, heartbeats_page};
pub use login::login;
pub use logs::{event_row, event_table, events_page};
pub use node::{NodePage, node_page, node_vitals, tail_row};
pub use overview::{Counts, Filters, counts_block, node_row, overview, rows_digest};

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
svg.strip { width: 8rem; height: .8rem; display: block; }
.status.state-up, .status.state-ok { color: var(--up); }
.status.state-down, .status.state-critical { color: var(--down); }
.status.state-warning { color: var(--stale); } .status.state-unknown { color: var(--muted); }
td.cert.soon { color: var(--stale); font-weight: 600; }
details.raw summary { cursor: pointer; } details.raw pre { max-height: 20rem; }
section.app { border-top: 1px solid #eaeef2; margin-top: 1rem; }
table.app-fields th { width: 12rem; font-weight: 600; }
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
  const keep = Number(into.dataset.keep) || KEEP;
  while (into.children.length > keep) into.lastElementChild.remove();
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

/// The dashboard's icon, served as `/favicon.svg` (and `/favicon.ico`, which browsers ask for
/// by themselves): a file of this origin, as the CSP's `img-src 'self'` wants, with no inline
/// style. Three dots in a row: a fleet.
pub const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1f3a5f"/><circle cx="8" cy="16" r="4" fill="#7fd1ae"/><circle cx="16" cy="16" r="4" fill="#7fd1ae"/><circle cx="24" cy="16" r="4" fill="#f2c14e"/></svg>
"##;

/// A whole page: the header (with the logout form, which carries the CSRF token) and `body`.
pub fn layout(title: &str, viewer: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleet" }
                link rel="icon" href="/favicon.svg" type="image/svg+xml";
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
    let span = |s: i64| {
        let (n, unit) = largest_unit(s);
        format!("{n} {unit}")
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

/// The largest unit of the dashboard's spans (`s`, `min`, `h`, `d`) that `seconds` holds
/// once, and how many whole ones.
fn largest_unit(seconds: i64) -> (i64, &'static str) {
    match seconds {
        ..=59 => (seconds, "s"),
        60..=3599 => (seconds / 60, "min"),
        3600..=86_399 => (seconds / 3600, "h"),
        _ => (seconds / 86_400, "d"),
    }
}

/// A length of time written like the dashboard's other spans ("3 min ago"), but exact: `1 d`,
/// `1 h 30 min`, `45 s`, `250 ms` (a heartbeat's period and grace, a command's run time).
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let mut left = ms / 1000;
    let mut parts = Vec::new();
    while left > 0 {
        let (n, unit) = largest_unit(left);
        parts.push(format!("{n} {unit}"));
        left -= n * match unit {
            "d" => 86_400,
            "h" => 3600,
            "min" => 60,
            _ => 1,
        };
    }
    parts.join(" ")
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
    fn durations_read_like_the_other_spans() {
        assert_eq!(duration(86_400_000), "1 d");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(90 * 60_000), "1 h 30 min");
        assert_eq!(duration(86_400_000 + 3_600_000 + 5_000), "1 d 1 h 5 s");
        assert_eq!(duration(45_000), "45 s");
        assert_eq!(duration(250), "250 ms");
    }
}
