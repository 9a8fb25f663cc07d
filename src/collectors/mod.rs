//! What the agent measures: one file per source.
//!
//! Three shapes of source, each ending in [`Record`]s (a JSON document kept in the hot ring and
//! shown live, and numeric [`Sample`]s kept as history):
//! - a [`Collector`] is polled on its interval in a blocking thread: the host's figures from
//!   `/proc` and `statvfs` (`system`, `disk`, `network`, `processes`) and the log tail (`logs`),
//!   which reads files;
//! - a [`Probe`] is awaited on its interval: proof-of-life checks and nginx `stub_status`
//!   (`checks`), Nagios-style plugins (`plugins`), which wait on sockets and processes;
//! - the app socket (`app_socket`) takes what local apps write to it.
//!
//! Probes and the app socket hand their records to the [`Inbox`]; the agent drains it into each
//! tick's batches with the collectors' records. Sources only measure: they must never send,
//! spool or sign anything (that is `bus/`), and every wait they do has a timeout.
//!
//! Adding a host collector touches its own file, one line in [`CollectorKind`] (config's list of
//! the built-in kinds) and one in [`build_collector`].

pub mod access_log;
pub mod app_socket;
pub mod checks;
pub mod disk;
pub mod logs;
pub mod network;
pub mod plugins;
pub mod processes;
pub mod system;

use std::time::Duration;

use crate::config::CollectorKind;
use crate::model::{Record, Sample};

/// What one run of a source produced, before it is stamped with its name and time.
#[derive(Debug, Default)]
pub struct Collected {
    pub data: serde_json::Value,
    pub samples: Vec<Sample>,
    /// Further records, each with its own collector name and time (the log lines a tail read).
    pub records: Vec<Record>,
}

impl Collected {
    /// The records of one run: the source's own (stamped `name`, `ts_ms`), then the further ones.
    pub fn into_records(self, name: &str, ts_ms: i64) -> Vec<Record> {
        let mut out = Vec::with_capacity(1 + self.records.len());
        out.push(Record {
            collector: name.to_owned(),
            ts: ts_ms,
            data: self.data,
            samples: self.samples,
        });
        out.extend(self.records);
        out
    }
}

/// A source polled on the agent's tick, in a blocking thread: it may read files, never wait on
/// the network.
pub trait Collector: Send {
    /// The name its records carry (`system`, `disk`, `tail.nginx`, …).
    fn name(&self) -> &str;

    /// Measures once. Rates (bytes/s, CPU %) are computed against the previous call, so the
    /// first call may report only totals; it must still succeed.
    fn collect(&mut self) -> anyhow::Result<Collected>;

    /// Called once the records of the last run are durably spooled: a source that keeps a
    /// position (the log tail's state file) saves it here, so a crash before the spool write
    /// rereads rather than skips.
    fn committed(&mut self) {}

    /// Called instead when the last run's records could not be spooled: a source that keeps a
    /// position goes back to the last committed one, so the records are made again.
    fn rolled_back(&mut self) {}
}

/// A source that waits (on a socket, a process), awaited on its own interval.
pub trait Probe: Send {
    /// The name its records carry (`check`, `plugin`, `nginx`).
    fn name(&self) -> &str;

    /// Measures once; must end within its own timeout.
    fn probe(&mut self) -> futures::future::BoxFuture<'_, anyhow::Result<Collected>>;
}

/// Runs `probe` every `interval` until `stop`, handing each result to `inbox`.
pub async fn run_probe(
    mut probe: Box<dyn Probe>,
    interval: Duration,
    inbox: std::sync::Arc<Inbox>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ts = crate::timefmt::now_ms();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = probe.probe() => result,
        };
        match result {
            Ok(collected) => {
                let records = collected.into_records(probe.name(), ts);
                if let Err(full) = inbox.offer(records) {
                    tracing::warn!(probe = probe.name(), cause = %full, "probe result not kept");
                }
            }
            Err(err) => {
                tracing::warn!(probe = probe.name(), cause = %format!("{err:#}"), "probe failed")
            }
        }
    }
}

