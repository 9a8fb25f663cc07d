//! The controller's side of the NATS bus: dispatch of stored commands onto the stream, the
//! audit consumer (commands sent straight to NATS), the reply consumer (reports), and the
//! responders for batches, pulses and events, each answered only after the pipeline stored it.
//!
//! An adapter like `web/`: it translates messages into pipeline calls and holds no rules.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{ACK_WAIT, Subjects, connect, ensure_streams, header, publish_commands};
use crate::command::{Command, CommandReport};
use crate::config::NatsConfig;
use crate::pipeline::commands::{ApplyOutcome, CommandQueue};
use crate::pipeline::node_auth::{Claim, NodeAuth};
use crate::pipeline::{Events, Heartbeats, Ingest, RawBatch, Requester};
use crate::wire;

/// What the controller's NATS side hands its messages to.
pub struct Pipeline {
    pub queue: Arc<CommandQueue>,
    pub ingest: Arc<Ingest>,
    pub auth: Arc<NodeAuth>,
    pub heartbeats: Arc<Heartbeats>,
    pub events: Events,
}

/// The controller's dispatch: stored commands go onto the stream.
pub struct NatsDispatch {
    js: jetstream::Context,
    subjects: Subjects,
}

impl crate::pipeline::commands::Dispatch for NatsDispatch {
    fn publish<'a>(
        &'a self,
        commands: &'a [Command],
    ) -> futures::future::BoxFuture<'a, Vec<String>> {
        Box::pin(publish_commands(&self.js, &self.subjects, commands))
    }
}

/// The controller's NATS side: connected, streams ensured.
pub struct ControllerNats {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
}

impl ControllerNats {
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&config.prefix)?;
        let client = connect(config, "fleet-controller").await?;
        let js = jetstream::new(client.clone());
        ensure_streams(&js, &subjects, config.max_ttl).await?;
        Ok(Self {
            client,
            js,
            subjects,
        })
    }

    pub fn dispatch(&self) -> Arc<NatsDispatch> {
        Arc::new(NatsDispatch {
            js: self.js.clone(),
            subjects: self.subjects.clone(),
        })
    }

    /// Consumes the command stream (the audit log sees commands sent straight to NATS), the
    /// reply stream (reports into the queue), telemetry requests (into the one ingest
    /// pipeline) and pulse and event requests, until `shutdown`.
    pub async fn run(self, pipeline: Pipeline, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Pipeline {
            queue,
            ingest,
            auth,
            heartbeats,
            events,
        } = pipeline;
        let audit = self
            .durable_consumer(&self.subjects.commands_stream(), "controller_audit", None)
            .await?;
        let replies = self
            .durable_consumer(&self.subjects.replies_stream(), "controller_replies", None)
            .await?;
        let telemetry = self
            .client
            .queue_subscribe(
                self.subjects.all_telemetry(),
                format!("{}_ingest", self.subjects.prefix),
            )
            .await
            .context("cannot subscribe to telemetry on NATS")?;
        let mut requests = Vec::new();
        for subject in [self.subjects.all_heartbeats(), self.subjects.all_events()] {
            requests.push(
                self.client
                    .queue_subscribe(subject, format!("{}_requests", self.subjects.prefix))
                    .await
                    .context("cannot subscribe to pulses and events on NATS")?,
            );
        }
        let requests = futures::stream::select_all(requests);
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(consume_audit(audit, queue.clone(), shutdown.clone()));
        tasks.spawn(consume_replies(
            replies,
            self.subjects.clone(),
            queue,
            auth.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(serve_telemetry(
            telemetry,
            self.client.clone(),
            ingest,
            shutdown.clone(),
        ));
        tasks.spawn(serve_requests(
            requests,
            self.client.clone(),
            self.subjects.clone(),
            Requests {
                auth,
                heartbeats,
                events,
            },
            shutdown.clone(),
        ));
        tasks.close();
        tasks.wait().await;
        Ok(())
    }

    async fn durable_consumer(
        &self,
        stream: &str,
        name: &str,
        filter: Option<String>,
    ) -> anyhow::Result<pull::Stream> {
        let name = format!("{}_{name}", self.subjects.prefix);
        let stream = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| format!("cannot open the JetStream stream {stream}"))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    filter_subject: filter.unwrap_or_default(),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot create the JetStream consumer {name}"))?;
        consumer
            .messages()
            .await
            .with_context(|| format!("cannot consume {name}"))
    }
}

