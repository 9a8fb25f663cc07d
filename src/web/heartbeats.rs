//! The heartbeat and event API: `POST/GET /api/v1/heartbeats`, `GET/DELETE
//! /api/v1/heartbeats/{service}`, `POST/GET /api/v1/events`, `GET /api/v1/alerts`.
//!
//! Pulses and events come from operators (token) or nodes (signed; a node's entries always
//! carry its own name). The rules are the pipeline's (`pipeline::heartbeats`,
//! `pipeline::events`); this only adapts HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::auth::{Operator, requester};
use super::error::{ApiError, json_body};
use super::{ApiQuery, AppState};
use crate::heartbeat::{self, Owner};
use crate::pipeline::events::EventRequest;
use crate::pipeline::heartbeats::{PulseRequest, pulse_answer};
use crate::store::events::EventQuery;

pub use crate::wire::{EVENTS_PATH, HEARTBEATS_PATH};
/// Largest body of a pulse or an event.
pub const BODY_MAX: usize = heartbeat::limits::REQUEST_BODY_MAX;

/// Reads a pulse's or an event's body once the headers say who sends it: an operator token,
/// or a node whose headers pass (`NodeAuth::admit`); nobody else has a byte read. The
/// signature over the body is checked after (`requester`).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<Bytes, ApiError> {
    if headers.contains_key(crate::wire::HEADER_SIGNATURE) {
        state.node_auth.admit(
            &super::auth::node_claim(headers, peer),
            crate::pipeline::node_auth::Clock::Now,
            crate::timefmt::now_ms(),
        )?;
    } else {
        super::auth::operator(state, headers)?;
    }
    super::ingest::refuse_declared_over(headers, BODY_MAX)?;
    super::ingest::read_bounded(body, BODY_MAX).await
}

/// `POST /api/v1/heartbeats`: a pulse. Answered once it is stored.
pub async fn pulse(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(&state, &headers, peer, body).await?;
    let who = requester(
        &state,
        &headers,
        peer,
        &format!("POST {HEARTBEATS_PATH}"),
        &body,
    )
    .await?;
    let request: PulseRequest = json_body(&body)?;
    let outcome = state.heartbeats.pulse_request(&who, request).await?;
    Ok(Json(pulse_answer(&outcome)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/heartbeats?after=&limit=`: by service name; `next_after` continues the list.
pub async fn list(
    State(state): State<Arc<AppState>>,
    _: Operator,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("limit: between 1 and 10000"));
    }
    let page = state
        .durable
        .heartbeats(crate::timefmt::now_ms(), query.after.as_deref(), limit)
        .await?;
    let next_after = (page.len() as i64 == limit)
        .then(|| page.last().map(|h| h.service.clone()))
        .flatten();
    Ok(Json(
        serde_json::json!({ "heartbeats": page, "next_after": next_after }),
    ))
}

/// `GET /api/v1/heartbeats/{service}`.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(service): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::model::check_no_nul("service", &service)?;
    match state
        .durable
        .heartbeat(&service, crate::timefmt::now_ms())
        .await?
    {
        Some(h) => Ok(Json(serde_json::to_value(h).expect("heartbeats serialise"))),
        None => Err(ApiError::not_found(format!(
            "no heartbeat named {service:?}: see GET {HEARTBEATS_PATH}"
        ))),
    }
}

/// `DELETE /api/v1/heartbeats/{service}`: stops watching it; it stays listed, cancelled, until
/// it pulses again.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(service): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::model::check_no_nul("service", &service)?;
    state.heartbeats.cancel(&service, &Owner::Operator).await?;
    let current = state
        .durable
        .heartbeat(&service, crate::timefmt::now_ms())
        .await?;
    Ok(Json(serde_json::json!({ "heartbeat": current })))
}

/// `POST /api/v1/events`: an entry for the event log.
pub async fn add_event(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body = read_body(&state, &headers, peer, body).await?;
    let who = requester(
        &state,
        &headers,
        peer,
        &format!("POST {EVENTS_PATH}"),
        &body,
    )
    .await?;
    let request: EventRequest = json_body(&body)?;
    let id = state.events.add_request(&who, request).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub service: Option<String>,
    pub node: Option<String>,
    pub level: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub before: Option<i64>,
}

/// The store's search for the API's event filters (the dashboard's are the same): each
/// checked, times read relative to `now`.
pub fn event_search(
    query: EventsQuery,
    category: &'static str,
    now: i64,
) -> Result<EventQuery, ApiError> {
    let time = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(|t| crate::timefmt::parse_time(t, now))
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
    };
    let min_level = query
        .level
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(heartbeat::level_filter)
        .transpose()?;
    let text = query.q.filter(|q| !q.is_empty());
    if let Some(q) = &text {
        heartbeat::check_search(q)?;
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: between 1 and 1000"));
    }
    let name = |field: &str, v: Option<String>| {
        v.filter(|s| !s.is_empty())
            .map(|s| crate::model::check_no_nul(field, &s).map(|()| s))
            .transpose()
    };
    Ok(EventQuery {
        category,
        service: name("service", query.service)?,
        node: name("node", query.node)?,
        min_level,
        from_ms: time("from", &query.from)?,
        to_ms: time("to", &query.to)?,
        text,
        before_id: query.before,
        after_id: None,
        limit,
    })
}

/// `GET /api/v1/events?service=&node=&level=&from=&to=&q=&limit=&before=`: newest first;
/// `next_before` continues the list.
pub async fn events(
    State(state): State<Arc<AppState>>,
    _: Operator,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let search = event_search(query, "event", crate::timefmt::now_ms())?;
    let limit = search.limit;
    let entries = state.durable.events(&search).await?;
    let next_before = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    // Where a follower of the stream starts, so nothing falls between this page and it.
    let latest_id = state.durable.last_event_id().await?;
    Ok(Json(serde_json::json!({
        "events": entries,
        "next_before": next_before,
        "latest_id": latest_id,
    })))
}

/// `GET /api/v1/alerts`: alerts raised, newest first (delivered by the notifier once it runs).
pub async fn alerts(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let alerts = state.durable.alerts(200).await?;
    Ok(Json(serde_json::json!({ "alerts": alerts })))
}
