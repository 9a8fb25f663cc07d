//! `/events` and `/errors`, the event log and the central error log: the filters, the table,
//! and the rows their live streams prepend (the node page shows the same table).
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::{at, compact_json, layout, level_word};
use crate::store::events::EventEntry;
use crate::web::ui::logs::LogQuery;

/// One entry of the event log (or the error log), a table row replaced or prepended live.
pub fn event_row(e: &EventEntry, now_ms: i64) -> Markup {
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
pub fn event_table(entries: &[EventEntry], live: Option<&str>, now_ms: i64) -> Markup {
    html! {
        table.events {
            thead { tr { th { "When" } th { "Level" } th { "Node" } th { "Service" } th { "Message" } th.wide { "Fields" } } }
            tbody #events data-live=[live] {
                @for e in entries { (event_row(e, now_ms)) }
            }
        }
    }
}

/// `/events` (and, with `errors`, `/errors`): the log, newest first, live.
pub fn events_page(
    viewer: (&str, &str),
    errors: bool,
    filters: &LogQuery,
    entries: &[EventEntry],
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
