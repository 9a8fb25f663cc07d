//! The durable command queue: commands and their states, the audit trail of every transition
//! (`command_log`), and the central error log (events of category `error`).
//!
//! Every state change is one conditional `UPDATE … WHERE state IN (…)`, so several controllers
//! on one PostgreSQL never move a command twice, and a terminal state is never left (except
//! `timed_out`, which the node's own late report corrects).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::durable::{Durable, StoreError};
use super::events::NewEvent;
use crate::command::{Command, CommandReport, CommandState, Method};

/// How long a handed-out command may go without word from its node before a poll sends it
/// again (the answer to the first poll may have been lost).
pub const RESEND_AFTER_MS: i64 = 5_000;

/// A command as submitted, before it is stored.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub command: Command,
    pub retries: u32,
    pub sent_by: String,
    /// `api` or `nats`: the path it came in by.
    pub via: &'static str,
}

pub use crate::command::CommandRecord;

/// One line of a command's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct CommandLogEntry {
    pub ts: String,
    pub state: String,
    pub detail: String,
}

/// One change the sweeper made.
#[derive(Debug, Clone)]
pub struct Swept {
    pub id: String,
    pub node: String,
    pub state: CommandState,
}

/// A stored report's effect, for the caller's follow-ups (events, error log).
#[derive(Debug, Clone)]
pub struct Applied {
    pub node: String,
    pub method: Method,
    pub args: Vec<String>,
}

const COLUMNS: &str = "id, node, kind, method, envelope, state, attempts, retries, timeout_ms, \
     not_after, sent_by, via, created_at, delivered_at, started_at, finished_at, result";

fn time(ms: i64) -> String {
    crate::timefmt::rfc3339(ms)
}

fn record_from_row(row: &AnyRow) -> Result<CommandRecord, StoreError> {
    let envelope: String = row.try_get(4)?;
    let command: Command = serde_json::from_str(&envelope)
        .map_err(|e| StoreError::Corrupt(format!("command envelope: {e}")))?;
    let state: String = row.try_get(5)?;
    let result: Option<String> = row.try_get(16)?;
    Ok(CommandRecord {
        id: row.try_get(0)?,
        node: row.try_get(1)?,
        kind: command.kind,
        method: command.method,
        args: command.args,
        parallel: command.parallel,
        state: CommandState::parse(&state)
            .map_err(|e| StoreError::Corrupt(format!("command state: {e}")))?,
        attempts: row.try_get(6)?,
        retries: row.try_get(7)?,
        timeout_ms: row.try_get(8)?,
        not_after: time(row.try_get(9)?),
        sent_by: row.try_get(10)?,
        via: row.try_get(11)?,
        created_at: time(row.try_get(12)?),
        delivered_at: row.try_get::<Option<i64>, _>(13)?.map(time),
        started_at: row.try_get::<Option<i64>, _>(14)?.map(time),
        finished_at: row.try_get::<Option<i64>, _>(15)?.map(time),
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("command result: {e}")))?,
    })
}

