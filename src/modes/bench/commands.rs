//! `fleet bench commands`: round trips of signed commands (send → the node runs `Echo` → the
//! result is back at the sender) over the NATS or the HTTP bus, against floors measured in the
//! same run: a plain NATS request/reply of the same size, an HTTP round trip to the controller,
//! and one fsync on this disk.
//!
//! Everything real: a controller started in this process (SQLite in a temporary dir, or
//! `--database-url`), simulated nodes that are the agent's own executor (journal fsynced) and
//! bus code, and the sender `fleet send` uses. Wiring and measuring only.

use crate::bus::Bus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::command::{Kind, Method, OperatorKey};
use crate::config::{AgentCommandsConfig, ControllerConfig, NatsConfig};
use crate::executor::Executor;
use crate::model::{Node, NodeName, NodeSource};
use crate::pipeline::commands::Submission;
use crate::store::commands::CommandRecord;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Nats,
    Http,
}

/// Flags of `fleet bench commands`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommandsBenchArgs {
    /// Simulated nodes for the latency and throughput runs.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Commands in the latency run (one at a time) and in the throughput run (all at once).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Which bus carries the commands.
    #[arg(long, value_enum, default_value = "nats")]
    pub bus: BusKind,
    /// Simulated nodes that get one command at once, all enrolled and connected first (0: skip).
    #[arg(long, default_value_t = 1000)]
    pub fanout: usize,
    /// NATS server (for the NATS bus and the raw request/reply floor).
    #[arg(long, env = "FLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Where the simulated nodes keep their command journals [default: the temporary dir]. On a
    /// tmpfs (/dev/shm) it shows the bus without a thousand nodes' fsyncs sharing one disk.
    #[arg(long)]
    pub nodes_dir: Option<std::path::PathBuf>,
    /// The controller's database [default: SQLite in a temporary dir].
    #[arg(long, env = "FLEET_DATABASE_URL")]
    pub database_url: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

pub(super) fn summary(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort_unstable();
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    )
}

/// Whoever sends: the NATS sender of `fleet send --nats-url`, or the controller's API.
enum Sender {
    Nats(crate::bus::nats::Sender),
    Http(crate::client::Api),
}

impl Sender {
    async fn send_wait(&self, submissions: &[Submission]) -> anyhow::Result<Vec<CommandRecord>> {
        let wait = Duration::from_secs(60);
        match self {
            Sender::Nats(s) => s.send_and_wait(submissions, Some(wait)).await,
            Sender::Http(api) => {
                api.post(
                    "api/v1/commands",
                    &serde_json::json!({ "commands": submissions }),
                )
                .await?;
                let ids: Vec<String> = submissions.iter().map(|s| s.command.id.clone()).collect();
                api.wait(&ids, wait).await
            }
        }
    }
}

fn echo(key: &OperatorKey, node: &str, text: &str) -> Submission {
    Submission {
        command: crate::command::build(
            key,
            node,
            Kind::CommandAck,
            Method::Echo,
            vec![text.to_owned()],
            Duration::from_secs(30),
            Duration::from_secs(3600),
            false,
        ),
        retries: 0,
    }
}

fn check_all_succeeded(records: &[CommandRecord], expected: usize) -> anyhow::Result<()> {
    let ok = records
        .iter()
        .filter(|r| r.state == crate::command::CommandState::Succeeded)
        .count();
    if ok != expected {
        anyhow::bail!("only {ok} of {expected} commands succeeded");
    }
    Ok(())
}