/// Most messages a controller consumer takes in one go (one database transaction).
const CONSUME_BATCH: usize = 256;
/// How long a consumer waits for more messages to join a batch.
const CONSUME_LINGER: Duration = Duration::from_millis(5);

/// Waits for the next message, then takes whatever else has already arrived. `None` at
/// shutdown or when the consumer ends.
async fn next_batch(
    messages: &mut pull::Stream,
    shutdown: &CancellationToken,
) -> Option<Vec<jetstream::Message>> {
    let mut batch = Vec::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return None,
            next = messages.next() => next?,
        };
        match next {
            Ok(m) => {
                batch.push(m);
                break;
            }
            Err(err) => tracing::warn!(cause = %format!("{err:#}"), "NATS consumer"),
        }
    }
    // Linger a moment for more: under load, one transaction for many messages instead of one
    // each (measured: a fan-out to 1,000 nodes arrived in batches of 1 to 5 without it).
    let linger = tokio::time::Instant::now() + CONSUME_LINGER;
    while batch.len() < CONSUME_BATCH {
        match tokio::time::timeout_at(linger, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push(m),
            _ => break,
        }
    }
    tracing::debug!(messages = batch.len(), "a batch from a NATS consumer");
    Some(batch)
}

async fn consume_audit(
    mut messages: pull::Stream,
    queue: Arc<CommandQueue>,
    shutdown: CancellationToken,
) {
    while let Some(batch) = next_batch(&mut messages, &shutdown).await {
        let commands: Vec<Command> = batch
            .iter()
            .filter_map(|m| match serde_json::from_slice::<Command>(&m.payload) {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(cause = %format!("{err:#}"), subject = %m.subject, "a message on the command stream is not a command; ignored");
                    None
                }
            })
            .collect();
        let retry = match queue.record_seen(commands).await {
            Ok(()) => false,
            Err(err) => {
                tracing::warn!(cause = %format!("{err:#}"), "cannot record commands from NATS; they will be redelivered");
                true
            }
        };
        for m in batch {
            let _ = if retry {
                m.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            } else {
                m.ack().await
            };
        }
    }
}

async fn consume_replies(
    mut messages: pull::Stream,
    subjects: Subjects,
    queue: Arc<CommandQueue>,
    auth: Arc<NodeAuth>,
    shutdown: CancellationToken,
) {
    while let Some(batch) = next_batch(&mut messages, &shutdown).await {
        // Check every report; those that pass are applied together.
        let mut checked: Vec<(String, CommandReport)> = Vec::new();
        let mut verdicts: Vec<Result<usize, Skip>> = Vec::with_capacity(batch.len());
        for message in &batch {
            let verdict = check_report(message, &subjects, &auth).map(|(node, report)| {
                checked.push((node, report));
                checked.len() - 1
            });
            verdicts.push(verdict);
        }
        let pairs: Vec<(&str, &CommandReport)> =
            checked.iter().map(|(n, r)| (n.as_str(), r)).collect();
        let outcomes = if pairs.is_empty() {
            Ok(Vec::new())
        } else {
            queue.apply(&pairs).await
        };
        for (message, verdict) in batch.iter().zip(verdicts) {
            let verdict = match (verdict, &outcomes) {
                (Err(skip), _) => Err(skip),
                (Ok(_), Err(err)) => Err(Skip::Wait(format!("{err:#}"))),
                // A command sent straight to NATS may be answered before the audit consumer
                // has recorded it: try again shortly rather than lose the outcome.
                (Ok(i), Ok(outcomes)) => match outcomes[i] {
                    ApplyOutcome::Unknown => Err(Skip::Retry(format!(
                        "command {} not recorded yet",
                        checked[i].1.id
                    ))),
                    _ => Ok(()),
                },
            };
            settle_report(message, verdict).await;
        }
    }
}

