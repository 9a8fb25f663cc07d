//! The node page (`/nodes/{node}`): its charts over a chosen range, its recent events,
//! commands and heartbeats, and the newest records from the hot ring; and the overview's
//! sparklines (`/ui/spark/{node}/{metric}.svg`). Gathers from the stores, renders with
//! `pages` and `chart`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::chart;
use super::pages;
use super::sections::{self, Section, View, gap_ms};
use super::session::Viewer;
use crate::model::metric;
use crate::store::durable::Resolution;
use crate::web::error::ApiError;
use crate::web::{ApiQuery, AppState};

/// The ranges a node page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    #[default]
    Hour,
    SixHours,
    Day,
    Week,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Hour, Range::SixHours, Range::Day, Range::Week];

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::SixHours => "6h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    pub fn ms(self) -> i64 {
        3_600_000
            * match self {
                Range::Hour => 1,
                Range::SixHours => 6,
                Range::Day => 24,
                Range::Week => 24 * 7,
            }
    }

    pub fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        match text {
            None | Some("") => Ok(Range::Hour),
            Some(t) => Range::ALL
                .into_iter()
                .find(|r| r.as_str() == t)
                .ok_or_else(|| ApiError::bad_request("range: one of 1h, 6h, 24h, 7d")),
        }
    }
}

/// Entries in each list of the node page.
const LIST_LIMIT: i64 = 20;
/// Collectors in the tail, and records shown of each.
pub const TAIL_COLLECTORS_MAX: usize = 16;
pub const TAIL_PER_COLLECTOR: usize = 10;
/// Tail rows kept on screen as new ones arrive: older ones are a link away.
pub const TAIL_ON_SCREEN: usize = 50;

/// Points on a sparkline: one per pixel of its width.
const SPARK_POINTS: i64 = 80;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_breaks_only_where_more_than_three_buckets_or_intervals_are_missing() {
        // A sparkline's buckets (45 s) are longer than a 10 s agent's interval: one point per
        // bucket is a continuous line.
        let gap = gap_ms(Range::Hour.ms() / SPARK_POINTS, 10_000);
        let points: Vec<(i64, f64)> = (0..10).map(|i| (i * 45_000, 50.0)).collect();
        let svg = chart::sparkline(&points, 0, 3_600_000, 100.0, gap);
        let d = svg.split(" d=\"").nth(1).unwrap();
        assert_eq!(d.matches('M').count(), 1, "{svg}");
        // A slow agent (every 5 min) on a 1 h chart: its points are not gaps either.
        assert_eq!(
            gap_ms(Range::Hour.ms() / sections::CHART_POINTS, 300_000),
            900_000
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    range: Option<String>,
    /// Only this collector's records in the tail.
    collector: Option<String>,
    /// The vhost of the traffic charts.
    vhost: Option<String>,
    /// Only shipped log lines containing this text.
    lines: Option<String>,
}

/// Text a page query carries for a filter: bounded, and none when empty.
pub fn filter_text(what: &str, given: Option<String>) -> Result<Option<String>, ApiError> {
    match given.filter(|t| !t.trim().is_empty()) {
        Some(t) if t.len() > FILTER_MAX => Err(ApiError::bad_request(format!(
            "{what}: at most {FILTER_MAX} bytes"
        ))),
        other => Ok(other),
    }
}

/// Longest filter text a page takes, in bytes.
const FILTER_MAX: usize = 200;

impl NodeQuery {
    /// The data sections' view this query asks for.
    pub fn view(&mut self) -> Result<View, ApiError> {
        Ok(View {
            range: Range::parse(self.range.as_deref())?,
            vhost: filter_text("vhost", self.vhost.take())?,
            lines: filter_text("lines", self.lines.take())?,
        })
    }
}

/// The tail's collector filter from a query string: none, or one valid collector name.
pub fn collector_filter(given: Option<String>) -> Result<Option<String>, ApiError> {
    match given.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => {
            crate::model::check_collector_name("collector", &c)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(Some(c))
        }
    }
}

/// `GET /nodes/{node}?range=`
pub async fn node_page(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    ApiQuery(mut query): ApiQuery<NodeQuery>,
) -> Result<Response, ApiError> {
    let view = query.view()?;
    let only = collector_filter(query.collector)?;
    let summary = crate::web::api::node_summary(&state, &name).await?;
    let now = crate::timefmt::now_ms();
    let interval_ms = summary
        .interval_seconds
        .map_or(10_000, |s| (s * 1000.0) as i64);
    let sections = sections::sections(
        &state,
        &name,
        &view,
        interval_ms,
        now,
        &Section::ALL.into_iter().collect(),
    )
    .await?;
    // Read before the events: whatever commits after it reaches the page live.
    let latest_event = state.durable.last_event_id().await?;
    let events = state
        .durable
        .events(&crate::store::events::EventQuery {
            category: "event",
            node: Some(name.clone()),
            limit: LIST_LIMIT,
            ..Default::default()
        })
        .await?;
    let commands = state
        .durable
        .commands(Some(&name), None, LIST_LIMIT)
        .await?;
    let heartbeats = state
        .durable
        .heartbeats_of_node(&name, now, LIST_LIMIT)
        .await?;
    let collectors = state
        .hot
        .collectors(&name, TAIL_COLLECTORS_MAX)
        .await
        .unwrap_or_default();
    let tail = tail(&state, &name, only.as_deref()).await;
    Ok(Html(
        pages::node_page(
            (&viewer.who, &viewer.csrf),
            &pages::NodePage {
                summary: &summary,
                view: &view,
                sections,
                events: &events,
                latest_event,
                commands: &commands,
                heartbeats: &heartbeats,
                tail: &tail,
                collectors: &collectors,
                only: only.as_deref(),
            },
            now,
        )
        .into_string(),
    )
    .into_response())
}

