//! Refused batches recorded at the centre: the controller's log and the central error log (the
//! `events` table's `error` category: the Errors page, `GET /api/v1/errors`), so a node whose
//! batches are refused (a wrong key, not enrolled, another network, its clock) is seen from the
//! controller, not only by the agent that got the 401.
//!
//! Rate-limited per (node name as claimed, reason): the first refusal of a pair is recorded,
//! further ones within [`EVERY`] are only counted and reported with the next entry of the pair.
//! Must never let a sender grow the log, the store or this module's memory without bound: at
//! most [`KEYS_MAX`] pairs are tracked, and refusals of further pairs share one overflow pair
//! (a flood of random node names is one entry per [`EVERY`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pipeline::node_auth::NodeAuthError;
use crate::store::Durable;
use crate::store::events::NewEvent;

/// One entry per (node, reason) at most this often.
pub const EVERY: Duration = Duration::from_secs(60);
/// Most (node, reason) pairs tracked at once.
pub const KEYS_MAX: usize = 64;
/// The node name the overflow pair is counted under.
const OVERFLOW: &str = "(many nodes)";
/// A claimed name is cut to this many characters in the log (a valid name has at most 64).
const NAME_SHOWN: usize = 64;

/// Whether a refusal is recorded, and how many of its pair were passed over before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record it; `overflow`: under the shared pair of all nodes past [`KEYS_MAX`].
    Record {
        suppressed: u64,
        overflow: bool,
    },
    Skip,
}

struct Slot {
    since: Instant,
    suppressed: u64,
}

