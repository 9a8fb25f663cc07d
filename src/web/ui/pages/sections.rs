//! The node page's data sections as HTML: host charts, web traffic, checks and plugins, top
//! processes, log lines, apps, other series. Each is one element with a fixed id, replaced
//! whole by the live stream. No inline style or script (the CSP refuses them); every value a
//! node supplied goes through maud's escaping.

use maud::{Markup, html};
use serde_json::Value;

use super::{at, when};
use crate::web::ui::chart::Unit;
use crate::web::ui::sections::{Gathered, LOG_LINES, Section, View, check_state, plugin_state};

/// The element id of a section.
pub fn section_id(s: Section) -> &'static str {
    match s {
        Section::Host => "host",
        Section::Traffic => "traffic",
        Section::Checks => "checks",
        Section::Processes => "processes",
        Section::Lines => "log-lines",
        Section::Apps => "apps",
        Section::Other => "other",
    }
}

/// One section, whole.
pub fn section(s: Section, g: &Gathered, view: &View, base: &str, now: i64) -> Markup {
    let body = match s {
        Section::Host => html! { div.charts { @for c in &g.host { (c) } } },
        Section::Traffic => traffic(g, view, base),
        Section::Checks => checks(g, view, now),
        Section::Processes => processes(g, now),
        Section::Lines => lines(g, view, now),
        Section::Apps => apps(g, now),
        Section::Other => other(g),
    };
    html! { section id=(section_id(s)) { (body) } }
}

fn hot_problem(g: &Gathered) -> Markup {
    html! {
        @if let Some(problem) = &g.hot_problem {
            p.error { "The hot ring cannot be read: " (problem) }
        }
    }
}

fn traffic(g: &Gathered, view: &View, base: &str) -> Markup {
    html! {
        h2 { "Web traffic" }
        @match &g.vhost {
            None => p.empty.muted { "No web traffic in this range: the node tails no access log, or nothing was logged yet." },
            Some(current) => {
                @if g.vhosts.len() > 1 {
                    nav #vhosts .ranges aria-label="Virtual host" {
                        "Virtual host: "
                        @for v in &g.vhosts {
                            @if v == current {
                                strong aria-current="true" { (v) }
                            } @else {
                                a href={ (base) "&vhost=" (urlencode(v)) (lines_param(view)) } { (v) }
                            }
                            " "
                        }
                    }
                } @else {
                    p.muted { "Virtual host: " strong { (current) } }
                }
                div.charts { @for c in &g.traffic { (c) } }
            }
        }
    }
}

fn checks(g: &Gathered, view: &View, now: i64) -> Markup {
    html! {
        h2 { "Checks and plugins" }
        @if g.items.is_empty() {
            p.empty.muted { "No checks or plugins on this node." }
        } @else {
            table #check-table data-metric="check.up plugin.status" {
                thead { tr {
                    th { "Name" } th { "State" } th { "Since" } th { "Detail" }
                    th.num { "Certificate" } th { "History (" (view.range.as_str()) ")" }
                } }
                tbody {
                    @for item in &g.items {
                        tr data-kind=(item.kind) data-name=(item.name) {
                            td { (item.name) span.muted { " " (item.kind) } }
                            td {
                                @match item.value {
                                    Some(v) => {
                                        @let state = if item.kind == "check" { check_state(v) } else { plugin_state(v) };
                                        span class={ "status " (state.class) } { (state.word) }
                                    }
                                    None => span.muted { "no data" },
                                }
                            }
                            td {
                                @match item.since_ms {
                                    Some(ms) => (when(Some(ms), now)),
                                    None => span.muted { "all of " (view.range.as_str()) },
                                }
                            }
                            td.message { (item.detail) }
                            @match item.cert_days {
                                Some(days) => td.num.cert.soon[days < 14.0] { (format!("{days:.0} d")) },
                                None => td.num.cert {},
                            }
                            td { (item.strip) }
                        }
                    }
                }
            }
        }
        @if !g.item_charts.is_empty() {
            div.charts { @for c in &g.item_charts { (c) } }
        }
        (hot_problem(g))
    }
}

