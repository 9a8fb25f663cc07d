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

use crate::model::{BatchBody, Node, NodeName, NodeSource, Vitals, limits};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    #[error("cannot create the store {}: {source}", .path.display())]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The SQLite file is open to other users (see `crate::files`).
    #[error(transparent)]
    NotPrivate(#[from] crate::files::NotPrivate),
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

/// Whose doing a store error is: what a client is answered and whether sending the same again
/// can help. [`StoreError::fault`] is the one place that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database refused the data itself (PostgreSQL's SQLSTATE classes 22, data exception,
    /// and 23, integrity constraint violation; SQLite's TOOBIG, CONSTRAINT and MISMATCH; a value
    /// that cannot be encoded): the same request fails again, so it is the client's to change
    /// (4xx), never a "retry later" that makes an agent resend a poison batch forever.
    Data,
    /// The request conflicts with what is stored (a node enrolled twice); the message is ours.
    Conflict,
    /// The database cannot be reached or cannot work now (connection, I/O, timeout, pool, locks,
    /// a full disk): the same request may succeed later (503).
    Unavailable,
    /// The store is damaged or misused (a row that does not decode, a failed migration, a
    /// statement the database does not understand): the operator must look at the log (500).
    Internal,
}

impl Fault {
    /// What a client is told: a sentence of ours, never the database's text.
    pub fn public_message(self) -> &'static str {
        match self {
            Fault::Data => {
                "the store refused a value in this request (a character such as NUL, or a \
                 number, it cannot hold); nothing was stored: correct the request instead of \
                 sending it again"
            }
            Fault::Conflict => "the request conflicts with what is stored",
            Fault::Unavailable => "the store is unavailable; retry later",
            Fault::Internal => {
                "the controller cannot use its store; retry later, and if it persists tell its \
                 operator (its log says why)"
            }
        }
    }
}

impl StoreError {
    /// Whose doing this error is (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Sql(err) => sql_fault(err),
            StoreError::Connect { .. } => Fault::Unavailable,
            StoreError::Conflict(_) => Fault::Conflict,
            StoreError::UnknownScheme(_)
            | StoreError::Create { .. }
            | StoreError::NotPrivate(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_) => Fault::Internal,
        }
    }

    /// Caused by the data written: sending the same again fails again.
    pub fn is_caused_by_data(&self) -> bool {
        self.fault() == Fault::Data
    }

    /// What a client may be told: [`Fault::public_message`], or our own sentence for a conflict.
    /// The full error (with the database's text) is for the log only.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            StoreError::Conflict(why) => why.clone().into(),
            other => other.fault().public_message().into(),
        }
    }
}

/// Classifies an sqlx error (see [`Fault`]).
fn sql_fault(err: &sqlx::Error) -> Fault {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite's code is its extended result code, in decimal.
                let code: i32 = code.parse().unwrap_or(0);
                // The primary result code is the low byte of the extended one.
                match code & 0xff {
                    // TOOBIG, CONSTRAINT, MISMATCH.
                    18..=20 => Fault::Data,
                    // ERROR (a statement SQLite refuses), CORRUPT, NOTADB.
                    1 | 11 | 26 => Fault::Internal,
                    // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, …
                    _ => Fault::Unavailable,
                }
            } else {
                // PostgreSQL: the SQLSTATE's class, its first two characters.
                match code.get(..2).unwrap_or_default() {
                    "22" | "23" => Fault::Data,
                    // Syntax or access rule, internal error (data corrupted), feature not
                    // supported: nothing a retry changes.
                    "42" | "XX" | "0A" => Fault::Internal,
                    // Connection, resources, operator intervention, serialization, …
                    _ => Fault::Unavailable,
                }
            }
        }
        sqlx::Error::Encode(_) => Fault::Data,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Fault::Unavailable,
        _ => Fault::Internal,
    }
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
    /// Where the batch sits in its agent's sequence. `None` for senders that number nothing
    /// (the MassAffect route): such a batch has no ledger row and no stream, so it is never a
    /// duplicate and never counts as (or fills) a gap.
    pub ledger: Option<LedgerKey>,
    pub received_at_ms: i64,
    pub body: BatchBody,
}

