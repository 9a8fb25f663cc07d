//! The durable store: SQLite (embedded default) or PostgreSQL, through one code path.
//!
//! Both backends run the same SQL through sqlx's `Any` driver: `$N` placeholders (SQLite accepts
//! them), times as BIGINT milliseconds, JSON as TEXT, `ON CONFLICT` upserts. Only the
//! migrations differ (`migrations/sqlite`, `migrations/postgres`), where the column types must.
//!
//! This module knows nothing about HTTP or the wire format; it stores typed values and answers
//! queries. Everything it acknowledges is committed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::model::{BatchBody, Node, NodeName, NodeSource, Vitals};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A failure of the durable store, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database URL {0} is neither sqlite:// nor postgres://")]
    UnknownScheme(String),
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

/// A URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// One verified batch, ready to be written.
#[derive(Debug, Clone)]
pub struct IngestBatch {
    pub node: NodeName,
    pub instance: String,
    pub seq: u64,
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub body: BatchBody,
}

/// What writing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Newly stored.
    Stored,
    /// This (node, instance, seq) was stored before; nothing was written again.
    Duplicate,
}

/// A node's latest state as the ingest path records it.
#[derive(Debug, Clone)]
pub struct NodeStatusRow {
    pub name: String,
    pub last_seen_ms: i64,
    pub interval_ms: i64,
    pub vitals: Option<Vitals>,
}

/// One agent instance's ingest ledger for a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestStream {
    pub instance: String,
    pub last_seq: i64,
    pub batches: i64,
    /// Sequence numbers skipped and never filled: data lost between agent and controller.
    pub gaps: i64,
    /// Batches the agent says it dropped from a full spool.
    pub dropped: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// One stored batch, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub instance: String,
    pub seq: i64,
    pub received_at_ms: i64,
}

/// One time series: a metric name and label set on one node.
#[derive(Debug, Clone)]
pub struct Series {
    pub id: i64,
    pub collector: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Series ids already known to exist, so the hot path does not ask the database each time.
/// Owned by the single ingest writer.
#[derive(Debug, Default)]
pub struct SeriesCache {
    ids: HashMap<(String, String, String), i64>,
}

/// Rows per multi-row INSERT, largest first: a fixed set of statement shapes so prepared
/// statements are reused.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

fn values_sql(prefix: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * columns * 6);
    sql.push_str(prefix);
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { " (" } else { ", (" });
        for col in 0..columns {
            n += 1;
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
    sql
}

/// The durable store.
#[derive(Clone)]
pub struct Durable {
    pool: AnyPool,
    backend: Backend,
}

