//! The NATS backend of the bus (JetStream for commands and reports, core request/reply for
//! telemetry), used when a `nats.url` is configured.
//!
//! Subjects follow steward's scheme under a prefix: commands on
//! `<prefix>.<node>.<CommandACK|CommandNACK|EventACK|EventNACK>.<method>` in the stream
//! `<PREFIX>_COMMANDS`, one durable pull consumer per node (`<prefix>_node_<node>`), explicit
//! acks, `Nats-Msg-Id` de-duplication; reports on `<prefix>.<node>.Reply` in `<PREFIX>_REPLIES`;
//! telemetry batches as requests on `<prefix>.<node>.Telemetry`. Commands are the only
//! four-token subjects under the prefix, so the command stream takes `<prefix>.*.*.*` and every
//! node's filter `<prefix>.<node>.*.*` is a subset of it (which servers before 2.10 require).
//! Node names may
//! contain dots, which NATS uses between tokens: where a name becomes a token it is written with
//! `~` for `.` (no node name contains `~`, so the encoding is reversible).
//!
//! Everything an agent publishes is signed with its node key like its HTTP requests; commands
//! carry the operator's ed25519 signature whichever path they take. This module knows nothing
//! of stores: the controller's side hands what it consumes to `pipeline::commands` and
//! `pipeline::ingest`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::http::SendOutcome;
use super::wire;
use crate::command::{Command, CommandReport, CommandState};
use crate::config::NatsConfig;
use crate::pipeline::commands::{CommandQueue, Submission};
use crate::pipeline::node_auth::{Claim, NodeAuth};
use crate::pipeline::{Ingest, RawBatch};
use crate::store::commands::ApplyOutcome;
use crate::store::commands::CommandRecord;

/// How long a consumer waits for an ack before it redelivers.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The window in which the stream drops a repeated `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Largest report message (under the server's default max_payload of 1 MiB).
const REPORT_MESSAGE_MAX: usize = 900 * 1024;
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
                tracing::warn!(stream = %name, error = %err, "cannot lift the stream's consumer limit; nodes beyond it will not get commands over NATS");
            }
        }
    }
    Ok(())
}

/// Publishes commands to the stream and returns the ids the stream acknowledged.
async fn publish_commands(
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
                tracing::warn!(id = %c.id, cause = %err, "cannot publish a command to NATS")
            }
        }
    }
    let mut acked = Vec::with_capacity(pending.len());
    for (id, ack) in pending {
        match ack.await {
            Ok(_) => acked.push(id),
            Err(err) => tracing::warn!(%id, cause = %err, "NATS did not store a command"),
        }
    }
    acked
}

