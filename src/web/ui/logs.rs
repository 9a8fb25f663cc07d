//! The event log, the error log and the heartbeat list as pages: the API's filters, the same
//! store reads, rendered by `pages`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::pages;
use super::session::Viewer;
use crate::web::error::ApiError;
use crate::web::heartbeats::{EventsQuery, event_search};
use crate::web::{ApiQuery, AppState};

/// Entries on one page of a log.
const PAGE: i64 = 100;

/// The filters of the event and error logs, for their pages and their live streams (the API's
/// filters, as a form sends them: an empty field means any).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    pub service: Option<String>,
    pub node: Option<String>,
    pub level: Option<String>,
    pub q: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// A page of entries older than this id.
    pub before: Option<i64>,
    /// A live stream starts after this id (the newest its page showed).
    pub after: Option<i64>,
}

/// `GET /events?service=&node=&level=&q=&from=&to=&before=`
pub async fn events(
    state: State<Arc<AppState>>,
    viewer: Viewer,
    query: ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    log_page(state, viewer, query, false).await
}

/// `GET /errors?node=&before=`
pub async fn errors(
    state: State<Arc<AppState>>,
    viewer: Viewer,
    query: ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    log_page(state, viewer, query, true).await
}

async fn log_page(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    ApiQuery(query): ApiQuery<LogQuery>,
    errors: bool,
) -> Result<Response, ApiError> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let filters = pages::EventFilters {
        service: text(&query.service),
        node: text(&query.node),
        level: text(&query.level),
        q: text(&query.q),
        from: text(&query.from),
        to: text(&query.to),
    };
    let now = crate::timefmt::now_ms();
    let search = event_search(
        EventsQuery {
            service: query.service,
            node: query.node,
            level: query.level,
            from: query.from,
            to: query.to,
            q: query.q,
            limit: Some(PAGE),
            before: query.before,
        },
        if errors { "error" } else { "event" },
        now,
    )?;
    // Read before the page's entries: whatever commits after it reaches the page live.
    let latest_id = state.durable.last_event_id().await?;
    let entries = state.durable.events(&search).await?;
    let next_before = (entries.len() as i64 == PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    // A page of older entries has the newest elsewhere: it is not followed live.
    let latest_id = if query.before.is_some() {
        None
    } else {
        Some(latest_id)
    };
    Ok(Html(
        pages::events_page(
            (&viewer.who, &viewer.csrf),
            errors,
            &filters,
            &entries,
            next_before,
            latest_id,
            now,
        )
        .into_string(),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatsQuery {
    after: Option<String>,
}

/// Heartbeats on one page.
const HEARTBEATS_PAGE: i64 = 500;

/// `GET /heartbeats?after=`: by service name, a page at a time.
pub async fn heartbeats(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    ApiQuery(query): ApiQuery<HeartbeatsQuery>,
) -> Result<Response, ApiError> {
    let now = crate::timefmt::now_ms();
    let beats = state
        .durable
        .heartbeats(now, query.after.as_deref(), HEARTBEATS_PAGE)
        .await?;
    let next_after = (beats.len() as i64 == HEARTBEATS_PAGE)
        .then(|| beats.last().map(|h| h.service.as_str()))
        .flatten();
    Ok(Html(
        pages::heartbeats_page((&viewer.who, &viewer.csrf), &beats, next_after, now).into_string(),
    )
    .into_response())
}
