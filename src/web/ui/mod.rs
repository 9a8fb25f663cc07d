//! The dashboard: server-rendered pages (maud) for operators, behind a login. `session` says
//! who is looking and guards forms; `pages` renders. Handlers here gather what a page shows
//! from the stores and the registry; they hold no rules of their own, and never put a value
//! into the markup except through maud (which escapes it).

pub mod chart;
pub mod commands;
pub mod live;
pub mod logs;
pub mod node;
pub mod pages;
pub mod sections;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::error::ApiError;
use super::{ApiQuery, AppState};
use crate::model::NodeState;
use crate::web::api::NodeSummary;
use session::Viewer;

/// The dashboard's routes, behind the address allowlist.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    if !state.ui.users.is_empty() {
        session::prepare();
    }
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/nodes/{node}", get(node::node_page))
        .route("/events", get(logs::events))
        .route("/errors", get(logs::errors))
        .route("/heartbeats", get(logs::heartbeats))
        .route("/commands", get(commands::page))
        .route("/commands/confirm", post(commands::confirm))
        .route("/commands/send", post(commands::send))
        .route("/ui/app.css", get(css))
        .route("/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route("/ui/live.js", get(script))
        .route("/ui/spark/{node}/{metric}", get(node::sparkline))
        .route("/live/overview", get(live::overview))
        .route("/live/events", get(live::events))
        .route("/live/errors", get(live::errors))
        .route("/live/nodes/{node}", get(live::node))
        .route("/live/commands", get(live::commands))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            session::allowlist,
        ))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::CSS,
    )
}

async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        pages::FAVICON,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::LIVE_JS,
    )
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path on this site: never `//host` or a full URL, which would make the login page an
/// open redirect.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from a Location, so `/\t/evil` would become
        // `//evil`: no control characters or spaces either.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

async fn login_page(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<NextQuery>,
) -> Html<String> {
    Html(
        pages::login(
            &safe_next(query.next.as_deref()),
            None,
            !state.ui.users.is_empty(),
        )
        .into_string(),
    )
}

