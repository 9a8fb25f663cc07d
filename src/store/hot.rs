//! The hot store: a newest-first ring of recent records per node and collector, in process
//! memory (embedded default) or in Redis (`LPUSH` + `LTRIM` under
//! `<prefix>node:<node>:<collector>:events`).
//!
//! Each entry pushed gets the ring's next sequence number (`seq`), so a reader that remembers
//! the newest `seq` it saw can ask for exactly what came after it, whatever times the records
//! carry (records of one tick share a time; an app may send a time far in the future). A
//! sequence number is never below the push's wall-clock time in microseconds, so it keeps
//! rising across a restart that forgot the counter (memory, or a Redis that keeps nothing).
//!
//! The hot store is a cache of what the durable store already holds: losing it loses nothing.
//! So a Redis outage must never fail or stall ingest: every Redis call has a short timeout, and
//! after a failure Redis is skipped for a back-off period while the connection manager
//! reconnects. This module knows nothing about HTTP or SQL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::model::Record;

/// How long one Redis call may take before the hot write is given up.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis is skipped after a failure.
const REDIS_BACKOFF_MS: i64 = 2_000;
/// Most rings (distinct collector names) one node may have in memory: an enrolled node sending a
/// new collector name with every record must not grow the controller without end.
pub const RINGS_PER_NODE_MAX: usize = 256;

/// Why the hot store could not answer a read.
#[derive(Debug, thiserror::Error)]
pub enum HotError {
    #[error("Redis is unavailable: {0}")]
    Redis(String),
}

impl HotError {
    /// What a client is told: our sentence, never Redis's text (that is for the log).
    pub fn public_message(&self) -> &'static str {
        "the hot store (Redis) is unavailable; retry later"
    }
}

/// The entry kept in the ring: a record with its node, serialised once. Its `seq` is put in
/// front when it is pushed ([`with_seq`]), by Rust in memory and by the script in Redis.
#[derive(serde::Serialize)]
struct HotEntry<'a> {
    node: &'a str,
    #[serde(flatten)]
    record: &'a Record,
    /// Samples left out of an entry that would be larger than [`ENTRY_BYTES_MAX`] (they are in
    /// the durable store).
    #[serde(skip_serializing_if = "Option::is_none")]
    samples_omitted: Option<usize>,
}

/// Largest ring entry kept with its samples: a record's document is bounded at ingest
/// (`ingest.max_record_bytes`), its samples only by the batch's limits, so a record of
/// thousands of samples with long labels is kept in the ring without them.
pub const ENTRY_BYTES_MAX: usize = crate::model::limits::RECORD_DATA_BYTES_MAX + 4 * 1024;

/// A record as a ring entry, within [`ENTRY_BYTES_MAX`] unless its document alone is larger.
fn entry_text(node: &str, record: &Record) -> String {
    let text = serde_json::to_string(&HotEntry {
        node,
        record,
        samples_omitted: None,
    })
    .expect("records serialise");
    if text.len() <= ENTRY_BYTES_MAX || record.samples.is_empty() {
        return text;
    }
    let slim = Record {
        collector: record.collector.clone(),
        ts: record.ts,
        data: record.data.clone(),
        samples: Vec::new(),
    };
    serde_json::to_string(&HotEntry {
        node,
        record: &slim,
        samples_omitted: Some(record.samples.len()),
    })
    .expect("records serialise")
}

/// The entry's JSON object with `"seq":N` as its first member. The serialised entry is always
/// an object (`{"node":…`), so this is a splice, not a re-parse.
fn with_seq(entry: &str, seq: u64) -> String {
    debug_assert!(entry.starts_with('{'));
    format!("{{\"seq\":{seq},{}", &entry[1..])
}

/// The sequence number after `last`: one more, but never below the clock.
fn next_seq(last: u64, now_us: u64) -> u64 {
    (last + 1).max(now_us)
}

/// Pushes one batch's entries onto their Redis rings with their sequence numbers, in one atomic
/// step: KEYS are the node's collector set, then per collector its ring and its counter, then
/// the node's byte counter; ARGV the ring size, the number of collectors, the node's byte bound,
/// its most rings, the collectors' names, then (collector index, entry) pairs. A collector that
/// would make the node more than its most rings gets none (its records are kept durably only).
/// Lua numbers are doubles, exact to 2^53: microseconds since 1970 are near 2^51.
const PUSH_SCRIPT: &str = r#"
-- Before Redis 5 a script that reads TIME may write only in effects replication.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local capacity = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local max_rings = tonumber(ARGV[4])
local bytes_key = KEYS[2 * n + 2]
local allowed = {}
local rings = redis.call('SCARD', KEYS[1])
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[1], ARGV[4 + i]) == 1 then
    allowed[i] = true
  elseif rings < max_rings then
    allowed[i] = true
    rings = rings + 1
    redis.call('SADD', KEYS[1], ARGV[4 + i])
  else
    allowed[i] = false
  end
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = {}
for i = 1, n do
  if allowed[i] then
    last[i] = tonumber(redis.call('GET', KEYS[2 * i + 1]) or '0')
  end
