//! fleet's HTTP clients, made one way: timeouts, which certificate authorities they believe (the
//! agent's controller, a checked site, the CLI's controller), and how the controller's refusal
//! reads (`{"error": "…"}`).
//!
//! A bottom-layer helper: it reads the CA file it is given and nothing else; it builds clients
//! and reads answers, and never decides where to connect.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

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

/// A client for the controller: `timeout` per request unless a request sets its own,
/// `ca_cert` (PEM) instead of the system roots when given, up to `idle` connections kept open.
pub fn controller_client(
    ca_cert: Option<&Path>,
    timeout: Duration,
    idle: usize,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(idle)
        .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")));
    builder = trusting(builder, ca_cert)?;
    builder.build().context("cannot build the HTTP client")
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
