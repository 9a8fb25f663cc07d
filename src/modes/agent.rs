//! `fleet agent`: runs the collectors on their schedule, spools each tick's records as one batch
//! (fsynced before it counts as collected), and sends the spool to the controller in order,
//! removing a batch only when it is acknowledged. Wiring only: measuring is `collectors/`,
//! spooling, framing and sending are `bus/`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::BatchSender;
use crate::bus::http::{HttpSender, SendOutcome};
use crate::bus::nats::{NatsBatchSender, NatsCommandSource};
use crate::bus::spool::Spool;
use crate::bus::wire::{BATCH_RECORDS_BYTES_MAX, pack_records};
use crate::collectors::{Inbox, Scheduled};
use crate::config::AgentConfig;

/// How long a stopping agent keeps trying to deliver what is spooled.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);
/// Longest wait between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Runs the agent until `shutdown` is cancelled, then flushes briefly and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    // Private (0700, files 0600): the journal holds command output, the spool what was collected.
    crate::files::create_dir(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    crate::files::check_tree(&config.data_dir, "the agent's data dir")?;
    let spool = Spool::open(&config.data_dir, config.spool_max_bytes)
        .with_context(|| format!("cannot open the spool in {}", config.data_dir.display()))?;
    tracing::info!(
        node = %config.node,
        instance = spool.instance(),
        spooled = spool.len(),
        controller = %config.controller,
        "agent starting"
    );
    let spool = Arc::new(Mutex::new(spool));
    let sender = if config.nats.url.is_some() && config.nats.telemetry {
        BatchSender::Nats(
            NatsBatchSender::connect(&config.nats, &config.node, &config.key, config.interval)
                .await?,
        )
    } else {
        BatchSender::Http(HttpSender::new(
            &config.controller,
            &config.node,
            &config.key,
            config.interval,
            config.ca_cert.as_deref(),
            config.request_timeout,
        )?)
    };
    let commands = if config.commands.enabled {
        let executor = Arc::new(crate::executor::Executor::open(
            &config.node,
            &config.commands,
            &config.data_dir,
        )?);
        Some(if config.nats.url.is_some() {
            let source = Arc::new(
                NatsCommandSource::connect(&config.nats, &config.node, &config.key).await?,
            );
            tokio::spawn(crate::bus::commands::run(
                source,
                executor,
                shutdown.clone(),
            ))
        } else {
            let source = Arc::new(crate::bus::http::HttpCommandSource::new(
                &config.controller,
                &config.node,
                &config.key,
                config.ca_cert.as_deref(),
                config.request_timeout,
                config.commands.poll_timeout,
            )?);
            tokio::spawn(crate::bus::commands::run(
                source,
                executor,
                shutdown.clone(),
            ))
        })
    } else {
        None
    };
    let wake = Arc::new(Notify::new());
    let stop_sending = CancellationToken::new();
    let sending = tokio::spawn(send_loop(
        sender,
        spool.clone(),
        wake.clone(),
        stop_sending.clone(),
    ));

    let result = collect_loop(&config, &spool, &wake, &shutdown).await;
    if let Err(err) = &result {
        // The collectors could not start (a log pattern, a socket in use): stop everything.
        tracing::error!(cause = %err, "agent cannot collect");
    }

    // Give the sender a moment to deliver what is spooled; whatever is left stays on disk and
    // goes out on the next start.
    let deadline = tokio::time::sleep(FLUSH_ON_EXIT);
    tokio::pin!(deadline);
    loop {
        let empty = spool.lock().expect("spool lock poisoned").is_empty();
        if empty {
            break;
        }
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    stop_sending.cancel();
    let _ = sending.await;
    if let Some(commands) = commands {
        let _ = commands.await;
    }
    let left = spool.lock().expect("spool lock poisoned").len();
    tracing::info!(spooled = left, "agent stopped");
    result
}

/// How long items an app waits on are held for others to join their batch.
const APP_BATCH_WINDOW: Duration = Duration::from_millis(50);

/// What a tick spooled.
struct TickOutcome {
    any_spooled: bool,
    /// Every batch of the tick is on disk (false when one failed).
    all_spooled: bool,
}

/// Most records, and bytes of them, waiting in the inbox between two ticks.
const INBOX_RECORDS_MAX: usize = 20_000;
const INBOX_BYTES_MAX: usize = 32 * 1024 * 1024;

async fn collect_loop(
    config: &AgentConfig,
    spool: &Arc<Mutex<Spool>>,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let built = crate::collectors::build(config);
    let inbox = Arc::new(Inbox::new(INBOX_RECORDS_MAX, INBOX_BYTES_MAX));
    inbox
        .offer(vec![built.report(crate::timefmt::now_ms())])
        .expect("an empty inbox takes one record");
    let crate::collectors::Sources {
        mut collectors,
        probes,
        ..
    } = built;
    let sources_stop = shutdown.child_token();
    let mut sources = Vec::new();
    let mut app_sockets = if config.app_socket.enabled {
        Some(crate::collectors::app_socket::start(
            &config.app_socket,
            inbox.clone(),
            sources_stop.clone(),
        )?)
    } else {
        None
    };
    for (probe, interval) in probes {
        sources.push(tokio::spawn(crate::collectors::run_probe(
            probe,
            interval,
            inbox.clone(),
            sources_stop.clone(),
        )));
    }
    let tick = collectors
        .iter()
        .map(|c| c.interval)
        .min()
        .unwrap_or(config.interval)
        .min(config.interval);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A tick runs the due collectors; an app waiting for its answer gets its items spooled
        // within a moment (what else comes in that moment goes in the same batch).
        let (stopping, due) = tokio::select! {
            _ = shutdown.cancelled() => (true, false),
            _ = ticker.tick() => (false, true),
            _ = inbox.wanted() => {
                tokio::time::sleep(APP_BATCH_WINDOW).await;
                (false, false)
            }
        };
        if stopping {
            // What apps and probes handed in since the last tick is spooled, not dropped; what
            // they offer after this last drain is refused, and they say so.
            sources_stop.cancel();
            for source in sources.drain(..) {
                let _ = source.await;
            }
            if let Some(app_sockets) = app_sockets.as_mut() {
                app_sockets.stopped_accepting().await;
            }
        }
        let (waiting, receipts) = if stopping {
            inbox.close()
        } else {
            inbox.drain()
        };
        let spool = spool.clone();
        // Collectors read files and /proc, and spooling fsyncs: off the runtime's one thread,
        // so commands and sending never wait behind a busy log.
        let (back, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = tick_once(&mut collectors, waiting, &spool, due);
            (collectors, outcome)
        })
        .await
        .context("a collector panicked")?;
        collectors = back;
        receipts.settle(outcome.all_spooled);
        if outcome.any_spooled {
            wake.notify_one();
        }
        if stopping {
            if let Some(app_sockets) = app_sockets {
                app_sockets.answered().await;
            }
            return Ok(());
        }
    }
}