/// The node a report on the stream comes from, and the report, if its signature holds.
fn check_report(
    message: &jetstream::Message,
    subjects: &Subjects,
    auth: &NodeAuth,
) -> Result<(String, CommandReport), Skip> {
    let subject = message.subject.as_str();
    let node = subjects
        .node_of(subject)
        .ok_or_else(|| Skip::Drop(format!("subject {subject} names no node")))?;
    let header = |name| header(&message.headers, name);
    // Reports wait in the stream, so no clock window: a replay is harmless (a report moves a
    // command forward only once).
    let (timestamp, signature) = (
        header(wire::HEADER_TIMESTAMP),
        header(wire::HEADER_SIGNATURE),
    );
    let claim = Claim {
        node: &node,
        timestamp: &timestamp,
        signature: &signature,
        source: None,
    };
    auth.verify_stored(&claim, subject, &message.payload)
        // Perhaps a node enrolled a moment ago that the registry has not re-read yet.
        .map_err(|e| Skip::Retry(e.to_string()))?;
    let report: CommandReport =
        serde_json::from_slice(&message.payload).map_err(|e| Skip::Drop(e.to_string()))?;
    report.validate().map_err(|e| Skip::Drop(e.to_string()))?;
    Ok((node, report))
}

async fn settle_report(message: &jetstream::Message, verdict: Result<(), Skip>) {
    match verdict {
        Ok(()) => {
            let _ = message.ack().await;
        }
        Err(Skip::Retry(reason)) if message.info().is_ok_and(|i| i.delivered < REPORT_RETRIES) => {
            tracing::debug!(subject = %message.subject, %reason, "a report on NATS is retried");
            let _ = message
                .ack_with(jetstream::AckKind::Nak(Some(REPORT_RETRY_AFTER)))
                .await;
        }
        Err(Skip::Wait(reason)) => {
            tracing::warn!(subject = %message.subject, %reason, "cannot store a report from NATS yet; it stays on the stream");
            let _ = message
                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
        Err(Skip::Retry(reason) | Skip::Drop(reason)) => {
            tracing::warn!(subject = %message.subject, %reason, "a report on NATS was not applied");
            let _ = message.ack().await;
        }
    }
}

/// Why a report from the stream was not applied.
enum Skip {
    /// For good (forged, malformed).
    Drop(String),
    /// For now (the command not recorded yet, the node not enrolled yet): a bounded number of
    /// times.
    Retry(String),
    /// Until the store takes it (the store is down): however long that is.
    Wait(String),
}

/// How often a report that cannot be applied yet is redelivered (a report can outrun its
/// command through the audit consumer by a few milliseconds) before it is given up on: a minute
/// in all.
const REPORT_RETRIES: i64 = 600;
const REPORT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Telemetry over NATS: the same verification and store as `POST /api/v1/ingest`; the reply
/// says what HTTP would have (`{"status": 200, …}`), sent only after the durable write.
async fn serve_telemetry(
    mut requests: async_nats::Subscriber,
    client: async_nats::Client,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = requests.next() => next,
        };
        let Some(message) = next else { break };
        let ingest = ingest.clone();
        let client = client.clone();
        tasks.spawn(async move {
            let Some(reply) = message.reply.clone() else {
                return;
            };
            let header = |name| header(&message.headers, name);
            let raw = RawBatch {
                node: header(wire::HEADER_NODE),
                instance: header(wire::HEADER_INSTANCE),
                seq: header(wire::HEADER_SEQ),
                timestamp_ms: header(wire::HEADER_TIMESTAMP),
                signature: header(wire::HEADER_SIGNATURE),
                gzip: header("content-encoding").eq_ignore_ascii_case("gzip"),
                body: message.payload.clone(),
                source: None,
            };
            let answer = match ingest.ingest(raw).await {
                Ok(r) => serde_json::json!({ "status": 200, "seq": r.seq, "result": r.status }),
                Err(e) => serde_json::json!({ "status": e.status(), "error": e.to_string() }),
            };
            let _ = client.publish(reply, Bytes::from(answer.to_string())).await;
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// What pulse and event requests need.
struct Requests {
    auth: Arc<NodeAuth>,
    heartbeats: Arc<Heartbeats>,
    events: Events,
}

/// Pulses and events over NATS: signed by the node like its HTTP requests (the signature
/// covers the subject, and each is taken once), then the same pipeline calls as
/// `POST /api/v1/heartbeats` and `POST /api/v1/events`. The reply is `{"status": 200 | 201,
/// "body": <the API's answer>}` or `{"status": <the API's status>, "error": "…"}`, sent after
/// the write.
async fn serve_requests(
    mut requests: futures::stream::SelectAll<async_nats::Subscriber>,
    client: async_nats::Client,
    subjects: Subjects,
    pipeline: Requests,
    shutdown: CancellationToken,
) {
    let pipeline = Arc::new(pipeline);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = requests.next() => next,
        };
        let Some(message) = next else { break };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let (pipeline, client, subjects) = (pipeline.clone(), client.clone(), subjects.clone());
        tasks.spawn(async move {
            let answer = match answer_request(&message, &subjects, &pipeline).await {
                Ok((status, body)) => serde_json::json!({ "status": status, "body": body }),
                Err(Refusal { status, message }) => {
                    serde_json::json!({ "status": status, "error": message })
                }
            };
            let _ = client.publish(reply, Bytes::from(answer.to_string())).await;
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// A refused request: the status the API would have answered, and its sentence.
struct Refusal {
    status: u16,
    message: String,
}

impl Refusal {
    fn new(status: u16, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }
}

/// Largest pulse or event body, as over HTTP.
const REQUEST_BODY_MAX: usize = crate::heartbeat::limits::REQUEST_BODY_MAX;

async fn answer_request(
    message: &async_nats::Message,
    subjects: &Subjects,
    pipeline: &Requests,
) -> Result<(u16, serde_json::Value), Refusal> {
    use crate::pipeline::events::EventError;
    let subject = message.subject.as_str();
    if message.payload.len() > REQUEST_BODY_MAX {
        return Err(Refusal::new(
            413,
            format!("the body is over {REQUEST_BODY_MAX} bytes"),
        ));
    }
    let header = |name| header(&message.headers, name);
    let (node, timestamp, signature) = (
        header(wire::HEADER_NODE),
        header(wire::HEADER_TIMESTAMP),
        header(wire::HEADER_SIGNATURE),
    );
    // The subject names the node too: it must be the one that signed.
    if subjects.node_of(subject).as_deref() != Some(node.as_str()) {
        return Err(Refusal::new(
            403,
            format!("the subject {subject} is not node {node:?}'s"),
        ));
    }
    let claim = Claim {
        node: &node,
        timestamp: &timestamp,
        signature: &signature,
        source: None,
    };
    let who = pipeline
        .auth
        .verify_request(&claim, subject, &message.payload)
        .await
        .map(Requester::Node)
        .map_err(|e| Refusal::new(e.status(), &e))?;
    let invalid = |e: serde_json::Error| Refusal::new(400, format!("the body is not valid: {e}"));
    if subject == subjects.heartbeat(&node) {
        let request = serde_json::from_slice(&message.payload).map_err(invalid)?;
        let outcome = pipeline
            .heartbeats
            .pulse_request(&who, request)
            .await
            .map_err(|e| Refusal::new(e.status(), &e))?;
        Ok((200, crate::pipeline::heartbeats::pulse_answer(&outcome)))
    } else {
        let request = serde_json::from_slice(&message.payload).map_err(invalid)?;
        let id = pipeline
            .events
            .add_request(&who, request)
            .await
            .map_err(|e| match &e {
                EventError::Store(err) => {
                    tracing::warn!(cause = %format!("{err:#}"), "an event from NATS failed in the store");
                    Refusal::new(e.status(), err.public_message())
                }
                _ => Refusal::new(e.status(), &e),
            })?;
        Ok((201, serde_json::json!({ "id": id })))
    }
}
