//! Store errors: [`StoreError`], and [`Fault`], the one classification of a failure (whose
//! doing it is, what a client is told, whether a retry can help); `redact_url` for messages.
//!
//! Must never put the database's own text, or a URL's password, in what a client is told: that
//! is for the log only.

/// A failure of the durable store, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database URL {0} is neither sqlite:// nor postgres://")]
    UnknownScheme(String),
    #[error("cannot create the store {}: {source}", .path.display())]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The SQLite file is open to other users (see `crate::files`).
    #[error(transparent)]
    NotPrivate(#[from] crate::files::NotPrivate),
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

/// Whose doing a store error is: what a client is answered and whether sending the same again
/// can help. [`StoreError::fault`] is the one place that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database refused the data itself (PostgreSQL's SQLSTATE classes 22, data exception,
    /// and 23, integrity constraint violation; SQLite's TOOBIG, CONSTRAINT and MISMATCH; a value
    /// that cannot be encoded): the same request fails again, so it is the client's to change
    /// (4xx), never a "retry later" that makes an agent resend a poison batch forever.
    Data,
    /// The request conflicts with what is stored (a node enrolled twice); the message is ours.
    Conflict,
    /// The database cannot be reached or cannot work now (connection, I/O, timeout, pool, locks,
    /// a full disk): the same request may succeed later (503).
    Unavailable,
    /// The store is damaged or misused (a row that does not decode, a failed migration, a
    /// statement the database does not understand): the operator must look at the log (500).
    Internal,
}

impl Fault {
    /// What a client is told: a sentence of ours, never the database's text.
    pub fn public_message(self) -> &'static str {
        match self {
            Fault::Data => {
                "the store refused a value in this request (a character such as NUL, or a \
                 number, it cannot hold); nothing was stored: correct the request instead of \
                 sending it again"
            }
            Fault::Conflict => "the request conflicts with what is stored",
            Fault::Unavailable => "the store is unavailable; retry later",
            Fault::Internal => {
                "the controller cannot use its store; retry later, and if it persists tell its \
                 operator (its log says why)"
            }
        }
    }
}

impl StoreError {
    /// Whose doing this error is (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Sql(err) => sql_fault(err),
            StoreError::Connect { .. } => Fault::Unavailable,
            StoreError::Conflict(_) => Fault::Conflict,
            StoreError::UnknownScheme(_)
            | StoreError::Create { .. }
            | StoreError::NotPrivate(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_) => Fault::Internal,
        }
    }

    /// Caused by the data written: sending the same again fails again.
    pub fn is_caused_by_data(&self) -> bool {
        self.fault() == Fault::Data
    }

    /// What a client may be told: [`Fault::public_message`], or our own sentence for a conflict.
    /// The full error (with the database's text) is for the log only.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            StoreError::Conflict(why) => why.clone().into(),
            other => other.fault().public_message().into(),
        }
    }
}

/// Classifies an sqlx error (see [`Fault`]).
fn sql_fault(err: &sqlx::Error) -> Fault {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite's code is its extended result code, in decimal.
                let code: i32 = code.parse().unwrap_or(0);
                // The primary result code is the low byte of the extended one.
                match code & 0xff {
                    // TOOBIG, CONSTRAINT, MISMATCH.
                    18..=20 => Fault::Data,
                    // ERROR (a statement SQLite refuses), CORRUPT, NOTADB.
                    1 | 11 | 26 => Fault::Internal,
                    // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, …
                    _ => Fault::Unavailable,
                }
            } else {
                // PostgreSQL: the SQLSTATE's class, its first two characters.
                match code.get(..2).unwrap_or_default() {
                    "22" | "23" => Fault::Data,
                    // Syntax or access rule, internal error (data corrupted), feature not
                    // supported: nothing a retry changes.
                    "42" | "XX" | "0A" => Fault::Internal,
                    // Connection, resources, operator intervention, serialization, …
                    _ => Fault::Unavailable,
                }
            }
        }
        sqlx::Error::Encode(_) => Fault::Data,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Fault::Unavailable,
        _ => Fault::Internal,
    }
}

/// A URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
