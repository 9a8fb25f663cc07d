//! Configuration of every mode as plain data: TOML files (unknown keys are errors that name the
//! key), overridden by `FLEET_*` environment variables, overridden by flags. Defaults live here
//! and only here.
//!
//! This module never starts anything; `modes/` turns these structs into running tasks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Deserializer};

use crate::collectors::CollectorKind;

/// Reads a TOML config file. The error names the file and, for an unknown or mistyped key, the
/// key.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "config file {} is not valid: {}",
            path.display(),
            err.to_string().trim_end()
        )
    })
}

/// Parses a duration such as `10s`, `5m`, `14d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("{text:?} is not a duration ({err}); write it like \"10s\", \"5m\" or \"14d\"")
    })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

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

/// Compatibility listeners beside the API. Each is off unless its section is present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// A second listener speaking watchTower's heartbeat protocol (`web::watchtower`).
    pub watchtower: Option<WatchtowerConfig>,
    /// `POST /collect` on the API listener, for MassAffect agents (`web::massaffect`).
    pub massaffect: Option<MassaffectConfig>,
}

/// The MassAffect route: the secret its agents sign with and the address each sends from. The
/// map is their enrollment: an address not in it is refused, and what an address sends is
/// stored under its node name.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassaffectConfig {
    /// The shared secret of MassAffect's `x-agent-signature` (HMAC-SHA256 of the body).
    /// Required and not empty.
    pub secret: String,
    /// Source address → node name, e.g. `{ "10.0.0.5" = "web-1" }`.
    #[serde(default, deserialize_with = "de_agents")]
    pub agents: BTreeMap<IpAddr, crate::model::NodeName>,
    /// Largest request body, as sent. Unset: `ingest.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Largest body after decompression. Unset: `ingest.max_decompressed_bytes`.
    #[serde(default)]
    pub max_decompressed_bytes: Option<usize>,
}

/// Reads the agents map, naming the entry at fault. Keys are canonical (`::ffff:10.0.0.5` is
/// `10.0.0.5`), as peer addresses are before they are looked up.
fn de_agents<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<IpAddr, crate::model::NodeName>, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    let mut agents = BTreeMap::new();
    for (addr, name) in raw {
        let ip: IpAddr = addr.trim().parse().map_err(|_| {
            D::Error::custom(format!(
                "agents: {addr:?} is not an IP address (write one address per agent, e.g. \"10.0.0.5\" = \"web-1\")"
            ))
        })?;
        let node = crate::model::NodeName::parse(&name)
            .map_err(|e| D::Error::custom(format!("agents.{addr:?}: {name:?}: {e}")))?;
        if agents.insert(ip.to_canonical(), node).is_some() {
            return Err(D::Error::custom(format!(
                "agents: {addr:?} is listed twice (as {})",
                ip.to_canonical()
            )));
        }
    }
    Ok(agents)
}

// By hand, so a logged config never shows the secret.
impl std::fmt::Debug for MassaffectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MassaffectConfig")
            .field("secret", &"<redacted>")
            .field("agents", &self.agents)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_decompressed_bytes", &self.max_decompressed_bytes)
            .finish()
    }
}

impl MassaffectConfig {
    /// Checks what serde cannot: a usable secret, at least one agent, limits above zero.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.secret.trim().is_empty() {
            anyhow::bail!(
                "compat.massaffect.secret is empty; set it to the secret your MassAffect agents sign with"
            );
        }
        if self.agents.is_empty() {
            anyhow::bail!(
                "compat.massaffect.agents is empty; map each agent's address to its node name, e.g. agents = {{ \"10.0.0.5\" = \"web-1\" }}"
            );
        }
        if self.max_body_bytes == Some(0) || self.max_decompressed_bytes == Some(0) {
            anyhow::bail!(
                "compat.massaffect: max_body_bytes and max_decompressed_bytes must be above 0"
            );
        }
        Ok(())
    }
}

/// The watchTower listener: its own address, password and certificate, since its clients are
/// configured for those and nothing else. No defaults: a section present must say all it needs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchtowerConfig {
    /// Address the watchTower listener binds, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// What clients send in their `password` header. Required and not empty.
    pub password: String,
    /// PEM certificate chain; with `tls_key`, the listener serves HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