/// Records from probes and the app socket waiting for the next tick's batches. Bounded in
/// records and bytes: an offer that does not fit is refused whole, so its sender can say so
/// (the app socket answers the client) instead of anything being dropped unseen. An offer made
/// with [`Inbox::offer_confirmed`] learns whether its records reached the spool, and asks for
/// them to be spooled soon rather than at the next tick.
pub struct Inbox {
    queue: std::sync::Mutex<Queue>,
    records_max: usize,
    bytes_max: usize,
    wanted: tokio::sync::Notify,
}

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
    bytes: usize,
    receipts: Vec<tokio::sync::oneshot::Sender<bool>>,
    /// The agent is stopping and has spooled what was waiting: later offers would be lost.
    closed: bool,
}

/// Why the inbox did not take an offer.
#[derive(Debug, thiserror::Error)]
pub enum InboxRefused {
    #[error(
        "the agent's inbox is full ({records} records, {bytes} bytes waiting for the next batch); retry in a few seconds"
    )]
    Full { records: usize, bytes: usize },
    #[error("the agent is stopping; send these again once it is back")]
    Closed,
}

/// The senders of drained records waiting to hear whether they were spooled. Dropped without
/// [`Receipts::settle`], they hear "not stored".
pub struct Receipts(Vec<tokio::sync::oneshot::Sender<bool>>);

impl Receipts {
    pub fn settle(self, stored: bool) {
        for receipt in self.0 {
            let _ = receipt.send(stored);
        }
    }
}

impl Inbox {
    pub fn new(records_max: usize, bytes_max: usize) -> Self {
        Self {
            queue: std::sync::Mutex::new(Queue::default()),
            records_max,
            bytes_max,
            wanted: tokio::sync::Notify::new(),
        }
    }

    /// Takes all of `records` or none. Their size is counted as their JSON.
    pub fn offer(&self, records: Vec<Record>) -> Result<(), InboxRefused> {
        self.put(records, None)
    }

    /// [`Inbox::offer`], and the answer to whether the records were spooled.
    pub fn offer_confirmed(
        &self,
        records: Vec<Record>,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, InboxRefused> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.put(records, Some(tx))?;
        self.wanted.notify_one();
        Ok(rx)
    }

    fn put(
        &self,
        records: Vec<Record>,
        receipt: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> Result<(), InboxRefused> {
        let bytes: usize = records.iter().map(record_size).sum();
        let mut queue = self.queue.lock().expect("inbox lock poisoned");
        if queue.closed {
            return Err(InboxRefused::Closed);
        }
        if queue.records.len() + records.len() > self.records_max
            || queue.bytes + bytes > self.bytes_max
        {
            return Err(InboxRefused::Full {
                records: queue.records.len(),
                bytes: queue.bytes,
            });
        }
        queue.records.extend(records);
        queue.bytes += bytes;
        queue.receipts.extend(receipt);
        Ok(())
    }

    /// Everything waiting, oldest first, with the receipts to settle once it is spooled.
    pub fn drain(&self) -> (Vec<Record>, Receipts) {
        self.take(false)
    }

    /// The last drain: everything waiting, and every later offer refused, so nothing is taken
    /// that no tick will spool.
    pub fn close(&self) -> (Vec<Record>, Receipts) {
        self.take(true)
    }

    fn take(&self, close: bool) -> (Vec<Record>, Receipts) {
        let mut queue = self.queue.lock().expect("inbox lock poisoned");
        let taken = std::mem::take(&mut *queue);
        queue.closed = taken.closed || close;
        (taken.records, Receipts(taken.receipts))
    }

    /// Returns once a confirmed offer is waiting.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }
}

/// A record's size as JSON (what it costs in a batch).
pub fn record_size(record: &Record) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, record).expect("records serialise");
    counter.0
}

/// The collector that implements a built-in kind (the kinds themselves are config's plain list,
/// `config::CollectorKind`).
pub fn build_collector(kind: CollectorKind) -> Box<dyn Collector> {
    match kind {
        CollectorKind::System => Box::new(system::SystemCollector::new()),
        CollectorKind::Disk => Box::new(disk::DiskCollector::new()),
        CollectorKind::Network => Box::new(network::NetworkCollector::new()),
        CollectorKind::Processes => Box::new(processes::ProcessesCollector::new()),
    }
}

/// A probe with its interval.
pub type ScheduledProbe = (Box<dyn Probe>, Duration);

