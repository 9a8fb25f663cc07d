//! How request bodies come in, on every listener (API, dashboard, watchTower, MassAffect):
//!
//! - **Every body arrives under a deadline**: [`BODY_DEADLINE_BASE`] plus one second per
//!   [`BODY_MIN_RATE`] bytes it declares. A client that trickles bytes is cut off with 408, so a
//!   slow body holds a connection for seconds, never for ever.
//! - **Bodies of requests nobody has verified yet are bounded per peer and in total**: a
//!   request without a valid operator token (a node's signed request, MassAffect, watchTower, a
//!   login form, the dashboard's forms) reserves the bytes it declares from its peer address's
//!   share ([`UNVERIFIED_PER_PEER`]; IPv6 by /64) and from the controller's
//!   ([`UNVERIFIED_TOTAL`]) before its body is read; past either, it is refused at once with
//!   503 and `Retry-After`, without queueing. The reservation is returned when the body has
//!   been read (or dropped). A body without a declared length reserves, and may be at most,
//!   [`UNDECLARED_MAX`].
//!
//! There are no request slots to take before a body is read: a slot chosen by an unverified
//! header (a node's name is not a secret) would let anyone who knows the name starve that node.
//! Here slow clients spend their own address's share, and the real agent, from its own address,
//! keeps reporting. Headers are read under a deadline by the server
//! (`modes::controller::serve`), TLS handshakes too.
//!
//! Knows nothing of nodes or signatures: handlers check those, before reading where headers
//! allow.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use crate::pipeline::Registry;

/// Time every body gets, however small.
pub const BODY_DEADLINE_BASE: Duration = Duration::from_secs(10);
/// The slowest a body may arrive past the base: 16 KiB/s.
pub const BODY_MIN_RATE: usize = 16 * 1024;
/// Unverified body bytes one peer address (IPv6: one /64) may have in flight.
pub const UNVERIFIED_PER_PEER: usize = 16 * 1024 * 1024;
/// Unverified body bytes the controller holds in flight from everyone.
pub const UNVERIFIED_TOTAL: usize = 128 * 1024 * 1024;
/// Largest body sent without a Content-Length (chunked).
pub const UNDECLARED_MAX: usize = 1024 * 1024;

/// The error a guarded body fails with when its deadline passes; handlers answer 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time: send it at {} KiB/s or more", BODY_MIN_RATE / 1024)]
pub struct BodyTooSlow;

/// The unverified bytes in flight, per peer and in total.
pub struct Intake {
    per_peer: usize,
    total: usize,
    registry: Arc<Registry>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    peers: HashMap<IpAddr, usize>,
}

/// Bytes reserved for one body; returned on drop.
pub struct Reservation {
    intake: Arc<Intake>,
    peer: IpAddr,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.intake.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= self.bytes;
        if let Some(n) = held.peers.get_mut(&self.peer) {
            *n -= self.bytes;
            if *n == 0 {
                held.peers.remove(&self.peer);
            }
        }
    }
}

/// The share a peer address draws from: IPv4 by address, IPv6 by /64 (one host has many).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Intake {
    pub fn new(registry: Arc<Registry>) -> Arc<Self> {
        Self::with_limits(registry, UNVERIFIED_PER_PEER, UNVERIFIED_TOTAL)
    }

    pub fn with_limits(registry: Arc<Registry>, per_peer: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_peer,
            total,
            registry,
            held: Mutex::new(Held::default()),
        })
    }

    /// Reserves `bytes` for a body from `peer`, or says why not (at once: nothing waits): 413
    /// for more than a whole share, 503 + Retry-After while the share or the total is spent.
    pub fn reserve(self: &Arc<Self>, peer: IpAddr, bytes: usize) -> Result<Reservation, ApiError> {
        let peer = peer_key(peer);
        // More than a whole share would never fit: the client must hear 413, not a 503 it
        // would retry for ever.
        if bytes > self.per_peer {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body declares {bytes} bytes; a request without an operator token may send at most {}",
                    self.per_peer
                ),
            ));
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.peers.get(&peer).copied().unwrap_or(0);
        if mine + bytes > self.per_peer {
            return Err(busy(format!(
                "{peer} has {} KiB of request bodies in flight already (at most {} KiB from one address before they are verified); retry shortly",
                mine / 1024,
                self.per_peer / 1024
            )));
        }
        if held.total + bytes > self.total {
            return Err(busy(
                "the controller is taking in as many unverified request bodies as it holds; retry shortly",
            ));
        }
        held.total += bytes;
        *held.peers.entry(peer).or_default() += bytes;
        Ok(Reservation {
            intake: self.clone(),
            peer,
            bytes,
        })
    }

    /// Bytes in flight from `peer`'s share and in total (for tests and the bench).
    pub fn held(&self, peer: IpAddr) -> (usize, usize) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        (
            held.peers.get(&peer_key(peer)).copied().unwrap_or(0),
            held.total,
        )
    }
}

fn busy(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(Duration::from_secs(2))
}

/// The deadline a body of `declared` bytes gets.
pub fn body_deadline(declared: usize) -> Duration {
    BODY_DEADLINE_BASE + Duration::from_secs((declared / BODY_MIN_RATE) as u64)
}