// By hand, so a logged config never shows the password.
impl std::fmt::Debug for WatchtowerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchtowerConfig")
            .field("listen", &self.listen)
            .field("password", &"<redacted>")
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl WatchtowerConfig {
    /// Checks what serde cannot: a usable password, and a certificate with its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.password.trim().is_empty() {
            anyhow::bail!(
                "compat.watchtower.password is empty; set it to the password your watchTower clients send"
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!(
                "compat.watchtower needs both tls_cert and tls_key (or neither, for plain HTTP)"
            );
        }
        Ok(())
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

/// What commands a node accepts (its local policy) and how it runs them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentCommandsConfig {
    /// Receive commands at all.
    pub enabled: bool,
    /// Operator public keys (`ed25519:…`, from `fleet operator keygen`) whose signed commands
    /// this node runs. Empty: it runs none.
    pub trusted_keys: Vec<String>,
    /// Methods this node accepts.
    pub methods: Vec<String>,
    /// Argv patterns `CLICommand` may run (see `executor::policy`). Empty: none.
    pub allow: Vec<String>,
    /// Run any argv. Like Zabbix's `system.run`: only for nodes where that is wanted.
    pub allow_any: bool,
    /// Output kept per stream; beyond it the result is marked truncated.
    pub max_output_bytes: usize,
    /// How long one long-poll for commands waits (HTTP bus).
    #[serde(deserialize_with = "de_duration")]
    pub poll_timeout: Duration,
}

impl Default for AgentCommandsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_keys: Vec::new(),
            methods: [
                "CLICommand",
                "TextLogging",
                "SayHello",
                "ErrorLog",
                "Echo",
                "Cancel",
            ]
            .map(str::to_owned)
            .to_vec(),
            allow: Vec::new(),
            allow_any: false,
            max_output_bytes: crate::command::limits::OUTPUT_DEFAULT_BYTES,
            poll_timeout: Duration::from_secs(20),
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

/// The agent on a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Base URL of the controller, e.g. `https://fleet.example.com:7070`.
    pub controller: String,
    /// This node's enrolled name.
    pub node: String,
    /// This node's key, as printed by `fleet node add`.
    pub key: String,
    /// How often collectors run (each may override it).
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Spool, sequence number and instance id live here.
    pub data_dir: PathBuf,
    /// PEM CA certificate to verify the controller with, instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Largest total size of unsent batches on disk; past it the oldest are dropped (and
    /// counted).
    pub spool_max_bytes: u64,
    /// Timeout of one request to the controller.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Per-collector settings; collectors not listed run with defaults if they autoload.
    pub collectors: BTreeMap<CollectorKind, CollectorConfig>,
    /// Which commands this node runs.
    pub commands: AgentCommandsConfig,
    /// NATS: when `url` is set, commands come over JetStream instead of the HTTP long-poll.
    pub nats: NatsConfig,
    /// The socket local apps write JSON items to.
    pub app_socket: AppSocketConfig,
    /// Log files to tail (`[[logs]]`).
    pub logs: Vec<LogConfig>,
    /// Proof-of-life checks (`[[checks]]`).
    pub checks: Vec<CheckConfig>,
    /// Nagios-style check plugins (`[[plugins]]`).
    pub plugins: Vec<PluginConfig>,
}

/// Longest name of a log, check or plugin: `tail.` + 59 is the longest collector name.
pub const SOURCE_NAME_MAX: usize = crate::model::limits::NAME_MAX - 5;

/// `[app_socket]`: where local apps write JSON items (`collectors::app_socket`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppSocketConfig {
    pub enabled: bool,
    /// Name of the abstract socket, without the `@` (`massaffect` for MassAffect's apps); empty:
    /// no abstract socket.
    pub name: String,
    /// A filesystem socket as well (or instead, with `name = ""`), e.g. `/run/fleet/app.sock`.
    pub path: Option<PathBuf>,
    /// Permissions of `path`, in octal: who may write.
    #[serde(deserialize_with = "de_mode")]
    pub mode: u32,
    /// Largest JSON value (an item or an array) one write may be.
    pub max_value_bytes: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
}