end
-- The numbers first, and the counters saved before any entry: a push that fails midway
-- leaves a gap, never a number used twice.
local entries = {}
for j = 5 + n, #ARGV, 2 do
  local i = tonumber(ARGV[j])
  if allowed[i] then
    local seq = math.max(last[i] + 1, now_us)
    last[i] = seq
    entries[#entries + 1] = {i, '{"seq":' .. string.format('%.0f', seq) .. ',' .. string.sub(ARGV[j + 1], 2)}
  end
end
for i = 1, n do
  if allowed[i] then
    redis.call('SET', KEYS[2 * i + 1], string.format('%.0f', last[i]))
  end
end
-- The node's bytes in its rings: counted as entries come and go, so the bound costs no scan.
local bytes = tonumber(redis.call('GET', bytes_key) or '0')
for _, entry in ipairs(entries) do
  redis.call('LPUSH', KEYS[2 * entry[1]], entry[2])
  bytes = bytes + #entry[2]
end
for i = 1, n do
  if allowed[i] then
    while redis.call('LLEN', KEYS[2 * i]) > capacity do
      bytes = bytes - #redis.call('RPOP', KEYS[2 * i])
    end
  end
end
-- Over the node's bytes: the oldest entries of the rings just written go, each ring keeping
-- its newest.
for i = 1, n do
  while allowed[i] and bytes > max_bytes and redis.call('LLEN', KEYS[2 * i]) > 1 do
    bytes = bytes - #redis.call('RPOP', KEYS[2 * i])
  end
end
redis.call('SET', bytes_key, string.format('%.0f', math.max(bytes, 0)))
return 0
"#;

/// The hot ring, in memory or in Redis.
pub enum HotStore {
    Memory(MemoryRing),
    Redis(RedisRing),
}

impl HotStore {
    /// Rings of `capacity` entries, a node's together at most `max_node_bytes` (plus the
    /// newest entry of each of its rings).
    pub fn memory(capacity: usize, max_node_bytes: usize) -> Self {
        HotStore::Memory(MemoryRing {
            capacity,
            max_node_bytes,
            nodes: Mutex::new(HashMap::new()),
        })
    }

    /// Sets up the Redis ring. A URL that does not parse is an error; a Redis that is down is
    /// not: the connection is made lazily and re-made after outages, and until then hot writes
    /// are skipped (the durable store has everything).
    pub fn redis(
        url: &str,
        prefix: &str,
        capacity: usize,
        max_node_bytes: usize,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let client =
            redis::Client::open(url).with_context(|| format!("Redis URL {url:?} is not valid"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .with_context(|| format!("cannot set up the Redis connection to {url}"))?;
        Ok(HotStore::Redis(RedisRing {
            manager,
            prefix: prefix.to_owned(),
            capacity,
            max_node_bytes,
            push_script: redis::Script::new(PUSH_SCRIPT),
            skip_until_ms: AtomicI64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// Pushes a batch's records onto their rings. Never fails: a Redis problem is logged,
    /// counted and skipped.
    pub async fn push(&self, node: &str, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let entries: Vec<(&str, String)> = records
            .iter()
            .map(|record| (record.collector.as_str(), entry_text(node, record)))
            .collect();
        match self {
            HotStore::Memory(ring) => ring.push(node, entries),
            HotStore::Redis(ring) => ring.push(node, entries).await,
        }
    }

    /// The newest `limit` entries of one ring, newest first; each has the record's fields, its
    /// `node` and its ring `seq`.
    pub async fn recent(
        &self,
        node: &str,
        collector: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, HotError> {
        let raw = match self {
            HotStore::Memory(ring) => ring.recent(node, collector, limit),
            HotStore::Redis(ring) => ring.recent(node, collector, limit).await?,
        };
        Ok(raw
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect())
    }

    /// The collectors that have a ring for `node`, by name, at most `limit`.
    pub async fn collectors(&self, node: &str, limit: usize) -> Result<Vec<String>, HotError> {
        let mut names = match self {
            HotStore::Memory(ring) => ring.collectors(node),
            HotStore::Redis(ring) => ring.collectors(node).await?,
        };
        names.sort();
        names.truncate(limit);
        Ok(names)
    }

    /// Checks the hot store answers (always true in memory).
    pub async fn ping(&self) -> Result<(), HotError> {
        match self {
            HotStore::Memory(_) => Ok(()),
            HotStore::Redis(ring) => ring.ping().await,
        }
    }

    /// How many Redis writes failed since start (0 in memory).
    pub fn failures(&self) -> u64 {
        match self {
            HotStore::Memory(_) => 0,
            HotStore::Redis(ring) => ring.failures.load(Ordering::Relaxed),
        }
    }
}

/// Rings in process memory.
pub struct MemoryRing {
    capacity: usize,
    max_node_bytes: usize,
    /// Node → its rings.
    nodes: Mutex<HashMap<String, NodeRings>>,
}

/// One node's rings, by collector, and the bytes they hold together.
#[derive(Default)]
struct NodeRings {
    rings: HashMap<String, Ring>,
    bytes: usize,
}

/// One ring in memory: newest first, and the `seq` of its newest entry.
#[derive(Default)]
struct Ring {
    entries: VecDeque<String>,
    last_seq: u64,
}

impl MemoryRing {
    fn push(&self, node: &str, entries: Vec<(&str, String)>) {
        let now_us = crate::timefmt::now_ms().max(0) as u64 * 1000;
        let mut nodes = self.nodes.lock().expect("hot ring lock poisoned");
        if !nodes.contains_key(node) {
            nodes.insert(node.to_owned(), NodeRings::default());
        }
        let mine = nodes.get_mut(node).expect("inserted above");
        for (collector, entry) in entries {
            if !mine.rings.contains_key(collector) {
                if mine.rings.len() >= RINGS_PER_NODE_MAX {
                    tracing::warn!(
                        node,
                        collector,
                        limit = RINGS_PER_NODE_MAX,
                        "node has too many collectors for the hot ring; record kept durably only"
                    );
                    continue;
                }
                mine.rings.insert(collector.to_owned(), Ring::default());
            }
            let ring = mine.rings.get_mut(collector).expect("inserted above");
            ring.last_seq = next_seq(ring.last_seq, now_us);
            let entry = with_seq(&entry, ring.last_seq);
            mine.bytes += entry.len();
            ring.entries.push_front(entry);
            // Past the count, and past the node's bytes (this ring keeping its newest), the
            // oldest go.
            while ring.entries.len() > self.capacity
                || (mine.bytes > self.max_node_bytes && ring.entries.len() > 1)
            {
                let old = ring.entries.pop_back().expect("a ring longer than one");
                mine.bytes -= old.len();
            }
        }
    }

    fn collectors(&self, node: &str) -> Vec<String> {
        let nodes = self.nodes.lock().expect("hot ring lock poisoned");
        nodes
            .get(node)
            .map(|mine| mine.rings.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn recent(&self, node: &str, collector: &str, limit: usize) -> Vec<String> {
        let nodes = self.nodes.lock().expect("hot ring lock poisoned");
        nodes
            .get(node)
            .and_then(|mine| mine.rings.get(collector))
            .map(|ring| ring.entries.iter().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

/// Rings in Redis lists.
pub struct RedisRing {
    manager: ConnectionManager,
    prefix: String,
    capacity: usize,
    max_node_bytes: usize,
    push_script: redis::Script,
    /// After a failure, writes are skipped until this time (ms since epoch).
    skip_until_ms: AtomicI64,
    failures: AtomicU64,
}

impl RedisRing {
    /// The Redis key of one ring.
    pub fn key(prefix: &str, node: &str, collector: &str) -> String {
        format!("{prefix}node:{node}:{collector}:events")
    }

    /// The Redis key of one ring's newest sequence number.
    pub fn seq_key(prefix: &str, node: &str, collector: &str) -> String {
        format!("{prefix}node:{node}:{collector}:seq")
    }

    /// The Redis key of the bytes one node's rings hold.
    pub fn bytes_key(prefix: &str, node: &str) -> String {
        format!("{prefix}node:{node}:bytes")
    }

    /// The Redis set of the collectors that have a ring for one node.
    pub fn collectors_key(prefix: &str, node: &str) -> String {
        format!("{prefix}node:{node}:collectors")
    }

    async fn collectors(&self, node: &str) -> Result<Vec<String>, HotError> {
        let mut conn = self.manager.clone();
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("SMEMBERS")
                .arg(Self::collectors_key(&self.prefix, node))
                .query_async::<Vec<String>>(&mut conn),
        )
        .await
        .map_err(|_| HotError::Redis("timed out".into()))?
        .map_err(|e| HotError::Redis(e.to_string()))
    }

    async fn push(&self, node: &str, entries: Vec<(&str, String)>) {
        let now = crate::timefmt::now_ms();
        if now < self.skip_until_ms.load(Ordering::Relaxed) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut collectors: Vec<&str> = Vec::new();
        let mut pairs: Vec<(usize, &str)> = Vec::with_capacity(entries.len());
        for (collector, entry) in &entries {
            let index = match collectors.iter().position(|c| c == collector) {
                Some(i) => i,
                None => {
                    collectors.push(collector);
                    collectors.len() - 1
                }
            };
            pairs.push((index + 1, entry));
        }
        let mut invocation = self
            .push_script
            .key(Self::collectors_key(&self.prefix, node));
        for collector in &collectors {
            invocation
                .key(Self::key(&self.prefix, node, collector))
                .key(Self::seq_key(&self.prefix, node, collector));
        }
        invocation.key(Self::bytes_key(&self.prefix, node));
        invocation
            .arg(self.capacity)
            .arg(collectors.len())
            .arg(self.max_node_bytes)
            .arg(RINGS_PER_NODE_MAX);
        for collector in &collectors {
            invocation.arg(*collector);
        }
        for (index, entry) in pairs {
            invocation.arg(index).arg(entry);
        }
        let mut conn = self.manager.clone();
        let result =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        let failure = match result {
            Ok(Ok(_)) => return,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.skip_until_ms
            .store(now + REDIS_BACKOFF_MS, Ordering::Relaxed);
        tracing::warn!(cause = %failure, "hot write to Redis failed; ingest continues, Redis is retried in 2 s");
    }

    async fn recent(
        &self,
        node: &str,
        collector: &str,
        limit: usize,
    ) -> Result<Vec<String>, HotError> {
        let mut conn = self.manager.clone();
        let key = Self::key(&self.prefix, node, collector);
        let stop = limit.max(1) as isize - 1;
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(stop)
                .query_async::<Vec<String>>(&mut conn),
        )
        .await
        .map_err(|_| HotError::Redis("timed out".into()))?
        .map_err(|e| HotError::Redis(e.to_string()))
    }

    async fn ping(&self) -> Result<(), HotError> {
        let mut conn = self.manager.clone();
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| HotError::Redis("timed out".into()))?
        .map_err(|e| HotError::Redis(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(collector: &str, ts: i64) -> Record {
        Record {
            collector: collector.into(),
            ts,
            data: serde_json::json!({"n": ts}),
            samples: vec![],
        }
    }

    #[tokio::test]
    async fn a_node_has_a_bounded_number_of_rings() {
        let hot = HotStore::memory(2, 1 << 20);
        for i in 0..RINGS_PER_NODE_MAX + 5 {
            hot.push("web1", &[record(&format!("c{i}"), 1)]).await;
        }
        hot.push("web2", &[record("c0", 1)]).await;
        let HotStore::Memory(ring) = &hot else {
            unreachable!("made in memory")
        };
        assert_eq!(ring.collectors("web1").len(), RINGS_PER_NODE_MAX);
        assert_eq!(ring.collectors("web2"), vec!["c0".to_owned()]);
        // An existing ring keeps taking records.
        hot.push("web1", &[record("c0", 2)]).await;
        assert_eq!(hot.recent("web1", "c0", 5).await.unwrap().len(), 2);
    }

    #[test]
    fn sequence_numbers_rise_past_a_forgotten_counter() {
        assert_eq!(next_seq(0, 1_000), 1_000, "a new ring starts at the clock");
        assert_eq!(next_seq(5_000, 1_000), 5_001, "then counts up past it");
        assert_eq!(
            with_seq(r#"{"node":"web1","ts":1}"#, 7),
            r#"{"seq":7,"node":"web1","ts":1}"#
        );
    }

    #[tokio::test]
    async fn memory_ring_is_newest_first_and_capped() {
        let hot = HotStore::memory(3, 1 << 20);
        for ts in 1..=5 {
            hot.push("web1", &[record("system", ts)]).await;
        }
        hot.push("web1", &[record("disk", 9)]).await;
        let recent = hot.recent("web1", "system", 10).await.unwrap();
        let ts: Vec<i64> = recent.iter().map(|v| v["ts"].as_i64().unwrap()).collect();
        assert_eq!(ts, vec![5, 4, 3]);
        assert_eq!(recent[0]["node"], "web1");
        let seqs: Vec<u64> = recent.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] > w[1]),
            "rising sequence numbers, newest first: {seqs:?}"
        );
        assert_eq!(hot.recent("web1", "system", 1).await.unwrap().len(), 1);
        assert!(hot.recent("web2", "system", 10).await.unwrap().is_empty());
    }
}
