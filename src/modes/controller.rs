//! `fleet controller`: wires the stores, the registry, the ingest pipeline, the background tasks
//! (registry refresh, retention) and the HTTP server together. Wiring only: the behaviour lives
//! in `pipeline/`, `store/` and `web/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ControllerConfig, LocalAgentConfig};
use crate::model::{Node, NodeName, NodeSource};
use crate::pipeline::registry::{new_token, token_hash};
use crate::pipeline::{Ingest, Registry};
use crate::store::{Durable, HotStore};
use crate::web::{self, AppState};

/// A controller that has bound its address and is serving.
pub struct Running {
    pub addr: SocketAddr,
    /// Base URL of the API, e.g. `http://127.0.0.1:7070`.
    pub url: String,
    /// The operator token made on the very first start, if this was it.
    pub first_token: Option<String>,
    /// Where the first token was saved.
    pub token_file: Option<PathBuf>,
    pub durable: Durable,
    /// The hot ring it serves the newest records from.
    pub hot: Arc<HotStore>,
    /// The enrolled nodes and tokens it serves by: re-read after enrolling the local agent, so
    /// the agent's first requests are admitted.
    registry: Arc<Registry>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the controller has shut down (after `shutdown` was cancelled) and drained.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the controller task panicked")?
    }
}

