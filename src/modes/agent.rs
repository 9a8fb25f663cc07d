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
use crate::collectors::Scheduled;
use crate::config::AgentConfig;

/// How long a stopping agent keeps trying to deliver what is spooled.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);
/// Longest wait between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Runs the agent until `shutdown` is cancelled, then flushes briefly and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
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

async fn collect_loop(
    config: &AgentConfig,
    spool: &Mutex<Spool>,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut collectors: Vec<Scheduled> = config
        .enabled_collectors()
        .into_iter()
        .map(|(kind, interval)| Scheduled {
            collector: kind.build(),
            interval,
            last_run: None,
        })
        .collect();
    let tick = collectors
        .iter()
        .map(|c| c.interval)
        .min()
        .unwrap_or(config.interval);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buffer = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let ts = crate::timefmt::now_ms();
        let records: Vec<_> = collectors
            .iter_mut()
            .filter_map(|c| c.run_if_due(now, ts))
            .collect();
        if records.is_empty() {
            continue;
        }
        buffer.clear();
        serde_json::to_writer(&mut buffer, &records).expect("records serialise");
        let appended = spool.lock().expect("spool lock poisoned").append(&buffer);
        match appended {
            Ok(_) => wake.notify_one(),
            // A full or broken disk: the batch is lost, and that must be loud.
            Err(err) => tracing::error!(cause = %err, "cannot spool a batch; it is lost"),
        }
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