/// The limiter alone (no I/O): which refusals are recorded.
#[derive(Default)]
pub struct Limiter {
    slots: HashMap<(String, &'static str), Slot>,
}

impl Limiter {
    pub fn judge(&mut self, node: &str, reason: &'static str, now: Instant) -> Verdict {
        let mut key = (node.to_owned(), reason);
        let mut overflow = false;
        if !self.slots.contains_key(&key) && self.slots.len() >= KEYS_MAX {
            self.slots
                .retain(|_, slot| now.duration_since(slot.since) < EVERY);
            if self.slots.len() >= KEYS_MAX {
                key = (OVERFLOW.to_owned(), "many");
                overflow = true;
            }
        }
        match self.slots.get_mut(&key) {
            Some(slot) if now.duration_since(slot.since) < EVERY => {
                slot.suppressed += 1;
                Verdict::Skip
            }
            Some(slot) => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.since = now;
                Verdict::Record {
                    suppressed,
                    overflow,
                }
            }
            None => {
                self.slots.insert(
                    key,
                    Slot {
                        since: now,
                        suppressed: 0,
                    },
                );
                Verdict::Record {
                    suppressed: 0,
                    overflow,
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Records refused batches (see the module's doc).
pub struct Refusals {
    durable: Durable,
    limiter: Mutex<Limiter>,
}

impl Refusals {
    pub fn new(durable: Durable) -> Self {
        Self {
            durable,
            limiter: Mutex::new(Limiter::default()),
        }
    }

    /// Records that a batch claiming to come from `node` (from `source`, `None` on NATS) was
    /// refused for `error`. A store that is down is not a refusal of the batch: not recorded.
    /// The write happens off the caller's path.
    /// The write's task is returned (tests await it); `None` when nothing is written.
    pub fn batch_refused(
        &self,
        node: &str,
        source: Option<IpAddr>,
        error: &NodeAuthError,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(error, NodeAuthError::Unavailable(_)) {
            return None;
        }
        let reason = error.reason();
        let shown: String = crate::termsafe::visible(node, crate::termsafe::Shape::OneLine)
            .chars()
            .take(NAME_SHOWN)
            .collect();
        tracing::debug!(node = %shown, reason, "batch refused");
        let verdict = self
            .limiter
            .lock()
            .expect("refusal limiter poisoned")
            .judge(&shown, reason, Instant::now());
        let Verdict::Record {
            suppressed,
            overflow,
        } = verdict
        else {
            return None;
        };
        let from = source.map_or_else(|| "NATS".to_owned(), |ip| ip.to_string());
        let valid_name = crate::model::NodeName::parse(node).is_ok();
        let named = if shown.is_empty() { "(none)" } else { &shown };
        let mut message = if overflow {
            format!(
                "refused batches from more than {KEYS_MAX} node names and reasons this minute; the latest from node {named} ({from}): {error}"
            )
        } else {
            format!("refused a batch from node {named} ({from}): {error}")
        };
        if suppressed > 0 {
            message.push_str(&format!(
                " ({suppressed} more of these since the last entry)"
            ));
        }
        let entry = NewEvent {
            node: valid_name.then(|| node.to_owned()),
            service: None,
            level: 4,
            message,
            fields: serde_json::json!({
                "refused": "batch",
                "reason": reason,
                "node_claimed": shown,
                "source": source.map(|ip| ip.to_string()),
                "status": error.status(),
                "suppressed": suppressed,
                "overflow": overflow,
            }),
            category: "error",
        };
        let durable = self.durable.clone();
        // A node enrolled since the registry's last refresh (at most `registry_refresh` ago)
        // is refused until the next one: its agent retries, and that is no error to report.
        let recheck = (reason == "unknown_node" && valid_name).then(|| node.to_owned());
        let logged = (shown.clone(), from.clone(), error.to_string());
        Some(tokio::spawn(async move {
            if let Some(node) = recheck
                && durable.is_enrolled(&node).await.unwrap_or(false)
            {
                tracing::debug!(%node, "a batch refused before the registry saw its enrollment");
                return;
            }
            tracing::warn!(node = %logged.0, from = %logged.1, reason, suppressed, overflow, error = %logged.2, "refused a batch");
            if let Err(err) = durable.add_event(&entry, crate::timefmt::now_ms()).await {
                tracing::warn!(cause = %format!("{err:#}"), "cannot record a refused batch in the error log");
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_pair_and_window_with_the_rest_counted() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(
            limiter.judge("web1", "bad_signature", t0),
            Verdict::Record {
                suppressed: 0,
                overflow: false
            }
        );
        for _ in 0..999 {
            assert_eq!(limiter.judge("web1", "bad_signature", t0), Verdict::Skip);
        }
        assert_eq!(
            limiter.judge("web1", "unknown_node", t0),
            Verdict::Record {
                suppressed: 0,
                overflow: false
            },
            "another reason is another pair"
        );
        assert_eq!(
            limiter.judge("web1", "bad_signature", t0 + EVERY),
            Verdict::Record {
                suppressed: 999,
                overflow: false
            }
        );
    }

    #[test]
    fn random_names_never_grow_it_past_its_bound() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        let recorded = (0..10_000)
            .filter(|i| limiter.judge(&format!("n{i}"), "unknown_node", t0) != Verdict::Skip)
            .count();
        assert_eq!(
            recorded,
            KEYS_MAX + 1,
            "the tracked pairs, then one overflow"
        );
        assert!(limiter.len() <= KEYS_MAX + 1);
        // Once their window passed, old pairs make room again.
        let later = t0 + EVERY;
        assert_eq!(
            limiter.judge("fresh", "unknown_node", later),
            Verdict::Record {
                suppressed: 0,
                overflow: false
            }
        );
        assert!(limiter.len() <= 2, "{}", limiter.len());
    }

    /// The error log's entries on SQLite in a temp dir.
    async fn errors_of(durable: &Durable) -> Vec<String> {
        let query = crate::store::events::EventQuery {
            category: "error",
            service: None,
            node: None,
            min_level: None,
            from_ms: None,
            to_ms: None,
            text: None,
            before_id: None,
            after_id: None,
            limit: 100,
        };
        durable
            .events(&query)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[tokio::test]
    async fn a_node_enrolled_since_the_last_refresh_is_no_error_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let durable = Durable::connect(&url).await.unwrap();
        let node = crate::model::Node {
            name: crate::model::NodeName::parse("late1").unwrap(),
            key: "key-of-late1-0123456789".into(),
            allow: Vec::new(),
            labels: Default::default(),
            source: crate::model::NodeSource::Enrolled,
        };
        durable.add_node(&node, 0).await.unwrap();
        let refusals = Refusals::new(durable.clone());
        // The registry has not seen it yet: its first batches are refused as unknown.
        let late = NodeAuthError::UnknownNode("late1".into());
        refusals
            .batch_refused("late1", None, &late)
            .unwrap()
            .await
            .unwrap();
        assert!(errors_of(&durable).await.is_empty());
        // A node the store does not know either is reported.
        let ghost = NodeAuthError::UnknownNode("ghost".into());
        refusals
            .batch_refused("ghost", None, &ghost)
            .unwrap()
            .await
            .unwrap();
        let errors = errors_of(&durable).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("ghost"), "{errors:?}");
    }
}
