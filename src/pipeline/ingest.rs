//! The ingest pipeline for signed batches: verify (node, source address, timestamp window,
//! size, signature) → decode and validate → durable write (group commit) → hot ring.
//!
//! Every path a batch can come in by (HTTP, NATS) calls [`Ingest::ingest`]; the MassAffect
//! route, which verifies its own protocol, calls [`Ingest::ingest_verified`]. Both end in the
//! same private `store` (writer, hot ring, node pulse): there is no second path. A batch refused
//! by node authentication is recorded in the error log (`refusals`, rate-limited). This module knows the wire format through
//! `wire` but nothing about HTTP: errors are typed and the web layer maps them to statuses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{IngestConfig, RetentionConfig};
use crate::model::{BatchBody, NodeName, Record};
use crate::pipeline::node_auth::{Admitted, Claim, Clock, Covered, NodeAuth, NodeAuthError};
use crate::store::durable::{Fault, LedgerKey, SeriesCache};
use crate::store::{Durable, HotStore, IngestBatch, IngestOutcome, StoreError};
use crate::wire::{self, BatchHeaders};

/// A batch as it arrived, before anything was checked.
#[derive(Debug)]
pub struct RawBatch {
    pub node: String,
    pub instance: String,
    pub seq: String,
    pub timestamp_ms: String,
    pub signature: String,
    pub gzip: bool,
    pub body: bytes::Bytes,
    /// The peer address, checked against the node's allowlist. `None` on NATS, where the
    /// broker's own authentication stands in for it.
    pub source: Option<IpAddr>,
}

impl RawBatch {
    /// What its headers claim about the sender.
    pub fn claim(&self) -> Claim<'_> {
        Claim {
            node: &self.node,
            timestamp: &self.timestamp_ms,
            signature: &self.signature,
            source: self.source,
        }
    }
}

/// Why a batch was refused. Each kind maps to one HTTP status (see docs/wire.md).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// 401: missing node header, unknown node, bad signature, timestamp outside the window.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the node may not send from this address.
    #[error("{0}")]
    Forbidden(String),
    /// 400: malformed body, wrong types, illegal names.
    #[error("{0}")]
    BadRequest(String),
    /// 413: body or inflated body over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the durable store could not take it now (it is unavailable, the controller is
    /// stopping); the agent should retry. Our sentence only, never the database's text.
    #[error("{0}; retry later")]
    Unavailable(String),
}

impl From<NodeAuthError> for IngestError {
    fn from(e: NodeAuthError) -> Self {
        match e.status() {
            400 => IngestError::BadRequest(e.to_string()),
            403 => IngestError::Forbidden(e.to_string()),
            // The database's text is for the log (NodeAuthError's own sentence is ours).
            503 => IngestError::Unavailable(e.to_string()),
            _ => IngestError::Unauthorized(e.to_string()),
        }
    }
}

impl IngestError {
    /// The HTTP status this refusal is answered with (also used in NATS replies).
    pub fn status(&self) -> u16 {
        match self {
            IngestError::Unauthorized(_) => 401,
            IngestError::Forbidden(_) => 403,
            IngestError::BadRequest(_) => 400,
            IngestError::TooLarge(_) => 413,
            IngestError::Unavailable(_) => 503,
        }
    }
}

/// What the controller answers to a stored or replayed batch.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngestReply {
    pub seq: u64,
    /// `stored`, or `duplicate` for a sequence number stored before.
    pub status: &'static str,
}

/// The writer's answer: the outcome, and the batch's records handed back for the hot ring; or
/// whose fault the failure was.
type WriteReply = Result<(IngestOutcome, Vec<Record>), Fault>;

struct Job {
    batch: IngestBatch,
    reply: oneshot::Sender<WriteReply>,
}

/// The ingest pipeline. Cheap to share (`Arc`).
pub struct Ingest {
    config: IngestConfig,
    auth: Arc<NodeAuth>,
    hot: Arc<HotStore>,
    heartbeats: Arc<super::Heartbeats>,
    writer: mpsc::Sender<Job>,
    /// Refusals by node authentication, recorded in the error log (rate-limited).
    refusals: super::refusals::Refusals,
}

