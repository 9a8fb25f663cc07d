//! The dashboard's live streams (`/live/…`): Server-Sent Events whose data are rendered HTML
//! fragments for `/ui/live.js` to put in place. Event types:
//!
//! - `replace`: an element whose id is on the page, replaced whole;
//! - `prepend`: `<container id>\n<element>`: put first in the container (or replaced, if an
//!   element with its id is there already, so a resent entry never shows twice);
//! - `reload`: the page is out of date as a whole (nodes came or went, or the client fell too
//!   far behind to be caught up entry by entry).
//!
//! Each stream is computed for its client at the client's pace: nothing is queued for a client
//! that does not read, so a slow client slows neither ingest nor any other client. Each carries
//! an id from which a reconnecting client (`Last-Event-ID`) resumes without losing or repeating
//! entries. Streams never change anything.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::pages;
use super::session::Viewer;
use crate::model::NodeState;
use crate::web::api::NodeSummary;
use crate::web::error::ApiError;
use crate::web::stream::{Filter, Follower, resume_id, stream_permit};
use crate::web::{ApiQuery, AppState};

/// Pages of the log a node stream reads in one look before it calls its client behind.
const NODE_LOG_PAGES: usize = 8;

/// How often the node and command streams look for changes.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// How often the overview looks: it reads every node's status, so less often.
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);

/// HTML for an SSE `data` field: a carriage return (which SSE cannot carry, and axum refuses)
/// becomes its character reference; newlines are split into `data:` lines and joined again by
/// the browser.
fn sse_safe(html: String) -> String {
    if html.contains('\r') {
        html.replace('\r', "&#13;")
    } else {
        html
    }
}

fn replace(html: String) -> Event {
    Event::default().event("replace").data(sse_safe(html))
}

fn prepend(container: &str, html: String) -> Event {
    Event::default()
        .event("prepend")
        .data(sse_safe(format!("{container}\n{html}")))
}

/// The page is out of date as a whole: the stream's last event.
fn reload(why: &str) -> Out {
    Out::Last(Event::default().event("reload").data(why))
}

/// What a stream sends next: an event, or the event after which it ends (a `reload`: the page
/// reconnects when it is made again, and a client that does not reload is not fed the same
/// advice forever).
enum Out {
    More(Event),
    Last(Event),
}

impl From<Event> for Out {
    fn from(event: Event) -> Self {
        Out::More(event)
    }
}

/// Something that yields the next event of a stream when asked.
trait Live: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Out> + Send;
}

/// How often an open stream makes sure its session still stands.
const SESSION_RECHECK: Duration = Duration::from_secs(10);

/// What a stream holds besides its source: its permit, and whose session it serves.
struct Holder {
    _permit: crate::web::stream::StreamPermit,
    state: Arc<AppState>,
    session: String,
    checked: tokio::time::Instant,
}

impl Holder {
    /// Whether the session that opened the stream still stands (not logged out, not
    /// expired); asked again at most every [`SESSION_RECHECK`]. A store that cannot answer
    /// keeps the stream: the next look asks again.
    async fn session_stands(&mut self) -> bool {
        if self.checked.elapsed() < SESSION_RECHECK {
            return true;
        }
        self.checked = tokio::time::Instant::now();
        !matches!(
            self.state
                .durable
                .session(&self.session, crate::timefmt::now_ms())
                .await,
            Ok(None)
        )
    }
}

/// Resolves when a stream of `viewer` must end: at shutdown, or when the operator token the
/// session was opened with is revoked (at once on this controller, at the next registry
/// refresh on others; its session is gone from the store already).
fn ended(state: &Arc<AppState>, viewer: &Viewer) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = state.shutdown.clone();
    let registry = state.registry.clone();
    let token_id = viewer.token_id.clone();
    async move {
        let revoked = async {
            match &token_id {
                Some(id) => registry.revoked_id(id).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = revoked => {}
        }
    }
}

