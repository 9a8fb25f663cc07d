//! `fleet bench dashboard --nodes N --days D`: how long the dashboard's pages take to render
//! from a real store: the overview of N nodes, one node's page with D days of history at each
//! chart range (its host collectors and everything else an agent sends: an access log's traffic
//! and tail, two checks, a plugin, the top processes, an app, shipped lines), a sparkline, and
//! `/healthz` as the floor measured in the same run.
//!
//! Everything real: a controller in this process (SQLite in a temporary dir, or
//! `--database-url`), a logged-in session, pages fetched over HTTP. The history is written
//! through the store's own batch writer (what ingest would have written over D days), so the
//! charts read what they would read in production. Wiring and measuring only.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{ControllerConfig, StaticNode};
use crate::model::{BatchBody, NodeName, Record, Sample};
use crate::store::durable::{IngestBatch, LedgerKey, SeriesCache};
use crate::timefmt::parse_duration;

/// Flags of `fleet bench dashboard`.
#[derive(clap::Args, Debug, Clone)]
pub struct DashboardBenchArgs {
    /// Nodes on the overview (each with one recent batch).
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Days of history of the charted node.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// The charted node's collection interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Requests per page measured.
    #[arg(long, default_value_t = 30)]
    pub requests: usize,
    /// The controller's database [default: SQLite in a temporary dir].
    #[arg(long, env = "FLEET_DATABASE_URL")]
    pub database_url: Option<String>,
}

const CHARTED: &str = "n0000";
/// Ticks of the charted node also put in the hot ring.
const HOT_TICKS: u64 = 200;
/// Records of the charted node per tick: 3 host, 8 others (`collected`).
const RECORDS_PER_TICK: u64 = 11;

/// One tick of a host's system, disk and network collectors at `ts`.
fn tick(ts: i64, i: u64) -> Vec<Record> {
    let wave = |period: f64, low: f64, high: f64| {
        let phase = (i as f64 / period * std::f64::consts::TAU).sin() * 0.5 + 0.5;
        low + (high - low) * phase
    };
    let system = Record {
        collector: "system".into(),
        ts,
        data: serde_json::json!({ "cpu": { "used_percent": wave(360.0, 5.0, 80.0) } }),
        samples: vec![
            Sample::new("cpu.used_percent", wave(360.0, 5.0, 80.0)),
            Sample::new("cpu.user_percent", wave(360.0, 3.0, 60.0)),
            Sample::new("cpu.system_percent", wave(500.0, 1.0, 15.0)),
            Sample::new("cpu.iowait_percent", wave(90.0, 0.0, 5.0)),
            Sample::new("memory.used_percent", wave(8640.0, 30.0, 70.0)),
            Sample::new(
                "swap.used_bytes",
                wave(8640.0, 0.0, 512.0 * 1024.0 * 1024.0),
            ),
            Sample::new("load.1", wave(360.0, 0.1, 3.5)),
            Sample::new("load.5", wave(720.0, 0.2, 3.0)),
            Sample::new("load.15", wave(1440.0, 0.3, 2.5)),
        ],
    };
    let disk = Record {
        collector: "disk".into(),
        ts,
        data: serde_json::Value::Null,
        samples: ["/", "/var"]
            .into_iter()
            .map(|m| {
                Sample::new("disk.used_percent", wave(60_480.0, 40.0, 60.0)).with_label("mount", m)
            })
            .collect(),
    };
    let network = Record {
        collector: "network".into(),
        ts,
        data: serde_json::Value::Null,
        samples: ["eth0", "eth1"]
            .into_iter()
            .flat_map(|dev| {
                [
                    Sample::new("net.rx_bytes_per_sec", wave(360.0, 1e4, 5e6))
                        .with_label("interface", dev),
                    Sample::new("net.tx_bytes_per_sec", wave(300.0, 1e4, 2e6))
                        .with_label("interface", dev),
                ]
            })
            .collect(),
    };
    vec![system, disk, network]
}