/// A native batch's place in the ledger: the agent instance, its sequence number, when it was
/// sent.
#[derive(Debug, Clone)]
pub struct LedgerKey {
    pub instance: String,
    pub seq: u64,
    pub sent_at_ms: i64,
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
    pub node: String,
    pub collector: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Series ids already known to exist, so the hot path does not ask the database each time.
/// Each ingest writer owns one (on PostgreSQL two writers may each learn a series; the upsert
/// gives both the same id). Nested by node, name and labels so a lookup borrows and allocates
/// nothing.
#[derive(Debug, Default)]
pub struct SeriesCache {
    ids: HashMap<String, HashMap<String, HashMap<String, i64>>>,
    /// Series known per node, for [`limits::SERIES_PER_NODE_MAX`].
    per_node: HashMap<String, usize>,
    /// Samples dropped because their node reached the series limit.
    pub refused: u64,
}

impl SeriesCache {
    fn count(&self, node: &str) -> usize {
        self.per_node.get(node).copied().unwrap_or(0)
    }

    fn get(&self, node: &str, name: &str, labels: &str) -> Option<i64> {
        self.ids.get(node)?.get(name)?.get(labels).copied()
    }

    fn absorb(&mut self, other: SeriesCache) {
        for (node, names) in other.ids {
            for (name, labels) in names {
                for (labels, id) in labels {
                    self.insert(node.clone(), name.clone(), labels, id);
                }
            }
        }
    }

