//! The ingest path's writes: a group of verified batches stored in one transaction
//! (`write_batches`), as a fixed handful of multi-row statements whatever the group's size:
//! the ledger (with `RETURNING`, to learn which batches are new), the streams, the node
//! statuses, the new series, the samples (packed one row per record), the records.
//!
//! Must never acknowledge anything before the commit returns, never write a batch whose ledger
//! key was stored before, never cache a series id before its transaction committed, and never
//! add a statement per batch or per sample (ingest is benchmarked on it).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::Row;

use super::packing::pack_points;
use super::{Durable, StoreError};
use crate::model::{BatchBody, NodeName, Record, Vitals, limits};

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

/// The streams of a group to upsert: per (node, instance), in key order.
type StreamRows<'a> = Vec<((&'a str, &'a str), StreamDelta)>;
/// The node statuses of a group to upsert, in name order.
type StatusRows<'a> = Vec<(&'a str, StatusDelta)>;
/// A packed row of the `samples` table or a document of the `records` table: node, collector,
/// time, and the points or the JSON.
type RecordRows<'a, T> = Vec<(&'a str, &'a str, i64, T)>;

impl Durable {
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
        keep_record: &(dyn Fn(&Record) -> bool + Sync),
        cache: &mut SeriesCache,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (outcomes, stored) = self.insert_ledger(&mut tx, batches).await?;
        if stored.is_empty() {
            tx.commit().await?;
            return Ok(outcomes);
        }
        let (streams, statuses) = tally_streams_and_statuses(&stored);
        self.upsert_streams(&mut tx, &streams).await?;
        self.upsert_statuses(&mut tx, &statuses).await?;
        let (fresh, labels_in_order) = self.insert_new_series(&mut tx, &stored, cache).await?;
        let (samples, records) =
            pack_samples_and_records(&stored, cache, &fresh, labels_in_order, keep_record);
        self.insert_samples(&mut tx, &samples).await?;
        self.insert_records(&mut tx, &records).await?;
        tx.commit().await?;
        // Only now do the new series exist for everyone; a rolled-back id must never be cached.
        cache.absorb(fresh);
        Ok(outcomes)
    }

    /// Step 1, the ledger: which batches are new. A key twice in one group is new only once.
    /// Batches without a key are always new. Returns one outcome per batch, in order, and the
    /// batches to store.
    async fn insert_ledger<'a>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        batches: &'a [IngestBatch],
    ) -> Result<(Vec<IngestOutcome>, Vec<&'a IngestBatch>), StoreError> {
        let mut first_in_group = HashSet::new();
        let candidates: Vec<(&IngestBatch, &LedgerKey)> = batches
            .iter()
            .filter_map(|b| b.ledger.as_ref().map(|key| (b, key)))
            .filter(|(b, key)| {
                first_in_group.insert((b.node.as_str(), key.instance.as_str(), key.seq))
            })
            .collect();
        let inserted = self
            .insert_rows(
                tx,
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
        let mut stored_keys = HashSet::new();
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
        Ok((outcomes, stored))
    }

    /// Step 2, the streams: one upsert row per agent instance.
    async fn upsert_streams(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        streams: &[((&str, &str), StreamDelta)],
    ) -> Result<(), StoreError> {
        self.insert_rows(
            tx,
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
            streams,
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
        Ok(())
    }

    /// Step 3, the node statuses: one upsert row per node.
    async fn upsert_statuses(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        statuses: &[(&str, StatusDelta)],
    ) -> Result<(), StoreError> {
        self.insert_rows(
            tx,
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
            statuses,
            |q, (node, d)| {
                q.bind(*node)
                    .bind(d.last_seen)
                    .bind(d.interval_ms)
                    .bind(d.vitals.as_deref())
                    .bind(d.vitals_at)
            },
        )
        .await?;
        Ok(())
    }

    /// Step 4, the new series: the ones not cached are created (or found) in one statement.
    /// Returns their ids (not yet in `cache`: the transaction may still roll back) and every
    /// sample's labels as JSON, in walk order, so step 5 does not serialise them again.
    async fn insert_new_series(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        stored: &[&IngestBatch],
        cache: &SeriesCache,
    ) -> Result<(SeriesCache, Vec<Cow<'static, str>>), StoreError> {
        let mut missing: BTreeMap<(&str, &str, Cow<'static, str>), &str> = BTreeMap::new();
        let mut labels_in_order = Vec::new();
        for batch in stored {
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
                tx,
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
        Ok((fresh, labels_in_order))
    }

    /// Step 6, the samples: one packed row per record.
    async fn insert_samples(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        samples: &[(&str, &str, i64, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.insert_rows(
            tx,
            "INSERT INTO samples (node, collector, ts, points) VALUES",
            4,
            "",
            samples,
            |q, (node, collector, ts, points)| {
                q.bind(*node)
                    .bind(*collector)
                    .bind(*ts)
                    .bind(points.as_slice())
            },
        )
        .await?;
        Ok(())
    }

    /// Step 7, the records kept as documents.
    async fn insert_records(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        records: &[(&str, &str, i64, String)],
    ) -> Result<(), StoreError> {
        self.insert_rows(
            tx,
            "INSERT INTO records (node, collector, ts, data) VALUES",
            4,
            "",
            records,
            |q, (node, collector, ts, data)| {
                q.bind(*node).bind(*collector).bind(*ts).bind(data.as_str())
            },
        )
        .await?;
        Ok(())
    }
}

/// Steps 2 and 3, tallied in one walk of the stored batches: per agent instance the highest
/// sequence, how many batches and the drops reported; per node the newest arrival and the
/// newest vitals.
fn tally_streams_and_statuses<'a>(stored: &[&'a IngestBatch]) -> (StreamRows<'a>, StatusRows<'a>) {
    let mut streams: BTreeMap<(&str, &str), StreamDelta> = BTreeMap::new();
    let mut statuses: BTreeMap<&str, StatusDelta> = BTreeMap::new();
    for batch in stored {
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
    (
        streams.into_iter().collect(),
        statuses.into_iter().collect(),
    )
}

/// Step 5: every record's samples packed into one row (a sample of a series neither cached nor
/// just created, past its node's series limit, is counted in `cache.refused` and dropped), and
/// the records kept as documents (those without samples, and those `keep_record` keeps).
/// `labels_in_order` is step 4's, walked in the same order.
fn pack_samples_and_records<'a>(
    stored: &[&'a IngestBatch],
    cache: &mut SeriesCache,
    fresh: &SeriesCache,
    labels_in_order: Vec<Cow<'static, str>>,
    keep_record: &(dyn Fn(&Record) -> bool + Sync),
) -> (RecordRows<'a, Vec<u8>>, RecordRows<'a, String>) {
    let mut packed: RecordRows<'a, Vec<u8>> = Vec::new();
    let mut records: RecordRows<'a, String> = Vec::new();
    let mut labels_in_order = labels_in_order.into_iter();
    for batch in stored {
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
    (packed, records)
}
