//! Where data is kept: the durable store (SQLite or PostgreSQL, [`durable`]) and the hot ring
//! (memory or Redis, [`hot`]).
//!
//! Stores know nothing about HTTP, the wire format or signatures: they take verified, typed
//! values. The durable store is the truth; the hot store is a cache of the newest records.

pub mod commands;
pub mod durable;
pub mod events;
pub mod heartbeats;
pub mod hot;
pub mod logins;
pub mod nonces;
pub mod sessions;
pub mod tokens;

pub use durable::{Durable, IngestBatch, IngestOutcome, StoreError};
pub use hot::HotStore;
