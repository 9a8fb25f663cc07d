//! How data moves between agent and controller: the signed batch format ([`wire`]), the agent's
//! durable spool ([`spool`]), the HTTP sender and command long-poll ([`http`]), and the command
//! bus trait with the agent's command loop ([`commands`]).
//!
//! Only this module knows how a batch is framed and signed. It knows nothing about stores.

pub mod commands;
pub mod http;
pub mod nats;
pub mod spool;
pub mod wire;

/// How an agent's batches leave: HTTP to the controller, or NATS requests.
pub enum BatchSender {
    Http(http::HttpSender),
    Nats(nats::NatsBatchSender),
}

impl BatchSender {
    pub async fn send(
        &self,
        instance: &str,
        seq: u64,
        dropped_batches: u64,
        records_json: &[u8],
    ) -> http::SendOutcome {
        match self {
            BatchSender::Http(s) => s.send(instance, seq, dropped_batches, records_json).await,
            BatchSender::Nats(s) => s.send(instance, seq, dropped_batches, records_json).await,
        }
    }
}
