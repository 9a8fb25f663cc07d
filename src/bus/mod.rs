//! How a node's traffic moves: one interface, [`Bus`], with two backends, [`http`] (the
//! controller's API) and [`nats`] (NATS request/reply and JetStream). Through it the agent and
//! the CLI send batches, pulses and events and receive commands; the node's durable spool
//! ([`spool`]) and the command source trait ([`commands`]) sit beside it. The controller's side
//! of NATS is [`nats::controller`]. The batch format itself is [`crate::wire`].
//!
//! It knows nothing of stores: what the controller's NATS side consumes goes to the pipeline.

pub mod commands;
pub mod http;
pub mod nats;
pub mod spool;

use std::path::Path;
use std::time::Duration;

pub use http::SendOutcome;

use crate::command::{Command, CommandReport};
use crate::config::NatsConfig;

/// A node's way to the controller: batches, pulses and events out, commands in and their
/// reports out. Over HTTP every request is signed with the node key and answered by the
/// controller's API; over NATS the same bodies travel as signed requests (batches, pulses,
/// events) and on JetStream streams (commands, reports).
pub enum Bus {
    Http(Box<http::HttpBus>),
    Nats(Box<nats::NatsBus>),
}

/// Why a pulse or an event did not go through.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The controller answered with a refusal (its status, as over HTTP, and its sentence).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// No answer: the network, a timeout, an answer that is not the controller's.
    #[error("{0}")]
    Unreachable(String),
}

/// What settles one command delivery once its report is stored.
pub enum Receipt {
    /// Nothing: over HTTP the stored report is the settlement.
    Http,
    /// The JetStream message to acknowledge.
    Nats(Box<async_nats::jetstream::Message>),
}

impl Bus {
    /// Over HTTP to the controller at `controller`.
    pub fn http(
        controller: &str,
        node: &str,
        key: &str,
        ca_cert: Option<&Path>,
        request_timeout: Duration,
        interval: Duration,
        poll_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Bus::Http(Box::new(http::HttpBus::new(
            controller,
            node,
            key,
            ca_cert,
            request_timeout,
            interval,
            poll_timeout,
        )?)))
    }

    /// Over NATS (`config.url`).
    pub async fn nats(
        config: &NatsConfig,
        node: &str,
        key: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Bus::Nats(Box::new(
            nats::NatsBus::connect(config, node, key, interval).await?,
        )))
    }

    /// Sends one spooled batch (framed and signed now).
    pub async fn send_batch(
        &self,
        instance: &str,
        seq: u64,
        dropped_batches: u64,
        records_json: &[u8],
    ) -> SendOutcome {
        match self {
            Bus::Http(b) => {
                b.send_batch(instance, seq, dropped_batches, records_json)
                    .await
            }
            Bus::Nats(b) => {
                b.send_batch(instance, seq, dropped_batches, records_json)
                    .await
            }
        }
    }

    /// A pulse (the body of `POST /api/v1/heartbeats`); the controller's answer once stored.
    pub async fn pulse(&self, body: &serde_json::Value) -> Result<serde_json::Value, BusError> {
        match self {
            Bus::Http(b) => b.post(crate::wire::HEARTBEATS_PATH, body).await,
            Bus::Nats(b) => b.post(b.heartbeat_subject(), body).await,
        }
    }

    /// An event (the body of `POST /api/v1/events`); the controller's answer once stored.
    pub async fn event(&self, body: &serde_json::Value) -> Result<serde_json::Value, BusError> {
        match self {
            Bus::Http(b) => b.post(crate::wire::EVENTS_PATH, body).await,
            Bus::Nats(b) => b.post(b.event_subject(), body).await,
        }
    }

    /// Makes ready to receive commands (over NATS: the node's consumer), so a failure shows
    /// at start rather than at the first fetch.
    pub async fn prepare_commands(&self) -> anyhow::Result<()> {
        match self {
            Bus::Http(_) => Ok(()),
            Bus::Nats(b) => b.prepare_commands().await.map(|_| ()),
        }
    }
}

impl commands::CommandSource for Bus {
    type Receipt = Receipt;

    async fn fetch(&self) -> anyhow::Result<Vec<(Command, Receipt)>> {
        Ok(match self {
            Bus::Http(b) => b
                .fetch()
                .await?
                .into_iter()
                .map(|c| (c, Receipt::Http))
                .collect(),
            Bus::Nats(b) => b
                .fetch()
                .await?
                .into_iter()
                .map(|(c, m)| (c, Receipt::Nats(Box::new(m))))
                .collect(),
        })
    }

    async fn report(&self, reports: &[CommandReport]) -> anyhow::Result<()> {
        match self {
            Bus::Http(b) => b.report(reports).await,
            Bus::Nats(b) => b.report(reports).await,
        }
    }

    async fn settle(&self, receipt: Receipt) {
        if let (Bus::Nats(b), Receipt::Nats(message)) = (self, receipt) {
            b.settle(*message).await;
        }
    }
}