/// The collectors of the node's tail: all that have a ring, or just `only`.
async fn tail_collectors(
    state: &AppState,
    node: &str,
    only: Option<&str>,
) -> Result<Vec<String>, String> {
    match only {
        Some(one) => Ok(vec![one.to_owned()]),
        None => state
            .hot
            .collectors(node, TAIL_COLLECTORS_MAX)
            .await
            .map_err(hot_failed),
    }
}

/// What the page says when the hot ring cannot be read: our sentence; Redis's is logged.
fn hot_failed(err: crate::store::hot::HotError) -> String {
    tracing::warn!(cause = %format!("{err:#}"), "cannot read the hot ring for a node page");
    err.public_message().to_owned()
}

/// The newest records of each of the node's collectors (or of `only`) in the hot ring, newest
/// first, or why the ring cannot be read (the page shows it, and the live tail starts from
/// nothing).
pub async fn tail(
    state: &AppState,
    node: &str,
    only: Option<&str>,
) -> Result<Vec<TailEntry>, String> {
    let mut entries = Vec::new();
    for collector in tail_collectors(state, node, only).await? {
        let records = state
            .hot
            .recent(node, &collector, TAIL_PER_COLLECTOR)
            .await
            .map_err(hot_failed)?;
        entries.extend(
            records
                .into_iter()
                .map(|record| TailEntry::of(&collector, record)),
        );
    }
    entries.sort_by_key(|e| std::cmp::Reverse((e.ts_ms, e.seq)));
    Ok(entries)
}

/// One record of the tail.
pub struct TailEntry {
    pub collector: String,
    pub ts_ms: i64,
    /// Its sequence number in the collector's ring: what the live tail resumes after.
    pub seq: u64,
    /// The record's document (and samples), compact.
    pub data: serde_json::Value,
}

impl TailEntry {
    pub fn of(collector: &str, mut record: serde_json::Value) -> Self {
        let ts_ms = record
            .get("ts")
            .and_then(|t| t.as_i64())
            .unwrap_or_default();
        let seq = record
            .get("seq")
            .and_then(|s| s.as_u64())
            .unwrap_or_default();
        if let Some(object) = record.as_object_mut() {
            // Said by the row already.
            object.remove("node");
            object.remove("collector");
            object.remove("ts");
            object.remove("seq");
        }
        Self {
            collector: collector.to_owned(),
            ts_ms,
            seq,
            data: record,
        }
    }

    /// The element id of this entry on the page: unique per collector and sequence number.
    pub fn element_id(&self) -> String {
        format!("tail-{}-{}", self.collector, self.seq)
    }
}

/// Sparkline metrics the overview shows.
fn spark_metric(which: &str) -> Option<&'static str> {
    match which {
        "cpu.svg" => Some(metric::CPU_USED_PERCENT),
        "memory.svg" => Some(metric::MEMORY_USED_PERCENT),
        _ => None,
    }
}

/// `GET /ui/spark/{node}/{cpu|memory}.svg`: the last hour of one vital as a small SVG.
pub async fn sparkline(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path((name, which)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let metric = spark_metric(&which)
        .ok_or_else(|| ApiError::not_found("sparklines are cpu.svg and memory.svg"))?;
    crate::model::NodeName::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = crate::timefmt::now_ms();
    let from = now - Range::Hour.ms();
    let series = state.durable.series(&name, Some(metric)).await?;
    let bucket = Range::Hour.ms() / SPARK_POINTS;
    let interval_ms = state
        .durable
        .node_status(&name)
        .await?
        .map_or(10_000, |s| s.interval_ms);
    let points = match series.first() {
        Some(s) => state
            .durable
            .points(
                &name,
                &s.collector,
                &[s.id],
                from,
                now,
                Resolution::Buckets {
                    bucket_ms: bucket,
                    interval_ms,
                },
            )
            .await?
            .pop()
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let svg = chart::sparkline(&points, from, now, 100.0, gap_ms(bucket, interval_ms));
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            // A row replaced live asks again: a minute-old line is fresh enough.
            (header::CACHE_CONTROL, "private, max-age=30"),
        ],
        svg,
    )
        .into_response())
}
