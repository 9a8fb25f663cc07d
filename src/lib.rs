//! fleet: run and watch a fleet of Linux machines from one binary.
//!
//! # Layout
//!
//! - [`model`]: the data model (nodes, records, samples, vitals) and its limits; no I/O.
//! - [`config`]: every mode's configuration as plain data; TOML, environment, flags.
//! - [`collectors`]: what the agent measures, one file per collector.
//! - [`command`]: the command model: the signed envelope, kinds, methods, states, results.
//! - [`executor`]: the node's side of a command: policy, the exactly-once journal, running it.
//! - [`heartbeat`]: heartbeats and events as values: pulses, states, levels, limits.
//! - [`bus`]: how data and commands move: the signed wire format, the agent's spool, the HTTP
//!   and NATS backends.
//! - [`pipeline`]: the one path data takes in the controller: verify → decode → store.
//! - [`store`]: the durable store (SQLite | PostgreSQL) and the hot ring (memory | Redis).
//! - [`web`]: the axum router: ingest, the read API, auth.
//! - [`modes`]: one module per subcommand; wiring only.
//! - [`timefmt`]: times in and out (RFC 3339, relative forms).
//! - [`files`]: data dirs and files made private whatever the umask, and refused when they are not.
//! - [`termsafe`]: others' text (command output, event messages) made safe to print to a person.

pub mod agent;
pub mod argv_pattern;
pub mod backoff;
pub mod bus;
pub mod client;
pub mod collectors;
pub mod command;
pub mod config;
pub mod executor;
pub mod files;
pub mod heartbeat;
pub mod http_client;
pub mod model;
pub mod modes;
pub mod pipeline;
pub mod process;
pub mod store;
pub mod termsafe;
pub mod timefmt;

pub mod web;
pub mod wire;

/// Installs ring as the process-wide rustls crypto provider. Call it first thing: rustls has no
/// default when (as here) only ring is compiled in.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