/// Opens the durable store named by the config. For SQLite in the data dir, the dir is made
/// private (0700) if it is new and refused if it, or anything in it, is open to other users.
pub async fn open_store(config: &ControllerConfig) -> anyhow::Result<Durable> {
    if config.database_url.is_none() {
        crate::files::create_dir(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        crate::files::check_tree(&config.data_dir, "the data dir")?;
    }
    Ok(Durable::connect(&config.effective_database_url()).await?)
}

/// Starts the controller and returns once it is listening.
pub async fn start(
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    config.ui.validate()?;
    if let Some(massaffect) = &config.compat.massaffect {
        massaffect.validate()?;
    }
    // Listeners first: a busy port or a bad certificate fails the start before anything is
    // opened, made or spawned.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key).await?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "SERVING PLAIN HTTP ON A NON-LOOPBACK ADDRESS: operator tokens and node data cross the network unencrypted; pass --tls-cert and --tls-key"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    let watchtower = match &config.compat.watchtower {
        Some(wt) => Some(watchtower_listener(wt).await?),
        None => None,
    };

    let durable = open_store(&config).await?;
    let hot = Arc::new(match &config.redis_url {
        Some(url) => {
            let hot = HotStore::redis(
                url,
                &config.redis_prefix,
                config.hot.ring_size,
                config.hot.max_node_bytes,
            )?;
            if let Err(err) = hot.ping().await {
                tracing::warn!(cause = %format!("{err:#}"), "Redis does not answer yet; the hot ring is skipped until it does");
            }
            hot
        }
        None => HotStore::memory(config.hot.ring_size, config.hot.max_node_bytes),
    });

    let compat_nodes = config
        .compat
        .massaffect
        .as_ref()
        .map(crate::pipeline::registry::massaffect_nodes)
        .unwrap_or_default();
    let registry = Arc::new(
        Registry::new(config.nodes.clone(), &config.api_tokens).with_compat_nodes(compat_nodes),
    );
    registry.refresh(&durable).await?;
    let (first_token, token_file) = if registry.snapshot().has_tokens() {
        (None, None)
    } else {
        let token = new_token();
        durable
            .add_token(&token_hash(&token), "first start", crate::timefmt::now_ms())
            .await?;
        registry.refresh(&durable).await?;
        let file = save_token(&config, &token);
        (Some(token), file)
    };

    let (heartbeats, heartbeat_tasks) = crate::pipeline::Heartbeats::start(
        durable.clone(),
        config.status.down_after,
        shutdown.clone(),
    );
    let node_auth = Arc::new(crate::pipeline::NodeAuth::new(
        registry.clone(),
        durable.clone(),
        config.ingest.clock_skew,
    ));
    let (ingest, writer) = Ingest::start(
        config.ingest.clone(),
        &config.retention,
        node_auth.clone(),
        durable.clone(),
        hot.clone(),
        heartbeats.clone(),
    );
    let nats = match &config.nats.url {
        Some(_) => Some(crate::bus::nats::ControllerNats::connect(&config.nats).await?),
        None => None,
    };
    let commands = Arc::new(crate::pipeline::CommandQueue::new(
        durable.clone(),
        registry.clone(),
        config.commands.clone(),
        nats.as_ref()
            .map(|n| n.dispatch() as Arc<dyn crate::pipeline::commands::Dispatch>),
        shutdown.clone(),
    ));
    let ingest = Arc::new(ingest);
    let dashboard_key = match &config.ui.signing_key {
        Some(path) => Some(Arc::new(
            crate::modes::operator::load_signing_key(Some(path))
                .context("[ui] signing_key: the dashboard's command key")?,
        )),
        None => None,
    };
    let state = Arc::new(AppState {
        ingest: ingest.clone(),
        ingest_limits: config.ingest.clone(),
        registry: registry.clone(),
        durable: durable.clone(),
        hot: hot.clone(),
        status: config.status.clone(),
        commands: commands.clone(),
        node_auth: node_auth.clone(),
        heartbeats: heartbeats.clone(),
        events: crate::pipeline::Events::new(durable.clone()),
        shutdown: shutdown.clone(),
        streams: Arc::default(),
        intake: web::intake::Intake::new(registry.clone(), &web::unverified_routes(&config)),
        ingest_work: Arc::new(tokio::sync::Semaphore::new(web::INGEST_CONCURRENCY)),
        ui: config.ui.clone(),
        tls: tls.is_some(),
        dashboard_key,
        massaffect: config.compat.massaffect.clone(),
    });

    // Tasks that feed the ingest pipeline: they must end before its writer can.
    let feeders = tokio_util::task::TaskTracker::new();
    if let Some(nats) = nats {
        let pipeline = crate::bus::nats::controller::Pipeline {
            queue: commands.clone(),
            ingest: ingest.clone(),
            auth: node_auth.clone(),
            heartbeats: heartbeats.clone(),
            events: crate::pipeline::Events::new(durable.clone()),
        };
        let stop = shutdown.clone();
        feeders.spawn(async move {
            if let Err(err) = nats.run(pipeline, stop).await {
                tracing::error!(cause = %format!("{err:#}"), "the NATS bus stopped");
            }
        });
    }
    feeders.close();
    let background = tokio_util::task::TaskTracker::new();
    background.spawn(refresh_registry(
        registry.clone(),
        durable.clone(),
        config.registry_refresh,
        shutdown.clone(),
    ));
    background.spawn(sweep_retention(
        durable.clone(),
        config.retention.clone(),
        shutdown.clone(),
    ));
    background.spawn(commands.sweep_loop(shutdown.clone()));
    background.spawn(node_auth.clone().forget_loop(shutdown.clone()));
    background.close();

    let app = web::router(state.clone());
    // The watchTower router shares the API's state: one set of heartbeats, one event log.
    let watchtower = watchtower.map(|(listener, tls, password)| {
        (
            listener,
            tls,
            web::with_security_headers(web::watchtower::router(state.clone(), &password)),
        )
    });
    let task = tokio::spawn(async move {
        let compat = async {
            match watchtower {
                Some((listener, tls, app)) => {
                    serve(listener, tls, app, shutdown.clone(), "watchTower").await
                }
                None => Ok(()),
            }
        };
        tokio::try_join!(serve(listener, tls, app, shutdown.clone(), "API"), compat)?;
        // The server has stopped taking requests: let the writer finish what was queued.
        feeders.wait().await;
        drop(state);
        drop(ingest);
        writer.await.context("the ingest writer panicked")?;
        heartbeat_tasks
            .await
            .context("the heartbeat monitor panicked")?;
        background.wait().await;
        Ok(())
    });

    Ok(Running {
        addr,
        url,
        first_token,
        token_file,
        durable,
        hot,
        registry,
        task,
    })
}

