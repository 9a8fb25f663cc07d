//! `GET /api/v1/stream?kinds=events,errors,heartbeats&service=&node=&level=&q=`: the event log as
//! Server-Sent Events, for `fleet events --follow` (and the dashboard). Each entry is sent with
//! its id; a client that reconnects with `Last-Event-ID` resumes after it, missing nothing and
//! repeating nothing.
//!
//! The stream reads the store at the client's pace (a client that reads slowly just falls
//! behind in the table), so no client can slow ingest or another client. It must never send an
//! entry out of id order, and never skip an id that may still commit: PostgreSQL hands out ids
//! before commit, so a hole in the ids is held for [`HOLE_WAIT`] before it is taken for a
//! rolled-back write.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::auth::Operator;
use super::error::ApiError;
use super::shares::{Share, Shares};
use super::{ApiQuery, AppState};
use crate::store::events::EventEntry;

/// How often a follower looks for new entries.
const POLL: Duration = Duration::from_millis(250);
/// How long a hole in the ids may be an uncommitted write.
const HOLE_WAIT: Duration = Duration::from_secs(5);
const PAGE: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub kinds: Option<String>,
    pub service: Option<String>,
    pub node: Option<String>,
    pub level: Option<String>,
    pub q: Option<String>,
}

/// What a follower wants to see.
#[derive(Clone, Default)]
pub struct Filter {
    pub events: bool,
    pub errors: bool,
    /// Only heartbeat transitions (down, recovered) among the events.
    pub heartbeats_only: bool,
    pub service: Option<String>,
    pub node: Option<String>,
    pub min_level: i64,
    /// A substring of the message, lower case.
    pub text: Option<String>,
}

impl Filter {
    /// A follower's filter for the entries a store search finds (its category, service,
    /// node, level and text; the time range and paging are the search's own).
    pub fn of_search(search: &crate::store::events::EventQuery) -> Self {
        Self {
            events: search.category == "event",
            errors: search.category == "error",
            heartbeats_only: false,
            service: search.service.clone(),
            node: search.node.clone(),
            min_level: search.min_level.unwrap_or(0),
            text: search.text.as_ref().map(|t| t.to_lowercase()),
        }
    }

    fn wants(&self, entry: &EventEntry, category: &str) -> bool {
        let kind = match category {
            "error" => self.errors,
            _ if self.events => true,
            _ => self.heartbeats_only && entry.fields.get("heartbeat").is_some(),
        };
        kind && entry.level >= self.min_level
            && self
                .service
                .as_ref()
                .is_none_or(|s| entry.service.as_ref() == Some(s))
            && self
                .node
                .as_ref()
                .is_none_or(|n| entry.node.as_ref() == Some(n))
            && self
                .text
                .as_ref()
                .is_none_or(|t| entry.message.to_lowercase().contains(t))
    }
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    operator: Operator,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let kinds = query.kinds.as_deref().unwrap_or("events");
    let mut filter = Filter {
        events: false,
        errors: false,
        heartbeats_only: false,
        service: query.service,
        node: query.node,
        min_level: 0,
        text: query.q.map(|q| q.to_lowercase()),
    };
    if let Some(q) = &filter.text {
        crate::heartbeat::check_search(q)?;
    }
    for kind in kinds.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match kind {
            "events" => filter.events = true,
            "errors" => filter.errors = true,
            "heartbeats" => filter.heartbeats_only = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "kinds: {other:?} is not one of events, errors, heartbeats"
                )));
            }
        }
    }
    if let Some(level) = &query.level {
        filter.min_level = crate::heartbeat::level_filter(level)?;
    }
    let resume = resume_id(&headers)?;
    // Shared per token (config tokens may share a label): keyed by the token's hash.
    let token = super::auth::bearer_token(&headers).unwrap_or_default();
    let hash = crate::pipeline::registry::token_hash(token);
    let permit = stream_permit(&state, &format!("{} ({})", operator.0, &hash[..12]))?;
    let cursor = match resume {
        Some(id) => id,
        None => state.durable.last_event_id().await?,
    };
    // It would never end by itself: the controller's shutdown ends it, or the token's
    // revocation (at once on this controller, at the next registry refresh on others).
    let ended = {
        let shutdown = state.shutdown.clone();
        let registry = state.registry.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = registry.revoked(&hash) => {}
            }
        }
    };
    let follower = Follower::new(state, filter, cursor);
    let events = futures::stream::unfold((follower, permit), |(mut f, permit)| async move {
        let (entry, category) = f.next().await;
        let event = Event::default()
            .id(entry.id.to_string())
            .event(if category == "error" {
                "error"
            } else {
                "event"
            })
            .data(serde_json::to_string(&entry).expect("events serialise"));
        Some((Ok(event), (f, permit)))
    })
    .take_until(ended);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The open live streams: at most [`super::STREAMS_MAX`] in all and
