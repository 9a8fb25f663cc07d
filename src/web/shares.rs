//! Shares of a bounded resource counted per key (a peer address, a pool, an operator): taken
//! whole or refused at once, returned when the [`Share`] is dropped. The one mechanism behind
//! the intake's byte shares, the listeners' connections per address and the live streams per
//! operator. Knows nothing of what is counted.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// What each key holds now.
pub struct Shares<K> {
    held: Mutex<HashMap<K, usize>>,
}

impl<K> Default for Shares<K> {
    fn default() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
        }
    }
}

/// `amount` held by `key`, until dropped.
pub struct Share<K: Eq + Hash> {
    shares: Arc<Shares<K>>,
    key: K,
    amount: usize,
}

impl<K: Eq + Hash + Clone> Shares<K> {
    /// Takes `amount` for `key` if it then holds at most `max`; else says what it holds now.
    pub fn take(self: &Arc<Self>, key: K, amount: usize, max: usize) -> Result<Share<K>, usize> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = held.get(&key).copied().unwrap_or(0);
        if now + amount > max {
            return Err(now);
        }
        held.insert(key.clone(), now + amount);
        Ok(Share {
            shares: self.clone(),
            key,
            amount,
        })
    }

    /// What `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= self.amount;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_taken_whole_or_refused_and_comes_back_when_dropped() {
        let shares = Arc::new(Shares::default());
        let a = shares.take("a", 60, 100).unwrap();
        assert_eq!(shares.take("a", 60, 100).err(), Some(60));
        let _b = shares.take("b", 100, 100).unwrap();
        drop(a);
        assert_eq!(shares.held(&"a"), 0);
        assert!(shares.take("a", 100, 100).is_ok());
    }
}
