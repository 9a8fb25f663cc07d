//! `fleet agent`: builds the agent's parts from its config (the data dir, the spool, the bus for
//! batches and for commands, the executor) and hands them to the agent runtime (`agent`).
//! Wiring only: measuring is `collectors/`, the loops are `agent/`, moving data is `bus/`.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::bus::Bus;
use crate::bus::spool::Spool;
use crate::config::AgentConfig;

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
    let http = || -> anyhow::Result<Arc<Bus>> {
        Ok(Arc::new(Bus::http(
            &config.controller,
            &config.node,
            &config.key,
            config.ca_cert.as_deref(),
            config.request_timeout,
            config.interval,
            config.commands.poll_timeout,
        )?))
    };
    let nats = match config.nats.url {
        Some(_) if config.nats.telemetry || config.commands.enabled => Some(Arc::new(
            Bus::nats(&config.nats, &config.node, &config.key, config.interval).await?,
        )),
        _ => None,
    };
    let batches = match &nats {
        Some(nats) if config.nats.telemetry => nats.clone(),
        _ => http()?,
    };
    let commands = if config.commands.enabled {
        let executor = Arc::new(crate::executor::Executor::open(
            &config.node,
            &config.commands,
            &config.data_dir,
        )?);
        let bus = match &nats {
            Some(nats) => nats.clone(),
            None => batches.clone(),
        };
        // Commands over NATS come from the node's durable consumer: made (and the streams
        // ensured) now, so a broken JetStream stops the agent at start as it always did.
        bus.prepare_commands().await?;
        Some((bus, executor))
    } else {
        None
    };
    crate::agent::run(
        Agent {
            config,
            spool,
            batches,
            commands,
        },
        shutdown,
    )
    .await
}
