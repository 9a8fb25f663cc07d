//! The durable store: SQLite (embedded default) or PostgreSQL, through one code path.
//!
//! Both backends run the same SQL through sqlx's `Any` driver: `$N` placeholders (SQLite accepts
//! them), times as BIGINT milliseconds, JSON as TEXT, `ON CONFLICT` upserts. Only the
//! migrations differ (`migrations/sqlite`, `migrations/postgres`), where the column types must.
//!
//! This module knows nothing about HTTP or the wire format; it stores typed values and answers
//! queries. Everything it acknowledges is committed.
//!
//! This file holds the store itself: opening it (`connect`, and making a SQLite file private
//! before SQLite opens it), the pool, and the background checkpoints. The tables are in the
//! files beside it: `nodes` (nodes, statuses, streams, tokens), `ingest` (writing batches),
//! `history` (reading them back), `retention` (purging them); `error` classifies failures, `sql`
//! builds the multi-row statements every table shares, `packing` is the samples' row format.
//! Every public item is re-exported here, so its path is `crate::store::durable::…`.
//!
//! Must never hold table logic: a query belongs in the file of its tables.

mod error;
mod history;
mod ingest;
mod migrations;
mod nodes;
mod packing;
mod retention;
mod sql;
pub(in crate::store) use sql::AnyQuery;

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

pub use error::{Fault, StoreError, redact_url};
pub use history::{LedgerEntry, Resolution, Series};
pub use ingest::{IngestBatch, IngestOutcome, LedgerKey, SeriesCache};
pub use nodes::{IngestStream, NodeStatusRow};
pub(super) use sql::placeholders;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The durable store.
#[derive(Clone)]
pub struct Durable {
    pool: AnyPool,
    backend: Backend,
}

impl Durable {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnknownScheme(redact_url(url)));
        };
        if backend == Backend::Sqlite {
            prepare_sqlite_file(url)?;
        }
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes a commit durable
                        // before it returns, which is what an acknowledgement promises.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // A page cache that holds the hot ends of the indexes, and memory-mapped
                        // reads instead of pread copies: measured, group writes read far fewer
                        // pages from the file.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                        conn.execute("PRAGMA mmap_size = 268435456").await?;
                        // Checkpoints run in the background (see `checkpoint_loop`), not inside
                        // whichever commit crossed the WAL threshold: that commit's batches
                        // would wait for the whole checkpoint and its fsyncs.
                        conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        migrations::migrator(backend).await?.run(&pool).await?;
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint_loop(pool.clone()));
        }
        Ok(Self { pool, backend })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Copies the SQLite WAL back into the database every second, beside the writer rather than
/// in its way (PASSIVE never blocks it). Ends when the pool is closed.
async fn checkpoint_loop(pool: AnyPool) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_all(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(cause = %format!("{err:#}"), "SQLite checkpoint failed; retrying in 1 s");
        }
    }
}

/// Makes the SQLite file of `url` private before SQLite opens it, and refuses one that is not.
///
/// The database holds node keys in plain text. SQLite creates its `-wal` and `-shm` files with
/// the database file's own mode, so a database created 0600 here (when the URL may create it,
/// `mode=rwc`) keeps them private too, whatever the umask; its new parent directories are 0700.
/// An existing database, or a `-wal`/`-shm` beside it, that other users can read is refused
/// with the `chmod` that fixes it.
fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    if in_memory {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    let may_create = query.split('&').any(|p| p == "mode=rwc");
    if may_create {
        let made = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                crate::files::create_dir(parent)?;
            }
            // Created (never truncated) here, so SQLite opens a private file.
            crate::files::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(drop)
        })();
        made.map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })?;
    }
    crate::files::check_file(path, "the store")?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        crate::files::check_file(std::path::Path::new(&beside), "the store's file")?;
    }
    Ok(())
}
