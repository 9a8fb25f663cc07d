//! `/nodes/{node}`, one node's page: its status line, charts, live tail, recent events,
//! commands and heartbeats, and the fragments its live stream replaces and prepends.
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::{
    at, command_table, compact_json, event_table, heartbeat_table, layout, number, percent,
    state_word, when,
};
use crate::web::api::NodeSummary;
use crate::web::ui::node::{Range, TAIL_ON_SCREEN, TailEntry};
use crate::web::ui::sections::{Section, View};

/// One record of a node's live tail: a one-line summary, the JSON folded under it.
pub fn tail_row(entry: &TailEntry, now_ms: i64) -> Markup {
    html! {
        tr id=(entry.element_id()) {
            td { (at(entry.ts_ms, now_ms)) }
            td { (entry.collector) }
            td.record {
                details.raw {
                    summary { code { (compact_json(&entry.data, 120)) } }
                    pre { (serde_json::to_string_pretty(&entry.data).unwrap_or_default()) }
                }
            }
        }
    }
}

/// What the node page shows.
pub struct NodePage<'a> {
    pub summary: &'a NodeSummary,
    pub view: &'a View,
    /// The data sections, rendered, in page order.
    pub sections: Vec<(Section, Markup)>,
    pub events: &'a [crate::store::events::EventEntry],
    /// The newest event id when the page was made: the live stream starts after it.
    pub latest_event: i64,
    pub commands: &'a [crate::store::commands::CommandRecord],
    pub heartbeats: &'a [crate::heartbeat::Heartbeat],
    pub tail: &'a Result<Vec<TailEntry>, String>,
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
            q.append_pair("range", p.view.range.as_str());
            if let Some(vhost) = &p.view.vhost {
                q.append_pair("vhost", vhost);
            }
            if let Some(lines) = &p.view.lines {
                q.append_pair("lines", lines);
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
                @for r in Range::ALL {
                    @if r == p.view.range {
                        strong aria-current="true" { (r.as_str()) }
                    } @else {
                        a href={ "/nodes/" (n.name) "?range=" (r.as_str())
                            @if let Some(only) = p.only { "&collector=" (only) } } { (r.as_str()) }
                    }
                    " "
                }
            }
            @for (_, section) in &p.sections { (section) }
            h2 { "Live tail" }
            p.muted { "The newest records of each collector, newest first; new ones appear as they arrive (the newest " (TAIL_ON_SCREEN) " stay on screen; "
                a href={ "/api/v1/nodes/" (n.name) "/recent/" (p.only.unwrap_or("system")) "?limit=100" } { "older ones from the API" } ")." }
            @if p.collectors.len() > 1 || p.only.is_some() {
                nav.ranges aria-label="Collectors" {
                    "Collector: "
                    @let base = format!("/nodes/{}?range={}", n.name, p.view.range.as_str());
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
                        tbody #tail data-keep=(TAIL_ON_SCREEN) {
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
