//! Node authentication: the one check every request signed with a node key passes, whatever
//! it carries (a batch, a command poll, reports, a pulse, an event) and whichever way it came
//! (HTTP, NATS).
//!
//! In two steps, so a request is refused as early as its headers allow:
//! - [`NodeAuth::admit`] looks only at what the headers claim (a well-formed, enrolled node, a
//!   source address inside its networks, a timestamp in canonical decimal inside the clock
//!   window). It does no I/O and reads no body: run it before a body is read.
//! - [`NodeAuth::check_signature`] verifies the HMAC over the body in constant time, and
//!   [`NodeAuth::verify_request`] adds the replay check for requests other than batches (whose
//!   own rule is the per-instance sequence number, kept by the ledger): the signature is
//!   remembered in the store until its timestamp leaves the window, so the same request is
//!   taken once, by every controller on the database.
//!
//! Knows the wire format through `wire`, never HTTP: errors are typed, `web/` maps them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::model::NodeName;
use crate::pipeline::registry::Registry;
use crate::store::{Durable, StoreError};
use crate::wire;

/// Why a node's request was refused: one kind per reason, so a caller can tell an unknown
/// node from a bad signature. [`NodeAuthError::status`] is the answer's status on either bus.
#[derive(Debug, thiserror::Error)]
pub enum NodeAuthError {
    /// The request names no node.
    #[error("missing header {}", wire::HEADER_NODE)]
    MissingNode,
    /// A node name no valid client sends (spaces, too long).
    #[error("{0}")]
    MalformedNode(String),
    #[error("node {0} is not enrolled; enroll it with `fleet node add {0}`")]
    UnknownNode(String),
    /// The node may not connect from this address.
    #[error("node {node} may not connect from {from}")]
    WrongNetwork { node: String, from: IpAddr },
    /// The timestamp is not canonical decimal milliseconds.
    #[error(
        "header {} must be milliseconds since the Unix epoch",
        wire::HEADER_TIMESTAMP
    )]
    MalformedTimestamp,
    #[error(
        "the request's timestamp is {off_s} s away from the controller's clock (at most {allowed_s} s allowed): check the node's clock (NTP)"
    )]
    OutsideWindow { off_s: i64, allowed_s: i64 },
    #[error("bad signature: the node key does not match the one enrolled")]
    BadSignature,
    #[error("this signed request was already received: a request is taken once (a replay?)")]
    Replayed,
    /// The store could not remember the request.
    #[error("the controller cannot check the request now, retry later")]
    Unavailable(#[source] StoreError),
}

impl NodeAuthError {
    /// The status this refusal is answered with, over HTTP and in NATS replies: 400 for a
    /// malformed name, 403 for a wrong network, 503 when the store is down, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            NodeAuthError::MalformedNode(_) => 400,
            NodeAuthError::WrongNetwork { .. } => 403,
            NodeAuthError::Unavailable(_) => 503,
            NodeAuthError::MissingNode
            | NodeAuthError::UnknownNode(_)
            | NodeAuthError::MalformedTimestamp
            | NodeAuthError::OutsideWindow { .. }
            | NodeAuthError::BadSignature
            | NodeAuthError::Replayed => 401,
        }
    }
}

impl NodeAuthError {
    /// The refusal's kind as a short stable word (the error log's `reason` field).
    pub fn reason(&self) -> &'static str {
        match self {
            NodeAuthError::MissingNode => "missing_node",
            NodeAuthError::MalformedNode(_) => "malformed_node",
            NodeAuthError::UnknownNode(_) => "unknown_node",
            NodeAuthError::WrongNetwork { .. } => "wrong_network",
            NodeAuthError::MalformedTimestamp => "malformed_timestamp",
            NodeAuthError::OutsideWindow { .. } => "outside_window",
            NodeAuthError::BadSignature => "bad_signature",
            NodeAuthError::Replayed => "replayed",
            NodeAuthError::Unavailable(_) => "unavailable",
        }
    }
}

/// What a signed request's headers claim, before anything is verified.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub node: &'a str,
    /// Milliseconds since the Unix epoch, as sent.
    pub timestamp: &'a str,
    pub signature: &'a str,
    /// The peer address; `None` on NATS, where the broker's own authentication stands in.
    pub source: Option<IpAddr>,
}

/// Whether the timestamp must be inside the clock window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// A request made just now (every HTTP request, a batch on NATS).
    Now,
    /// A message that may have waited in a stream for hours (a NATS report). Replaying one is
    /// harmless: a report moves a command forward once.
    Any,
}

/// What the signature covers besides the node and the timestamp.
#[derive(Debug, Clone, Copy)]
pub enum Covered<'a> {
    /// A batch (`fleet-batch-v1`): its agent instance and sequence number.
    Batch { instance: &'a str, seq: u64 },
    /// Any other request (`fleet-agent-v1`): what it is (`POST /api/v1/events`, a subject).
    Request { what: &'a str },
}

/// A node whose headers passed [`NodeAuth::admit`]; its body is not verified yet.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub node: String,
    /// The node's key, to check the signature with.
    key: String,
    pub timestamp_ms: i64,
}

