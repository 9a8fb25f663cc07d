//! The agent's send loop: delivers the spool in order over the bus, removing a batch only
//! when it is acknowledged, discarding (and counting) one refused for good, and retrying the
//! rest with backoff. A spool it can no longer read (its directory gone or unreadable) ends the
//! loop with an error, and the agent with it: retrying could never deliver anything again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bus::spool::Spool;
use crate::bus::{Bus, SendOutcome};

/// How delivery retries: up to 30 s between tries.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));

pub async fn send_loop(
    bus: Arc<Bus>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = RETRY;
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
                    _ = stop.cancelled() => return Ok(()),
                    _ = wake.notified() => continue,
                }
            }
            Err(err) if super::collect::spool_unusable(&err) => {
                return Err(anyhow::Error::new(err).context(
                    "cannot read the spool (its directory is gone or unreadable); \
                     the agent stops: fix the data dir and start it again",
                ));
            }
            Err(err) => {
                tracing::error!(cause = %format!("{err:#}"), "cannot read the spool");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY.max()) => continue,
                }
            }
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            outcome = bus.send_batch(&instance, seq, dropped, &records) => outcome,
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
                tracing::error!(seq, cause = %format!("{err:#}"), "cannot remove a delivered batch from the spool; it will be sent again (the controller ignores the replay)");
            }
            retry
        };
        match retry {
            None => backoff.succeeded(),
            Some(reason) => {
                tracing::warn!(seq, %reason, retry_in_ms = backoff.current().as_millis() as u64, "batch not delivered; will retry");
                let wait = backoff.failed();
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
