//! Operator authentication for the API: `Authorization: Bearer <token>`, checked against the
//! registry's token hashes. Agents do not use this; their batches carry signatures.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;

/// Refuses a request without a valid operator token.
pub async fn require_operator(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing operator token: send `Authorization: Bearer <token>` (see `fleet token create`)",
        )),
        Some(token) => match state.registry.snapshot().operator(token) {
            Some(label) => {
                let operator = Operator(format!("token {label:?}"));
                let mut request = request;
                request.extensions_mut().insert(operator);
                Ok(next.run(request).await)
            }
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the operator token is not valid",
            )),
        },
    }
}

/// Who made an authenticated operator request (the token's label), for the audit log.
#[derive(Debug, Clone)]
pub struct Operator(pub String);
