//! The agent's command executor: decides whether a delivered command may run ([`policy`]), runs
//! it exactly once per id ([`journal`]), and says what became of it ([`run`]).
//!
//! It knows nothing of how commands arrive or how reports leave: the bus (`bus::http` long-poll
//! or `bus::nats`) hands it commands and carries its reports. It must never run a command whose
//! start it did not first record durably, and never run an id twice.

pub mod journal;
pub mod policy;
pub mod run;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use policy::Policy;

use crate::command::{Command, CommandReport, CommandResult, CommandState, Method};
use crate::config::AgentCommandsConfig;
use journal::{Entry, Journal};

pub struct Executor {
    node: String,
    policy: Policy,
    max_output: usize,
    journal: Mutex<Journal>,
    /// Ids accepted and not yet finished in this process, each with the means to stop it.
    in_hand: Mutex<HashMap<String, Claim>>,
    event_log: PathBuf,
}

impl Executor {
    /// Opens the journal in `data_dir`. Ids that started and never finished (the agent died
    /// under them) are recorded as failed ("interrupted") right away: they never run again.
    pub fn open(
        node: &str,
        config: &AgentCommandsConfig,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let policy = Policy::from_config(config).map_err(anyhow::Error::msg)?;
        let mut journal = Journal::open(&data_dir.join("commands")).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the command journal in {}: {e}",
                data_dir.display()
            )
        })?;
        for id in journal.unfinished() {
            let not_after_ms = match journal.get(&id) {
                Some(Entry::Started { not_after_ms }) => *not_after_ms,
                _ => continue,
            };
            tracing::warn!(
                id,
                "a command was interrupted by a restart; it is reported failed and will not run again"
            );
            journal.record_result(not_after_ms, &interrupted(&id))?;
        }
        Ok(Self {
            node: node.to_owned(),
            policy,
            max_output: config.max_output_bytes,
            journal: Mutex::new(journal),
            in_hand: Mutex::new(HashMap::new()),
            event_log: data_dir.join("events.log"),
        })
    }

    /// Results the controller has not acknowledged (from before a restart, or whose
    /// acknowledgement was lost): send them again.
    pub fn unacknowledged(&self) -> Vec<CommandReport> {
        self.journal
            .lock()
            .expect("journal lock poisoned")
            .unacknowledged()
    }

    /// Claims a delivered id for handling. False when this process already holds it (a
    /// redelivery while it is queued or running): the result will follow from the first copy.
    pub fn accept(&self, id: &str) -> bool {
        use std::collections::hash_map::Entry::{Occupied, Vacant};
        match self
            .in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .entry(id.to_owned())
        {
            Occupied(_) => false,
            Vacant(slot) => {
                slot.insert(Claim::default());
                true
            }
        }
    }

    /// Handles an accepted command and returns its report: the stored one for an id seen
    /// before, a refusal, or the outcome of running it. `on_start` is called once the start is
    /// on disk, just before it runs.
    pub async fn handle(&self, command: Command, on_start: impl FnOnce()) -> Handled {
        let mut stopped = None;
        let report = self.handle_inner(command, on_start, &mut stopped).await;
        self.in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .remove(&report.id);
        Handled { report, stopped }
    }

    async fn handle_inner(
        &self,
        command: Command,
        on_start: impl FnOnce(),
        stopped: &mut Option<CommandReport>,
    ) -> CommandReport {
        let claim = self
            .in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .entry(command.id.clone())
            .or_default()
            .clone();
        let seen = self
            .journal
            .lock()
            .expect("journal lock poisoned")
            .get(&command.id)
            .cloned();
        match seen {
            Some(Entry::Finished { report, .. }) => return report,
            // Started by an earlier process that died: `open` turned those into results, so
            // this is a start recorded without a result in this process: not possible unless
            // the result could not be written. Never run it again.
            Some(Entry::Started { not_after_ms }) => {
                return self
                    .record_result(not_after_ms, interrupted(&command.id))
                    .await;
            }
            None => {}
        }
        if let Err(reason) = self.check(&command) {
            tracing::warn!(id = %command.id, method = %command.method, %reason, "command refused");
            let report = CommandReport {
                id: command.id.clone(),
                state: CommandState::Failed,
                result: Some(CommandResult {
                    error: Some(format!("refused: {reason}")),
                    ..Default::default()
                }),
            };
            // Journaled (so a redelivery gets the same answer) only when a trusted operator
            // signed it: otherwise anyone who can reach the bus could fill the journal, and a
            // refusal has nothing to keep exactly-once.
            if self.policy.trusts(&command) {
                let keep_until = command
                    .not_after_ms
                    .min(crate::timefmt::now_ms() + crate::command::limits::TTL_MAX_MS as i64);
                return self.record_result(keep_until, report).await;
            }
            return report.bounded(self.max_output);
        }
        // Written in place, like the spool: one small append and fdatasync (a fraction of a
        // millisecond) costs less than handing it to a blocking thread and back. Under the one
        // lock a `Cancel` also takes: either it journaled this id's end first (it never starts),
        // or it finds the start and stops the run.
        let recorded = {
            let mut journal = self.journal.lock().expect("journal lock poisoned");
            if let Some(Entry::Finished { report, .. }) = journal.get(&command.id) {
                return report.clone();
            }
            journal.record_start(&command)
        };
        if let Err(err) = recorded {
            // Not on disk, so not started: the sender sees the failure; a redelivery may try
            // again.
            tracing::error!(id = %command.id, cause = %format!("{err:#}"), "cannot record a command's start; not running it");
            return CommandReport {
                id: command.id.clone(),
                state: CommandState::Failed,
                result: Some(CommandResult {
                    error: Some(format!("the node cannot record the command: {err}")),
                    ..Default::default()
                }),
            };
        }
        on_start();
        let mut report = if command.method == Method::Cancel {
            self.cancel(&command, stopped).await
        } else {
            run::run(
                &command,
                &self.node,
                &self.event_log,
                self.max_output,
                &claim.stop,
            )
            .await
        };
        if report.state == CommandState::Cancelled
            && let Some(result) = report.result.as_mut()
        {
            result.error = Some(claim.reason());
        }
        self.record_result(command.not_after_ms, report).await
    }

    /// Runs a `Cancel`: stops the command it names wherever that one is. Running: its process
    /// group is killed, and this answers once it is over. Waiting its turn, or not here yet: its
    /// end is journaled as cancelled (into `stopped`, to report now), so it never starts. Already
    /// finished: left alone.
    async fn cancel(&self, cancel: &Command, stopped: &mut Option<CommandReport>) -> CommandReport {
        let target = &cancel.args[0];
        let reason = format!(
            "cancelled by command {} (key {})",
            cancel.id,
            crate::command::short_key(&cancel.key)
        );
        let answer = |text: String| CommandReport {
            id: cancel.id.clone(),
            state: CommandState::Succeeded,
            result: Some(CommandResult {
                exit_code: Some(0),
                stdout: text,
                ..Default::default()
            }),
        };
        let claim = self
            .in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .get(target)
            .cloned();
        if let Some(claim) = &claim {
            let _ = claim.reason.set(reason.clone());
            claim.stop.cancel();
        }
        let seen = {
            let mut journal = self.journal.lock().expect("journal lock poisoned");
            match journal.get(target).cloned() {
                None => {
                    let report = CommandReport {
                        id: target.clone(),
                        state: CommandState::Cancelled,
                        result: Some(CommandResult {
                            error: Some(reason),
                            ..Default::default()
                        }),
                    };
                    // The target may arrive as late as its own TTL, which this node cannot
                    // know: keep the answer as long as the longest TTL there is.
                    let keep_until =
                        crate::timefmt::now_ms() + crate::command::limits::TTL_MAX_MS as i64;
                    if let Err(err) = journal.record_result(keep_until, &report) {
                        return CommandReport {
                            id: cancel.id.clone(),
                            state: CommandState::Failed,
                            result: Some(CommandResult {
                                error: Some(format!("the node cannot record the cancel: {err}")),
                                ..Default::default()
                            }),
                        };
                    }
                    *stopped = Some(report);
                    None
                }
                Some(entry) => Some(entry),
            }
        };
        match seen {
            None if claim.is_some() => answer(format!("{target}: cancelled before it started")),
            None => answer(format!(
                "{target}: not here yet; cancelled, it will not run when it arrives"
            )),
            Some(Entry::Finished { report, .. }) => answer(format!(
                "{target}: already finished ({}); nothing to cancel",
                report.state
            )),
            Some(Entry::Started { .. }) if claim.is_none() => answer(format!(
                "{target}: was interrupted by a restart; nothing to cancel"
            )),
            Some(Entry::Started { .. }) => {
                // Answer once it is over, so the sender reads its final state next.
                let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
                while self.holds(target) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if self.holds(target) {
                    answer(format!("{target}: told to stop; it has not stopped yet"))
                } else {
                    answer(format!("{target}: stopped"))
                }
            }
        }
    }

    fn holds(&self, id: &str) -> bool {
        self.in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .contains_key(id)
    }

    fn check(&self, command: &Command) -> Result<(), String> {
        command.validate().map_err(|e| e.to_string())?;
        if command.node != self.node {
            return Err(format!(
                "the command is addressed to {:?}, not to this node ({:?})",
                command.node, self.node
            ));
        }
        if command.not_after_ms < crate::timefmt::now_ms() {
            return Err(format!(
                "the command expired at {}",
                crate::timefmt::rfc3339(command.not_after_ms)
            ));
        }
        self.policy.check(command)
    }

    async fn record_result(&self, not_after_ms: i64, report: CommandReport) -> CommandReport {
        let report = report.bounded(self.max_output);
        let id = report.id.clone();
        let written = self
            .journal
            .lock()
            .expect("journal lock poisoned")
            .record_result(not_after_ms, &report);
        if let Err(err) = written {
            // The start is on disk, so a redelivery reports "interrupted" rather than running
            // it again.
            tracing::error!(%id, cause = %format!("{err:#}"), "cannot record a command's result");
        }
        report
    }

    /// The controller has the result of `id`.
    pub fn acknowledged(&self, id: &str) {
        if let Err(err) = self
            .journal
            .lock()
            .expect("journal lock poisoned")
            .acknowledge(id)
        {
            tracing::warn!(%id, cause = %format!("{err:#}"), "cannot note an acknowledged result; it may be sent again");
        }
    }
}

