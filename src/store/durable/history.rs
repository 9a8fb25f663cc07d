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
}
