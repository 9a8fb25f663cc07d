//! Who may talk to the controller: enrolled nodes (from the store and the config file) and
//! operator token hashes, held in memory and re-read periodically so `fleet node add`,
//! `fleet node remove`, `fleet token create` and `fleet token revoke` take effect on a running
//! controller. A revocation through this controller ([`Registry::revoke`]) takes effect here at
//! once; long-lived uses of a token (event streams, dashboard sessions) wait on
//! [`Registry::revoked`] and end with it.
//!
//! Readers take a cheap snapshot (`Arc`); nothing here blocks ingest on the database. Must never
//! hold or hand out a token in clear: hashes in, ids (`store::tokens::token_id`) out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use crate::config::{MassaffectConfig, StaticNode};
use crate::model::{Node, NodeSource};
use crate::store::tokens::{LAST_USED_EVERY_MS, TokenInfo, is_token_id, token_id};
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

/// A valid operator token, as a request presented it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    /// The token's label: who is acting, for the audit log.
    pub label: String,
    /// The token's hash (the key of its shares and of [`Registry::revoked`]).
    pub hash: String,
    /// Its id (`store::tokens`); none for a token from the config file, which is not revocable.
    pub id: Option<String>,
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

    /// A valid operator token: its label, hash and id.
    pub fn holder(&self, token: &str, static_hashes: &[String]) -> Option<TokenHolder> {
        let hash = token_hash(token);
        let label = self.token_hashes.get(&hash)?.clone();
        let id = (!static_hashes.contains(&hash)).then(|| token_id(&hash).to_owned());
        Some(TokenHolder { label, hash, id })
    }

    /// Whether the token with this hash is still valid.
    pub fn has_hash(&self, hash: &str) -> bool {
        self.token_hashes.contains_key(hash)
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
    /// Bumped whenever the set of valid tokens changes: what [`Registry::revoked`] waits on.
    tokens_changed: tokio::sync::watch::Sender<u64>,
    /// When this controller last wrote each token's use (token hash → ms): bounded by the
    /// valid tokens, as entries of tokens gone are dropped at each refresh.
    last_used: Mutex<HashMap<String, i64>>,
    /// One refresh at a time: a refresh that read the store before a revocation must not
    /// write its snapshot after the revocation's own.
    refreshing: tokio::sync::Mutex<()>,
}

/// A token as listed: stored (revocable) or from the config file (not).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// `store` (`fleet token create`, the first token) or `config` (`api_tokens`,
    /// `FLEET_API_TOKEN`: remove it there to revoke it).
    pub source: String,
}