/// Loads a PEM certificate chain and key for HTTPS.
async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot load the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
}

/// Binds the watchTower compatibility listener (`[compat.watchtower]`) and loads its
/// certificate; returns them with the password its router checks.
async fn watchtower_listener(
    config: &crate::config::WatchtowerConfig,
) -> anyhow::Result<(
    std::net::TcpListener,
    Option<axum_server::tls_rustls::RustlsConfig>,
    String,
)> {
    config.validate()?;
    let listener = std::net::TcpListener::bind(config.listen).with_context(|| {
        format!(
            "cannot listen on {} for the watchTower listener; set compat.watchtower.listen to a free address",
            config.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key).await.context(
            "the watchTower listener cannot start; check compat.watchtower.tls_cert and tls_key",
        )?),
        _ => None,
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "WATCHTOWER LISTENER SERVES PLAIN HTTP ON A NON-LOOPBACK ADDRESS: its password and every heartbeat cross the network unencrypted; set compat.watchtower.tls_cert and tls_key"
        );
    }
    tracing::info!(
        listen = %addr,
        tls = tls.is_some(),
        "the watchTower compatibility listener is listening"
    );
    Ok((listener, tls, config.password.clone()))
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `shutdown`, then lets requests in flight
/// finish (HTTPS: for up to 10 s).
async fn serve(
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
    what: &str,
) -> anyhow::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    // Both kinds stop taking connections at shutdown and give open requests (long polls, event
    // streams) 10 s to finish: a client that holds a connection must not hold the controller.
    let grace = Duration::from_secs(10);
    let handle = axum_server::Handle::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        on_shutdown.graceful_shutdown(Some(grace));
    });
    // A connection must send its first byte within 10 s, and one address may hold 512
    // (`web::admission`); a client then gets HEADER_READ_TIMEOUT to send a request's headers
    // (bodies keep their own pace, `web::intake`); the TLS acceptor gives a handshake 10 s.
    let bounded = |builder: &mut hyper_util::server::conn::auto::Builder<_>| {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(hyper_util::rt::TokioTimer::new());
    };
    match tls {
        Some(tls) => {
            let mut server = axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .map(|tls| tls.acceptor(web::admission::Admission::default()));
            bounded(server.http_builder());
            server
                .serve(app)
                .await
                .with_context(|| format!("the {what} HTTPS server failed"))
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .handle(handle)
                .acceptor(web::admission::Admission::default());
            bounded(server.http_builder());
            server
                .serve(app)
                .await
                .with_context(|| format!("the {what} HTTP server failed"))
        }
    }
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Saves the first operator token beside the database, readable by its owner only, so a
/// newcomer who missed the banner can find it.
fn save_token(config: &ControllerConfig, token: &str) -> Option<PathBuf> {
    if config.database_url.is_some() {
        return None;
    }
    let path = config.data_dir.join("operator-token");
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = crate::files::create(&path)?;
        writeln!(file, "{token}")
    })();
    match written {
        Ok(()) => Some(path),
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), path = %path.display(), "cannot save the operator token");
            None
        }
    }
}

async fn refresh_registry(
    registry: Arc<Registry>,
    durable: Durable,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(err) = registry.refresh(&durable).await {
                    tracing::warn!(cause = %format!("{err:#}"), "cannot re-read enrolled nodes; keeping the last known list");
                }
            }
        }
    }
}

