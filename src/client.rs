//! The operator's client of the controller's API: requests with the operator token, the one
//! Server-Sent Events reader, and waiting for commands to settle. `fleet send`, `fleet pulse`
//! and `fleet run` as an operator, `fleet events` and the benchmarks use it.
//!
//! It holds no rules: what a request means is the controller's; a refusal becomes an error
//! carrying the controller's sentence.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command::CommandRecord;
use crate::store::events::EventEntry;

/// The controller's API, as an operator.
pub struct Api {
    client: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

impl Api {
    pub fn connect(controller: &str, token: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        Self::with_connections(controller, token, ca_cert, 2)
    }

    /// Keeping up to `idle` connections open for reuse (a benchmark with many requests in
    /// flight).
    pub fn with_connections(
        controller: &str,
        token: &str,
        ca_cert: Option<&Path>,
        idle: usize,
    ) -> anyhow::Result<Self> {
        let token = token.to_owned();
        let mut base = reqwest::Url::parse(controller)
            .with_context(|| format!("controller URL {controller:?} is not a URL"))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self {
            client: crate::http_client::controller_client(ca_cert, Duration::from_secs(90), idle)?,
            base,
            token,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = accepted(request.bearer_auth(&self.token)).await?;
        response
            .json()
            .await
            .context("the controller's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(self.client.get(self.base.join(path)?)).await
    }

    /// One command's record.
    pub async fn record(&self, id: &str) -> anyhow::Result<CommandRecord> {
        let value = self.get(&format!("api/v1/commands/{id}")).await?;
        serde_json::from_value(value).context("the controller's answer is not a command")
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.call(self.client.post(self.base.join(path)?).json(body))
            .await
    }

    /// Reads the Server-Sent Events at `path` (resuming after `last_id`) and hands each entry
    /// to `on_entry`; returns when the stream ends or goes silent past its keep-alives.
    pub async fn follow(
        &self,
        path: &str,
        last_id: Option<i64>,
        mut on_entry: impl FnMut(EventEntry) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut request = self
            .client
            .get(self.base.join(path)?)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            // The stream is meant to last; silence is watched below instead.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let mut response = accepted(request).await?;
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            // Keep-alives come every 15 s: three missed means the connection is gone.
            let chunk = tokio::time::timeout(Duration::from_secs(45), response.chunk())
                .await
                .context("the event stream went silent")?
                .context("the event stream broke")?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buffer.extend_from_slice(&chunk);
            if buffer.len() > 4 * 1024 * 1024 {
                bail!("an event in the stream is larger than 4 MiB");
            }
            // One event per blank-line-separated block; only `data:` lines matter here.
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                let entry = serde_json::from_str(&data)
                    .with_context(|| format!("an event in the stream is not an entry: {data}"))?;
                on_entry(entry)?;
            }
        }
    }

    /// Long-polls until every id is settled or `wait` passes.
    pub async fn wait(&self, ids: &[String], wait: Duration) -> anyhow::Result<Vec<CommandRecord>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let step = left.min(Duration::from_secs(25));
            let value = self
                .post(
                    "api/v1/commands/wait",
                    &serde_json::json!({ "ids": ids, "wait": format!("{}ms", step.as_millis()) }),
                )
                .await?;
            let records: Vec<CommandRecord> = serde_json::from_value(value["commands"].clone())
                .context("the controller's answer is not a list of commands")?;
            let done = records.iter().all(CommandRecord::settled);
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }
}

/// Sends a request to the controller; a refusal becomes an error carrying its reason.
pub async fn accepted(request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let response = request
        .send()
        .await
        .context("cannot reach the controller")?;
    if !response.status().is_success() {
        bail!(
            "the controller answered {}",
            crate::http_client::error_text(response).await
        );
    }
    Ok(response)
}
