//! `fleet bench ingest`: simulated agents send signed batches to a controller (a real
//! controller process it starts itself, or one given by `--controller`), then loss is checked by
//! reading every (node, seq) back from the durable store, not by counting acknowledgements.
//!
//! Wiring and measuring only: batches are framed and signed by `wire`, exactly as the agent
//! does.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;

use crate::model::{BatchBody, Node, NodeName, NodeSource, Record, Sample};
use crate::store::Durable;
use crate::wire::{self, BatchHeaders};

/// Flags of `fleet bench ingest`.
#[derive(clap::Args, Debug, Clone)]
pub struct IngestBenchArgs {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Each agent sends one batch per interval, e.g. 1s or 100ms.
    #[arg(long, default_value = "1s", value_parser = crate::timefmt::parse_duration)]
    pub interval: Duration,
    /// How long to send, e.g. 30s (at most 1h).
    #[arg(long, default_value = "30s", value_parser = crate::timefmt::parse_duration)]
    pub duration: Duration,
    /// Samples per batch.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    /// An already running controller to load, e.g. http://127.0.0.1:7070 (needs --database-url
    /// to enroll the simulated nodes and read back what was stored). Without it, a controller
    /// process is started on a free loopback port.
    #[arg(long)]
    pub controller: Option<String>,
    /// The controller's database (postgres://… or sqlite://…). Default with a started
    /// controller: SQLite in a temporary data dir.
    #[arg(long, env = "FLEET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the started controller's hot ring.
    #[arg(long, env = "FLEET_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Concurrent connections to the controller.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

struct Started {
    child: tokio::process::Child,
    /// The Redis key prefix the started controller used: removed at the end.
    redis_prefix: String,
    _dir: tempfile::TempDir,
}

/// Deletes every Redis key under `prefix` (the hot rings of a started controller).
async fn remove_redis_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).context("the Redis URL is not valid")?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("timed out connecting to Redis")??;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

/// A result of one simulated agent.
#[derive(Default)]
struct AgentTally {
    acked: Vec<u64>,
    errors: u64,
    latencies_us: Vec<u64>,
}