/// How long a `Cancel` waits for the command it stopped to be over before it answers.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// A command this process holds, and the means to stop it.
#[derive(Clone, Default)]
struct Claim {
    stop: CancellationToken,
    /// Who stopped it, for its report.
    reason: Arc<OnceLock<String>>,
}

impl Claim {
    fn reason(&self) -> String {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| "cancelled".to_owned())
    }
}

/// What became of one handled command.
#[derive(Debug)]
pub struct Handled {
    /// Its own report.
    pub report: CommandReport,
    /// A `Cancel` that kept a command from starting: that command's report, to send now.
    pub stopped: Option<CommandReport>,
}

fn interrupted(id: &str) -> CommandReport {
    CommandReport {
        id: id.to_owned(),
        state: CommandState::Failed,
        result: Some(CommandResult {
            error: Some(
                "interrupted: the agent stopped while the command ran; it was not run again".into(),
            ),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::command::{Kind, OperatorKey};

    struct Node {
        executor: Arc<Executor>,
        key: OperatorKey,
        dir: tempfile::TempDir,
    }

    fn node() -> Node {
        let key = OperatorKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let config = AgentCommandsConfig {
            trusted_keys: vec![key.public()],
            allow_any: true,
            ..AgentCommandsConfig::default()
        };
        let executor = Arc::new(Executor::open("n1", &config, dir.path()).unwrap());
        Node { executor, key, dir }
    }

    fn command(key: &OperatorKey, method: Method, args: &[&str], parallel: bool) -> Command {
        crate::command::build(
            key,
            "n1",
            Kind::CommandAck,
            method,
            args.iter().map(|a| a.to_string()).collect(),
            Duration::from_secs(30),
            Duration::from_secs(3600),
            parallel,
        )
    }

    fn cancel_of(key: &OperatorKey, target: &Command) -> Command {
        command(key, Method::Cancel, &[&target.id], true)
    }

    /// A command that leaves a mark when it starts and, through a child, 1 s later.
    fn marking(node: &Node) -> (Command, std::path::PathBuf, std::path::PathBuf) {
        let started = node.dir.path().join("started");
        let late = node.dir.path().join("late");
        let script = format!(
            "touch {}; (sleep 1; touch {}) & sleep 30",
            started.display(),
            late.display()
        );
        (
            command(&node.key, Method::CliCommand, &["sh", "-c", &script], false),
            started,
            late,
        )
    }

    async fn wait_for(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_cancel_kills_a_running_command_and_its_children() {
        let node = node();
        let (target, started, late) = marking(&node);
        assert!(node.executor.accept(&target.id));
        let running = tokio::spawn({
            let executor = node.executor.clone();
            let target = target.clone();
            async move { executor.handle(target, || {}).await }
        });
        wait_for(&started).await;
        let cancel = cancel_of(&node.key, &target);
        assert!(node.executor.accept(&cancel.id));
        let t0 = Instant::now();
        let handled = node.executor.handle(cancel.clone(), || {}).await;
        assert_eq!(handled.report.state, CommandState::Succeeded, "{handled:?}");
        assert!(handled.stopped.is_none());
        let stdout = &handled.report.result.as_ref().unwrap().stdout;
        assert!(stdout.ends_with(": stopped"), "{stdout}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        let target_report = running.await.unwrap().report;
        assert_eq!(target_report.state, CommandState::Cancelled);
        let why = target_report.result.unwrap().error.unwrap();
        assert!(why.contains(&cancel.id), "{why}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!late.exists(), "a child of the cancelled command survived");
        // Exactly once: a redelivery of the target gets the stored outcome.
        assert!(node.executor.accept(&target.id));
        let again = node.executor.handle(target, || {}).await.report;
        assert_eq!(again.state, CommandState::Cancelled);
    }

    #[tokio::test]
    async fn a_cancel_keeps_a_waiting_command_from_starting() {
        let node = node();
        let (target, started, _) = marking(&node);
        // Delivered and waiting its turn behind another command.
        assert!(node.executor.accept(&target.id));
        let cancel = cancel_of(&node.key, &target);
        assert!(node.executor.accept(&cancel.id));
        let t0 = Instant::now();
        let handled = node.executor.handle(cancel, || {}).await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a cancel of a waiting command must not wait"
        );
        assert_eq!(handled.report.state, CommandState::Succeeded);
        let stopped = handled
            .stopped
            .expect("the waiting command's report comes at once");
        assert_eq!(
            (stopped.id.as_str(), stopped.state),
            (target.id.as_str(), CommandState::Cancelled)
        );
        // Its turn comes: it does not start.
        let turn = node.executor.handle(target, || {}).await.report;
        assert_eq!(turn.state, CommandState::Cancelled);
        assert!(!started.exists(), "a cancelled command started");
    }

    #[tokio::test]
    async fn a_cancel_that_arrives_first_stops_the_command_it_names_and_survives_a_restart() {
        let node = node();
        let (target, started, _) = marking(&node);
        let cancel = cancel_of(&node.key, &target);
        assert!(node.executor.accept(&cancel.id));
        let handled = node.executor.handle(cancel, || {}).await;
        let text = &handled.report.result.as_ref().unwrap().stdout;
        assert!(text.contains("not here yet"), "{text}");
        assert_eq!(handled.stopped.unwrap().state, CommandState::Cancelled);
        // The agent restarts; then the command arrives.
        let Node { executor, key, dir } = node;
        drop(executor);
        let config = AgentCommandsConfig {
            trusted_keys: vec![key.public()],
            allow_any: true,
            ..AgentCommandsConfig::default()
        };
        let executor = Executor::open("n1", &config, dir.path()).unwrap();
        assert!(executor.accept(&target.id));
        let report = executor.handle(target, || {}).await.report;
        assert_eq!(report.state, CommandState::Cancelled);
        assert!(!started.exists(), "a cancelled command started");
    }

    #[tokio::test]
    async fn a_cancel_of_a_finished_command_changes_nothing() {
        let node = node();
        let done = command(&node.key, Method::Echo, &["hi"], false);
        assert!(node.executor.accept(&done.id));
        let first = node.executor.handle(done.clone(), || {}).await.report;
        assert_eq!(first.state, CommandState::Succeeded);
        let cancel = cancel_of(&node.key, &done);
        assert!(node.executor.accept(&cancel.id));
        let handled = node.executor.handle(cancel, || {}).await;
        let text = &handled.report.result.as_ref().unwrap().stdout;
        assert!(text.contains("already finished (succeeded)"), "{text}");
        assert!(handled.stopped.is_none());
        assert!(node.executor.accept(&done.id));
        let again = node.executor.handle(done, || {}).await.report;
        assert_eq!(again.state, CommandState::Succeeded);
    }

    #[tokio::test]
    async fn a_cancel_signed_by_an_untrusted_key_is_refused_and_stops_nothing() {
        let node = node();
        let (target, started, _) = marking(&node);
        let stranger = OperatorKey::generate();
        let cancel = cancel_of(&stranger, &target);
        assert!(node.executor.accept(&cancel.id));
        let handled = node.executor.handle(cancel, || {}).await;
        assert_eq!(handled.report.state, CommandState::Failed);
        assert!(handled.stopped.is_none());
        let error = handled.report.result.unwrap().error.unwrap();
        assert!(error.starts_with("refused:"), "{error}");
        // The command it named still runs.
        assert!(node.executor.accept(&target.id));
        let running = tokio::spawn({
            let executor = node.executor.clone();
            let target = target.clone();
            async move { executor.handle(target, || {}).await }
        });
        wait_for(&started).await;
        assert!(!running.is_finished());
        let cancel = cancel_of(&node.key, &target);
        assert!(node.executor.accept(&cancel.id));
        node.executor.handle(cancel, || {}).await;
        assert_eq!(running.await.unwrap().report.state, CommandState::Cancelled);
    }
}
