//! The agent's sources beyond its built-in collectors: `[[logs]]` to tail, `[[checks]]`,
//! `[[plugins]]` and the `[app_socket]` local apps write to. Each section checks its own values
//! (`validate`); the agent's config checks that names are usable and unique across them.
//!
//! Plain data read from the config file; it must never open, stat or connect to what it names
//! (that is `collectors/`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{de_duration, de_opt_duration};

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

impl LogConfig {
    /// Checks what serde cannot: paths given and glob patterns, the filter a regular
    /// expression, bounds. The name is the agent's to check (`AgentConfig::validate`).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.paths.is_empty() {
            anyhow::bail!(
                "logs {:?} has no paths; list the files, e.g. paths = [\"/var/log/nginx/*.log\"]",
                self.name
            );
        }
        for pattern in &self.paths {
            glob::Pattern::new(pattern).map_err(|e| {
                anyhow::anyhow!(
                    "logs {:?}: {pattern:?} is not a glob pattern: {e}",
                    self.name
                )
            })?;
        }
        if let Some(filter) = &self.filter {
            regex::Regex::new(filter).map_err(|e| {
                anyhow::anyhow!(
                    "logs {:?}: filter is not a regular expression: {e}",
                    self.name
                )
            })?;
        }
        if !(self.ship_lines_per_second >= 0.0 && self.ship_lines_per_second <= 100_000.0) {
            anyhow::bail!(
                "logs {:?}: ship_lines_per_second must be between 0 and 100000",
                self.name
            );
        }
        // 64 KiB: even a line of binary escaped as JSON (6 bytes a byte) fits one batch.
        if !(256..=64 * 1024).contains(&self.max_line_bytes) {
            anyhow::bail!(
                "logs {:?}: max_line_bytes must be between 256 and 65536",
                self.name
            );
        }
        let label_max = crate::model::limits::LABEL_VALUE_MAX;
        if self
            .vhost
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > label_max)
        {
            anyhow::bail!("logs {:?}: vhost must be 1 to {label_max} bytes", self.name);
        }
        Ok(())
    }
}

impl CheckConfig {
    /// Checks what serde cannot: exactly one target, `max_age` with a file only, the timeout,
    /// URLs. The name is the agent's to check (`AgentConfig::validate`).
    pub fn validate(&self) -> anyhow::Result<()> {
        let targets = [
            self.file.is_some(),
            self.tcp.is_some(),
            self.unix.is_some(),
            self.http.is_some(),
            self.nginx_status.is_some(),
        ];
        if targets.iter().filter(|t| **t).count() != 1 {
            anyhow::bail!(
                "check {:?} needs exactly one of file, tcp, unix, http, nginx_status",
                self.name
            );
        }
        if self.file.is_some() != self.max_age.is_some() {
            anyhow::bail!(
                "check {:?}: a file check needs max_age (and only a file check takes it), e.g. max_age = \"26h\"",
                self.name
            );
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            anyhow::bail!("check {:?}: timeout must be between 1ms and 5m", self.name);
        }
        for url in [&self.http, &self.nginx_status].into_iter().flatten() {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("check {:?}: {url:?} is not a URL: {e}", self.name))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("check {:?}: {url:?} must be http:// or https://", self.name);
            }
        }
        Ok(())
    }
}

impl PluginConfig {
    /// Checks what serde cannot: a command, the timeout, the output bound. The name is the
    /// agent's to check (`AgentConfig::validate`).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.command.first().is_none_or(|c| c.is_empty()) {
            anyhow::bail!(
                "plugin {:?} has no command; give the argv, e.g. command = [\"/usr/lib/nagios/plugins/check_load\"]",
                self.name
            );
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            anyhow::bail!("plugin {:?}: timeout must be between 1ms and 1h", self.name);
        }
        if !(64..=1024 * 1024).contains(&self.max_output_bytes) {
            anyhow::bail!(
                "plugin {:?}: max_output_bytes must be between 64 and 1048576",
                self.name
            );
        }
        Ok(())
    }
}

impl AppSocketConfig {
    /// Checks what serde cannot: bounds, and somewhere to listen when enabled.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1024..=16 * 1024 * 1024).contains(&self.max_value_bytes) {
            anyhow::bail!("app_socket.max_value_bytes must be between 1024 and 16777216");
        }
        if !(1..=1024).contains(&self.max_connections) {
            anyhow::bail!("app_socket.max_connections must be between 1 and 1024");
        }
        if self.enabled && self.name.is_empty() && self.path.is_none() {
            anyhow::bail!(
                "app_socket is enabled with neither a name nor a path; set one, or enabled = false"
            );
        }
        Ok(())
    }
}
