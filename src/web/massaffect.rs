//! `POST /collect`: MassAffect's agent protocol, unchanged, on the API listener, so MassAffect
//! agents report to the controller without being touched. `docs/massaffect.md` is its prose
//! twin.
//!
//! A request is checked in this order: the declared body size, the peer address (it must be a
//! key of `[compat.massaffect] agents`, which names the node), the body read and inflated within
//! the bounds, then `x-agent-signature` (HMAC-SHA256 of the uncompressed body under the shared
//! secret, compared in constant time). Each item then becomes a [`Record`] by
//! [`Record::from_item`] and the batch goes to [`crate::pipeline::Ingest::ingest_verified`]: the
//! same writer, stores, hot ring and node pulse as native batches.
//!
//! MassAffect's `system` collector names CPU and load its own way (`cpu_idle`, `load1`);
//! [`with_native_names`] adds the native samples beside them, so the overview's vitals and the
//! node page's charts read MassAffect nodes too. That translation is this adapter's only rule.
//!
//! An adapter only: it must never hold rules of its own about items, records or storage (those
//! are `crate::model`'s and the pipeline's), never trust `X-Forwarded-For` or any other header
//! for the sender, and never store anything from a request it refused. Its answers for 200, 401
//! and 403 are MassAffect's, byte for byte, since agents may check them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::AppState;
use super::error::ApiError;
use super::ingest::{is_gzip, read_bounded, refuse_declared_over};
use crate::config::MassaffectConfig;
use crate::model::{BatchBody, NodeName, Record, Sample, limits, metric};
use crate::wire;

/// The route's path, as MassAffect agents post to it.
pub const PATH: &str = "/collect";
/// The header that carries the signature.
pub const HEADER_SIGNATURE: &str = "x-agent-signature";

/// The shared state of `POST /collect`: which addresses are MassAffect agents (and under which
/// node each is stored), the secret they sign with, and the bounds on their bodies.
struct CollectEndpoint {
    /// The controller's state, shared with the main API (its ingest pipeline above all).
    app: Arc<AppState>,
    /// The HMAC key agents sign with.
    secret: Vec<u8>,
    /// Canonical source address → the node its data is stored under.
    agents: BTreeMap<IpAddr, NodeName>,
    /// Largest body read, as sent.
    max_body_bytes: usize,
    /// Largest body after inflation.
    max_decompressed_bytes: usize,
}

/// Builds the `/collect` router over the controller's state; `web::router` merges it into the
/// API when `[compat.massaffect]` is configured (otherwise the path does not exist: 404).
pub fn router(app: Arc<AppState>, config: &MassaffectConfig) -> Router {
    let endpoint = Arc::new(CollectEndpoint {
        max_body_bytes: config
            .max_body_bytes
            .unwrap_or(app.ingest_limits.max_body_bytes),
        max_decompressed_bytes: config
            .max_decompressed_bytes
            .unwrap_or(app.ingest_limits.max_decompressed_bytes),
        secret: config.secret.as_bytes().to_vec(),
        agents: config.agents.clone(),
        app,
    });
    Router::new()
        .route(
            PATH,
            // Bodies are buffered and inflated before the signature can be checked: bound how
            // many at once, like native ingest.
            post(collect).layer(tower::limit::ConcurrencyLimitLayer::new(
                super::INGEST_CONCURRENCY,
            )),
        )
        .with_state(endpoint)
}

async fn collect(
    State(endpoint): State<Arc<CollectEndpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let received_at_ms = crate::timefmt::now_ms();
    refuse_declared_over(&headers, endpoint.max_body_bytes)?;
    let source = peer.ip().to_canonical();
    let Some(node) = endpoint.agents.get(&source) else {
        tracing::info!(%source, "MassAffect /collect from an address not in compat.massaffect.agents");
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden"));
    };
    let body = read_bounded(body, endpoint.max_body_bytes).await?;
    let body = if is_gzip(&headers)? {
        wire::inflate_bounded(&body, endpoint.max_decompressed_bytes).map_err(|e| match e {
            wire::InflateError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            wire::InflateError::Corrupt(_) => ApiError::bad_request(e.to_string()),
        })?
    } else if body.len() > endpoint.max_decompressed_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than {} bytes",
                endpoint.max_decompressed_bytes
            ),
        ));
    } else {
        body.to_vec()
    };
    if !signed(&endpoint.secret, &headers, &body) {
        tracing::info!(%source, node = %node, "MassAffect /collect with a missing or bad signature");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "Invalid signature"));
    }
    // A name a native agent reports under too has its native series from that agent: they
    // must not mix with MassAffect's figures.
    let native_names = endpoint
        .app
        .registry
        .snapshot()
        .node(node.as_str())
        .is_none();
    let records = items(&body, received_at_ms, native_names)?;
    let batch = BatchBody {
        // MassAffect does not say how often it sends: the node's status uses the defaults.
        interval_ms: 0,
        dropped_batches: 0,
        records,
    };
    endpoint
        .app
        .ingest
        .ingest_verified(node.clone(), batch, received_at_ms)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// Whether `x-agent-signature` is the hex HMAC-SHA256 of `body` under `secret`.
fn signed(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(given) = headers
        .get(HEADER_SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v.trim()).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The body's items as records; the first refusal names the item (counted from 0).
fn items(body: &[u8], received_at_ms: i64, native_names: bool) -> Result<Vec<Record>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ApiError::bad_request(
            "the body must be a JSON array of items ({\"collector\": …, \"ts\": …, \"metrics\": {…}})",
        ));
    };
    // A MassAffect agent is the node's own agent: no collector name is reserved.
    let mut records = Record::from_items(items, received_at_ms, &[])
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if native_names {
        records.iter_mut().for_each(with_native_names);
    }
    Ok(records)
}

