//! The schema's migrations, embedded at build time by `build.rs` from `migrations/{engine}/`,
//! as sqlx's migrator wants them: version and description from the file name
//! (`0003_heartbeats.sql` is version 3, "heartbeats"), the checksum over the file's text, so a
//! database migrated by an earlier build (which used sqlx's `migrate!` macro) sees the same
//! checksums.
//!
//! Must never change a migration's text once released: the checksum would refuse the database.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::Backend;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The embedded migrations of one engine.
#[derive(Debug)]
struct Embedded(&'static [(&'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            self.0
                .iter()
                .map(|(name, sql)| migration(name, sql))
                .collect()
        })
    }
}

/// One file's migration, read as sqlx reads a migrations directory.
fn migration(file_name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = file_name
        .split_once('_')
        .ok_or_else(|| format!("migration {file_name}: expected NNNN_words.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {file_name}: expected a number before the first _"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

/// The migrator for `backend`'s schema.
pub(super) async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_with_its_version_and_description() {
        for (engine, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(engine);
            let on_disk = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(list.len(), on_disk, "{engine}");
            let first = migration(list[0].0, list[0].1).unwrap();
            assert_eq!((first.version, first.description.as_ref()), (1, "spine"));
            // The checksum sqlx stored for databases migrated by the `migrate!` macro: SHA-384
            // of the file's text.
            use sha2::Digest;
            let text = std::fs::read(dir.join(list[0].0)).unwrap();
            assert_eq!(
                first.checksum.as_ref(),
                sha2::Sha384::digest(&text).as_slice()
            );
        }
        assert!(migration("spine.sql", "").is_err());
    }
}
