//! `fleet node add | list | remove`: enrollment, written straight to the controller's durable
//! store (the running controller picks changes up within its registry refresh, 2 s by default).

use std::collections::BTreeMap;

use crate::config::ControllerConfig;
use crate::model::{Node, NodeName, NodeSource};
use crate::pipeline::registry::new_node_key;

/// What `fleet node add` needs.
pub struct AddNode {
    pub name: NodeName,
    pub allow: Vec<ipnet::IpNet>,
    pub labels: BTreeMap<String, String>,
    /// Use this key instead of a new random one.
    pub key: Option<String>,
    /// The controller URL to put in the printed agent config.
    pub controller_url: String,
}

/// Enrolls a node and returns the text to print: its key and a ready agent config.
pub async fn add(config: &ControllerConfig, add: AddNode) -> anyhow::Result<String> {
    let store = super::controller::open_store(config).await?;
    let key = add.key.unwrap_or_else(new_node_key);
    if key.len() < 16 {
        anyhow::bail!(
            "a node key must be at least 16 characters; leave --key out to get a random one"
        );
    }
    let node = Node {
        name: add.name.clone(),
        key: key.clone(),
        allow: add.allow,
        labels: add.labels,
        source: NodeSource::Enrolled,
    };
    store.add_node(&node, crate::timefmt::now_ms()).await?;
    store.close().await;
    let allow = if node.allow.is_empty() {
        "any address".to_owned()
    } else {
        node.allow
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "enrolled node {name} (may send from {allow})\n\
         key: {key}\n\
         \n\
         # agent config for {name}: save as /etc/fleet/agent.toml and run `fleet agent --config /etc/fleet/agent.toml`\n\
         controller = \"{url}\"\n\
         node = \"{name}\"\n\
         key = \"{key}\"\n\
         interval = \"10s\"\n\
         data_dir = \"/var/lib/fleet-agent\"\n",
        name = node.name,
        url = add.controller_url,
    ))
}

/// Lists enrolled nodes as a table.
pub async fn list(config: &ControllerConfig) -> anyhow::Result<String> {
    let store = super::controller::open_store(config).await?;
    let mut nodes = store.enrolled_nodes().await?;
    store.close().await;
    for node in &config.nodes {
        nodes.push(Node {
            name: node.name.clone(),
            key: node.key.clone(),
            allow: node.allow.clone(),
            labels: node.labels.clone(),
            source: NodeSource::Config,
        });
    }
    if let Some(massaffect) = &config.compat.massaffect {
        for node in crate::pipeline::registry::massaffect_nodes(massaffect) {
            if !nodes.iter().any(|n| n.name == node.name) {
                nodes.push(node);
            }
        }
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if nodes.is_empty() {
        return Ok("no nodes enrolled yet: run `fleet node add NAME`\n".into());
    }
    let mut out = format!(
        "{:<32} {:<10} {:<30} {}\n",
        "NAME", "SOURCE", "ALLOW", "LABELS"
    );
    for node in nodes {
        let allow = if node.allow.is_empty() {
            "any".to_owned()
        } else {
            node.allow
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let labels = node
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let source = match node.source {
            NodeSource::Config => "config",
            NodeSource::Enrolled => "enrolled",
            NodeSource::Massaffect => "massaffect",
        };
        out.push_str(&format!(
            "{:<32} {:<10} {:<30} {}\n",
            node.name, source, allow, labels
        ));
    }
    Ok(out)
}

/// Removes an enrolled node.
pub async fn remove(config: &ControllerConfig, name: &NodeName) -> anyhow::Result<String> {
    if config.nodes.iter().any(|n| n.name == *name) {
        anyhow::bail!("node {name} is listed in the controller's config file; remove it there");
    }
    let store = super::controller::open_store(config).await?;
    let existed = store.remove_node(name.as_str()).await?;
    store.close().await;
    if !existed {
        anyhow::bail!("no node named {name} is enrolled (see `fleet node list`)");
    }
    Ok(format!(
        "removed node {name}; its batches are refused from now on (history is kept until retention)\n"
    ))
}
