//! `[compat]`: listeners that speak older protocols beside the API, for clients that cannot
//! change: watchTower's heartbeats (`web::watchtower`) and MassAffect's `POST /collect`
//! (`web::massaffect`). Each is off unless its section is present, and then must say all it
//! needs.
//!
//! Plain data read from the config file, checked by `validate`; it must never bind, connect or
//! read the certificates it names (that is `modes/controller` and `web/`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

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

#[cfg(test)]
mod tests {
    use super::super::ControllerConfig;
    use super::*;

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
}