/// Serves `live` to `viewer` as an SSE response that ends at shutdown, when the viewer's
/// session ends (a logout in another tab, expiry), or when its token is revoked, holding one
/// stream permit.
fn serve(state: &Arc<AppState>, viewer: &Viewer, live: impl Live) -> Response {
    let permit = match stream_permit(state, &viewer.who) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let holder = Holder {
        _permit: permit,
        state: state.clone(),
        session: viewer.id_hash().to_owned(),
        checked: tokio::time::Instant::now(),
    };
    let events = futures::stream::unfold(Some((live, holder)), |state| async move {
        let (mut live, mut holder) = state?;
        let out = live.next().await;
        if !holder.session_stands().await {
            return None;
        }
        match out {
            Out::More(event) => Some((Ok::<Event, Infallible>(event), Some((live, holder)))),
            Out::Last(event) => Some((Ok(event), None)),
        }
    })
    .take_until(ended(state, viewer));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

// ---- the overview ----------------------------------------------------------------------------

/// `GET /live/overview`: the overview's rows and counts as they change (`replace`); `reload`
/// when nodes came or went.
pub async fn overview(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<super::OverviewQuery>,
) -> Response {
    let filters = match super::filters_of(&query) {
        Ok(f) => f,
        Err(refused) => return refused.into_response(),
    };
    serve(
        &state.clone(),
        &viewer,
        LiveOverview {
            state,
            filters,
            // A browser that reconnects (it sends the last id it saw) may have missed changes
            // while away: it gets every row again. A first connection starts from the page it
            // was just rendered with.
            sent: None,
            resend: headers.contains_key("last-event-id"),
            rendered: query.rendered,
            page_rows: query.rows.clone(),
            pending: VecDeque::new(),
        },
    )
}

/// What a live overview last sent: each row's data and the counts, as rendered.
type Sent = (BTreeMap<String, RowKey>, String);

/// The parts of a row that change it.
type RowKey = (NodeState, Option<i64>, Option<crate::model::Vitals>);

struct LiveOverview {
    state: Arc<AppState>,
    filters: pages::Filters,
    sent: Option<Sent>,
    /// Send every row on the first look (a reconnecting page), instead of starting from it.
    resend: bool,
    /// When the page was made: the first look sends the rows that changed since.
    rendered: Option<i64>,
    /// The digest of the page's row names ([`pages::rows_digest`]).
    page_rows: Option<String>,
    pending: VecDeque<Out>,
}

/// Whether a row may have changed since a page showed it at `rendered`: new data came, or
/// time alone moved its status (up → stale → down).
fn changed_since(status: &crate::config::StatusConfig, n: &NodeSummary, rendered: i64) -> bool {
    let interval_ms = n.interval_seconds.map_or(0, |s| (s * 1000.0) as i64);
    let then = NodeState::of(
        n.last_seen_ms,
        interval_ms,
        rendered,
        status.stale_after,
        status.down_after,
    );
    n.last_seen_ms.is_some_and(|seen| seen > rendered) || then != n.status
}

impl Live for LiveOverview {
    async fn next(&mut self) -> Out {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if self.sent.is_some() {
                tokio::time::sleep(OVERVIEW_EVERY).await;
            }
            let Ok((shown, total, counts)) = super::overview_data(&self.state, &self.filters).await
            else {
                // The store is away for a moment: try again next time.
                tokio::time::sleep(OVERVIEW_EVERY).await;
                continue;
            };
            let now = crate::timefmt::now_ms();
            let rows: BTreeMap<String, RowKey> = shown
                .iter()
                .map(|n| (n.name.clone(), (n.status, n.last_seen_ms, n.vitals.clone())))
                .collect();
            let counts_html = pages::counts_block(&shown, total, &counts).into_string();
            let id = now.to_string();
            let row = |n: &NodeSummary| {
                replace(pages::node_row(n, now).into_string())
                    .id(&id)
                    .into()
            };
            match self.sent.take() {
                // A first connection: what changed since the page was made, and the counts.
                None if !std::mem::take(&mut self.resend) => {
                    // The page's rows are not these rows (a node came into the status filter
                    // or went out of it since): the page is made again.
                    if self
                        .page_rows
                        .as_ref()
                        .is_some_and(|digest| *digest != pages::rows_digest(rows.keys()))
                    {
                        self.pending.push_back(reload("nodes changed"));
                        self.sent = Some((rows, counts_html));
                        continue;
                    }
                    if let Some(rendered) = self.rendered {
                        self.pending.extend(
                            shown
                                .iter()
                                .filter(|n| changed_since(&self.state.status, n, rendered))
                                .map(row),
                        );
                        self.pending
                            .push_back(replace(counts_html.clone()).id(&id).into());
                    }
                }
                // A reconnecting page may have missed anything: everything again.
                None => {
                    self.pending.extend(shown.iter().map(row));
                    self.pending
                        .push_back(replace(counts_html.clone()).id(&id).into());
                }
                Some((old_rows, _)) if !old_rows.keys().eq(rows.keys()) => {
                    self.pending.push_back(reload("nodes changed"));
                }
                Some((old_rows, old_counts)) => {
                    self.pending.extend(
                        shown
                            .iter()
                            .filter(|n| old_rows.get(&n.name) != rows.get(&n.name))
                            .map(row),
                    );
                    if old_counts != counts_html {
                        self.pending
                            .push_back(replace(counts_html.clone()).id(&id).into());
                    }
                }
            }
            self.sent = Some((rows, counts_html));
        }
    }
}

