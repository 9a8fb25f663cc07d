//! The read API: nodes, their status and vitals, history, the hot ring, health.
//!
//! Handlers only translate between HTTP and the stores: parse and bound the query, ask, shape
//! the answer. Times go out as RFC 3339.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::{ApiQuery, AppState};
use crate::model::{
    NodeName, NodeSource, NodeState, Vitals, check_collector_name, check_metric_name,
};
use crate::store::durable::{IngestStream, NodeStatusRow, Resolution};
use crate::timefmt::{now_ms, parse_time, rfc3339};

/// Most points returned per series, and the default.
const POINTS_MAX: i64 = 10_000;
const POINTS_DEFAULT: i64 = 1_000;
/// Most hot-ring entries returned, and the default.
const RECENT_MAX: usize = 2_000;
const RECENT_DEFAULT: usize = 100;

#[derive(Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub status: NodeState,
    pub last_seen: Option<String>,
    #[serde(skip)]
    pub last_seen_ms: Option<i64>,
    /// The agent's collection interval, in seconds.
    pub interval_seconds: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub source: NodeSource,
    pub vitals: Option<Vitals>,
}

fn summary(
    state: &AppState,
    node: &crate::model::Node,
    status: Option<&NodeStatusRow>,
    now: i64,
) -> NodeSummary {
    NodeSummary {
        name: node.name.to_string(),
        status: NodeState::of(
            status.map(|s| s.last_seen_ms),
            status.map_or(0, |s| s.interval_ms),
            now,
            state.status.stale_after,
            state.status.down_after,
        ),
        last_seen: status.map(|s| rfc3339(s.last_seen_ms)),
        last_seen_ms: status.map(|s| s.last_seen_ms),
        interval_seconds: status.map(|s| s.interval_ms as f64 / 1000.0),
        labels: node.labels.clone(),
        source: node.source,
        vitals: status.and_then(|s| s.vitals.clone()),
    }
}

