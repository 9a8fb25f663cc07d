//! The heartbeat monitor: takes pulses (from the API, `fleet pulse`, the watchTower listener,
//! and every batch an agent delivers), stores them in groups, and notices a deadline passing.
//!
//! Exact, not polled: the monitor sleeps until the earliest deadline in the store (woken sooner
//! when a pulse brings an earlier one), then claims what has passed. It looks again at least
//! every [`RESYNC`], which bounds how late it learns of deadlines set by another controller on
//! the same database. Deadlines live only in the store, so a restart loses none: what passed
//! while the controller was down is claimed on its first look.
//!
//! A pulse is acknowledged only once stored. Claims are the store's conditional updates, so a
//! transition is reported once however many controllers watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use serde::Deserialize;

use crate::heartbeat::{AlertRoute, Failure, Owner, Pulse, Signal};
use crate::model::InvalidInput;
use crate::store::Durable;
use crate::store::durable::Fault;
use crate::store::heartbeats::{Cancelled, PulseOutcome, Received, Transition};

/// The monitor looks at the store at least this often.
pub const RESYNC: Duration = Duration::from_secs(1);
/// How long agents get to come back after the controller was away past their deadline: one
/// full retry of the agent's backoff (30 s at most) and some.
const NODE_RESTART_GRACE: Duration = Duration::from_secs(45);
/// Most pulses written in one transaction.
const GROUP_MAX: usize = 2000;
/// Pulses waiting for the writer; past this, callers wait (backpressure, not memory).
const QUEUE: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The heartbeat belongs to someone else.
    #[error("{0}")]
    Forbidden(String),
    #[error("no heartbeat named {0:?}")]
    NotFound(String),
    /// The sender owns as many heartbeats as it may.
    #[error("{0}")]
    TooMany(String),
    /// The store failed; its fault decides the answer (our sentence, never the database's).
    #[error("{}", .0.public_message())]
    Store(Fault),
    #[error("{0}")]
    Unavailable(String),
}

impl HeartbeatError {
    /// The status this refusal is answered with, over HTTP and in NATS replies.
    pub fn status(&self) -> u16 {
        match self {
            HeartbeatError::Invalid(_) => 400,
            HeartbeatError::Forbidden(_) => 403,
            HeartbeatError::NotFound(_) => 404,
            HeartbeatError::TooMany(_) => 429,
            HeartbeatError::Store(fault) => super::fault_status(*fault),
            HeartbeatError::Unavailable(_) => 503,
        }
    }
}

impl From<crate::store::StoreError> for HeartbeatError {
    fn from(err: crate::store::StoreError) -> Self {
        tracing::warn!(cause = %format!("{err:#}"), "a heartbeat request failed in the store");
        HeartbeatError::Store(err.fault())
    }
}

/// The refusal for `by` touching `service`, which `owner` (as stored) owns.
fn not_owner(service: &str, owner: &str) -> HeartbeatError {
    HeartbeatError::Forbidden(format!(
        "the heartbeat {service:?} belongs to {}: only it, or an operator token, may pulse or cancel it; choose another service name",
        Owner::describe(owner)
    ))
}

/// The body of a pulse (`POST /api/v1/heartbeats`, NATS `<prefix>.<node>.Heartbeat`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PulseRequest {
    pub service: String,
    pub next_in: serde_json::Value,
    pub grace: Option<serde_json::Value>,
    pub node: Option<String>,
    pub alert: Option<AlertRoute>,
    /// `success` (the default), `start` or `fail`.
    #[serde(default)]
    pub signal: SignalName,
    /// With `start`: the run is down unless it succeeds or fails within this (seconds or
    /// `"2h"`).
    pub max_runtime: Option<serde_json::Value>,
    /// With `fail`: the run's exit status.
    pub exit_status: Option<i64>,
    /// With `fail`: what it printed; the last 4 KiB are kept.
    pub output: Option<String>,
}

/// A pulse's `signal`, as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalName {
    #[default]
    Success,
    Start,
    Fail,
}

