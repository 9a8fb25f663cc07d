//! The NATS backend of the bus (JetStream for commands and reports, core request/reply for
//! telemetry), used when a `nats.url` is configured.
//!
//! Subjects follow steward's scheme under a prefix: commands on
//! `<prefix>.<node>.<CommandACK|CommandNACK|EventACK|EventNACK>.<method>` in the stream
//! `<PREFIX>_COMMANDS`, one durable pull consumer per node (`<prefix>_node_<node>`), explicit
//! acks, `Nats-Msg-Id` de-duplication; reports on `<prefix>.<node>.Reply` in `<PREFIX>_REPLIES`;
//! telemetry batches as requests on `<prefix>.<node>.Telemetry`, pulses on
//! `<prefix>.<node>.Heartbeat` and events on `<prefix>.<node>.Event` (both requests, answered
//! once stored; docs/bus.md). Commands are the only
//! four-token subjects under the prefix, so the command stream takes `<prefix>.*.*.*` and every
//! node's filter `<prefix>.<node>.*.*` is a subset of it (which servers before 2.10 require).
//! Node names may
//! contain dots, which NATS uses between tokens: where a name becomes a token it is written with
//! `~` for `.` (no node name contains `~`, so the encoding is reversible).
//!
//! Everything an agent publishes is signed with its node key like its HTTP requests; commands
//! carry the operator's ed25519 signature whichever path they take. This module knows nothing
//! of stores: the controller's side ([`controller`]) hands what it consumes to the pipeline.
//! By role: [`controller`] (dispatch, the audit and reply consumers, the request responders),
//! [`agent`] (a node's end: [`NatsBus`]), [`sender`] (`fleet send --nats-url`).

pub mod agent;
pub mod controller;
pub mod sender;

use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::command::Command;
use crate::config::NatsConfig;

pub use agent::NatsBus;
pub use controller::ControllerNats;
pub use sender::Sender;

/// How long a consumer waits for an ack before it redelivers.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(30);
/// The window in which the stream drops a repeated `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Largest report message (under the server's default max_payload of 1 MiB).
pub(super) const REPORT_MESSAGE_MAX: usize = 900 * 1024;
/// Timeout of one publish or request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A node name as one subject token (or consumer name part): `.` becomes `~`.
pub fn encode_token(name: &str) -> String {
    name.replace('.', "~")
}

pub fn decode_token(token: &str) -> String {
    token.replace('~', ".")
}

/// The subject and stream names under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            anyhow::bail!(
                "NATS prefix {prefix:?} must be letters, digits, '_' or '-' (it names streams too)"
            );
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn command(&self, c: &Command) -> String {
        format!(
            "{}.{}.{}.{}",
            self.prefix,
            encode_token(&c.node),
            c.kind,
            c.method
        )
    }

    pub fn node_commands(&self, node: &str) -> String {
        format!("{}.{}.*.*", self.prefix, encode_token(node))
    }

    pub fn all_commands(&self) -> String {
        format!("{}.*.*.*", self.prefix)
    }

    pub fn reply(&self, node: &str) -> String {
        format!("{}.{}.Reply", self.prefix, encode_token(node))
    }

    pub fn all_replies(&self) -> String {
        format!("{}.*.Reply", self.prefix)
    }

    pub fn telemetry(&self, node: &str) -> String {
        format!("{}.{}.Telemetry", self.prefix, encode_token(node))
    }

    pub fn all_telemetry(&self) -> String {
        format!("{}.*.Telemetry", self.prefix)
    }

    /// Where a node's pulses go (requests, like `POST /api/v1/heartbeats`).
    pub fn heartbeat(&self, node: &str) -> String {
        format!("{}.{}.Heartbeat", self.prefix, encode_token(node))
    }

    pub fn all_heartbeats(&self) -> String {
        format!("{}.*.Heartbeat", self.prefix)
    }

    /// Where a node's events go (requests, like `POST /api/v1/events`).
    pub fn event(&self, node: &str) -> String {
        format!("{}.{}.Event", self.prefix, encode_token(node))
    }

    pub fn all_events(&self) -> String {
        format!("{}.*.Event", self.prefix)
    }

    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.prefix.to_uppercase())
    }

    pub fn replies_stream(&self) -> String {
        format!("{}_REPLIES", self.prefix.to_uppercase())
    }

    pub fn node_consumer(&self, node: &str) -> String {
        format!("{}_node_{}", self.prefix, encode_token(node))
    }

    /// The node named by the second token of a subject.
    pub fn node_of(&self, subject: &str) -> Option<String> {
        let mut tokens = subject.split('.');
        (tokens.next()? == self.prefix).then_some(())?;
        tokens.next().map(decode_token)
    }
}

