//! `POST /api/v1/ingest`: adapts an HTTP request to the ingest pipeline. All checking happens in
//! `pipeline::ingest`; this file only reads headers and a bounded body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use crate::bus::wire;
use crate::pipeline::{IngestReply, RawBatch};

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
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Reads at most `limit` bytes, whatever Content-Length claimed.
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    // Content codings are case-insensitive (RFC 9110 §8.4.1).
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or_default().trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be gzip or absent",
            ));
        }
    };
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