/// One tick: runs the due collectors (none when `run_collectors` is false), packs their records
/// and `waiting` into batches, spools them, and tells the collectors that ran whether their
/// records are durable.
fn tick_once(
    collectors: &mut [Scheduled],
    waiting: Vec<crate::model::Record>,
    spool: &Mutex<Spool>,
    run_collectors: bool,
) -> TickOutcome {
    let now = Instant::now();
    let ts = crate::timefmt::now_ms();
    let mut ran = Vec::new();
    let mut records = Vec::new();
    if run_collectors {
        for (i, collector) in collectors.iter_mut().enumerate() {
            if let Some(produced) = collector.run_if_due(now, ts) {
                records.extend(produced);
                ran.push(i);
            }
        }
    }
    records.extend(waiting);
    // The controller refuses a batch with one bad record whole, and a refused batch is gone:
    // a record the sources should not have made is dropped here, alone, and loudly.
    let before = records.len();
    records.retain(|record| match record.validate("record").and_then(|()| {
        record.check_data_bytes("record", crate::model::limits::RECORD_DATA_BYTES_MAX)
    }) {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(collector = %record.collector, cause = %err, "a source made a record the controller would refuse; it is dropped");
            false
        }
    });
    if records.len() < before {
        tracing::error!(
            dropped = before - records.len(),
            "records dropped this tick"
        );
    }
    if records.is_empty() {
        for i in ran {
            collectors[i].collector.committed();
        }
        return TickOutcome {
            any_spooled: false,
            all_spooled: true,
        };
    }
    let mut all_spooled = true;
    for batch in pack_records(&records, BATCH_RECORDS_BYTES_MAX) {
        let appended = spool.lock().expect("spool lock poisoned").append(&batch);
        if let Err(err) = appended {
            // A full or broken disk: the batch is lost, and that must be loud.
            tracing::error!(cause = %err, "cannot spool a batch; it is lost");
            all_spooled = false;
        }
    }
    for i in ran {
        if all_spooled {
            collectors[i].collector.committed();
        } else {
            collectors[i].collector.rolled_back();
        }
    }
    TickOutcome {
        any_spooled: true,
        all_spooled,
    }
}

async fn send_loop(
    sender: BatchSender,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let next = {
            let mut spool = spool.lock().expect("spool lock poisoned");
            let instance = spool.instance().to_owned();
            let dropped = spool.dropped();
            spool
                .take_oldest()
                .map(|o| o.map(|(seq, records)| (seq, records, instance, dropped)))
        };
        let (seq, records, instance, dropped) = match next {
            Ok(Some(next)) => next,
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.notified() => continue,
                }
            }
            Err(err) => {
                tracing::error!(cause = %err, "cannot read the spool");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(BACKOFF_MAX) => continue,
                }
            }
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = sender.send(&instance, seq, dropped, &records) => outcome,
        };
        // Settle the outcome under the lock, without holding it across an await.
        let retry = {
            let mut spool = spool.lock().expect("spool lock poisoned");
            let (done, retry) = match outcome {
                SendOutcome::Acknowledged => (spool.acknowledge(seq), None),
                SendOutcome::Refused(reason) => {
                    tracing::error!(seq, %reason, "the controller refused a batch for good; it is discarded and counted as dropped");
                    (spool.discard(seq), None)
                }
                SendOutcome::Retry(reason) => {
                    spool.release();
                    (Ok(()), Some(reason))
                }
            };
            if let Err(err) = done {
                tracing::error!(seq, cause = %err, "cannot remove a delivered batch from the spool; it will be sent again (the controller ignores the replay)");
            }
            retry
        };
        match retry {
            None => backoff = BACKOFF_MIN,
            Some(reason) => {
                tracing::warn!(seq, %reason, retry_in_ms = backoff.as_millis() as u64, "batch not delivered; will retry");
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Spreads retries of many agents apart: somewhere between half and all of `base`.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}
