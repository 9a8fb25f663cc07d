//! The one pipeline data goes through, whatever path it came in by:
//! verify → decode → store (durable, then hot) → (later: fan out, evaluate rules).
//!
//! [`registry`] says who may send and [`node_auth`] checks that a request is theirs; [`ingest`] runs the steps for signed batches; [`commands`]
//! is the command queue (submit → deliver → report → final state, deadlines); [`heartbeats`]
//! stores pulses and notices deadlines passing. The pipeline
//! knows stores and the wire format, never HTTP: `web/` adapts requests to it.

pub mod commands;
pub mod heartbeats;
pub mod ingest;
pub mod node_auth;
pub mod registry;

pub use commands::{CommandError, CommandQueue};
pub use heartbeats::Heartbeats;
pub use ingest::{Ingest, IngestError, IngestReply, RawBatch};
pub use node_auth::NodeAuth;
pub use registry::Registry;
