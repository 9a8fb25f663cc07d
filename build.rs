//! Embeds the SQL migrations in the binary: every `migrations/{sqlite,postgres}/NNNN_words.sql`
//! becomes an entry of a list `store::durable::migrations` hands to sqlx's migrator at startup.
//!
//! This replaces sqlx's `migrate!` macro, whose proc macro compiled sqlx, both database drivers,
//! rustls and SQLite's C source a second time, for the host: a third of a cold build's CPU for
//! one list of files. Must never do more than list files: no network, no other input.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::new();
    for (engine, constant) in [("sqlite", "SQLITE"), ("postgres", "POSTGRES")] {
        let dir = root.join(engine);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        writeln!(out, "pub(super) const {constant}: &[(&str, &str)] = &[").unwrap();
        for path in files {
            let name = path
                .file_name()
                .unwrap()
                .to_str()
                .expect("a UTF-8 file name");
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(
                out,
                "    ({name:?}, include_str!({:?})),",
                path.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
