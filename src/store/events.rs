//! The event log and the central error log: one table (`events`, by `category`), written in
//! the transaction of whatever caused the entry (a command's outcome, a heartbeat's transition)
//! or on its own (`POST /api/v1/events`), and searched newest first with a cursor.
//!
//! Takes checked values: levels, sizes and filters are validated by the caller
//! (`crate::heartbeat`, `web::heartbeats::check_event`).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::durable::{Durable, StoreError};

/// An entry for the event log (`category` `event`) or the central error log (`error`).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub node: Option<String>,
    pub service: Option<String>,
    pub level: i64,
    pub message: String,
    pub fields: serde_json::Value,
    pub category: &'static str,
}

/// A stored entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EventEntry {
    pub id: i64,
    pub ts: String,
    pub ts_ms: i64,
    pub node: Option<String>,
    pub service: Option<String>,
    pub level: i64,
    pub message: String,
    pub fields: serde_json::Value,
}

/// A search of the log; every filter is optional. Newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub category: &'static str,
    pub service: Option<String>,
    pub node: Option<String>,
    /// At least this level.
    pub min_level: Option<i64>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// A case-insensitive substring of the message.
    pub text: Option<String>,
    /// Entries older than this id (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// Entries newer than this id (a follower's cursor); oldest first when set.
    pub after_id: Option<i64>,
    pub limit: i64,
}

const COLUMNS: &str = "id, ts, node, service, level, message, fields";

impl Durable {
    /// Adds entries within `tx`, so they stand or fall with what caused them.
    pub(super) async fn insert_events(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ts_ms: i64,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .insert_rows(
                tx,
                "INSERT INTO events (ts, node, service, level, message, fields, category) VALUES ",
                7,
                " RETURNING id",
                events,
                |q, e| {
                    q.bind(ts_ms)
                        .bind(&e.node)
                        .bind(&e.service)
                        .bind(e.level)
                        .bind(&e.message)
                        .bind(e.fields.to_string())
                        .bind(e.category)
                },
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Adds one entry on its own and returns its id.
    pub async fn add_event(&self, event: &NewEvent, ts_ms: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let ids = self
            .insert_events(&mut tx, ts_ms, std::slice::from_ref(event))
            .await?;
        tx.commit().await?;
        Ok(ids[0])
    }

    /// Entries matching `query`: newest first, or oldest first after `after_id`.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<EventEntry>, StoreError> {
        // Only the filters given go into the statement, so each search shape gets a plan that
        // can use its index (an `$n IS NULL OR …` form would be planned for the worst case).
        enum Value {
            Text(String),
            Int(i64),
        }
        let mut conditions = vec!["category = $1".to_owned()];
        let mut values = vec![Value::Text(query.category.to_owned())];
        let pattern = query
            .text
            .as_ref()
            .map(|t| format!("%{}%", like_escape(&t.to_lowercase())));
        let mut add = |condition: &str, value: Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("${}", values.len())));
        };
        if let Some(v) = &query.service {
            add("service = ?", Value::Text(v.clone()));
        }
        if let Some(v) = &query.node {
            add("node = ?", Value::Text(v.clone()));
        }
        if let Some(v) = query.min_level {
            add("level >= ?", Value::Int(v));
        }
        if let Some(v) = query.from_ms {
            add("ts >= ?", Value::Int(v));
        }
        if let Some(v) = query.to_ms {
            add("ts <= ?", Value::Int(v));
        }
        if let Some(v) = pattern {
            add("LOWER(message) LIKE ? ESCAPE '\\'", Value::Text(v));
        }
        if let Some(v) = query.before_id {
            add("id < ?", Value::Int(v));
        }
        if let Some(v) = query.after_id {
            add("id > ?", Value::Int(v));
        }
        let order = if query.after_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} ORDER BY id {order} LIMIT {}",
            conditions.join(" AND "),
            query.limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql);
        for value in values {
            q = match value {
                Value::Text(t) => q.bind(t),
                Value::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Every entry after `after_id`, oldest first, with its category: what a follower reads
    /// next. Unfiltered, so that a hole in the ids is a hole in the log (see `web::stream`).
    pub async fn events_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(EventEntry, String)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, category FROM events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((entry_from_row(r)?, r.try_get::<String, _>(7)?)))
            .collect()
    }

    /// The newest entry's id (0 for an empty log): where a follower starts.
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(id) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Deletes entries (and alerts) older than `before_ms`, a slice at a time so writers never
    /// wait long.
    pub async fn purge_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM alerts WHERE ts < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM events WHERE id IN \
                 (SELECT id FROM events WHERE ts < $1 ORDER BY id LIMIT 5000)",
            )
            .bind(before_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
            deleted += n;
            if n < 5000 {
                return Ok(deleted);
            }
        }
    }
}

fn entry_from_row(row: &AnyRow) -> Result<EventEntry, StoreError> {
    let fields: String = row.try_get(6)?;
    let ts_ms: i64 = row.try_get(1)?;
    Ok(EventEntry {
        id: row.try_get(0)?,
        ts: crate::timefmt::rfc3339(ts_ms),
        ts_ms,
        node: row.try_get(2)?,
        service: row.try_get(3)?,
        level: row.try_get(4)?,
        message: row.try_get(5)?,
        fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::Null),
    })
}

/// `text` as a literal inside a LIKE pattern.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