fn processes(g: &Gathered, now: i64) -> Markup {
    html! {
        h2 { "Top processes" }
        @match &g.processes {
            None => p.empty.muted { "No process list from this node yet." },
            Some((ts, rows)) => {
                p.muted { "The agent sends the five busiest processes by CPU; as of " (at(*ts, now)) "." }
                table #process-table {
                    thead { tr { th { "Name" } th.num { "PID" } th.num { "CPU" } th.num { "Memory" } th.wide { "Command line" } } }
                    tbody {
                        @for p in rows {
                            tr {
                                td { (p.name) }
                                td.num { (p.pid) }
                                td.num { (Unit::Percent.format(p.cpu_percent)) }
                                td.num { (Unit::Bytes.format(p.rss_bytes)) }
                                td.wide { code { (p.cmdline) } }
                            }
                        }
                    }
                }
            }
        }
        (hot_problem(g))
    }
}

fn lines(g: &Gathered, view: &View, now: i64) -> Markup {
    html! {
        h2 { "Log lines" }
        form.filters method="get" {
            input type="hidden" name="range" value=(view.range.as_str());
            @if let Some(v) = &view.vhost { input type="hidden" name="vhost" value=(v); }
            label { "Lines containing " input type="search" name="lines" value=(view.lines.as_deref().unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        @if g.lines.is_empty() {
            p.empty.muted {
                @if view.lines.is_some() { "No shipped line contains this text." }
                @else { "No log lines shipped by this node (a `[[logs]]` source with ship_lines_per_second above 0 sends them)." }
            }
        } @else {
            p.muted { "The newest " (LOG_LINES) " shipped lines at most, newest first." }
            table #log-table {
                thead { tr { th { "When" } th { "Log" } th.num { "Status" } th { "Method" } th { "Path" } th.num { "Bytes" } } }
                tbody {
                    @for l in &g.lines {
                        @if l.data.get("line").is_some() || l.data.get("status").is_none() {
                            tr.raw {
                                td { (at(l.ts_ms, now)) }
                                td { (l.log) }
                                td.message colspan="4" { code { (text_of(&l.data, "line")) } }
                            }
                        } @else {
                            tr.access {
                                td { (at(l.ts_ms, now)) }
                                td { (l.log) }
                                td.num { (text_of(&l.data, "status")) }
                                td { (text_of(&l.data, "method")) }
                                td.message { code { (text_of(&l.data, "path")) } }
                                td.num { (text_of(&l.data, "body_bytes_sent")) }
                            }
                        }
                    }
                }
            }
        }
        (hot_problem(g))
    }
}

fn apps(g: &Gathered, now: i64) -> Markup {
    html! {
        h2 { "Applications" }
        @if g.apps.is_empty() {
            p.empty.muted { "No application writes to this node's app socket." }
        }
        @for app in &g.apps {
            section.app data-collector=(app.collector) {
                h3 { (app.collector) }
                @if !app.fields.is_empty() {
                    table.app-fields {
                        caption.muted {
                            "Newest record"
                            @if let Some(ts) = app.ts_ms { ", " (at(ts, now)) }
                        }
                        tbody {
                            @for (k, v) in &app.fields {
                                tr { th { (k) } td.message { code { (v) } } }
                            }
                        }
                    }
                }
                @if !app.charts.is_empty() {
                    div.charts { @for c in &app.charts { (c) } }
                }
            }
        }
    }
}

fn other(g: &Gathered) -> Markup {
    html! {
        h2 { "Other series" }
        @if g.other.is_empty() {
            p.empty.muted { "Every series of this node is on a chart above." }
        } @else {
            p.muted { "Every other series the node reports, one chart per metric." }
            div.charts { @for c in &g.other { (c) } }
        }
    }
}

/// A field of a record as text: a string as it is, a number as written, nothing as "–".
fn text_of(data: &Value, key: &str) -> String {
    match data.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "–".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn lines_param(view: &View) -> String {
    match &view.lines {
        Some(l) => format!("&lines={}", urlencode(l)),
        None => String::new(),
    }
}

/// `text` as a query value.
fn urlencode(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x.invalid/").expect("a literal URL");
    url.query_pairs_mut().append_pair("v", text);
    url.query()
        .unwrap_or_default()
        .trim_start_matches("v=")
        .to_owned()
}
