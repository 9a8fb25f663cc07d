//! What the agent measures: one file per collector, all behind [`Collector`].
//!
//! A collector turns the host's state into one [`Record`] per run: a JSON document (kept in the
//! hot ring, shown live) and numeric [`Sample`]s (kept as history). Collectors only measure: they
//! must never send, spool or sign anything (that is `bus/`), and never block for long (they read
//! `/proc` and `statvfs`, nothing over the network).
//!
//! Adding a collector touches its own file and one line in [`CollectorKind`].

pub mod disk;
pub mod network;
pub mod processes;
pub mod system;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Record, Sample};

/// What one run of a collector produced, before it is stamped with its collector name and time.
#[derive(Debug, Default)]
pub struct Collected {
    pub data: serde_json::Value,
    pub samples: Vec<Sample>,
}

/// A source of measurements on the local host.
pub trait Collector: Send {
    /// The name records carry (`system`, `disk`, …).
    fn name(&self) -> &'static str;

    /// Measures once. Rates (bytes/s, CPU %) are computed against the previous call, so the
    /// first call may report only totals; it must still succeed.
    fn collect(&mut self) -> anyhow::Result<Collected>;
}

/// The built-in collectors. `autoload` ones run unless the config disables them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorKind {
    System,
    Disk,
    Network,
    Processes,
}

impl CollectorKind {
    pub const ALL: [CollectorKind; 4] = [
        CollectorKind::System,
        CollectorKind::Disk,
        CollectorKind::Network,
        CollectorKind::Processes,
    ];

    /// Whether this collector runs when the config does not mention it.
    pub fn autoload(self) -> bool {
        true
    }

    pub fn build(self) -> Box<dyn Collector> {
        match self {
            CollectorKind::System => Box::new(system::SystemCollector::new()),
            CollectorKind::Disk => Box::new(disk::DiskCollector::new()),
            CollectorKind::Network => Box::new(network::NetworkCollector::new()),
            CollectorKind::Processes => Box::new(processes::ProcessesCollector::new()),
        }
    }
}

/// A collector with its schedule, as the agent runs it.
pub struct Scheduled {
    pub collector: Box<dyn Collector>,
    pub interval: Duration,
    /// When it last ran, if ever.
    pub last_run: Option<std::time::Instant>,
}

impl Scheduled {
    /// Runs the collector if its interval has passed, returning its record stamped with `ts_ms`.
    /// A failing collector is logged and skipped: one broken source must not stop the others.
    pub fn run_if_due(&mut self, now: std::time::Instant, ts_ms: i64) -> Option<Record> {
        if let Some(last) = self.last_run {
            // Half a tick of slack so a collector whose interval equals the agent's tick is not
            // skipped because this tick fired a few microseconds early.
            if now.duration_since(last) + Duration::from_millis(50) < self.interval {
                return None;
            }
        }
        self.last_run = Some(now);
        let name = self.collector.name();
        match self.collector.collect() {
            Ok(collected) => Some(Record {
                collector: name.to_owned(),
                ts: ts_ms,
                data: collected.data,
                samples: collected.samples,
            }),
            Err(err) => {
                tracing::warn!(collector = name, cause = %err, "collector failed");
                None
            }
        }
    }
}

/// Reads a small file under `/proc` or `/sys` into a string.
pub(crate) fn read_proc(path: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Per-second rate between two readings of a counter; a counter that went backwards (reset,
/// device replaced) yields no rate rather than a huge one.
pub(crate) fn rate(previous: u64, current: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if current < previous || secs <= 0.0 {
        return None;
    }
    Some((current - previous) as f64 / secs)
}

/// Reads a whole file into `buf`, reusing its allocation: collectors read the same files every
/// tick, and a fresh `String` per read is the allocation churn the agent's memory budget rules
/// out. Bytes rather than a `String` because mount points and process names need not be UTF-8.
pub(crate) fn read_into(path: &str, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// [`read_into`], then the bytes as text: borrowed when they are valid UTF-8 (always, for the
/// kernel's own figures), with replacement characters otherwise so one odd name cannot fail a
/// whole collector.
pub(crate) fn read_proc_text<'a>(
    path: &str,
    buf: &'a mut Vec<u8>,
) -> anyhow::Result<std::borrow::Cow<'a, str>> {
    use anyhow::Context;
    read_into(path, buf).with_context(|| format!("reading {path}"))?;
    Ok(String::from_utf8_lossy(buf))
}

/// Rounds to two decimals: the sources count in clock ticks or whole bytes over about a second,
/// so further digits are noise that only lengthens every batch.
pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
