//! Configuration of every mode as plain data: TOML files (unknown keys are errors that name the
//! key), overridden by `FLEET_*` environment variables, overridden by flags. Defaults live here
//! and only here.
//!
//! One file per component, each with its structs, their one `Default` and their `validate`
//! (what serde cannot check): `controller` (the controller and its sections), `compat` (the
//! watchTower and MassAffect listeners), `agent` (the agent, its collectors and command
//! policy), `sources` (the agent's logs, checks, plugins and app socket), `nats` (shared by the
//! controller, the agent and `fleet send`). This file holds what they share: reading a TOML file
//! and durations written as strings.
//!
//! This module never starts anything; `modes/` turns these structs into running tasks. It must
//! do no I/O beyond reading the config file and no network; it imports only the bottom-layer
//! value modules (`model`, `command`, `timefmt`, `files`, `termsafe`).

mod agent;
mod compat;
mod controller;
mod nats;
mod sources;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Deserializer};

use crate::timefmt::parse_duration;

pub use agent::{AgentCommandsConfig, AgentConfig, CollectorConfig, CollectorKind};
pub use compat::{CompatConfig, MassaffectConfig, WatchtowerConfig};
pub use controller::{
    CommandQueueConfig, ControllerConfig, HotConfig, IngestConfig, LocalAgentConfig,
    RetentionConfig, StaticNode, StatusConfig, UiConfig, UiUser,
};
pub use nats::NatsConfig;
pub use sources::{
    AppSocketConfig, CheckConfig, LogConfig, LogFormat, PluginConfig, SOURCE_NAME_MAX,
};

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

/// A duration field written as a string (`"10s"`, `"14d"`).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// An optional duration field written as a string.
fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
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
}
