//! The controller's configuration (`fleet controller`, and `fleet node` / `fleet token`, which
//! open its store): listener, stores, ingest limits, retention, the hot ring, node status, the
//! dashboard, nodes enrolled in the file and the command queue. Its `[nats]` is `nats.rs`'s and
//! its `[compat]` listeners are `compat.rs`'s.
//!
//! Plain data read from the config file, checked by `validate`; it must never open a store,
//! bind a socket or read the files it names (that is `modes/controller`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de_duration;
use super::{AgentConfig, CompatConfig, NatsConfig};

/// The controller: ingest, stores, API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where the embedded SQLite database and other local state live.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL, `sqlite://…` for another SQLite file. Unset: SQLite in
    /// `data_dir`.
    pub database_url: Option<String>,
    /// `redis://…` to keep the hot ring in Redis. Unset: in process memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several fleets (or tests) can share one Redis.
    pub redis_prefix: String,
    /// PEM certificate chain; with `tls_key`, the API is served over HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Operator tokens accepted in addition to those created with `fleet token create`
    /// (for automation: `FLEET_API_TOKEN`).
    pub api_tokens: Vec<String>,
    /// How often enrolled nodes and tokens are re-read from the store, so `fleet node add` and
    /// `fleet node remove` take effect on a running controller.
    #[serde(deserialize_with = "de_duration")]
    pub registry_refresh: Duration,
    pub ingest: IngestConfig,
    pub retention: RetentionConfig,
    pub hot: HotConfig,
    pub status: StatusConfig,
    /// The dashboard.
    pub ui: UiConfig,
    /// Nodes whitelisted in this file (in addition to those enrolled with `fleet node add`).
    pub nodes: Vec<StaticNode>,
    pub commands: CommandQueueConfig,
    /// NATS: when `url` is set, commands travel over JetStream (and agents may send telemetry
    /// over it); otherwise agents long-poll the controller over HTTP.
    pub nats: NatsConfig,
    /// Listeners that speak older protocols, for clients that cannot change.
    pub compat: CompatConfig,
    /// `[local_agent]`: the agent `--local-agent` runs for this host (the agent config's keys).
    pub local_agent: LocalAgentConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".parse().expect("a valid literal address"),
            data_dir: PathBuf::from("./fleet-data"),
            database_url: None,
            redis_url: None,
            redis_prefix: "fleet:".into(),
            tls_cert: None,
            tls_key: None,
            api_tokens: Vec::new(),
            registry_refresh: Duration::from_secs(2),
            ingest: IngestConfig::default(),
            retention: RetentionConfig::default(),
            hot: HotConfig::default(),
            status: StatusConfig::default(),
            ui: UiConfig::default(),
            nodes: Vec::new(),
            commands: CommandQueueConfig::default(),
            nats: NatsConfig::default(),
            compat: CompatConfig::default(),
            local_agent: LocalAgentConfig::default(),
        }
    }
}

impl ControllerConfig {
    /// The database URL in force: the configured one, or SQLite in the data dir.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("fleet.db").display()
            ),
        }
    }
}

/// `[local_agent]`: the agent `fleet controller --local-agent` runs for this host, written with
/// the agent config's own keys and sections (`interval`, `[local_agent.commands]`,
/// `[local_agent.app_socket]`, `[[local_agent.logs]]`, …): one type, [`AgentConfig`], read the
/// same way. The controller fills in what it knows, so those keys are refused here:
/// `controller` (its own API, over loopback), `node` (this host's name) and `key` (from
/// enrolling it). `data_dir` defaults to `local-agent` in the controller's data dir and
/// `ca_cert` to the controller's `tls_cert`. The section alone starts nothing: `--local-agent`
/// does.
#[derive(Debug, Clone, Default)]
pub struct LocalAgentConfig {
    /// The section's keys; `controller`, `node` and `key` empty.
    agent: AgentConfig,
    /// `data_dir`, when the section sets it.
    data_dir: Option<PathBuf>,
}

