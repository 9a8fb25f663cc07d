//! Reading history back: the batch ledger, the series of a node, their points (from the packed
//! `samples` rows) and the records kept as documents.
//!
//! Must never write: everything here is a query over what ingest committed.

use std::collections::BTreeMap;

use sqlx::Row;

use super::packing::find_point;
use super::sql::placeholders;
use super::{Durable, StoreError};

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

impl Durable {
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

    /// Points of several series of one node and collector in `[from, to]`, oldest first: one
    /// list per series, in the order given. The one way history is read back, by the API and
    /// the charts alike (the move onto rollup tiers happens here).
    ///
    /// [`Resolution::Newest`] reads every point of the collector's newest records;
    /// [`Resolution::Buckets`] thins to the newest point of each series in each bucket, so a
    /// week of 10-second ticks charts from a few hundred rows instead of sixty thousand.
    pub async fn points(
        &self,
        node: &str,
        collector: &str,
        series_ids: &[i64],
        from_ms: i64,
        to_ms: i64,
        resolution: Resolution,
    ) -> Result<Vec<Vec<(i64, f64)>>, StoreError> {
        if from_ms > to_ms {
            return Ok(vec![Vec::new(); series_ids.len()]);
        }
        let rows = match resolution {
            Resolution::Newest(limit) => {
                self.newest_rows(node, collector, from_ms, to_ms, limit)
                    .await?
            }
            Resolution::Buckets {
                bucket_ms,
                interval_ms,
            } => {
                self.thinned_rows(
                    node,
                    collector,
                    series_ids,
                    from_ms,
                    to_ms,
                    bucket_of_range(bucket_ms, from_ms, to_ms),
                    interval_ms,
                )
                .await?
            }
        };
        let mut rows = rows;
        rows.sort_by_key(|(ts, _)| *ts);
        let bucket_of = |ts: i64| match resolution {
            Resolution::Newest(_) => ts,
            Resolution::Buckets { bucket_ms, .. } => {
                ts.div_euclid(bucket_of_range(bucket_ms, from_ms, to_ms))
            }
        };
        let mut out: Vec<Vec<(i64, f64)>> = vec![Vec::new(); series_ids.len()];
        for (ts, packed) in &rows {
            for (points, id) in out.iter_mut().zip(series_ids) {
                let Some(value) = find_point(packed, *id)? else {
                    continue;
                };
                // Oldest first, so a later point of the same bucket (or two records of one
                // tick) replaces the earlier one: each bucket keeps its newest.
                match points.last_mut() {
                    Some(last) if bucket_of(last.0) == bucket_of(*ts) => *last = (*ts, value),
                    _ => points.push((*ts, value)),
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` sample rows of one node and collector in `[from, to]`.
    async fn newest_rows(
        &self,
        node: &str,
        collector: &str,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, points FROM samples \
             WHERE node = $1 AND collector = $2 AND ts >= $3 AND ts <= $4 \
             ORDER BY ts DESC LIMIT $5",
        )
        .bind(node)
        .bind(collector)
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        decode_rows(&rows)
    }

    /// The rows a thinned read needs: at least each bucket's newest, and each item's newest
    /// for a collector that sends one record per item. Bounded whatever the node claims its
    /// interval is (a node sending far more often than it says reads like any other).
    #[allow(clippy::too_many_arguments)]
    async fn thinned_rows(
        &self,
        node: &str,
        collector: &str,
        series_ids: &[i64],
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
        interval_ms: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let buckets = (to_ms - from_ms) / bucket_ms + 1;
        if (to_ms - from_ms) / interval_ms.max(1) <= buckets * DIRECT_ROWS_PER_BUCKET {
            // Hardly more rows than buckets (an hour of 10 s ticks on a 300-point chart): one
            // range read beats a seek per bucket, and sees every item. Unless the range holds
            // more than the interval says: then the seeks below.
            let cap = buckets * DIRECT_ROWS_PER_BUCKET * 2;
            let rows = self
                .newest_rows(node, collector, from_ms, to_ms, cap)
                .await?;
            if (rows.len() as i64) < cap {
                return Ok(rows);
            }
        }
        // Each bucket's newest row, found and read in one statement: a seek for the bucket's
        // newest time, then the row at it (by the same index).
        let rows = sqlx::query(&format!(
            "{BUCKETS} SELECT s.ts, s.points FROM buckets CROSS JOIN samples s \
             WHERE s.node = $1 AND s.collector = $2 AND s.ts = (SELECT MAX(ts) \
             FROM samples WHERE node = $1 AND collector = $2 AND ts >= lo AND ts < hi)"
        ))
        .bind(node)
        .bind(collector)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms)
        .fetch_all(&self.pool)
        .await?;
        let rows = decode_rows(&rows)?;
        if one_record_holds_all(&rows, series_ids)? {
            return Ok(rows);
        }
        // A collector that sends one record per item (`check`, `plugin`, an app's collector
        // with several parts): the newest record of a bucket holds only one item's series, so
        // the others would vanish. Read every record of the last few intervals of each bucket
        // instead and keep each series' newest. CROSS JOIN: SQLite then loops over the
        // buckets and seeks each one's rows; with a plain JOIN it chose to scan the
        // collector's rows (1 s for a day of two checks, measured by `fleet bench dashboard`).
        let window = (interval_ms * 3).clamp(1, bucket_ms);
        let mut near_end: Vec<i64> = sqlx::query_scalar(&format!(
            "{BUCKETS} SELECT s.ts FROM buckets CROSS JOIN samples s \
             WHERE s.node = $1 AND s.collector = $2 \
             AND s.ts >= CASE WHEN hi - $6 > lo THEN hi - $6 ELSE lo END \
             AND s.ts < hi LIMIT $7"
        ))
        .bind(node)
        .bind(collector)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms)
        .bind(window)
        .bind(ITEM_ROWS_MAX)
        .fetch_all(&self.pool)
        .await?;
        near_end.sort_unstable();
        near_end.dedup();
        self.rows_at(node, collector, &near_end).await
    }

    /// [`Durable::points`] of one series.
    pub async fn points_of(
        &self,
        series: &Series,
        from_ms: i64,
        to_ms: i64,
        resolution: Resolution,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let mut lists = self
            .points(
                &series.node,
                &series.collector,
                &[series.id],
                from_ms,
                to_ms,
                resolution,
            )
            .await?;
        Ok(lists.pop().unwrap_or_default())
    }

    /// The sample rows of one node and collector at the given times.
    async fn rows_at(
        &self,
        node: &str,
        collector: &str,
        times: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut rows = Vec::with_capacity(times.len());
        // Bounded lists: SQLite takes at most 32,766 parameters in a statement.
        for chunk in times.chunks(1000) {
            let statement = format!(
                "SELECT ts, points FROM samples WHERE node = $1 AND collector = $2 AND ts IN ({})",
                placeholders(3, chunk.len())
            );
            // Not prepared and kept: each list length is its own statement, and a plan kept
            // for one (PostgreSQL's generic plan after five runs) scanned every row of the
            // node's collector instead of looking the times up. (As one statement with
            // `ts IN (SELECT …)`, PostgreSQL with fresh statistics chose a nested loop that
            // took seconds: hence two statements, each with one plan.)
            let mut query = sqlx::query(&statement)
                .persistent(false)
                .bind(node)
                .bind(collector);
            for ts in chunk {
                query = query.bind(*ts);
            }
            rows.extend(decode_rows(&query.fetch_all(&self.pool).await?)?);
        }
        Ok(rows)
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
}

/// A thinned read takes the whole range when the node's interval gives at most this many of
/// each collector's rows per bucket.
const DIRECT_ROWS_PER_BUCKET: i64 = 3;

/// Rows a thinned read of a collector with one record per item takes at most: buckets past
/// it (a node with thousands of items, or claiming a far longer interval than it keeps) go
/// without a point rather than the page reading without end.
const ITEM_ROWS_MAX: i64 = 20_000;

/// The bucket length a thinned read of `[from, to]` uses: as asked, but never more buckets
/// than [`BUCKETS_MAX`].
fn bucket_of_range(bucket_ms: i64, from_ms: i64, to_ms: i64) -> i64 {
    bucket_ms.max((to_ms - from_ms) / BUCKETS_MAX).max(1)
}

/// Buckets of one read at most: a chart is a few hundred pixels wide.
const BUCKETS_MAX: i64 = 2_000;

/// The buckets of a thinned read as rows `(lo, hi)`: `[from, to]` (`$3`, `$4`) cut at multiples
/// of the bucket length (`$5`), the first and last cut short at the range's ends. Each bucket's
/// rows are then found by an index seek of its own, so a read costs buckets × log(rows), not
/// every row of a week (the node page at 7 d, `fleet bench dashboard`: the old `GROUP BY` scan
/// plus a read by key took as long for 3 collectors as this takes for 10). Written with CASE,
/// which both engines have (not MIN/LEAST).
const BUCKETS: &str = "WITH RECURSIVE buckets(lo, hi) AS ( \
    SELECT $3, CASE WHEN $3 / $5 * $5 + $5 > $4 THEN $4 + 1 ELSE $3 / $5 * $5 + $5 END \
    UNION ALL \
    SELECT hi, CASE WHEN hi + $5 > $4 THEN $4 + 1 ELSE hi + $5 END FROM buckets WHERE hi <= $4)";

/// How finely [`Durable::points`] reads a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Every point of the collector's newest this-many records in the range (a record without
    /// the series, a mount that came and went say, yields no point, so fewer may come back).
    Newest(i64),
    /// The newest point of each series in each bucket of `bucket_ms` (buckets counted from the
    /// epoch). `interval_ms` is how often the node reports: a collector with one record per
    /// item is read over the last three intervals of each bucket.
    Buckets { bucket_ms: i64, interval_ms: i64 },
}

fn decode_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Whether every row holds every one of `series_ids` (or nearly: a series missing from more
/// than one row in eight means the collector's records are split by item).
fn one_record_holds_all(rows: &[(i64, Vec<u8>)], series_ids: &[i64]) -> Result<bool, StoreError> {
    for id in series_ids {
        let mut missing = 0;
        for (_, packed) in rows {
            if find_point(packed, *id)?.is_none() {
                missing += 1;
            }
        }
        if missing * 8 > rows.len() {
            return Ok(false);
        }
    }
    Ok(true)
}
