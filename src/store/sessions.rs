//! Dashboard sessions, kept durably so that any controller sharing the database honours them
//! and a restart logs nobody out. Only the SHA-256 of a session id is stored; the id itself
//! lives in the browser's cookie.

use sqlx::Row;

use super::durable::{Durable, StoreError};

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub who: String,
    pub csrf: String,
    pub expires_at_ms: i64,
    /// The id of the operator token it was opened with (`store::tokens`), if one was: revoking
    /// the token ends the session.
    pub token_id: Option<String>,
}

impl Durable {
    pub async fn create_session(
        &self,
        id_hash: &str,
        session: &Session,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // Expired sessions go whenever a new one comes: the table stays as small as the
        // number of people logged in.
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at < $1")
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO ui_sessions (id_hash, who, csrf, created_at, expires_at, token_id) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id_hash)
        .bind(&session.who)
        .bind(&session.csrf)
        .bind(now_ms)
        .bind(session.expires_at_ms)
        .bind(&session.token_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The session with this id hash, unless it has expired.
    pub async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(
            "SELECT who, csrf, expires_at, token_id FROM ui_sessions WHERE id_hash = $1 AND expires_at >= $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(Session {
                who: r.try_get(0)?,
                csrf: r.try_get(1)?,
                expires_at_ms: r.try_get(2)?,
                token_id: r.try_get(3)?,
            })
        })
        .transpose()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
