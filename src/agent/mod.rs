//! The agent runtime: what `fleet agent` does once its parts are built. Three loops share one
//! spool: [`collect`] measures and spools, [`send`] delivers the spool over the bus, and
//! [`commands`] feeds the executor what the bus delivers and carries its reports back.
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

/// Runs the agent until `shutdown` is cancelled, then flushes briefly and returns.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Agent {
        config,
        spool,
        batches,
        commands,
    } = agent;
    let spool = Arc::new(Mutex::new(spool));
    let commands = commands
        .map(|(bus, executor)| tokio::spawn(commands::run(bus, executor, shutdown.clone())));
    let wake = Arc::new(Notify::new());
    let stop_sending = CancellationToken::new();
    let sending = tokio::spawn(send::send_loop(
        batches,
        spool.clone(),
        wake.clone(),
        stop_sending.clone(),
    ));

    let result = collect::collect_loop(&config, &spool, &wake, &shutdown).await;
    if let Err(err) = &result {
        // The collectors could not start (a log pattern, a socket in use): stop everything.
        tracing::error!(cause = %format!("{err:#}"), "agent cannot collect");
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