impl Ingest {
    /// Starts the writer tasks that turn queued batches into grouped transactions. They stop
    /// when the last `Ingest` is dropped, after writing what was queued.
    pub fn start(
        config: IngestConfig,
        retention: &RetentionConfig,
        auth: Arc<NodeAuth>,
        durable: Durable,
        hot: Arc<HotStore>,
        heartbeats: Arc<super::Heartbeats>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.max_group * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        // SQLite takes one writer at a time, so one task. PostgreSQL commits groups side by
        // side: while one waits for its WAL flush the next is already writing, which keeps a
        // slow fsync from holding every batch behind it. Rows are always touched in key order
        // (sorted maps), so concurrent groups cannot deadlock.
        let writers = match durable.backend() {
            crate::store::durable::Backend::Sqlite => 1,
            crate::store::durable::Backend::Postgres => 2,
        };
        let tasks = tokio_util::task::TaskTracker::new();
        for _ in 0..writers {
            tasks.spawn(write_loop(
                durable.clone(),
                rx.clone(),
                config.max_group,
                retention.record_collectors.clone(),
            ));
        }
        tasks.close();
        let writer = tokio::spawn(async move { tasks.wait().await });
        let refusals = super::refusals::Refusals::new(durable);
        (
            Self {
                refusals,
                config,
                auth,
                hot,
                heartbeats,
                writer: tx,
            },
            writer,
        )
    }

    /// Verifies, decodes, stores and acknowledges one batch.
    pub async fn ingest(&self, raw: RawBatch) -> Result<IngestReply, IngestError> {
        let received_at_ms = crate::timefmt::now_ms();
        let (headers, body) = self.verify(&raw, received_at_ms)?;
        let body = decode(&body)?;
        self.check_record_sizes(&body)?;
        let seq = headers.seq;
        let batch = IngestBatch {
            node: NodeName::parse(&headers.node)
                .map_err(|e| IngestError::BadRequest(e.to_string()))?,
            ledger: Some(LedgerKey {
                instance: headers.instance,
                seq,
                sent_at_ms: headers.timestamp_ms,
            }),
            received_at_ms,
            body,
        };
        let outcome = self.store(batch).await?;
        Ok(IngestReply {
            seq,
            status: match outcome {
                IngestOutcome::Stored => "stored",
                IngestOutcome::Duplicate => "duplicate",
            },
        })
    }

    /// Stores a body whose sender the caller has already verified by its own protocol (the
    /// MassAffect route: a shared secret and an address map), for senders that number nothing:
    /// no ledger row, no stream, never a duplicate. The body is validated like every other.
    pub async fn ingest_verified(
        &self,
        node: NodeName,
        body: BatchBody,
        received_at_ms: i64,
    ) -> Result<(), IngestError> {
        body.validate()
            .map_err(|e| IngestError::BadRequest(e.to_string()))?;
        self.check_record_sizes(&body)?;
        self.store(IngestBatch {
            node,
            ledger: None,
            received_at_ms,
            body,
        })
        .await
        .map(|_| ())
    }

    /// Refuses a batch with a record whose document is over `ingest.max_record_bytes` (413,
    /// naming the record and the limit): the inflated body's bound alone would let one small
    /// request put megabytes into the hot ring and the store.
    fn check_record_sizes(&self, body: &BatchBody) -> Result<(), IngestError> {
        for (i, record) in body.records.iter().enumerate() {
            record
                .check_data_bytes(&format!("records[{i}]"), self.config.max_record_bytes)
                .map_err(|e| IngestError::TooLarge(e.to_string()))?;
        }
        Ok(())
    }

