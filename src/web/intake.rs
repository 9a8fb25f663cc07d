//! How request bodies come in, on every listener (API, dashboard, watchTower, MassAffect):
//!
//! - **Every body keeps pace**: it gets [`BODY_GRACE`] for its first bytes, and each byte
//!   after earns 1/[`BODY_MIN_RATE`] of a second more; a body that falls behind (a client that
//!   trickles bytes, or sends none) is cut off with 408. So a slow body holds a connection for
//!   seconds, never for ever, and declaring a large body buys no time without sending it.
//! - **Bodies of requests nobody has verified yet are bounded per route, per peer and in
//!   total**: a request without a valid operator token (a node's signed request, MassAffect,
//!   watchTower, a login form, the dashboard's forms) may declare at most its route's largest
//!   body (the table given to [`Intake::new`]; [`UNVERIFIED_DEFAULT_MAX`] elsewhere), else 413
//!   at once; it then reserves the bytes it declares from its peer address's share
//!   ([`UNVERIFIED_PER_PEER`]; IPv6 by /64) and from one of two pools before a byte is read:
//!   requests that name an enrolled node from inside its networks draw on
//!   [`UNVERIFIED_NODES_TOTAL`], everything else on [`UNVERIFIED_OTHERS_TOTAL`], so login forms
//!   and compatibility clients cannot spend what the nodes' reports need. Past any of them the
//!   answer is 503 with `Retry-After`, at once, without queueing. The reservation is returned
//!   when the body has been read (or dropped). A body without a declared length reserves its
//!   route's largest.
//!
//! There are no request slots to take before a body is read: a slot chosen by an unverified
//! header (a node's name is not a secret) would let anyone who knows the name starve that node.
//! Here slow clients spend their own address's share, and the real agent, from its own address,
//! keeps reporting. Headers are read under a deadline by the server
//! (`modes::controller::serve`), TLS handshakes too.
//!
//! Knows nothing of signatures: handlers check those, before reading where headers allow.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use super::shares::{Share, Shares};
use crate::pipeline::Registry;

/// Time every body gets for its first bytes.
pub const BODY_GRACE: Duration = Duration::from_secs(10);
/// The slowest a body may arrive past the grace: 32 KiB/s.
pub const BODY_MIN_RATE: usize = 32 * 1024;
/// Unverified body bytes one peer address (IPv6: one /64) may have in flight (at least the
/// largest route's body).
pub const UNVERIFIED_PER_PEER: usize = 8 * 1024 * 1024;
/// Unverified body bytes in flight from requests that name an enrolled node from inside its
/// networks.
pub const UNVERIFIED_NODES_TOTAL: usize = 128 * 1024 * 1024;
/// Unverified body bytes in flight from every other request.
pub const UNVERIFIED_OTHERS_TOTAL: usize = 32 * 1024 * 1024;
/// Largest unverified body on a route the table does not name (pulses, events, forms, logins).
pub const UNVERIFIED_DEFAULT_MAX: usize = 64 * 1024;
/// Largest body read (and thrown away) before a 413, so the client hears it.
const DRAIN_MAX: usize = 1024 * 1024;

/// The error a guarded body fails with when its deadline passes; handlers answer 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time: send it at {} KiB/s or more", BODY_MIN_RATE / 1024)]
pub struct BodyTooSlow;

/// Which total an unverified body draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The request names an enrolled node and comes from inside its networks.
    Nodes = 0,
    /// Anything else.
    Others = 1,
}

/// The unverified bytes in flight, per peer and in total.
pub struct Intake {
    per_peer: usize,
    totals: [usize; 2],
    /// Path → the largest unverified body that route takes.
    routes: HashMap<String, usize>,
    registry: Arc<Registry>,
    peers: Arc<Shares<IpAddr>>,
    pools: Arc<Shares<Pool>>,
}

/// Bytes reserved for one body, from its peer's share and its pool; returned on drop.
pub struct Reservation {
    _peer: Share<IpAddr>,
    _pool: Share<Pool>,
}