pub async fn ingest(args: IngestBenchArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.agents > 100_000 {
        anyhow::bail!("--agents must be between 1 and 100000");
    }
    if args.duration > Duration::from_secs(3600) {
        anyhow::bail!("--duration must be at most 1h");
    }
    if args.interval < Duration::from_millis(1) {
        anyhow::bail!("--interval must be at least 1ms");
    }
    let run_id = format!("{:08x}", rand::random::<u32>());
    let instance = ulid::Ulid::new().to_string();
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let database_url = match (&args.database_url, &args.controller) {
        (Some(url), _) => url.clone(),
        (None, None) => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fleet.db").display()
        ),
        (None, Some(_)) => anyhow::bail!(
            "with --controller, pass --database-url of that controller's database: the benchmark enrolls its nodes there and reads back what was stored"
        ),
    };
    let store = Durable::connect(&database_url).await?;
    let nodes: Vec<(NodeName, String)> = (0..args.agents)
        .map(|i| {
            let name =
                NodeName::parse(&format!("bench-{run_id}-{i}")).expect("a valid generated name");
            (name, crate::pipeline::registry::new_node_key())
        })
        .collect();
    for (name, key) in &nodes {
        store
            .add_node(
                &Node {
                    name: name.clone(),
                    key: key.clone(),
                    allow: vec![],
                    labels: [("bench".to_owned(), run_id.clone())].into(),
                    source: NodeSource::Enrolled,
                },
                crate::timefmt::now_ms(),
            )
            .await?;
    }

    let (url, mut started) = match &args.controller {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let redis_prefix = format!("fleet-bench-{run_id}:");
            let (url, child) =
                start_controller(&args, &database_url, dir.path().to_owned(), &redis_prefix)
                    .await?;
            (
                url,
                Some(Started {
                    child,
                    redis_prefix,
                    _dir: dir,
                }),
            )
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let ingest_url = format!("{url}/api/v1/ingest");
    let limit = Arc::new(tokio::sync::Semaphore::new(args.connections));
    let tallies: Vec<Arc<Mutex<AgentTally>>> = (0..args.agents).map(|_| Arc::default()).collect();

    println!(
        "bench ingest: {} agents × 1 batch / {:?} × {} samples for {:?} against {url}",
        args.agents, args.interval, args.samples, args.duration
    );
    let began = Instant::now();
    let deadline = began + args.duration;
    let mut tasks = Vec::with_capacity(args.agents);
    for (i, (name, key)) in nodes.iter().enumerate() {
        let client = client.clone();
        let ingest_url = ingest_url.clone();
        let limit = limit.clone();
        let tally = tallies[i].clone();
        let name = name.to_string();
        let key = key.clone();
        let instance = instance.clone();
        let interval = args.interval;
        let samples = args.samples;
        // Spread the agents over the interval, as real ones are.
        let phase = interval.mul_f64(i as f64 / args.agents as f64);
        tasks.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::from_std(began) + phase;
            let mut seq = 0u64;
            let mut tally_local = AgentTally::default();
            let deadline = tokio::time::Instant::from_std(deadline);
            // A slow controller makes an agent fall behind its schedule; it then sends back to
            // back (as a real agent drains its spool) but never past the deadline, so the rate
            // measured is what the controller sustained.
            while next < deadline {
                tokio::time::sleep_until(next).await;
                next += interval;
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                seq += 1;
                let body = batch_body(samples, seq, interval);
                let headers = BatchHeaders {
                    node: name.clone(),
                    instance: instance.clone(),
                    seq,
                    timestamp_ms: crate::timefmt::now_ms(),
                };
                let signature = wire::sign(key.as_bytes(), &headers, &body);
                let (payload, gzip) = wire::encode(&body);
                let _permit = limit
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let sent = Instant::now();
                let mut request = client
                    .post(&ingest_url)
                    .header(wire::HEADER_NODE, &headers.node)
                    .header(wire::HEADER_INSTANCE, &headers.instance)
                    .header(wire::HEADER_SEQ, seq.to_string())
                    .header(wire::HEADER_TIMESTAMP, headers.timestamp_ms.to_string())
                    .header(wire::HEADER_SIGNATURE, signature);
                if gzip {
                    request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                match request.body(payload).send().await {
                    Ok(r) if r.status().is_success() => {
                        tally_local
                            .latencies_us
                            .push(sent.elapsed().as_micros() as u64);
                        tally_local.acked.push(seq);
                    }
                    _ => tally_local.errors += 1,
                }
            }
            *tally.lock().await = tally_local;
        }));
    }
    for task in tasks {
        task.await.context("a simulated agent panicked")?;
    }
    let elapsed = began.elapsed().max(args.duration);

    let mut latencies = Vec::new();
    let mut acked = 0usize;
    let mut errors = 0u64;
    let mut missing = 0usize;
    let mut duplicated = 0usize;
    for (i, (name, _)) in nodes.iter().enumerate() {
        let tally = tallies[i].lock().await;
        latencies.extend_from_slice(&tally.latencies_us);
        acked += tally.acked.len();
        errors += tally.errors;
        let stored: Vec<i64> = store
            .stored_sequences(name.as_str())
            .await?
            .into_iter()
            .filter(|(inst, _)| *inst == instance)
            .map(|(_, seq)| seq)
            .collect();
        let mut dedup = stored.clone();
        dedup.dedup();
        duplicated += stored.len() - dedup.len();
        missing += tally
            .acked
            .iter()
            .filter(|seq| dedup.binary_search(&(**seq as i64)).is_err())
            .count();
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx] as f64 / 1000.0
    };
    let secs = elapsed.as_secs_f64();
    println!("sent      {} batches acknowledged, {errors} failed", acked);
    println!(
        "rate      {:.0} batches/s, {:.0} samples/s",
        acked as f64 / secs,
        (acked * args.samples) as f64 / secs
    );
    println!(
        "ack       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "loss      {missing} acknowledged batches missing from the store, {duplicated} stored twice"
    );

    if let Some(started) = started.as_mut() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(started.child.id().unwrap_or(0) as i32)
                .context("the controller process has no pid")?,
            rustix::process::Signal::TERM,
        );
        let _ = tokio::time::timeout(Duration::from_secs(15), started.child.wait()).await;
        if let Some(redis) = &args.redis_url {
            remove_redis_keys(redis, &started.redis_prefix).await?;
        }
    } else {
        for (name, _) in &nodes {
            store.remove_node(name.as_str()).await?;
        }
    }
    if missing > 0 || duplicated > 0 {
        anyhow::bail!("data was lost or duplicated");
    }
    Ok(())
}

fn batch_body(samples: usize, seq: u64, interval: Duration) -> Vec<u8> {
    let ts = crate::timefmt::now_ms();
    let body = BatchBody {
        interval_ms: interval.as_millis() as u64,
        dropped_batches: 0,
        records: vec![Record {
            collector: "bench".into(),
            ts,
            data: serde_json::json!({ "seq": seq }),
            samples: (0..samples)
                .map(|j| Sample::new(format!("bench.metric_{j}"), (seq as f64) * 0.5 + j as f64))
                .collect(),
        }],
    };
    serde_json::to_vec(&body).expect("batches serialise")
}

async fn start_controller(
    args: &IngestBenchArgs,
    database_url: &str,
    data_dir: PathBuf,
    redis_prefix: &str,
) -> anyhow::Result<(String, tokio::process::Child)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe().context("cannot find the fleet executable")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("controller")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--database-url")
        .arg(database_url)
        .env_remove("FLEET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(redis) = &args.redis_url {
        command.arg("--redis-url").arg(redis);
        command.arg("--redis-prefix").arg(redis_prefix);
    }
    let child = command.spawn().context("cannot start the controller")?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            // The controller re-reads enrolled nodes every 2 s; it read them at start.
            return Ok((url, child));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the controller did not become ready within 10 s")
}