/// MassAffect's `system` item (`metrics`: `load1`, `load5`, `load15`, and from its second run
/// `cpu_user`, `cpu_system`, `cpu_idle`, `cpu_iowait` in percent of the interval) gets the
/// native samples beside its own: `load.1`…, `cpu.*_percent`, and `cpu.used_percent` as the
/// native collector has it (100 − idle − iowait). MassAffect measures no memory or disk.
fn with_native_names(record: &mut Record) {
    if record.collector != "system" {
        return;
    }
    let theirs = |name: &str| {
        record
            .samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    };
    let mut native: Vec<Sample> = [
        ("system.load1", metric::LOAD1),
        ("system.load5", "load.5"),
        ("system.load15", "load.15"),
        ("system.cpu_user", "cpu.user_percent"),
        ("system.cpu_system", "cpu.system_percent"),
        ("system.cpu_idle", "cpu.idle_percent"),
        ("system.cpu_iowait", "cpu.iowait_percent"),
    ]
    .into_iter()
    .filter_map(|(their_name, our_name)| theirs(their_name).map(|v| Sample::new(our_name, v)))
    .collect();
    if let (Some(idle), Some(iowait)) = (theirs("system.cpu_idle"), theirs("system.cpu_iowait")) {
        native.push(Sample::new(
            metric::CPU_USED_PERCENT,
            metric::cpu_used_percent(idle, iowait),
        ));
    }
    // Within the item's bound: an item already at it keeps its own samples only.
    if record.samples.len() + native.len() <= limits::ITEM_SAMPLES_MAX {
        record.samples.extend(native);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn massaffect_system_items_get_the_native_vitals() {
        let body = br#"[{"collector":"system","ts":1795000000,"metrics":{"load1":0.5,"load5":0.25,"load15":0.125,"cpu_user":20.0,"cpu_system":5.0,"cpu_idle":70.0,"cpu_iowait":5.0}},
            {"collector":"system","ts":1795000010,"metrics":{"load1":0.75,"load5":0.5,"load15":0.25}},
            {"collector":"app","metrics":{"load1":9}}]"#;
        let records = items(body, 0, true).unwrap();
        let vitals = crate::model::Vitals::from_records(&records[..1]).unwrap();
        assert_eq!(vitals.cpu_percent, Some(25.0));
        assert_eq!(vitals.load1, Some(0.5));
        assert_eq!(vitals.memory_percent, None, "MassAffect measures no memory");
        let value =
            |r: &Record, name: &str| r.samples.iter().find(|s| s.name == name).map(|s| s.value);
        assert_eq!(value(&records[0], "cpu.iowait_percent"), Some(5.0));
        assert_eq!(value(&records[0], "load.15"), Some(0.125));
        assert_eq!(
            value(&records[0], "system.cpu_idle"),
            Some(70.0),
            "its own names stay"
        );
        // The first run after a MassAffect agent starts has no CPU figures: load only.
        assert_eq!(value(&records[1], metric::CPU_USED_PERCENT), None);
        assert_eq!(value(&records[1], metric::LOAD1), Some(0.75));
        // Only MassAffect's `system` collector means this.
        assert_eq!(value(&records[2], metric::LOAD1), None);
        // On a name a native agent reports under too, its own names only.
        let records = items(body, 0, false).unwrap();
        assert_eq!(value(&records[0], metric::CPU_USED_PERCENT), None);
        assert_eq!(value(&records[0], "system.cpu_idle"), Some(70.0));
    }

    #[test]
    fn items_name_the_one_at_fault() {
        let now = 1_700_000_000_000;
        let records = items(
            br#"[{"collector":"system","ts":1700000000,"metrics":{"cpu":{"used_percent":12.5}},"site":"a"}]"#,
            now,
            true,
        )
        .unwrap();
        assert_eq!(records[0].collector, "system");
        assert_eq!(records[0].ts, 1_700_000_000_000);
        assert_eq!(records[0].data["site"], "a");
        assert_eq!(records[0].samples[0].name, "system.cpu.used_percent");
        let err = items(
            br#"[{"collector":"a"},{"collector":"a"},{"collector":"a"},{"ts":1}]"#,
            now,
            true,
        )
        .unwrap_err();
        assert!(
            err.message.starts_with("item 3: collector:"),
            "{}",
            err.message
        );
        assert!(items(br#"{"collector":"a"}"#, now, true).is_err());
        assert!(items(b"\x1f\x8b garbage", now, true).is_err());
        let big = format!(
            r#"[{{"collector":"a","pad":"{}"}}]"#,
            "x".repeat(crate::model::limits::ITEM_BYTES_MAX)
        );
        assert!(
            items(big.as_bytes(), now, true)
                .unwrap_err()
                .message
                .starts_with("item 0: is")
        );
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"[]");
        let good = hex::encode(mac.finalize().into_bytes());
        let mut headers = HeaderMap::new();
        assert!(!signed(b"k", &headers, b"[]"));
        headers.insert(HEADER_SIGNATURE, good.parse().unwrap());
        assert!(signed(b"k", &headers, b"[]"));
        assert!(!signed(b"k", &headers, b"[ ]"));
        assert!(!signed(b"other", &headers, b"[]"));
        headers.insert(HEADER_SIGNATURE, "zz".parse().unwrap());
        assert!(!signed(b"k", &headers, b"[]"));
    }
}
