//! Heartbeats kept durably, and the transitions they make, each claimed by one conditional
//! statement so that however many controllers share the database, each transition happens once:
//! a success that finds its service down is the recovery, and a fail that finds it anything but
//! down is its fall (each upsert returns the state it replaced); a deadline passing is claimed by
//! the `UPDATE … WHERE deadline <= now AND state IN ('new', 'up')` that moves it to down. A
//! timed run (a `start` with a max runtime) only brings the deadline forward, so a hung job is
//! that same claim. Each transition writes its event and its alert in the same transaction.
//!
//! Takes validated pulses (`crate::heartbeat`); never decides when to look (that is the
//! monitor's, `pipeline::heartbeats`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::durable::{AnyQuery, Durable, StoreError};
use super::events::NewEvent;
use crate::heartbeat::{AlertRoute, Heartbeat, HeartbeatState, Owner, Pulse, Signal};

/// A pulse as the writer hands it over: when it arrived (its deadline counts from then, not
/// from when its group was written), and how many pulses of the service it stands for.
#[derive(Debug, Clone)]
pub struct Received {
    pub pulse: Pulse,
    /// Who sent it: it may pulse only a heartbeat it owns (an operator: any).
    pub by: Owner,
    pub at_ms: i64,
    pub count: i64,
    /// Success, start or fail (an agent's automatic pulse: success).
    pub signal: Signal,
}

/// What a group of pulses did: the outcome of each stored, and the services refused because
/// they belong to someone else (with their owner, as stored).
#[derive(Debug, Default)]
pub struct PulseResults {
    pub stored: Vec<PulseOutcome>,
    pub refused: Vec<(String, String)>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    Done,
    NotFound,
    /// It belongs to someone else (its owner, as stored).
    NotOwner(String),
}

/// What one pulse did.
#[derive(Debug, Clone)]
pub struct PulseOutcome {
    /// The heartbeat as this pulse left it.
    pub heartbeat: Heartbeat,
    /// It was down: this pulse is its recovery (reported by this call, once).
    pub recovered: bool,
}

/// A reported change: down, or up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub service: String,
    pub node: Option<String>,
    pub kind: TransitionKind,
    pub level: i64,
    pub message: String,
    pub alert: Option<AlertRoute>,
    /// The event's fields beside `heartbeat` (a fail's exit status and output, a hung run's
    /// start).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    Down,
    Recovered,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Recovered => "recovered",
        }
    }
}

/// An alert waiting for (or handed to) the notifier.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertEntry {
    pub id: i64,
    pub ts: String,
    pub source: String,
    pub subject: String,
    pub kind: String,
    pub level: i64,
    pub message: String,
    pub channel: Option<String>,
    pub target: Option<String>,
    pub delivered_at: Option<String>,
}

/// Most overdue services claimed in one statement; the monitor loops until none are left.
const CLAIM_CHUNK: i64 = 1000;

/// The state and deadline are tested again on each row as it is updated, so when two
/// controllers pick the same service only the first update matches.
const CLAIM_SQLITE: &str = "UPDATE heartbeats SET prev_state = state, prev_since = state_since, \
     state = 'down', state_since = $1, updated_at = $1 \
     WHERE service IN (SELECT service FROM heartbeats \
       WHERE state IN ('new', 'up') AND deadline <= $1 ORDER BY deadline LIMIT $2) \
     AND state IN ('new', 'up') AND deadline <= $1 \
     RETURNING service, node, last_pulse, next_in_ms, grace_ms, alert_channel, alert_target, \
     started_at, run_deadline";
const CLAIM_POSTGRES: &str = "UPDATE heartbeats SET prev_state = state, prev_since = state_since, \
     state = 'down', state_since = $1, updated_at = $1 \
     WHERE service IN (SELECT service FROM heartbeats \
       WHERE state IN ('new', 'up') AND deadline <= $1 ORDER BY deadline LIMIT $2 \
       FOR UPDATE SKIP LOCKED) \
     AND state IN ('new', 'up') AND deadline <= $1 \
     RETURNING service, node, last_pulse, next_in_ms, grace_ms, alert_channel, alert_target, \
     started_at, run_deadline";

/// Every signal's row for a heartbeat it creates (16 columns, bound by `bind_received`).
const UPSERT: &str = "INSERT INTO heartbeats (service, node, next_in_ms, grace_ms, \
     alert_channel, alert_target, state, last_pulse, deadline, state_since, pulses, \
     created_at, updated_at, owner, started_at, run_deadline) VALUES ";
