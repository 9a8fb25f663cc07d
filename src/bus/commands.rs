//! The command bus, agent side: one trait ([`CommandSource`]) with two backends (the HTTP
//! long-poll in `bus::http`, JetStream in `bus::nats`). The loop that feeds what arrives to the
//! executor is the agent runtime's (`agent::commands`).

use crate::command::{Command, CommandReport};
use std::future::Future;

/// Where an agent's commands come from and where its reports go.
pub trait CommandSource: Send + Sync + 'static {
    /// What settles one delivery once its report is stored (a JetStream message to ack).
    type Receipt: Send + 'static;

    /// Waits for the next commands (a long-poll or a pull); may return none.
    fn fetch(&self) -> impl Future<Output = anyhow::Result<Vec<(Command, Self::Receipt)>>> + Send;

    /// Hands reports over; `Ok` only once the far end has them durably.
    fn report(&self, reports: &[CommandReport]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The delivery is done with.
    fn settle(&self, receipt: Self::Receipt) -> impl Future<Output = ()> + Send;
}
