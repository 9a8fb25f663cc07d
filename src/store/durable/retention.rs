//! Retention: deleting samples, the batch ledger and records older than their horizons.
//!
//! Must never run one delete over a whole table: it goes per (node, collector) along the
//! `(node, collector, ts)` index, so ingest is never stuck behind one huge delete.

use sqlx::Row;

use super::{Durable, StoreError};

impl Durable {
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