    /// The one path after verification: the group-commit writer, then the hot ring and the
    /// node's automatic pulse.
    async fn store(&self, batch: IngestBatch) -> Result<IngestOutcome, IngestError> {
        let node = batch.node.clone();
        let interval_ms = batch.body.interval_ms as i64;
        let received_at_ms = batch.received_at_ms;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.writer
            .send(Job {
                batch,
                reply: reply_tx,
            })
            .await
            .map_err(|_| IngestError::Unavailable("the controller is shutting down".into()))?;
        let (outcome, batch_records) = match reply_rx.await {
            Ok(Ok((outcome, records))) => (outcome, records),
            // The database refused this batch's data: it would be refused again, so the agent
            // must drop it (400), not resend it forever.
            Ok(Err(Fault::Data)) => {
                return Err(IngestError::BadRequest(
                    Fault::Data.public_message().to_owned(),
                ));
            }
            Ok(Err(_)) => return Err(IngestError::Unavailable("the store is unavailable".into())),
            Err(_) => {
                return Err(IngestError::Unavailable(
                    "the controller is shutting down".into(),
                ));
            }
        };
        if outcome == IngestOutcome::Stored {
            self.hot.push(node.as_str(), &batch_records).await;
        }
        // A duplicate is a resend, and a sign of life as good as any.
        self.heartbeats
            .node_seen(node.as_str(), interval_ms, received_at_ms);
        Ok(outcome)
    }

    /// The checks a batch's headers allow ([`NodeAuth::admit`]), run by every way in before a
    /// body is read; a refusal is recorded (see `refusals`).
    pub fn admit(&self, claim: &Claim, now_ms: i64) -> Result<Admitted, NodeAuthError> {
        self.auth.admit(claim, Clock::Now, now_ms).inspect_err(|e| {
            self.refusals.batch_refused(claim.node, claim.source, e);
        })
    }

    /// Checks everything that needs no parsing of the body, then the signature over the inflated
    /// body. Order matters: cheap refusals first, and nothing is inflated for an unknown node.
    fn verify(&self, raw: &RawBatch, now_ms: i64) -> Result<(BatchHeaders, Vec<u8>), IngestError> {
        if raw.body.len() > self.config.max_body_bytes {
            return Err(IngestError::TooLarge(format!(
                "the body is {} bytes; at most {} are accepted",
                raw.body.len(),
                self.config.max_body_bytes
            )));
        }
        let admitted = self.admit(&raw.claim(), now_ms)?;
        if !wire::valid_instance(&raw.instance) {
            return Err(IngestError::BadRequest(format!(
                "header {} must be 1 to {} characters of letters, digits, '-' and '_'",
                wire::HEADER_INSTANCE,
                wire::INSTANCE_MAX
            )));
        }
        // Canonical decimal only: the signature covers the number as printed, so `007` or `+7`
        // would verify differently from what the client signed.
        let seq: u64 = raw
            .seq
            .parse()
            .ok()
            .filter(|s: &u64| *s >= 1 && *s <= i64::MAX as u64 && s.to_string() == raw.seq)
            .ok_or_else(|| {
                IngestError::BadRequest(format!(
                    "header {} must be a positive integer in plain decimal",
                    wire::HEADER_SEQ
                ))
            })?;
        let body = if raw.gzip {
            wire::inflate_bounded(&raw.body, self.config.max_decompressed_bytes).map_err(|e| {
                match e {
                    wire::InflateError::TooLarge { .. } => IngestError::TooLarge(e.to_string()),
                    wire::InflateError::Corrupt(_) => IngestError::BadRequest(e.to_string()),
                }
            })?
        } else {
            if raw.body.len() > self.config.max_decompressed_bytes {
                return Err(IngestError::TooLarge(format!(
                    "the body is larger than {} bytes",
                    self.config.max_decompressed_bytes
                )));
            }
            raw.body.to_vec()
        };
        self.auth
            .check_signature(
                &admitted,
                Covered::Batch {
                    instance: &raw.instance,
                    seq,
                },
                &body,
                &raw.signature,
            )
            .inspect_err(|e| {
                self.refusals.batch_refused(&raw.node, raw.source, e);
            })?;
        let headers = BatchHeaders {
            node: raw.node.clone(),
            instance: raw.instance.clone(),
            seq,
            timestamp_ms: admitted.timestamp_ms,
        };
        Ok((headers, body))
    }
}

