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

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The controller a CLI client talks to when neither `--controller` nor `FLEET_CONTROLLER`
/// names one: the quick start's (`fleet controller` listens there by default).
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";
/// The operator token a CLI client reads when none is given: where `fleet controller` saves its
/// first token with the default data dir, relative to the directory it was started in.
pub const DEFAULT_TOKEN_FILE: &str = "./fleet-data/operator-token";

/// Where an operator's request goes and the token it carries, after the defaults.
pub struct OperatorEndpoint {
    pub controller: String,
    /// `None` when none was given and the default file does not apply or is missing.
    pub token: Option<String>,
}

/// Fills in what the operator left out: [`DEFAULT_CONTROLLER`], and the token in
/// [`DEFAULT_TOKEN_FILE`] (when `wants_token`), saying on stderr which defaults were taken. The
/// default file's token is only ever sent to the default controller: a token saved by the local
/// controller must not reach another host because a variable was set and another was not.
pub fn operator_endpoint(
    controller: Option<&str>,
    token: Option<&str>,
    wants_token: bool,
) -> anyhow::Result<OperatorEndpoint> {
    let defaulted = controller.is_none();
    let controller = controller.unwrap_or(DEFAULT_CONTROLLER).to_owned();
    let mut token = token.map(str::to_owned);
    let mut from_file = None;
    let file = Path::new(DEFAULT_TOKEN_FILE);
    if token.is_none() && wants_token && is_default_controller(&controller) && file.exists() {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!("cannot read the operator token in {DEFAULT_TOKEN_FILE}; pass --api-token or set FLEET_API_TOKEN")
        })?;
        let text = text.trim();
        if text.is_empty() {
            anyhow::bail!("{DEFAULT_TOKEN_FILE} is empty; pass --api-token or set FLEET_API_TOKEN");
        }
        token = Some(text.to_owned());
        from_file = Some(DEFAULT_TOKEN_FILE);
    }
    // Said once per process, however often a command reaches the API.
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return Ok(OperatorEndpoint { controller, token });
    }
    match (defaulted, from_file) {
        (true, Some(file)) => eprintln!(
            "fleet: using the controller at {controller} and the operator token in {file} (the defaults; set FLEET_CONTROLLER and FLEET_API_TOKEN for another)"
        ),
        (true, None) => eprintln!(
            "fleet: using the controller at {controller} (the default; set FLEET_CONTROLLER or pass --controller for another)"
        ),
        (false, Some(file)) => eprintln!(
            "fleet: using the operator token in {file} (the default; set FLEET_API_TOKEN or pass --api-token for another)"
        ),
        (false, None) => {}
    }
    Ok(OperatorEndpoint { controller, token })
}

/// Whether `url` is [`DEFAULT_CONTROLLER`] (a trailing `/` aside).
fn is_default_controller(url: &str) -> bool {
    url.trim_end_matches('/') == DEFAULT_CONTROLLER
}

/// The error for a request that needs an operator token and has none.
pub fn no_token(controller: &str) -> anyhow::Error {
    if is_default_controller(controller) {
        anyhow::anyhow!(
            "no operator token: pass --api-token or set FLEET_API_TOKEN (the controller saves its first one in fleet-data/operator-token, read from {DEFAULT_TOKEN_FILE} when run beside it)"
        )
    } else {
        anyhow::anyhow!(
            "no operator token for {controller}: pass --api-token or set FLEET_API_TOKEN (the token file {DEFAULT_TOKEN_FILE} is only sent to {DEFAULT_CONTROLLER})"
        )
    }
}

/// How a client reaches the controller and says who it is (`fleet pulse`, `run`, `events`).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerClient {
    /// Controller base URL [default: http://127.0.0.1:7070].
    #[arg(long, env = "FLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator API token [default with the default controller: the one in
    /// ./fleet-data/operator-token].
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
        self.controller
            .as_deref()
            .context("no controller: pass --controller URL or set FLEET_CONTROLLER")
    }

    /// Applies [`operator_endpoint`]'s defaults for a client that talks to the controller's API
    /// (not only to NATS). The default token is left out when the client signs as a node.
    pub fn apply_defaults(&mut self) -> anyhow::Result<()> {
        let as_node = self.as_node.is_some() && self.node_key.is_some();
        let endpoint = operator_endpoint(
            self.controller.as_deref(),
            self.api_token.as_deref(),
            !as_node,
        )?;
        self.controller = Some(endpoint.controller);
        self.api_token = endpoint.token;
        Ok(())
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
