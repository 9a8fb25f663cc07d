//! The agent runtime: what `fleet agent` does once its parts are built. Three loops share one
//! spool: [`collect`] measures and spools, [`send`] delivers the spool over the bus, and
//! [`commands`] feeds the executor what the bus delivers and carries its reports back.
//!
//! A fatal error in any loop (the spool unusable, a panic) cancels all three and [`run`] returns
//! it, so the process exits non-zero: never a live agent that no longer collects, sends or
//! takes commands. A source that cannot start is not fatal (`collectors::build`).
//!
//! It never opens sockets or files itself (`modes::agent` builds the spool, the bus and the
//! executor from the config) and never decides how data travels (`bus::Bus` does).

pub mod collect;
pub mod commands;
pub mod send;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::bus::spool::Spool;
use crate::config::AgentConfig;
use crate::executor::Executor;

/// How long a stopping agent keeps trying to deliver what is spooled.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);

/// An agent's parts, built from its config.
pub struct Agent {
    pub config: AgentConfig,
    pub spool: Spool,
    /// How batches leave.
    pub batches: Arc<Bus>,
    /// Where commands come from and who runs them; `None` when commands are off.
    pub commands: Option<(Arc<Bus>, Arc<Executor>)>,
}

/// Runs the agent until `shutdown` is cancelled, then flushes briefly and returns `Ok`. A fatal
/// error in any of its loops (the spool unusable, a loop that panicked or ended on its own)
/// stops all of them and is returned, so the process exits non-zero instead of living on
/// without collecting, sending or taking commands.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Agent {
        config,
        spool,
        batches,
        commands,
    } = agent;
    // Cancelled on shutdown, or by the first fatal error of any loop.
    let stop = shutdown.child_token();
    let spool = Arc::new(Mutex::new(spool));
    let mut commands = commands.map(|(bus, executor)| {
        let stop = stop.clone();
        tokio::spawn(async move {
            commands::run(bus, executor, stop).await;
            Ok(())
        })
    });
    let wake = Arc::new(Notify::new());
    let stop_sending = CancellationToken::new();
    let mut sending = Some(tokio::spawn(send::send_loop(
        batches,
        spool.clone(),
        wake.clone(),
        stop_sending.clone(),
    )));

    let mut failure: Option<anyhow::Error> = None;
    let collecting = collect::collect_loop(&config, &spool, &wake, &stop);
    tokio::pin!(collecting);
    let collected = tokio::select! {
        collected = &mut collecting => Some(collected),
        ended = ended(&mut sending) => {
            failure = fatal("send", ended, &stop_sending);
            None
        }
        ended = ended(&mut commands) => {
            failure = fatal("commands", ended, &stop);
            None
        }
    };
    // A loop that failed stops the others (one that ended because it was stopped means `stop`
    // is already cancelled); the collect loop spools its last drain once stopped.
    stop.cancel();
    let collected = match collected {
        Some(collected) => collected,
        None => collecting.await,
    };
    if let Err(err) = collected {
        failure.get_or_insert(err);
    }
    if let Some(err) = &failure {
        tracing::error!(cause = %format!("{err:#}"), "the agent stops: one of its loops failed");
    }

    // Give the sender a moment to deliver what is spooled; whatever is left stays on disk and
    // goes out on the next start.
    let deadline = tokio::time::sleep(FLUSH_ON_EXIT);
    tokio::pin!(deadline);
    while sending.is_some() {
        let empty = spool.lock().expect("spool lock poisoned").is_empty();
        if empty {
            break;
        }
        tokio::select! {
            _ = &mut deadline => break,
            ended = ended(&mut sending) => {
                if let Some(err) = fatal("send", ended, &stop_sending) {
                    failure.get_or_insert(err);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    stop_sending.cancel();
    if let Some(sending) = sending.take()
        && let Err(err) = flatten(sending.await)
    {
        failure.get_or_insert(err.context("the send loop failed"));
    }
    if let Some(commands) = commands.take()
        && let Err(err) = flatten(commands.await)
    {
        failure.get_or_insert(err.context("the commands loop failed"));
    }
    let left = spool.lock().expect("spool lock poisoned").len();
    tracing::info!(spooled = left, "agent stopped");
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

type Loop = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Waits for a spawned loop to end (never, when there is none) and takes its handle.
async fn ended(task: &mut Option<Loop>) -> Result<anyhow::Result<()>, tokio::task::JoinError> {
    match task.as_mut() {
        Some(handle) => {
            let ended = handle.await;
            *task = None;
            ended
        }
        None => std::future::pending().await,
    }
}

fn flatten(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    ended.map_err(|err| anyhow::anyhow!("it panicked: {err}"))?
}

/// The failure a loop's end means, if any: an error or a panic, or an end before its `stop`
/// (the agent cannot go on without it). A loop that ended because it was stopped is none.
fn fatal(
    name: &str,
    ended: Result<anyhow::Result<()>, tokio::task::JoinError>,
    stop: &CancellationToken,
) -> Option<anyhow::Error> {
    let err = match flatten(ended) {
        Err(err) => err,
        Ok(()) if stop.is_cancelled() => return None,
        Ok(()) => anyhow::anyhow!("it ended on its own"),
    };
    Some(err.context(format!("the {name} loop failed")))
}