/// Middleware for every listener: reserves an unverified body's bytes and puts every body
/// under its deadline.
pub async fn guard(
    State(intake): State<Arc<Intake>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let (cap, expected) = match (declared, chunked) {
        (Some(0), false) | (None, false) => {
            // No body: nothing to reserve or wait for.
            return next.run(Request::from_parts(parts, body)).await;
        }
        (Some(n), false) => (n, n),
        (_, true) => (UNDECLARED_MAX, UNDECLARED_MAX),
    };
    let verified = super::auth::operator_token(&intake.registry, &parts.headers).is_some();
    let reservation = if verified {
        None
    } else {
        match intake.reserve(peer.ip(), expected) {
            Ok(r) => Some(r),
            Err(refusal) => {
                tracing::debug!(%peer, bytes = expected, "an unverified body refused: its share is spent");
                return refusal.into_response();
            }
        }
    };
    let deadline = tokio::time::Instant::now() + body_deadline(expected);
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guarded = guarded_body(body, cap, deadline, reservation, expired.clone());
    let response = next.run(Request::from_parts(parts, guarded)).await;
    // Whatever extractor read the body (a form, JSON, bytes) answered its own way: a body cut
    // at its deadline is a 408 on every route.
    if response.status().is_client_error() && expired.load(std::sync::atomic::Ordering::SeqCst) {
        return too_slow().into_response();
    }
    response
}

/// Errors a guarded body can fail with.
#[derive(Debug, thiserror::Error)]
enum GuardError {
    #[error(transparent)]
    TooSlow(#[from] BodyTooSlow),
    #[error("a body sent without Content-Length may be at most {0} bytes; send Content-Length")]
    Undeclared(usize),
    #[error(transparent)]
    Inner(axum::Error),
}

fn guarded_body(
    body: Body,
    cap: usize,
    deadline: tokio::time::Instant,
    reservation: Option<Reservation>,
    expired: Arc<std::sync::atomic::AtomicBool>,
) -> Body {
    struct State {
        stream: axum::body::BodyDataStream,
        seen: usize,
        cap: usize,
        deadline: tokio::time::Instant,
        done: bool,
        expired: Arc<std::sync::atomic::AtomicBool>,
        // Held until the body is read or dropped.
        _reservation: Option<Reservation>,
    }
    let state = State {
        stream: body.into_data_stream(),
        seen: 0,
        cap,
        deadline,
        done: false,
        expired,
        _reservation: reservation,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = match tokio::time::timeout_at(s.deadline, s.stream.next()).await {
            Err(_) => {
                s.expired.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(GuardError::TooSlow(BodyTooSlow))
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => Err(GuardError::Inner(e)),
            Ok(Some(Ok(chunk))) => {
                s.seen += chunk.len();
                if s.seen > s.cap {
                    Err(GuardError::Undeclared(s.cap))
                } else {
                    Ok(chunk)
                }
            }
        };
        if item.is_err() {
            s.done = true;
            s._reservation = None;
        }
        Some((item, s))
    });
    Body::from_stream(stream)
}

/// Whether a body-reading error was the deadline passing (answer 408, not 400 or 413).
pub fn is_too_slow(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.is::<BodyTooSlow>() {
            return true;
        }
        if let Some(GuardError::TooSlow(_)) = e.downcast_ref::<GuardError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The answer to a body that did not arrive in time.
pub fn too_slow() -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, BodyTooSlow.to_string())
}

/// `Retry-After` in whole seconds.
pub fn retry_after_value(after: Duration) -> HeaderValue {
    HeaderValue::from_str(&after.as_secs().max(1).to_string()).expect("digits are a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake() -> Arc<Intake> {
        let registry = Arc::new(Registry::new(Vec::new(), &[]));
        Intake::with_limits(registry, 100, 250)
    }

    #[test]
    fn shares_are_per_address_and_in_total_and_come_back_when_dropped() {
        let intake = intake();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = intake.reserve(a, 60).unwrap();
        let refused = intake.reserve(a, 60).err().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.retry_after.is_some());
        let _b1 = intake.reserve(b, 100).unwrap();
        let c: IpAddr = "127.0.0.4".parse().unwrap();
        let _c1 = intake.reserve(c, 90).unwrap();
        // a: 60, b: 100, c: 90 = 250: the total is spent for a newcomer.
        let d: IpAddr = "127.0.0.5".parse().unwrap();
        assert_eq!(
            intake.reserve(d, 1).err().unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(first);
        assert_eq!(intake.held(a), (0, 190));
        intake.reserve(a, 60).unwrap();
        // More than a whole share is refused for good.
        assert_eq!(
            intake.reserve(d, 101).err().unwrap().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn an_ipv6_host_draws_on_its_64s_share() {
        let intake = intake();
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let two: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _r = intake.reserve(one, 80).unwrap();
        assert!(intake.reserve(two, 30).is_err());
        assert!(intake.reserve(other, 30).is_ok());
    }

    #[test]
    fn the_deadline_grows_with_the_declared_size() {
        assert_eq!(body_deadline(0), BODY_DEADLINE_BASE);
        assert_eq!(
            body_deadline(1024 * 1024),
            BODY_DEADLINE_BASE + Duration::from_secs(64)
        );
    }
}
