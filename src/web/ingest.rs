//! `POST /api/v1/ingest`: adapts an HTTP request to the ingest pipeline. All checking happens in
//! `pipeline::ingest`; this file only reads headers and a bounded body (its body helpers serve
//! the MassAffect route too).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use crate::pipeline::{IngestError, IngestReply, RawBatch};
use crate::wire;

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

pub async fn ingest(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestReply>, ApiError> {
    let limit = state.ingest_limits.max_body_bytes;
    refuse_declared_over(&headers, limit)?;
    // Refused by its headers before a byte of the body is read: an unknown node, another
    // network, a clock outside the window.
    let claim = super::auth::node_claim(&headers, peer);
    state
        .ingest
        .admit(&claim, crate::timefmt::now_ms())
        .map_err(IngestError::from)?;
    let gzip = is_gzip(&headers)?;
    let body = read_bounded(body, limit).await?;
    // Past this many batches at once, further ones wait their turn (each may hold a 1 MiB body
    // and its 8 MiB inflation). Taken only once the body is here: a slow sender holds none.
    let _working = state.ingest_work.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        )
    })?;
    let raw = RawBatch {
        node: header_text(&headers, wire::HEADER_NODE),
        instance: header_text(&headers, wire::HEADER_INSTANCE),
        seq: header_text(&headers, wire::HEADER_SEQ),
        timestamp_ms: header_text(&headers, wire::HEADER_TIMESTAMP),
        signature: header_text(&headers, wire::HEADER_SIGNATURE),
        gzip,
        body,
        source: Some(peer.ip()),
    };
    Ok(Json(state.ingest.ingest(raw).await?))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}

/// 413 when the request declares a body over `limit` (before anything is read).
pub(super) fn refuse_declared_over(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Reads at most `limit` bytes, whatever Content-Length claimed; 413 past it, 408 when the
/// body does not arrive within its deadline (`intake`).
pub(super) async fn read_bounded(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if super::intake::is_too_slow(&e) {
            super::intake::too_slow()
        } else {
            too_large(limit)
        }
    })
}

/// Whether the body is gzip (`Content-Encoding: gzip`); absent or `identity`: plain; anything
/// else: 415.
pub(super) fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    // Content codings are case-insensitive (RFC 9110 §8.4.1).
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or_default().trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding must be gzip or absent",
        )),
    }
}