impl Durable {
    /// How many commands ended failed or timed out since `since_ms`.
    pub async fn failed_commands_since(&self, since_ms: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM commands WHERE state IN ('failed', 'timed_out') \
             AND finished_at >= $1",
        )
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Stores new commands (queued) with their first audit line, in one transaction of a few
    /// multi-row statements. Returns, per command, whether it was new (a resubmitted id changes
    /// nothing).
    pub async fn insert_commands(
        &self,
        commands: &[NewCommand],
        now_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        struct Row<'a> {
            c: &'a Command,
            envelope: String,
            new: &'a NewCommand,
        }
        // One row per id: the same id twice in one statement would conflict with itself.
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<Row> = commands
            .iter()
            .filter(|n| seen.insert(n.command.id.as_str()))
            .map(|new| Row {
                c: &new.command,
                envelope: serde_json::to_string(&new.command).expect("commands serialise"),
                new,
            })
            .collect();
        let mut tx = self.pool().begin().await?;
        let returned = self
            .insert_rows(
                &mut tx,
                "INSERT INTO commands (id, node, kind, method, envelope, retries, timeout_ms, \
                 not_after, sent_by, via, created_at, state, parallel) VALUES ",
                13,
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                &rows,
                |q, r| {
                    q.bind(&r.c.id)
                        .bind(&r.c.node)
                        .bind(r.c.kind.as_str())
                        .bind(r.c.method.as_str())
                        .bind(&r.envelope)
                        .bind(i64::from(r.new.retries))
                        .bind(r.c.timeout_ms as i64)
                        .bind(r.c.not_after_ms)
                        .bind(&r.new.sent_by)
                        .bind(r.new.via)
                        .bind(now_ms)
                        .bind("queued")
                        .bind(i64::from(r.c.parallel))
                },
            )
            .await?;
        let fresh: std::collections::HashSet<String> = returned
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let logs: Vec<LogRow> = rows
            .iter()
            .filter(|r| fresh.contains(&r.c.id))
            .map(|r| LogRow {
                id: r.c.id.clone(),
                ts: now_ms,
                state: "queued",
                detail: format!("sent by {} via {}", r.new.sent_by, r.new.via),
            })
            .collect();
        self.insert_logs(&mut tx, &logs).await?;
        tx.commit().await?;
        // The first occurrence of an id in this call is the one stored.
        let mut claimed = std::collections::HashSet::new();
        Ok(commands
            .iter()
            .map(|n| fresh.contains(&n.command.id) && claimed.insert(n.command.id.as_str()))
            .collect())
    }

    async fn insert_logs(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        logs: &[LogRow],
    ) -> Result<(), StoreError> {
        self.insert_rows(
            tx,
            "INSERT INTO command_log (command_id, ts, state, detail) VALUES ",
            4,
            "",
            logs,
            |q, l| q.bind(&l.id).bind(l.ts).bind(l.state).bind(&l.detail),
        )
        .await?;
        Ok(())
    }

    /// Hands out queued commands of `node`, marking them delivered (one more attempt, a
    /// deadline of timeout + `grace`): every `parallel` one (up to `limit`), and the oldest
    /// ordered one unless an ordered one is already out. Ordered commands thus reach the node one
    /// at a time, in order, and each one's deadline counts from when it can actually start.
    /// Returns their signed envelopes, oldest first.
    pub async fn take_deliverable(
        &self,
        node: &str,
        now_ms: i64,
        grace_ms: i64,
        limit: i64,
    ) -> Result<Vec<Command>, StoreError> {
        // One read decides (most polls find nothing, and an idle poll must never take
        // SQLite's write lock from ingest): the node's open commands, oldest first.
        let open = sqlx::query(
            "SELECT id, state, parallel, delivered_at, not_after FROM commands \
             WHERE node = $1 AND state IN ('queued', 'delivered', 'running') ORDER BY id LIMIT 1000",
        )
        .bind(node)
        .fetch_all(self.pool())
        .await?;
        let mut parallel = Vec::new();
        let mut ordered_candidate = None;
        let mut ordered_out = false;
        // Handed out a while ago and not heard of since: the answer to that poll may have been
        // lost on the way. Send them again (the node ignores ids it already has); at most once
        // per RESEND_AFTER, so a node that is merely slow to report is not polled in a loop.
        let mut resend = Vec::new();
        for row in &open {
            let id: String = row.try_get(0)?;
            let state: String = row.try_get(1)?;
            let is_parallel = row.try_get::<i64, _>(2)? == 1;
            let delivered_at: Option<i64> = row.try_get(3)?;
            let not_after: i64 = row.try_get(4)?;
            match state.as_str() {
                "queued" if not_after >= now_ms => {
                    if is_parallel {
                        if (parallel.len() as i64) < limit {
                            parallel.push(id);
                        }
                    } else if ordered_candidate.is_none() {
                        ordered_candidate = Some(id);
                    }
                }
                "queued" => {}
                other => {
                    ordered_out |= !is_parallel;
                    if other == "delivered"
                        && delivered_at.is_some_and(|t| t < now_ms - RESEND_AFTER_MS)
                        && (resend.len() as i64) < limit
                    {
                        resend.push(id);
                    }
                }
            }
        }
        let ordered = if ordered_out { None } else { ordered_candidate };
        let ids: Vec<String> = parallel.into_iter().chain(ordered).collect();
        if ids.is_empty() && resend.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        let mut commands = Vec::with_capacity(ids.len() + resend.len());
        let mut logs = Vec::with_capacity(ids.len() + resend.len());
        for id in &resend {
            let row = sqlx::query(
                "UPDATE commands SET delivered_at = $2 \
                 WHERE id = $1 AND state = 'delivered' AND delivered_at < $3 RETURNING envelope",
            )
            .bind(id)
            .bind(now_ms)
            .bind(now_ms - RESEND_AFTER_MS)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let envelope: String = row.try_get(0)?;
            logs.push(LogRow {
                id: id.clone(),
                ts: now_ms,
                state: "delivered",
                detail: "sent again: no word from the node since it was handed out".into(),
            });
            commands.push(
                serde_json::from_str(&envelope)
                    .map_err(|e| StoreError::Corrupt(format!("command envelope: {e}")))?,
            );
        }
        for id in &ids {
            // Still queued? (Another controller may have taken it meanwhile.)
            let row = sqlx::query(
                "UPDATE commands SET state = 'delivered', attempts = attempts + 1, \
                 delivered_at = $2, deadline = $2 + timeout_ms + $3 \
                 WHERE id = $1 AND state = 'queued' RETURNING envelope, attempts",
            )
            .bind(id)
            .bind(now_ms)
            .bind(grace_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let envelope: String = row.try_get(0)?;
            let attempts: i64 = row.try_get(1)?;
            logs.push(LogRow {
                id: id.clone(),
                ts: now_ms,
                state: "delivered",
                detail: format!("attempt {attempts}"),
            });
            commands.push(
                serde_json::from_str(&envelope)
                    .map_err(|e| StoreError::Corrupt(format!("command envelope: {e}")))?,
            );
        }
        self.insert_logs(&mut tx, &logs).await?;
        tx.commit().await?;
        commands.sort_by(|a: &Command, b| a.id.cmp(&b.id));
        Ok(commands)
    }

    /// Applies reports (each from the node it names), all in one transaction. `running` moves
    /// a queued or delivered command on; an outcome ends it (and corrects a `timed_out` the
    /// controller declared while the node was silent). One outcome per report, in order.
    ///
    /// `event_of` says which event-log entry (if any) an applied report makes; it is written in
    /// the same transaction.
    pub async fn apply_reports(
        &self,
        reports: &[(&str, &CommandReport)],
        grace_ms: i64,
        now_ms: i64,
        event_of: impl Fn(&Applied, &CommandReport) -> Option<NewEvent>,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut outcomes = Vec::with_capacity(reports.len());
        let mut logs = Vec::new();
        let mut events = Vec::new();
        for (node, report) in reports {
            let outcome = apply_one(&mut tx, node, report, grace_ms, now_ms).await?;
            if let ApplyOutcome::Applied(applied) = &outcome {
                logs.push(log_row(report, now_ms));
                events.extend(event_of(applied, report));
            }
            outcomes.push(outcome);
        }
        self.insert_logs(&mut tx, &logs).await?;
        self.insert_events(&mut tx, now_ms, &events).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Moves commands whose time is up: queued past `not_after` → expired; delivered or
    /// running past their deadline → queued again while retries remain, else timed out.
    pub async fn sweep_commands(&self, now_ms: i64) -> Result<Vec<Swept>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut swept = Vec::new();
        let statements: [(&str, CommandState, &str); 3] = [
            (
                // A command on the NATS stream may have been taken just before its TTL ran out:
                // give its answer the time it may take.
                "UPDATE commands SET state = 'expired', finished_at = $1 \
                 WHERE state = 'queued' AND ((published = 0 AND not_after < $1) \
                 OR (published = 1 AND not_after + timeout_ms + 60000 < $1)) RETURNING id, node",
                CommandState::Expired,
                "the node did not take it before its TTL ran out",
            ),
            (
                "UPDATE commands SET state = 'timed_out', finished_at = $1, deadline = NULL \
                 WHERE state IN ('delivered', 'running') AND deadline < $1 \
                 AND attempts > retries RETURNING id, node",
                CommandState::TimedOut,
                "no answer from the node within the timeout, and no retries left",
            ),
            (
                "UPDATE commands SET state = 'queued', deadline = NULL, published = 0 \
                 WHERE state IN ('delivered', 'running') AND deadline < $1 \
                 AND attempts <= retries AND not_after >= $1 RETURNING id, node",
                CommandState::Queued,
                "no answer from the node within the timeout: delivering again",
            ),
        ];
        for (sql, state, detail) in statements {
            let rows = sqlx::query(sql).bind(now_ms).fetch_all(&mut *tx).await?;
            for row in &rows {
                let id: String = row.try_get(0)?;
                log(&mut tx, &id, now_ms, state.as_str(), detail).await?;
                swept.push(Swept {
                    id,
                    node: row.try_get(1)?,
                    state,
                });
            }
        }
        // Past their TTL with retries left: nothing more can run.
        let rows = sqlx::query(
            "UPDATE commands SET state = 'timed_out', finished_at = $1, deadline = NULL \
             WHERE state IN ('delivered', 'running') AND deadline < $1 RETURNING id, node",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let id: String = row.try_get(0)?;
            log(
                &mut tx,
                &id,
                now_ms,
                "timed_out",
                "no answer from the node, and its TTL ran out",
            )
            .await?;
            swept.push(Swept {
                id,
                node: row.try_get(1)?,
                state: CommandState::TimedOut,
            });
        }
        tx.commit().await?;
        Ok(swept)
    }

    /// Cancels a command that no node has taken yet. Returns the state it is in afterwards.
    pub async fn cancel_command(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<CommandState>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            // Not once it is on the NATS stream: its node may already have it.
            "UPDATE commands SET state = 'cancelled', finished_at = $2 \
             WHERE id = $1 AND state = 'queued' AND published = 0",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            log(
                &mut tx,
                id,
                now_ms,
                "cancelled",
                &format!("cancelled by {by}"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(self.command(id).await?.map(|c| c.state))
    }

    /// Queued commands not yet put on the NATS stream (new, or queued again for redelivery).
    pub async fn unpublished_commands(&self, limit: i64) -> Result<Vec<Command>, StoreError> {
        let rows = sqlx::query(
            "SELECT envelope FROM commands WHERE state = 'queued' AND published = 0 \
             ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let envelope: String = row.try_get(0)?;
                serde_json::from_str(&envelope)
                    .map_err(|e| StoreError::Corrupt(format!("command envelope: {e}")))
            })
            .collect()
    }

    /// Marks commands as on the NATS stream. They stay queued (the node may be offline for
    /// hours) until the node reports that it took them; the attempt's deadline starts then.
    pub async fn mark_published(&self, ids: &[String], now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut marked = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE commands SET published = 1 WHERE state = 'queued' AND published = 0 \
                 AND id IN ({}) RETURNING id",
                super::durable::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                marked.push(LogRow {
                    id: row.try_get(0)?,
                    ts: now_ms,
                    state: "published",
                    detail: "on the NATS command stream".into(),
                });
            }
        }
        self.insert_logs(&mut tx, &marked).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The stored ones of these commands (any order).
    pub async fn commands_by_ids(&self, ids: &[String]) -> Result<Vec<CommandRecord>, StoreError> {
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT {COLUMNS} FROM commands WHERE id IN ({})",
                super::durable::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(self.pool()).await? {
                records.push(record_from_row(&row)?);
            }
        }
        Ok(records)
    }

    /// The id, state and attempts of commands, newest first, optionally of one node and in one
    /// state: what a live view compares, without reading every command's output.
    pub async fn command_states(
        &self,
        node: Option<&str>,
        state: Option<CommandState>,
        limit: i64,
    ) -> Result<Vec<(String, CommandState, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, state, attempts FROM commands WHERE ($1 IS NULL OR node = $1) \
             AND ($2 IS NULL OR state = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(node)
        .bind(state.map(|s| s.as_str()))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get(1)?;
                Ok((
                    r.try_get(0)?,
                    CommandState::parse(&state)
                        .map_err(|e| StoreError::Corrupt(format!("command state: {e}")))?,
                    r.try_get(2)?,
                ))
            })
            .collect()
    }

    /// Commands, newest first, optionally of one node and in one state.
    pub async fn commands(
        &self,
        node: Option<&str>,
        state: Option<CommandState>,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM commands WHERE ($1 IS NULL OR node = $1) \
             AND ($2 IS NULL OR state = $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(node)
        .bind(state.map(|s| s.as_str()))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// A command's audit trail, oldest first.
    pub async fn command_log(&self, id: &str) -> Result<Vec<CommandLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, state, detail FROM command_log WHERE command_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(CommandLogEntry {
                    ts: time(row.try_get(0)?),
                    state: row.try_get(1)?,
                    detail: row.try_get(2)?,
                })
            })
            .collect()
    }
}