/// A success: up, the deadline counted from now, the run (if one was timed) over. The owner
/// is set by the first pulse and never changed by a later one.
const SUCCESS: &str = " ON CONFLICT (service) DO UPDATE SET \
     node = COALESCE(excluded.node, heartbeats.node), \
     next_in_ms = excluded.next_in_ms, grace_ms = excluded.grace_ms, \
     alert_channel = COALESCE(excluded.alert_channel, heartbeats.alert_channel), \
     alert_target = COALESCE(excluded.alert_target, heartbeats.alert_target), \
     prev_state = heartbeats.state, prev_since = heartbeats.state_since, \
     state = 'up', \
     state_since = CASE WHEN heartbeats.state = 'up' THEN heartbeats.state_since \
                   ELSE excluded.state_since END, \
     last_pulse = excluded.last_pulse, deadline = excluded.deadline, \
     pulses = heartbeats.pulses + excluded.pulses, updated_at = excluded.updated_at, \
     started_at = NULL, run_deadline = NULL ";
/// A start: the state stays; the run is timed, and the deadline is the earlier of the
/// period's (from the last success) and the run's.
const START: &str = " ON CONFLICT (service) DO UPDATE SET \
     node = COALESCE(excluded.node, heartbeats.node), \
     next_in_ms = excluded.next_in_ms, grace_ms = excluded.grace_ms, \
     alert_channel = COALESCE(excluded.alert_channel, heartbeats.alert_channel), \
     alert_target = COALESCE(excluded.alert_target, heartbeats.alert_target), \
     started_at = excluded.started_at, run_deadline = excluded.run_deadline, \
     deadline = CASE WHEN excluded.run_deadline IS NOT NULL AND excluded.run_deadline < \
                  heartbeats.last_pulse + excluded.next_in_ms + excluded.grace_ms \
                THEN excluded.run_deadline \
                ELSE heartbeats.last_pulse + excluded.next_in_ms + excluded.grace_ms END, \
     updated_at = excluded.updated_at ";
/// A fail: down at once (since now, unless it was down already), the run over. The state it
/// replaced says whether this is the transition.
const FAIL: &str = " ON CONFLICT (service) DO UPDATE SET \
     node = COALESCE(excluded.node, heartbeats.node), \
     next_in_ms = excluded.next_in_ms, grace_ms = excluded.grace_ms, \
     alert_channel = COALESCE(excluded.alert_channel, heartbeats.alert_channel), \
     alert_target = COALESCE(excluded.alert_target, heartbeats.alert_target), \
     prev_state = heartbeats.state, prev_since = heartbeats.state_since, \
     state = 'down', \
     state_since = CASE WHEN heartbeats.state = 'down' THEN heartbeats.state_since \
                   ELSE excluded.state_since END, \
     deadline = excluded.deadline, updated_at = excluded.updated_at, \
     started_at = NULL, run_deadline = NULL ";
/// Only the owner, or an operator, moves a heartbeat.
const OWNED: &str = "WHERE (excluded.owner = 'operator' OR heartbeats.owner = excluded.owner) ";
/// What every upsert returns: the heartbeat, then the state it replaced and since when (a
/// created row: NULL).
const RETURNING: &str = "RETURNING service, node, next_in_ms, grace_ms, alert_channel, \
     alert_target, state, last_pulse, deadline, state_since, pulses, owner, started_at, \
     run_deadline, prev_state, prev_since";

/// Those of `pulses` whose signal `is` (borrowed: a group of thousands is not copied).
fn signal_filter(pulses: &[Received], is: impl Fn(&Signal) -> bool) -> Vec<&Received> {
    pulses.iter().filter(|r| is(&r.signal)).collect()
}

