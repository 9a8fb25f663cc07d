//! The node page (`/nodes/{node}`): its charts over a chosen range, its recent events,
//! commands and heartbeats, and the newest records from the hot ring; and the overview's
//! sparklines (`/ui/spark/{node}/{metric}.svg`). Gathers from the stores, renders with
//! `pages` and `chart`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::chart::{self, Line, Unit};
use super::pages;
use super::session::Viewer;
use crate::model::metric;
use crate::store::durable::{Resolution, Series};
use crate::web::error::ApiError;
use crate::web::{ApiQuery, AppState};

/// The ranges a node page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
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

    fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        match text {
            None | Some("") => Ok(Range::Hour),
            Some(t) => Range::ALL
                .into_iter()
                .find(|r| r.as_str() == t)
                .ok_or_else(|| ApiError::bad_request("range: one of 1h, 6h, 24h, 7d")),
        }
    }
}

/// Points per chart line at most: about one per two pixels of a chart's width.
const CHART_POINTS: i64 = 300;
/// Lines on one chart at most (a host with 40 interfaces shows the busiest-named first).
const LINES_MAX: usize = 8;
/// Entries in each list of the node page.
const LIST_LIMIT: i64 = 20;
/// Collectors in the tail, and records shown of each.
pub const TAIL_COLLECTORS_MAX: usize = 16;
pub const TAIL_PER_COLLECTOR: usize = 10;

/// One chart of the node page: which metric, how to label its lines.
struct ChartSpec {
    id: &'static str,
    title: &'static str,
    unit: Unit,
    /// (metric name, the line's label when the series has no labels).
    metrics: &'static [(&'static str, &'static str)],
}

const CHARTS: [ChartSpec; 6] = [
    ChartSpec {
        id: "chart-cpu",
        title: "CPU",
        unit: Unit::Percent,
        metrics: &[
            (metric::CPU_USED_PERCENT, "used"),
            ("cpu.user_percent", "user"),
            ("cpu.system_percent", "system"),
            ("cpu.iowait_percent", "iowait"),
        ],
    },
    ChartSpec {
        id: "chart-memory",
        title: "Memory",
        unit: Unit::Percent,
        metrics: &[(metric::MEMORY_USED_PERCENT, "used")],
    },
    ChartSpec {
        id: "chart-swap",
        title: "Swap",
        unit: Unit::Bytes,
        metrics: &[("swap.used_bytes", "used")],
    },
    ChartSpec {
        id: "chart-disk",
        title: "Disk",
        unit: Unit::Percent,
        metrics: &[(metric::DISK_USED_PERCENT, "used")],
    },
    ChartSpec {
        id: "chart-network",
        title: "Network",
        unit: Unit::BytesPerSecond,
        metrics: &[
            ("net.rx_bytes_per_sec", "received"),
            ("net.tx_bytes_per_sec", "sent"),
        ],
    },
    ChartSpec {
        id: "chart-load",
        title: "Load",
        unit: Unit::Number,
        metrics: &[
            (metric::LOAD1, "1 min"),
            ("load.5", "5 min"),
            ("load.15", "15 min"),
        ],
    },
];

/// A series' line label: the metric's own word, then its labels (`received eth0`).
fn line_label(word: &str, series: &Series) -> String {
    let mut label = word.to_owned();
    for value in series.labels.values() {
        label.push(' ');
        label.push_str(value);
    }
    label
}

/// How long without a point breaks a line: three buckets, or three of the node's intervals.
fn gap_ms(bucket_ms: i64, interval_ms: i64) -> i64 {
    (bucket_ms * 3).max(interval_ms * 3).max(1)
}

/// Points on a sparkline: one per pixel of its width.
const SPARK_POINTS: i64 = 80;

/// The node page's charts, each a rendered figure.
async fn charts(
    state: &AppState,
    node: &str,
    range: Range,
    interval_ms: i64,
    now: i64,
) -> Result<Vec<maud::Markup>, ApiError> {
    let all = state.durable.series(node, None).await?;
    let from = now - range.ms();
    let bucket = range.ms() / CHART_POINTS;
    let gap = gap_ms(bucket, interval_ms);
    // Each chart's series, in the spec's order, loopback interfaces left out (always idle or
    // always busy, never what an operator looks for).
    let chosen: Vec<Vec<(&Series, &str)>> = CHARTS
        .iter()
        .map(|spec| {
            spec.metrics
                .iter()
                .flat_map(|(name, word)| {
                    all.iter()
                        .filter(move |s| s.name == *name)
                        .filter(|s| s.labels.get("interface").is_none_or(|i| i != "lo"))
                        .map(move |s| (s, *word))
                })
                .take(LINES_MAX)
                .collect()
        })
        .collect();
    // One read per collector for every chart's series in it: CPU, memory, swap and load all
    // come from `system`, which is read once.
    let mut by_collector: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for (series, _) in chosen.iter().flatten() {
        by_collector
            .entry(series.collector.as_str())
            .or_default()
            .push(series.id);
    }
    let mut points_of: std::collections::HashMap<i64, Vec<(i64, f64)>> = Default::default();
    for (collector, ids) in by_collector {
        let lists = state
            .durable
            .points(
                node,
                collector,
                &ids,
                from,
                now,
                Resolution::Buckets {
                    bucket_ms: bucket,
                    interval_ms,
                },
            )
            .await?;
        points_of.extend(ids.into_iter().zip(lists));
    }
    Ok(CHARTS
        .iter()
        .zip(&chosen)
        .map(|(spec, lines)| {
            let lines: Vec<Line> = lines
                .iter()
                .map(|(series, word)| Line {
                    label: line_label(word, series),
                    points: points_of.get(&series.id).cloned().unwrap_or_default(),
                })
                .collect();
            chart::line_chart(spec.id, spec.title, spec.unit, from, now, gap, &lines)
        })
        .collect())
}

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
        assert_eq!(gap_ms(Range::Hour.ms() / CHART_POINTS, 300_000), 900_000);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    range: Option<String>,
    /// Only this collector's records in the tail.
    collector: Option<String>,
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
    ApiQuery(query): ApiQuery<NodeQuery>,
) -> Result<Response, ApiError> {
    let range = Range::parse(query.range.as_deref())?;
    let only = collector_filter(query.collector)?;
    let summary = crate::web::api::node_summary(&state, &name).await?;
    let now = crate::timefmt::now_ms();
    let interval_ms = summary
        .interval_seconds
        .map_or(10_000, |s| (s * 1000.0) as i64);
    let charts = charts(&state, &name, range, interval_ms, now).await?;
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
                range,
                charts,
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