/// The charted node's other collectors at tick `i`: an access log's traffic for two vhosts and
/// its tail's figures, two checks (one down now and then), a Nagios plugin in WARNING, the top
/// processes, and an app's record: what a real agent with `[[logs]]`, `[[checks]]`,
/// `[[plugins]]` and an app on its socket sends.
fn collected(ts: i64, i: u64) -> Vec<Record> {
    let wave = |period: f64, low: f64, high: f64| {
        let phase = (i as f64 / period * std::f64::consts::TAU).sin() * 0.5 + 0.5;
        low + (high - low) * phase
    };
    let mut web = Vec::new();
    for (vhost, scale) in [("shop.example", 1.0), ("api.example", 0.3)] {
        let web_sample = |name: &str, value: f64| {
            Sample::new(name, value)
                .with_label("log", "nginx")
                .with_label("vhost", vhost)
        };
        let ok = wave(720.0, 5.0, 60.0) * scale;
        let errors = if i % 97 < 3 { 4.0 * scale } else { 0.0 };
        web.extend([
            web_sample("web.requests_per_second", ok + errors),
            web_sample("web.requests_per_second", ok).with_label("class", "2xx"),
            web_sample("web.requests_per_second", errors).with_label("class", "5xx"),
            web_sample("web.bytes_per_second", ok * 2048.0),
            web_sample("web.request_time_avg_ms", wave(300.0, 8.0, 40.0)),
            web_sample("web.request_time_max_ms", wave(300.0, 50.0, 900.0)),
        ]);
    }
    let tail = |name: &str, value: f64| Sample::new(name, value).with_label("log", "nginx");
    let check = |name: &str, up: bool, latency: f64| Record {
        collector: "check".into(),
        ts,
        data: if up {
            serde_json::json!({ "check": name, "ok": true, "latency_ms": latency })
        } else {
            serde_json::json!({ "check": name, "ok": false, "latency_ms": latency,
                "error": "connection refused" })
        },
        samples: vec![
            Sample::new("check.up", if up { 1.0 } else { 0.0 }).with_label("check", name),
            Sample::new("check.latency_ms", latency).with_label("check", name),
        ],
    };
    let load = wave(360.0, 0.5, 6.0);
    vec![
        Record {
            collector: "web.nginx".into(),
            ts,
            data: serde_json::Value::Null,
            samples: web,
        },
        Record {
            collector: "tail.nginx".into(),
            ts,
            data: serde_json::json!({ "lines": 200, "files": ["/var/log/nginx/access.log"] }),
            samples: vec![
                tail("tail.lines_per_second", wave(720.0, 5.0, 80.0)),
                tail("tail.bytes_per_second", wave(720.0, 1e3, 2e4)),
                tail("tail.unparsed", 0.0),
                tail("tail.truncated", 0.0),
                tail("tail.sampled_out", wave(720.0, 0.0, 50.0).round()),
                tail("tail.files", 1.0),
            ],
        },
        check("web", true, wave(90.0, 0.2, 3.0)),
        check("db", i % 50 >= 5, wave(90.0, 0.5, 9.0)),
        Record {
            collector: "plugin".into(),
            ts,
            data: serde_json::json!({ "plugin": "load", "status": "WARNING", "code": 1,
                "text": format!("WARNING - load {load:.2}"),
                "perfdata": [{ "label": "load", "value": load, "uom": "", "warn": "4",
                    "crit": "10", "min": 0, "max": null }] }),
            samples: vec![
                Sample::new("plugin.status", 1.0).with_label("plugin", "load"),
                Sample::new("plugin.duration_ms", 12.0).with_label("plugin", "load"),
                Sample::new("plugin.perf", load)
                    .with_label("plugin", "load")
                    .with_label("label", "load"),
            ],
        },
        Record {
            collector: "processes".into(),
            ts,
            data: serde_json::json!({ "count": 180, "running": 2, "threads_total": 410,
                "top": (0..5).map(|p| serde_json::json!({ "pid": 100 + p, "name": format!("worker{p}"),
                    "cmdline": format!("/usr/bin/worker --id {p}"), "cpu_percent": 40.0 / f64::from(p + 1),
                    "cpu_time_seconds": 1000.0, "rss_bytes": 50_000_000 })).collect::<Vec<_>>() }),
            samples: vec![
                Sample::new("processes.count", 180.0),
                Sample::new("processes.running", 2.0),
                Sample::new("processes.threads_total", 410.0),
            ],
        },
        Record {
            collector: "shop".into(),
            ts,
            data: serde_json::json!({ "version": "2.4.1", "region": "eu-west",
                "metrics": { "orders": wave(1440.0, 0.0, 30.0).round(), "queue_depth": wave(200.0, 0.0, 12.0).round() } }),
            samples: vec![
                Sample::new("shop.orders", wave(1440.0, 0.0, 30.0).round()),
                Sample::new("shop.queue_depth", wave(200.0, 0.0, 12.0).round()),
            ],
        },
    ]
}

