//! The one pipeline data goes through, whatever path it came in by:
//! verify → decode → store (durable, then hot) → (later: fan out, evaluate rules).
//!
//! [`registry`] says who may send and [`node_auth`] checks that a request is theirs; [`ingest`] runs the steps for signed batches, and [`refusals`] records the batches it refuses in the error log; [`commands`]
//! is the command queue (submit → deliver → report → final state, deadlines); [`heartbeats`]
//! stores pulses and notices deadlines passing; [`events`] checks and stores events. The pipeline
//! knows stores and the wire format, never HTTP: `web/` adapts requests to it.

pub mod commands;
pub mod events;
pub mod heartbeats;
pub mod ingest;
pub mod node_auth;
pub mod refusals;
pub mod registry;

pub use commands::{CommandError, CommandQueue};
pub use events::Events;
pub use heartbeats::Heartbeats;
pub use ingest::{Ingest, IngestError, IngestReply, RawBatch};
pub use node_auth::NodeAuth;
pub use registry::Registry;

/// Who sent a request that operators and nodes may both make (a pulse, an event).
#[derive(Debug, Clone)]
pub enum Requester {
    /// An operator, by the label of their token.
    Operator(String),
    /// A node, by its name, the request signed with its key.
    Node(String),
}

impl Requester {
    /// The node a pulse or an event is about: a node speaks for itself only (naming another
    /// is refused with the sentence returned); an operator may name any node, or none.
    pub fn speaks_for(&self, named: Option<String>) -> Result<Option<String>, String> {
        match (self, named) {
            (Requester::Node(me), Some(named)) if &named != me => {
                Err(format!("node {me} cannot speak for node {named}"))
            }
            (Requester::Node(me), _) => Ok(Some(me.clone())),
            (Requester::Operator(_), named) => Ok(named),
        }
    }

    /// Who owns a heartbeat this requester pulses first.
    pub fn owner(&self) -> crate::heartbeat::Owner {
        match self {
            Requester::Node(node) => crate::heartbeat::Owner::Node(node.clone()),
            Requester::Operator(_) => crate::heartbeat::Owner::Operator,
        }
    }
}

/// The status a store failure is answered with, over HTTP and in NATS replies: data the store
/// refuses is the sender's to change (400), never a 503 a client would resend forever.
pub fn fault_status(fault: crate::store::durable::Fault) -> u16 {
    use crate::store::durable::Fault;
    match fault {
        Fault::Data => 400,
        Fault::Conflict => 409,
        Fault::Unavailable => 503,
        Fault::Internal => 500,
    }
}