// ---- controller -----------------------------------------------------------------------------

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
    /// reply stream (reports into the queue) and telemetry requests (into the one ingest
    /// pipeline), until `shutdown`.
    pub async fn run(
        self,
        queue: Arc<CommandQueue>,
        ingest: Arc<Ingest>,
        auth: Arc<NodeAuth>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
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
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(consume_audit(audit, queue.clone(), shutdown.clone()));
        tasks.spawn(consume_replies(
            replies,
            self.subjects.clone(),
            queue,
            auth,
            shutdown.clone(),
        ));
        tasks.spawn(serve_telemetry(
            telemetry,
            self.client.clone(),
            ingest,
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
            Err(err) => tracing::warn!(cause = %err, "NATS consumer"),
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
                    tracing::warn!(cause = %err, subject = %m.subject, "a message on the command stream is not a command; ignored");
                    None
                }
            })
            .collect();
        let retry = match queue.record_seen(commands).await {
            Ok(()) => false,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot record commands from NATS; they will be redelivered");
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
                (Ok(_), Err(err)) => Err(Skip::Wait(err.to_string())),
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

/// A header's value, or empty (the checks that follow say what is missing).
fn header(headers: &Option<HeaderMap>, name: &str) -> String {
    headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

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

// ---- agent ----------------------------------------------------------------------------------

/// The agent's end of the NATS command bus: a durable pull consumer of its own commands, and
/// signed reports onto the reply stream.
pub struct NatsCommandSource {
    js: jetstream::Context,
    subjects: Subjects,
    node: String,
    key: String,
    messages: tokio::sync::Mutex<pull::Stream>,
}

impl NatsCommandSource {
    pub async fn connect(config: &NatsConfig, node: &str, key: &str) -> anyhow::Result<Self> {
        let client = connect(config, &format!("fleet-agent {node}")).await?;
        let js = jetstream::new(client);
        ensure_streams(&js, &Subjects::new(&config.prefix)?, config.max_ttl).await?;
        Self::on(js, config, node, key).await
    }

    /// On an existing connection whose streams are ensured (the benchmark runs many simulated
    /// nodes over one).
    pub async fn on(
        js: jetstream::Context,
        config: &NatsConfig,
        node: &str,
        key: &str,
    ) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&config.prefix)?;
        let name = subjects.node_consumer(node);
        let stream = js
            .get_stream(subjects.commands_stream())
            .await
            .context("cannot open the command stream")?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects.node_commands(node),
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
        Ok(Self {
            js,
            subjects,
            node: node.to_owned(),
            key: key.to_owned(),
            messages: tokio::sync::Mutex::new(messages),
        })
    }

    /// Publishes one signed report and waits for the stream to store it.
    async fn publish_report(&self, report: &CommandReport) -> anyhow::Result<()> {
        let subject = self.subjects.reply(&self.node);
        // A NATS message is bounded (1 MiB by default): cut the output to fit.
        let report = report.clone().fitted(REPORT_MESSAGE_MAX);
        let body = serde_json::to_vec(&report).expect("reports serialise");
        let ts = wire::request_timestamp_ms();
        let signature = wire::sign_agent(self.key.as_bytes(), &self.node, &subject, ts, &body);
        let mut headers = HeaderMap::new();
        headers.insert(wire::HEADER_NODE, self.node.as_str());
        headers.insert(wire::HEADER_TIMESTAMP, ts.to_string().as_str());
        headers.insert(wire::HEADER_SIGNATURE, signature.as_str());
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

impl super::commands::CommandSource for NatsCommandSource {
    type Receipt = jetstream::Message;

    async fn fetch(&self) -> anyhow::Result<Vec<(Command, jetstream::Message)>> {
        let mut messages = self.messages.lock().await;
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
                    tracing::warn!(cause = %err, subject = %message.subject, "not a command; dropped");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                }
            }
        }
        Ok(out)
    }

    async fn report(&self, reports: &[CommandReport]) -> anyhow::Result<()> {
        let results =
            futures::future::join_all(reports.iter().map(|r| self.publish_report(r))).await;
        results.into_iter().collect()
    }

    async fn settle(&self, message: jetstream::Message) {
        if let Err(err) = message.ack().await {
            tracing::debug!(cause = %err, "cannot ack a command; it will be redelivered and answered from the journal");
        }
    }
}

/// Sends telemetry batches as NATS requests; the controller answers after the durable write.
pub struct NatsBatchSender {
    client: async_nats::Client,
    subject: String,
    node: String,
    key: String,
    interval_ms: u64,
}

impl NatsBatchSender {
    pub async fn connect(
        config: &NatsConfig,
        node: &str,
        key: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&config.prefix)?;
        Ok(Self {
            client: connect(config, &format!("fleet-agent {node} telemetry")).await?,
            subject: subjects.telemetry(node),
            node: node.to_owned(),
            key: key.to_owned(),
            interval_ms: interval.as_millis() as u64,
        })
    }

    pub async fn send(
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
            .request_with_headers(self.subject.clone(), headers, Bytes::from(sealed.payload))
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
}

// ---- fleet send --nats-url -------------------------------------------------------------------

