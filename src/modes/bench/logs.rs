//! `fleet bench logs`: how fast the log tail reads, parses and adds up an nginx access log, and
//! what a real agent costs while it follows one.
//!
//! 1. In this process, on one thread: a generated combined-format log of `--lines` lines is
//!    read by the log tail (parse, vhost traffic figures, shipping capped at `--ship` lines/s),
//!    against a baseline measured in the same run: the same file read and split into lines
//!    with nothing else done (the floor any tail pays).
//! 2. A real `fleet agent` process follows a log this process appends to at `--rate` lines/s
//!    for `--seconds`, shipping to a controller in this process (SQLite in a temporary dir). Its
//!    RSS and CPU are read from `/proc` twice a second; what reached the store is counted.
//!
//! Wiring and measuring only: the tail is `collectors::logs`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::collectors::Collector;
use crate::config::{ControllerConfig, LogConfig, LogFormat, StaticNode};

/// Flags of `fleet bench logs`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsBenchArgs {
    /// Lines in the generated log read in process.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// Lines per second appended to the log the agent process follows.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// How long the agent process is fed.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Lines per second the tail ships as records (beyond it, counted and sampled).
    #[arg(long, default_value_t = 100.0)]
    pub ship: f64,
}

/// A line of a busy site: a few vhosts' worth of paths, statuses, agents and request times.
fn access_line(i: usize, out: &mut Vec<u8>) {
    const PATHS: [&str; 6] = [
        "/",
        "/index.html",
        "/api/v1/items?page=2&sort=desc",
        "/static/app.3f9a1c.js",
        "/images/logo.png",
        "/wp-login.php",
    ];
    const AGENTS: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "curl/8.11.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    ];
    let status = match i % 50 {
        0 => 500,
        1..=3 => 404,
        4..=6 => 304,
        _ => 200,
    };
    let _ = writeln!(
        out,
        "10.{}.{}.{} - - [01/Dec/2026:10:{:02}:{:02} +0000] \"GET {} HTTP/1.1\" {} {} \"https://example.com/\" \"{}\" 0.{:03}",
        i % 7,
        i % 251,
        i % 13,
        (i / 60) % 60,
        i % 60,
        PATHS[i % PATHS.len()],
        status,
        512 + (i * 37) % 20_000,
        AGENTS[i % AGENTS.len()],
        i % 1000
    );
}

fn write_log(path: &Path, lines: usize) -> anyhow::Result<u64> {
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut line = Vec::with_capacity(512);
    for i in 0..lines {
        line.clear();
        access_line(i, &mut line);
        file.write_all(&line)?;
    }
    file.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

fn log_config(name: &str, path: &Path, ship: f64) -> LogConfig {
    LogConfig {
        name: name.into(),
        paths: vec![path.display().to_string()],
        format: LogFormat::Combined,
        filter: None,
        vhost: Some("$file".into()),
        from_beginning: true,
        ship_lines_per_second: ship,
        max_line_bytes: 16 * 1024,
        interval: None,
    }
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

pub async fn logs(args: LogsBenchArgs) -> anyhow::Result<()> {
    if args.lines == 0 || args.lines > 20_000_000 {
        anyhow::bail!("--lines must be 1..=20000000");
    }
    if args.rate == 0 || args.rate > 2_000_000 {
        anyhow::bail!("--rate must be 1..=2000000");
    }
    if args.seconds == 0 || args.seconds > 600 {
        anyhow::bail!("--seconds must be 1..=600");
    }
    if !(0.0..=100_000.0).contains(&args.ship) {
        anyhow::bail!("--ship must be 0..=100000");
    }
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;

    // 1. In process, one thread.
    let path = dir.path().join("shop.example.access.log");
    let bytes = write_log(&path, args.lines)?;
    let (lines, baseline) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> anyhow::Result<(usize, Duration)> {
            // Twice, to have the file in the page cache for both.
            let mut count = 0;
            let mut best = Duration::MAX;
            for _ in 0..2 {
                let started = thread_cpu();
                count = split_lines(&path)?;
                best = best.min(thread_cpu() - started);
            }
            Ok((count, best))
        }
    })
    .await??;
    let (tail_cpu, shipped, web_samples) = tokio::task::spawn_blocking({
        let path = path.clone();
        let state = dir.path().to_owned();
        let ship = args.ship;
        move || -> anyhow::Result<(Duration, usize, usize)> {
            let config = log_config("bench", &path, ship);
            let mut tail =
                crate::collectors::logs::LogTail::new(&config, &state, Duration::from_secs(1))?;
            let started = thread_cpu();
            let collected = tail.collect()?;
            let cpu = thread_cpu() - started;
            let shipped = collected
                .records
                .iter()
                .filter(|r| r.collector == "logs.bench")
                .count();
            let web = collected
                .records
                .iter()
                .find(|r| r.collector == "web.bench")
                .map_or(0, |r| r.samples.len());
            anyhow::ensure!(
                collected.data["lines"] == lines,
                "the tail read {} lines of {lines}",
                collected.data["lines"]
            );
            anyhow::ensure!(collected.data["unparsed"] == 0, "lines failed to parse");
            Ok((cpu, shipped, web))
        }
    })
    .await??;
    let per_s = |d: Duration| lines as f64 / d.as_secs_f64();
    println!(
        "log       {lines} nginx combined lines, {:.0} MB, in the page cache",
        bytes as f64 / 1e6
    );
    println!(
        "baseline  read + split into lines only: {:.0} lines/s on one core ({:.2} s CPU)",
        per_s(baseline),
        baseline.as_secs_f64()
    );
    println!(
        "tail      read + parse + traffic per vhost + sample {shipped} lines to ship: {:.0} lines/s on one core ({:.2} s CPU), {:.1}x the baseline's time; {web_samples} traffic samples",
        per_s(tail_cpu),
        tail_cpu.as_secs_f64(),
        tail_cpu.as_secs_f64() / baseline.as_secs_f64()
    );

    // 2. A real agent following a log fed at --rate.
    agent_run(&args, dir.path()).await
}

