//! The agent's command executor: decides whether a delivered command may run ([`policy`]), runs
//! it exactly once per id ([`journal`]), and says what became of it ([`run`]).
//!
//! It knows nothing of how commands arrive or how reports leave: the bus (`bus::http` long-poll
//! or `bus::nats`) hands it commands and carries its reports. It must never run a command whose
//! start it did not first record durably, and never run an id twice.

pub mod journal;
pub mod policy;
pub mod run;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

pub use policy::Policy;

use crate::command::{Command, CommandReport, CommandResult, CommandState};
use crate::config::AgentCommandsConfig;
use journal::{Entry, Journal};

pub struct Executor {
    node: String,
    policy: Policy,
    max_output: usize,
    journal: Mutex<Journal>,
    /// Ids accepted and not yet finished in this process.
    in_hand: Mutex<HashSet<String>>,
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
            in_hand: Mutex::new(HashSet::new()),
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
        self.in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .insert(id.to_owned())
    }

    /// Handles an accepted command and returns its report: the stored one for an id seen
    /// before, a refusal, or the outcome of running it. `on_start` is called once the start is
    /// on disk, just before it runs.
    pub async fn handle(&self, command: Command, on_start: impl FnOnce()) -> CommandReport {
        let report = self.handle_inner(command, on_start).await;
        self.in_hand
            .lock()
            .expect("in-hand lock poisoned")
            .remove(&report.id);
        report
    }

    async fn handle_inner(&self, command: Command, on_start: impl FnOnce()) -> CommandReport {
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
        // millisecond) costs less than handing it to a blocking thread and back.
        let recorded = self
            .journal
            .lock()
            .expect("journal lock poisoned")
            .record_start(&command);
        if let Err(err) = recorded {
            // Not on disk, so not started: the sender sees the failure; a redelivery may try
            // again.
            tracing::error!(id = %command.id, cause = %err, "cannot record a command's start; not running it");
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
        let report = run::run(&command, &self.node, &self.event_log, self.max_output).await;
        self.record_result(command.not_after_ms, report).await
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
            tracing::error!(%id, cause = %err, "cannot record a command's result");
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
            tracing::warn!(%id, cause = %err, "cannot note an acknowledged result; it may be sent again");
        }
    }
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
