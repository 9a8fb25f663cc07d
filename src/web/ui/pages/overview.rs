//! `/`, the overview: every node with its status, last seen and vitals, the counts above the
//! table, the filters, and the rows and counts its live stream replaces.
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::{layout, number, percent, state_word, when};
use crate::model::NodeState;
use crate::web::api::NodeSummary;

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
            a href="/heartbeats" { (counts.down_heartbeats) @if counts.down_heartbeats == 1 { " heartbeat down" } @else { " heartbeats down" } }
            a href="/commands?state=failed" { (counts.failed_commands) @if counts.failed_commands == 1 { " command failed (24 h)" } @else { " commands failed (24 h)" } }
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