/// Connects with the configured credentials and TLS.
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let url = config
        .url
        .as_deref()
        .context("no NATS URL: set nats.url or pass --nats-url")?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT));
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &config.nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &config.ca_cert {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    options
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// One durable consumer per node: the limit must sit above any fleet. Servers from 2.15
/// replace 0 and -1 with a default of 1,000, so "unlimited" has to be spelled as a number.
const MAX_CONSUMERS: i32 = 1_000_000;

/// Creates the command and reply streams if they do not exist.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    max_ttl: Duration,
) -> anyhow::Result<()> {
    for (name, subject) in [
        (subjects.commands_stream(), subjects.all_commands()),
        (subjects.replies_stream(), subjects.all_replies()),
    ] {
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                max_age: max_ttl,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                max_consumers: MAX_CONSUMERS,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the JetStream stream {name}"))?;
        let mut config = stream.info().await?.config.clone();
        if config.max_consumers > 0 && config.max_consumers < MAX_CONSUMERS {
            // A stream made by an older fleet carries the server's default cap; lift it
            // so node number 1,001 can still get its consumer.
            config.max_consumers = MAX_CONSUMERS;
            if let Err(err) = js.update_stream(config).await {
                tracing::warn!(stream = %name, error = %format!("{err:#}"), "cannot lift the stream's consumer limit; nodes beyond it will not get commands over NATS");
            }
        }
    }
    Ok(())
}

/// Publishes commands to the stream and returns the ids the stream acknowledged.
pub(super) async fn publish_commands(
    js: &jetstream::Context,
    subjects: &Subjects,
    commands: &[Command],
) -> Vec<String> {
    let mut pending = Vec::with_capacity(commands.len());
    for c in commands {
        let payload = Bytes::from(serde_json::to_vec(c).expect("commands serialise"));
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(&c.id);
        match js.send_publish(subjects.command(c), publish).await {
            Ok(ack) => pending.push((c.id.clone(), ack)),
            Err(err) => {
                tracing::warn!(id = %c.id, cause = %format!("{err:#}"), "cannot publish a command to NATS")
            }
        }
    }
    let mut acked = Vec::with_capacity(pending.len());
    for (id, ack) in pending {
        match ack.await {
            Ok(_) => acked.push(id),
            Err(err) => {
                tracing::warn!(%id, cause = %format!("{err:#}"), "NATS did not store a command")
            }
        }
    }
    acked
}

/// A header's value, or empty (the checks that follow say what is missing).
pub(super) fn header(headers: &Option<HeaderMap>, name: &str) -> String {
    headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_with_dots_round_trip_through_subjects() {
        let s = Subjects::new("fleet").unwrap();
        for name in ["web1", "db.eu-west.example.com", "a_b-c"] {
            let token = encode_token(name);
            assert!(!token.contains('.'));
            assert_eq!(decode_token(&token), name);
            assert_eq!(s.node_of(&s.reply(name)).unwrap(), name);
            assert_eq!(s.node_of(&s.telemetry(name)).unwrap(), name);
            assert_eq!(s.node_of(&s.heartbeat(name)).unwrap(), name);
            assert_eq!(s.node_of(&s.event(name)).unwrap(), name);
        }
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }
}
