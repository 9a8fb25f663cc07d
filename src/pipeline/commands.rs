//! The one path commands take through the controller: submit (check, store durably, wake the
//! node's poll or put it on the NATS stream) → deliver → reports from the node → final state,
//! with a sweeper for deadlines (redelivery, time-outs, TTL expiry).
//!
//! Every way in (the REST API, `fleet send --nats-url` seen on the stream, the dashboard later)
//! calls [`CommandQueue::submit`] or [`CommandQueue::record_seen`]; every report (HTTP or NATS)
//! goes through [`CommandQueue::report`]. The queue knows nothing of HTTP. It does not decide
//! what a node may run: the node does (`executor::policy`); the controller checks only the
//! shape, that the signature is sound, and that the node exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::command::{self, CENTRAL, Command, CommandReport, CommandResult, CommandState, Method};
use crate::config::CommandQueueConfig;
use crate::pipeline::node_auth::NodeAuthError;
use crate::pipeline::registry::Registry;
use crate::store::commands::{Applied, CommandRecord, NewCommand};
use crate::store::events::NewEvent;
use crate::store::{Durable, StoreError};

/// Why a submission or an agent request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The store failed; its [`crate::store::durable::Fault`] decides the answer, and only our
    /// sentence is shown (the database's text is for the log).
    #[error("{}", .0.public_message())]
    Store(#[from] StoreError),
}

/// Something that puts stored commands where nodes fetch them: the NATS stream. The HTTP bus
/// needs none (agents poll the store).
pub trait Dispatch: Send + Sync {
    /// Publishes commands durably; returns the ids the broker acknowledged.
    fn publish<'a>(
        &'a self,
        commands: &'a [Command],
    ) -> futures::future::BoxFuture<'a, Vec<String>>;
}

pub use crate::command::Submission;
pub use crate::store::commands::ApplyOutcome;

/// How often a held poll looks at a shared (PostgreSQL) queue for commands another controller
/// stored.
const SHARED_RECHECK: Duration = Duration::from_secs(2);

pub struct CommandQueue {
    durable: Durable,
    registry: Arc<Registry>,
    config: CommandQueueConfig,
    /// Node → wakes its pending long-poll when a command for it is stored.
    polls: Mutex<HashMap<String, Arc<Notify>>>,
    /// Ids whose state changed, for waiting senders.
    changes: broadcast::Sender<String>,
    dispatch: Option<Arc<dyn Dispatch>>,
    /// Ends held polls and waits when the controller stops, so shutdown need not wait them out.
    shutdown: CancellationToken,
}

impl From<NodeAuthError> for CommandError {
    fn from(e: NodeAuthError) -> Self {
        match e {
            NodeAuthError::Unavailable(e) => CommandError::Store(e),
            e => match e.status() {
                400 => CommandError::BadRequest(e.to_string()),
                403 => CommandError::Forbidden(e.to_string()),
                _ => CommandError::Unauthorized(e.to_string()),
            },
        }
    }
}

