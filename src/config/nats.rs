//! `[nats]`: a NATS server and how to log in to it, shared by the controller, the agent and
//! `fleet send --nats-url`.
//!
//! Plain data read from the config file; it must never connect or resolve anything (that is
//! `bus::nats`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de_duration;

/// A NATS server and how to log in to it. Shared by the controller, the agent and `fleet send`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:4222` (or `tls://…`). Unset: no NATS.
    pub url: Option<String>,
    /// First token of every subject, and the stem of stream and consumer names.
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU…`) to sign the server's challenge with.
    pub nkey: Option<String>,
    /// PEM CA certificate for `tls://` servers, instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Longest a command waits in the stream for its node (the stream's max age).
    #[serde(deserialize_with = "de_duration")]
    pub max_ttl: Duration,
    /// Agent only: send telemetry batches over NATS instead of HTTP.
    pub telemetry: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "fleet".into(),
            user: None,
            password: None,
            token: None,
            nkey: None,
            ca_cert: None,
            max_ttl: Duration::from_secs(7 * 86_400),
            telemetry: false,
        }
    }
}
