//! The data model shared by every mode: node names, records, samples, vitals, and the limits that
//! bound each of them.
//!
//! This module is plain data and validation. It must never do I/O or know about HTTP, SQL or
//! Redis: the agent, the controller and the stores all speak these types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Upper bounds on everything a batch may carry. One place, so the agent builds only what the
/// controller accepts and the documentation (docs/wire.md) has one list to quote.
pub mod limits {
    /// Longest node, collector or label name.
    pub const NAME_MAX: usize = 64;
    /// Longest metric name.
    pub const METRIC_NAME_MAX: usize = 128;
    /// Longest label value.
    pub const LABEL_VALUE_MAX: usize = 256;
    /// Most labels on one sample.
    pub const LABELS_MAX: usize = 16;
    /// Most records in one batch.
    pub const RECORDS_PER_BATCH_MAX: usize = 1_000;
    /// Most samples in one batch, over all its records.
    pub const SAMPLES_PER_BATCH_MAX: usize = 20_000;
    /// The longest collection interval an agent may report (a day): the controller derives
    /// deadlines from it.
    pub const INTERVAL_MAX_MS: u64 = 86_400_000;
    /// Most distinct series (metric name and label set) one node may create: a runaway label
    /// (a request id as a label value, say) must not grow the store without end. Samples of
    /// series past the limit are dropped and counted.
    pub const SERIES_PER_NODE_MAX: usize = 10_000;
    /// Largest item an app (the agent's socket) or a MassAffect agent may send, as JSON.
    pub const ITEM_BYTES_MAX: usize = 64 * 1024;
    /// Most samples taken from one item's `metrics`; the rest are left in its document.
    pub const ITEM_SAMPLES_MAX: usize = 256;
    /// Largest `data` document of one record, as JSON: the controller's default
    /// (`ingest.max_record_bytes`) and what the agent holds its sources to.
    pub const RECORD_DATA_BYTES_MAX: usize = 64 * 1024;
}

/// Why a name or a value was refused. The message names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct InvalidInput {
    pub field: String,
    pub problem: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

fn check_chars(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidInput::new(
            field,
            format!("is {} bytes long; at most {max} are allowed", value.len()),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(InvalidInput::new(
            field,
            format!("contains {bad:?}; only {what} are allowed"),
        ));
    }
    Ok(())
}

/// Refuses a NUL character in a text that is stored (or searched) as a database TEXT value:
/// PostgreSQL cannot hold one and SQLite would, so both engines refuse it here alike, naming
/// the field. (Texts kept inside JSON, an event's `fields` or a record's document, keep theirs:
/// JSON writes it `\u0000`.)
pub fn check_no_nul(field: &str, text: &str) -> Result<(), InvalidInput> {
    if text.contains('\0') {
        return Err(InvalidInput::new(
            field,
            "contains a NUL character (\\u0000), which the store cannot hold; remove it",
        ));
    }
    Ok(())
}