/// Every source `config` asks for: the polled collectors with their schedules, the probes
/// with their intervals, and the sources that could not start.
pub struct Sources {
    pub collectors: Vec<Scheduled>,
    pub probes: Vec<ScheduledProbe>,
    /// `(source, why)` for each that could not start (a state file or CA file that cannot be
    /// read, an app socket that cannot be bound): logged, reported to the controller, and left
    /// out, so the others still run.
    pub broken: Vec<(String, String)>,
}

impl Sources {
    /// What the agent reports about its sources at start: a record of the `agent` collector
    /// with the broken ones (none, normally), so a source that never started is seen from the
    /// controller and not only in the node's own log.
    pub fn report(&self, ts_ms: i64) -> Record {
        let broken: Vec<_> = self
            .broken
            .iter()
            .map(|(source, error)| serde_json::json!({ "source": source, "error": error }))
            .collect();
        Record {
            collector: "agent".into(),
            ts: ts_ms,
            data: serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "sources": self.collectors.len() + self.probes.len(),
                "broken_sources": broken,
            }),
            samples: vec![Sample::new(
                "agent.sources_broken",
                self.broken.len() as f64,
            )],
        }
    }

    /// Records a source that cannot start (the app socket's are found by the agent when it binds
    /// them, after [`build`]): logged here, and listed by [`Sources::report`].
    pub fn mark_broken(&mut self, source: String, err: anyhow::Error) {
        let error = format!("{err:#}");
        tracing::error!(%source, cause = %format!("{error:#}"), "source cannot start; the others run without it (fix it and restart the agent)");
        self.broken.push((source, error));
    }
}

/// Makes every source `config` asks for. Never fails: a source that cannot start is in
/// [`Sources::broken`], not an error, so one bad log or check does not stop the rest.
pub fn build(config: &crate::config::AgentConfig) -> Sources {
    let mut sources = Sources {
        collectors: config
            .enabled_collectors()
            .into_iter()
            .map(|(kind, interval)| Scheduled::new(build_collector(kind), interval))
            .collect(),
        probes: Vec::new(),
        broken: Vec::new(),
    };
    for log in &config.logs {
        let interval = log.interval.unwrap_or(config.interval);
        match logs::LogTail::new(log, &config.data_dir, interval) {
            Ok(tail) => sources
                .collectors
                .push(Scheduled::new(Box::new(tail), interval)),
            Err(err) => sources.mark_broken(format!("logs.{}", log.name), err),
        }
    }
    for check in &config.checks {
        let interval = check.interval.unwrap_or(config.interval);
        match checks::Check::new(check) {
            Ok(probe) => sources.probes.push((Box::new(probe), interval)),
            Err(err) => sources.mark_broken(format!("check {}", check.name), err),
        }
    }
    for plugin in &config.plugins {
        let interval = plugin.interval.unwrap_or(config.interval);
        sources
            .probes
            .push((Box::new(plugins::Plugin::new(plugin)), interval));
    }
    sources
}

/// A collector with its schedule, as the agent runs it.
pub struct Scheduled {
    pub collector: Box<dyn Collector>,
    pub interval: Duration,
    /// When it last ran, if ever.
    pub last_run: Option<std::time::Instant>,
}

impl Scheduled {
    pub fn new(collector: Box<dyn Collector>, interval: Duration) -> Self {
        Self {
            collector,
            interval,
            last_run: None,
        }
    }

    /// Runs the collector if its interval has passed, returning its records stamped with `ts_ms`.
    /// A failing collector is logged and skipped: one broken source must not stop the others.
    pub fn run_if_due(&mut self, now: std::time::Instant, ts_ms: i64) -> Option<Vec<Record>> {
        if let Some(last) = self.last_run {
            // Half a tick of slack so a collector whose interval equals the agent's tick is not
            // skipped because this tick fired a few microseconds early.
            if now.duration_since(last) + Duration::from_millis(50) < self.interval {
                return None;
            }
        }
        self.last_run = Some(now);
        // A bug one odd input brings out must not take the agent (and every other source)
        // down with it: a panic is a failed run like any other.
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.collector.collect()));
        match run {
            Ok(Ok(collected)) => Some(collected.into_records(self.collector.name(), ts_ms)),
            Ok(Err(err)) => {
                tracing::warn!(collector = self.collector.name(), cause = %format!("{err:#}"), "collector failed");
                None
            }
            Err(_) => {
                tracing::error!(
                    collector = self.collector.name(),
                    "collector panicked; skipped this run"
                );
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
