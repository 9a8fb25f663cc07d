//! `fleet node add | list | remove`: enrollment, written straight to the controller's durable
//! store (the running controller picks changes up within its registry refresh, 2 s by default).
//!
//! These commands never create a SQLite store by accident: run from another directory, the
//! default `./fleet-data` is not the controller's, and a node enrolled in a new empty store is
//! one the controller never hears of. A missing store is refused unless `--create` says a new
//! one is meant, and every command says which store it used. They must never print a config the
//! agent would read differently from what was given (the agent config is serialized by `toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

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

/// The store a `fleet node` command works on.
struct StoreAt {
    /// As a person reads it: the SQLite file's absolute path, or the URL (password hidden).
    shown: String,
    /// The SQLite file, when the store is one (not in memory, not PostgreSQL).
    file: Option<PathBuf>,
}

impl StoreAt {
    fn of(config: &ControllerConfig) -> Self {
        let file = match &config.database_url {
            None => Some(config.data_dir.join("fleet.db")),
            Some(url) => sqlite_file(url),
        };
        let shown = match &file {
            Some(file) => std::path::absolute(file)
                .unwrap_or_else(|_| file.clone())
                .display()
                .to_string(),
            None => crate::store::durable::redact_url(&config.effective_database_url()),
        };
        Self { shown, file }
    }

    /// Refuses a SQLite store that does not exist yet unless `create`: see the module's doc.
    fn check_exists(&self, create: bool, then: &str) -> anyhow::Result<()> {
        match &self.file {
            Some(file) if !create && !file.exists() => anyhow::bail!(
                "no store at {}: `fleet node` works on the controller's store, so run it in the \
                 directory the controller runs in, or name the store as the controller does \
                 (--data-dir, --database-url or --config){then}",
                self.shown
            ),
            _ => Ok(()),
        }
    }
}

/// The file of a `sqlite:` URL; `None` for an in-memory database or another engine.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    (!in_memory).then(|| PathBuf::from(path))
}

/// The part of the agent config `fleet node add` fills in, as the agent reads it.
#[derive(Serialize)]
struct PrintedAgent<'a> {
    controller: &'a str,
    node: &'a str,
    key: &'a str,
    interval: &'a str,
    data_dir: &'a Path,
}

/// Where the printed config keeps the agent's data (the unit in deploy/ runs it there).
const AGENT_DATA_DIR: &str = "/var/lib/fleet-agent";

/// `toml` text for `value`, each line commented out with `# `.
fn commented(value: &impl Serialize) -> anyhow::Result<String> {
    Ok(toml::to_string(value)?
        .lines()
        .map(|line| format!("# {line}\n"))
        .collect())
}

