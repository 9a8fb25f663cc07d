//! The HTTP face of the controller: the axum router, its shared state, and the handlers for
//! ingest ([`ingest`]), the read API ([`api`]), commands ([`commands`]), heartbeats and events
//! ([`heartbeats`]), the event stream ([`stream`]), operator tokens ([`tokens`]), the watchTower compatibility listener
//! ([`watchtower`]), the MassAffect `/collect` route ([`massaffect`]), the dashboard ([`ui`]) and auth ([`auth`]).
//!
//! Handlers adapt HTTP to the pipeline and the stores; they hold no rules of their own. Nothing
//! here opens sockets: `modes::controller` binds and serves the router.

pub mod admission;
pub mod api;
pub mod auth;
pub mod commands;
pub mod error;
pub mod heartbeats;
pub mod ingest;
pub mod intake;
pub mod massaffect;
pub mod shares;
pub mod stream;
pub mod tokens;
pub mod ui;
pub mod watchtower;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::config::{IngestConfig, StatusConfig};
use crate::pipeline::{CommandQueue, Heartbeats, Ingest, NodeAuth, Registry};
use crate::store::{Durable, HotStore};

/// Most batches verified and stored at once (their bodies already read).
pub const INGEST_CONCURRENCY: usize = 256;
/// Most event streams open at once; each reads the store four times a second.
pub const STREAMS_MAX: usize = 256;
/// Most of them one operator (a token, a dashboard user) may hold.
pub const STREAMS_PER_OPERATOR: usize = 32;

/// What every handler may use.
pub struct AppState {
    pub ingest: Arc<Ingest>,
    /// Limits the HTTP layer enforces before the pipeline sees a body.
    pub ingest_limits: IngestConfig,
    pub registry: Arc<Registry>,
    pub durable: Durable,
    pub hot: Arc<HotStore>,
    pub status: StatusConfig,
    pub commands: Arc<CommandQueue>,
    /// Checks requests signed with a node key.
    pub node_auth: Arc<NodeAuth>,
    pub heartbeats: Arc<Heartbeats>,
    pub events: crate::pipeline::Events,
    /// Long-lived responses (event streams) end when this fires.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Bodies in flight before they are verified, per peer and in total; every body's deadline.
    pub intake: Arc<intake::Intake>,
    /// One permit per batch being verified and stored.
    pub ingest_work: Arc<tokio::sync::Semaphore>,
    /// The open event streams, in all and per operator.
    pub streams: Arc<stream::StreamSlots>,
    /// The dashboard's settings.
    pub ui: crate::config::UiConfig,
    /// Served over TLS: session cookies are marked Secure.
    pub tls: bool,
    /// Signs commands sent from the dashboard (`[ui] signing_key`); none: the form shows the
    /// `fleet send` command instead.
    pub dashboard_key: Option<Arc<crate::command::OperatorKey>>,
    /// `[compat.massaffect]`: when set, the router serves MassAffect's `POST /collect`.
    pub massaffect: Option<crate::config::MassaffectConfig>,
}

/// `Query<T>` whose rejection (an unknown parameter, a wrong type) is a JSON [`ApiError`] like
/// every other refusal.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = error::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| error::ApiError::bad_request(e.body_text()))
    }
}

/// The routes whose unverified bodies may be larger than `intake::UNVERIFIED_DEFAULT_MAX`, with
/// their largest: what `intake` lets in before anyone is verified.
pub fn unverified_routes(config: &crate::config::ControllerConfig) -> Vec<(&'static str, usize)> {
    let mut routes = vec![
        ("/api/v1/ingest", config.ingest.max_body_bytes),
        (commands::AGENT_REPORTS_PATH, commands::REPORTS_BODY_MAX),
    ];
    if let Some(m) = &config.compat.massaffect {
        routes.push((
            massaffect::PATH,
            m.max_body_bytes.unwrap_or(config.ingest.max_body_bytes),
        ));
    }
    routes
}

/// Builds the router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`:
/// ingest checks the peer address against the node's allowlist.
pub fn router(state: Arc<AppState>) -> Router {
    let app = native_router(state.clone());
    let app = match &state.massaffect {
        Some(config) => app.merge(massaffect::router(state.clone(), config)),
        None => app,
    };
    // No body is read before its share is reserved and its deadline set; every answer,
    // refusals of the intake included, carries the security headers.
    with_security_headers(app.layer(axum::middleware::from_fn_with_state(
        state.intake.clone(),
        intake::guard,
    )))
}

/// The dashboard's Content Security Policy, sent on every response of the controller. Pages
/// load their one stylesheet, their one script, sparkline images and live streams from this
/// origin, and nothing else: no inline script or style (every `style=`, `<style>`, inline
/// `<script>` and `on…=` handler is refused by the browser), no plugins, no `<base>`, forms
/// only to this origin, and no framing by any page (clickjacking).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The headers every response carries, whatever route (or refusal, or 404) made it: the CSP,
/// its older twin for framing, no MIME sniffing (a JSON answer or a stored message is never
/// run as a script or a page), and no full URL (with its query: node names, filters) sent to
/// other sites. The JSON API needs no CSP, but one rule for every response is simpler to keep
/// true than a list of routes, and it costs nothing.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
];

/// Adds [`SECURITY_HEADERS`] to every response of `router`: the one place they are set, for
/// the main listener and the watchTower one.
pub fn with_security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(axum::middleware::map_response(add_security_headers))
}

async fn add_security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

fn native_router(state: Arc<AppState>) -> Router {
    let operator = Router::new()
        .route("/api/v1/nodes", get(api::list_nodes))
        .route("/api/v1/nodes/{node}", get(api::get_node))
        .route("/api/v1/nodes/{node}/metrics", get(api::node_metrics))
        .route(
            "/api/v1/nodes/{node}/recent/{collector}",
            get(api::node_recent),
        )
        .route(
            "/api/v1/commands",
            get(commands::list_commands).post(commands::submit),
        )
        .route("/api/v1/commands/wait", post(commands::wait_many))
        .route("/api/v1/commands/{id}", get(commands::get_command))
        .route("/api/v1/commands/{id}/cancel", post(commands::cancel))
        .route("/api/v1/errors", get(commands::errors))
        .route(
            "/api/v1/heartbeats/{service}",
            get(heartbeats::get_one).delete(heartbeats::cancel),
        )
        .route("/api/v1/alerts", get(heartbeats::alerts))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/tokens", get(tokens::list))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    Router::new()
        // No request slots before a body is read (see `intake`): the handlers refuse what the
        // headers allow, then read under the intake's bounds.
        .route("/api/v1/ingest", post(ingest::ingest))
        .route(commands::AGENT_POLL_PATH, get(commands::agent_poll))
        .route(commands::AGENT_REPORTS_PATH, post(commands::agent_reports))
        // Operators (token) and nodes (signed) both pulse and log; reading is for operators
        // (the `Operator` extractor checks it).
        .route(
            heartbeats::HEARTBEATS_PATH,
            get(heartbeats::list).post(heartbeats::pulse),
        )
        .route(
            heartbeats::EVENTS_PATH,
            get(heartbeats::events).post(heartbeats::add_event),
        )
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(operator)
        .merge(ui::router(state.clone()))
        // Bounds the `Bytes` bodies of the command routes. Ingest reads a raw `Body`, which
        // this does not touch, and bounds it itself (with its own message and limit).
        .layer(axum::extract::DefaultBodyLimit::max(commands::BODY_MAX))
        .with_state(state)
}