/// The agent keys `[local_agent]` may not set: the controller fills them in.
const LOCAL_AGENT_FILLED: [(&str, &str); 3] = [
    ("controller", "the controller's own API"),
    ("node", "this host's name"),
    ("key", "the key it enrolled this host with"),
];

impl<'de> Deserialize<'de> for LocalAgentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = toml::Table::deserialize(d)?;
        for (key, filled) in LOCAL_AGENT_FILLED {
            if table.contains_key(key) {
                return Err(D::Error::custom(format!(
                    "local_agent.{key} is set by the controller (to {filled}); remove it from [local_agent]"
                )));
            }
        }
        let data_dir_set = table.contains_key("data_dir");
        let agent = AgentConfig::deserialize(toml::Value::Table(table))
            .map_err(|err| D::Error::custom(format!("in [local_agent]: {}", err.message())))?;
        Ok(Self {
            data_dir: data_dir_set.then(|| agent.data_dir.clone()),
            agent,
        })
    }
}

impl LocalAgentConfig {
    /// The section's keys as an agent config (`controller`, `node` and `key` empty).
    pub fn agent(&self) -> &AgentConfig {
        &self.agent
    }

    /// The local agent's whole config: the section's keys with what the controller knows
    /// filled in (`controller`, `node`, `key`; `data_dir` and `ca_cert` unless the section set
    /// them). Not validated: the caller validates it before using it.
    pub fn agent_config(
        &self,
        controller: String,
        node: String,
        key: String,
        controller_data_dir: &std::path::Path,
        controller_ca: Option<PathBuf>,
    ) -> AgentConfig {
        let mut agent = self.agent.clone();
        agent.controller = controller;
        agent.node = node;
        agent.key = key;
        agent.data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| controller_data_dir.join("local-agent"));
        if agent.ca_cert.is_none() {
            agent.ca_cert = controller_ca;
        }
        agent
    }
}

/// Limits and checks on `POST /api/v1/ingest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body, as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Largest `data` document of one record, as JSON.
    pub max_record_bytes: usize,
    /// Largest body after decompression.
    pub max_decompressed_bytes: usize,
    /// How far a batch's send timestamp may be from the controller's clock, either way.
    #[serde(deserialize_with = "de_duration")]
    pub clock_skew: Duration,
    /// Most batches written in one database transaction (group commit).
    pub max_group: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_record_bytes: crate::model::limits::RECORD_DATA_BYTES_MAX,
            max_decompressed_bytes: 8 * 1024 * 1024,
            clock_skew: Duration::from_secs(300),
            max_group: 256,
        }
    }
}

/// How long history is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw samples (and the per-batch ledger) older than this are deleted.
    #[serde(deserialize_with = "de_duration")]
    pub samples: Duration,
    /// Durable copies of records older than this are deleted.
    #[serde(deserialize_with = "de_duration")]
    pub records: Duration,
    /// Collectors whose whole records are kept durably (records without samples always are).
    pub record_collectors: Vec<String>,
    /// Entries of the event log and the error log older than this are deleted.
    #[serde(deserialize_with = "de_duration")]
    pub events: Duration,
    /// How often the retention sweep runs.
    #[serde(deserialize_with = "de_duration")]
    pub sweep_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            samples: Duration::from_secs(14 * 86_400),
            records: Duration::from_secs(3 * 86_400),
            record_collectors: vec!["processes".into()],
            events: Duration::from_secs(30 * 86_400),
            sweep_interval: Duration::from_secs(600),
        }
    }
}

/// The hot ring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotConfig {
    /// Newest records kept per node and collector.
    pub ring_size: usize,
    /// Most bytes one node's rings hold together; past it the oldest entries of the rings
    /// being written go (each ring keeps its newest).
    pub max_node_bytes: usize,
}

