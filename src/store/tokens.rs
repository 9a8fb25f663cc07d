//! Operator tokens (`api_tokens`): created, listed, marked used, revoked.
//!
//! Must never store or return a token in clear, nor its hash in full outside the registry's
//! refresh: a token is named by its id (the first [`TOKEN_ID_LEN`] hex digits of its hash),
//! which is all a listing shows and all a revocation needs. Revoking ends the dashboard
//! sessions opened with the token in the same transaction, so no controller on the database
//! honours them afterwards.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::durable::{Durable, StoreError};

/// How many hex digits of a token's hash name it.
pub const TOKEN_ID_LEN: usize = 16;

/// The id of the token with this hash: what lists show and revocations take.
pub fn token_id(hash: &str) -> &str {
    &hash[..TOKEN_ID_LEN.min(hash.len())]
}

/// Whether `text` has the shape of a token id (so a refusal can say what is wrong with it).
pub fn is_token_id(text: &str) -> bool {
    text.len() == TOKEN_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How long a token's `last_used_at` may lag: it is written at most this often per token.
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// A stored token as listed: never the secret, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub label: String,
    pub created_at_ms: i64,
    /// The latest use seen, to the minute; none if never used.
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, label, created_at, last_used_at, revoked_at";

fn info_from_row(row: &AnyRow) -> Result<TokenInfo, StoreError> {
    Ok(TokenInfo {
        id: row.try_get(0)?,
        label: row.try_get(1)?,
        created_at_ms: row.try_get(2)?,
        last_used_ms: row.try_get(3)?,
        revoked_at_ms: row.try_get(4)?,
    })
}

impl Durable {
    pub async fn add_token(&self, hash: &str, label: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_tokens (hash, id, label, created_at) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(token_id(hash))
            .bind(label)
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every token that is not revoked: its hash and label (for the registry only).
    pub async fn token_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT hash, label FROM api_tokens WHERE revoked_at IS NULL")
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Every token, revoked ones too, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// Revokes the token with this id (a revoked one keeps its first revocation time) and
    /// ends the dashboard sessions opened with it, in one transaction. `None`: no such token.
    pub async fn revoke_token(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<TokenInfo>, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ui_sessions WHERE token_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(info_from_row).transpose()
    }

    /// Notes a use of the token with this hash, unless one was noted in the last
    /// [`LAST_USED_EVERY_MS`] (by any controller: the condition is in the statement).
    pub async fn token_used(&self, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 WHERE hash = $1 AND revoked_at IS NULL \
             AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(hash)
        .bind(now_ms)
        .bind(now_ms - LAST_USED_EVERY_MS)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