pub async fn commands(args: CommandsBenchArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 10_000 || args.count == 0 || args.count > 100_000 {
        anyhow::bail!("--nodes must be 1..=10000 and --count 1..=100000");
    }
    if args.fanout > 10_000 {
        anyhow::bail!("--fanout must be at most 10000");
    }
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let run = format!("{:08x}", rand::random::<u32>());
    let prefix = format!("bench{run}");
    let nats = NatsConfig {
        url: Some(args.nats_url.clone()),
        prefix: prefix.clone(),
        ..NatsConfig::default()
    };
    let token = crate::pipeline::registry::new_token();
    let shutdown = CancellationToken::new();
    let config = ControllerConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        data_dir: dir.path().join("controller"),
        database_url: args.database_url.clone(),
        api_tokens: vec![token.clone()],
        registry_refresh: Duration::from_millis(200),
        nats: if args.bus == BusKind::Nats {
            nats.clone()
        } else {
            NatsConfig::default()
        },
        ..ControllerConfig::default()
    };
    let controller = crate::modes::controller::start(config, shutdown.clone()).await?;
    let operator = OperatorKey::generate();

    // Enroll and connect every simulated node before anything is measured.
    let names: Vec<String> = (0..args.nodes)
        .map(|i| format!("bench-{run}-{i}"))
        .chain((0..args.fanout).map(|i| format!("fan-{run}-{i}")))
        .collect();
    let mut keys = Vec::with_capacity(names.len());
    for name in &names {
        let key = crate::pipeline::registry::new_node_key();
        controller
            .durable
            .add_node(
                &Node {
                    name: NodeName::parse(name).expect("a valid generated name"),
                    key: key.clone(),
                    allow: Vec::new(),
                    labels: Default::default(),
                    source: NodeSource::Enrolled,
                },
                crate::timefmt::now_ms(),
            )
            .await?;
        keys.push(key);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node_config = AgentCommandsConfig {
        trusted_keys: vec![operator.public()],
        ..AgentCommandsConfig::default()
    };
    let nodes_dir = match &args.nodes_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .with_context(|| format!("cannot make a directory in {}", parent.display()))?,
        None => tempfile::tempdir_in(dir.path()).context("cannot make the nodes' directory")?,
    };
    let nodes_stop = CancellationToken::new();
    let mut shared_clients = Vec::new();
    for (i, (name, key)) in names.iter().zip(&keys).enumerate() {
        let executor = Arc::new(Executor::open(
            name,
            &node_config,
            &nodes_dir.path().join(name),
        )?);
        match args.bus {
            BusKind::Nats => {
                // One connection per 100 simulated nodes, as a real fleet would spread them.
                if i % 100 == 0 {
                    let client = crate::bus::nats::connect(&nats, "fleet-bench-nodes").await?;
                    shared_clients.push(client);
                }
                let client = shared_clients
                    .last()
                    .expect("a connection was made")
                    .clone();
                let bus = Bus::Nats(Box::new(crate::bus::nats::NatsBus::on(
                    client,
                    &nats,
                    name,
                    key,
                    Duration::from_secs(10),
                )?));
                bus.prepare_commands().await?;
                tokio::spawn(crate::agent::commands::run(
                    Arc::new(bus),
                    executor,
                    nodes_stop.clone(),
                ));
            }
            BusKind::Http => {
                let bus = Bus::http(
                    &controller.url,
                    name,
                    key,
                    None,
                    Duration::from_secs(30),
                    Duration::from_secs(10),
                    Duration::from_secs(20),
                )?;
                tokio::spawn(crate::agent::commands::run(
                    Arc::new(bus),
                    executor,
                    nodes_stop.clone(),
                ));
            }
        }
    }
    let sender = match args.bus {
        BusKind::Nats => Sender::Nats(crate::bus::nats::Sender::connect(&nats).await?),
        BusKind::Http => Sender::Http(crate::client::Api::connect(&controller.url, &token, None)?),
    };
    let bench_nodes = &names[..args.nodes];
    println!(
        "bus       {:?}; {} nodes, {} commands; controller store {}",
        args.bus,
        args.nodes,
        args.count,
        if args.database_url.is_some() {
            "PostgreSQL/given"
        } else {
            "SQLite"
        }
    );

    // Warm-up: connections, consumers, prepared statements.
    for (i, node) in bench_nodes.iter().enumerate().take(20) {
        let records = sender
            .send_wait(&[echo(&operator, node, &format!("warm{i}"))])
            .await?;
        check_all_succeeded(&records, 1)?;
    }

    // Latency: one command at a time, round robin over the nodes.
    let mut latencies = Vec::with_capacity(args.count);
    let mut ids = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let node = &bench_nodes[i % bench_nodes.len()];
        let submission = echo(&operator, node, &format!("{i}"));
        ids.push(submission.command.id.clone());
        let started = Instant::now();
        let records = sender.send_wait(std::slice::from_ref(&submission)).await?;
        latencies.push(started.elapsed());
        check_all_succeeded(&records, 1)?;
    }
    recorded(&controller.durable, &ids).await?;
    let (p50, p99, max) = summary(latencies);
    println!(
        "latency   p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (send → Echo on the node → result at the sender)"
    );

    // Throughput: everything at once.
    let all: Vec<Submission> = (0..args.count)
        .map(|i| {
            echo(
                &operator,
                &bench_nodes[i % bench_nodes.len()],
                &format!("t{i}"),
            )
        })
        .collect();
    let started = Instant::now();
    let records = sender.send_wait(&all).await?;
    let elapsed = started.elapsed();
    check_all_succeeded(&records, args.count)?;
    let ids: Vec<String> = all.iter().map(|s| s.command.id.clone()).collect();
    let lag = recorded(&controller.durable, &ids).await?;
    println!(
        "throughput {} commands in {:.2} s: {:.0} commands/s (the controller's audit log had every outcome {:.0} ms after the sender)",
        args.count,
        elapsed.as_secs_f64(),
        args.count as f64 / elapsed.as_secs_f64(),
        lag.as_secs_f64() * 1000.0
    );

    // Fan-out: one command to every fan-out node.
    // Three rounds, for the spread.
    for _round in 0..3 {
        if args.fanout == 0 {
            break;
        }
        let fan: Vec<Submission> = names[args.nodes..]
            .iter()
            .map(|n| echo(&operator, n, "fan"))
            .collect();
        let started = Instant::now();
        let records = sender.send_wait(&fan).await?;
        let elapsed = started.elapsed();
        check_all_succeeded(&records, args.fanout)?;
        let ids: Vec<String> = fan.iter().map(|s| s.command.id.clone()).collect();
        let lag = recorded(&controller.durable, &ids).await?;
        println!(
            "fan-out   1 command to {} nodes: all results back in {:.0} ms (in the controller's audit log {:.0} ms later)",
            args.fanout,
            elapsed.as_secs_f64() * 1000.0,
            lag.as_secs_f64() * 1000.0
        );
    }

    // Floors, measured now on the same machine.
    let payload = vec![b'x'; serde_json::to_vec(&echo(&operator, "n", "0").command)?.len()];
    match raw_nats_floor(&args.nats_url, &prefix, &payload, args.count).await {
        Ok((r50, r99, _)) => println!(
            "floor     NATS request/reply of {} bytes: p50 {r50:.2} ms, p99 {r99:.2} ms; the command round trip is {:.1}× (p50) and {:.1}× (p99) of it",
            payload.len(),
            p50 / r50,
            p99 / r99
        ),
        Err(err) => println!("floor     NATS request/reply: not measured ({err:#})"),
    }
    let (h50, h99) = http_floor(&controller.url, args.count.min(1000)).await?;
    println!("floor     HTTP GET /healthz on the controller: p50 {h50:.2} ms, p99 {h99:.2} ms");
    let (f50, f99) = fsync_floor(dir.path(), 200)?;
    println!("floor     fsync (append + fdatasync) on this disk: p50 {f50:.2} ms, p99 {f99:.2} ms");

    nodes_stop.cancel();
    shutdown.cancel();
    controller.wait().await?;
    if args.bus == BusKind::Nats
        && let Ok(client) = crate::bus::nats::connect(&nats, "fleet-bench-cleanup").await
    {
        let js = async_nats::jetstream::new(client);
        let upper = prefix.to_uppercase();
        let _ = js.delete_stream(format!("{upper}_COMMANDS")).await;
        let _ = js.delete_stream(format!("{upper}_REPLIES")).await;
    }
    Ok(())
}