/// The share a peer address draws from: IPv4 by address, IPv6 by /64 (one host has many).
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Intake {
    /// `routes`: the paths whose unverified bodies may be larger than
    /// [`UNVERIFIED_DEFAULT_MAX`], with their largest (ingest, agent reports, MassAffect).
    pub fn new(registry: Arc<Registry>, routes: &[(&str, usize)]) -> Arc<Self> {
        let largest = routes.iter().map(|(_, max)| *max).max().unwrap_or(0);
        Self::with_limits(
            registry,
            routes,
            UNVERIFIED_PER_PEER.max(largest),
            [UNVERIFIED_NODES_TOTAL, UNVERIFIED_OTHERS_TOTAL],
        )
    }

    pub fn with_limits(
        registry: Arc<Registry>,
        routes: &[(&str, usize)],
        per_peer: usize,
        totals: [usize; 2],
    ) -> Arc<Self> {
        Arc::new(Self {
            per_peer,
            totals,
            routes: routes.iter().map(|(p, m)| ((*p).to_owned(), *m)).collect(),
            registry,
            peers: Arc::default(),
            pools: Arc::default(),
        })
    }

    /// The largest unverified body `path` takes.
    pub fn route_max(&self, path: &str) -> usize {
        self.routes
            .get(path)
            .copied()
            .unwrap_or(UNVERIFIED_DEFAULT_MAX)
    }

    /// The pool a request draws on: the nodes' when its `X-Fleet-Node` names an enrolled node
    /// whose networks hold `peer`. Not proof that it is that node (the signature is checked
    /// once the body is in), but a stranger must at least be inside the node's networks to
    /// spend the nodes' pool.
    pub fn pool(&self, headers: &axum::http::HeaderMap, peer: IpAddr) -> Pool {
        let named = headers
            .get(crate::wire::HEADER_NODE)
            .and_then(|v| v.to_str().ok());
        match named {
            Some(name)
                if self
                    .registry
                    .snapshot()
                    .node(name)
                    .is_some_and(|n| n.allows(peer)) =>
            {
                Pool::Nodes
            }
            _ => Pool::Others,
        }
    }

    /// Reserves `bytes` for a body from `peer` in `pool`, or says why not (at once: nothing
    /// waits): 413 for more than a whole share, 503 + Retry-After while the share or the pool
    /// is spent.
    pub fn reserve(&self, peer: IpAddr, pool: Pool, bytes: usize) -> Result<Reservation, ApiError> {
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
        let peer_share = self
            .peers
            .take(peer, bytes, self.per_peer)
            .map_err(|mine| {
                busy(format!(
                    "{peer} has {} KiB of request bodies in flight already (at most {} KiB from one address before they are verified); retry shortly",
                    mine / 1024,
                    self.per_peer / 1024
                ))
            })?;
        let pool_share = self
            .pools
            .take(pool, bytes, self.totals[pool as usize])
            .map_err(|_| {
                busy(
                    "the controller is taking in as many unverified request bodies as it holds; retry shortly",
                )
            })?;
        Ok(Reservation {
            _peer: peer_share,
            _pool: pool_share,
        })
    }

    /// Bytes in flight from `peer`'s share and in `pool` (for tests).
    pub fn held(&self, peer: IpAddr, pool: Pool) -> (usize, usize) {
        (self.peers.held(&peer_key(peer)), self.pools.held(&pool))
    }
}

fn busy(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(Duration::from_secs(2))
}

