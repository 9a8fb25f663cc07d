//! The HTTP backend of the bus: batches posted to `POST /api/v1/ingest` (framed and sealed by
//! [`crate::wire`] at send time, the answer classified so the agent knows whether to remove,
//! discard or retry the batch), pulses and events posted signed with the node key, and the
//! command long-poll and reports.
//!
//! It never touches the spool itself; the agent runtime decides what to do with each outcome.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::wire;

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

/// A node's traffic over HTTP to the controller.
pub struct HttpBus {
    node: NodeClient,
    ingest: reqwest::Url,
    interval_ms: u64,
    poll_timeout: Duration,
}

impl HttpBus {
    /// `ca_cert`: verify the controller against this PEM CA instead of the system roots;
    /// `interval`: the collection interval the batches declare; `poll_timeout`: how long one
    /// command long-poll waits.
    pub fn new(
        controller: &str,
        node: &str,
        key: &str,
        ca_cert: Option<&Path>,
        request_timeout: Duration,
        interval: Duration,
        poll_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let node = NodeClient::new(controller, node, key, ca_cert, request_timeout)?;
        let ingest = node
            .base
            .join("api/v1/ingest")
            .with_context(|| format!("cannot build the ingest URL from {controller:?}"))?;
        Ok(Self {
            node,
            ingest,
            interval_ms: interval.as_millis() as u64,
            poll_timeout,
        })
    }

    /// Signs and sends one batch.
    pub async fn send_batch(
        &self,
        instance: &str,
        seq: u64,
        dropped_batches: u64,
        records_json: &[u8],
    ) -> SendOutcome {
        let body = wire::frame(self.interval_ms, records_json, dropped_batches);
        let sealed = wire::Sealed::new(
            self.node.key.as_bytes(),
            &self.node.node,
            instance,
            seq,
            &body,
        );
        let mut request = self
            .node
            .client
            .post(self.ingest.clone())
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
        SendOutcome::of_refusal(
            status.as_u16(),
            crate::http_client::error_text(response).await,
        )
    }

    /// Posts a pulse or an event (`path`: `wire::HEARTBEATS_PATH`, `wire::EVENTS_PATH`)
    /// signed with the node key; the controller's JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, super::BusError> {
        let bytes = serde_json::to_vec(body).expect("JSON serialises");
        let request = self
            .node
            .signed(reqwest::Method::POST, path, "", bytes)
            .map_err(|e| super::BusError::Unreachable(format!("{e:#}")))?;
        let response = request.send().await.map_err(|e| {
            super::BusError::Unreachable(format!("cannot reach the controller: {e}"))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(super::BusError::Refused {
                status: status.as_u16(),
                message: crate::http_client::error_text(response).await,
            });
        }
        response.json().await.map_err(|e| {
            super::BusError::Unreachable(format!("the controller's answer is not JSON: {e}"))
        })
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

/// Requests to the controller signed with a node's key (`fleet-agent-v1`, docs/commands.md).
struct NodeClient {
    client: reqwest::Client,
    base: reqwest::Url,
    node: String,
    key: String,
}

impl NodeClient {
    fn new(
        controller: &str,
        node: &str,
        key: &str,
        ca_cert: Option<&Path>,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: crate::http_client::controller_client(ca_cert, request_timeout, 2)?,
            base: reqwest::Url::parse(controller)
                .with_context(|| format!("controller URL {controller:?} is not a URL"))?,
            node: node.to_owned(),
            key: key.to_owned(),
        })
    }

    /// A request to `path` (with `query`) carrying `body`, signed.
    fn signed(
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
impl HttpBus {
    pub async fn fetch(&self) -> anyhow::Result<Vec<crate::command::Command>> {
        #[derive(serde::Deserialize)]
        struct Polled {
            commands: Vec<crate::command::Command>,
        }
        let path = wire::AGENT_POLL_PATH;
        let response = self
            .node
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
                crate::http_client::error_text(response).await
            );
        }
        let polled: Polled = response
            .json()
            .await
            .context("the controller's answer to a poll is not the expected JSON")?;
        Ok(polled.commands)
    }

    pub async fn report(&self, reports: &[crate::command::CommandReport]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({ "reports": reports }))
            .expect("reports serialise");
        let path = wire::AGENT_REPORTS_PATH;
        let response = self
            .node
            .signed(reqwest::Method::POST, path, "", body)?
            .send()
            .await
            .context("cannot reach the controller to report")?;
        if !response.status().is_success() {
            anyhow::bail!(
                "the controller refused a report: {}",
                crate::http_client::error_text(response).await
            );
        }
        Ok(())
    }
}