/// The row a pulse creates, in `UPSERT`'s columns: a success is new (pulsed once), a start
/// new with its run timed, a fail down; the deadline is the period's after `at_ms`, or the
/// run's when that comes first.
fn bind_received<'r>(q: AnyQuery<'r>, r: &'r Received, now_ms: i64) -> AnyQuery<'r> {
    let (at, p) = (r.at_ms, &r.pulse);
    let (_, period_deadline) = p.due_and_deadline(at);
    let (state, pulses, started, run_deadline) = match &r.signal {
        Signal::Success => ("new", r.count, None, None),
        Signal::Start { max_runtime_ms } => {
            ("new", 0, Some(at), max_runtime_ms.map(|max| at + max))
        }
        Signal::Fail(_) => ("down", 0, None, None),
    };
    let deadline = run_deadline.map_or(period_deadline, |run: i64| run.min(period_deadline));
    q.bind(&p.service)
        .bind(&p.node)
        .bind(p.next_in_ms)
        .bind(p.grace_ms)
        .bind(p.alert.as_ref().map(|a| a.channel.clone()))
        .bind(p.alert.as_ref().map(|a| a.target.clone()))
        .bind(state)
        .bind(at)
        .bind(deadline)
        .bind(at)
        .bind(pulses)
        .bind(now_ms)
        .bind(now_ms)
        .bind(r.by.stored())
        .bind(started)
        .bind(run_deadline)
}

const COLUMNS: &str = "service, node, next_in_ms, grace_ms, alert_channel, alert_target, state, \
     last_pulse, deadline, state_since, pulses, owner, started_at, run_deadline";

