//! Failed dashboard logins and where each user last logged in, kept durably so that every
//! controller sharing the database counts the same failures and refuses the same attempts
//! (a count in one process's memory would give an attacker a fresh allowance per controller
//! and per restart).
//!
//! The store counts and times; which keys exist and what limit each has is the dashboard's
//! policy (`web::ui::session`), handed in as a [`Backoff`] per key.

use sqlx::Row;

use super::durable::{Durable, StoreError};

/// How one key's failures turn into waiting: after `threshold` failures in a row the next
/// attempt waits `first_ms`, and each further failure doubles the wait, up to `max_ms`. A key
/// without a failure for `forget_ms` starts again from nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub threshold: i64,
    pub first_ms: i64,
    pub max_ms: i64,
    pub forget_ms: i64,
}

impl Backoff {
    /// How long the next attempt waits after `failures` failures in a row.
    pub fn delay_ms(&self, failures: i64) -> i64 {
        if failures < self.threshold {
            return 0;
        }
        // 2^40 times any first delay is past any cap: no overflow, whatever the count.
        let doublings = (failures - self.threshold).min(40) as u32;
        self.first_ms
            .saturating_mul(1i64 << doublings)
            .min(self.max_ms)
            .max(0)
    }
}

/// One key's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailures {
    pub key: String,
    pub failures: i64,
    pub last_ms: i64,
    pub next_allowed_ms: i64,
}

impl Durable {
    /// The standing of each of `keys` that has failures to its name (keys never failed, or
    /// whose failures are older than `forget_before_ms`, are left out).
    pub async fn login_failures(
        &self,
        keys: &[String],
        forget_before_ms: i64,
    ) -> Result<Vec<LoginFailures>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT key, failures, last_ms, next_allowed_ms FROM login_failures \
             WHERE last_ms >= $1 AND key IN ({})",
            super::durable::placeholders(2, keys.len())
        );
        let mut query = sqlx::query(&sql).bind(forget_before_ms);
        for key in keys {
            query = query.bind(key);
        }
        query
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(|r| {
                Ok(LoginFailures {
                    key: r.try_get(0)?,
                    failures: r.try_get(1)?,
                    last_ms: r.try_get(2)?,
                    next_allowed_ms: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Counts one failed login under `key` at `now_ms` and sets when the next attempt may be
    /// checked; returns the key's standing. One statement counts (failures counted at once by
    /// several controllers all count), a second only ever moves the wait later.
    pub async fn record_login_failure(
        &self,
        key: &str,
        backoff: &Backoff,
        now_ms: i64,
    ) -> Result<LoginFailures, StoreError> {
        let forget_before = now_ms - backoff.forget_ms;
        // Forgotten keys go whenever a failure comes: the table stays as small as the number
        // of keys that failed within a quiet period. (Its own statement, outside any other
        // row's lock, so two controllers cleaning up never wait on each other in a circle.)
        sqlx::query("DELETE FROM login_failures WHERE last_ms < $1 AND key <> $2")
            .bind(forget_before)
            .bind(key)
            .execute(self.pool())
            .await?;
        let failures: i64 = sqlx::query(
            "INSERT INTO login_failures (key, failures, last_ms, next_allowed_ms) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN login_failures.last_ms < $3 THEN 1 \
                               ELSE login_failures.failures + 1 END, \
               next_allowed_ms = CASE WHEN login_failures.last_ms < $3 THEN 0 \
                                      ELSE login_failures.next_allowed_ms END, \
               last_ms = $2 \
             RETURNING failures",
        )
        .bind(key)
        .bind(now_ms)
        .bind(forget_before)
        .fetch_one(self.pool())
        .await?
        .try_get(0)?;
        let row = sqlx::query(
            "UPDATE login_failures SET next_allowed_ms = \
               CASE WHEN next_allowed_ms < $2 THEN $2 ELSE next_allowed_ms END \
             WHERE key = $1 RETURNING failures, last_ms, next_allowed_ms",
        )
        .bind(key)
        .bind(now_ms + backoff.delay_ms(failures))
        .fetch_one(self.pool())
        .await?;
        Ok(LoginFailures {
            key: key.to_owned(),
            failures: row.try_get(0)?,
            last_ms: row.try_get(1)?,
            next_allowed_ms: row.try_get(2)?,
        })
    }

    /// Forgets `key`'s failures (a success under it).
    pub async fn clear_login_failures(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Remembers that `user` logged in from `addr` at `now_ms`; forgets such logins older than
    /// `forget_before_ms`.
    pub async fn record_login_success(
        &self,
        user: &str,
        addr: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_known WHERE last_ms < $1")
            .bind(forget_before_ms)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO login_known (user_name, addr, last_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name, addr) DO UPDATE SET last_ms = $3",
        )
        .bind(user)
        .bind(addr)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether `user` logged in successfully from `addr` at or after `since_ms`.
    pub async fn login_known(
        &self,
        user: &str,
        addr: &str,
        since_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 FROM login_known WHERE user_name = $1 AND addr = $2 AND last_ms >= $3",
        )
        .bind(user)
        .bind(addr)
        .bind(since_ms)
        .fetch_optional(self.pool())
        .await?
        .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_threshold_up_to_the_cap() {
        let b = Backoff {
            threshold: 5,
            first_ms: 1_000,
            max_ms: 900_000,
            forget_ms: 86_400_000,
        };
        let waits: Vec<i64> = (1..=8).map(|f| b.delay_ms(f)).collect();
        assert_eq!(waits, [0, 0, 0, 0, 1_000, 2_000, 4_000, 8_000]);
        assert_eq!(b.delay_ms(15), 900_000, "capped");
        assert_eq!(b.delay_ms(i64::MAX), 900_000, "no overflow");
    }
}