/// The agent config `fleet node add` prints: what works as printed on another host, a
/// commented variant for a second agent on the controller's host, and a commented
/// `[commands]` section.
fn agent_config(name: &str, key: &str, controller_url: &str) -> anyhow::Result<String> {
    let main = toml::to_string(&PrintedAgent {
        controller: controller_url,
        node: name,
        key,
        interval: "10s",
        data_dir: Path::new(AGENT_DATA_DIR),
    })?;
    let second_dir = format!("{AGENT_DATA_DIR}-{name}");
    let second_socket = format!("fleet-{name}");
    let data_dir_line = commented(&BTreeMap::from([("data_dir", &second_dir)]))?;
    let app_socket = commented(&BTreeMap::from([(
        "app_socket",
        BTreeMap::from([("name", &second_socket)]),
    )]))?;
    #[derive(Serialize)]
    struct Commands<'a> {
        trusted_keys: [&'a str; 1],
        allow: [&'a str; 2],
    }
    let commands = commented(&BTreeMap::from([(
        "commands",
        Commands {
            trusted_keys: ["ed25519:…"],
            allow: ["uptime", "systemctl restart *"],
        },
    )]))?;
    let mut text = format!(
        "# agent config for {name}: save as /etc/fleet/agent.toml and run `fleet agent --config /etc/fleet/agent.toml`\n"
    );
    if controller_url.starts_with("http://127.0.0.1")
        || controller_url.starts_with("http://localhost")
    {
        text.push_str(
            "# (this controller address reaches only this host: on another, run `fleet node add` with\n\
             # --controller-url set to the address the node reaches the controller at)\n",
        );
    }
    text.push_str(&main);
    text.push_str(&format!(
        "# A second agent on the same host (beside `fleet controller --local-agent` or another\n\
         # agent) needs its own data dir and app socket: use this data_dir instead of the one above\n\
         # and uncomment [app_socket] below (apps then write to @{second_socket}), or run it with\n\
         # `--data-dir {second_dir} --app-socket {second_socket}`.\n\
         {data_dir_line}\n\
         {app_socket}\n\
         # Commands: the node runs none until it trusts an operator key (`fleet operator keygen`\n\
         # prints one) and its allow list has the command (docs/commands.md):\n\
         {commands}"
    ));
    Ok(text)
}

/// Enrolls a node and returns the text to print: its key and a ready agent config. A store
/// that does not exist is created only with `create`.
pub async fn add(config: &ControllerConfig, add: AddNode, create: bool) -> anyhow::Result<String> {
    let at = StoreAt::of(config);
    at.check_exists(create, "; pass --create to start a new store there")?;
    let key = add.key.unwrap_or_else(new_node_key);
    if key.len() < 16 {
        anyhow::bail!(
            "a node key must be at least 16 characters; leave --key out to get a random one"
        );
    }
    let store = super::controller::open_store(config).await?;
    let node = Node {
        name: add.name.clone(),
        key: key.clone(),
        allow: add.allow,
        labels: add.labels,
        source: NodeSource::Enrolled,
    };
    let added = store.add_node(&node, crate::timefmt::now_ms()).await;
    store.close().await;
    added?;
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
        "enrolled node {name} in the store {store} (may send from {allow})\n\
         key: {key}\n\
         \n\
         {config}",
        name = node.name,
        store = at.shown,
        config = agent_config(node.name.as_str(), &key, &add.controller_url)?,
    ))
}

/// Lists enrolled nodes as a table, its columns as wide as their widest cell. Says on stderr
/// which store it read. A store that does not exist is created only with `create`.
pub async fn list(config: &ControllerConfig, create: bool) -> anyhow::Result<String> {
    let at = StoreAt::of(config);
    at.check_exists(create, "; pass --create to start a new, empty store there")?;
    eprintln!("fleet: nodes of the store {}", at.shown);
    let store = super::controller::open_store(config).await?;
    let nodes = store.enrolled_nodes().await;
    store.close().await;
    let mut nodes = nodes?;
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
    let mut rows = vec![["NAME", "SOURCE", "ALLOW", "LABELS"].map(str::to_owned)];
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
        rows.push([node.name.to_string(), source.to_owned(), allow, labels]);
    }
    Ok(table(&rows))
}

/// Rows as columns two spaces apart, each as wide as its widest cell (the last unpadded).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Removes an enrolled node.
pub async fn remove(config: &ControllerConfig, name: &NodeName) -> anyhow::Result<String> {
    if config.nodes.iter().any(|n| n.name == *name) {
        anyhow::bail!("node {name} is listed in the controller's config file; remove it there");
    }
    let at = StoreAt::of(config);
    at.check_exists(
        false,
        "; no node is enrolled in a store that does not exist",
    )?;
    let store = super::controller::open_store(config).await?;
    let existed = store.remove_node(name.as_str()).await;
    store.close().await;
    if !existed? {
        anyhow::bail!(
            "no node named {name} is enrolled in the store {} (see `fleet node list`)",
            at.shown
        );
    }
    Ok(format!(
        "removed node {name} from the store {}; its batches are refused from now on (history is kept until retention)\n",
        at.shown
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite:///tmp/x/fleet.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x/fleet.db"))
        );
        assert_eq!(sqlite_file("sqlite:rel.db"), Some(PathBuf::from("rel.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://fleet@db/fleet"), None);
    }

    #[test]
    fn table_columns_line_up_whatever_the_widths() {
        let rows = [
            ["NAME", "SOURCE"].map(str::to_owned),
            [
                "a-very-long-node-name-that-is-longer-than-thirty-two",
                "enrolled",
            ]
            .map(str::to_owned),
            ["x", "config"].map(str::to_owned),
        ];
        let out = table(&rows);
        let starts: Vec<usize> = out
            .lines()
            .map(|l| {
                l.find("SOURCE")
                    .or(l.find("enrolled"))
                    .or(l.find("config"))
                    .unwrap()
            })
            .collect();
        assert!(starts.iter().all(|s| *s == starts[0]), "{out}");
    }
}