impl Durable {
    /// Records pulses (at most one per service: the caller merges repeats) and returns what
    /// they did. Acknowledge a pulse only after this returns. A pulse touches a heartbeat only
    /// if its sender owns it (or is an operator); the others come back refused, with the
    /// owner. Without `revive`, a pulse leaves a cancelled heartbeat alone (and returns
    /// nothing for it): an agent's automatic pulse must not bring back a node that was taken
    /// out of the fleet.
    ///
    /// Each signal is one upsert per group (`SUCCESS`, `START`, `FAIL`); a fail's transition
    /// to down is the state its upsert replaced (anything but `down`), so however many
    /// controllers share the database it is reported once, as a recovery is.
    pub async fn pulse(
        &self,
        pulses: &[Received],
        now_ms: i64,
        revive: bool,
    ) -> Result<PulseResults, StoreError> {
        static REVIVING: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
        static SPARING: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
        static STARTING: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
        static FAILING: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
        let success: &'static str = if revive {
            REVIVING.get_or_init(|| format!("{SUCCESS}{OWNED}{RETURNING}").leak())
        } else {
            SPARING.get_or_init(|| {
                format!("{SUCCESS}{OWNED}AND heartbeats.state <> 'cancelled' {RETURNING}").leak()
            })
        };
        let start = STARTING.get_or_init(|| format!("{START}{OWNED}{RETURNING}").leak());
        let fail = FAILING.get_or_init(|| format!("{FAIL}{OWNED}{RETURNING}").leak());
        let mut tx = self.pool().begin().await?;
        let mut rows = Vec::with_capacity(pulses.len());
        for (suffix, of_signal) in [
            (
                success,
                signal_filter(pulses, |s| matches!(s, Signal::Success)),
            ),
            (
                start,
                signal_filter(pulses, |s| matches!(s, Signal::Start { .. })),
            ),
            (
                fail,
                signal_filter(pulses, |s| matches!(s, Signal::Fail(_))),
            ),
        ] {
            if of_signal.is_empty() {
                continue;
            }
            rows.extend(
                self.insert_rows(&mut tx, UPSERT, 16, suffix, &of_signal, |q, r| {
                    bind_received(q, r, now_ms)
                })
                .await?,
            );
        }
        // Only starts and fails are looked up by service: most groups hold successes alone.
        let sent: std::collections::HashMap<&str, &Received> = pulses
            .iter()
            .filter(|r| !matches!(r.signal, Signal::Success))
            .map(|r| (r.pulse.service.as_str(), r))
            .collect();
        let mut by_service = std::collections::HashMap::with_capacity(rows.len());
        let mut transitions = Vec::new();
        let mut failed_again = Vec::new();
        for row in &rows {
            let heartbeat = heartbeat_from_row(row, now_ms)?;
            let prev: Option<String> = row.try_get(14)?;
            let prev_since: Option<i64> = row.try_get(15)?;
            let was_down = prev.as_deref() == Some("down");
            let signal = sent
                .get(heartbeat.service.as_str())
                .map(|r| &r.signal)
                .unwrap_or(&Signal::Success);
            let mut recovered = false;
            match signal {
                Signal::Success if was_down => {
                    recovered = true;
                    let down_for = now_ms - prev_since.unwrap_or(now_ms);
                    transitions.push(Transition {
                        message: format!(
                            "{} is up again after {} down",
                            heartbeat.service,
                            crate::timefmt::span(down_for)
                        ),
                        service: heartbeat.service.clone(),
                        node: heartbeat.node.clone(),
                        kind: TransitionKind::Recovered,
                        level: 2,
                        alert: heartbeat.alert.clone(),
                        fields: Default::default(),
                    });
                }
                // Down already (a deadline, or an earlier fail): this failure is logged, and
                // nothing is raised twice.
                Signal::Fail(failure) if was_down => failed_again.push(NewEvent {
                    node: heartbeat.node.clone(),
                    service: Some(heartbeat.service.clone()),
                    level: 4,
                    message: format!("{} (still down)", failure.message(&heartbeat.service)),
                    fields: {
                        let mut fields = failure.fields();
                        fields.insert("heartbeat".into(), "failed".into());
                        fields.into()
                    },
                    category: "event",
                }),
                Signal::Fail(failure) => transitions.push(Transition {
                    message: failure.message(&heartbeat.service),
                    service: heartbeat.service.clone(),
                    node: heartbeat.node.clone(),
                    kind: TransitionKind::Down,
                    level: 4,
                    alert: heartbeat.alert.clone(),
                    fields: failure.fields(),
                }),
                Signal::Success | Signal::Start { .. } => {}
            }
            by_service.insert(
                heartbeat.service.clone(),
                PulseOutcome {
                    heartbeat,
                    recovered,
                },
            );
        }
        self.record_transitions(&mut tx, &transitions, now_ms)
            .await?;
        if !failed_again.is_empty() {
            self.insert_events(&mut tx, now_ms, &failed_again).await?;
        }
        // A pulse that touched nothing met another owner's heartbeat (or, sparing, a
        // cancelled one: not a refusal). Read the owners in the same transaction.
        let mut refused = Vec::new();
        if revive {
            for r in pulses
                .iter()
                .filter(|r| !by_service.contains_key(&r.pulse.service))
            {
                let owner: Option<String> =
                    sqlx::query_scalar("SELECT owner FROM heartbeats WHERE service = $1")
                        .bind(&r.pulse.service)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(owner) = owner {
                    refused.push((r.pulse.service.clone(), owner));
                }
            }
        }
        tx.commit().await?;
        Ok(PulseResults {
            stored: by_service.into_values().collect(),
            refused,
        })
    }

    /// Moves every watched service whose deadline has passed to down, and returns those this
    /// call moved (another controller's claim is not returned here).
    pub async fn claim_overdue(&self, now_ms: i64) -> Result<Vec<Transition>, StoreError> {
        let mut all = Vec::new();
        loop {
            let mut tx = self.pool().begin().await?;
            let sql = match self.backend() {
                // Rows a pulse is writing right now are skipped, not waited for (that pulse
                // moves their deadline anyway), so a claim and a pulse group never lock each
                // other's rows in opposite orders.
                super::durable::Backend::Postgres => CLAIM_POSTGRES,
                super::durable::Backend::Sqlite => CLAIM_SQLITE,
            };
            let rows = sqlx::query(sql)
                .bind(now_ms)
                .bind(CLAIM_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in &rows {
                let service: String = row.try_get(0)?;
                let last: i64 = row.try_get(2)?;
                let next_in: i64 = row.try_get(3)?;
                let grace: i64 = row.try_get(4)?;
                let started: Option<i64> = row.try_get(7)?;
                let run_deadline: Option<i64> = row.try_get(8)?;
                let mut fields = serde_json::Map::new();
                let message = match (started, run_deadline) {
                    // A run that started and neither succeeded nor failed in time: hung.
                    (Some(started), Some(run_deadline)) if run_deadline <= now_ms => {
                        let max_runtime = run_deadline - started;
                        fields.insert("signal".into(), "start".into());
                        fields.insert("started".into(), crate::timefmt::rfc3339(started).into());
                        fields.insert("max_runtime_ms".into(), max_runtime.into());
                        format!(
                            "{service} is down: its run started at {} and did not finish within {}",
                            crate::timefmt::rfc3339(started),
                            crate::timefmt::span(max_runtime)
                        )
                    }
                    _ => {
                        let grace_text = if grace > 0 {
                            format!(" + {} grace", crate::timefmt::span(grace))
                        } else {
                            String::new()
                        };
                        format!(
                            "{service} is down: no pulse since {} (expected every {}{grace_text})",
                            crate::timefmt::rfc3339(last),
                            crate::timefmt::span(next_in)
                        )
                    }
                };
                claimed.push(Transition {
                    message,
                    service,
                    node: row.try_get(1)?,
                    kind: TransitionKind::Down,
                    level: 4,
                    alert: route(row, 5)?,
                    fields,
                });
            }
            self.record_transitions(&mut tx, &claimed, now_ms).await?;
            tx.commit().await?;
            let done = (claimed.len() as i64) < CLAIM_CHUNK;
            all.extend(claimed);
            if done {
                return Ok(all);
            }
        }
    }

    /// Moves the deadlines of agents' own heartbeats that passed while no controller watched,
    /// or pass within `grace`, to `now + grace`: their agents were sending and will be back
    /// within a retry. Returns how many were moved.
    pub async fn grace_overdue_nodes(&self, now_ms: i64, grace_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE heartbeats SET deadline = $1, updated_at = $2 \
             WHERE service LIKE 'node:%' AND state IN ('new', 'up') AND deadline < $1",
        )
        .bind(now_ms + grace_ms)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// How many heartbeats are down now.
    pub async fn down_heartbeats(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM heartbeats WHERE state = 'down'")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The earliest deadline of a watched service.
    pub async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(deadline) FROM heartbeats WHERE state IN ('new', 'up')")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Of `services`, those no watched heartbeat has yet (a cancelled one pulsed again counts
    /// as new): the quota's first look, one statement per 500 services.
    pub async fn unwatched_services(
        &self,
        services: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut missing: std::collections::HashSet<String> =
            services.iter().map(|s| (*s).to_owned()).collect();
        for chunk in services.chunks(500) {
            let sql = format!(
                "SELECT service FROM heartbeats WHERE service IN ({}) AND state <> 'cancelled'",
                super::durable::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for service in chunk {
                query = query.bind(*service);
            }
            for found in query.fetch_all(self.pool()).await? {
                missing.remove(&found);
            }
        }
        Ok(missing)
    }

    /// How many watched heartbeats each of `owners` has (absent: none), one statement per
    /// 500 owners.
    pub async fn watched_counts(
        &self,
        owners: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let mut counts = std::collections::HashMap::new();
        for chunk in owners.chunks(500) {
            let sql = format!(
                "SELECT owner, COUNT(*) FROM heartbeats WHERE owner IN ({}) \
                 AND state <> 'cancelled' GROUP BY owner",
                super::durable::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
            for owner in chunk {
                query = query.bind(owner);
            }
            counts.extend(query.fetch_all(self.pool()).await?);
        }
        Ok(counts)
    }

    /// Withdraws a service from watching, if `by` owns it (an operator: any). Whether a
    /// node's own heartbeat may be cancelled at all is the pipeline's rule.
    pub async fn cancel_heartbeat(
        &self,
        service: &str,
        by: &Owner,
        now_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        let done = sqlx::query(
            "UPDATE heartbeats SET prev_state = state, prev_since = state_since, \
             state = 'cancelled', state_since = CASE WHEN state = 'cancelled' THEN state_since \
             ELSE $2 END, updated_at = $2 WHERE service = $1 AND ($3 = 'operator' OR owner = $3)",
        )
        .bind(service)
        .bind(now_ms)
        .bind(by.stored())
        .execute(self.pool())
        .await?;
        if done.rows_affected() > 0 {
            return Ok(Cancelled::Done);
        }
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM heartbeats WHERE service = $1")
                .bind(service)
                .fetch_optional(self.pool())
                .await?;
        Ok(match owner {
            Some(owner) => Cancelled::NotOwner(owner),
            None => Cancelled::NotFound,
        })
    }

    /// Heartbeats by service name after `after`, at most `limit`, read as of `now_ms`.
    pub async fn heartbeats(
        &self,
        now_ms: i64,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Heartbeat>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM heartbeats WHERE service > $1 ORDER BY service LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| heartbeat_from_row(r, now_ms)).collect()
    }

    /// The heartbeats of one node (its agent's `node:<name>` and any service naming it), by
    /// service, at most `limit`.
    pub async fn heartbeats_of_node(
        &self,
        node: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<Heartbeat>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM heartbeats WHERE node = $1 ORDER BY service LIMIT $2"
        ))
        .bind(node)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| heartbeat_from_row(r, now_ms)).collect()
    }

    pub async fn heartbeat(
        &self,
        service: &str,
        now_ms: i64,
    ) -> Result<Option<Heartbeat>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM heartbeats WHERE service = $1"
        ))
        .bind(service)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| heartbeat_from_row(&r, now_ms)).transpose()
    }

    /// Alerts, newest first.
    pub async fn alerts(&self, limit: i64) -> Result<Vec<AlertEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, ts, source, subject, kind, level, message, channel, target, delivered_at \
             FROM alerts ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertEntry {
                    id: r.try_get(0)?,
                    ts: crate::timefmt::rfc3339(r.try_get(1)?),
                    source: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    level: r.try_get(5)?,
                    message: r.try_get(6)?,
                    channel: r.try_get(7)?,
                    target: r.try_get(8)?,
                    delivered_at: r.try_get::<Option<i64>, _>(9)?.map(crate::timefmt::rfc3339),
                })
            })
            .collect()
    }

    /// The event and the alert of each transition, inside the transaction that made it.
    async fn record_transitions(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        transitions: &[Transition],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if transitions.is_empty() {
            return Ok(());
        }
        let events: Vec<NewEvent> = transitions
            .iter()
            .map(|t| NewEvent {
                node: t.node.clone(),
                service: Some(t.service.clone()),
                level: t.level,
                message: t.message.clone(),
                fields: {
                    let mut fields = t.fields.clone();
                    fields.insert("heartbeat".into(), t.kind.as_str().into());
                    fields.into()
                },
                category: "event",
            })
            .collect();
        self.insert_events(tx, now_ms, &events).await?;
        self.insert_rows(
            tx,
            "INSERT INTO alerts (ts, source, subject, kind, level, message, channel, target) \
             VALUES ",
            8,
            "",
            transitions,
            |q, t| {
                q.bind(now_ms)
                    .bind("heartbeat")
                    .bind(&t.service)
                    .bind(t.kind.as_str())
                    .bind(t.level)
                    .bind(&t.message)
                    .bind(t.alert.as_ref().map(|a| a.channel.clone()))
                    .bind(t.alert.as_ref().map(|a| a.target.clone()))
            },
        )
        .await?;
        Ok(())
    }
}