pub struct NodeAuth {
    registry: Arc<Registry>,
    durable: Durable,
    clock_skew: Duration,
}

impl NodeAuth {
    pub fn new(registry: Arc<Registry>, durable: Durable, clock_skew: Duration) -> Self {
        Self {
            registry,
            durable,
            clock_skew,
        }
    }

    /// The checks the headers alone allow: cheap, no I/O. Order matters: the name's shape,
    /// then enrollment, then the address, then the clock.
    pub fn admit(
        &self,
        claim: &Claim,
        clock: Clock,
        now_ms: i64,
    ) -> Result<Admitted, NodeAuthError> {
        if claim.node.is_empty() {
            return Err(NodeAuthError::MissingNode);
        }
        NodeName::parse(claim.node).map_err(|e| NodeAuthError::MalformedNode(e.to_string()))?;
        let snapshot = self.registry.snapshot();
        let node = snapshot
            .node(claim.node)
            .ok_or_else(|| NodeAuthError::UnknownNode(claim.node.to_owned()))?;
        if let Some(source) = claim.source
            && !node.allows(source)
        {
            return Err(NodeAuthError::WrongNetwork {
                node: claim.node.to_owned(),
                from: source,
            });
        }
        // Canonical decimal only: the signature covers the number as printed, so `007` or `+7`
        // would verify differently from what the client signed.
        let timestamp_ms: i64 = claim
            .timestamp
            .parse()
            .ok()
            .filter(|t: &i64| t.to_string() == claim.timestamp)
            .ok_or(NodeAuthError::MalformedTimestamp)?;
        let skew = self.clock_skew.as_millis() as i64;
        // abs_diff: a hostile timestamp like i64::MIN must not overflow.
        if clock == Clock::Now && timestamp_ms.abs_diff(now_ms) > skew as u64 {
            return Err(NodeAuthError::OutsideWindow {
                off_s: timestamp_ms.saturating_sub(now_ms) / 1000,
                allowed_s: skew / 1000,
            });
        }
        Ok(Admitted {
            node: claim.node.to_owned(),
            key: node.key.clone(),
            timestamp_ms,
        })
    }

    /// The HMAC over `body` (uncompressed), in constant time.
    pub fn check_signature(
        &self,
        admitted: &Admitted,
        covered: Covered,
        body: &[u8],
        signature: &str,
    ) -> Result<(), NodeAuthError> {
        let node = admitted.node.as_str();
        let key = admitted.key.as_bytes();
        let valid = match covered {
            Covered::Batch { instance, seq } => {
                let headers = wire::BatchHeaders {
                    node: node.to_owned(),
                    instance: instance.to_owned(),
                    seq,
                    timestamp_ms: admitted.timestamp_ms,
                };
                wire::verify(key, &headers, body, signature)
            }
            Covered::Request { what } => {
                wire::verify_agent(key, node, what, admitted.timestamp_ms, body, signature)
            }
        };
        if valid {
            Ok(())
        } else {
            Err(NodeAuthError::BadSignature)
        }
    }

    /// A signed request other than a batch, made just now: admitted, signed, and not seen
    /// before. Returns the node's name.
    pub async fn verify_request(
        &self,
        claim: &Claim<'_>,
        what: &str,
        body: &[u8],
    ) -> Result<String, NodeAuthError> {
        let now_ms = crate::timefmt::now_ms();
        let admitted = self.admit(claim, Clock::Now, now_ms)?;
        self.check_signature(&admitted, Covered::Request { what }, body, claim.signature)?;
        // Hex is case-insensitive to the verifier: remember one spelling of it.
        let signature = claim.signature.to_ascii_lowercase();
        let expires_ms = admitted
            .timestamp_ms
            .saturating_add(self.clock_skew.as_millis() as i64);
        let fresh = self
            .durable
            .remember_request(&signature, claim.node, expires_ms)
            .await
            .map_err(NodeAuthError::Unavailable)?;
        if !fresh {
            return Err(NodeAuthError::Replayed);
        }
        Ok(admitted.node)
    }

    /// A signed message that waited in a stream (a NATS report): enrolled node and signature,
    /// no clock window and no replay check (see [`Clock::Any`]).
    pub fn verify_stored(
        &self,
        claim: &Claim,
        what: &str,
        body: &[u8],
    ) -> Result<(), NodeAuthError> {
        let admitted = self.admit(claim, Clock::Any, crate::timefmt::now_ms())?;
        self.check_signature(&admitted, Covered::Request { what }, body, claim.signature)
    }

    /// Forgets, every minute until `shutdown`, remembered requests that the clock window
    /// now refuses anyway.
    pub async fn forget_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Another controller's clock may be behind this one's by up to the window: keep a
            // signature one window past its own expiry, so no controller takes a replay.
            let before = crate::timefmt::now_ms() - self.clock_skew.as_millis() as i64;
            if let Err(err) = self.durable.forget_expired_requests(before).await {
                tracing::warn!(cause = %format!("{err:#}"), "cannot forget expired request signatures; retrying");
            }
        }
    }
}