impl Durable {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnknownScheme(redact_url(url)));
        };
        if backend == Backend::Sqlite {
            ensure_sqlite_parent(url);
        }
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes a commit durable
                        // before it returns, which is what an acknowledgement promises.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- nodes -------------------------------------------------------------------------------

    /// Enrolls a node. Refuses a name that is already enrolled.
    pub async fn add_node(&self, node: &Node, now_ms: i64) -> Result<(), StoreError> {
        let allow = serde_json::to_string(&node.allow).expect("CIDRs serialise");
        let labels = serde_json::to_string(&node.labels).expect("labels serialise");
        let result = sqlx::query(
            "INSERT INTO nodes (name, key, allow, labels, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(node.name.as_str())
        .bind(&node.key)
        .bind(allow)
        .bind(labels)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "node {} is already enrolled; remove it first with `fleet node remove {}`",
                node.name, node.name
            )));
        }
        Ok(())
    }

    /// Removes an enrolled node; returns whether it existed. Its history stays until retention.
    pub async fn remove_node(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every enrolled node.
    pub async fn enrolled_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query("SELECT name, key, allow, labels FROM nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }

    /// Latest status of every node that ever sent.
    pub async fn node_statuses(&self) -> Result<Vec<NodeStatusRow>, StoreError> {
        let rows = sqlx::query("SELECT name, last_seen, interval_ms, vitals FROM node_status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(status_from_row).collect()
    }

    pub async fn node_status(&self, name: &str) -> Result<Option<NodeStatusRow>, StoreError> {
        let row = sqlx::query(
            "SELECT name, last_seen, interval_ms, vitals FROM node_status WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(status_from_row).transpose()
    }

    /// The ingest ledger of a node, one entry per agent instance, newest first.
    pub async fn ingest_streams(&self, node: &str) -> Result<Vec<IngestStream>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance, last_seq, batches, gaps, dropped, first_seen, last_seen \
             FROM ingest_streams WHERE node = $1 ORDER BY last_seen DESC",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IngestStream {
                    instance: row.try_get(0)?,
                    last_seq: row.try_get(1)?,
                    batches: row.try_get(2)?,
                    gaps: row.try_get(3)?,
                    dropped: row.try_get(4)?,
                    first_seen_ms: row.try_get(5)?,
                    last_seen_ms: row.try_get(6)?,
                })
            })
            .collect()
    }

    // ---- operator tokens ---------------------------------------------------------------------

    pub async fn add_token(&self, hash: &str, label: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_tokens (hash, label, created_at) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(label)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn token_hashes(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT hash FROM api_tokens")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    // ---- ingest ------------------------------------------------------------------------------

    /// Writes a group of batches in one transaction and returns one outcome per batch, in order.
    /// Nothing is visible (or acknowledged by the caller) before the commit returns.
    ///
    /// `keep_record` decides which records are kept durably as documents; their samples are
    /// always kept.
    pub async fn write_batches(
        &self,
        batches: &[IngestBatch],
        keep_record: &(dyn Fn(&crate::model::Record) -> bool + Sync),
        cache: &mut SeriesCache,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut new_series: Vec<((String, String, String), i64)> = Vec::new();
        let mut samples: Vec<(i64, i64, f64)> = Vec::new();
        let mut records: Vec<(&str, &str, i64, String)> = Vec::new();

        for batch in batches {
            let node = batch.node.as_str();
            let seq = i64::try_from(batch.seq)
                .map_err(|_| StoreError::Corrupt(format!("sequence {} too large", batch.seq)))?;
            let inserted = sqlx::query(
                "INSERT INTO batches (node, instance, seq, sent_at, received_at, records, samples) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(node)
            .bind(&batch.instance)
            .bind(seq)
            .bind(batch.sent_at_ms)
            .bind(batch.received_at_ms)
            .bind(batch.body.records.len() as i64)
            .bind(batch.body.sample_count() as i64)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                outcomes.push(IngestOutcome::Duplicate);
                continue;
            }
            outcomes.push(IngestOutcome::Stored);

            // Gaps: a jump forward counts the skipped numbers; a late arrival fills one.
            sqlx::query(
                "INSERT INTO ingest_streams \
                   (node, instance, last_seq, batches, gaps, dropped, first_seen, last_seen) \
                 VALUES ($1, $2, $3, 1, $4, $5, $6, $6) \
                 ON CONFLICT (node, instance) DO UPDATE SET \
                   gaps = CASE \
                     WHEN excluded.last_seq > ingest_streams.last_seq \
                       THEN ingest_streams.gaps + (excluded.last_seq - ingest_streams.last_seq - 1) \
                     WHEN ingest_streams.gaps > 0 THEN ingest_streams.gaps - 1 \
                     ELSE 0 END, \
                   last_seq = CASE WHEN excluded.last_seq > ingest_streams.last_seq \
                     THEN excluded.last_seq ELSE ingest_streams.last_seq END, \
                   batches = ingest_streams.batches + 1, \
                   dropped = CASE WHEN excluded.dropped > ingest_streams.dropped \
                     THEN excluded.dropped ELSE ingest_streams.dropped END, \
                   last_seen = excluded.last_seen",
            )
            .bind(node)
            .bind(&batch.instance)
            .bind(seq)
            .bind(seq - 1)
            .bind(batch.body.dropped_batches.min(i64::MAX as u64) as i64)
            .bind(batch.received_at_ms)
            .execute(&mut *tx)
            .await?;

            let vitals = Vitals::from_records(&batch.body.records)
                .map(|v| serde_json::to_string(&v).expect("vitals serialise"));
            let vitals_at = batch
                .body
                .records
                .iter()
                .map(|r| r.ts)
                .max()
                .filter(|_| vitals.is_some());
            sqlx::query(
                "INSERT INTO node_status (name, last_seen, interval_ms, vitals, vitals_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET \
                   last_seen = CASE WHEN excluded.last_seen > node_status.last_seen \
                     THEN excluded.last_seen ELSE node_status.last_seen END, \
                   interval_ms = excluded.interval_ms, \
                   vitals = CASE WHEN excluded.vitals IS NOT NULL AND \
                     (node_status.vitals_at IS NULL OR excluded.vitals_at >= node_status.vitals_at) \
                     THEN excluded.vitals ELSE node_status.vitals END, \
                   vitals_at = CASE WHEN excluded.vitals IS NOT NULL AND \
                     (node_status.vitals_at IS NULL OR excluded.vitals_at >= node_status.vitals_at) \
                     THEN excluded.vitals_at ELSE node_status.vitals_at END",
            )
            .bind(node)
            .bind(batch.received_at_ms)
            .bind(batch.body.interval_ms.min(i64::MAX as u64) as i64)
            .bind(vitals)
            .bind(vitals_at)
            .execute(&mut *tx)
            .await?;

            for record in &batch.body.records {
                for sample in &record.samples {
                    let key = (node.to_owned(), sample.name.clone(), sample.labels_json());
                    let id = match cache.ids.get(&key) {
                        Some(id) => *id,
                        None => match new_series.iter().find(|(k, _)| *k == key) {
                            Some((_, id)) => *id,
                            None => {
                                let row = sqlx::query(
                                    "INSERT INTO series (node, collector, name, labels) \
                                     VALUES ($1, $2, $3, $4) \
                                     ON CONFLICT (node, name, labels) \
                                     DO UPDATE SET collector = excluded.collector RETURNING id",
                                )
                                .bind(node)
                                .bind(&record.collector)
                                .bind(&key.1)
                                .bind(&key.2)
                                .fetch_one(&mut *tx)
                                .await?;
                                let id: i64 = row.try_get(0)?;
                                new_series.push((key, id));
                                id
                            }
                        },
                    };
                    samples.push((id, record.ts, sample.value));
                }
                if record.samples.is_empty() || keep_record(record) {
                    let data = serde_json::to_string(&record.data).expect("JSON values serialise");
                    records.push((node, &record.collector, record.ts, data));
                }
            }
        }

        let mut rest = &samples[..];
        while !rest.is_empty() {
            let rows = CHUNKS
                .into_iter()
                .find(|c| *c <= rest.len())
                .expect("the chunk list ends with 1");
            let sql = values_sql("INSERT INTO samples (series_id, ts, value) VALUES", 3, rows);
            let mut query = sqlx::query(&sql);
            for (id, ts, value) in &rest[..rows] {
                query = query.bind(*id).bind(*ts).bind(*value);
            }
            query.execute(&mut *tx).await?;
            rest = &rest[rows..];
        }
        let mut rest = &records[..];
        while !rest.is_empty() {
            let rows = CHUNKS
                .into_iter()
                .find(|c| *c <= rest.len())
                .expect("the chunk list ends with 1");
            let sql = values_sql(
                "INSERT INTO records (node, collector, ts, data) VALUES",
                4,
                rows,
            );
            let mut query = sqlx::query(&sql);
            for (node, collector, ts, data) in &rest[..rows] {
                query = query
                    .bind(*node)
                    .bind(*collector)
                    .bind(*ts)
                    .bind(data.as_str());
            }
            query.execute(&mut *tx).await?;
            rest = &rest[rows..];
        }

        tx.commit().await?;
        // Only now do the new series exist for everyone; a rolled-back id must never be cached.
        cache.ids.extend(new_series);
        Ok(outcomes)
    }

    /// Every stored sequence number of a node, per instance, ascending: how benchmarks and tests
    /// check for loss without trusting acknowledgements.
    pub async fn stored_sequences(&self, node: &str) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self
            .ledger(node)
            .await?
            .into_iter()
            .map(|e| (e.instance, e.seq))
            .collect())
    }

    /// The batch ledger of a node: one entry per stored batch, by instance and sequence.
    pub async fn ledger(&self, node: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance, seq, received_at FROM batches WHERE node = $1 \
             ORDER BY instance, seq",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    instance: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    received_at_ms: r.try_get(2)?,
                })
            })
            .collect()
    }

    // ---- history -----------------------------------------------------------------------------

    /// The series of a node, all of them or those of one metric name.
    pub async fn series(&self, node: &str, name: Option<&str>) -> Result<Vec<Series>, StoreError> {
        let rows = match name {
            Some(name) => {
                sqlx::query(
                    "SELECT id, collector, name, labels FROM series \
                     WHERE node = $1 AND name = $2 ORDER BY labels",
                )
                .bind(node)
                .bind(name)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, collector, name, labels FROM series \
                     WHERE node = $1 ORDER BY name, labels",
                )
                .bind(node)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                let labels: String = row.try_get(3)?;
                Ok(Series {
                    id: row.try_get(0)?,
                    collector: row.try_get(1)?,
                    name: row.try_get(2)?,
                    labels: serde_json::from_str(&labels)
                        .map_err(|e| StoreError::Corrupt(format!("series labels: {e}")))?,
                })
            })
            .collect()
    }

    /// Points of one series in `[from, to]`, the newest `limit` of them, oldest first.
    pub async fn points(
        &self,
        series_id: i64,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, value FROM samples WHERE series_id = $1 AND ts >= $2 AND ts <= $3 \
             ORDER BY ts DESC LIMIT $4",
        )
        .bind(series_id)
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut points = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        points.reverse();
        Ok(points)
    }

    /// Durable records of one node and collector, newest first.
    pub async fn records(
        &self,
        node: &str,
        collector: &str,
        limit: i64,
    ) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, data FROM records WHERE node = $1 AND collector = $2 \
             ORDER BY ts DESC LIMIT $3",
        )
        .bind(node)
        .bind(collector)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(1)?;
                Ok((
                    r.try_get(0)?,
                    serde_json::from_str(&data)
                        .map_err(|e| StoreError::Corrupt(format!("record data: {e}")))?,
                ))
            })
            .collect()
    }

    /// Deletes samples and the batch ledger older than `samples_before_ms`, and durable records
    /// older than `records_before_ms`. Returns how many samples went.
    pub async fn purge(
        &self,
        samples_before_ms: i64,
        records_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM series")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut deleted = 0;
        // One series at a time: each delete walks the (series_id, ts) index and holds the write
        // lock briefly, so ingest is never stalled behind one huge delete.
        for id in ids {
            deleted += sqlx::query("DELETE FROM samples WHERE series_id = $1 AND ts < $2")
                .bind(id)
                .bind(samples_before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        sqlx::query("DELETE FROM batches WHERE received_at < $1")
            .bind(samples_before_ms)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM records WHERE ts < $1")
            .bind(records_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(deleted)
    }
}

fn ensure_sqlite_parent(url: &str) {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        // A failure here surfaces as the connect error that follows, with the path in it.
        let _ = std::fs::create_dir_all(parent);
    }
}

fn node_from_row(row: &AnyRow) -> Result<Node, StoreError> {
    let name: String = row.try_get(0)?;
    let allow: String = row.try_get(2)?;
    let labels: String = row.try_get(3)?;
    Ok(Node {
        name: NodeName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        key: row.try_get(1)?,
        allow: serde_json::from_str(&allow)
            .map_err(|e| StoreError::Corrupt(format!("node {name} allow list: {e}")))?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("node {name} labels: {e}")))?,
        source: NodeSource::Enrolled,
    })
}

fn status_from_row(row: &AnyRow) -> Result<NodeStatusRow, StoreError> {
    let vitals: Option<String> = row.try_get(3)?;
    Ok(NodeStatusRow {
        name: row.try_get(0)?,
        last_seen_ms: row.try_get(1)?,
        interval_ms: row.try_get(2)?,
        vitals: vitals
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("vitals: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sql_numbers_placeholders_in_order() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b) VALUES", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