    fn insert(&mut self, node: String, name: String, labels: String, id: i64) {
        *self.per_node.entry(node.clone()).or_default() += 1;
        self.ids
            .entry(node)
            .or_default()
            .entry(name)
            .or_default()
            .insert(labels, id);
    }
}

/// What one group adds to an agent instance's stream.
#[derive(Default)]
struct StreamDelta {
    last_seq: i64,
    batches: i64,
    dropped: i64,
    seen: i64,
}

/// What one group says about a node's status.
#[derive(Default)]
struct StatusDelta {
    last_seen: i64,
    interval_ms: i64,
    vitals: Option<String>,
    vitals_at: Option<i64>,
}

/// Rows per multi-row INSERT, largest first: a fixed set of statement shapes so prepared
/// statements are reused.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// A multi-row INSERT. SQLite gets anonymous `?` placeholders: with numbered ones sqlx looks each
/// parameter's name up, and SQLite finds a name by a linear scan, so binding n parameters costs
/// n² (measured: a quarter of the controller's CPU at 2,000 batches/s).
fn values_sql(backend: Backend, prefix: &str, columns: usize, rows: usize) -> String {
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
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// The text of a multi-row statement, built once per shape and kept for the life of the
/// process: a bounded set (a few statements × [`CHUNKS`] × two backends), and `'static` text lets
/// a query borrow the rows it binds instead of copying them.
fn statement_text(
    backend: Backend,
    prefix: &'static str,
    columns: usize,
    rows: usize,
    suffix: &'static str,
) -> &'static str {
    type Shapes = HashMap<(Backend, &'static str, usize, usize, &'static str), &'static str>;
    static SHAPES: std::sync::OnceLock<std::sync::Mutex<Shapes>> = std::sync::OnceLock::new();
    let mut shapes = SHAPES
        .get_or_init(Default::default)
        .lock()
        .expect("statement cache lock poisoned");
    shapes
        .entry((backend, prefix, columns, rows, suffix))
        .or_insert_with(|| {
            let mut sql = values_sql(backend, prefix, columns, rows);
            sql.push_str(suffix);
            Box::leak(sql.into_boxed_str())
        })
}

/// Packs a record's samples as sorted `(series_id i64 LE, value f64 LE)` pairs. A series twice
/// in one record keeps its last value.
fn pack_points(mut points: Vec<(i64, f64)>) -> Vec<u8> {
    points.sort_by_key(|(id, _)| *id);
    points.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = later.1;
        }
        same
    });
    let mut out = Vec::with_capacity(points.len() * 16);
    for (id, value) in points {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// `$first, $first+1, …` (`n` of them), for an `IN (…)` list.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of `series_id` in a packed row, if the record had it.
fn find_point(packed: &[u8], series_id: i64) -> Result<Option<f64>, StoreError> {
    if !packed.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt(format!(
            "a packed sample row is {} bytes, not a multiple of 16",
            packed.len()
        )));
    }
    let pair = |i: usize| {
        let at = i * 16;
        let id = i64::from_le_bytes(packed[at..at + 8].try_into().expect("8 bytes"));
        let value = f64::from_le_bytes(packed[at + 8..at + 16].try_into().expect("8 bytes"));
        (id, value)
    };
    let (mut low, mut high) = (0, packed.len() / 16);
    while low < high {
        let mid = (low + high) / 2;
        let (id, value) = pair(mid);
        match id.cmp(&series_id) {
            std::cmp::Ordering::Equal => return Ok(Some(value)),
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
        }
    }
    Ok(None)
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
            prepare_sqlite_file(url)?;
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
                        // A page cache that holds the hot ends of the indexes, and memory-mapped
                        // reads instead of pread copies: measured, group writes read far fewer
                        // pages from the file.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                        conn.execute("PRAGMA mmap_size = 268435456").await?;
                        // Checkpoints run in the background (see `checkpoint_loop`), not inside
                        // whichever commit crossed the WAL threshold: that commit's batches
                        // would wait for the whole checkpoint and its fsyncs.
                        conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
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
            Backend::Sqlite => {
                sqlx::migrate!("migrations/sqlite").run(&pool).await?;
                tokio::spawn(checkpoint_loop(pool.clone()));
            }
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
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
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO nodes (name, key, allow, labels, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(node.name.as_str())
        .bind(&node.key)
        .bind(allow)
        .bind(labels)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "node {} is already enrolled; remove it first with `fleet node remove {}`",
                node.name, node.name
            )));
        }
        // Enrolled again after a removal: its heartbeat starts afresh with its first batch.
        sqlx::query("DELETE FROM heartbeats WHERE service = $1 AND state = 'cancelled'")
            .bind(crate::heartbeat::node_service(node.name.as_str()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an enrolled node; returns whether it existed. Its history stays until retention.
    pub async fn remove_node(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // A node taken out of the fleet on purpose is not an outage: stop watching its
        // heartbeat (it stays listed, cancelled).
        sqlx::query(
            "UPDATE heartbeats SET state = 'cancelled', state_since = $2, updated_at = $2 \
             WHERE service = $1 AND state <> 'cancelled'",
        )
        .bind(crate::heartbeat::node_service(name))
        .bind(crate::timefmt::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
            "SELECT instance, last_seq, batches, last_seq - batches, dropped, first_seen, last_seen \
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

    /// Every token hash with its label.
    pub async fn token_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT hash, label FROM api_tokens")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    // ---- ingest ------------------------------------------------------------------------------

    /// Writes a group of batches in one transaction and returns one outcome per batch, in order.
    /// Nothing is visible (or acknowledged by the caller) before the commit returns.
    ///
    /// A group costs a handful of statements whatever its size: one multi-row insert each into
    /// the ledger (whose `RETURNING` says which batches are new), the streams, the node statuses,
    /// the samples and the records. Per-batch statements made ingest latency-bound.
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

        // 1. The ledger: which batches are new. A key twice in one group is new only once.
        // Batches without a key are always new.
        let mut first_in_group = std::collections::HashSet::new();
        let candidates: Vec<(&IngestBatch, &LedgerKey)> = batches
            .iter()
            .filter_map(|b| b.ledger.as_ref().map(|key| (b, key)))
            .filter(|(b, key)| {
                first_in_group.insert((b.node.as_str(), key.instance.as_str(), key.seq))
            })
            .collect();
        let inserted = self
            .insert_rows(
                &mut tx,
                "INSERT INTO batches (node, instance, seq, sent_at, received_at, records, samples) VALUES",
                7,
                " ON CONFLICT DO NOTHING RETURNING node, instance, seq",
                &candidates,
                |q, (b, key)| {
                    q.bind(b.node.as_str())
                        .bind(key.instance.as_str())
                        .bind(key.seq as i64)
                        .bind(key.sent_at_ms)
                        .bind(b.received_at_ms)
                        .bind(b.body.records.len() as i64)
                        .bind(b.body.sample_count() as i64)
                },
            )
            .await?;
        let mut stored_keys = std::collections::HashSet::new();
        for row in &inserted {
            let node: String = row.try_get(0)?;
            let instance: String = row.try_get(1)?;
            let seq: i64 = row.try_get(2)?;
            stored_keys.insert((node, instance, seq));
        }
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut stored: Vec<&IngestBatch> = Vec::with_capacity(batches.len());
        for batch in batches {
            // `remove`: a second copy of the key in this group is a duplicate of the first.
            let new = match &batch.ledger {
                None => true,
                Some(key) => stored_keys.remove(&(
                    batch.node.to_string(),
                    key.instance.clone(),
                    key.seq as i64,
                )),
            };
            if new {
                outcomes.push(IngestOutcome::Stored);
                stored.push(batch);
            } else {
                outcomes.push(IngestOutcome::Duplicate);
            }
        }
        if stored.is_empty() {
            tx.commit().await?;
            return Ok(outcomes);
        }

        // 2. Streams: per agent instance, the highest sequence, how many batches, drops.
        let mut streams: BTreeMap<(&str, &str), StreamDelta> = BTreeMap::new();
        // 3. Node status: per node, the newest arrival and the newest vitals.
        let mut statuses: BTreeMap<&str, StatusDelta> = BTreeMap::new();
        for batch in &stored {
            if let Some(key) = &batch.ledger {
                let stream = streams
                    .entry((batch.node.as_str(), key.instance.as_str()))
                    .or_default();
                stream.last_seq = stream.last_seq.max(key.seq as i64);
                stream.batches += 1;
                stream.dropped = stream
                    .dropped
                    .max(batch.body.dropped_batches.min(i64::MAX as u64) as i64);
                stream.seen = stream.seen.max(batch.received_at_ms);
            }

            let status = statuses.entry(batch.node.as_str()).or_default();
            if batch.received_at_ms >= status.last_seen {
                status.last_seen = batch.received_at_ms;
                status.interval_ms = batch.body.interval_ms.min(i64::MAX as u64) as i64;
            }
            if let Some(vitals) = Vitals::from_records(&batch.body.records) {
                let at = batch.body.records.iter().map(|r| r.ts).max().unwrap_or(0);
                if status.vitals_at.is_none_or(|t| at >= t) {
                    status.vitals = Some(serde_json::to_string(&vitals).expect("vitals serialise"));
                    status.vitals_at = Some(at);
                }
            }
        }
        let streams: Vec<_> = streams.into_iter().collect();
        self.insert_rows(
            &mut tx,
            "INSERT INTO ingest_streams \
               (node, instance, last_seq, batches, dropped, first_seen, last_seen) VALUES",
            7,
            " ON CONFLICT (node, instance) DO UPDATE SET \
               last_seq = CASE WHEN excluded.last_seq > ingest_streams.last_seq \
                 THEN excluded.last_seq ELSE ingest_streams.last_seq END, \
               batches = ingest_streams.batches + excluded.batches, \
               dropped = CASE WHEN excluded.dropped > ingest_streams.dropped \
                 THEN excluded.dropped ELSE ingest_streams.dropped END, \
               last_seen = excluded.last_seen",
            &streams,
            |q, ((node, instance), d)| {
                q.bind(*node)
                    .bind(*instance)
                    .bind(d.last_seq)
                    .bind(d.batches)
                    .bind(d.dropped)
                    .bind(d.seen)
                    .bind(d.seen)
            },
        )
        .await?;
        let statuses: Vec<_> = statuses.into_iter().collect();
        self.insert_rows(
            &mut tx,
            "INSERT INTO node_status (name, last_seen, interval_ms, vitals, vitals_at) VALUES",
            5,
            " ON CONFLICT (name) DO UPDATE SET \
               last_seen = CASE WHEN excluded.last_seen > node_status.last_seen \
                 THEN excluded.last_seen ELSE node_status.last_seen END, \
               interval_ms = excluded.interval_ms, \
               vitals = CASE WHEN excluded.vitals IS NOT NULL AND \
                 (node_status.vitals_at IS NULL OR excluded.vitals_at >= node_status.vitals_at) \
                 THEN excluded.vitals ELSE node_status.vitals END, \
               vitals_at = CASE WHEN excluded.vitals IS NOT NULL AND \
                 (node_status.vitals_at IS NULL OR excluded.vitals_at >= node_status.vitals_at) \
                 THEN excluded.vitals_at ELSE node_status.vitals_at END",
            &statuses,
            |q, (node, d)| {
                q.bind(*node)
                    .bind(d.last_seen)
                    .bind(d.interval_ms)
                    .bind(d.vitals.as_deref())
                    .bind(d.vitals_at)
            },
        )
        .await?;

        // 4. Series: the ones not cached are created (or found) in one statement.
        let mut missing: BTreeMap<(&str, &str, std::borrow::Cow<'static, str>), &str> =
            BTreeMap::new();
        // Every sample's labels as JSON, in walk order, so step 5 does not serialise them again.
        let mut labels_in_order = Vec::new();
        for batch in &stored {
            let node = batch.node.as_str();
            for record in &batch.body.records {
                for sample in &record.samples {
                    let labels = sample.labels_json();
                    if cache.get(node, &sample.name, &labels).is_none()
                        && cache.count(node) + missing.len() < limits::SERIES_PER_NODE_MAX
                    {
                        missing.insert(
                            (node, sample.name.as_str(), labels.clone()),
                            &record.collector,
                        );
                    }
                    labels_in_order.push(labels);
                }
            }
        }
        let missing: Vec<_> = missing.into_iter().collect();
        let mut fresh = SeriesCache::default();
        let created = self
            .insert_rows(
                &mut tx,
                "INSERT INTO series (node, collector, name, labels) VALUES",
                4,
                " ON CONFLICT (node, name, labels) DO UPDATE SET collector = excluded.collector \
                 RETURNING id, node, name, labels",
                &missing,
                |q, ((node, name, labels), collector)| {
                    q.bind(*node)
                        .bind(*collector)
                        .bind(*name)
                        .bind(labels.as_ref())
                },
            )
            .await?;
        for row in &created {
            fresh.insert(
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(0)?,
            );
        }

        // 5. Samples, packed one row per record, and the records kept as documents.
        let mut packed: Vec<(&str, &str, i64, Vec<u8>)> = Vec::new();
        let mut records: Vec<(&str, &str, i64, String)> = Vec::new();
        let mut labels_in_order = labels_in_order.into_iter();
        for batch in &stored {
            let node = batch.node.as_str();
            for record in &batch.body.records {
                let mut points: Vec<(i64, f64)> = Vec::with_capacity(record.samples.len());
                for sample in &record.samples {
                    let labels = labels_in_order
                        .next()
                        .expect("one labels entry per sample, walked in the same order");
                    match cache
                        .get(node, &sample.name, &labels)
                        .or_else(|| fresh.get(node, &sample.name, &labels))
                    {
                        Some(id) => points.push((id, sample.value)),
                        None => cache.refused += 1,
                    }
                }
                if !points.is_empty() {
                    packed.push((node, &record.collector, record.ts, pack_points(points)));
                }
                if record.samples.is_empty() || keep_record(record) {
                    let data = serde_json::to_string(&record.data).expect("JSON values serialise");
                    records.push((node, &record.collector, record.ts, data));
                }
            }
        }
        self.insert_rows(
            &mut tx,
            "INSERT INTO samples (node, collector, ts, points) VALUES",
            4,
            "",
            &packed,
            |q, (node, collector, ts, points)| {
                q.bind(*node)
                    .bind(*collector)
                    .bind(*ts)
                    .bind(points.as_slice())
            },
        )
        .await?;
        self.insert_rows(
            &mut tx,
            "INSERT INTO records (node, collector, ts, data) VALUES",
            4,
            "",
            &records,
            |q, (node, collector, ts, data)| {
                q.bind(*node).bind(*collector).bind(*ts).bind(data.as_str())
            },
        )
        .await?;

        tx.commit().await?;
        // Only now do the new series exist for everyone; a rolled-back id must never be cached.
        cache.absorb(fresh);
        Ok(outcomes)
    }

    /// Runs `prefix VALUES (…), (…) suffix` over `rows` in chunks of fixed sizes (so prepared
    /// statements are reused) and returns whatever the statements returned.
    pub(super) async fn insert_rows<'r, T>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        prefix: &'static str,
        columns: usize,
        suffix: &'static str,
        rows: &'r [T],
        bind: impl Fn(AnyQuery<'r>, &'r T) -> AnyQuery<'r>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut out = Vec::new();
        let mut rest = rows;
        while !rest.is_empty() {
            let n = CHUNKS
                .into_iter()
                .find(|c| *c <= rest.len())
                .expect("the chunk list ends with 1");
            let sql = statement_text(self.backend, prefix, columns, n, suffix);
            let mut query = sqlx::query(sql);
            for row in &rest[..n] {
                query = bind(query, row);
            }
            out.extend(query.fetch_all(&mut **tx).await?);
            rest = &rest[n..];
        }
        Ok(out)
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
                    "SELECT id, collector, name, labels, node FROM series \
                     WHERE node = $1 AND name = $2 ORDER BY labels",
                )
                .bind(node)
                .bind(name)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, collector, name, labels, node FROM series \
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
                    node: row.try_get(4)?,
                    collector: row.try_get(1)?,
                    name: row.try_get(2)?,
                    labels: serde_json::from_str(&labels)
                        .map_err(|e| StoreError::Corrupt(format!("series labels: {e}")))?,
                })
            })
            .collect()
    }

    /// Points of one series in `[from, to]`, oldest first, from the newest `limit` records of its
    /// collector (a record without this series, a mount that came and went say, yields no point,
    /// so fewer than `limit` points may come back).
    pub async fn points(
        &self,
        series: &Series,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, points FROM samples \
             WHERE node = $1 AND collector = $2 AND ts >= $3 AND ts <= $4 \
             ORDER BY ts DESC LIMIT $5",
        )
        .bind(&series.node)
        .bind(&series.collector)
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut points = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let ts: i64 = row.try_get(0)?;
            let packed: Vec<u8> = row.try_get(1)?;
            if let Some(value) = find_point(&packed, series.id)? {
                points.push((ts, value));
            }
        }
        Ok(points)
    }

    /// Points of several series of one node and collector in `[from, to]`, oldest first, thinned
    /// to at most one record per `bucket_ms` (the newest in each), so a week of 10-second ticks
    /// charts from a few hundred rows instead of sixty thousand. One list per series, in the
    /// order given.
    ///
    /// Two statements, each with one plan whatever the table's statistics say: the newest
    /// time of each bucket from the `(node, collector, ts)` index alone, then those rows by
    /// key. (As one statement with `ts IN (SELECT …)`, PostgreSQL with fresh statistics chose
    /// a nested loop that took seconds.)
    pub async fn points_thinned(
        &self,
        node: &str,
        collector: &str,
        series_ids: &[i64],
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, StoreError> {
        let newest: Vec<i64> = sqlx::query_scalar(
            "SELECT MAX(ts) FROM samples \
             WHERE node = $1 AND collector = $2 AND ts >= $3 AND ts <= $4 \
             GROUP BY ts / $5",
        )
        .bind(node)
        .bind(collector)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms.max(1))
        .fetch_all(&self.pool)
        .await?;
        let mut rows = Vec::with_capacity(newest.len());
        // Bounded lists: SQLite takes at most 32,766 parameters in a statement.
        for chunk in newest.chunks(1000) {
            let statement = format!(
                "SELECT ts, points FROM samples WHERE node = $1 AND collector = $2 AND ts IN ({})",
                placeholders(3, chunk.len())
            );
            // Not prepared and kept: each list length is its own statement, and a plan kept
            // for one (PostgreSQL's generic plan after five runs) scanned every row of the
            // node's collector instead of looking the times up.
            let mut query = sqlx::query(&statement)
                .persistent(false)
                .bind(node)
                .bind(collector);
            for ts in chunk {
                query = query.bind(*ts);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        let mut rows: Vec<(i64, Vec<u8>)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, StoreError>>()?;
        rows.sort_by_key(|(ts, _)| *ts);
        let mut out: Vec<Vec<(i64, f64)>> = vec![Vec::with_capacity(rows.len()); series_ids.len()];
        for (ts, packed) in &rows {
            for (points, id) in out.iter_mut().zip(series_ids) {
                // Two records of one tick (a collector that sent twice in a millisecond):
                // one point, from whichever has the series.
                if points.last().is_some_and(|(last, _)| last == ts) {
                    continue;
                }
                if let Some(value) = find_point(packed, *id)? {
                    points.push((*ts, value));
                }
            }
        }
        Ok(out)
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
    /// older than `records_before_ms`. Returns how many sample rows (records' worth of samples)
    /// went.
    pub async fn purge(
        &self,
        samples_before_ms: i64,
        records_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let ranges: Vec<(String, String)> =
            sqlx::query("SELECT DISTINCT node, collector FROM series")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, StoreError>>()?;
        let mut deleted = 0;
        // One (node, collector) at a time: each delete walks the front of its index range and
        // holds the write lock briefly, so ingest is never stalled behind one huge delete.
        for (node, collector) in ranges {
            deleted +=
                sqlx::query("DELETE FROM samples WHERE node = $1 AND collector = $2 AND ts < $3")
                    .bind(node)
                    .bind(collector)
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

/// Copies the SQLite WAL back into the database every second, beside the writer rather than
/// in its way (PASSIVE never blocks it). Ends when the pool is closed.
async fn checkpoint_loop(pool: AnyPool) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_all(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(cause = %err, "SQLite checkpoint failed; retrying in 1 s");
        }
    }
}

/// Makes the SQLite file of `url` private before SQLite opens it, and refuses one that is not.
///
/// The database holds node keys in plain text. SQLite creates its `-wal` and `-shm` files with
/// the database file's own mode, so a database created 0600 here (when the URL may create it,
/// `mode=rwc`) keeps them private too, whatever the umask; its new parent directories are 0700.
/// An existing database, or a `-wal`/`-shm` beside it, that other users can read is refused
/// with the `chmod` that fixes it.
fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    if in_memory {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    let may_create = query.split('&').any(|p| p == "mode=rwc");
    if may_create {
        let made = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                crate::files::create_dir(parent)?;
            }
            // Created (never truncated) here, so SQLite opens a private file.
            crate::files::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(drop)
        })();
        made.map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })?;
    }
    crate::files::check_file(path, "the store")?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        crate::files::check_file(std::path::Path::new(&beside), "the store's file")?;
    }
    Ok(())
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
            values_sql(Backend::Postgres, "INSERT INTO t (a, b) VALUES", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            values_sql(Backend::Sqlite, "INSERT INTO t (a, b) VALUES", 2, 1),
            "INSERT INTO t (a, b) VALUES (?, ?)"
        );
    }

    #[test]
    fn packed_points_find_every_series_and_no_other() {
        let packed = pack_points(vec![(9, 0.5), (2, 1.5), (5, -3.0), (2, 2.5)]);
        assert_eq!(packed.len(), 3 * 16);
        assert_eq!(find_point(&packed, 2).unwrap(), Some(2.5));
        assert_eq!(find_point(&packed, 5).unwrap(), Some(-3.0));
        assert_eq!(find_point(&packed, 9).unwrap(), Some(0.5));
        assert_eq!(find_point(&packed, 3).unwrap(), None);
        assert_eq!(find_point(&[], 3).unwrap(), None);
        assert!(find_point(&[0u8; 5], 3).is_err());
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
