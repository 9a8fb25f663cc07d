//! `fleet send --nats-url`: commands straight onto the stream, and their reports read back
//! from the reply subjects, bypassing the controller's API (the controller still records both
//! from the streams).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;

use super::{Subjects, connect, ensure_streams, publish_commands};
use crate::command::{Command, CommandRecord, CommandReport, CommandState, Submission};
use crate::config::NatsConfig;

/// `fleet send` straight onto NATS, bypassing the controller's API (the controller still sees
/// and records the commands and their reports from the streams).
pub struct Sender {
    js: jetstream::Context,
    subjects: Subjects,
    /// Every report under the prefix, subscribed before anything is published so none can
    /// slip past.
    replies: tokio::sync::Mutex<async_nats::Subscriber>,
}

impl Sender {
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&config.prefix)?;
        let client = connect(config, "fleet-send").await?;
        let js = jetstream::new(client.clone());
        ensure_streams(&js, &subjects, config.max_ttl).await?;
        let replies = client
            .subscribe(subjects.all_replies())
            .await
            .context("cannot subscribe to reports on NATS")?;
        Ok(Self {
            js,
            subjects,
            replies: tokio::sync::Mutex::new(replies),
        })
    }

    /// Publishes the commands (durably: the stream acknowledged each) and, with a `wait`,
    /// collects reports until every command is settled or the wait passes.
    pub async fn send_and_wait(
        &self,
        submissions: &[Submission],
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<CommandRecord>> {
        let mut replies = self.replies.lock().await;
        let commands: Vec<Command> = submissions.iter().map(|s| s.command.clone()).collect();
        let t0 = std::time::Instant::now();
        let acked: HashSet<String> = publish_commands(&self.js, &self.subjects, &commands)
            .await
            .into_iter()
            .collect();
        tracing::debug!(
            commands = commands.len(),
            elapsed_us = t0.elapsed().as_micros() as u64,
            "the stream has the commands"
        );
        if acked.len() != commands.len() {
            anyhow::bail!(
                "NATS stored {} of {} commands; the rest were not sent (is JetStream enabled, and the stream {} reachable?)",
                acked.len(),
                commands.len(),
                self.subjects.commands_stream()
            );
        }
        let mut records: HashMap<String, CommandRecord> = commands
            .iter()
            .map(|c| (c.id.clone(), pending_record(c)))
            .collect();
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut unsettled = records.len();
        let records_len = records.len();
        while unsettled > 0 {
            let message = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                m = replies.next() => match m { Some(m) => m, None => break },
            };
            let Ok(report) = serde_json::from_slice::<CommandReport>(&message.payload) else {
                continue;
            };
            if let Some(record) = records.get_mut(&report.id) {
                // Reports of one command may arrive out of order: never step back.
                if record.state.is_terminal() && !report.state.is_terminal() {
                    continue;
                }
                let was_settled = record.settled();
                record.state = report.state;
                record.attempts = record.attempts.max(1);
                if report.result.is_some() {
                    record.result = report.result;
                    record.finished_at = Some(crate::timefmt::rfc3339(crate::timefmt::now_ms()));
                }
                if !was_settled && record.settled() {
                    unsettled -= 1;
                    if unsettled == records_len / 2 || unsettled == records_len - 1 {
                        tracing::debug!(
                            settled = records_len - unsettled,
                            elapsed_us = t0.elapsed().as_micros() as u64,
                            "results back"
                        );
                    }
                }
            }
        }
        Ok(commands
            .iter()
            .filter_map(|c| records.remove(&c.id))
            .collect())
    }
}

fn pending_record(c: &Command) -> CommandRecord {
    CommandRecord {
        id: c.id.clone(),
        node: c.node.clone(),
        kind: c.kind,
        method: c.method,
        args: c.args.clone(),
        parallel: c.parallel,
        state: CommandState::Queued,
        attempts: 0,
        retries: 0,
        timeout_ms: c.timeout_ms as i64,
        not_after: crate::timefmt::rfc3339(c.not_after_ms),
        sent_by: "this sender".into(),
        via: "nats".into(),
        created_at: crate::timefmt::rfc3339(c.created_ms()),
        delivered_at: None,
        started_at: None,
        finished_at: None,
        result: None,
    }
}