/// `GET /api/v1/nodes`
pub async fn list_nodes(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let nodes = node_summaries(&state).await?;
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

/// Every enrolled node (and every node a compatibility route feeds) with its status and vitals, by name: the API's list and the dashboard's
/// overview.
pub async fn node_summaries(state: &AppState) -> Result<Vec<NodeSummary>, ApiError> {
    let snapshot = state.registry.snapshot();
    let statuses: HashMap<String, NodeStatusRow> = state
        .durable
        .node_statuses()
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let now = now_ms();
    let mut nodes: Vec<NodeSummary> = snapshot
        .listed_nodes()
        .map(|node| summary(state, node, statuses.get(node.name.as_str()), now))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// One enrolled node with its status and vitals (the node page, its live stream).
pub async fn node_summary(state: &AppState, name: &str) -> Result<NodeSummary, ApiError> {
    let node = enrolled(state, name)?;
    let status = state.durable.node_status(name).await?;
    Ok(summary(state, &node, status.as_ref(), now_ms()))
}

fn enrolled(state: &AppState, name: &str) -> Result<crate::model::Node, ApiError> {
    NodeName::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state
        .registry
        .snapshot()
        .listed(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no node named {name} is enrolled")))
}

#[derive(Serialize)]
struct StreamView {
    instance: String,
    last_seq: i64,
    batches: i64,
    gaps: i64,
    dropped: i64,
    first_seen: String,
    last_seen: String,
}

impl From<IngestStream> for StreamView {
    fn from(s: IngestStream) -> Self {
        Self {
            instance: s.instance,
            last_seq: s.last_seq,
            batches: s.batches,
            gaps: s.gaps,
            dropped: s.dropped,
            first_seen: rfc3339(s.first_seen_ms),
            last_seen: rfc3339(s.last_seen_ms),
        }
    }
}

/// `GET /api/v1/nodes/{node}`: the summary plus the ingest ledger (gaps and drops per agent
/// instance) and the metric names it has history for.
pub async fn get_node(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = enrolled(&state, &name)?;
    let status = state.durable.node_status(&name).await?;
    let streams: Vec<StreamView> = state
        .durable
        .ingest_streams(&name)
        .await?
        .into_iter()
        .map(StreamView::from)
        .collect();
    let mut metrics: Vec<String> = state
        .durable
        .series(&name, None)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    metrics.dedup();
    let summary = summary(&state, &node, status.as_ref(), now_ms());
    let mut value = serde_json::to_value(summary).expect("summaries serialise");
    value["ingest"] = serde_json::json!({
        "streams": streams,
        "gaps": streams.iter().map(|s| s.gaps).sum::<i64>(),
        "dropped": streams.iter().map(|s| s.dropped).sum::<i64>(),
    });
    value["metrics"] = serde_json::json!(metrics);
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    name: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/nodes/{node}/metrics?name=&from=&to=&limit=`: the series of one metric with
/// their points in the range (default the last hour), or, without `name`, the list of series.
pub async fn node_metrics(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> Result<Json<Value>, ApiError> {
    enrolled(&state, &name)?;
    let now = now_ms();
    let Some(metric) = query.name else {
        let series = state.durable.series(&name, None).await?;
        let list: Vec<Value> = series
            .into_iter()
            .map(|s| serde_json::json!({"name": s.name, "labels": s.labels, "collector": s.collector}))
            .collect();
        return Ok(Json(serde_json::json!({ "node": name, "series": list })));
    };
    check_metric_name("name", &metric).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let from = match &query.from {
        Some(text) => {
            parse_time(text, now).map_err(|e| ApiError::bad_request(format!("from: {e}")))?
        }
        None => now - 3_600_000,
    };
    let to = match &query.to {
        Some(text) => {
            parse_time(text, now).map_err(|e| ApiError::bad_request(format!("to: {e}")))?
        }
        None => now,
    };
    if from > to {
        return Err(ApiError::bad_request("from is after to"));
    }
    let limit = query.limit.unwrap_or(POINTS_DEFAULT);
    if !(1..=POINTS_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {POINTS_MAX}"
        )));
    }
    let mut out = Vec::new();
    for series in state.durable.series(&name, Some(&metric)).await? {
        let points: Vec<(String, f64)> = state
            .durable
            .points_of(&series, from, to, Resolution::Newest(limit))
            .await?
            .into_iter()
            .map(|(ts, v)| (rfc3339(ts), v))
            .collect();
        out.push(serde_json::json!({ "labels": series.labels, "points": points }));
    }
    Ok(Json(serde_json::json!({
        "node": name,
        "name": metric,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "series": out,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/nodes/{node}/recent/{collector}?limit=`: the newest records from the hot ring.
pub async fn node_recent(
    State(state): State<Arc<AppState>>,
    Path((name, collector)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<RecentQuery>,
) -> Result<Json<Value>, ApiError> {
    enrolled(&state, &name)?;
    check_collector_name("collector", &collector)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = query.limit.unwrap_or(RECENT_DEFAULT);
    if !(1..=RECENT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {RECENT_MAX}"
        )));
    }
    let mut records = state
        .hot
        .recent(&name, &collector, limit)
        .await
        .map_err(|e| {
            tracing::warn!(cause = %format!("{e:#}"), "cannot read the hot ring");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.public_message())
        })?;
    for record in &mut records {
        if let Some(ts) = record.get("ts").and_then(Value::as_i64) {
            record["time"] = Value::String(rfc3339(ts));
        }
    }
    Ok(Json(
        serde_json::json!({ "node": name, "collector": collector, "records": records }),
    ))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: both stores answer.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let durable = state.durable.ping().await;
    let hot = state.hot.ping().await;
    let status = if durable.is_ok() && hot.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The causes go to the log; anyone may ask /readyz, so it says only which store failed.
    let durable = match durable {
        Ok(()) => "ok",
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "readiness: the durable store does not answer");
            err.fault().public_message()
        }
    };
    let hot = match hot {
        Ok(()) => "ok",
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "readiness: the hot store does not answer");
            err.public_message()
        }
    };
    (
        status,
        Json(serde_json::json!({ "durable": durable, "hot": hot })),
    )
}
