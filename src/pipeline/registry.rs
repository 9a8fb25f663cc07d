//! Who may talk to the controller: enrolled nodes (from the store and the config file) and
//! operator token hashes, held in memory and re-read periodically so `fleet node add`,
//! `fleet node remove` and `fleet token create` take effect on a running controller.
//!
//! Readers take a cheap snapshot (`Arc`); nothing here blocks ingest on the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::{MassaffectConfig, StaticNode};
use crate::model::{Node, NodeSource};
use crate::store::{Durable, StoreError};

/// Hex SHA-256 of an operator token: what the store keeps and what requests are checked against.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new operator token: `fleet_` and 64 hex digits of randomness.
pub fn new_token() -> String {
    format!("fleet_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// A new node key: 64 hex digits of randomness.
pub fn new_node_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The nodes `[compat.massaffect] agents` names, one per name with all its addresses. They
/// have no key: they are listed, never authenticated natively.
pub fn massaffect_nodes(config: &MassaffectConfig) -> Vec<Node> {
    let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
    for (addr, name) in &config.agents {
        nodes
            .entry(name.as_str())
            .or_insert_with(|| Node {
                name: name.clone(),
                key: String::new(),
                allow: Vec::new(),
                labels: BTreeMap::new(),
                source: NodeSource::Massaffect,
            })
            .allow
            .push(ipnet::IpNet::from(*addr));
    }
    nodes.into_values().collect()
}

/// One consistent view of nodes and tokens.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Nodes that authenticate natively (signed batches and requests, commands).
    pub nodes: HashMap<String, Node>,
    /// Nodes that only compatibility routes feed (MassAffect agents) and are not also in
    /// `nodes`: listed and readable, never authenticated by [`Snapshot::node`].
    compat_nodes: HashMap<String, Node>,
    /// Token hash → the token's label (who it belongs to, for the audit log).
    token_hashes: HashMap<String, String>,
}

impl Snapshot {
    /// A node that may authenticate natively.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// A node the read API and the dashboard show: enrolled, or fed by a compatibility route.
    pub fn listed(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).or_else(|| self.compat_nodes.get(name))
    }

    /// Every node the read API and the dashboard show.
    pub fn listed_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().chain(self.compat_nodes.values())
    }

    /// Whether `token` is a valid operator token.
    pub fn token_valid(&self, token: &str) -> bool {
        self.operator(token).is_some()
    }

    /// The label of a valid operator token: who is acting, for the audit log.
    pub fn operator(&self, token: &str) -> Option<&str> {
        self.token_hashes
            .get(&token_hash(token))
            .map(String::as_str)
    }

    pub fn has_tokens(&self) -> bool {
        !self.token_hashes.is_empty()
    }
}

/// The registry, shared by every request handler.
pub struct Registry {
    static_nodes: Vec<StaticNode>,
    /// Nodes fed by compatibility routes only (see [`massaffect_nodes`]).
    compat_nodes: Vec<Node>,
    static_token_hashes: Vec<String>,
    current: RwLock<Arc<Snapshot>>,
}

impl Registry {
    pub fn new(static_nodes: Vec<StaticNode>, static_tokens: &[String]) -> Self {
        Self {
            static_nodes,
            compat_nodes: Vec::new(),
            static_token_hashes: static_tokens.iter().map(|t| token_hash(t)).collect(),
            current: RwLock::new(Arc::new(Snapshot::default())),
        }
    }

    /// Adds nodes that compatibility routes feed; a name also enrolled is shown as enrolled.
    pub fn with_compat_nodes(mut self, nodes: Vec<Node>) -> Self {
        self.compat_nodes = nodes;
        self
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("registry lock poisoned").clone()
    }

    /// Re-reads nodes and tokens from the store. Nodes in the config file win over enrolled ones
    /// of the same name.
    pub async fn refresh(&self, store: &Durable) -> Result<(), StoreError> {
        let mut nodes: HashMap<String, Node> = store
            .enrolled_nodes()
            .await?
            .into_iter()
            .map(|n| (n.name.as_str().to_owned(), n))
            .collect();
        for node in &self.static_nodes {
            nodes.insert(
                node.name.as_str().to_owned(),
                Node {
                    name: node.name.clone(),
                    key: node.key.clone(),
                    allow: node.allow.clone(),
                    labels: node.labels.clone(),
                    source: NodeSource::Config,
                },
            );
        }
        let mut token_hashes: HashMap<String, String> =
            store.token_hashes().await?.into_iter().collect();
        token_hashes.extend(
            self.static_token_hashes
                .iter()
                .map(|h| (h.clone(), "config api_tokens".to_owned())),
        );
        let compat_nodes = self
            .compat_nodes
            .iter()
            .filter(|n| !nodes.contains_key(n.name.as_str()))
            .map(|n| (n.name.as_str().to_owned(), n.clone()))
            .collect();
        *self.current.write().expect("registry lock poisoned") = Arc::new(Snapshot {
            nodes,
            compat_nodes,
            token_hashes,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_stably() {
        let a = new_token();
        assert!(a.starts_with("fleet_") && a.len() == 70);
        assert_ne!(a, new_token());
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_eq!(new_node_key().len(), 64);
    }
}