// ---- the event and error logs ----------------------------------------------------------------

/// `GET /live/events?service=&node=&level=&q=&after=`: new entries of the event log that pass
/// the page's filters, prepended (`#events`), in id order. Resumes after `Last-Event-ID`.
pub async fn events(
    state: State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    query: ApiQuery<super::logs::LogQuery>,
) -> Response {
    log(state, viewer, headers, query, false).await
}

/// `GET /live/errors?node=&after=`: the same for the error log.
pub async fn errors(
    state: State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    query: ApiQuery<super::logs::LogQuery>,
) -> Response {
    log(state, viewer, headers, query, true).await
}

async fn log(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<super::logs::LogQuery>,
    errors: bool,
) -> Response {
    let category = if errors { "error" } else { "event" };
    let filter = match query.search(category, 1, crate::timefmt::now_ms()) {
        Ok(search) => Filter::of_search(&search),
        Err(refused) => return refused.into_response(),
    };
    let cursor = match resume_id(&headers) {
        Ok(Some(id)) => id,
        Ok(None) => match start_after(&state, query.after).await {
            Ok(id) => id,
            Err(refused) => return refused.into_response(),
        },
        Err(refused) => return refused.into_response(),
    };
    // A page from a start time still takes what is new; one up to a time (`to`) or of older
    // entries (`before`) has no live stream.
    serve(
        &state.clone(),
        &viewer,
        LiveLog {
            follower: Follower::new(state, filter, cursor),
            container: "events",
            queue: VecDeque::new(),
        },
    )
}

/// Where a first connection starts in the log: after `after` (the newest id its page
/// showed), or, without one, after the newest there is.
async fn start_after(state: &AppState, after: Option<i64>) -> Result<i64, ApiError> {
    match after {
        Some(a) if a >= 0 => Ok(a),
        Some(_) => Err(ApiError::bad_request("after: an event id")),
        None => Ok(state.durable.last_event_id().await?),
    }
}

struct LiveLog {
    follower: Follower,
    container: &'static str,
    /// Wanted entries read and not yet sent, oldest first.
    queue: VecDeque<crate::store::events::EventEntry>,
}

/// Reads the log after the follower's cursor, up to `pages` pages, into `queue` (what the
/// filter wants). Returns false when the client is a page or more of wanted entries behind,
/// or the log had more than `pages` pages for it: the page is better made again than fed row
/// by row.
async fn catch_up(
    follower: &mut Follower,
    queue: &mut VecDeque<crate::store::events::EventEntry>,
    pages: usize,
) -> bool {
    for _ in 0..pages {
        let read = follower.fetch().await;
        while let Some((entry, _)) = follower.next_ready() {
            queue.push_back(entry);
        }
        if queue.len() >= Follower::PAGE {
            return false;
        }
        if read < Follower::PAGE {
            return true;
        }
    }
    false
}

