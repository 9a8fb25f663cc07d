//! The `fleet` command line: parses flags (clap), merges them over `FLEET_*` variables and the
//! TOML config, and calls one function per mode in `fleet::modes`. Nothing else happens here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fleet::config::{self, AgentConfig, ControllerConfig};
use fleet::model::{NodeName, parse_label};

/// Run and watch a fleet of Linux machines.
///
/// Quick start: `fleet controller --local-agent` runs a controller on the embedded defaults
/// (SQLite in ./fleet-data, in-memory hot ring) with an agent for this host, and prints the
/// API address and the operator token.
#[derive(Parser)]
#[command(name = "fleet", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `fleet=debug`.
    #[arg(
        long,
        global = true,
        env = "FLEET_LOG",
        default_value = "fleet=info,warn"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the central controller: ingest, stores, REST API.
    Controller(ControllerArgs),
    /// Run the agent on a node: collect, spool, sign and send to the controller.
    Agent(AgentArgs),
    /// Enroll, list and remove nodes (writes the controller's store directly).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Manage operator API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Send commands or events to nodes and print their results.
    ///
    /// A command's stdout and stderr are written as the node sent them when they go to a pipe
    /// or a file. On a terminal, their control characters (escape sequences, carriage returns)
    /// are shown as `\x1b`, `\r` … instead, so a node's output cannot drive your terminal; to
    /// see the raw output there, pipe it through `cat`. Summaries, --status and errors reported
    /// by nodes are always shown that way, and --json escapes them as JSON does.
    Send(Box<fleet::modes::send::SendArgs>),
    /// Pulse a heartbeat: "SERVICE is alive; expect it again within --next-in" (or --start, --fail).
    Pulse(Box<fleet::modes::pulse::PulseArgs>),
    /// Run a command between heartbeat signals: start before it, then success or fail.
    Run(Box<fleet::modes::pulse::RunArgs>),
    /// Show the event log; --follow keeps printing new entries.
    ///
    /// Control characters in messages (escape sequences, carriage returns, line breaks) are
    /// shown as `\x1b`, `\r`, `\n` …, never passed to the terminal; --json escapes them as JSON
    /// does.
    Events(Box<fleet::modes::events::EventsArgs>),
    /// Operator signing keys.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Load generators that measure the system.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// Where the controller keeps its data: shared by every command that touches the store.
#[derive(Args, Clone)]
struct StoreArgs {
    /// Controller config file (TOML). Flags and FLEET_* variables override it.
    #[arg(long, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the embedded SQLite database [default: ./fleet-data].
    #[arg(long, env = "FLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use this database instead of SQLite in the data dir: postgres://user@host/db or sqlite://path.
    #[arg(long, env = "FLEET_DATABASE_URL")]
    database_url: Option<String>,
}

impl StoreArgs {
    fn load(&self) -> anyhow::Result<ControllerConfig> {
        let mut config: ControllerConfig = match &self.config {
            Some(path) => config::load_toml(path)?,
            None => ControllerConfig::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.database_url {
            config.database_url = Some(url.clone());
        }
        Ok(config)
    }
}

#[derive(Args)]
struct ControllerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to serve the API on [default: 127.0.0.1:7070].
    #[arg(long, env = "FLEET_LISTEN")]
    listen: Option<SocketAddr>,
    /// Keep the hot ring in Redis: redis://host:6379 [default: in memory].
    #[arg(long, env = "FLEET_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key [default: fleet:].
    #[arg(long, env = "FLEET_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, env = "FLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "FLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// An operator token to accept (for automation), besides those from `fleet token create`.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Also run an agent for this host, enrolled automatically (quick start).
    #[arg(long)]
    local_agent: bool,
    /// Carry commands over NATS JetStream (and take telemetry from it): nats://host:4222.
    #[arg(long, env = "FLEET_NATS_URL")]
    nats_url: Option<String>,
    /// First token of NATS subjects and stem of stream names [default: fleet].
    #[arg(long, env = "FLEET_NATS_PREFIX")]
    nats_prefix: Option<String>,
}