impl Default for AppSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "fleet".into(),
            path: None,
            mode: 0o660,
            max_value_bytes: 1024 * 1024,
            max_connections: 64,
        }
    }
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a file mode; write it in octal like \"0660\""
            ))
        })
}

/// How the lines of a log are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Lines as they are.
    #[default]
    Raw,
    /// The nginx / Apache combined access log (optionally followed by the request time in
    /// seconds, nginx's `$request_time`).
    Combined,
    /// Apache's `vhost_combined`: `host:port ` before the combined fields.
    VhostCombined,
}

/// `[[logs]]`: files to tail (`collectors::logs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Names this log's records: lines under `logs.<name>`, counts under `tail.<name>`, traffic
    /// under `web.<name>`.
    pub name: String,
    /// Files by glob pattern (`/var/log/nginx/*.log`); new matches are picked up as they appear.
    /// Symlinks are followed; a match that climbs with `..` the pattern does not spell is dropped
    /// (`collectors::logs::matching_paths`).
    pub paths: Vec<String>,
    #[serde(default)]
    pub format: LogFormat,
    /// Only lines matching this regular expression are kept; the others are counted.
    #[serde(default)]
    pub filter: Option<String>,
    /// The virtual host of the traffic figures: a name, or `"$file"` for the file's name
    /// without `.log` / `.access.log`. Unset: the vhost field of `vhost_combined`, else `-`.
    #[serde(default)]
    pub vhost: Option<String>,
    /// Read files found at the first start from their beginning (default: from their end, like
    /// `tail -F`). Files that appear later are always read whole.
    #[serde(default)]
    pub from_beginning: bool,
    /// Lines shipped as records, at most, per second; beyond it they are counted and a uniform
    /// sample of the interval's lines is shipped. 0 ships none (figures only).
    #[serde(default = "default_ship_lines_per_second")]
    pub ship_lines_per_second: f64,
    /// Longer lines are cut to this (and counted).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// How often the files are read and figures made (default: the agent's interval).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
}

fn default_ship_lines_per_second() -> f64 {
    100.0
}

fn default_max_line_bytes() -> usize {
    16 * 1024
}