/// [`super::STREAMS_PER_OPERATOR`] per operator (a token, a dashboard user), so one of them
/// cannot take every stream and leave the others none.
pub struct StreamSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_operator: Arc<Shares<String>>,
}

impl Default for StreamSlots {
    fn default() -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(super::STREAMS_MAX)),
            per_operator: Arc::default(),
        }
    }
}

/// One open stream; its slot is free again when this is dropped.
pub struct StreamPermit {
    _operator: Share<String>,
    _total: tokio::sync::OwnedSemaphorePermit,
}

/// A stream slot for `who` (an operator: `Operator`'s or `Viewer`'s name), or a refusal that
/// says when to come back: 429 past the operator's share, 503 when the controller is full.
pub fn stream_permit(state: &Arc<AppState>, who: &str) -> Result<StreamPermit, ApiError> {
    let slots = &state.streams;
    let operator = slots
        .per_operator
        .take(who.to_owned(), 1, super::STREAMS_PER_OPERATOR)
        .map_err(|mine| {
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{who} has {mine} live streams open, the most one operator may; close one (a tab, a `fleet events --follow`) and try again"
                ),
            )
            .retry_after(Duration::from_secs(10))
        })?;
    let total = slots.total.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} live streams are open, the most this controller serves; try again later",
                super::STREAMS_MAX
            ),
        )
        .retry_after(Duration::from_secs(10))
    })?;
    Ok(StreamPermit {
        _operator: operator,
        _total: total,
    })
}

/// The `Last-Event-ID` a reconnecting client sent, as an event id.
pub fn resume_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))
        })
        .transpose()
}

/// Follows the log from a cursor, in id order, at its reader's pace.
pub struct Follower {
    state: Arc<AppState>,
    filter: Filter,
    /// Every id up to this one has been sent or passed over.
    cursor: i64,
    ready: VecDeque<(EventEntry, String)>,
    /// Since when the entry after `cursor` has been missing while later ones exist.
    hole_since: Option<Instant>,
}

impl Follower {
    pub fn new(state: Arc<AppState>, filter: Filter, cursor: i64) -> Self {
        Self {
            state,
            filter,
            cursor,
            ready: VecDeque::new(),
            hole_since: None,
        }
    }

    /// The next entry the filter wants and its category (waiting for one). A store that
    /// cannot be read is retried.
    pub async fn next(&mut self) -> (EventEntry, String) {
        loop {
            if let Some(found) = self.next_ready() {
                return found;
            }
            self.fetch().await;
            if self.ready.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// The next wanted entry already read, if any.
    pub fn next_ready(&mut self) -> Option<(EventEntry, String)> {
        while let Some((entry, category)) = self.ready.pop_front() {
            if self.filter.wants(&entry, &category) {
                return Some((entry, category));
            }
        }
        None
    }

    /// Reads the next page after the cursor; returns how many rows the store gave (a full
    /// [`PAGE`] means the reader is behind).
    pub async fn fetch(&mut self) -> usize {
        match self.state.durable.events_after(self.cursor, PAGE).await {
            Ok(rows) => {
                let n = rows.len();
                self.take(rows);
                n
            }
            Err(err) => {
                tracing::warn!(cause = %format!("{err:#}"), "cannot read events for a follower");
                tokio::time::sleep(POLL * 4).await;
                0
            }
        }
    }

    pub const PAGE: usize = PAGE as usize;

    /// Every id up to this one has been handed out or passed over.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Moves the entries that are certainly in order into `ready`, holding back those after a
    /// hole until the hole is old enough to be a rollback.
    fn take(&mut self, rows: Vec<(EventEntry, String)>) {
        let old = crate::timefmt::now_ms() - HOLE_WAIT.as_millis() as i64;
        for (entry, category) in rows {
            // A hole before an entry written long ago is a rollback (or a crash's sequence
            // jump), not a commit in flight: no need to wait for it.
            if entry.id != self.cursor + 1 && entry.ts_ms > old {
                let since = *self.hole_since.get_or_insert_with(Instant::now);
                if since.elapsed() < HOLE_WAIT {
                    return;
                }
            }
            self.hole_since = None;
            self.cursor = entry.id;
            self.ready.push_back((entry, category));
        }
    }
}