impl Default for HotConfig {
    fn default() -> Self {
        Self {
            ring_size: 2000,
            max_node_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The dashboard (`/`, `/login`, `/live/…`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Networks (CIDR) allowed to reach the dashboard and its live streams. Empty: any.
    pub allow: Vec<ipnet::IpNet>,
    /// How long a login lasts.
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
    /// The dashboard key (an operator key file from `fleet operator keygen`) that signs
    /// commands sent from the dashboard's form. Unset: the form shows the `fleet send` command
    /// to run instead. A node runs them only if its `trusted_keys` lists this key's public half.
    pub signing_key: Option<PathBuf>,
    /// People who log in with a name and password instead of an operator token. Make an entry
    /// with `fleet operator password NAME`.
    pub users: Vec<UiUser>,
    /// The first wait after too many failed logins (see the README's dashboard section); each
    /// further failure doubles it.
    #[serde(deserialize_with = "de_duration")]
    pub login_backoff: Duration,
    /// The longest wait failed logins can cause.
    #[serde(deserialize_with = "de_duration")]
    pub login_backoff_max: Duration,
}

impl UiConfig {
    /// Refuses users without a name, named twice, or whose hash is not one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.login_backoff.is_zero() || self.login_backoff > self.login_backoff_max {
            anyhow::bail!(
                "ui.login_backoff must be more than 0 and at most ui.login_backoff_max (say \"1s\" and \"15m\")"
            );
        }
        for (i, user) in self.users.iter().enumerate() {
            if user.name.trim().is_empty() || user.name.len() > 64 {
                anyhow::bail!("ui.users[{i}].name must be 1 to 64 characters");
            }
            if user.name.trim() != user.name {
                anyhow::bail!(
                    "ui.users[{i}].name {:?} starts or ends with a space; the login form trims what is typed, so it could never match",
                    user.name
                );
            }
            if self.users[..i].iter().any(|u| u.name == user.name) {
                anyhow::bail!("ui.users: {:?} is listed twice", user.name);
            }
            if let Err(e) = argon2::password_hash::PasswordHash::new(&user.password_hash) {
                anyhow::bail!(
                    "ui.users[{i}].password_hash ({:?}) is not an Argon2 hash ({e}); make one with `fleet operator password {}`",
                    user.name,
                    user.name
                );
            }
        }
        Ok(())
    }
}

/// A dashboard user: a name and the Argon2id hash of their password (a PHC string, never the
/// password itself).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiUser {
    pub name: String,
    pub password_hash: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            signing_key: None,
            users: Vec::new(),
            login_backoff: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(15 * 60),
        }
    }
}

/// When a node counts as up, stale or down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// A node is stale when nothing arrived for this long or 3 of its intervals, whichever is
    /// longer.
    #[serde(deserialize_with = "de_duration")]
    pub stale_after: Duration,
    /// A node is down when nothing arrived for this long or 10 of its intervals, whichever is
    /// longer.
    #[serde(deserialize_with = "de_duration")]
    pub down_after: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(30),
            down_after: Duration::from_secs(120),
        }
    }
}

/// The controller's command queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandQueueConfig {
    /// How often deadlines are checked (redelivery, time-outs, expiry).
    #[serde(deserialize_with = "de_duration")]
    pub sweep_interval: Duration,
    /// How long past a command's own timeout the controller waits for the node's answer before
    /// it redelivers (or, with no retries left, declares it timed out).
    #[serde(deserialize_with = "de_duration")]
    pub grace: Duration,
    /// Longest an agent's poll for commands is held open.
    #[serde(deserialize_with = "de_duration")]
    pub poll_max: Duration,
}

impl Default for CommandQueueConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(1),
            grace: Duration::from_secs(5),
            poll_max: Duration::from_secs(25),
        }
    }
}

/// A node whitelisted in the controller's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    pub name: crate::model::NodeName,
    pub key: String,
    /// Source addresses the node may send from (CIDR). Empty: any.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_backoff_is_a_wait_no_longer_than_its_cap() {
        let ui = |first: u64, max: u64| UiConfig {
            login_backoff: Duration::from_secs(first),
            login_backoff_max: Duration::from_secs(max),
            ..UiConfig::default()
        };
        assert!(UiConfig::default().validate().is_ok());
        assert!(ui(0, 60).validate().is_err(), "no wait at all");
        let err = ui(120, 60).validate().unwrap_err().to_string();
        assert!(err.contains("ui.login_backoff_max"), "{err}");
    }
}
