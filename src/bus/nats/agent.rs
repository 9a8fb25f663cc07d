//! A node's end of the NATS bus ([`NatsBus`]): batches, pulses and events as signed requests
//! the controller answers once it has stored them, and commands from the node's durable pull
//! consumer with signed reports onto the reply stream.

use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Mutex, OnceCell};

use super::{ACK_WAIT, REPORT_MESSAGE_MAX, Subjects, connect, ensure_streams};
use crate::bus::{BusError, SendOutcome};
use crate::command::{Command, CommandReport};
use crate::config::NatsConfig;
use crate::wire;

/// A node's traffic over NATS.
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    node: String,
    key: String,
    interval_ms: u64,
    /// How long commands may wait in the stream (the streams are made with it).
    max_ttl: Duration,
    /// The node's command consumer, made on first use: a node that only pulses never makes one.
    commands: OnceCell<Mutex<pull::Stream>>,
    /// Whether to ensure the streams before making it (not when the caller has).
    ensure_streams: bool,
}

impl NatsBus {
    pub async fn connect(
        config: &NatsConfig,
        node: &str,
        key: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let client = connect(config, &format!("fleet-agent {node}")).await?;
        let mut bus = Self::on(client, config, node, key, interval)?;
        bus.ensure_streams = true;
        Ok(bus)
    }