/// Reads `path` and counts its lines, nothing more.
fn split_lines(path: &Path) -> anyhow::Result<usize> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count();
    }
}

async fn agent_run(args: &LogsBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let key = crate::pipeline::registry::new_token();
    let shutdown = CancellationToken::new();
    let config = ControllerConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        data_dir: dir.join("controller"),
        nodes: vec![StaticNode {
            name: crate::model::NodeName::parse("bench-logs").expect("a valid name"),
            key: key.clone(),
            allow: Vec::new(),
            labels: Default::default(),
        }],
        ..ControllerConfig::default()
    };
    let controller = crate::modes::controller::start(config, shutdown.clone()).await?;
    let log = dir.join("fed.access.log");
    std::fs::write(&log, "")?;
    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "[[logs]]\nname = \"bench\"\npaths = [\"{}\"]\nformat = \"combined\"\nvhost = \"$file\"\nfrom_beginning = true\nship_lines_per_second = {}\n\n[collectors.processes]\nenabled = false\n",
            log.display(),
            args.ship
        ),
    )?;
    let exe = std::env::current_exe().context("cannot find the fleet executable")?;
    let agent_log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = tokio::process::Command::new(exe)
        .args([
            "agent",
            "--controller",
            &controller.url,
            "--node",
            "bench-logs",
            "--key",
            &key,
        ])
        .args(["--interval", "1s", "--app-socket", "off", "--config"])
        .arg(&agent_toml)
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .env("FLEET_LOG", "warn")
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the agent")?;
    let pid = agent.id().context("the agent has no pid")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_start = process_cpu(pid)?;
    let rss_idle = process_rss(pid)?;

    // Feed the log in 10 ms steps at the asked rate; read the agent's RSS as it goes.
    let feed = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut written = 0usize;
    let mut file = std::fs::OpenOptions::new().append(true).open(&log)?;
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut rss_max = 0u64;
    let mut last_rss = Instant::now();
    while started.elapsed() < feed {
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as usize;
        chunk.clear();
        while written < due {
            access_line(written, &mut chunk);
            written += 1;
        }
        file.write_all(&chunk)?;
        if last_rss.elapsed() >= Duration::from_millis(500) {
            rss_max = rss_max.max(process_rss(pid)?);
            last_rss = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fed_for = started.elapsed();
    // Let it catch up: its state file says how far it has read.
    let size = std::fs::metadata(&log)?.len();
    let state = dir.join("agent").join("tail-bench.json");
    let caught_up = Instant::now();
    loop {
        rss_max = rss_max.max(process_rss(pid)?);
        let offset = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["files"][0]["offset"].as_u64())
            .unwrap_or(0);
        if offset >= size {
            break;
        }
        if caught_up.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the agent did not catch up within a minute ({offset} of {size} bytes)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = caught_up.elapsed();
    let cpu = process_cpu(pid)? - cpu_start;
    let wall = fed_for + lag;
    // What the controller holds: the shipped lines and the counts of the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shipped = controller
        .durable
        .records("bench-logs", "logs.bench", 10_000_000)
        .await?
        .len();
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    shutdown.cancel();
    controller.wait().await?;
    println!(
        "agent     fed {written} lines in {:.1} s ({:.0} lines/s); caught up {:.2} s after the feed stopped",
        fed_for.as_secs_f64(),
        written as f64 / fed_for.as_secs_f64(),
        lag.as_secs_f64()
    );
    println!(
        "agent     CPU {:.1}% of one core over {:.1} s; peak RSS {:.1} MB (idle before the feed: {:.1} MB)",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        wall.as_secs_f64(),
        rss_max as f64 / (1024.0 * 1024.0),
        rss_idle as f64 / (1024.0 * 1024.0)
    );
    println!(
        "shipped   {shipped} lines reached the store (cap {} lines/s over about {:.0} s); the other {} were counted and sampled out",
        args.ship,
        wall.as_secs_f64(),
        written.saturating_sub(shipped)
    );
    Ok(())
}

/// A process's user + system CPU time, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("the agent process is gone")?;
    // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
    ))
}

/// A process's resident memory in bytes, from `/proc/<pid>/status`.
fn process_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("the agent process is gone")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb * 1024)
}