impl CommandQueue {
    pub fn new(
        durable: Durable,
        registry: Arc<Registry>,
        config: CommandQueueConfig,
        dispatch: Option<Arc<dyn Dispatch>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            durable,
            registry,
            config,
            polls: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            dispatch,
            shutdown,
        }
    }

    fn grace_ms(&self) -> i64 {
        self.config.grace.as_millis() as i64
    }

    /// Checks, stores (durably, before any id is reported back) and dispatches commands.
    /// Returns, per command, whether it was new; a resubmitted id is stored once.
    pub async fn submit(
        &self,
        submissions: Vec<Submission>,
        sent_by: &str,
        via: &'static str,
    ) -> Result<Vec<bool>, CommandError> {
        if submissions.is_empty() {
            return Err(CommandError::BadRequest("no commands given".into()));
        }
        if submissions.len() > command::limits::SUBMISSION_MAX {
            return Err(CommandError::BadRequest(format!(
                "{} commands in one submission; the limit is {}",
                submissions.len(),
                command::limits::SUBMISSION_MAX
            )));
        }
        let now = crate::timefmt::now_ms();
        let mut snapshot = self.registry.snapshot();
        let unknown = |snap: &crate::pipeline::registry::Snapshot| {
            submissions
                .iter()
                .any(|s| s.command.node != CENTRAL && snap.node(&s.command.node).is_none())
        };
        if unknown(&snapshot) {
            // Enrolled since the last refresh, perhaps: look again before refusing.
            self.registry.refresh(&self.durable).await?;
            snapshot = self.registry.snapshot();
        }
        for (i, s) in submissions.iter().enumerate() {
            let c = &s.command;
            let at = |e: String| CommandError::BadRequest(format!("commands[{i}]: {e}"));
            c.validate().map_err(|e| at(e.to_string()))?;
            c.verify_signature().map_err(at)?;
            if c.node != CENTRAL && snapshot.node(&c.node).is_none() {
                return Err(CommandError::NotFound(format!(
                    "commands[{i}]: node {} is not enrolled; see `fleet node list`",
                    c.node
                )));
            }
            if c.not_after_ms < now {
                return Err(at("its TTL has already run out (not_after is past)".into()));
            }
            if c.not_after_ms - now > command::limits::TTL_MAX_MS as i64 {
                return Err(at(format!(
                    "a TTL over {} days",
                    command::limits::TTL_MAX_MS / 86_400_000
                )));
            }
            if s.retries > command::limits::RETRIES_MAX {
                return Err(at(format!(
                    "retries {} is over the limit of {}",
                    s.retries,
                    command::limits::RETRIES_MAX
                )));
            }
        }
        let new: Vec<NewCommand> = submissions
            .into_iter()
            .map(|s| NewCommand {
                sent_by: format!(
                    "{sent_by}, key {}",
                    crate::command::short_key(&s.command.key)
                ),
                command: s.command,
                retries: s.retries,
                via,
            })
            .collect();
        let inserted = self.durable.insert_commands(&new, now).await?;
        let mut to_publish = Vec::new();
        for (n, fresh) in new.iter().zip(&inserted) {
            if !fresh {
                continue;
            }
            let c = &n.command;
            if c.node == CENTRAL {
                self.run_central(c).await?;
            } else {
                self.wake(&c.node);
                to_publish.push(c.clone());
            }
            let _ = self.changes.send(c.id.clone());
        }
        self.publish(&to_publish).await;
        Ok(inserted)
    }

    /// Records commands seen on the NATS stream that did not come through this controller
    /// (`fleet send --nats-url`), so the audit log has every command whichever path it took.
    /// Malformed or wrongly signed ones are skipped (and logged); the rest are stored in one
    /// transaction.
    pub async fn record_seen(&self, commands: Vec<Command>) -> Result<(), StoreError> {
        let new: Vec<NewCommand> = commands
            .into_iter()
            .filter(|c| match c.validate().map_err(|e| e.to_string()).and_then(|()| c.verify_signature()) {
                Ok(()) => true,
                Err(reason) => {
                    tracing::warn!(id = %c.id, %reason, "a command on NATS is malformed or wrongly signed; not recorded");
                    false
                }
            })
            .map(|command| NewCommand {
                sent_by: format!("key {}", crate::command::short_key(&command.key)),
                command,
                // Retries are the sender's to make on NATS; the controller only watches.
                retries: 0,
                via: "nats",
            })
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let now = crate::timefmt::now_ms();
        let inserted = self.durable.insert_commands(&new, now).await?;
        let fresh: Vec<String> = new
            .iter()
            .zip(inserted)
            .filter(|(_, is_new)| *is_new)
            .map(|(n, _)| n.command.id.clone())
            .collect();
        if !fresh.is_empty() {
            self.durable.mark_published(&fresh, now).await?;
            for n in new.iter().filter(|n| fresh.contains(&n.command.id)) {
                if n.command.node == CENTRAL
                    && let Err(err) = self.run_central(&n.command).await
                {
                    tracing::warn!(id = %n.command.id, cause = %format!("{err:#}"), "cannot run a command for the controller");
                }
            }
            for id in fresh {
                let _ = self.changes.send(id);
            }
        }
        Ok(())
    }

    /// Puts commands on the NATS stream (when there is one); those the broker did not take stay
    /// unpublished and the sweeper tries again.
    async fn publish(&self, commands: &[Command]) {
        let Some(dispatch) = &self.dispatch else {
            return;
        };
        if commands.is_empty() {
            return;
        }
        let published = dispatch.publish(commands).await;
        if let Err(err) = self
            .durable
            .mark_published(&published, crate::timefmt::now_ms())
            .await
        {
            tracing::warn!(cause = %format!("{err:#}"), "cannot mark commands as published; they will be published again (the stream drops the duplicates)");
        }
    }

    /// The controller's own methods (`central`): the event log, the error log, presence, echo.
    async fn run_central(&self, c: &Command) -> Result<(), CommandError> {
        let report = match c.method {
            Method::CliCommand | Method::Cancel => CommandReport {
                id: c.id.clone(),
                state: CommandState::Failed,
                result: Some(CommandResult {
                    error: Some(
                        "refused: the controller runs no commands and has none running to cancel; address a node".into(),
                    ),
                    ..Default::default()
                }),
            },
            _ => CommandReport {
                id: c.id.clone(),
                state: CommandState::Succeeded,
                result: Some(CommandResult {
                    exit_code: Some(0),
                    stdout: match c.method {
                        Method::Echo => c.args.join(" "),
                        Method::SayHello => {
                            format!(
                                "hello from the controller, fleet {}",
                                env!("CARGO_PKG_VERSION")
                            )
                        }
                        _ => String::new(),
                    },
                    ..Default::default()
                }),
            },
        };
        self.report(CENTRAL, std::slice::from_ref(&report)).await
    }

    /// A node's poll for commands: returns at once when some are queued, else waits up to
    /// `wait` for one to arrive.
    pub async fn poll(&self, node: &str, wait: Duration) -> Result<Vec<Command>, CommandError> {
        let wait = wait.min(self.config.poll_max);
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self
            .polls
            .lock()
            .expect("poll lock poisoned")
            .entry(node.to_owned())
            .or_default()
            .clone();
        loop {
            let woken = notify.notified();
            let commands = self
                .durable
                .take_deliverable(node, crate::timefmt::now_ms(), self.grace_ms(), 256)
                .await?;
            if !commands.is_empty() {
                for c in &commands {
                    let _ = self.changes.send(c.id.clone());
                }
                return Ok(commands);
            }
            // Another controller (sharing PostgreSQL) may queue for this node without waking
            // us: look again now and then. SQLite has one controller, which wakes its polls.
            let recheck = match self.durable.backend() {
                crate::store::durable::Backend::Postgres => {
                    (tokio::time::Instant::now() + SHARED_RECHECK).min(deadline)
                }
                crate::store::durable::Backend::Sqlite => deadline,
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(recheck) => {}
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    fn wake(&self, node: &str) {
        if let Some(n) = self.polls.lock().expect("poll lock poisoned").get(node) {
            n.notify_waiters();
        }
    }

    /// Applies reports from `node` (one transaction). A malformed report does not hold up the
    /// others (the node would resend the batch for ever): it ends its command as failed with
    /// the reason, or, without a usable id, is dropped and logged.
    pub async fn report(&self, node: &str, reports: &[CommandReport]) -> Result<(), CommandError> {
        let reports: Vec<CommandReport> = reports
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.validate() {
                Ok(()) => Some(r.clone()),
                Err(problem) if ulid::Ulid::from_string(&r.id).is_ok() => {
                    tracing::warn!(%node, id = %r.id, %problem, "a malformed report; its command is failed");
                    Some(CommandReport {
                        id: r.id.clone(),
                        state: CommandState::Failed,
                        result: Some(CommandResult {
                            error: Some(format!("the node's report was refused: {problem}")),
                            ..Default::default()
                        }),
                    })
                }
                Err(problem) => {
                    tracing::warn!(%node, index = i, %problem, "a malformed report without a usable id; dropped");
                    None
                }
            })
            .collect();
        let pairs: Vec<(&str, &CommandReport)> = reports.iter().map(|r| (node, r)).collect();
        if !pairs.is_empty() {
            self.apply(&pairs).await?;
        }
        Ok(())
    }

    /// Applies reports from several nodes in one transaction (the NATS reply consumer, which
    /// has checked each report's signature); says per report what happened.
    pub async fn apply(
        &self,
        reports: &[(&str, &CommandReport)],
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let outcomes = self
            .durable
            .apply_reports(reports, self.grace_ms(), crate::timefmt::now_ms(), event_of)
            .await?;
        for ((_, report), outcome) in reports.iter().zip(&outcomes) {
            if let ApplyOutcome::Applied(applied) = outcome {
                let _ = self.changes.send(report.id.clone());
                // The node's next ordered command may go out now.
                if report.state.is_terminal() {
                    self.wake(&applied.node);
                }
            }
        }
        Ok(outcomes)
    }

    /// Waits until every one of `ids` is settled (final, or for NACK kinds handed to the node)
    /// or `wait` passes; returns their records either way.
    pub async fn wait_settled(
        &self,
        ids: &[String],
        wait: Duration,
    ) -> Result<Vec<CommandRecord>, CommandError> {
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        let mut changes = self.changes.subscribe();
        let mut records: HashMap<String, CommandRecord> = self
            .durable
            .commands_by_ids(ids)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        if let Some(missing) = ids.iter().find(|id| !records.contains_key(*id)) {
            return Err(CommandError::NotFound(format!("no command {missing}")));
        }
        let mut unsettled: std::collections::HashSet<String> = records
            .values()
            .filter(|r| !r.settled())
            .map(|r| r.id.clone())
            .collect();
        let mut last_full = tokio::time::Instant::now();
        while !unsettled.is_empty() && tokio::time::Instant::now() < deadline {
            // Wake on a change of one of ours; once a second look at all of them, for changes
            // made by another controller sharing the store.
            let recheck = (last_full + Duration::from_secs(1)).min(deadline);
            let mut changed: Vec<String> = Vec::new();
            tokio::select! {
                first = changes.recv() => match first {
                    Ok(id) => changed.push(id),
                    Err(broadcast::error::RecvError::Lagged(_)) => changed.extend(unsettled.iter().cloned()),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(recheck) => {
                    changed.extend(unsettled.iter().cloned());
                    last_full = tokio::time::Instant::now();
                }
                _ = self.shutdown.cancelled() => break,
            }
            // Take every change already announced, so a burst costs one query.
            loop {
                match changes.try_recv() {
                    Ok(id) => changed.push(id),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        changed.extend(unsettled.iter().cloned())
                    }
                    Err(_) => break,
                }
            }
            changed.retain(|id| unsettled.contains(id));
            changed.sort_unstable();
            changed.dedup();
            if changed.is_empty() {
                continue;
            }
            for record in self.durable.commands_by_ids(&changed).await? {
                if record.settled() {
                    unsettled.remove(&record.id);
                }
                records.insert(record.id.clone(), record);
            }
        }
        Ok(ids.iter().filter_map(|id| records.remove(id)).collect())
    }

    /// Cancels a command no node has taken yet.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<CommandState, CommandError> {
        let state = self
            .durable
            .cancel_command(id, by, crate::timefmt::now_ms())
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("no command {id}")))?;
        let _ = self.changes.send(id.to_owned());
        Ok(state)
    }

    /// Runs the deadline sweeper (and, with NATS, republishes what the broker did not take)
    /// until `shutdown`.
    pub async fn sweep_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.sweep_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.durable.sweep_commands(crate::timefmt::now_ms()).await {
                Ok(swept) => {
                    for s in swept {
                        tracing::info!(id = %s.id, node = %s.node, state = %s.state, "command deadline passed");
                        // Queued again, or out of the way of the node's next ordered command.
                        self.wake(&s.node);
                        let _ = self.changes.send(s.id);
                    }
                }
                Err(err) => {
                    tracing::warn!(cause = %format!("{err:#}"), "command sweep failed; retrying")
                }
            }
            if self.dispatch.is_some() {
                match self.durable.unpublished_commands(1000).await {
                    Ok(commands) => self.publish(&commands).await,
                    Err(err) => {
                        tracing::warn!(cause = %format!("{err:#}"), "cannot read unpublished commands")
                    }
                }
            }
        }
    }
}