/// `fleet send` straight onto NATS, bypassing the controller's API (the controller still sees
/// and records the commands and their reports from the streams).
pub struct Sender {
    js: jetstream::Context,
    subjects: Subjects,
    /// Every report under the prefix, subscribed before anything is published so none can
    /// slip past.
    replies: tokio::sync::Mutex<async_nats::Subscriber>,
}

impl Sender {
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&config.prefix)?;
        let client = connect(config, "fleet-send").await?;
        let js = jetstream::new(client.clone());
        ensure_streams(&js, &subjects, config.max_ttl).await?;
        let replies = client
            .subscribe(subjects.all_replies())
            .await
            .context("cannot subscribe to reports on NATS")?;
        Ok(Self {
            js,
            subjects,
            replies: tokio::sync::Mutex::new(replies),
        })
    }

    /// Publishes the commands (durably: the stream acknowledged each) and, with a `wait`,
    /// collects reports until every command is settled or the wait passes.
    pub async fn send_and_wait(
        &self,
        submissions: &[Submission],
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<CommandRecord>> {
        let mut replies = self.replies.lock().await;
        let commands: Vec<Command> = submissions.iter().map(|s| s.command.clone()).collect();
        let t0 = std::time::Instant::now();
        let acked: HashSet<String> = publish_commands(&self.js, &self.subjects, &commands)
            .await
            .into_iter()
            .collect();
        tracing::debug!(
            commands = commands.len(),
            elapsed_us = t0.elapsed().as_micros() as u64,
            "the stream has the commands"
        );
        if acked.len() != commands.len() {
            anyhow::bail!(
                "NATS stored {} of {} commands; the rest were not sent (is JetStream enabled, and the stream {} reachable?)",
                acked.len(),
                commands.len(),
                self.subjects.commands_stream()
            );
        }
        let mut records: HashMap<String, CommandRecord> = commands
            .iter()
            .map(|c| (c.id.clone(), pending_record(c)))
            .collect();
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut unsettled = records.len();
        let records_len = records.len();
        while unsettled > 0 {
            let message = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                m = replies.next() => match m { Some(m) => m, None => break },
            };
            let Ok(report) = serde_json::from_slice::<CommandReport>(&message.payload) else {
                continue;
            };
            if let Some(record) = records.get_mut(&report.id) {
                // Reports of one command may arrive out of order: never step back.
                if record.state.is_terminal() && !report.state.is_terminal() {
                    continue;
                }
                let was_settled = crate::pipeline::commands::settled(record);
                record.state = report.state;
                record.attempts = record.attempts.max(1);
                if report.result.is_some() {
                    record.result = report.result;
                    record.finished_at = Some(crate::timefmt::rfc3339(crate::timefmt::now_ms()));
                }
                if !was_settled && crate::pipeline::commands::settled(record) {
                    unsettled -= 1;
                    if unsettled == records_len / 2 || unsettled == records_len - 1 {
                        tracing::debug!(
                            settled = records_len - unsettled,
                            elapsed_us = t0.elapsed().as_micros() as u64,
                            "results back"
                        );
                    }
                }
            }
        }
        Ok(commands
            .iter()
            .filter_map(|c| records.remove(&c.id))
            .collect())
    }
}

fn pending_record(c: &Command) -> CommandRecord {
    CommandRecord {
        id: c.id.clone(),
        node: c.node.clone(),
        kind: c.kind,
        method: c.method,
        args: c.args.clone(),
        parallel: c.parallel,
        state: CommandState::Queued,
        attempts: 0,
        retries: 0,
        timeout_ms: c.timeout_ms as i64,
        not_after: crate::timefmt::rfc3339(c.not_after_ms),
        sent_by: "this sender".into(),
        via: "nats".into(),
        created_at: crate::timefmt::rfc3339(c.created_ms()),
        delivered_at: None,
        started_at: None,
        finished_at: None,
        result: None,
    }
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
        }
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }
}