#[derive(Args)]
struct AgentArgs {
    /// Agent config file (TOML). Flags and FLEET_* variables override it.
    #[arg(long, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Controller base URL, e.g. https://fleet.example.com:7070.
    #[arg(long, env = "FLEET_CONTROLLER")]
    controller: Option<String>,
    /// This node's enrolled name.
    #[arg(long, env = "FLEET_NODE")]
    node: Option<String>,
    /// This node's key, as printed by `fleet node add`.
    #[arg(long, env = "FLEET_NODE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// How often to collect, e.g. 10s [default: 10s].
    #[arg(long, env = "FLEET_INTERVAL", value_parser = fleet::timefmt::parse_duration)]
    interval: Option<Duration>,
    /// Where the spool, sequence number and instance id live [default: ./fleet-agent-data].
    #[arg(long, env = "FLEET_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM CA certificate to verify the controller with, instead of the system roots.
    #[arg(long, env = "FLEET_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Largest size of the unsent spool in bytes; the oldest batches are dropped (and counted) past it [default: 64 MiB].
    #[arg(long, env = "FLEET_SPOOL_MAX_BYTES")]
    spool_max_bytes: Option<u64>,
    /// Take commands from NATS JetStream instead of long-polling the controller: nats://host:4222.
    #[arg(long, env = "FLEET_NATS_URL")]
    nats_url: Option<String>,
    /// First token of NATS subjects [default: fleet].
    #[arg(long, env = "FLEET_NATS_PREFIX")]
    nats_prefix: Option<String>,
    /// Send telemetry over NATS too (needs --nats-url).
    #[arg(long)]
    nats_telemetry: bool,
    /// Name of the abstract app socket apps write to (`@NAME`) [default: fleet]; `off` for none.
    #[arg(long, env = "FLEET_APP_SOCKET")]
    app_socket: Option<String>,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Enroll a node: store its key and print it with a ready agent config.
    Add {
        /// Node name: letters, digits, '.', '_', '-'; at most 64.
        name: NodeName,
        /// Source network the node may send from (CIDR); repeat for several [default: any].
        #[arg(long = "allow", value_name = "CIDR")]
        allow: Vec<ipnet::IpNet>,
        /// A label, key=value; repeat for several.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Use this key instead of a random one (at least 16 characters).
        #[arg(long, hide_env_values = true)]
        key: Option<String>,
        /// Controller URL to write into the printed agent config: the address the node reaches
        /// the controller at.
        #[arg(
            long,
            env = "FLEET_CONTROLLER",
            default_value = "http://127.0.0.1:7070"
        )]
        controller_url: String,
        /// Create the store if it does not exist (else refused: the controller's store is
        /// elsewhere, see --data-dir, --database-url, --config).
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List enrolled nodes.
    List {
        /// Create the store if it does not exist (else refused).
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an enrolled node: its next batch is refused.
    Remove {
        /// The enrolled node's name.
        name: NodeName,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an operator API token and print it (shown once).
    Create {
        /// What the token is for.
        #[arg(long, default_value = "created on the command line")]
        label: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List operator tokens: id, label, created, last used (to the minute), revoked. Never
    /// the tokens themselves.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an operator token: it stops working on running controllers within their
    /// registry refresh, and its dashboard sessions and event streams end.
    Revoke {
        /// The token's id, as `fleet token list` shows it (16 hex digits).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Create an operator key pair: FILE (secret, mode 0600) and FILE.pub. List the public key
    /// in each node's `[commands] trusted_keys`; sign with `fleet send --signing-key FILE`.
    Keygen {
        /// Where to write the secret key; missing directories are created (mode 0700).
        #[arg(long, default_value = "operator.key")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Make a dashboard login: reads the password from the first line of stdin and prints the
    /// entry to add under `[ui] users` in the controller's config (only a hash of it).
    Password {
        /// The name the person logs in with.
        name: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Simulate agents sending batches; print throughput, latency, and loss read back from the store.
    Ingest(fleet::modes::bench::ingest::IngestBenchArgs),
    /// Round trips of commands over the NATS or HTTP bus (latency, throughput, fan-out) beside
    /// the raw NATS, HTTP and fsync floors of this machine.
    Commands(fleet::modes::bench::commands::CommandsBenchArgs),
    /// Pulses per second accepted, and how late missed deadlines are noticed among many
    /// watched services.
    Heartbeats(fleet::modes::bench::heartbeats::HeartbeatsBenchArgs),
    /// Render times of the dashboard's pages from a seeded store (the overview of many nodes,
    /// a node's charts over days of history) beside /healthz.
    Dashboard(fleet::modes::bench::dashboard::DashboardBenchArgs),
    /// How fast the log tail parses an nginx access log, and what an agent following one costs.
    Logs(fleet::modes::bench::logs::LogsBenchArgs),
}

fn main() -> std::process::ExitCode {
    fleet::install_crypto();
    let cli = Cli::parse();
    // `Targets` rather than `EnvFilter`: the same `target=level,level` syntax without a regex
    // engine, which alone was a noticeable share of the agent's resident memory.
    let filter: tracing_subscriber::filter::Targets = match cli.log.parse() {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!(
                "error: --log {:?} is not a log filter ({err}); use e.g. `info` or `fleet=debug,warn`",
                cli.log
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .init();
    }
    // What the modes that keep data write is private even where no code sets a mode (SQLite's
    // own -wal and -shm files): belt and braces with the modes `fleet::files` gives each file.
    if matches!(
        cli.command,
        Command::Controller(_) | Command::Agent(_) | Command::Node { .. } | Command::Token { .. }
    ) {
        fleet::files::restrict_umask();
    }
    // The agent runs on every node and must stay small: one thread. The controller and the
    // benchmarks use every core.
    let runtime = match &cli.command {
        Command::Agent(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let result = runtime
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            // An error may quote what a controller or node said: shown, not obeyed.
            let err = format!("{err:#}");
            eprintln!(
                "error: {}",
                fleet::termsafe::visible(&err, fleet::termsafe::Shape::MultiLine)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels the token on SIGTERM or Ctrl-C.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::error!(cause = %format!("{err:#}"), "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

/// Runs one mode; returns the process exit status.
async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Send(args) => return fleet::modes::send::run(*args).await,
        Command::Pulse(mut args) => {
            // Through the API (not only NATS): the local controller and its token by default.
            if args.spec.nats.url.is_none() {
                args.spec.client.apply_defaults()?;
            }
            return fleet::modes::pulse::pulse(*args).await;
        }
        Command::Run(mut args) => {
            if args.pulse.nats.url.is_none() {
                args.pulse.client.apply_defaults()?;
            }
            return fleet::modes::pulse::run(*args).await;
        }
        Command::Events(args) => return fleet::modes::events::run(*args).await,
        Command::Operator {
            command: OperatorCommand::Keygen { out, force },
        } => {
            let public = fleet::modes::operator::keygen(&out, force)?;
            println!("{public}");
            eprintln!(
                "secret key in {} (keep it safe); public key in {}.pub: list it in each node's [commands] trusted_keys",
                out.display(),
                out.display()
            );
        }
        Command::Operator {
            command: OperatorCommand::Password { name },
        } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("password for {name} (it is shown as you type; pipe it in to hide it):");
            }
            println!(
                "{}",
                fleet::modes::operator::password_entry(&name, std::io::stdin().lock())?
            );
        }
        Command::Controller(args) => run_controller(args).await?,
        Command::Agent(args) => {
            let mut config: AgentConfig = match &args.config {
                Some(path) => config::load_toml(path)?,
                None => AgentConfig::default(),
            };
            if let Some(v) = args.controller {
                config.controller = v;
            }
            if let Some(v) = args.node {
                config.node = v;
            }
            if let Some(v) = args.key {
                config.key = v;
            }
            if let Some(v) = args.interval {
                config.interval = v;
            }
            if let Some(v) = args.data_dir {
                config.data_dir = v;
            }
            if let Some(v) = args.ca_cert {
                config.ca_cert = Some(v);
            }
            if let Some(v) = args.spool_max_bytes {
                config.spool_max_bytes = v;
            }
            if let Some(v) = args.nats_url {
                config.nats.url = Some(v);
            }
            if let Some(v) = args.nats_prefix {
                config.nats.prefix = v;
            }
            if args.nats_telemetry {
                config.nats.telemetry = true;
            }
            match args.app_socket.as_deref() {
                Some("off") => config.app_socket.name.clear(),
                Some(name) => config.app_socket.name = name.to_owned(),
                None => {}
            }
            if config.app_socket.name.is_empty() && config.app_socket.path.is_none() {
                config.app_socket.enabled = false;
            }
            fleet::modes::agent::run(config, shutdown_on_signals()).await?
        }
        Command::Node { command } => {
            let out = match command {
                NodeCommand::Add {
                    name,
                    allow,
                    labels,
                    key,
                    controller_url,
                    create,
                    store,
                } => {
                    let add = fleet::modes::node::AddNode {
                        name,
                        allow,
                        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                        key,
                        controller_url,
                    };
                    fleet::modes::node::add(&store.load()?, add, create).await?
                }
                NodeCommand::List { create, store } => {
                    fleet::modes::node::list(&store.load()?, create).await?
                }
                NodeCommand::Remove { name, store } => {
                    fleet::modes::node::remove(&store.load()?, &name).await?
                }
            };
            print!("{out}");
        }
        Command::Token {
            command: TokenCommand::Create { label, store },
        } => {
            let token = fleet::modes::token::create(&store.load()?, &label).await?;
            println!("{token}");
        }
        Command::Token {
            command: TokenCommand::List { store },
        } => print!("{}", fleet::modes::token::list(&store.load()?).await?),
        Command::Token {
            command: TokenCommand::Revoke { id, store },
        } => print!(
            "{}",
            fleet::modes::token::revoke(&store.load()?, &id).await?
        ),
        Command::Bench {
            command: BenchCommand::Ingest(args),
        } => fleet::modes::bench::ingest::ingest(args).await?,
        Command::Bench {
            command: BenchCommand::Commands(args),
        } => fleet::modes::bench::commands::commands(args).await?,
        Command::Bench {
            command: BenchCommand::Heartbeats(args),
        } => fleet::modes::bench::heartbeats::heartbeats(args).await?,
        Command::Bench {
            command: BenchCommand::Dashboard(args),
        } => fleet::modes::bench::dashboard::dashboard(args).await?,
        Command::Bench {
            command: BenchCommand::Logs(args),
        } => fleet::modes::bench::logs::logs(args).await?,
    }
    Ok(0)
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let mut config = args.store.load()?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.redis_url {
        config.redis_url = Some(v);
    }
    if let Some(v) = args.redis_prefix {
        config.redis_prefix = v;
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.api_token {
        config.api_tokens.push(v);
    }
    if let Some(v) = args.nats_url {
        config.nats.url = Some(v);
    }
    if let Some(v) = args.nats_prefix {
        config.nats.prefix = v;
    }
    let shutdown = shutdown_on_signals();
    let data_dir = config.data_dir.clone();
    let ca_cert = config.tls_cert.clone();
    let local_agent = config.local_agent.clone();
    if args.local_agent {
        fleet::modes::controller::check_local_agent(&config)?;
    }
    let running = fleet::modes::controller::start(config, shutdown.clone()).await?;
    println!("fleet controller: API at {}", running.url);
    if let Some(token) = &running.first_token {
        match &running.token_file {
            Some(file) => println!("operator token (saved to {}): {token}", file.display()),
            None => println!("operator token (shown once): {token}"),
        }
        println!(
            "try: curl -H 'Authorization: Bearer {token}' {}/api/v1/nodes",
            running.url
        );
    }
    if !args.local_agent {
        return running.wait().await;
    }
    let agent_config = match fleet::modes::controller::local_agent_config(
        &running,
        &local_agent,
        &data_dir,
        ca_cert,
    )
    .await
    {
        Ok(config) => config,
        Err(err) => {
            // Stop the controller cleanly: it has started, and the process exits with the error.
            shutdown.cancel();
            running.wait().await?;
            return Err(err.context("cannot start the local agent"));
        }
    };
    println!(
        "local agent: node {} reporting every {:?}",
        agent_config.node, agent_config.interval
    );
    let mut agent = tokio::spawn(fleet::modes::agent::run(agent_config, shutdown.clone()));
    let controller = running.wait();
    tokio::pin!(controller);
    // The local agent is part of this process: if it fails, the process stops and exits
    // non-zero (a supervisor restarts it) rather than serve on with a dead agent.
    tokio::select! {
        stopped = &mut controller => {
            shutdown.cancel();
            let agent_result = agent.await.context("the local agent panicked")?;
            stopped?;
            agent_result.context("the local agent failed")?;
        }
        ended = &mut agent => {
            shutdown.cancel();
            let stopped = controller.await;
            ended
                .context("the local agent panicked")?
                .context("the local agent failed")?;
            stopped?;
        }
    }
    Ok(())
}
