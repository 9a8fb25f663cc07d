//! The event log, the error log and the heartbeat list as pages: the API's filters, the same
//! store reads, rendered by `pages`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::pages;
use super::session::Viewer;
use crate::store::events::EventQuery;
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

impl LogQuery {
    /// The store's search for these filters: the API's checks ([`event_search`]).
    pub fn search(
        &self,
        category: &'static str,
        limit: i64,
        now: i64,
    ) -> Result<EventQuery, ApiError> {
        event_search(
            EventsQuery {
                service: self.service.clone(),
                node: self.node.clone(),
                level: self.level.clone(),
                from: self.from.clone(),
                to: self.to.clone(),
                q: self.q.clone(),
                limit: Some(limit),
                before: self.before,
            },
            category,
            now,
        )
    }

    /// The filters as typed, as a query string (without `?`): for the live stream and the
    /// next page. Empty fields are left out; so are the paging ids.
    pub fn filter_query(&self) -> String {
        let mut url = reqwest::Url::parse("http://q.invalid/").expect("a literal URL");
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in [
                ("service", &self.service),
                ("node", &self.node),
                ("level", &self.level),
                ("q", &self.q),
                ("from", &self.from),
                ("to", &self.to),
            ] {
                if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                    q.append_pair(k, v);
                }
            }
        }
        url.query().unwrap_or_default().to_owned()
    }
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
    let now = crate::timefmt::now_ms();
    let search = query.search(if errors { "error" } else { "event" }, PAGE, now)?;
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
            &query,
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
