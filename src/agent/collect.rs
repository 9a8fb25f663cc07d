//! The agent's collect loop: runs the collectors on their schedule off the runtime thread,
//! takes what the probes and the app socket handed in, and spools each tick's records as
//! batches (fsynced before they count as collected).
//!
//! It never sends: the send loop takes the spool from there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::spool::Spool;
use crate::collectors::{Inbox, Scheduled};
use crate::config::AgentConfig;
use crate::wire::{BATCH_RECORDS_BYTES_MAX, pack_records};

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

pub async fn collect_loop(
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
            tracing::error!(collector = %record.collector, cause = %format!("{err:#}"), "a source made a record the controller would refuse; it is dropped");
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
            tracing::error!(cause = %format!("{err:#}"), "cannot spool a batch; it is lost");
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