async fn sweep_retention(
    durable: Durable,
    retention: crate::config::RetentionConfig,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(retention.sweep_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                let now = crate::timefmt::now_ms();
                let samples_before = now - retention.samples.as_millis() as i64;
                let records_before = now - retention.records.as_millis() as i64;
                match durable.purge(samples_before, records_before).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(samples = deleted, "retention sweep deleted old samples"),
                    Err(err) => tracing::warn!(cause = %format!("{err:#}"), "retention sweep failed; retrying next time"),
                }
                let events_before = now - retention.events.as_millis() as i64;
                match durable.purge_events(events_before).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(events = deleted, "retention sweep deleted old events"),
                    Err(err) => tracing::warn!(cause = %format!("{err:#}"), "event retention failed; retrying next time"),
                }
            }
        }
    }
}

/// This host's name as a valid node name (`[a-zA-Z0-9._-]{1,64}`).
pub fn local_node_name() -> NodeName {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(crate::model::limits::NAME_MAX)
        .collect();
    NodeName::parse(&cleaned)
        .unwrap_or_else(|_| NodeName::parse("localhost").expect("a valid literal name"))
}

/// Checks `[local_agent]` as the local agent will be configured, before the controller starts
/// (and before anything is enrolled or created): bad input changes nothing.
pub fn check_local_agent(config: &ControllerConfig) -> anyhow::Result<()> {
    config
        .local_agent
        .agent_config(
            format!("http://{}", config.listen),
            local_node_name().to_string(),
            crate::pipeline::registry::new_node_key(),
            &config.data_dir,
            config.tls_cert.clone(),
        )
        .validate()
        .context("[local_agent] in the controller config")
}

/// The config of the quick-start agent for this host: `[local_agent]` (`section`) with the
/// controller's own URL, this host's name and its key. Enrolls the host (once; later starts
/// reuse its key) only once the config is valid, and returns only once the enrollment is in
/// the registry the controller admits requests by, so the agent's first requests are never
/// refused as from a node that "is not enrolled".
pub async fn local_agent_config(
    running: &Running,
    section: &LocalAgentConfig,
    data_dir: &std::path::Path,
    ca_cert: Option<PathBuf>,
) -> anyhow::Result<AgentConfig> {
    let name = local_node_name();
    let existing = running
        .durable
        .enrolled_nodes()
        .await?
        .into_iter()
        .find(|n| n.name == name);
    let enrolled = existing.is_some();
    let key = match existing {
        Some(node) => node.key,
        None => crate::pipeline::registry::new_node_key(),
    };
    // Connect over loopback whatever address the API listens on.
    let host = if running.addr.ip().is_unspecified() || running.addr.ip().is_loopback() {
        format!("127.0.0.1:{}", running.addr.port())
    } else {
        running.addr.to_string()
    };
    let scheme = if running.url.starts_with("https") {
        "https"
    } else {
        "http"
    };
    let config = section.agent_config(
        format!("{scheme}://{host}"),
        name.to_string(),
        key.clone(),
        data_dir,
        ca_cert,
    );
    config
        .validate()
        .context("[local_agent] in the controller config")?;
    if !enrolled {
        let node = Node {
            name: name.clone(),
            key: key.clone(),
            allow: vec![
                "127.0.0.0/8".parse().expect("a valid literal CIDR"),
                "::1/128".parse().expect("a valid literal CIDR"),
            ],
            labels: [("role".to_owned(), "controller".to_owned())].into(),
            source: NodeSource::Enrolled,
        };
        running
            .durable
            .add_node(&node, crate::timefmt::now_ms())
            .await?;
    }
    // The registry was read before the node was enrolled; the periodic refresh would see it
    // within `registry_refresh`, but the agent starts now.
    running.registry.refresh(&running.durable).await?;
    anyhow::ensure!(
        running
            .registry
            .snapshot()
            .node(name.as_str())
            .is_some_and(|node| node.key == key),
        "node {name} is enrolled for the local agent, but the controller admits it with another \
         key: it is listed under [[nodes]] in the controller config; remove it there"
    );
    Ok(config)
}