/// The login form: an operator token, or (when `[ui] users` lists any) a name and password.
#[derive(Deserialize)]
pub struct LoginForm {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

/// Longest token, name or password the login form reads.
const LOGIN_FIELD_MAX: usize = 1024;

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(refused) = session::same_origin(&headers) {
        return refused.into_response();
    }
    let next = safe_next(form.next.as_deref());
    let users = !state.ui.users.is_empty();
    let page = |status: StatusCode, problem: &str| {
        (
            status,
            Html(pages::login(&next, Some(problem), users).into_string()),
        )
            .into_response()
    };
    let refuse = |problem: &str| page(StatusCode::UNAUTHORIZED, problem);
    let too_long = [&form.token, &form.user, &form.password]
        .iter()
        .any(|f| f.as_ref().is_some_and(|v| v.len() > LOGIN_FIELD_MAX));
    if too_long {
        return refuse("That is longer than any token or password.");
    }
    let (outcome, wrong) = match (form.token.as_deref().map(str::trim), form.user.as_deref()) {
        (Some(token), _) if !token.is_empty() => (
            session::login_with_token(&state, peer.ip(), token).await,
            "That token is not valid.",
        ),
        (_, Some(user)) if users && !user.trim().is_empty() => {
            let password = form.password.as_deref().unwrap_or_default();
            (
                session::login_with_password(&state, peer.ip(), user.trim(), password).await,
                "That name and password do not match.",
            )
        }
        _ if users => return refuse("Give an operator token, or a name and password."),
        _ => return refuse("That token is not valid."),
    };
    let (who, token_id) = match outcome {
        Ok(session::LoginOutcome::Allowed(who, token_id)) => (who, token_id),
        Ok(session::LoginOutcome::Wrong) => return refuse(wrong),
        Ok(session::LoginOutcome::Wait(seconds)) => {
            let mut refused = page(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed logins; try again in {seconds} s."),
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return refused;
        }
        Ok(session::LoginOutcome::Busy) => {
            let mut busy = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many logins are being checked at once; try again in a few seconds.",
            );
            busy.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return busy;
        }
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), "the login limits cannot be read or written");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Logins cannot be checked right now (the controller cannot reach its database); try again shortly.",
            );
        }
    };
    let id = session::random_token();
    let now = crate::timefmt::now_ms();
    let ttl = state.ui.session_ttl;
    let stored = crate::store::sessions::Session {
        who,
        csrf: session::random_token(),
        expires_at_ms: now + ttl.as_millis() as i64,
        token_id,
    };
    if let Err(err) = state
        .durable
        .create_session(&session::hash_id(&id), &stored, now)
        .await
    {
        return ApiError::from(err).into_response();
    }
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(Some(&id), ttl.as_secs(), state.tls),
        )],
        Redirect::to(&next),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = viewer.check_form(&headers, form.csrf.as_deref()) {
        return refused.into_response();
    }
    if let Err(err) = state.durable.delete_session(viewer.id_hash()).await {
        return ApiError::from(err).into_response();
    }
    (
        [(header::SET_COOKIE, session::set_cookie(None, 0, state.tls))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    status: Option<String>,
    label: Option<String>,
    /// When the page the live stream follows was made (ms): the stream's first look sends
    /// what changed since.
    rendered: Option<i64>,
    /// The digest of the page's rows: a first look that finds other rows reloads the page.
    rows: Option<String>,
}

/// The overview's filters from its query string.
pub(super) fn filters_of(query: &OverviewQuery) -> Result<pages::Filters, ApiError> {
    let mut filters = pages::Filters::default();
    match query.status.as_deref() {
        None | Some("") => {}
        Some(word) => match [NodeState::Up, NodeState::Stale, NodeState::Down]
            .into_iter()
            .find(|s| pages::state_word(*s) == word)
        {
            Some(s) => filters.status = Some(s),
            None => {
                return Err(ApiError::bad_request("status: one of up, stale, down"));
            }
        },
    }
    match query.label.as_deref().map(str::trim) {
        None | Some("") => {}
        Some(text) => match crate::model::parse_label(text) {
            Ok(pair) => filters.label = Some(pair),
            Err(err) => {
                return Err(ApiError::bad_request(format!("label: {err}")));
            }
        },
    }
    Ok(filters)
}

/// What the overview shows: the nodes that pass the filters, how many there are in all, the
/// counts.
pub(super) async fn overview_data(
    state: &AppState,
    filters: &pages::Filters,
) -> Result<(Vec<NodeSummary>, usize, pages::Counts), ApiError> {
    let all = super::api::node_summaries(state).await?;
    let since = crate::timefmt::now_ms() - 24 * 3600 * 1000;
    let counts = match (
        state.durable.down_heartbeats().await,
        state.durable.failed_commands_since(since).await,
    ) {
        (Ok(down_heartbeats), Ok(failed_commands)) => pages::Counts {
            down_heartbeats,
            failed_commands,
        },
        (Err(err), _) | (_, Err(err)) => return Err(err.into()),
    };
    let total = all.len();
    let shown = all
        .into_iter()
        .filter(|n| filters.passes(n, n.status))
        .collect();
    Ok((shown, total, counts))
}

async fn overview(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    ApiQuery(query): ApiQuery<OverviewQuery>,
) -> Response {
    let filters = match filters_of(&query) {
        Ok(f) => f,
        Err(refused) => return refused.into_response(),
    };
    let (shown, total, counts) = match overview_data(&state, &filters).await {
        Ok(data) => data,
        Err(failed) => return failed.into_response(),
    };
    Html(
        pages::overview(
            (&viewer.who, &viewer.csrf),
            &shown,
            total,
            &counts,
            &filters,
            crate::timefmt::now_ms(),
        )
        .into_string(),
    )
    .into_response()
}