    /// On an existing connection whose streams are ensured (the benchmark runs many simulated
    /// nodes over one).
    pub fn on(
        client: async_nats::Client,
        config: &NatsConfig,
        node: &str,
        key: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            js: jetstream::new(client.clone()),
            client,
            subjects: Subjects::new(&config.prefix)?,
            node: node.to_owned(),
            key: key.to_owned(),
            interval_ms: interval.as_millis() as u64,
            max_ttl: config.max_ttl,
            commands: OnceCell::new(),
            ensure_streams: false,
        })
    }

    /// Sends one batch as a request; the controller answers after the durable write.
    pub async fn send_batch(
        &self,
        instance: &str,
        seq: u64,
        dropped_batches: u64,
        records_json: &[u8],
    ) -> SendOutcome {
        let body = wire::frame(self.interval_ms, records_json, dropped_batches);
        let sealed = wire::Sealed::new(self.key.as_bytes(), &self.node, instance, seq, &body);
        let mut headers = HeaderMap::new();
        for (name, value) in sealed.headers() {
            headers.insert(name, value.as_str());
        }
        let answer = match self
            .client
            .request_with_headers(
                self.subjects.telemetry(&self.node),
                headers,
                Bytes::from(sealed.payload),
            )
            .await
        {
            Ok(m) => m,
            Err(err) => return SendOutcome::Retry(format!("no answer over NATS: {err}")),
        };
        let value: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        let status = value["status"].as_u64().unwrap_or(0) as u16;
        if status == 200 {
            return SendOutcome::Acknowledged;
        }
        let message = value["error"].as_str().unwrap_or("no answer status");
        SendOutcome::of_refusal(status, format!("{status}: {message}"))
    }

    /// A pulse (`heartbeat_subject`) or an event (`event_subject`) as a signed request: the
    /// same JSON body as over HTTP, the signature covering the subject. The answer is the
    /// controller's JSON.
    pub async fn post(
        &self,
        subject: String,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, BusError> {
        let body = serde_json::to_vec(body).expect("JSON serialises");
        let headers = self.signed_headers(&subject, &body);
        let answer = self
            .client
            .request_with_headers(subject, headers, Bytes::from(body))
            .await
            .map_err(|e| BusError::Unreachable(format!("no answer over NATS: {e}")))?;
        let mut value: serde_json::Value = serde_json::from_slice(&answer.payload)
            .map_err(|e| BusError::Unreachable(format!("the answer over NATS is not JSON: {e}")))?;
        let status = value["status"].as_u64().unwrap_or(0) as u16;
        if (200..300).contains(&status) {
            return Ok(value["body"].take());
        }
        Err(BusError::Refused {
            status,
            message: format!(
                "{status}: {}",
                value["error"].as_str().unwrap_or("no answer status")
            ),
        })
    }

    pub fn heartbeat_subject(&self) -> String {
        self.subjects.heartbeat(&self.node)
    }

    pub fn event_subject(&self) -> String {
        self.subjects.event(&self.node)
    }

    /// The node, a fresh timestamp and the signature of `body` for `subject`.
    fn signed_headers(&self, subject: &str, body: &[u8]) -> HeaderMap {
        let ts = wire::request_timestamp_ms();
        let signature = wire::sign_agent(self.key.as_bytes(), &self.node, subject, ts, body);
        let mut headers = HeaderMap::new();
        headers.insert(wire::HEADER_NODE, self.node.as_str());
        headers.insert(wire::HEADER_TIMESTAMP, ts.to_string().as_str());
        headers.insert(wire::HEADER_SIGNATURE, signature.as_str());
        headers
    }

    /// The node's durable pull consumer of its commands (the streams ensured first).
    pub async fn prepare_commands(&self) -> anyhow::Result<&Mutex<pull::Stream>> {
        self.commands
            .get_or_try_init(|| async {
                if self.ensure_streams {
                    ensure_streams(&self.js, &self.subjects, self.max_ttl).await?;
                }
                let name = self.subjects.node_consumer(&self.node);
                let stream = self
                    .js
                    .get_stream(self.subjects.commands_stream())
                    .await
                    .context("cannot open the command stream")?;
                let consumer: jetstream::consumer::PullConsumer = stream
                    .get_or_create_consumer(
                        &name,
                        pull::Config {
                            durable_name: Some(name.clone()),
                            filter_subject: self.subjects.node_commands(&self.node),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: ACK_WAIT,
                            max_ack_pending: 1000,
                            ..Default::default()
                        },
                    )
                    .await
                    .with_context(|| format!("cannot create the JetStream consumer {name}"))?;
                let messages = consumer
                    .messages()
                    .await
                    .with_context(|| format!("cannot consume {name}"))?;
                Ok(Mutex::new(messages))
            })
            .await
    }

    /// Waits for the node's next commands.
    pub async fn fetch(&self) -> anyhow::Result<Vec<(Command, jetstream::Message)>> {
        let mut messages = self.prepare_commands().await?.lock().await;
        let mut out = Vec::new();
        let first = messages
            .next()
            .await
            .context("the NATS command consumer ended")?
            .context("NATS command consumer")?;
        let mut pending = vec![first];
        // Whatever else has already arrived, without waiting.
        while pending.len() < 64 {
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(Some(Ok(m))) => pending.push(m),
                _ => break,
            }
        }
        for message in pending {
            match serde_json::from_slice::<Command>(&message.payload) {
                Ok(c) => out.push((c, message)),
                Err(err) => {
                    tracing::warn!(cause = %format!("{err:#}"), subject = %message.subject, "not a command; dropped");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                }
            }
        }
        Ok(out)
    }

    /// Publishes the reports and waits for the stream to store each.
    pub async fn report(&self, reports: &[CommandReport]) -> anyhow::Result<()> {
        let results =
            futures::future::join_all(reports.iter().map(|r| self.publish_report(r))).await;
        results.into_iter().collect()
    }

    pub async fn settle(&self, message: jetstream::Message) {
        if let Err(err) = message.ack().await {
            tracing::debug!(cause = %format!("{err:#}"), "cannot ack a command; it will be redelivered and answered from the journal");
        }
    }

    /// Publishes one signed report and waits for the stream to store it.
    async fn publish_report(&self, report: &CommandReport) -> anyhow::Result<()> {
        let subject = self.subjects.reply(&self.node);
        // A NATS message is bounded (1 MiB by default): cut the output to fit.
        let report = report.clone().fitted(REPORT_MESSAGE_MAX);
        let body = serde_json::to_vec(&report).expect("reports serialise");
        let headers = self.signed_headers(&subject, &body);
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(body))
            .headers(headers)
            .message_id(format!("{}.{}", report.id, report.state));
        self.js
            .send_publish(subject, publish)
            .await
            .context("cannot publish a report")?
            .await
            .context("NATS did not store a report")?;
        Ok(())
    }
}