/// A text for a database TEXT value that must be kept rather than refused (a node's report of
/// why a command failed: refusing it would lose the command's outcome), its NULs written `\0`.
pub fn escape_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\\0").into()
    } else {
        text.into()
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A node's unique name: `[a-zA-Z0-9._-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl NodeName {
    pub fn parse(value: &str) -> Result<Self, InvalidInput> {
        check_chars(
            "node",
            value,
            limits::NAME_MAX,
            name_char,
            "letters, digits, '.', '_' and '-'",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Checks a collector name: same alphabet and length as node names.
pub fn check_collector_name(field: &str, value: &str) -> Result<(), InvalidInput> {
    check_chars(
        field,
        value,
        limits::NAME_MAX,
        name_char,
        "letters, digits, '.', '_' and '-'",
    )
}

/// Checks a metric name: `[a-zA-Z0-9._:-]{1,128}`.
pub fn check_metric_name(field: &str, value: &str) -> Result<(), InvalidInput> {
    check_chars(
        field,
        value,
        limits::METRIC_NAME_MAX,
        |c| name_char(c) || c == ':',
        "letters, digits, '.', '_', ':' and '-'",
    )
}

/// One numeric measurement: `name{labels} = value` at the time of the record that carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Metric name, e.g. `cpu.user_percent` or `disk.used_bytes`.
    pub name: String,
    /// Dimensions that tell series of one metric apart (`mount`, `interface`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            value,
        }
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The labels as canonical JSON (keys sorted), the form series are keyed by.
    pub fn labels_json(&self) -> std::borrow::Cow<'static, str> {
        if self.labels.is_empty() {
            return std::borrow::Cow::Borrowed("{}");
        }
        serde_json::to_string(&self.labels)
            .expect("a map of strings always serialises")
            .into()
    }

    fn validate(&self, field: &str) -> Result<(), InvalidInput> {
        check_metric_name(&format!("{field}.name"), &self.name)?;
        if !self.value.is_finite() {
            return Err(InvalidInput::new(
                format!("{field}.value"),
                "must be a finite number",
            ));
        }
        if self.labels.len() > limits::LABELS_MAX {
            return Err(InvalidInput::new(
                format!("{field}.labels"),
                format!(
                    "has {} labels; at most {} are allowed",
                    self.labels.len(),
                    limits::LABELS_MAX
                ),
            ));
        }
        for (key, value) in &self.labels {
            check_chars(
                &format!("{field}.labels"),
                key,
                limits::NAME_MAX,
                |c| c.is_ascii_alphanumeric() || c == '_',
                "letters, digits and '_' in label names",
            )?;
            if value.len() > limits::LABEL_VALUE_MAX {
                return Err(InvalidInput::new(
                    format!("{field}.labels.{key}"),
                    format!("is longer than {} bytes", limits::LABEL_VALUE_MAX),
                ));
            }
        }
        Ok(())
    }
}

/// The collectors the agent itself fills, which apps may not take: a trailing `.` takes every
/// name it begins (the log tail's `logs.NAME`, `tail.NAME`, `web.NAME`). Any other collector
/// of a node is an app's (the app socket's).
pub const AGENT_COLLECTORS: [&str; 11] = [
    "system",
    "disk",
    "network",
    "processes",
    "check",
    "plugin",
    "nginx",
    "agent",
    "logs.",
    "tail.",
    "web.",
];

/// Whether `pattern` (a name, or a prefix ending in `.`) names `collector`.
fn names_collector(pattern: &str, collector: &str) -> bool {
    if pattern.ends_with('.') {
        collector.starts_with(pattern)
    } else {
        collector == pattern
    }
}

/// Whether `collector` is one the agent fills itself (see [`AGENT_COLLECTORS`]).
pub fn is_agent_collector(collector: &str) -> bool {
    AGENT_COLLECTORS
        .iter()
        .any(|pattern| names_collector(pattern, collector))
}

/// What one collector produced at one tick on one node: a JSON document for the hot ring and the
/// live view, plus the numeric samples kept as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub collector: String,
    /// Milliseconds since the Unix epoch, when the collector ran.
    pub ts: i64,
    /// The collector's document (e.g. the top-5 process list). Free-form JSON.
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