impl PulseRequest {
    /// The signal with what it carries; a field another signal carries is refused, not
    /// ignored (the sender meant something this pulse would not do).
    fn signal(&self) -> Result<Signal, InvalidInput> {
        let only = |field: &str, with: &str| {
            InvalidInput::new(
                field,
                format!(
                    "goes only with \"signal\": \"{with}\" (this pulse's signal is {:?}); remove it or change the signal",
                    self.signal_text()
                ),
            )
        };
        if self.signal != SignalName::Start && self.max_runtime.is_some() {
            return Err(only("max_runtime", "start"));
        }
        if self.signal != SignalName::Fail {
            if self.exit_status.is_some() {
                return Err(only("exit_status", "fail"));
            }
            if self.output.is_some() {
                return Err(only("output", "fail"));
            }
        }
        Ok(match self.signal {
            SignalName::Success => Signal::Success,
            SignalName::Start => Signal::Start {
                max_runtime_ms: self
                    .max_runtime
                    .as_ref()
                    .map(|m| {
                        let ms = crate::heartbeat::span_ms("max_runtime", m)?;
                        if ms <= 0 || ms > crate::heartbeat::limits::NEXT_IN_MAX_MS {
                            return Err(InvalidInput::new(
                                "max_runtime",
                                "must be more than 0 and at most 366 days",
                            ));
                        }
                        Ok(ms)
                    })
                    .transpose()?,
            },
            SignalName::Fail => Signal::Fail(Failure::new(self.exit_status, self.output.clone())),
        })
    }

    fn signal_text(&self) -> &'static str {
        match self.signal {
            SignalName::Success => "success",
            SignalName::Start => "start",
            SignalName::Fail => "fail",
        }
    }
}

/// What the sender of a pulse is answered once it is stored (HTTP and NATS alike).
pub fn pulse_answer(outcome: &PulseOutcome) -> serde_json::Value {
    serde_json::json!({
        "recovered": outcome.recovered,
        "heartbeat": outcome.heartbeat,
    })
}

struct Job {
    pulse: Pulse,
    signal: Signal,
    by: Owner,
    /// When it arrived: its deadline counts from then.
    at_ms: i64,
    /// Who waits for the outcome; nobody for an agent's automatic pulse, which also never
    /// revives a cancelled heartbeat.
    reply: Option<oneshot::Sender<Result<PulseOutcome, HeartbeatError>>>,
}

/// When the monitor plans to look next, and how to make it look sooner.
struct Wake {
    notify: Notify,
    planned_ms: AtomicI64,
}

pub struct Heartbeats {
    queue: mpsc::Sender<Job>,
    durable: Durable,
    /// The spine's rule for when a silent node is down (`status.down_after`).
    down_after: Duration,
    /// When each node's own heartbeat was last queued: an agent's batches are far more frequent
    /// than its deadline needs.
    node_pulses: Mutex<HashMap<String, i64>>,
}

impl Heartbeats {
    /// Starts the writer and the monitor. The monitor stops at `shutdown`; the writer once
    /// every `Heartbeats` is dropped, after storing what was queued. The handle waits for both.
    pub fn start(
        durable: Durable,
        down_after: Duration,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let wake = Arc::new(Wake {
            notify: Notify::new(),
            planned_ms: AtomicI64::new(i64::MAX),
        });
        let (claims, claims_rx) = mpsc::channel(1);
        let writer = tokio::spawn(write_loop(durable.clone(), rx, claims_rx, wake.clone()));
        let monitor = tokio::spawn(monitor_loop(durable.clone(), claims, wake, shutdown));
        let tasks = tokio::spawn(async move {
            let _ = monitor.await;
            let _ = writer.await;
        });
        (
            Arc::new(Self {
                queue,
                durable,
                down_after,
                node_pulses: Mutex::new(HashMap::new()),
            }),
            tasks,
        )
    }

    /// Stores a pulse from `by`; returns once it is durable. Refused when the heartbeat
    /// belongs to someone else.
    pub async fn pulse(&self, pulse: Pulse, by: Owner) -> Result<PulseOutcome, HeartbeatError> {
        self.signal(pulse, Signal::Success, by).await
    }

