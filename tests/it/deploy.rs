//! The example configs in deploy/ parse with the real config structs, state the real defaults,
//! and their commented-out examples parse too once uncommented.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::config::{AgentConfig, CollectorKind, ControllerConfig, load_toml};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// The file with every commented-out setting (`# key = value`, `# a.b = value`, `# [[nodes]]`)
/// turned back on.
fn uncommented(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("the example config is readable");
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let setting = rest.split_once(" = ").is_some_and(|(key, _)| {
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            });
            if setting
                || matches!(
                    rest,
                    "[[nodes]]" | "[[logs]]" | "[[checks]]" | "[[plugins]]"
                )
            {
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn deploy_controller_toml_parses_and_states_the_defaults() {
    let config = load_toml::<ControllerConfig>(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/controller.toml"
    )));
    let config = config.expect("deploy/controller.toml parses");
    let defaults = ControllerConfig::default();

    assert_eq!(config.data_dir, PathBuf::from("/var/lib/fleet"));
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.database_url, None);
    assert_eq!(config.redis_url, None);
    assert_eq!(config.redis_prefix, defaults.redis_prefix);
    assert_eq!(config.tls_cert, None);
    assert_eq!(config.tls_key, None);
    assert!(config.api_tokens.is_empty());
    assert_eq!(config.registry_refresh, defaults.registry_refresh);
    assert_eq!(config.ingest.max_body_bytes, defaults.ingest.max_body_bytes);
    assert_eq!(
        config.ingest.max_decompressed_bytes,
        defaults.ingest.max_decompressed_bytes
    );
    assert_eq!(config.ingest.clock_skew, Duration::from_secs(300));
    assert_eq!(config.ingest.clock_skew, defaults.ingest.clock_skew);
    assert_eq!(config.ingest.max_group, defaults.ingest.max_group);
    assert_eq!(config.retention.samples, defaults.retention.samples);
    assert_eq!(config.retention.records, defaults.retention.records);
    assert_eq!(
        config.retention.record_collectors,
        defaults.retention.record_collectors
    );
    assert_eq!(
        config.retention.sweep_interval,
        defaults.retention.sweep_interval
    );
    assert_eq!(config.hot.ring_size, defaults.hot.ring_size);
    assert_eq!(config.status.stale_after, defaults.status.stale_after);
    assert_eq!(config.status.down_after, defaults.status.down_after);
    assert!(config.nodes.is_empty());
    assert!(config.compat.watchtower.is_none() && config.compat.massaffect.is_none());
}

#[test]
fn deploy_controller_toml_examples_parse_when_uncommented() {
    let text = uncommented(&deploy_file("controller.toml"));
    let config: ControllerConfig = toml::from_str(&text).expect("the uncommented examples parse");
    assert!(
        config
            .database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://"))
    );
    assert!(config.redis_url.is_some());
    assert!(config.tls_cert.is_some() && config.tls_key.is_some());
    assert_eq!(config.nodes.len(), 1);
    let node = &config.nodes[0];
    assert_eq!(node.name.as_str(), "web1");
    assert_eq!(node.allow.len(), 2);
    assert_eq!(node.labels.get("role").map(String::as_str), Some("web"));
    let watchtower = config.compat.watchtower.expect("the watchTower example");
    watchtower
        .validate()
        .expect("the watchTower example validates");
    let massaffect = config.compat.massaffect.expect("the MassAffect example");
    massaffect
        .validate()
        .expect("the MassAffect example validates");
    assert_eq!(massaffect.agents.len(), 2);
    let local = config.local_agent.agent();
    assert_eq!(local.commands.trusted_keys.len(), 1);
    assert_eq!(local.commands.allow, ["uptime", "systemctl restart *"]);
    assert_eq!(local.app_socket.name, "fleet-controller");
    let filled = config.local_agent.agent_config(
        "http://127.0.0.1:7070".into(),
        "vm".into(),
        "k".repeat(32),
        Path::new("/var/lib/fleet"),
        None,
    );
    filled
        .validate()
        .expect("the local agent example validates");
    assert_eq!(filled.data_dir, Path::new("/var/lib/fleet/local-agent"));
}

#[test]
fn deploy_agent_toml_parses_and_validates() {
    let config = load_toml::<AgentConfig>(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/agent.toml"
    )));
    let config = config.expect("deploy/agent.toml parses");
    let defaults = AgentConfig::default();

    config.validate().expect("deploy/agent.toml validates");
    assert_eq!(config.controller, "https://fleet.example.com:7070");
    assert_eq!(config.node, "web1");
    assert_eq!(config.interval, Duration::from_secs(10));
    assert_eq!(config.interval, defaults.interval);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/fleet-agent"));
    assert_eq!(config.ca_cert, None);
    assert_eq!(config.spool_max_bytes, defaults.spool_max_bytes);
    assert_eq!(config.request_timeout, defaults.request_timeout);

    for kind in CollectorKind::ALL {
        assert!(
            config.collectors.contains_key(&kind),
            "deploy/agent.toml has an example for {kind:?}"
        );
    }
    let enabled = config.enabled_collectors();
    assert_eq!(enabled.len(), CollectorKind::ALL.len());
    assert!(enabled.contains(&(CollectorKind::System, Duration::from_secs(10))));
    assert!(enabled.contains(&(CollectorKind::Disk, Duration::from_secs(60))));
    assert!(enabled.contains(&(CollectorKind::Processes, Duration::from_secs(30))));
}

#[test]
fn deploy_agent_toml_examples_parse_when_uncommented() {
    let text = uncommented(&deploy_file("agent.toml"));
    let config: AgentConfig = toml::from_str(&text).expect("the uncommented examples parse");
    assert!(config.ca_cert.is_some());
    assert_eq!(
        config.collectors[&CollectorKind::System].interval,
        Some(Duration::from_secs(5))
    );
    assert_eq!(config.logs.len(), 1);
    assert_eq!(config.checks.len(), 4);
    assert_eq!(config.plugins.len(), 1);
    assert_eq!(config.app_socket.mode, 0o660);
    // The sources' examples are complete: each check has its one target, names are unique.
    let sources = AgentConfig {
        ca_cert: None,
        ..config
    };
    sources
        .validate()
        .expect("the uncommented examples validate");
}
