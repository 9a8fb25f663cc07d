//! `/heartbeats`: every watched service with its state, last pulse and deadline (the node
//! page shows the same table for its own).
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::{at, layout};
use crate::heartbeat::Heartbeat;

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

pub fn heartbeat_table(beats: &[Heartbeat], now_ms: i64) -> Markup {
    html! {
        table.heartbeats {
            thead { tr { th { "Service" } th { "State" } th { "Last pulse" } th { "Due by" } th.wide { "Expects" } th.wide.num { "Pulses" } } }
            tbody {
                @for h in beats {
                    tr id={ "hb-" (h.service) } {
                        td { (h.service) @if let Some(node) = &h.node { " " a.muted href={ "/nodes/" (node) } { "(" (node) ")" } } }
                        td { (heartbeat_state(h.state)) " " span.muted { "for " (super::duration(h.for_ms)) } }
                        td { (at(h.last_pulse_ms, now_ms)) }
                        td { (at(h.deadline_ms, now_ms)) }
                        td.wide.muted {
                            "every " (super::duration(h.next_in_ms))
                            @if h.grace_ms > 0 { " + " (super::duration(h.grace_ms)) " grace" } @else { ", no grace" }
                        }
                        td.wide.num { (h.pulses) }
                    }
                }
            }
        }
    }
}

/// `/heartbeats`
pub fn heartbeats_page(
    viewer: (&str, &str),
    beats: &[Heartbeat],
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