impl Live for LiveLog {
    async fn next(&mut self) -> Out {
        loop {
            if let Some(entry) = self.queue.pop_front() {
                let now = crate::timefmt::now_ms();
                return prepend(self.container, pages::event_row(&entry, now).into_string())
                    .id(entry.id.to_string())
                    .into();
            }
            if !catch_up(&mut self.follower, &mut self.queue, NODE_LOG_PAGES).await {
                return reload("too far behind");
            }
            if self.queue.is_empty() {
                // Nothing new, or what is new waits behind a hole in the ids.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

// ---- a node ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLiveQuery {
    /// The newest event id the page showed.
    after: Option<i64>,
    /// The newest record of each collector the page showed (`<collector>:<seq> …`).
    tail: Option<String>,
    /// Only this collector's records (the page's collector filter).
    collector: Option<String>,
    /// The page's chart range, vhost and log filter: the sections sent are drawn with them.
    range: Option<String>,
    vhost: Option<String>,
    lines: Option<String>,
}

/// Where a node's stream is: the event cursor and, per collector, the ring sequence number of
/// the newest record sent (`TailEntry::seq`). As the SSE id: `<event id> <collector>:<seq> …`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeCursor {
    pub event: i64,
    pub tail: BTreeMap<String, u64>,
}

impl NodeCursor {
    pub fn encode(&self) -> String {
        let mut out = self.event.to_string();
        for (collector, seq) in &self.tail {
            out.push(' ');
            out.push_str(collector);
            out.push(':');
            out.push_str(&seq.to_string());
        }
        out
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let event = parts.next()?.parse().ok().filter(|id: &i64| *id >= 0)?;
        let mut tail = BTreeMap::new();
        for part in parts {
            let (collector, seq) = part.rsplit_once(':')?;
            crate::model::check_collector_name("collector", collector).ok()?;
            tail.insert(collector.to_owned(), seq.parse().ok()?);
            if tail.len() > super::node::TAIL_COLLECTORS_MAX {
                return None;
            }
        }
        Some(Self { event, tail })
    }
}

/// The order new tail records are sent in: by time across collectors (a tick's records read
/// oldest first), but each collector's in ring order, because a reconnect resumes a collector
/// after the highest `seq` sent: a record sent after one with a higher `seq` (a time ahead of
/// the others') would be skipped by it.
fn in_sending_order(entries: Vec<super::node::TailEntry>) -> Vec<super::node::TailEntry> {
    let mut per_collector: BTreeMap<String, VecDeque<super::node::TailEntry>> = BTreeMap::new();
    for entry in entries {
        per_collector
            .entry(entry.collector.clone())
            .or_default()
            .push_back(entry);
    }
    for queue in per_collector.values_mut() {
        queue.make_contiguous().sort_by_key(|e| e.seq);
    }
    let mut out = Vec::new();
    while let Some(queue) = per_collector
        .values_mut()
        .filter(|q| !q.is_empty())
        .min_by_key(|q| (q[0].ts_ms, q[0].seq))
    {
        out.extend(queue.pop_front());
    }
    out
}

/// `GET /live/nodes/{node}?after=`: the node's vitals (`replace` `#vitals`), new records from
/// the hot ring (`prepend` into `#tail`) and its new events (`prepend` into `#events`).
pub async fn node(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<NodeLiveQuery>,
) -> Response {
    if let Err(e) = crate::model::NodeName::parse(&name) {
        return ApiError::bad_request(e.to_string()).into_response();
    }
    let view = match (|| {
        Ok::<_, ApiError>(super::sections::View {
            range: super::node::Range::parse(query.range.as_deref())?,
            vhost: super::node::filter_text("vhost", query.vhost.clone())?,
            lines: super::node::filter_text("lines", query.lines.clone())?,
        })
    })() {
        Ok(view) => view,
        Err(refused) => return refused.into_response(),
    };
    let only = match super::node::collector_filter(query.collector) {
        Ok(only) => only,
        Err(refused) => return refused.into_response(),
    };
    let resumed = match headers.get("last-event-id") {
        Some(v) => match v.to_str().ok().and_then(NodeCursor::decode) {
            Some(c) => Some(c),
            None => {
                return ApiError::bad_request("Last-Event-ID is not one this stream sent")
                    .into_response();
            }
        },
        None => None,
    };
    let cursor = match resumed {
        Some(c) => c,
        None => {
            // A first connection starts from what the page showed: the events up to `after`,
            // the records up to `tail`, so whatever was stored while the page loaded still
            // arrives.
            let event = match start_after(&state, query.after).await {
                Ok(id) => id,
                Err(refused) => return refused.into_response(),
            };
            let tail = match query.tail.as_deref().map(str::trim) {
                None | Some("") => BTreeMap::new(),
                Some(text) => match NodeCursor::decode(&format!("{event} {text}")) {
                    Some(c) => c.tail,
                    None => {
                        return ApiError::bad_request(
                            "tail: collector:seq pairs, as the page gives",
                        )
                        .into_response();
                    }
                },
            };
            NodeCursor { event, tail }
        }
    };
    let filter = Filter {
        events: true,
        node: Some(name.clone()),
        ..Default::default()
    };
    serve(
        &state.clone(),
        &viewer,
        LiveNode {
            follower: Follower::new(state.clone(), filter, cursor.event),
            state,
            name,
            only,
            view,
            interval_ms: 10_000,
            cursor,
            vitals: None,
            pending: VecDeque::new(),
            looked: false,
        },
    )
}

struct LiveNode {
    state: Arc<AppState>,
    follower: Follower,
    name: String,
    /// Only this collector's records in the tail.
    only: Option<String>,
    /// What the page's sections show: they are drawn again with it as new records arrive.
    view: super::sections::View,
    /// The node's reporting interval, as last read.
    interval_ms: i64,
    cursor: NodeCursor,
    /// What the vitals block showed as last sent.
    vitals: Option<RowKey>,
    pending: VecDeque<Out>,
    looked: bool,
}

impl LiveNode {
    /// One look at everything: fills `pending`.
    async fn look(&mut self) {
        let now = crate::timefmt::now_ms();
        // The vitals and status.
        if let Ok(summary) = crate::web::api::node_summary(&self.state, &self.name).await {
            let key = (summary.status, summary.last_seen_ms, summary.vitals.clone());
            // The first look sends them too: the page may be older than this stream (it
            // reconnected, or a batch landed while it loaded), and a replace is harmless.
            if self.vitals.as_ref() != Some(&key) {
                self.pending
                    .push_back(replace(pages::node_vitals(&summary, now).into_string()).into());
            }
            self.vitals = Some(key);
            if let Some(seconds) = summary.interval_seconds {
                self.interval_ms = (seconds * 1000.0) as i64;
            }
        }
        // New records, oldest first so the newest ends up on top. A burst of more records
        // than one read holds shows its newest: the tail is a view of the ring, the store
        // keeps them all. Every collector is read, whatever the tail's filter: the sections
        // its records feed are drawn again.
        let mut read = super::node::tail(&self.state, &self.name, None).await;
        if let (Ok(entries), Some(only)) = (&mut read, self.only.as_deref())
            && !entries.iter().any(|e| e.collector == only)
            && let Ok(more) = super::node::tail(&self.state, &self.name, Some(only)).await
        {
            entries.extend(more);
        }
        if let Ok(entries) = read {
            // Collectors gone from the ring leave the cursor, so it stays one a reconnect
            // can send back.
            self.cursor
                .tail
                .retain(|c, _| entries.iter().any(|e| &e.collector == c));
            let fresh: Vec<_> = entries
                .into_iter()
                .filter(|e| {
                    self.cursor
                        .tail
                        .get(&e.collector)
                        .is_none_or(|seen| e.seq > *seen)
                })
                .collect();
            let fed: std::collections::BTreeSet<super::sections::Section> = fresh
                .iter()
                .flat_map(|e| super::sections::Section::fed_by(&e.collector))
                .copied()
                .collect();
            for entry in in_sending_order(fresh) {
                let newest = self.cursor.tail.entry(entry.collector.clone()).or_default();
                *newest = (*newest).max(entry.seq);
                if self.only.as_ref().is_some_and(|o| *o != entry.collector) {
                    continue;
                }
                self.pending.push_back(
                    prepend("tail", pages::tail_row(&entry, now).into_string())
                        .id(self.cursor.encode())
                        .into(),
                );
            }
            // The sections these records feed, drawn again as a reload would draw them. A
            // section that cannot be read now stays as it was; the next record tries again.
            if !fed.is_empty()
                && let Ok(sections) = super::sections::sections(
                    &self.state,
                    &self.name,
                    &self.view,
                    self.interval_ms,
                    now,
                    &fed,
                )
                .await
            {
                for (_, html) in sections {
                    self.pending.push_back(replace(html.into_string()).into());
                }
            }
        }
        // The node's new events. The follower reads the whole log (the node filter is
        // applied after): a busy fleet fills several pages a second before this node is
        // behind.
        let mut queue = VecDeque::new();
        if !catch_up(&mut self.follower, &mut queue, NODE_LOG_PAGES).await {
            self.pending.push_back(reload("too far behind"));
            return;
        }
        for entry in queue {
            self.cursor.event = entry.id;
            self.pending.push_back(
                prepend("events", pages::event_row(&entry, now).into_string())
                    .id(self.cursor.encode())
                    .into(),
            );
        }
        // Every id the follower passed over is behind this stream too: the ids of the events
        // sent from now on say so, and a reconnect does not read the others' events again.
        self.cursor.event = self.follower.cursor();
    }
}

impl Live for LiveNode {
    async fn next(&mut self) -> Out {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if self.looked {
                tokio::time::sleep(LIVE_EVERY).await;
            }
            self.looked = true;
            self.look().await;
        }
    }
}

// ---- commands --------------------------------------------------------------------------------

/// Commands the live history follows: the newest this many.
const COMMANDS_FOLLOWED: i64 = 50;

/// `GET /live/commands`: the newest commands as they are sent (`prepend` into `#commands`) and
/// as their state changes (`replace`). Every connection, new or resumed, first gets them all
/// (each replaces its own row, so none shows twice).
pub async fn commands(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    ApiQuery(query): ApiQuery<CommandsLiveQuery>,
) -> Response {
    let filter = match super::commands::HistoryFilter::parse(query.node, query.state) {
        Ok(f) => f,
        Err(refused) => return refused.into_response(),
    };
    serve(
        &state.clone(),
        &viewer,
        LiveCommands {
            state,
            filter,
            sent: None,
            pending: VecDeque::new(),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsLiveQuery {
    node: Option<String>,
    state: Option<String>,
}

struct LiveCommands {
    state: Arc<AppState>,
    filter: super::commands::HistoryFilter,
    /// Each followed command's state and attempts as last sent.
    sent: Option<HashMap<String, (crate::command::CommandState, i64)>>,
    pending: VecDeque<Out>,
}

impl Live for LiveCommands {
    async fn next(&mut self) -> Out {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if self.sent.is_some() {
                tokio::time::sleep(LIVE_EVERY).await;
            }
            let Ok(states) = self
                .filter
                .newest_states(&self.state, COMMANDS_FOLLOWED)
                .await
            else {
                tokio::time::sleep(LIVE_EVERY).await;
                continue;
            };
            let current: HashMap<String, (crate::command::CommandState, i64)> = states
                .iter()
                .map(|(id, state, attempts)| (id.clone(), (*state, *attempts)))
                .collect();
            // The first look (a new page or a reconnecting one) sends every row: a row the
            // page has replaces itself in place, one it lacks (sent meanwhile) goes on top.
            let previous = self.sent.take().unwrap_or_default();
            let changed: Vec<String> = states
                .iter()
                .filter(|(id, state, attempts)| previous.get(id) != Some(&(*state, *attempts)))
                .map(|(id, _, _)| id.clone())
                // A command that left a filtered view (a queued one that ran) is sent once
                // more, in its new state, instead of staying as it was.
                .chain(
                    previous
                        .keys()
                        .filter(|id| !current.contains_key(*id))
                        .cloned(),
                )
                .collect();
            if changed.is_empty() {
                self.sent = Some(current);
                continue;
            }
            let Ok(mut records) = self.state.durable.commands_by_ids(&changed).await else {
                // Looked at again next time: nothing is marked sent.
                self.sent = Some(previous);
                tokio::time::sleep(LIVE_EVERY).await;
                continue;
            };
            // Oldest first (ids sort by time), so the newest ends up on top.
            records.sort_by(|a, b| a.id.cmp(&b.id));
            let now = crate::timefmt::now_ms();
            let id = now.to_string();
            for c in &records {
                let html = pages::command_row(c, now).into_string();
                let event = if previous.contains_key(&c.id) {
                    replace(html)
                } else {
                    prepend("commands", html)
                };
                self.pending.push_back(event.id(&id).into());
            }
            self.sent = Some(current);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_cursor_reads_back_what_it_wrote() {
        let cursor = NodeCursor {
            event: 42,
            tail: [
                ("system".to_owned(), 1_700_000_000_000_000),
                ("app.web-1".to_owned(), 5),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(cursor.encode(), "42 app.web-1:5 system:1700000000000000");
        assert_eq!(NodeCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(
            NodeCursor::decode("7"),
            Some(NodeCursor {
                event: 7,
                tail: BTreeMap::new()
            })
        );
        for bad in [
            "",
            "x",
            "-1",
            "3 system",
            "3 sys tem:1",
            "3 <b>:1",
            "3 system:x",
            "3 system:1.2",
            "3 system:-1",
        ] {
            assert_eq!(NodeCursor::decode(bad), None, "{bad:?}");
        }
    }
}