    /// Stores a pulse with its signal (success, start, fail) from `by`; returns once it is
    /// durable. A fail takes the heartbeat down at once (creating it, down, if it is new); a
    /// start times the run when it says how long it may take.
    pub async fn signal(
        &self,
        pulse: Pulse,
        signal: Signal,
        by: Owner,
    ) -> Result<PulseOutcome, HeartbeatError> {
        pulse.validate()?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                pulse,
                signal,
                by,
                at_ms: crate::timefmt::now_ms(),
                reply: Some(reply),
            })
            .await
            .map_err(|_| shutting_down())?;
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Err(shutting_down()),
        }
    }

    /// A pulse sent by `who` (a node pulses for itself only); answered once stored.
    pub async fn pulse_request(
        &self,
        who: &super::Requester,
        request: PulseRequest,
    ) -> Result<PulseOutcome, HeartbeatError> {
        let signal = request.signal()?;
        let pulse = Pulse {
            service: request.service,
            node: who
                .speaks_for(request.node)
                .map_err(HeartbeatError::Forbidden)?,
            next_in_ms: crate::heartbeat::span_ms("next_in", &request.next_in)?,
            grace_ms: match &request.grace {
                Some(g) => crate::heartbeat::span_ms("grace", g)?,
                None => 0,
            },
            alert: request.alert,
        };
        self.signal(pulse, signal, who.owner()).await
    }

    /// A batch from `node` was stored: its own heartbeat (`node:<name>`) pulses, with the
    /// deadline after which the spine calls a silent node down. Queued, not awaited: ingest
    /// must not wait on it, and the next batch pulses again.
    pub fn node_seen(&self, node: &str, interval_ms: i64, now_ms: i64) {
        // The batch's interval is bounded by its validation (`limits::INTERVAL_MAX_MS`).
        let next_in_ms = crate::model::down_after_ms(interval_ms, self.down_after)
            .min(crate::heartbeat::limits::NEXT_IN_MAX_MS);
        {
            let mut last = self.node_pulses.lock().expect("node pulse lock poisoned");
            // Often enough that the stored deadline stays far ahead of a live node's silence.
            let every = (next_in_ms / 20).max(1000);
            match last.get(node) {
                Some(at) if now_ms - at < every => return,
                _ => {
                    last.insert(node.to_owned(), now_ms);
                }
            }
        }
        let job = Job {
            pulse: Pulse {
                service: crate::heartbeat::node_service(node),
                node: Some(node.to_owned()),
                next_in_ms,
                grace_ms: 0,
                alert: None,
            },
            signal: Signal::Success,
            by: Owner::Node(node.to_owned()),
            at_ms: now_ms,
            reply: None,
        };
        if self.queue.try_send(job).is_err() {
            // Full: the next batch tries again. Forget this one so it does.
            self.node_pulses
                .lock()
                .expect("node pulse lock poisoned")
                .remove(node);
        }
    }

    /// Withdraws a service from watching, if `by` owns it (an operator: any). A node's own
    /// heartbeat is never cancelled this way: it ends with `fleet node remove`, so no password
    /// or token can silence a node's down alerts while it stays enrolled.
    pub async fn cancel(&self, service: &str, by: &Owner) -> Result<(), HeartbeatError> {
        if crate::heartbeat::is_node_service(service) {
            return Err(HeartbeatError::Forbidden(format!(
                "{service:?} is a node's own heartbeat: it ends when the node is removed (`fleet node remove`), never by a cancel"
            )));
        }
        match self
            .durable
            .cancel_heartbeat(service, by, crate::timefmt::now_ms())
            .await?
        {
            Cancelled::Done => Ok(()),
            Cancelled::NotFound => Err(HeartbeatError::NotFound(service.to_owned())),
            Cancelled::NotOwner(owner) => Err(not_owner(service, &owner)),
        }
    }
}

fn shutting_down() -> HeartbeatError {
    HeartbeatError::Unavailable("the controller is shutting down".into())
}

/// The monitor's request to the writer task: claim the deadlines that have passed, and answer
/// when the next one is due.
type ClaimRequest = oneshot::Sender<i64>;

