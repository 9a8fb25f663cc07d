//! Who is asking: operators by `Authorization: Bearer <token>` (checked against the registry's
//! token hashes), nodes by requests signed with their node key (`X-Fleet-Signature`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::pipeline::Requester;
use crate::pipeline::node_auth::Claim;
use crate::wire;

/// Refuses a request without a valid operator token.
pub async fn require_operator(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let who = operator(&state, request.headers())?;
    request.extensions_mut().insert(who);
    Ok(next.run(request).await)
}

/// The label of the valid operator token a request carries, if any (cheap: a hash lookup in
/// the registry's snapshot).
pub fn operator_token(registry: &crate::pipeline::Registry, headers: &HeaderMap) -> Option<String> {
    let token = bearer_token(headers)?;
    registry
        .snapshot()
        .operator(token)
        .map(|label| label.to_string())
}

/// The bearer token a request carries, as it is checked (trimmed): the one reading of the
/// header, so what is checked and what is counted per token are the same thing.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The operator a request's bearer token belongs to.
pub fn operator(state: &AppState, headers: &HeaderMap) -> Result<Operator, ApiError> {
    match bearer_token(headers) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing operator token: send `Authorization: Bearer <token>` (see `fleet token create`)",
        )),
        Some(token) => match state.registry.token(token) {
            Some(holder) => {
                state.registry.note_use(&holder, &state.durable);
                Ok(Operator(format!("token {:?}", holder.label)))
            }
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the operator token is not valid",
            )),
        },
    }
}

/// A node when the request is signed (`X-Fleet-Signature`), else an operator by token.
pub async fn requester(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    what: &str,
    body: &[u8],
) -> Result<Requester, ApiError> {
    if headers.contains_key(wire::HEADER_SIGNATURE) {
        agent(state, headers, peer, what, body)
            .await
            .map(Requester::Node)
    } else {
        operator(state, headers).map(|Operator(label)| Requester::Operator(label))
    }
}

/// Who made an authenticated operator request (the token's label), for the audit log. As an
/// extractor it is the check itself, for routes that sit outside the operator-only router.
#[derive(Debug, Clone)]
pub struct Operator(pub String);

impl axum::extract::FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(known) = parts.extensions.get::<Operator>() {
            return Ok(known.clone());
        }
        operator(state, &parts.headers)
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// What a node-signed request's headers claim (checked by `pipeline::node_auth`).
pub fn node_claim(headers: &HeaderMap, peer: SocketAddr) -> Claim<'_> {
    Claim {
        node: header(headers, wire::HEADER_NODE),
        timestamp: header(headers, wire::HEADER_TIMESTAMP),
        signature: header(headers, wire::HEADER_SIGNATURE),
        source: Some(peer.ip()),
    }
}

/// Checks a request signed by a node (`fleet-agent-v1`, see docs/commands.md): admitted,
/// signed, never seen before. Returns the node's name.
pub async fn agent(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    what: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    Ok(state
        .node_auth
        .verify_request(&node_claim(headers, peer), what, body)
        .await?)
}
