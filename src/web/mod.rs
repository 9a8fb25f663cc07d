//! The HTTP face of the controller: the axum router, its shared state, and the handlers for
//! ingest ([`ingest`]), the read API ([`api`]) and operator auth ([`auth`]).
//!
//! Handlers adapt HTTP to the pipeline and the stores; they hold no rules of their own. Nothing
//! here opens sockets: `modes::controller` binds and serves the router.

pub mod api;
pub mod auth;
pub mod error;
pub mod ingest;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::config::{IngestConfig, StatusConfig};
use crate::pipeline::{Ingest, Registry};
use crate::store::{Durable, HotStore};

/// Most ingest requests handled at once.
pub const INGEST_CONCURRENCY: usize = 256;

/// What every handler may use.
pub struct AppState {
    pub ingest: Ingest,
    /// Limits the HTTP layer enforces before the pipeline sees a body.
    pub ingest_limits: IngestConfig,
    pub registry: Arc<Registry>,
    pub durable: Durable,
    pub hot: Arc<HotStore>,
    pub status: StatusConfig,
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

/// Builds the router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`:
/// ingest checks the peer address against the node's allowlist.
pub fn router(state: Arc<AppState>) -> Router {
    let operator = Router::new()
        .route("/api/v1/nodes", get(api::list_nodes))
        .route("/api/v1/nodes/{node}", get(api::get_node))
        .route("/api/v1/nodes/{node}/metrics", get(api::node_metrics))
        .route(
            "/api/v1/nodes/{node}/recent/{collector}",
            get(api::node_recent),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    Router::new()
        .route(
            "/api/v1/ingest",
            // Each request may hold a 1 MiB body and its 8 MiB inflation: past this many at
            // once, further requests wait their turn instead of growing memory.
            post(ingest::ingest)
                .layer(tower::limit::ConcurrencyLimitLayer::new(INGEST_CONCURRENCY)),
        )
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(operator)
        // The ingest handler bounds its own body; the default 2 MiB cap must not answer first
        // with a different message.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