/// Writes queued pulses in groups: whatever arrived while the previous group was committing.
/// The monitor's looks run here too, after what is already queued (a pulse that arrived before
/// its deadline is written before that deadline is judged) and before the next group: on SQLite
/// two writers would take turns through its busy-wait backoff, which made a claim behind a
/// stream of pulse groups up to a second late.
async fn write_loop(
    durable: Durable,
    mut rx: mpsc::Receiver<Job>,
    mut claims: mpsc::Receiver<ClaimRequest>,
    wake: Arc<Wake>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(GROUP_MAX);
    loop {
        let first = tokio::select! {
            biased;
            Some(reply) = claims.recv() => {
                while let Ok(job) = rx.try_recv() {
                    jobs.push(job);
                    if jobs.len() == GROUP_MAX {
                        write_group(&durable, &mut jobs, &wake).await;
                    }
                }
                write_group(&durable, &mut jobs, &wake).await;
                let _ = reply.send(claim_and_plan(&durable, &wake).await);
                continue;
            }
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        jobs.push(first);
        while jobs.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        write_group(&durable, &mut jobs, &wake).await;
    }
}

/// Stores `jobs` (emptying it) and answers each.
async fn write_group(durable: &Durable, jobs: &mut Vec<Job>, wake: &Wake) {
    // One row per service per statement (PostgreSQL refuses to touch a row twice in one
    // upsert), so a service pulsed by two senders in one group is written in two rounds: the
    // second sender's pulse must be judged on its own ownership, not merged into the first's.
    let mut earliest = i64::MAX;
    while !jobs.is_empty() {
        // A round takes a service's jobs while they come from one sender with one signal; the
        // first that differs, and every later one for that service, waits for the next round,
        // so a start and the success after it are stored in the order they came.
        let mut seen: HashMap<(bool, String), (Owner, std::mem::Discriminant<Signal>)> =
            HashMap::new();
        let mut deferred: std::collections::HashSet<(bool, String)> = Default::default();
        let (round, later): (Vec<Job>, Vec<Job>) = jobs.drain(..).partition(|job| {
            let key = (job.reply.is_some(), job.pulse.service.clone());
            let this = (job.by.clone(), std::mem::discriminant(&job.signal));
            if deferred.contains(&key) {
                return false;
            }
            match seen.get(&key) {
                Some(first) if *first == this => true,
                Some(_) => {
                    deferred.insert(key);
                    false
                }
                None => {
                    seen.insert(key, this);
                    true
                }
            }
        });
        *jobs = later;
        earliest = earliest.min(write_round(durable, round).await);
    }
    // Both run in this task, so `planned_ms` is the monitor's latest plan.
    if earliest < wake.planned_ms.load(Ordering::SeqCst) {
        wake.notify.notify_one();
    }
}

/// Stores one round (one sender per service) and answers each job; returns the earliest
/// deadline it wrote.
async fn write_round(durable: &Durable, mut jobs: Vec<Job>) -> i64 {
    // Repeats merge, the latest value of each field winning, and count as many. Rows go in
    // service order, so two controllers' groups lock shared rows in the same order.
    let mut merged: std::collections::BTreeMap<(bool, &str), Received> = Default::default();
    for job in jobs.iter() {
        let key = (job.reply.is_some(), job.pulse.service.as_str());
        match merged.get_mut(&key) {
            Some(r) => {
                let earlier = std::mem::replace(&mut r.pulse, job.pulse.clone());
                r.pulse.node = r.pulse.node.take().or(earlier.node);
                r.pulse.alert = r.pulse.alert.take().or(earlier.alert);
                r.signal = job.signal.clone();
                r.at_ms = r.at_ms.max(job.at_ms);
                r.count += 1;
            }
            None => {
                merged.insert(
                    key,
                    Received {
                        pulse: job.pulse.clone(),
                        by: job.by.clone(),
                        at_ms: job.at_ms,
                        count: 1,
                        signal: job.signal.clone(),
                    },
                );
            }
        }
    }
    let (asked, automatic): (Vec<_>, Vec<_>) =
        merged.into_iter().partition(|((asked, _), _)| *asked);
    let asked: Vec<Received> = asked.into_iter().map(|(_, r)| r).collect();
    let automatic: Vec<Received> = automatic.into_iter().map(|(_, r)| r).collect();
    let now_ms = crate::timefmt::now_ms();
    let mut earliest = i64::MAX;
    if !automatic.is_empty() {
        match durable.pulse(&automatic, now_ms, false).await {
            Ok(results) => {
                earliest = results
                    .stored
                    .iter()
                    .map(|o| o.heartbeat.deadline_ms)
                    .fold(earliest, i64::min);
            }
            Err(err) => {
                tracing::warn!(cause = %format!("{err:#}"), pulses = automatic.len(), "cannot store agents' pulses; their next batches pulse again");
            }
        }
    }
    if asked.is_empty() {
        return earliest;
    }
    // Nodes may own at most PER_NODE_MAX heartbeats: a pulse that would make one more is
    // refused (counted per group, so two controllers may let a few past at once).
    let mut over_quota: HashMap<String, String> = HashMap::new();
    let asked: Vec<Received> = match node_quota(durable, &asked).await {
        Ok(refused) => {
            over_quota = refused;
            asked
                .into_iter()
                .filter(|r| !over_quota.contains_key(&r.pulse.service))
                .collect()
        }
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "cannot count nodes' heartbeats; the quota is not applied to this group");
            asked
        }
    };
    // The database refused one pulse's data, and with it the group's statement: store each
    // alone, so only that one is refused, not its neighbours with it.
    let mut faults: HashMap<&str, Fault> = HashMap::new();
    let written = match durable.pulse(&asked, now_ms, true).await {
        Err(err) if err.is_caused_by_data() && asked.len() > 1 => {
            tracing::warn!(cause = %format!("{err:#}"), pulses = asked.len(), "the store refused a group of pulses; storing them one by one");
            let mut results = crate::store::heartbeats::PulseResults::default();
            for one in &asked {
                match durable.pulse(std::slice::from_ref(one), now_ms, true).await {
                    Ok(alone) => {
                        results.stored.extend(alone.stored);
                        results.refused.extend(alone.refused);
                    }
                    Err(err) => {
                        tracing::warn!(cause = %format!("{err:#}"), service = %one.pulse.service, "the store refused a pulse");
                        faults.insert(one.pulse.service.as_str(), err.fault());
                    }
                }
            }
            Ok(results)
        }
        other => other,
    };
    match written {
        Ok(results) => {
            for o in results.stored.iter().filter(|o| o.recovered) {
                tracing::info!(service = %o.heartbeat.service, "heartbeat recovered");
            }
            earliest = results
                .stored
                .iter()
                .map(|o| o.heartbeat.deadline_ms)
                .fold(earliest, i64::min);
            let by_service: HashMap<&str, &PulseOutcome> = results
                .stored
                .iter()
                .map(|o| (o.heartbeat.service.as_str(), o))
                .collect();
            for r in asked
                .iter()
                .filter(|r| by_service.contains_key(r.pulse.service.as_str()))
            {
                if let Signal::Fail(failure) = &r.signal {
                    tracing::warn!(service = %r.pulse.service, exit_status = ?failure.exit_status, "a run failed: its heartbeat is down");
                }
            }
            let refused: HashMap<&str, &str> = results
                .refused
                .iter()
                .map(|(service, owner)| (service.as_str(), owner.as_str()))
                .collect();
            for job in jobs.drain(..) {
                if let Some(reply) = job.reply {
                    let service = job.pulse.service.as_str();
                    let outcome = match (by_service.get(service), refused.get(service)) {
                        _ if over_quota.contains_key(service) => {
                            Err(HeartbeatError::TooMany(over_quota[service].clone()))
                        }
                        (Some(o), _) => Ok((*o).clone()),
                        (None, Some(owner)) => Err(not_owner(service, owner)),
                        (None, None) => Err(HeartbeatError::Store(
                            faults.get(service).copied().unwrap_or(Fault::Unavailable),
                        )),
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), pulses = asked.len(), "cannot store pulses");
            for job in jobs.drain(..) {
                if let Some(reply) = job.reply {
                    let _ = reply.send(Err(HeartbeatError::Store(err.fault())));
                }
            }
        }
    }
    earliest
}

