//! `fleet bench heartbeats --services N --interval S`: how many pulses per second the
//! controller accepts (each answered only once stored), and how late a missed deadline is
//! noticed while N services are watched and pulsing.
//!
//! Everything real: a controller in this process (SQLite in a temporary dir, or
//! `--database-url`), pulses over HTTP through the API. Wiring and measuring only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::timefmt::parse_duration;

/// Flags of `fleet bench heartbeats`.
#[derive(clap::Args, Debug, Clone)]
pub struct HeartbeatsBenchArgs {
    /// Services watched (and pulsing) at once.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Each service pulses this often while the detection lag is measured.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Services that stop pulsing, whose missed deadlines are timed (spread over one interval).
    #[arg(long, default_value_t = 1000)]
    pub missed: usize,
    /// Pulses in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// The controller's database [default: SQLite in a temporary dir].
    #[arg(long, env = "FLEET_DATABASE_URL")]
    pub database_url: Option<String>,
}

pub async fn heartbeats(args: HeartbeatsBenchArgs) -> anyhow::Result<()> {
    if args.services == 0 || args.services > 1_000_000 {
        anyhow::bail!("--services must be 1..=1000000");
    }
    if args.missed == 0 || args.missed > args.services {
        anyhow::bail!("--missed must be 1..=--services");
    }
    if args.interval < Duration::from_secs(2) || args.interval > Duration::from_secs(600) {
        anyhow::bail!("--interval must be between 2s and 10m");
    }
    if args.concurrency == 0 || args.concurrency > 1024 {
        anyhow::bail!("--concurrency must be 1..=1024");
    }
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let token = crate::pipeline::registry::new_token();
    let shutdown = CancellationToken::new();
    let config = ControllerConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        data_dir: dir.path().join("controller"),
        database_url: args.database_url.clone(),
        api_tokens: vec![token.clone()],
        ..ControllerConfig::default()
    };
    let controller = crate::modes::controller::start(config, shutdown.clone()).await?;
    let api =
        crate::client::Api::with_connections(&controller.url, &token, None, args.concurrency)?;
    println!(
        "store     {}; {} services, {} of them stop pulsing; {} pulses in flight",
        if args.database_url.is_some() {
            "PostgreSQL/given"
        } else {
            "SQLite"
        },
        args.services,
        args.missed,
        args.concurrency
    );

    let pulser = Pulser {
        api,
        errors: AtomicU64::new(0),
    };
    let pulser = Arc::new(pulser);
    let interval_s = args.interval.as_secs_f64();
    // Live services are due half an interval after they are next expected to pulse: if the
    // controller fell behind, or the monitor misjudged, they would be reported down.
    let live_next_in = interval_s * 1.5;
    let live = args.services - args.missed;
    // The missed ones pulse last, with deadlines spread over the next interval, so they pass
    // while the live ones keep pulsing.
    let missed_next_in = |i: usize| 1.0 + (i as f64 / args.missed as f64) * (interval_s - 1.0);
    let started = Instant::now();
    pulser
        .pulse_all(
            (0..args.services).map(|i| {
                if i < live {
                    (i, live_next_in)
                } else {
                    (i, missed_next_in(i - live))
                }
            }),
            args.concurrency,
        )
        .await;
    let elapsed = started.elapsed();
    check_errors(&pulser)?;
    println!(
        "pulses    {} accepted in {:.2} s: {:.0} pulses/s (each answered after it was stored)",
        args.services,
        elapsed.as_secs_f64(),
        args.services as f64 / elapsed.as_secs_f64()
    );

    // Detection: the live services go on pulsing every interval while the missed ones die;
    // they keep pulsing until the outcome has been read.
    let stop = CancellationToken::new();
    let keep_alive = {
        let pulser = pulser.clone();
        let concurrency = args.concurrency;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rates = Vec::new();
            while !stop.is_cancelled() {
                let t0 = Instant::now();
                pulser
                    .pulse_all((0..live).map(|i| (i, live_next_in)), concurrency)
                    .await;
                rates.push(live as f64 / t0.elapsed().as_secs_f64());
                let rest = Duration::from_secs_f64(interval_s).saturating_sub(t0.elapsed());
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(rest) => {}
                }
            }
            rates
        })
    };
    // Every missed deadline has passed a second before this.
    tokio::time::sleep(args.interval + Duration::from_secs(2)).await;
    let mut all = Vec::with_capacity(args.services);
    let mut after: Option<String> = None;
    loop {
        let page = controller
            .durable
            .heartbeats(crate::timefmt::now_ms(), after.as_deref(), 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.service.clone());
        all.extend(page);
    }
    stop.cancel();
    let rates = keep_alive.await.context("the pulsing task failed")?;
    check_errors(&pulser)?;
    let mut lags = Vec::with_capacity(args.missed);
    let mut false_downs = 0;
    for h in &all {
        let i: usize = h.service[1..].parse().unwrap_or(usize::MAX);
        let down = h.state == crate::heartbeat::HeartbeatState::Down;
        if i >= live && i < args.services {
            if down {
                lags.push(Duration::from_millis(
                    (h.state_since_ms - h.deadline_ms).max(0) as u64,
                ));
            }
        } else if down {
            false_downs += 1;
        }
    }
    if lags.len() != args.missed {
        anyhow::bail!(
            "only {} of the {} silent services were reported down",
            lags.len(),
            args.missed
        );
    }
    if false_downs > 0 {
        anyhow::bail!(
            "{false_downs} services that kept pulsing were reported down (did the pulses keep up? see the rate)"
        );
    }
    let (p50, p99, max) = super::commands::summary(lags);
    let rate = rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "detection missed deadlines noticed p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms after the deadline, with {} services watched and {live} pulsing meanwhile ({:.0} pulses/s at the slowest round)",
        args.services, rate
    );
    shutdown.cancel();
    controller.wait().await?;
    Ok(())
}

struct Pulser {
    api: crate::client::Api,
    errors: AtomicU64,
}

impl Pulser {
    async fn pulse_all(&self, pulses: impl Iterator<Item = (usize, f64)>, concurrency: usize) {
        futures::stream::iter(pulses)
            .map(|(i, next_in)| async move {
                let body = serde_json::json!({ "service": format!("s{i}"), "next_in": next_in });
                let ok = self.api.post("api/v1/heartbeats", &body).await.is_ok();
                if !ok {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(concurrency)
            .for_each(|()| async {})
            .await;
    }
}

fn check_errors(pulser: &Pulser) -> anyhow::Result<()> {
    match pulser.errors.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => anyhow::bail!("{n} pulses were not accepted"),
    }
}