/// `[[checks]]`: one proof-of-life check (`collectors::checks`). Exactly one of `file`,
/// `tcp`, `unix`, `http`, `nginx_status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Names the check in its samples' `check` label.
    pub name: String,
    /// A file that must have been modified within `max_age`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
    /// `host:port` that must accept a TCP connection.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A unix socket path that must accept a connection.
    #[serde(default)]
    pub unix: Option<PathBuf>,
    /// A URL that must answer with `expect_status`; for https, the certificate's days left are
    /// reported too.
    #[serde(default)]
    pub http: Option<String>,
    /// nginx's `stub_status` URL: connections and requests/s.
    #[serde(default)]
    pub nginx_status: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// PEM CA to verify an https URL with, instead of the system roots.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default = "default_check_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn default_expect_status() -> u16 {
    200
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[[plugins]]`: a Nagios-style check plugin (`collectors::plugins`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Names the plugin in its samples' `plugin` label.
    pub name: String,
    /// The argv, run without a shell: `["/usr/lib/nagios/plugins/check_disk", "-w", "10%"]`.
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    /// Killed (with its process group) after this, and reported UNKNOWN.
    #[serde(default = "default_plugin_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Output read, at most; the rest is cut.
    #[serde(default = "default_plugin_output")]
    pub max_output_bytes: usize,
}

fn default_plugin_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_plugin_output() -> usize {
    8 * 1024
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            controller: String::new(),
            node: String::new(),
            key: String::new(),
            interval: Duration::from_secs(10),
            data_dir: PathBuf::from("./fleet-agent-data"),
            ca_cert: None,
            spool_max_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            collectors: BTreeMap::new(),
            commands: AgentCommandsConfig::default(),
            nats: NatsConfig::default(),
            app_socket: AppSocketConfig::default(),
            logs: Vec::new(),
            checks: Vec::new(),
            plugins: Vec::new(),
        }
    }
}

/// One collector's settings in the agent config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Run it (default: whether it autoloads).
    pub enabled: Option<bool>,
    /// Its own interval instead of the agent's.
    #[serde(deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
}

impl AgentConfig {
    /// The collectors to run, with their intervals.
    pub fn enabled_collectors(&self) -> Vec<(CollectorKind, Duration)> {
        CollectorKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let conf = self.collectors.get(&kind);
                let enabled = conf
                    .and_then(|c| c.enabled)
                    .unwrap_or_else(|| kind.autoload());
                enabled.then(|| {
                    let interval = conf.and_then(|c| c.interval).unwrap_or(self.interval);
                    (kind, interval)
                })
            })
            .collect()
    }

    /// Checks what serde cannot: required fields and their forms.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.nats.telemetry && self.nats.url.is_none() {
            anyhow::bail!("nats.telemetry needs nats.url (or --nats-url)");
        }
        let needs_controller = !(self.nats.url.is_some() && self.nats.telemetry);
        if needs_controller && self.controller.is_empty() {
            anyhow::bail!(
                "no controller URL: pass --controller https://HOST:7070 or set `controller` in the config"
            );
        }
        let url = reqwest::Url::parse(&self.controller)
            .or_else(|e| {
                if needs_controller {
                    Err(e)
                } else {
                    reqwest::Url::parse("http://unused.invalid")
                }
            })
            .with_context(|| format!("controller URL {:?} is not a URL", self.controller))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!(
                "controller URL {:?} must start with http:// or https://",
                self.controller
            );
        }
        crate::model::NodeName::parse(&self.node).map_err(|e| {
            anyhow::anyhow!("{e}: pass --node NAME as enrolled with `fleet node add NAME`")
        })?;
        if self.key.is_empty() {
            anyhow::bail!("no node key: pass --key KEY as printed by `fleet node add`");
        }
        if self.interval < Duration::from_millis(100) {
            anyhow::bail!(
                "interval {:?} is too short; use at least 100ms",
                self.interval
            );
        }
        if self.interval.as_millis() > u128::from(crate::model::limits::INTERVAL_MAX_MS) {
            anyhow::bail!("interval {:?} is too long; use at most 1d", self.interval);
        }
        if self.commands.max_output_bytes > crate::command::limits::OUTPUT_MAX_BYTES {
            anyhow::bail!(
                "commands.max_output_bytes {} is over the limit of {}",
                self.commands.max_output_bytes,
                crate::command::limits::OUTPUT_MAX_BYTES
            );
        }
        crate::executor::Policy::from_config(&self.commands).map_err(anyhow::Error::msg)?;
        self.validate_sources()
    }

    /// Checks the log, check and plugin sections: names usable in collector names and labels,
    /// unique per kind; exactly one target per check; bounds.
    fn validate_sources(&self) -> anyhow::Result<()> {
        use crate::model::check_collector_name;
        let mut seen = std::collections::BTreeSet::new();
        // Names become collector names `tail.NAME`, `logs.NAME`, `web.NAME`: at most 64 in all.
        let source_name = |field: &str, name: &str| -> anyhow::Result<()> {
            check_collector_name(field, name)?;
            if name.len() > SOURCE_NAME_MAX {
                anyhow::bail!("{field} {name:?} is longer than {SOURCE_NAME_MAX} characters");
            }
            Ok(())
        };
        for log in &self.logs {
            source_name("logs.name", &log.name)?;
            if !seen.insert(("logs", log.name.as_str())) {
                anyhow::bail!(
                    "two [[logs]] are named {:?}; give each its own name",
                    log.name
                );
            }
            if log.paths.is_empty() {
                anyhow::bail!(
                    "logs {:?} has no paths; list the files, e.g. paths = [\"/var/log/nginx/*.log\"]",
                    log.name
                );
            }
            for pattern in &log.paths {
                glob::Pattern::new(pattern).map_err(|e| {
                    anyhow::anyhow!(
                        "logs {:?}: {pattern:?} is not a glob pattern: {e}",
                        log.name
                    )
                })?;
            }
            if let Some(filter) = &log.filter {
                regex::Regex::new(filter).map_err(|e| {
                    anyhow::anyhow!(
                        "logs {:?}: filter is not a regular expression: {e}",
                        log.name
                    )
                })?;
            }
            if !(log.ship_lines_per_second >= 0.0 && log.ship_lines_per_second <= 100_000.0) {
                anyhow::bail!(
                    "logs {:?}: ship_lines_per_second must be between 0 and 100000",
                    log.name
                );
            }
            // 64 KiB: even a line of binary escaped as JSON (6 bytes a byte) fits one batch.
            if !(256..=64 * 1024).contains(&log.max_line_bytes) {
                anyhow::bail!(
                    "logs {:?}: max_line_bytes must be between 256 and 65536",
                    log.name
                );
            }
            let label_max = crate::model::limits::LABEL_VALUE_MAX;
            if log
                .vhost
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > label_max)
            {
                anyhow::bail!("logs {:?}: vhost must be 1 to {label_max} bytes", log.name);
            }
        }
        for check in &self.checks {
            source_name("checks.name", &check.name)?;
            if !seen.insert(("checks", check.name.as_str())) {
                anyhow::bail!(
                    "two [[checks]] are named {:?}; give each its own name",
                    check.name
                );
            }
            let targets = [
                check.file.is_some(),
                check.tcp.is_some(),
                check.unix.is_some(),
                check.http.is_some(),
                check.nginx_status.is_some(),
            ];
            if targets.iter().filter(|t| **t).count() != 1 {
                anyhow::bail!(
                    "check {:?} needs exactly one of file, tcp, unix, http, nginx_status",
                    check.name
                );
            }
            if check.file.is_some() != check.max_age.is_some() {
                anyhow::bail!(
                    "check {:?}: a file check needs max_age (and only a file check takes it), e.g. max_age = \"26h\"",
                    check.name
                );
            }
            if check.timeout.is_zero() || check.timeout > Duration::from_secs(300) {
                anyhow::bail!("check {:?}: timeout must be between 1ms and 5m", check.name);
            }
            for url in [&check.http, &check.nginx_status].into_iter().flatten() {
                let parsed = reqwest::Url::parse(url).map_err(|e| {
                    anyhow::anyhow!("check {:?}: {url:?} is not a URL: {e}", check.name)
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    anyhow::bail!(
                        "check {:?}: {url:?} must be http:// or https://",
                        check.name
                    );
                }
            }
        }
        for plugin in &self.plugins {
            source_name("plugins.name", &plugin.name)?;
            if !seen.insert(("plugins", plugin.name.as_str())) {
                anyhow::bail!(
                    "two [[plugins]] are named {:?}; give each its own name",
                    plugin.name
                );
            }
            if plugin.command.first().is_none_or(|c| c.is_empty()) {
                anyhow::bail!(
                    "plugin {:?} has no command; give the argv, e.g. command = [\"/usr/lib/nagios/plugins/check_load\"]",
                    plugin.name
                );
            }
            if plugin.timeout.is_zero() || plugin.timeout > Duration::from_secs(3600) {
                anyhow::bail!(
                    "plugin {:?}: timeout must be between 1ms and 1h",
                    plugin.name
                );
            }
            if !(64..=1024 * 1024).contains(&plugin.max_output_bytes) {
                anyhow::bail!(
                    "plugin {:?}: max_output_bytes must be between 64 and 1048576",
                    plugin.name
                );
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.app_socket.max_value_bytes) {
            anyhow::bail!("app_socket.max_value_bytes must be between 1024 and 16777216");
        }
        if !(1..=1024).contains(&self.app_socket.max_connections) {
            anyhow::bail!("app_socket.max_connections must be between 1 and 1024");
        }
        if self.app_socket.enabled
            && self.app_socket.name.is_empty()
            && self.app_socket.path.is_none()
        {
            anyhow::bail!(
                "app_socket is enabled with neither a name nor a path; set one, or enabled = false"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<ControllerConfig>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        let err = toml::from_str::<AgentConfig>("[collectors.system]\nenable = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn collectors_autoload_and_can_be_disabled_or_retimed() {
        let conf: AgentConfig = toml::from_str(
            "interval = \"5s\"\n[collectors.processes]\nenabled = false\n[collectors.disk]\ninterval = \"1m\"\n",
        )
        .unwrap();
        let enabled = conf.enabled_collectors();
        assert!(enabled.contains(&(CollectorKind::System, Duration::from_secs(5))));
        assert!(enabled.contains(&(CollectorKind::Disk, Duration::from_secs(60))));
        assert!(!enabled.iter().any(|(k, _)| *k == CollectorKind::Processes));
    }

    #[test]
    fn the_watchtower_listener_is_off_unless_configured_and_then_complete() {
        let conf: ControllerConfig = toml::from_str("").unwrap();
        assert!(conf.compat.watchtower.is_none());
        let conf: ControllerConfig = toml::from_str(
            "[compat.watchtower]\nlisten = \"127.0.0.1:8443\"\npassword = \"s3cret\"\n",
        )
        .unwrap();
        let wt = conf.compat.watchtower.unwrap();
        assert!(wt.validate().is_ok());
        let err = toml::from_str::<ControllerConfig>(
            "[compat.watchtower]\nlisten = \"127.0.0.1:8443\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("password"), "{err}");
        let err = toml::from_str::<ControllerConfig>(
            "[compat.watchtower]\nlisten = \"127.0.0.1:1\"\npassword = \"x\"\nport = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("port"), "{err}");
        let empty = WatchtowerConfig {
            password: " ".into(),
            ..wt.clone()
        };
        assert!(empty.validate().is_err());
        let half = WatchtowerConfig {
            tls_cert: Some("cert.pem".into()),
            ..wt
        };
        assert!(half.validate().is_err());
    }

    #[test]
    fn the_massaffect_route_is_off_unless_configured_and_then_complete() {
        let conf: ControllerConfig = toml::from_str("").unwrap();
        assert!(conf.compat.massaffect.is_none());
        let conf: ControllerConfig = toml::from_str(
            "[compat.massaffect]\nsecret = \"s3cret\"\nagents = { \"10.0.0.5\" = \"web-1\", \"::ffff:10.0.0.6\" = \"web-2\" }\n",
        )
        .unwrap();
        let ma = conf.compat.massaffect.unwrap();
        assert!(ma.validate().is_ok());
        assert_eq!(
            ma.agents[&"10.0.0.5".parse::<IpAddr>().unwrap()].as_str(),
            "web-1"
        );
        // IPv4-mapped keys are canonical, like the peer addresses they are compared with.
        assert_eq!(
            ma.agents[&"10.0.0.6".parse::<IpAddr>().unwrap()].as_str(),
            "web-2"
        );
        assert!(!format!("{ma:?}").contains("s3cret"));
        let parse = |text: &str| {
            toml::from_str::<ControllerConfig>(&format!("[compat.massaffect]\n{text}"))
                .unwrap_err()
                .to_string()
        };
        let err = parse("secret = \"x\"\nagents = {}\nport = 3\n");
        assert!(err.contains("port"), "{err}");
        let err = parse("agents = { \"10.0.0.5\" = \"web-1\" }\n");
        assert!(err.contains("secret"), "{err}");
        let err = parse("secret = \"x\"\nagents = { \"10.0.0.300\" = \"web-1\" }\n");
        assert!(
            err.contains("10.0.0.300") && err.contains("not an IP address"),
            "{err}"
        );
        let err = parse("secret = \"x\"\nagents = { \"10.0.0.5\" = \"web 1\" }\n");
        assert!(err.contains("10.0.0.5") && err.contains("web 1"), "{err}");
        let empty = MassaffectConfig {
            secret: " ".into(),
            ..ma.clone()
        };
        assert!(empty.validate().is_err());
        let nobody = MassaffectConfig {
            agents: BTreeMap::new(),
            ..ma
        };
        assert!(nobody.validate().is_err());
    }

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

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
    }
}