/// Waits until the controller's store has the outcome of every one of `ids` (over NATS it
/// consumes them from the streams behind the sender), so each phase starts on a quiet system.
/// Returns how long that took.
async fn recorded(store: &crate::store::Durable, ids: &[String]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let records = store.commands_by_ids(ids).await?;
        if records.len() == ids.len() && records.iter().all(|r| r.state.is_terminal()) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "after 60 s the controller has recorded only {} of {} outcomes",
                records.iter().filter(|r| r.state.is_terminal()).count(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Plain NATS request/reply (a responder that answers with the same bytes), one at a time.
async fn raw_nats_floor(
    url: &str,
    prefix: &str,
    payload: &[u8],
    count: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    use futures::StreamExt;
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let subject = format!("{prefix}.floor");
    let mut sub = client.subscribe(subject.clone()).await?;
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let payload = bytes::Bytes::copy_from_slice(payload);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject.clone(), payload.clone()),
        )
        .await
        .context("a request timed out")??;
        samples.push(started.elapsed());
    }
    echo.abort();
    Ok(summary(samples))
}

async fn http_floor(url: &str, count: usize) -> anyhow::Result<(f64, f64)> {
    let client = crate::http_client::controller_client(None, Duration::from_secs(5), 2)?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        client.get(format!("{url}/healthz")).send().await?;
        samples.push(started.elapsed());
    }
    let (p50, p99, _) = summary(samples);
    Ok((p50, p99))
}

fn fsync_floor(dir: &std::path::Path, count: usize) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-floor"))?;
    let line = [b'x'; 200];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    let (p50, p99, _) = summary(samples);
    Ok((p50, p99))
}