/// The event-log entry an applied report makes: TextLogging and ErrorLog that succeeded, and
/// every failure with a reason (refusals, commands that could not start, interruptions) for the
/// central error log.
fn event_of(applied: &Applied, report: &CommandReport) -> Option<NewEvent> {
    if !report.state.is_terminal() {
        return None;
    }
    let fields = serde_json::json!({"command": report.id, "method": applied.method});
    let event = |level, message: String, category| NewEvent {
        node: Some(applied.node.clone()),
        service: None,
        level,
        // The node's error text may hold a NUL, which a TEXT column cannot: kept, escaped.
        message: crate::model::escape_nul(&message).into_owned(),
        fields: fields.clone(),
        category,
    };
    if report.state == CommandState::Cancelled {
        let why = report.result.as_ref().and_then(|r| r.error.as_deref());
        return Some(event(
            2,
            format!(
                "{} {}: {}",
                applied.method,
                report.id,
                why.unwrap_or("cancelled")
            ),
            "event",
        ));
    }
    if report.state == CommandState::Succeeded {
        match applied.method {
            Method::TextLogging => Some(event(1, applied.args.join(" "), "event")),
            Method::ErrorLog => Some(event(4, applied.args.join(" "), "error")),
            _ => None,
        }
    } else {
        let error = report.result.as_ref().and_then(|r| r.error.as_ref())?;
        Some(event(
            4,
            format!("{} {}: {error}", applied.method, report.id),
            "error",
        ))
    }
}
