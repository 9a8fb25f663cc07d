//! The agent's command loop: feeds what the command bus delivers to the executor and carries
//! its reports back.
//!
//! Order: commands to this node run one at a time in the order delivered, unless a command
//! asks to run in parallel (a `Cancel` always does). A report is retried until the far end has
//! stored it, and only then is the delivery settled (on NATS: acknowledged, so the stream stops
//! redelivering). It knows nothing of how commands travel (`bus::commands::CommandSource`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bus::commands::CommandSource;
use crate::command::{Command, CommandReport, CommandState, Method};
use crate::executor::Executor;

/// A command that is still running after this long is reported `running` (a quick one just
/// reports its outcome: one message instead of two).
const RUNNING_REPORT_AFTER: Duration = Duration::from_millis(500);
/// How fetches and reports retry.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
/// Most reports sent in one message, and about the most bytes (well under the controller's
/// body limit, whatever the output sizes).
const REPORTS_PER_MESSAGE: usize = 256;
const REPORT_BYTES_PER_MESSAGE: usize = 4 * 1024 * 1024;

fn approx_size(report: &CommandReport) -> usize {
    256 + report.result.as_ref().map_or(0, |r| {
        r.stdout.len() + r.stderr.len() + r.error.as_ref().map_or(0, String::len)
    }) * 2
}

struct Outgoing<R> {
    report: CommandReport,
    receipt: Option<R>,
}

/// Runs the agent's command loop until `shutdown`.
pub async fn run<S: CommandSource>(
    source: Arc<S>,
    executor: Arc<Executor>,
    shutdown: CancellationToken,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing<S::Receipt>>();
    // Results from before a restart (or whose acknowledgement was lost) go first.
    for report in executor.unacknowledged() {
        let _ = out_tx.send(Outgoing {
            report,
            receipt: None,
        });
    }
    let reporter = tokio::spawn(report_loop(
        source.clone(),
        executor.clone(),
        out_rx,
        shutdown.clone(),
    ));
    let (seq_tx, mut seq_rx) = mpsc::unbounded_channel::<(Command, S::Receipt)>();
    let sequential = {
        let executor = executor.clone();
        let out_tx = out_tx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = seq_rx.recv() => next,
                };
                let Some((command, receipt)) = next else {
                    return;
                };
                handle(&executor, command, receipt, &out_tx).await;
            }
        })
    };

    let mut backoff = RETRY;
    loop {
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => break,
            fetched = source.fetch() => fetched,
        };
        match fetched {
            Ok(deliveries) => {
                backoff.succeeded();
                for (command, receipt) in deliveries {
                    if !executor.accept(&command.id) {
                        // Already queued or running here: its report follows from that copy.
                        continue;
                    }
                    // A Cancel never waits its turn: it is there to stop what holds the turn.
                    if command.parallel || command.method == Method::Cancel {
                        let executor = executor.clone();
                        let out_tx = out_tx.clone();
                        tokio::spawn(async move {
                            handle(&executor, command, receipt, &out_tx).await;
                        });
                    } else {
                        let _ = seq_tx.send((command, receipt));
                    }
                }
            }
            Err(err) => {
                tracing::warn!(cause = %format!("{err:#}"), retry_in_ms = backoff.current().as_millis() as u64, "cannot fetch commands");
                let wait = backoff.failed();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    sequential.abort();
    let _ = reporter.await;
}

async fn handle<R: Send + 'static>(
    executor: &Executor,
    command: Command,
    receipt: R,
    out: &mpsc::UnboundedSender<Outgoing<R>>,
) {
    let id = command.id.clone();
    let finished = Arc::new(AtomicBool::new(false));
    let on_start = {
        let finished = finished.clone();
        let out = out.clone();
        let id = id.clone();
        move || {
            tokio::spawn(async move {
                tokio::time::sleep(RUNNING_REPORT_AFTER).await;
                if !finished.load(Ordering::SeqCst) {
                    let _ = out.send(Outgoing {
                        report: CommandReport {
                            id,
                            state: CommandState::Running,
                            result: None,
                        },
                        receipt: None,
                    });
                }
            });
        }
    };
    let handled = executor.handle(command, on_start).await;
    finished.store(true, Ordering::SeqCst);
    if let Some(report) = handled.stopped {
        let _ = out.send(Outgoing {
            report,
            receipt: None,
        });
    }
    let _ = out.send(Outgoing {
        report: handled.report,
        receipt: Some(receipt),
    });
}

async fn report_loop<S: CommandSource>(
    source: Arc<S>,
    executor: Arc<Executor>,
    mut rx: mpsc::UnboundedReceiver<Outgoing<S::Receipt>>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Outgoing<S::Receipt>> = Vec::new();
    let mut backoff = RETRY;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = rx.recv() => first,
            };
            match first {
                Some(o) => batch.push(o),
                None => return,
            }
        }
        let mut bytes: usize = batch.iter().map(|o| approx_size(&o.report)).sum();
        while batch.len() < REPORTS_PER_MESSAGE && bytes < REPORT_BYTES_PER_MESSAGE {
            match rx.try_recv() {
                Ok(o) => {
                    bytes += approx_size(&o.report);
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        let reports: Vec<CommandReport> = batch.iter().map(|o| o.report.clone()).collect();
        match source.report(&reports).await {
            Ok(()) => {
                backoff.succeeded();
                for o in batch.drain(..) {
                    if o.report.state.is_terminal() {
                        executor.acknowledged(&o.report.id);
                    }
                    if let Some(receipt) = o.receipt {
                        source.settle(receipt).await;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(cause = %format!("{err:#}"), reports = reports.len(), "cannot deliver command reports; retrying");
                let wait = backoff.failed();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