/// The services of `asked` that would give a node more than
/// [`PER_NODE_MAX`](crate::heartbeat::limits::PER_NODE_MAX) heartbeats, with the refusal.
async fn node_quota(
    durable: &Durable,
    asked: &[Received],
) -> Result<HashMap<String, String>, crate::store::StoreError> {
    let by_nodes: Vec<&Received> = asked
        .iter()
        .filter(|r| matches!(r.by, Owner::Node(_)))
        .collect();
    if by_nodes.is_empty() {
        return Ok(HashMap::new());
    }
    // Only services not watched yet can make one more: count only their owners.
    let services: Vec<&str> = by_nodes.iter().map(|r| r.pulse.service.as_str()).collect();
    let new = durable.unwatched_services(&services).await?;
    let making: Vec<&Received> = by_nodes
        .into_iter()
        .filter(|r| new.contains(&r.pulse.service))
        .collect();
    if making.is_empty() {
        return Ok(HashMap::new());
    }
    let mut owners: Vec<String> = making.iter().map(|r| r.by.stored()).collect();
    owners.sort();
    owners.dedup();
    let mut counts = durable.watched_counts(&owners).await?;
    let max = crate::heartbeat::limits::PER_NODE_MAX as i64;
    let mut refused = HashMap::new();
    for r in making {
        let count = counts.entry(r.by.stored()).or_default();
        if *count >= max {
            refused.insert(
                r.pulse.service.clone(),
                format!(
                    "{} has {max} watched heartbeats, the most a node may; reuse a name, or have an operator cancel ones it no longer needs (DELETE /api/v1/heartbeats/NAME)",
                    Owner::describe(&r.by.stored())
                ),
            );
        } else {
            *count += 1;
        }
    }
    Ok(refused)
}

