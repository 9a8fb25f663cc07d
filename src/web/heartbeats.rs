//! The heartbeat and event API: `POST/GET /api/v1/heartbeats`, `GET/DELETE
//! /api/v1/heartbeats/{service}`, `POST/GET /api/v1/events`, `GET /api/v1/alerts`.
//!
//! Pulses and events come from operators (token) or nodes (signed; a node's entries always
//! carry its own name). Parsing and limits are `crate::heartbeat`'s; this only adapts HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::auth::{Caller, Operator, caller};
use super::error::{ApiError, json_body};
use super::{ApiQuery, AppState};
use crate::heartbeat::{self, AlertRoute, Owner, Pulse};
use crate::store::events::{EventQuery, NewEvent};

pub const HEARTBEATS_PATH: &str = "/api/v1/heartbeats";
pub const EVENTS_PATH: &str = "/api/v1/events";
/// Largest body of a pulse or an event: a valid one is at most a few tens of KiB (an event's
/// message and fields are 16 KiB each).
pub const BODY_MAX: usize = 64 * 1024;

/// Reads a pulse's or an event's body once the headers say who sends it: an operator token,
/// or a node whose headers pass (`NodeAuth::admit`); nobody else has a byte read. The
/// signature over the body is checked after (`caller`).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<Bytes, ApiError> {
    if headers.contains_key(crate::bus::wire::HEADER_SIGNATURE) {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PulseBody {
    service: String,
    next_in: serde_json::Value,
    grace: Option<serde_json::Value>,
    node: Option<String>,
    alert: Option<AlertRoute>,
}

/// `POST /api/v1/heartbeats`: a pulse. Answered once it is stored.
pub async fn pulse(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(&state, &headers, peer, body).await?;
    let who = caller(
        &state,
        &headers,
        peer,
        &format!("POST {HEARTBEATS_PATH}"),
        &body,
    )
    .await?;
    let body: PulseBody = json_body(&body)?;
    let pulse = Pulse {
        service: body.service,
        node: own_node(&who, body.node)?,
        next_in_ms: heartbeat::span_ms("next_in", &body.next_in)?,
        grace_ms: match &body.grace {
            Some(g) => heartbeat::span_ms("grace", g)?,
            None => 0,
        },
        alert: body.alert,
    };
    let by = match &who {
        Caller::Node(node) => Owner::Node(node.clone()),
        Caller::Operator(_) => Owner::Operator,
    };
    let outcome = state.heartbeats.pulse(pulse, by).await?;
    Ok(Json(serde_json::json!({
        "recovered": outcome.recovered,
        "heartbeat": outcome.heartbeat,
    })))
}

/// A node speaks for itself only; an operator may name any node (or none).
fn own_node(who: &Caller, named: Option<String>) -> Result<Option<String>, ApiError> {
    match (who, named) {
        (Caller::Node(me), Some(named)) if &named != me => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("node {me} cannot speak for node {named}"),
        )),
        (Caller::Node(me), _) => Ok(Some(me.clone())),
        (Caller::Operator(_), named) => Ok(named),
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    service: Option<String>,
    node: Option<String>,
    level: Option<serde_json::Value>,
    message: String,
    fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/v1/events`: an entry for the event log.
pub async fn add_event(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body = read_body(&state, &headers, peer, body).await?;
    let who = caller(
        &state,
        &headers,
        peer,
        &format!("POST {EVENTS_PATH}"),
        &body,
    )
    .await?;
    let body: EventBody = json_body(&body)?;
    let event = NewEvent {
        node: own_node(&who, body.node)?,
        service: body.service,
        level: match &body.level {
            Some(level) => heartbeat::parse_level(level)?,
            None => 1,
        },
        message: body.message,
        fields: serde_json::Value::Object(body.fields.unwrap_or_default()),
        category: "event",
    };
    check_event(&event)?;
    let id = state
        .durable
        .add_event(&event, crate::timefmt::now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// The rules every new event meets, whichever door it came in by.
pub fn check_event(event: &NewEvent) -> Result<(), crate::model::InvalidInput> {
    use crate::model::InvalidInput;
    if event.service.is_none() && event.node.is_none() {
        return Err(InvalidInput::new(
            "service",
            "an event needs a service or a node",
        ));
    }
    if let Some(service) = &event.service {
        heartbeat::check_service(service)?;
    }
    if let Some(node) = &event.node {
        crate::model::NodeName::parse(node).map_err(|e| InvalidInput::new("node", e.problem))?;
    }
    heartbeat::check_message(&event.message)?;
    if event.fields.to_string().len() > heartbeat::limits::FIELDS_MAX {
        return Err(InvalidInput::new(
            "fields",
            format!(
                "are more than {} bytes as JSON",
                heartbeat::limits::FIELDS_MAX
            ),
        ));
    }
    Ok(())
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