impl Record {
    /// The size of its `data` document as JSON, counted without building the text.
    pub fn data_bytes(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, &self.data).expect("JSON values serialise");
        count.0
    }

    /// Refuses a `data` document over `max` bytes as JSON; `field` is the record's path.
    pub fn check_data_bytes(&self, field: &str, max: usize) -> Result<(), InvalidInput> {
        let bytes = self.data_bytes();
        if bytes > max {
            return Err(InvalidInput::new(
                format!("{field}.data"),
                format!(
                    "is {bytes} bytes as JSON; a record's data may be at most {max} bytes (ingest.max_record_bytes)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the collector name, the time and every sample against [`limits`]; `field` is the
    /// record's path for the error (`records[3]`). The agent checks each record with this before
    /// it spools it, so one bad record cannot make the controller refuse a whole batch.
    pub fn validate(&self, field: &str) -> Result<(), InvalidInput> {
        check_collector_name(&format!("{field}.collector"), &self.collector)?;
        if self.ts < 0 {
            return Err(InvalidInput::new(
                format!("{field}.ts"),
                "must be milliseconds since the Unix epoch",
            ));
        }
        if self.samples.len() > limits::SAMPLES_PER_BATCH_MAX {
            return Err(InvalidInput::new(
                format!("{field}.samples"),
                format!("has more than {} samples", limits::SAMPLES_PER_BATCH_MAX),
            ));
        }
        for (j, sample) in self.samples.iter().enumerate() {
            sample.validate(&format!("{field}.samples[{j}]"))?;
        }
        Ok(())
    }

    /// Records from a list of items (an array an app or a MassAffect agent sent), all or none:
    /// at most [`limits::RECORDS_PER_BATCH_MAX`] items, each at most
    /// [`limits::ITEM_BYTES_MAX`] as JSON, each through [`Record::from_item`]. The error names
    /// the item (counted from 0).
    pub fn from_items(
        items: Vec<serde_json::Value>,
        received_ms: i64,
        reserved: &[&str],
    ) -> Result<Vec<Record>, InvalidInput> {
        if items.len() > limits::RECORDS_PER_BATCH_MAX {
            return Err(InvalidInput::new(
                "items",
                format!(
                    "there are {}; at most {} are taken at once",
                    items.len(),
                    limits::RECORDS_PER_BATCH_MAX
                ),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let size = serde_json::to_vec(&item)
                    .expect("a parsed JSON value serialises")
                    .len();
                if size > limits::ITEM_BYTES_MAX {
                    return Err(InvalidInput::new(
                        format!("item {i}"),
                        format!(
                            "is {size} bytes as JSON; at most {} are taken",
                            limits::ITEM_BYTES_MAX
                        ),
                    ));
                }
                Record::from_item(item, received_ms, reserved).map_err(|e| InvalidInput {
                    field: format!("item {i}: {}", e.field),
                    problem: e.problem,
                })
            })
            .collect()
    }

    /// A record from an item as apps (the agent's socket) and MassAffect agents send it: a JSON
    /// object with a `collector` name, an optional `ts` and any other keys.
    ///
    /// - `ts` is epoch seconds (MassAffect's form, fractions allowed) or, from 10^11 up (the
    ///   year 5138 in seconds), milliseconds (`Date.now()`); absent, the item is stamped
    ///   `received_ms`.
    /// - The document is the item without `collector` and `ts`.
    /// - Numbers under `metrics` (nested objects joined with `.`) become samples named
    ///   `<collector>.<path>`, up to [`limits::ITEM_SAMPLES_MAX`]; keys that make no valid metric
    ///   name stay in the document only.
    ///
    /// `reserved` lists collector names the caller refuses (the app socket: the agent's own); an
    /// entry ending in `.` refuses every name it begins (`logs.`).
    pub fn from_item(
        item: serde_json::Value,
        received_ms: i64,
        reserved: &[&str],
    ) -> Result<Record, InvalidInput> {
        let serde_json::Value::Object(mut fields) = item else {
            return Err(InvalidInput::new(
                "item",
                "must be a JSON object with a \"collector\" key",
            ));
        };
        let collector = match fields.remove("collector") {
            Some(serde_json::Value::String(name)) => name,
            Some(_) => return Err(InvalidInput::new("collector", "must be a string")),
            None => {
                return Err(InvalidInput::new(
                    "collector",
                    "is missing; every item names its collector",
                ));
            }
        };
        check_collector_name("collector", &collector)?;
        if reserved.iter().any(|r| names_collector(r, &collector)) {
            return Err(InvalidInput::new(
                "collector",
                format!("{collector:?} is the agent's own; name yours differently"),
            ));
        }
        let ts = match fields.remove("ts") {
            None | Some(serde_json::Value::Null) => received_ms,
            Some(serde_json::Value::Number(n)) => {
                let value = n.as_f64().unwrap_or(-1.0);
                if !(value.is_finite() && (0.0..1e15).contains(&value)) {
                    return Err(InvalidInput::new(
                        "ts",
                        "must be seconds (or milliseconds) since the Unix epoch",
                    ));
                }
                if value >= 1e11 {
                    value as i64
                } else {
                    (value * 1000.0).round() as i64
                }
            }
            Some(_) => {
                return Err(InvalidInput::new(
                    "ts",
                    "must be a number of seconds since the Unix epoch",
                ));
            }
        };
        let mut samples = Vec::new();
        if let Some(metrics) = fields.get("metrics") {
            let mut path = collector.clone();
            collect_samples(metrics, &mut path, 0, &mut samples);
        }
        Ok(Record {
            collector,
            ts,
            data: serde_json::Value::Object(fields),
            samples,
        })
    }
}

/// Walks `value` depth-first, pushing each number as a sample named by its path.
fn collect_samples(
    value: &serde_json::Value,
    path: &mut String,
    depth: usize,
    out: &mut Vec<Sample>,
) {
    const DEPTH_MAX: usize = 4;
    match value {
        serde_json::Value::Number(n) if depth > 0 => {
            if out.len() < limits::ITEM_SAMPLES_MAX
                && let Some(v) = n.as_f64().filter(|v| v.is_finite())
                && check_metric_name("metrics", path).is_ok()
            {
                out.push(Sample::new(path.clone(), v));
            }
        }
        serde_json::Value::Object(map) if depth < DEPTH_MAX => {
            for (key, child) in map {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                collect_samples(child, path, depth + 1, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The body of a batch on the wire (see docs/wire.md), before compression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The agent's collection interval in milliseconds: tells the controller when to call the
    /// node stale.
    #[serde(default)]
    pub interval_ms: u64,
    /// Batches this agent instance has dropped from its full spool so far (cumulative), so the
    /// controller can tell known drops from unexplained gaps.
    #[serde(default)]
    pub dropped_batches: u64,
    pub records: Vec<Record>,
}

impl BatchBody {
    /// Checks every name, count and number against [`limits`]. The error names the field by its
    /// path, e.g. `records[3].samples[0].name`.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.interval_ms > limits::INTERVAL_MAX_MS {
            return Err(InvalidInput::new(
                "interval_ms",
                format!("must be at most {} (a day)", limits::INTERVAL_MAX_MS),
            ));
        }
        if self.records.len() > limits::RECORDS_PER_BATCH_MAX {
            return Err(InvalidInput::new(
                "records",
                format!(
                    "has {} records; at most {} are allowed",
                    self.records.len(),
                    limits::RECORDS_PER_BATCH_MAX
                ),
            ));
        }
        let mut total_samples = 0usize;
        for (i, record) in self.records.iter().enumerate() {
            total_samples += record.samples.len();
            if total_samples > limits::SAMPLES_PER_BATCH_MAX {
                return Err(InvalidInput::new(
                    "records",
                    format!(
                        "carry more than {} samples in all",
                        limits::SAMPLES_PER_BATCH_MAX
                    ),
                ));
            }
            record.validate(&format!("records[{i}]"))?;
        }
        Ok(())
    }

    pub fn sample_count(&self) -> usize {
        self.records.iter().map(|r| r.samples.len()).sum()
    }
}

/// Where a node's enrollment comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeSource {
    /// `[[nodes]]` in the controller's config file.
    Config,
    /// `fleet node add`, kept in the durable store.
    Enrolled,
    /// `[compat.massaffect] agents` in the controller's config: listed and readable like any
    /// node, but it cannot authenticate natively (no key, no commands).
    Massaffect,
}

/// An enrolled node: who may send as this name, from where, and how it is labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: NodeName,
    /// The shared secret its batches are signed with.
    pub key: String,
    /// Source networks it may send from; empty means any.
    pub allow: Vec<ipnet::IpNet>,
    pub labels: BTreeMap<String, String>,
    pub source: NodeSource,
}

impl Node {
    /// Whether `addr` may send as this node.
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&addr))
    }
}

/// Checks a label given as `key=value` on the command line.
pub fn parse_label(text: &str) -> Result<(String, String), InvalidInput> {
    let (key, value) = text.split_once('=').ok_or_else(|| {
        InvalidInput::new("label", format!("{text:?} is not of the form key=value"))
    })?;
    check_chars(
        "label",
        key,
        limits::NAME_MAX,
        |c| c.is_ascii_alphanumeric() || c == '_',
        "letters, digits and '_' in label names",
    )?;
    if value.len() > limits::LABEL_VALUE_MAX {
        return Err(InvalidInput::new(
            format!("label {key}"),
            format!("is longer than {} bytes", limits::LABEL_VALUE_MAX),
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Whether a node is reporting, judged from when it last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Stale,
    Down,
}

impl NodeState {
    /// Up while batches arrive on time; stale after `stale_after` or 3 intervals of silence,
    /// whichever is longer; down after `down_after` or 10 intervals. A node never seen is down.
    pub fn of(
        last_seen_ms: Option<i64>,
        interval_ms: i64,
        now_ms: i64,
        stale_after: std::time::Duration,
        down_after: std::time::Duration,
    ) -> Self {
        let Some(last_seen) = last_seen_ms else {
            return NodeState::Down;
        };
        let silence = now_ms - last_seen;
        let stale = (stale_after.as_millis() as i64).max(3 * interval_ms);
        let down = down_after_ms(interval_ms, down_after);
        if silence >= down {
            NodeState::Down
        } else if silence >= stale {
            NodeState::Stale
        } else {
            NodeState::Up
        }
    }
}

/// How long a node may be silent before it is down: `down_after` or 10 of its intervals,
/// whichever is longer. Its own heartbeat (`node:<name>`) uses the same figure.
pub fn down_after_ms(interval_ms: i64, down_after: std::time::Duration) -> i64 {
    (down_after.as_millis() as i64).max(10 * interval_ms)
}

/// The few figures the overview shows for a node, taken from its latest samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vitals {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    /// The fullest mounted filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
}

/// Metric names the vitals are read from; the system and disk collectors emit them.
pub mod metric {
    pub const CPU_USED_PERCENT: &str = "cpu.used_percent";
    pub const MEMORY_USED_PERCENT: &str = "memory.used_percent";
    pub const DISK_USED_PERCENT: &str = "disk.used_percent";
    pub const LOAD1: &str = "load.1";

    /// The CPU in use, in percent: all but idle and I/O wait (a CPU waiting on a disk is
    /// idle). The system collector and MassAffect's translation both say it this way.
    pub fn cpu_used_percent(idle: f64, iowait: f64) -> f64 {
        (100.0 - idle - iowait).clamp(0.0, 100.0)
    }
}

impl Vitals {
    /// Vitals from a batch's samples; `None` when the batch carries none of them.
    pub fn from_records(records: &[Record]) -> Option<Self> {
        let mut vitals = Vitals::default();
        let mut found = false;
        for sample in records.iter().flat_map(|r| &r.samples) {
            let slot = match sample.name.as_str() {
                metric::CPU_USED_PERCENT => &mut vitals.cpu_percent,
                metric::MEMORY_USED_PERCENT => &mut vitals.memory_percent,
                metric::LOAD1 => &mut vitals.load1,
                metric::DISK_USED_PERCENT => {
                    let max = vitals
                        .disk_percent
                        .map_or(sample.value, |v| v.max(sample.value));
                    vitals.disk_percent = Some(max);
                    found = true;
                    continue;
                }
                _ => continue,
            };
            *slot = Some(sample.value);
            found = true;
        }
        found.then_some(vitals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nuls_are_refused_or_escaped() {
        assert!(check_no_nul("f", "fine\ttext").is_ok());
        assert_eq!(check_no_nul("f", "a\0").unwrap_err().field, "f");
        assert_eq!(escape_nul("a\0b"), "a\\0b");
        assert!(matches!(
            escape_nul("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn node_names_follow_the_alphabet_and_length() {
        assert!(NodeName::parse("web-1.example_a").is_ok());
        assert!(NodeName::parse("").is_err());
        assert!(NodeName::parse("web 1").is_err());
        assert!(NodeName::parse("web/1").is_err());
        assert!(NodeName::parse(&"a".repeat(64)).is_ok());
        assert!(NodeName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let body = BatchBody {
            interval_ms: 1000,
            dropped_batches: 0,
            records: vec![Record {
                collector: "system".into(),
                ts: 1,
                data: serde_json::Value::Null,
                samples: vec![Sample::new("ok", 1.0), Sample::new("bad name", 1.0)],
            }],
        };
        let err = body.validate().unwrap_err();
        assert_eq!(err.field, "records[0].samples[1].name");
        // The interval sets the node's deadline: bounded.
        let body = BatchBody {
            interval_ms: limits::INTERVAL_MAX_MS + 1,
            dropped_batches: 0,
            records: Vec::new(),
        };
        assert_eq!(body.validate().unwrap_err().field, "interval_ms");
    }

    #[test]
    fn node_state_follows_silence_and_interval() {
        use std::time::Duration;
        let (stale, down) = (Duration::from_secs(30), Duration::from_secs(120));
        let now = 1_000_000;
        assert_eq!(
            NodeState::of(None, 10_000, now, stale, down),
            NodeState::Down
        );
        assert_eq!(
            NodeState::of(Some(now - 5_000), 10_000, now, stale, down),
            NodeState::Up
        );
        assert_eq!(
            NodeState::of(Some(now - 40_000), 10_000, now, stale, down),
            NodeState::Stale
        );
        assert_eq!(
            NodeState::of(Some(now - 130_000), 10_000, now, stale, down),
            NodeState::Down
        );
        // A slow agent (60 s interval) is not stale after 40 s.
        assert_eq!(
            NodeState::of(Some(now - 40_000), 60_000, now, stale, down),
            NodeState::Up
        );
    }

    #[test]
    fn items_become_records() {
        use serde_json::json;
        let item = json!({"collector": "wordpress", "ts": 1700000000.5, "site": "blog",
            "metrics": {"users": 12, "cache": {"hits": 3, "ratio": 0.5}, "bad key": 1, "name": "x"}});
        let record = Record::from_item(item, 99, &["system"]).unwrap();
        assert_eq!(record.collector, "wordpress");
        assert_eq!(record.ts, 1_700_000_000_500);
        assert_eq!(record.data["site"], "blog");
        assert!(record.data.get("collector").is_none());
        let names: Vec<_> = record
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.value))
            .collect();
        assert_eq!(
            names,
            [
                ("wordpress.cache.hits", 3.0),
                ("wordpress.cache.ratio", 0.5),
                ("wordpress.users", 12.0)
            ]
        );
        // Milliseconds are told from seconds; no ts means the time it came.
        let ms =
            Record::from_item(json!({"collector": "app", "ts": 1700000000123i64}), 1, &[]).unwrap();
        assert_eq!(ms.ts, 1_700_000_000_123);
        assert_eq!(
            Record::from_item(json!({"collector": "app"}), 42, &[])
                .unwrap()
                .ts,
            42
        );
        for (bad, field) in [
            (json!([1]), "item"),
            (json!({"x": 1}), "collector"),
            (json!({"collector": 5}), "collector"),
            (json!({"collector": "a b"}), "collector"),
            (json!({"collector": "system"}), "collector"),
            (json!({"collector": "app", "ts": "today"}), "ts"),
            (json!({"collector": "app", "ts": -1}), "ts"),
        ] {
            let err = Record::from_item(bad.clone(), 1, &["system"]).unwrap_err();
            assert_eq!(err.field, field, "{bad}");
        }
    }

    #[test]
    fn vitals_take_the_fullest_disk() {
        let records = vec![Record {
            collector: "disk".into(),
            ts: 1,
            data: serde_json::Value::Null,
            samples: vec![
                Sample::new(metric::DISK_USED_PERCENT, 10.0).with_label("mount", "/"),
                Sample::new(metric::DISK_USED_PERCENT, 70.0).with_label("mount", "/var"),
            ],
        }];
        let vitals = Vitals::from_records(&records).unwrap();
        assert_eq!(vitals.disk_percent, Some(70.0));
        assert_eq!(vitals.cpu_percent, None);
    }
}