/// The alert route in columns `at` and `at + 1`, when both are set.
fn route(row: &AnyRow, at: usize) -> Result<Option<AlertRoute>, StoreError> {
    let channel: Option<String> = row.try_get(at)?;
    let target: Option<String> = row.try_get(at + 1)?;
    Ok(match (channel, target) {
        (Some(channel), Some(target)) => Some(AlertRoute { channel, target }),
        _ => None,
    })
}

fn heartbeat_from_row(row: &AnyRow, now_ms: i64) -> Result<Heartbeat, StoreError> {
    let next_in_ms: i64 = row.try_get(2)?;
    let grace_ms: i64 = row.try_get(3)?;
    let stored: String = row.try_get(6)?;
    let last_pulse_ms: i64 = row.try_get(7)?;
    let deadline_ms: i64 = row.try_get(8)?;
    let mut state_since_ms: i64 = row.try_get(9)?;
    let started_ms: Option<i64> = row.try_get(12)?;
    let run_deadline_ms: Option<i64> = row.try_get(13)?;
    let due_ms = last_pulse_ms + next_in_ms;
    let state = HeartbeatState::read(&stored, due_ms, now_ms);
    if state == HeartbeatState::Late {
        state_since_ms = due_ms;
    }
    Ok(Heartbeat {
        service: row.try_get(0)?,
        node: row.try_get(1)?,
        state,
        next_in_ms,
        grace_ms,
        alert: route(row, 4)?,
        last_pulse: crate::timefmt::rfc3339(last_pulse_ms),
        last_pulse_ms,
        deadline: crate::timefmt::rfc3339(deadline_ms),
        deadline_ms,
        state_since: crate::timefmt::rfc3339(state_since_ms),
        state_since_ms,
        for_ms: (now_ms - state_since_ms).max(0),
        pulses: row.try_get(10)?,
        owner: row.try_get(11)?,
        started: started_ms.map(crate::timefmt::rfc3339),
        started_ms,
        run_deadline: run_deadline_ms.map(crate::timefmt::rfc3339),
        run_deadline_ms,
    })
}
