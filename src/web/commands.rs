//! The command API: operators submit, follow and cancel commands (`/api/v1/commands…`) and read
//! the central error log (`/api/v1/errors`); agents on the HTTP bus poll for their commands and
//! post reports (`/api/v1/agent/…`, signed with the node key like ingest). Handlers translate;
//! the queue is `pipeline::commands`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::auth::Operator;
use super::error::ApiError;
use super::{ApiQuery, AppState};
use crate::command::{CommandReport, CommandState};
use crate::pipeline::commands::Submission;

/// Largest request body on these routes: a submission of many commands.
pub const BODY_MAX: usize = 16 * 1024 * 1024;
/// Largest body of an agent's reports.
pub const REPORTS_BODY_MAX: usize = 8 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    pub commands: Vec<Submission>,
}

/// `POST /api/v1/commands`: stores the signed commands, then answers with their ids.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(operator): Extension<Operator>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body: SubmitBody = super::error::json_body(&body)?;
    let ids: Vec<String> = body.commands.iter().map(|s| s.command.id.clone()).collect();
    let fresh = state
        .commands
        .submit(body.commands, &operator.0, "api")
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "ids": ids, "new": fresh })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Hold the request until the command is settled, up to this long (`30s`).
    pub wait: Option<String>,
}

fn parse_wait(text: Option<&str>) -> Result<Duration, ApiError> {
    match text {
        None => Ok(Duration::ZERO),
        Some(t) => crate::timefmt::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("wait: {e}"))),
    }
}

/// `GET /api/v1/commands/{id}`: the command, its result and its audit trail.
pub async fn get_command(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let wait = parse_wait(query.wait.as_deref())?;
    let record = state
        .commands
        .wait_settled(std::slice::from_ref(&id), wait)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no command {id}")))?;
    let log = state.durable.command_log(&id).await?;
    let mut value = serde_json::to_value(record).expect("records serialise");
    value["log"] = serde_json::to_value(log).expect("log entries serialise");
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitBody {
    pub ids: Vec<String>,
    #[serde(default)]
    pub wait: Option<String>,
}

/// `POST /api/v1/commands/wait`: many commands at once (a fan-out), held until all are settled
/// or the wait passes.
pub async fn wait_many(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: WaitBody = super::error::json_body(&body)?;
    if body.ids.len() > crate::command::limits::SUBMISSION_MAX {
        return Err(ApiError::bad_request(format!(
            "ids: at most {} at once",
            crate::command::limits::SUBMISSION_MAX
        )));
    }
    let wait = parse_wait(body.wait.as_deref())?;
    let records = state.commands.wait_settled(&body.ids, wait).await?;
    Ok(Json(serde_json::json!({ "commands": records })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub node: Option<String>,
    pub state: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/commands?node=&state=&limit=`: newest first.
pub async fn list_commands(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let wanted = query
        .state
        .as_deref()
        .map(CommandState::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let records = state
        .durable
        .commands(query.node.as_deref(), wanted, limit)
        .await?;
    Ok(Json(serde_json::json!({ "commands": records })))
}

/// `POST /api/v1/commands/{id}/cancel`: withdraws a command no node has taken. One its node has
/// (or may have) is stopped there by a signed `Cancel` command, which only an operator key can
/// make: the answer says so.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(operator): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.commands.cancel(&id, &operator.0).await?;
    if now == CommandState::Queued {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "command {id} is on the NATS command stream, where its node may already have it; stop it there with a signed Cancel (`fleet send --cancel {id}` does that)"
            ),
        ));
    }
    if now != CommandState::Cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            if now.is_terminal() {
                format!("command {id} is already {now}; nothing to cancel")
            } else {
                format!(
                    "command {id} is {now}, so its node has it; stop it there with a signed Cancel (`fleet send --cancel {id}` does that)"
                )
            },
        ));
    }
    Ok(Json(serde_json::json!({ "id": id, "state": now })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsQuery {
    pub node: Option<String>,
    pub since: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/errors?node=&since=&limit=`: the central error log, newest first.
pub async fn errors(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ErrorsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let since = match query.since.as_deref() {
        Some(t) => crate::timefmt::parse_time(t, crate::timefmt::now_ms())
            .map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        None => 0,
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .durable
        .events(&crate::store::events::EventQuery {
            category: "error",
            node: query.node.clone(),
            from_ms: Some(since),
            limit,
            ..Default::default()
        })
        .await?;
    Ok(Json(serde_json::json!({ "errors": entries })))
}

// ---- the agent side of the HTTP bus ---------------------------------------------------------

pub use crate::wire::{AGENT_POLL_PATH, AGENT_REPORTS_PATH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    pub wait_ms: Option<u64>,
}

/// `GET /api/v1/agent/commands?wait_ms=`: the node's queued commands, in order, marked
/// delivered; held open until one arrives or the wait passes.
pub async fn agent_poll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = super::auth::agent(
        &state,
        &headers,
        peer,
        &format!("GET {AGENT_POLL_PATH}"),
        b"",
    )
    .await?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    let commands = state.commands.poll(&node, wait).await?;
    Ok(Json(serde_json::json!({ "commands": commands })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsBody {
    pub reports: Vec<CommandReport>,
}

/// `POST /api/v1/agent/reports`: `running`, then outcomes. Answered once stored.
pub async fn agent_reports(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Refused by its headers before the body is read.
    state.node_auth.admit(
        &super::auth::node_claim(&headers, peer),
        crate::pipeline::node_auth::Clock::Now,
        crate::timefmt::now_ms(),
    )?;
    super::ingest::refuse_declared_over(&headers, REPORTS_BODY_MAX)?;
    let body = super::ingest::read_bounded(body, REPORTS_BODY_MAX).await?;
    let node = super::auth::agent(
        &state,
        &headers,
        peer,
        &format!("POST {AGENT_REPORTS_PATH}"),
        &body,
    )
    .await?;
    let body: ReportsBody = super::error::json_body(&body)?;
    state.commands.report(&node, &body.reports).await?;
    Ok(Json(serde_json::json!({ "stored": body.reports.len() })))
}
