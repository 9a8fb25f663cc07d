//! One module per mode of the binary. Modes only wire: they build the parts from config, start
//! them, and stop them on shutdown. Behaviour belongs in the modules they wire.

pub mod agent;
pub mod bench;
pub mod controller;
pub mod events;
pub mod node;
pub mod operator;
pub mod pulse;
pub mod send;
pub mod token;

use std::path::PathBuf;

/// How a client reaches the controller and says who it is (`fleet pulse`, `run`, `events`).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerClient {
    /// Controller base URL.
    #[arg(long, env = "FLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator API token.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// On a node, without a token: sign as this node (with --node-key).
    #[arg(long = "as-node", env = "FLEET_NODE")]
    pub as_node: Option<String>,
    /// The node's key (as `fleet node add` printed it).
    #[arg(long, env = "FLEET_NODE_KEY", hide_env_values = true)]
    pub node_key: Option<String>,
    /// PEM CA certificate to verify the controller (or a tls:// NATS server) with.
    #[arg(long, env = "FLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl ControllerClient {
    pub fn controller(&self) -> anyhow::Result<&str> {
        use anyhow::Context;
        self.controller
            .as_deref()
            .context("no controller: pass --controller URL or set FLEET_CONTROLLER")
    }
}

/// Reaching NATS from the command line (`fleet send --nats-url`, a node's `fleet pulse` and
/// `fleet run`).
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// Talk to NATS directly instead of the controller's API.
    #[arg(long = "nats-url", env = "FLEET_NATS_URL")]
    pub url: Option<String>,
    /// First token of NATS subjects.
    #[arg(
        long = "nats-prefix",
        env = "FLEET_NATS_PREFIX",
        default_value = "fleet"
    )]
    pub prefix: String,
    /// NATS user (with --nats-password).
    #[arg(long = "nats-user", env = "FLEET_NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(
        long = "nats-password",
        env = "FLEET_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long = "nats-token", env = "FLEET_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS nkey seed (SU…).
    #[arg(long = "nats-nkey", env = "FLEET_NATS_NKEY", hide_env_values = true)]
    pub nkey: Option<String>,
}

impl NatsArgs {
    /// The NATS config these flags make, verifying a tls:// server with `ca_cert` if given.
    pub fn config(&self, ca_cert: Option<&std::path::Path>) -> crate::config::NatsConfig {
        crate::config::NatsConfig {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            ca_cert: ca_cert.map(std::path::Path::to_path_buf),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey: self.nkey.clone(),
            ..Default::default()
        }
    }
}
