//! Signed node requests seen within the clock window (`request_nonces`): a signature is
//! remembered until the request's timestamp leaves the window, so the same request cannot be
//! played twice. Kept in the durable store so every controller on one database agrees.
//!
//! Knows nothing of signatures beyond their text: the pipeline verifies, this only remembers.

use super::durable::{Durable, StoreError};

impl Durable {
    /// Remembers `signature` until `expires_ms`; false when it was already remembered (a
    /// replay).
    pub async fn remember_request(
        &self,
        signature: &str,
        node: &str,
        expires_ms: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO request_nonces (signature, node, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (signature) DO NOTHING",
        )
        .bind(signature)
        .bind(node)
        .bind(expires_ms)
        .execute(self.pool())
        .await?;
        // The signature covers the timestamp, so once it expires the clock window refuses
        // the request before it gets here: an existing row is always a replay.
        Ok(inserted.rows_affected() == 1)
    }

    /// Forgets signatures whose requests the clock window would refuse anyway.
    pub async fn forget_expired_requests(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM request_nonces WHERE expires_at < $1")
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
