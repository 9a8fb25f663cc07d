//! The agent's collect loop: runs the collectors on their schedule off the runtime thread,
//! takes what the probes and the app socket handed in, and spools each tick's records as
//! batches (fsynced before they count as collected).
//!
//! It never sends: the send loop takes the spool from there. A source that cannot start is
//! reported in the first record and left out; the loop itself fails only when the spool is
//! unusable, and then the agent stops (`agent::run`).

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
    /// A spool failure that no retry mends (see [`spool_unusable`]).
    unusable: Option<std::io::Error>,
}

/// Whether a spool write failed in a way that will not mend by itself: the directory is gone,
/// not a directory, not writable, or read-only. A full disk is not: it may free up, and the
/// spool drops its oldest batches for room meanwhile.
pub(crate) fn spool_unusable(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::NotFound
            | ErrorKind::PermissionDenied
            | ErrorKind::NotADirectory
            | ErrorKind::ReadOnlyFilesystem
    )
}

/// Most records, and bytes of them, waiting in the inbox between two ticks.
const INBOX_RECORDS_MAX: usize = 20_000;
const INBOX_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Runs until `shutdown` (then `Ok`, after the last drain is spooled), or until the spool is
/// unusable (`Err`: the agent stops, rather than collect what it can never keep).
pub async fn collect_loop(
    config: &AgentConfig,
    spool: &Arc<Mutex<Spool>>,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut built = crate::collectors::build(config);
    let inbox = Arc::new(Inbox::new(INBOX_RECORDS_MAX, INBOX_BYTES_MAX));
    let sources_stop = shutdown.child_token();
    let mut sources = Vec::new();
    // The app sockets are bound before the first record is made, so one that cannot be bound
    // (a second agent on the host) is in it with the other broken sources.
    let mut app_sockets = if config.app_socket.enabled {
        let mut started = crate::collectors::app_socket::start(
            &config.app_socket,
            inbox.clone(),
            sources_stop.clone(),
        );
        for (source, err) in started.take_broken() {
            built.mark_broken(source, err);
        }
        Some(started)
    } else {
        None
    };
    inbox
        .offer(vec![built.report(crate::timefmt::now_ms())])
        .expect("an empty inbox takes one record");
    let crate::collectors::Sources {
        mut collectors,
        probes,
        ..
    } = built;
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
        if let Some(err) = outcome.unusable {
            // Nothing collected from now on could be kept: stop the sources and refuse what
            // apps offer (they hear so), and let the agent stop with the error.
            sources_stop.cancel();
            let (_, receipts) = inbox.close();
            receipts.settle(false);
            if let Some(mut app_sockets) = app_sockets {
                app_sockets.stopped_accepting().await;
                app_sockets.answered().await;
            }
            return Err(anyhow::Error::new(err).context(format!(
                "the spool {} is unusable (gone, or cannot be written); the agent stops rather \
                 than collect what it cannot keep: fix the data dir and start it again",
                config.data_dir.join("spool").display()
            )));
        }
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
            unusable: None,
        };
    }
    let mut all_spooled = true;
    let mut unusable = None;
    for batch in pack_records(&records, BATCH_RECORDS_BYTES_MAX) {
        let appended = spool.lock().expect("spool lock poisoned").append(&batch);
        if let Err(err) = appended {
            // A full or broken disk: the batch is lost, and that must be loud.
            tracing::error!(cause = %format!("{err:#}"), "cannot spool a batch; it is lost");
            all_spooled = false;
            if spool_unusable(&err) {
                unusable = Some(err);
                break;
            }
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
        unusable,
    }
}