/// Parses and validates a batch body; the error names the field.
pub fn decode(body: &[u8]) -> Result<BatchBody, IngestError> {
    // serde would also read a struct from a JSON array; a batch is an object, nothing else.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(IngestError::BadRequest(
            "the body must be a JSON object with a `records` array".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: BatchBody = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            IngestError::BadRequest(format!("the body is not a valid batch: {inner}"))
        } else {
            IngestError::BadRequest(format!("{path}: {inner}"))
        }
    })?;
    parsed
        .validate()
        .map_err(|e| IngestError::BadRequest(e.to_string()))?;
    Ok(parsed)
}

/// A writer: takes what is queued (up to `max_group` batches), writes it in one transaction,
/// then answers each batch. Grouping turns many small commits into few (see `Ingest::start` for
/// how many writers run).
async fn write_loop(
    durable: Durable,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    max_group: usize,
    keep_collectors: Vec<String>,
) {
    let keep = move |record: &Record| keep_collectors.contains(&record.collector);
    let mut cache = SeriesCache::default();
    let mut refused_reported = 0;
    let mut jobs: Vec<Job> = Vec::with_capacity(max_group);
    // The lock is held only while taking a group, not while writing it.
    while rx.lock().await.recv_many(&mut jobs, max_group).await > 0 {
        let (batches, replies): (Vec<IngestBatch>, Vec<_>) =
            jobs.drain(..).map(|j| (j.batch, j.reply)).unzip();
        let started = std::time::Instant::now();
        let results = write_group(&durable, &batches, &keep, &mut cache).await;
        tracing::debug!(
            batches = batches.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group written"
        );
        if cache.refused > refused_reported {
            tracing::warn!(
                samples = cache.refused - refused_reported,
                limit = crate::model::limits::SERIES_PER_NODE_MAX,
                "samples dropped: their node reached the series limit (a label with unbounded values?)"
            );
            refused_reported = cache.refused;
        }
        for ((batch, reply), result) in batches.into_iter().zip(replies).zip(results) {
            let answer = result.map(|outcome| (outcome, batch.body.records));
            // The requester may have gone (client hung up); the batch is stored all the same.
            let _ = reply.send(answer);
        }
    }
}

/// Writes a group of batches in one transaction; the answer of each, in order.
///
/// When the database refuses the group for its data ([`Fault::Data`]: one batch holds a value
/// it cannot store), the batches are written again one by one, so only that batch is refused
/// and its neighbours, which would otherwise fail with it every time it is resent, are stored.
/// Any other failure is every batch's (the store is unavailable: all retry).
pub async fn write_group(
    durable: &Durable,
    batches: &[IngestBatch],
    keep: &(dyn Fn(&Record) -> bool + Sync),
    cache: &mut SeriesCache,
) -> Vec<Result<IngestOutcome, Fault>> {
    match write_with_retry(durable, batches, keep, cache).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(err) if err.is_caused_by_data() && batches.len() > 1 => {
            tracing::warn!(cause = %format!("{err:#}"), batches = batches.len(), "the store refused a group's data; writing its batches one by one");
            let mut results = Vec::with_capacity(batches.len());
            for batch in batches {
                let one = std::slice::from_ref(batch);
                results.push(match durable.write_batches(one, keep, cache).await {
                    Ok(outcomes) => Ok(outcomes[0]),
                    Err(err) => {
                        tracing::warn!(cause = %format!("{err:#}"), node = %batch.node, "the store refused a batch");
                        Err(err.fault())
                    }
                });
            }
            results
        }
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), batches = batches.len(), "group write failed");
            vec![Err(err.fault()); batches.len()]
        }
    }
}

async fn write_with_retry(
    durable: &Durable,
    batches: &[IngestBatch],
    keep: &(dyn Fn(&Record) -> bool + Sync),
    cache: &mut SeriesCache,
) -> Result<Vec<IngestOutcome>, StoreError> {
    // One quick retry absorbs a transient failure (a PostgreSQL serialization conflict between
    // two controllers, a busy SQLite); beyond that the agent retries with back-off. A refusal
    // of the data itself would only be refused again.
    match durable.write_batches(batches, keep, cache).await {
        Ok(outcomes) => Ok(outcomes),
        Err(err) if err.is_caused_by_data() => Err(err),
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), batches = batches.len(), "group write failed; retrying once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            durable.write_batches(batches, keep, cache).await
        }
    }
}
