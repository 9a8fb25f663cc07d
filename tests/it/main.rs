//! Integration tests: one binary, a module per area, against real PostgreSQL, Redis and
//! `fleet` processes. See harness.rs for how each test isolates itself.

mod api;
mod harness;
mod ingest;
mod registry;
