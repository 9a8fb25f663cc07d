//! The agent's configuration (`fleet agent`): how it reaches the controller, its built-in
//! collectors (`CollectorKind`, the plain list of which exist), the commands it accepts, and its
//! sections: `[nats]` (`nats.rs`), `[app_socket]`, `[[logs]]`, `[[checks]]` and `[[plugins]]`
//! (`sources.rs`).
//!
//! Plain data read from the config file, checked by `validate`; it must never start, open or
//! connect to anything (that is `modes/agent` and `collectors/`).

use crate::argv_pattern::Pattern;
use crate::command::{Method, parse_public_key};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{AppSocketConfig, CheckConfig, LogConfig, NatsConfig, PluginConfig, SOURCE_NAME_MAX};
use super::{de_duration, de_opt_duration};

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
    /// Argv patterns `CLICommand` may run (see `argv_pattern`). Empty: none.
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

impl AgentCommandsConfig {
    /// The trusted keys, methods and allow-list checked, the methods and patterns parsed: the
    /// one reading of `[commands]`, for the config's validation and the executor's policy.
    pub fn parsed(&self) -> Result<(Vec<Method>, Vec<Pattern>), String> {
        for key in &self.trusted_keys {
            parse_public_key(key).map_err(|e| format!("commands.trusted_keys: {e}"))?;
        }
        let methods = self
            .methods
            .iter()
            .map(|m| Method::parse(m).map_err(|e| format!("commands.methods: {}", e.problem)))
            .collect::<Result<Vec<_>, _>>()?;
        let allow = self
            .allow
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("commands.allow: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((methods, allow))
    }
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
        self.commands.parsed().map_err(anyhow::Error::msg)?;
        self.validate_sources()
    }

    /// Checks the log, check and plugin sections: names usable in collector names and labels,
    /// unique per kind; then each section's own values (`sources.rs`).
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
            log.validate()?;
        }
        for check in &self.checks {
            source_name("checks.name", &check.name)?;
            if !seen.insert(("checks", check.name.as_str())) {
                anyhow::bail!(
                    "two [[checks]] are named {:?}; give each its own name",
                    check.name
                );
            }
            check.validate()?;
        }
        for plugin in &self.plugins {
            source_name("plugins.name", &plugin.name)?;
            if !seen.insert(("plugins", plugin.name.as_str())) {
                anyhow::bail!(
                    "two [[plugins]] are named {:?}; give each its own name",
                    plugin.name
                );
            }
            plugin.validate()?;
        }
        self.app_socket.validate()
    }
}

/// The built-in collectors. `autoload` ones run unless the config disables them. Which
/// collector each one builds is `collectors::build_collector`'s business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorKind {
    System,
    Disk,
    Network,
    Processes,
}

impl CollectorKind {
    pub const ALL: [CollectorKind; 4] = [
        CollectorKind::System,
        CollectorKind::Disk,
        CollectorKind::Network,
        CollectorKind::Processes,
    ];

    /// Whether this collector runs when the config does not mention it.
    pub fn autoload(self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