/// Middleware for every listener: bounds an unverified body by its route, reserves its bytes,
/// and makes every body keep pace.
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
    if !chunked && declared.unwrap_or(0) == 0 {
        // No body: nothing to reserve or wait for.
        return next.run(Request::from_parts(parts, body)).await;
    }
    let verified = super::auth::operator_token(&intake.registry, &parts.headers).is_some();
    let (cap, reservation) = if verified {
        // An operator's body: its route bounds its size; it only has to keep pace.
        (usize::MAX, None)
    } else {
        let max = intake.route_max(parts.uri.path());
        let expected = if chunked { max } else { declared.unwrap_or(0) };
        if expected > max {
            // A client still writing when the answer comes may see only a broken pipe: read a
            // modest body to its end (keeping pace, keeping nothing) so it hears the 413.
            if !chunked && expected <= DRAIN_MAX {
                let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mut rest = guarded_body(body, DRAIN_MAX, None, flag).into_data_stream();
                while let Some(Ok(_)) = rest.next().await {}
            }
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {max} bytes, the most this route takes"),
            )
            .into_response();
        }
        let pool = intake.pool(&parts.headers, peer.ip());
        match intake.reserve(peer.ip(), pool, expected) {
            Ok(r) => (max, Some(r)),
            Err(refusal) => {
                tracing::debug!(%peer, bytes = expected, ?pool, "an unverified body refused: its share is spent");
                return refusal.into_response();
            }
        }
    };
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guarded = guarded_body(body, cap, reservation, expired.clone());
    let response = next.run(Request::from_parts(parts, guarded)).await;
    // Whatever extractor read the body (a form, JSON, bytes) answered its own way: a body cut
    // for falling behind is a 408 on every route.
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
    #[error("the body is larger than {0} bytes, the most this route takes")]
    Undeclared(usize),
    #[error(transparent)]
    Inner(axum::Error),
}

fn guarded_body(
    body: Body,
    cap: usize,
    reservation: Option<Reservation>,
    expired: Arc<std::sync::atomic::AtomicBool>,
) -> Body {
    struct State {
        stream: axum::body::BodyDataStream,
        seen: usize,
        cap: usize,
        started: tokio::time::Instant,
        done: bool,
        expired: Arc<std::sync::atomic::AtomicBool>,
        // Held until the body is read or dropped.
        _reservation: Option<Reservation>,
    }
    let state = State {
        stream: body.into_data_stream(),
        seen: 0,
        cap,
        started: tokio::time::Instant::now(),
        done: false,
        expired,
        _reservation: reservation,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        // Each byte received earns 1/BODY_MIN_RATE of a second past the grace.
        let earned = Duration::from_secs_f64(s.seen as f64 / BODY_MIN_RATE as f64);
        let deadline = s.started + BODY_GRACE + earned;
        let item = match tokio::time::timeout_at(deadline, s.stream.next()).await {
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
        Intake::with_limits(registry, &[("/big", 500)], 100, [1000, 250])
    }

    #[test]
    fn shares_are_per_address_and_per_pool_and_come_back_when_dropped() {
        let intake = intake();
        let others = Pool::Others;
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = intake.reserve(a, others, 60).unwrap();
        let refused = intake.reserve(a, others, 60).err().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.retry_after.is_some());
        let _b1 = intake.reserve(b, others, 100).unwrap();
        let c: IpAddr = "127.0.0.4".parse().unwrap();
        let _c1 = intake.reserve(c, others, 90).unwrap();
        // a: 60, b: 100, c: 90 = 250: that pool is spent for a newcomer, not the nodes' one.
        let d: IpAddr = "127.0.0.5".parse().unwrap();
        assert_eq!(
            intake.reserve(d, others, 1).err().unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let _d1 = intake.reserve(d, Pool::Nodes, 100).unwrap();
        drop(first);
        assert_eq!(intake.held(a, others), (0, 190));
        intake.reserve(a, others, 60).unwrap();
        // More than a whole share is refused for good.
        let e: IpAddr = "127.0.0.6".parse().unwrap();
        assert_eq!(
            intake.reserve(e, Pool::Nodes, 101).err().unwrap().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn an_ipv6_host_draws_on_its_64s_share() {
        let intake = intake();
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let two: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _r = intake.reserve(one, Pool::Others, 80).unwrap();
        assert!(intake.reserve(two, Pool::Others, 30).is_err());
        assert!(intake.reserve(other, Pool::Others, 30).is_ok());
    }

    #[test]
    fn routes_have_their_own_largest_body() {
        let intake = intake();
        assert_eq!(intake.route_max("/big"), 500);
        assert_eq!(intake.route_max("/login"), UNVERIFIED_DEFAULT_MAX);
    }
}
