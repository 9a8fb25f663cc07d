//! Statement building shared by every table of the durable store: multi-row inserts in chunks
//! of fixed sizes (`insert_rows`), their statement texts kept per shape, and `IN (…)` lists.
//!
//! Must never build a statement shape per row count (the chunk sizes keep the set bounded, so
//! prepared statements are reused), nor give SQLite numbered placeholders in a multi-row insert
//! (binding them costs n²).

use std::collections::HashMap;

use sqlx::any::AnyRow;

use super::{Backend, Durable, StoreError};

/// A query on the `Any` driver, as `insert_rows` hands it to its `bind`.
pub(in crate::store) type AnyQuery<'q> =
    sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Rows per multi-row INSERT, largest first: a fixed set of statement shapes so prepared
/// statements are reused.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// A multi-row INSERT. SQLite gets anonymous `?` placeholders: with numbered ones sqlx looks each
/// parameter's name up, and SQLite finds a name by a linear scan, so binding n parameters costs
/// n² (measured: a quarter of the controller's CPU at 2,000 batches/s).
fn values_sql(backend: Backend, prefix: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * columns * 6);
    sql.push_str(prefix);
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { " (" } else { ", (" });
        for col in 0..columns {
            n += 1;
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// The text of a multi-row statement, built once per shape and kept for the life of the
/// process: a bounded set (a few statements × [`CHUNKS`] × two backends), and `'static` text lets
/// a query borrow the rows it binds instead of copying them.
fn statement_text(
    backend: Backend,
    prefix: &'static str,
    columns: usize,
    rows: usize,
    suffix: &'static str,
) -> &'static str {
    type Shapes = HashMap<(Backend, &'static str, usize, usize, &'static str), &'static str>;
    static SHAPES: std::sync::OnceLock<std::sync::Mutex<Shapes>> = std::sync::OnceLock::new();
    let mut shapes = SHAPES
        .get_or_init(Default::default)
        .lock()
        .expect("statement cache lock poisoned");
    shapes
        .entry((backend, prefix, columns, rows, suffix))
        .or_insert_with(|| {
            let mut sql = values_sql(backend, prefix, columns, rows);
            sql.push_str(suffix);
            Box::leak(sql.into_boxed_str())
        })
}

/// `$first, $first+1, …` (`n` of them), for an `IN (…)` list.
pub(in crate::store) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Durable {
    /// Runs `prefix VALUES (…), (…) suffix` over `rows` in chunks of fixed sizes (so prepared
    /// statements are reused) and returns whatever the statements returned.
    pub(in crate::store) async fn insert_rows<'r, T>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        prefix: &'static str,
        columns: usize,
        suffix: &'static str,
        rows: &'r [T],
        bind: impl Fn(AnyQuery<'r>, &'r T) -> AnyQuery<'r>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut out = Vec::new();
        let mut rest = rows;
        while !rest.is_empty() {
            let n = CHUNKS
                .into_iter()
                .find(|c| *c <= rest.len())
                .expect("the chunk list ends with 1");
            let sql = statement_text(self.backend, prefix, columns, n, suffix);
            let mut query = sqlx::query(sql);
            for row in &rest[..n] {
                query = bind(query, row);
            }
            out.extend(query.fetch_all(&mut **tx).await?);
            rest = &rest[n..];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sql_numbers_placeholders_in_order() {
        assert_eq!(
            values_sql(Backend::Postgres, "INSERT INTO t (a, b) VALUES", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            values_sql(Backend::Sqlite, "INSERT INTO t (a, b) VALUES", 2, 1),
            "INSERT INTO t (a, b) VALUES (?, ?)"
        );
    }
}