/// A shipped access log line of the charted node at `ts`.
fn log_line(ts: i64, i: u64) -> Record {
    Record {
        collector: "logs.nginx".into(),
        ts,
        data: serde_json::json!({ "vhost": "shop.example", "remote_addr": "192.0.2.7",
            "method": "GET", "path": format!("/product/{}", i % 400),
            "status": if i % 97 < 3 { 502 } else { 200 }, "body_bytes_sent": 2048,
            "file": "/var/log/nginx/access.log" }),
        samples: Vec::new(),
    }
}

fn batch(node: &str, seq: u64, ts: i64, records: Vec<Record>, interval_ms: i64) -> IngestBatch {
    IngestBatch {
        node: NodeName::parse(node).expect("bench node names are valid"),
        ledger: Some(LedgerKey {
            instance: "bench".into(),
            seq,
            sent_at_ms: ts,
        }),
        received_at_ms: ts,
        body: BatchBody {
            interval_ms: interval_ms as u64,
            dropped_batches: 0,
            records,
        },
    }
}

pub async fn dashboard(args: DashboardBenchArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 100_000 {
        anyhow::bail!("--nodes must be 1..=100000");
    }
    if args.days == 0 || args.days > 14 {
        anyhow::bail!("--days must be 1..=14 (samples are kept 14 days)");
    }
    if args.interval < Duration::from_secs(1) || args.interval > Duration::from_secs(3600) {
        anyhow::bail!("--interval must be between 1s and 1h");
    }
    if args.requests == 0 || args.requests > 10_000 {
        anyhow::bail!("--requests must be 1..=10000");
    }
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let token = crate::pipeline::registry::new_token();
    let shutdown = CancellationToken::new();
    let nodes: Vec<StaticNode> = (0..args.nodes)
        .map(|i| StaticNode {
            name: NodeName::parse(&format!("n{i:04}")).expect("a valid name"),
            key: format!("bench-key-{i:016}"),
            allow: Vec::new(),
            labels: [(
                "role".to_owned(),
                if i % 2 == 0 { "web" } else { "db" }.to_owned(),
            )]
            .into(),
        })
        .collect();
    let config = ControllerConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        data_dir: dir.path().join("controller"),
        database_url: args.database_url.clone(),
        api_tokens: vec![token.clone()],
        nodes,
        ..ControllerConfig::default()
    };
    let controller = crate::modes::controller::start(config, shutdown.clone()).await?;
    let store = controller.durable.clone();

    // The charted node's history, oldest first, in groups as ingest writes them.
    let interval_ms = args.interval.as_millis() as i64;
    let now = crate::timefmt::now_ms();
    let ticks = (i64::from(args.days) * 86_400_000 / interval_ms) as u64;
    let seeding = Instant::now();
    let mut cache = SeriesCache::default();
    let keep = |_: &Record| false;
    let mut seq = 0u64;
    while seq < ticks {
        let group: Vec<IngestBatch> = (seq..(seq + 500).min(ticks))
            .map(|i| {
                let ts = now - (ticks - i) as i64 * interval_ms;
                let mut records = tick(ts, i);
                records.extend(collected(ts, i));
                batch(CHARTED, i + 1, ts, records, interval_ms)
            })
            .collect();
        seq += group.len() as u64;
        store
            .write_batches(&group, &keep, &mut cache)
            .await
            .context("cannot seed the history")?;
    }
    // The newest records are also in the hot ring, as ingest would have put them there: the
    // page's tables (checks, processes, log lines, apps) and its tail read them.
    for i in ticks.saturating_sub(HOT_TICKS)..ticks {
        let ts = now - (ticks - i) as i64 * interval_ms;
        let mut records = tick(ts, i);
        records.extend(collected(ts, i));
        records.push(log_line(ts, i));
        controller.hot.push(CHARTED, &records).await;
    }
    // Every other node: one recent tick, so the overview shows them up with vitals.
    let others: Vec<IngestBatch> = (1..args.nodes)
        .map(|i| {
            batch(
                &format!("n{i:04}"),
                1,
                now,
                tick(now, i as u64),
                interval_ms,
            )
        })
        .collect();
    for group in others.chunks(500) {
        store.write_batches(group, &keep, &mut cache).await?;
    }
    // PostgreSQL plans from statistics that autovacuum gathers a minute or so after a bulk
    // write; a store that has been running has them. Gather them now rather than measure
    // plans made for an empty table.
    if let Some(url) = &args.database_url {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .context("cannot connect to analyse the seeded tables")?;
        sqlx::query("VACUUM ANALYZE samples, records, series, node_status")
            .execute(&mut conn)
            .await
            .context("cannot analyse the seeded tables")?;
        conn.close().await?;
    }
    println!(
        "store     {}; {} nodes; {} of {} ({} records of 10 collectors) seeded in {:.1} s",
        if args.database_url.is_some() {
            "PostgreSQL/given"
        } else {
            "SQLite"
        },
        args.nodes,
        CHARTED,
        humantime::format_duration(Duration::from_secs(u64::from(args.days) * 86_400)),
        ticks * RECORDS_PER_TICK,
        seeding.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let login = client
        .post(format!("{}/login", controller.url))
        .header("content-type", "application/x-www-form-urlencoded")
        // The token is hex and `_`: nothing to escape.
        .body(format!("token={token}&next=%2F"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .context("the login gave no session cookie")?;

    let pages = [
        ("/healthz (floor)".to_owned(), "/healthz".to_owned()),
        (format!("overview, {} nodes", args.nodes), "/".to_owned()),
        (
            "node page, 1h".to_owned(),
            format!("/nodes/{CHARTED}?range=1h"),
        ),
        (
            "node page, 24h".to_owned(),
            format!("/nodes/{CHARTED}?range=24h"),
        ),
        (
            "node page, 7d".to_owned(),
            format!("/nodes/{CHARTED}?range=7d"),
        ),
        (
            "sparkline".to_owned(),
            format!("/ui/spark/{CHARTED}/cpu.svg"),
        ),
        ("events page".to_owned(), "/events".to_owned()),
    ];
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p99 ms", "× floor", "bytes"
    );
    let mut floor = None;
    for (label, path) in &pages {
        let mut times = Vec::with_capacity(args.requests);
        let mut bytes = 0;
        for _ in 0..args.requests {
            let started = Instant::now();
            let response = client
                .get(format!("{}{path}", controller.url))
                .header("cookie", &cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            times.push(started.elapsed());
            if !status.is_success() {
                anyhow::bail!("GET {path} answered {status}");
            }
            bytes = body.len();
        }
        times.sort();
        let p50 = times[times.len() / 2].as_secs_f64() * 1000.0;
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)].as_secs_f64() * 1000.0;
        let base = *floor.get_or_insert(p50);
        println!(
            "{label:<28} {p50:>9.2} {p99:>9.2} {:>9.0} {bytes:>10}",
            p50 / base
        );
    }
    shutdown.cancel();
    controller.wait().await?;
    Ok(())
}
