//! `GET /api/v1/tokens` and `DELETE /api/v1/tokens/{id}`: the operator tokens, listed (label,
//! created, last used, revoked; named by id, never by the secret or its hash) and revoked.
//!
//! Translates only: listing and revoking are `pipeline::registry`'s, which makes a revoked
//! token stop working on this controller before the answer is sent.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Operator;
use super::error::ApiError;
use crate::pipeline::registry::{ListedToken, RevokeError};
use crate::store::tokens::TokenInfo;

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(crate::timefmt::rfc3339(ms)))
}

/// A token as the API shows it: times in RFC 3339 and in milliseconds.
pub fn token_json(info: &TokenInfo, source: &str) -> Value {
    let created = (source != "config").then_some(info.created_at_ms);
    json!({
        "id": info.id,
        "label": info.label,
        "source": source,
        "created_at": time(created),
        "created_at_ms": created,
        "last_used_at": time(info.last_used_ms),
        "last_used_ms": info.last_used_ms,
        "revoked_at": time(info.revoked_at_ms),
        "revoked_at_ms": info.revoked_at_ms,
    })
}

/// `GET /api/v1/tokens`
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let tokens: Vec<ListedToken> = state.registry.list_tokens(&state.durable).await?;
    Ok(Json(json!({
        "tokens": tokens.iter().map(|t| token_json(&t.info, &t.source)).collect::<Vec<_>>(),
    })))
}

/// `DELETE /api/v1/tokens/{id}`: revoked at once here; its streams and sessions end.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Operator(who): Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.registry.revoke(&state.durable, &id).await {
        Ok(info) => {
            tracing::info!(by = %who, token = %info.id, "token revoked through the API");
            Ok(Json(token_json(&info, "store")))
        }
        Err(RevokeError::Store(err)) => Err(err.into()),
        Err(err @ RevokeError::Unknown(_)) => Err(ApiError::not_found(err.to_string())),
        Err(err @ RevokeError::Configured(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, err.to_string()))
        }
        Err(err @ RevokeError::Malformed(_)) => Err(ApiError::bad_request(err.to_string())),
    }
}