/// Sleeps until the earliest deadline (or [`RESYNC`]), claims what has passed, and again.
async fn monitor_loop(
    durable: Durable,
    claims: mpsc::Sender<ClaimRequest>,
    wake: Arc<Wake>,
    shutdown: CancellationToken,
) {
    // After an outage of the controller, agents' batches failed, not the agents: give them
    // one retry before their nodes are called down. Other services are judged as they stand:
    // a pulse that did not arrive did not arrive.
    match durable
        .grace_overdue_nodes(
            crate::timefmt::now_ms(),
            NODE_RESTART_GRACE.as_millis() as i64,
        )
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            nodes = n,
            "nodes whose deadline passed while no controller ran get {} s to come back",
            NODE_RESTART_GRACE.as_secs()
        ),
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "cannot give overdue nodes their grace; they may be reported down and up again")
        }
    }
    loop {
        let (reply, answer) = oneshot::channel();
        let until = match claims.send(reply).await {
            Ok(()) => match answer.await {
                Ok(until) => until,
                Err(_) => claim_and_plan(&durable, &wake).await,
            },
            // The writer has stopped (no pulses can come any more): look directly.
            Err(_) => claim_and_plan(&durable, &wake).await,
        };
        let now = crate::timefmt::now_ms();
        let sleep = Duration::from_millis((until - now).max(0) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notify.notified() => {}
        }
    }
}

/// Claims every passed deadline, and plans the next look: at the next deadline, or within
/// [`RESYNC`].
async fn claim_and_plan(durable: &Durable, wake: &Wake) -> i64 {
    let looked = claim(durable).await;
    let now = crate::timefmt::now_ms();
    let until = match looked {
        Ok(Some(next)) => next.min(now + RESYNC.as_millis() as i64),
        Ok(None) => now + RESYNC.as_millis() as i64,
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "cannot check heartbeat deadlines; retrying in 1 s");
            now + 1000
        }
    };
    wake.planned_ms.store(until, Ordering::SeqCst);
    until
}

/// Claims every passed deadline; returns the next one.
async fn claim(durable: &Durable) -> Result<Option<i64>, crate::store::StoreError> {
    let claimed = durable.claim_overdue(crate::timefmt::now_ms()).await?;
    for Transition {
        service, message, ..
    } in &claimed
    {
        tracing::warn!(%service, "{message}");
    }
    durable.next_deadline().await
}
