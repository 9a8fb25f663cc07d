//! Nodes: the `nodes` table (enrolment), `node_status` and `ingest_streams` as read back for
//! the API and the dashboard (operator tokens are `store/tokens.rs`'s). Writing the
//! statuses and streams is the ingest path's (`ingest.rs`), never this file's.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Durable, StoreError};
use crate::model::{Node, NodeName, NodeSource, Vitals};

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

impl Durable {
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

    /// Whether a node of this name is enrolled in the store (whatever a registry has read).
    pub async fn is_enrolled(&self, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
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