/// What one report did.
#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    Applied(Applied),
    /// Already final, or a report that does not move it on.
    Unchanged,
    /// No such command of this node (yet: over NATS a report can outrun its command).
    Unknown,
}

async fn apply_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
    report: &CommandReport,
    grace_ms: i64,
    now_ms: i64,
) -> Result<ApplyOutcome, StoreError> {
    let row = if report.state == CommandState::Running {
        sqlx::query(
            "UPDATE commands SET state = 'running', started_at = $3, \
             delivered_at = COALESCE(delivered_at, $3), \
             attempts = CASE WHEN state = 'queued' THEN attempts + 1 ELSE attempts END, \
             deadline = $3 + timeout_ms + $4 \
             WHERE id = $1 AND node = $2 AND state IN ('queued', 'delivered') \
             RETURNING envelope",
        )
        .bind(&report.id)
        .bind(node)
        .bind(now_ms)
        .bind(grace_ms)
        .fetch_optional(&mut **tx)
        .await?
    } else {
        let result = report
            .result
            .as_ref()
            .map(|r| serde_json::to_string(r).expect("results serialise"));
        sqlx::query(
            "UPDATE commands SET state = $3, result = $4, finished_at = $5, deadline = NULL, \
             delivered_at = COALESCE(delivered_at, $5), \
             attempts = CASE WHEN attempts = 0 THEN 1 ELSE attempts END \
             WHERE id = $1 AND node = $2 \
             AND state IN ('queued', 'delivered', 'running', 'timed_out') \
             RETURNING envelope",
        )
        .bind(&report.id)
        .bind(node)
        .bind(report.state.as_str())
        .bind(result)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await?
    };
    let Some(row) = row else {
        let exists = sqlx::query("SELECT 1 FROM commands WHERE id = $1 AND node = $2")
            .bind(&report.id)
            .bind(node)
            .fetch_optional(&mut **tx)
            .await?;
        return Ok(match exists {
            Some(_) => ApplyOutcome::Unchanged,
            None => ApplyOutcome::Unknown,
        });
    };
    let envelope: String = row.try_get(0)?;
    let command: Command = serde_json::from_str(&envelope)
        .map_err(|e| StoreError::Corrupt(format!("command envelope: {e}")))?;
    Ok(ApplyOutcome::Applied(Applied {
        node: command.node,
        method: command.method,
        args: command.args,
    }))
}

/// One line of the audit trail, to be written.
struct LogRow {
    id: String,
    ts: i64,
    state: &'static str,
    detail: String,
}

/// The audit line of an applied report.
fn log_row(report: &CommandReport, now_ms: i64) -> LogRow {
    let detail = match report.result.as_ref() {
        Some(r) => match (&r.error, r.exit_code) {
            // Plain TEXT: a NUL in a node's error would be refused by PostgreSQL.
            (Some(e), _) => crate::model::escape_nul(e).into_owned(),
            (None, Some(code)) => format!("exit code {code} after {} ms", r.duration_ms),
            (None, None) => String::new(),
        },
        None => String::new(),
    };
    LogRow {
        id: report.id.clone(),
        ts: now_ms,
        state: report.state.as_str(),
        detail,
    }
}

async fn log(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    ts: i64,
    state: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO command_log (command_id, ts, state, detail) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(ts)
        .bind(state)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
