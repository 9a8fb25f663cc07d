//! The agent's HTTP sender: frames a spooled batch (see [`super::wire`]), signs it at send time
//! and posts it to `POST /api/v1/ingest`, classifying the answer so the agent knows whether to
//! remove, discard or retry the batch.
//!
//! It never touches the spool itself; `modes::agent` decides what to do with each outcome.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::wire;

/// What happened to one send.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored (or stored before): remove it from the spool.
    Acknowledged,
    /// Refused for a reason that will not change by retrying (malformed, too large): discard and
    /// count it.
    Refused(String),
    /// Not stored this time (network, controller down, not enrolled yet, clock skew): retry.
    Retry(String),
}

/// Sends batches for one node.
pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
    node: String,
    key: String,
    interval_ms: u64,
}

/// The agent's HTTP client: `timeout` per request unless a request sets its own, and
/// `ca_cert` (PEM) instead of the system roots when given.
pub fn agent_client(ca_cert: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(2)
        .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")));
    builder = trusting(builder, ca_cert)?;
    builder.build().context("cannot build the HTTP client")
}

/// `builder` verifying servers against the PEM CA at `ca_cert` instead of the system roots,
/// when one is given (the agent's controller, a checked site).
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca_cert: Option<&Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = ca_cert else {
        return Ok(builder);
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(builder.tls_certs_only(certs))
}

impl HttpSender {
    /// `ca_cert`: verify the controller against this PEM CA instead of the system roots.
    pub fn new(
        controller: &str,
        node: &str,
        key: &str,
        interval: Duration,
        ca_cert: Option<&Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(controller)
            .with_context(|| format!("controller URL {controller:?} is not a URL"))?;
        let url = base
            .join("api/v1/ingest")
            .with_context(|| format!("cannot build the ingest URL from {controller:?}"))?;
        Ok(Self {
            client: agent_client(ca_cert, timeout)?,
            url,
            node: node.to_owned(),
            key: key.to_owned(),
            interval_ms: interval.as_millis() as u64,
        })
    }

    /// Signs and sends one batch.
    pub async fn send(
        &self,
        instance: &str,
        seq: u64,
        dropped_batches: u64,
        records_json: &[u8],
    ) -> SendOutcome {
        let body = wire::frame(self.interval_ms, records_json, dropped_batches);
        let sealed = wire::Sealed::new(self.key.as_bytes(), &self.node, instance, seq, &body);
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in sealed.headers() {
            request = request.header(name, value);
        }
        let response = match request.body(sealed.payload).send().await {
            Ok(response) => response,
            Err(err) => return SendOutcome::Retry(format!("cannot reach the controller: {err}")),
        };
        let status = response.status();
        if status.is_success() {
            return SendOutcome::Acknowledged;
        }
        SendOutcome::of_refusal(status.as_u16(), error_text(response).await)
    }
}

impl SendOutcome {
    /// What a refusal with this status means for the batch: malformed or too large is for
    /// good; anything else (not enrolled yet, clock skew, store down) is worth a retry.
    pub fn of_refusal(status: u16, message: String) -> Self {
        match status {
            400 | 413 => SendOutcome::Refused(message),
            _ => SendOutcome::Retry(message),
        }
    }
}

/// Requests to the controller signed with a node's key (`fleet-agent-v1`, docs/commands.md):
/// what the agent polls and reports with, and what `fleet pulse` uses on a node.
pub struct NodeClient {
    client: reqwest::Client,
    base: reqwest::Url,
    node: String,
    key: String,
}

impl NodeClient {
    pub fn new(
        controller: &str,
        node: &str,
        key: &str,
        ca_cert: Option<&Path>,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: agent_client(ca_cert, request_timeout)?,
            base: reqwest::Url::parse(controller)
                .with_context(|| format!("controller URL {controller:?} is not a URL"))?,
            node: node.to_owned(),
            key: key.to_owned(),
        })
    }

    /// A request to `path` (with `query`) carrying `body`, signed.
    pub fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let ts = wire::request_timestamp_ms();
        let what = format!("{method} {path}");
        let signature = wire::sign_agent(self.key.as_bytes(), &self.node, &what, ts, &body);
        let mut url = self
            .base
            .join(path.trim_start_matches('/'))
            .with_context(|| format!("cannot build a URL for {path}"))?;
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        Ok(self
            .client
            .request(method, url)
            .header(wire::HEADER_NODE, &self.node)
            .header(wire::HEADER_TIMESTAMP, ts.to_string())
            .header(wire::HEADER_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body))
    }
}

/// The agent's end of the HTTP command bus: long-polls `GET /api/v1/agent/commands` and posts
/// reports to `POST /api/v1/agent/reports`, both signed with the node key.
pub struct HttpCommandSource {
    client: NodeClient,
    poll_timeout: Duration,
}

impl HttpCommandSource {
    pub fn new(
        controller: &str,
        node: &str,
        key: &str,
        ca_cert: Option<&Path>,
        request_timeout: Duration,
        poll_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: NodeClient::new(controller, node, key, ca_cert, request_timeout)?,
            poll_timeout,
        })
    }
}

/// `<status>: <the answer's "error", or its text>`.
pub async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    format!("{status}: {message}")
}

impl super::commands::CommandSource for HttpCommandSource {
    type Receipt = ();

    async fn fetch(&self) -> anyhow::Result<Vec<(crate::command::Command, ())>> {
        #[derive(serde::Deserialize)]
        struct Polled {
            commands: Vec<crate::command::Command>,
        }
        let path = crate::web::commands::AGENT_POLL_PATH;
        let response = self
            .client
            .signed(
                reqwest::Method::GET,
                path,
                &format!("wait_ms={}", self.poll_timeout.as_millis()),
                Vec::new(),
            )?
            .timeout(self.poll_timeout + Duration::from_secs(10))
            .send()
            .await
            .context("cannot reach the controller to poll for commands")?;
        if !response.status().is_success() {
            anyhow::bail!(
                "the controller refused the poll: {}",
                error_text(response).await
            );
        }
        let polled: Polled = response
            .json()
            .await
            .context("the controller's answer to a poll is not the expected JSON")?;
        Ok(polled.commands.into_iter().map(|c| (c, ())).collect())
    }

    async fn report(&self, reports: &[crate::command::CommandReport]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({ "reports": reports }))
            .expect("reports serialise");
        let path = crate::web::commands::AGENT_REPORTS_PATH;
        let response = self
            .client
            .signed(reqwest::Method::POST, path, "", body)?
            .send()
            .await
            .context("cannot reach the controller to report")?;
        if !response.status().is_success() {
            anyhow::bail!(
                "the controller refused a report: {}",
                error_text(response).await
            );
        }
        Ok(())
    }

    async fn settle(&self, _receipt: ()) {}
}
