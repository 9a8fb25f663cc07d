//! fleet: run and watch a fleet of Linux machines from one binary.
//!
//! # Layout
//!
//! Layers, bottom to top (ARCHITECTURE.md; `tests/it/architecture.rs` keeps them true): a
//! module imports only from layers below its own.
//!
//! - values: [`model`] (nodes, records, samples and their limits), [`command`] (the signed
//!   command envelope and its record), [`argv_pattern`] (the allow-list's patterns),
//!   [`steward`] (steward's message files),
//!   [`heartbeat`] (pulses, states, levels), [`timefmt`], [`termsafe`], [`files`] (private data
//!   dirs), [`http_client`] (clients made one way), [`backoff`], [`process`] (bounded children);
//! - [`config`]: every mode's configuration as values;
//! - [`wire`]: the signed batch and request format both transports share;
//! - [`store`]: the durable store (SQLite | PostgreSQL) and the hot ring (memory | Redis);
//! - [`pipeline`]: the controller's one path: verify → decode → store; commands, heartbeats,
//!   events;
//! - adapters: [`web`] (the HTTP API, the dashboard, the watchTower listener), [`bus`] (a node's
//!   traffic over HTTP or NATS, and the controller's NATS side), [`collectors`] (what the agent
//!   measures), [`executor`] (the node's side of a command), [`client`] (the operator's API
//!   client);
//! - runtimes: [`agent`] (the agent's loops), [`inbox_file`] (`fleet send --watch`);
//! - [`modes`]: one module per subcommand; wiring only.

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
pub mod inbox_file;
pub mod model;
pub mod modes;
pub mod pipeline;
pub mod process;
pub mod steward;
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