/// Why a token could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(
        "{0:?} is not a token id: ids are {len} hex digits, as `fleet token list` shows them",
        len = crate::store::tokens::TOKEN_ID_LEN
    )]
    Malformed(String),
    #[error("no token has the id {0}; `fleet token list` shows them")]
    Unknown(String),
    #[error(
        "token {0} comes from the controller's config (`api_tokens` or FLEET_API_TOKEN): remove it there and restart the controller"
    )]
    Configured(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Registry {
    pub fn new(static_nodes: Vec<StaticNode>, static_tokens: &[String]) -> Self {
        Self {
            static_nodes,
            compat_nodes: Vec::new(),
            static_token_hashes: static_tokens.iter().map(|t| token_hash(t)).collect(),
            current: RwLock::new(Arc::new(Snapshot::default())),
            tokens_changed: tokio::sync::watch::Sender::new(0),
            last_used: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The valid operator token `token`, if it is one: its label, hash and id.
    pub fn token(&self, token: &str) -> Option<TokenHolder> {
        self.snapshot().holder(token, &self.static_token_hashes)
    }

    /// Notes that `holder` was used just now: written to the store at most once a minute per
    /// token by this controller (and the statement skips a row another wrote within the minute),
    /// off the request's path.
    pub fn note_use(&self, holder: &TokenHolder, durable: &Durable) {
        if holder.id.is_none() {
            return;
        }
        let now = crate::timefmt::now_ms();
        {
            let mut last = self.last_used.lock().expect("last-used lock poisoned");
            match last.get(&holder.hash) {
                Some(at) if now - at < LAST_USED_EVERY_MS => return,
                _ => last.insert(holder.hash.clone(), now),
            };
        }
        let durable = durable.clone();
        let hash = holder.hash.clone();
        tokio::spawn(async move {
            if let Err(err) = durable.token_used(&hash, now).await {
                tracing::warn!(token = token_id(&hash), cause = %format!("{err:#}"), "cannot note an operator token's use");
            }
        });
    }

    /// Resolves once the token with this hash is no longer valid (revoked, seen at a refresh
    /// or at once after [`Registry::revoke`]); never for a valid one.
    pub async fn revoked(&self, hash: &str) {
        let mut changed = self.tokens_changed.subscribe();
        loop {
            if !self.snapshot().has_hash(hash) {
                return;
            }
            if changed.changed().await.is_err() {
                // The registry is gone: so is the controller; the caller's shutdown ends it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// [`Registry::revoked`] by the token's id.
    pub async fn revoked_id(&self, id: &str) {
        let hash = self
            .snapshot()
            .token_hashes
            .keys()
            .find(|h| token_id(h) == id)
            .cloned();
        if let Some(hash) = hash {
            self.revoked(&hash).await;
        }
    }

    /// Whether a token with this id is valid now.
    pub fn id_valid(&self, id: &str) -> bool {
        self.snapshot()
            .token_hashes
            .keys()
            .any(|h| token_id(h) == id && !self.static_token_hashes.contains(h))
    }

    /// Every token: those in the store (revoked ones too), then those of the config file.
    pub async fn list_tokens(&self, durable: &Durable) -> Result<Vec<ListedToken>, StoreError> {
        let mut listed: Vec<ListedToken> = durable
            .tokens()
            .await?
            .into_iter()
            .map(|info| ListedToken {
                info,
                source: "store".into(),
            })
            .collect();
        listed.extend(self.static_token_hashes.iter().map(|hash| ListedToken {
            info: TokenInfo {
                id: token_id(hash).to_owned(),
                label: "config api_tokens".into(),
                created_at_ms: 0,
                last_used_ms: None,
                revoked_at_ms: None,
            },
            source: "config".into(),
        }));
        Ok(listed)
    }

    /// Revokes the stored token with this id and ends its dashboard sessions (one
    /// transaction), then re-reads the store so it stops working here at once; other
    /// controllers follow at their next refresh. Revoking a revoked token changes nothing.
    pub async fn revoke(&self, durable: &Durable, id: &str) -> Result<TokenInfo, RevokeError> {
        if !is_token_id(id) {
            return Err(RevokeError::Malformed(id.to_owned()));
        }
        let id = id.to_ascii_lowercase();
        if self.static_token_hashes.iter().any(|h| token_id(h) == id) {
            return Err(RevokeError::Configured(id));
        }
        let info = durable
            .revoke_token(&id, crate::timefmt::now_ms())
            .await?
            .ok_or_else(|| RevokeError::Unknown(id.clone()))?;
        self.refresh(durable).await?;
        tracing::info!(token = %info.id, label = %info.label, "operator token revoked");
        Ok(info)
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
        let _one_at_a_time = self.refreshing.lock().await;
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
        let tokens_changed = {
            let old = self.snapshot();
            old.token_hashes.len() != token_hashes.len()
                || token_hashes
                    .keys()
                    .any(|h| !old.token_hashes.contains_key(h))
        };
        if tokens_changed {
            self.last_used
                .lock()
                .expect("last-used lock poisoned")
                .retain(|hash, _| token_hashes.contains_key(hash));
        }
        *self.current.write().expect("registry lock poisoned") = Arc::new(Snapshot {
            nodes,
            compat_nodes,
            token_hashes,
        });
        if tokens_changed {
            self.tokens_changed.send_modify(|n| *n += 1);
        }
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
