//! `fleet bench ingest` itself: a short run against a controller it starts reads every batch
//! back from the store and finds none missing.

use crate::harness::run_fleet;

#[test]
fn bench_ingest_runs_and_checks_loss_from_the_store() {
    let args: Vec<String> = [
        "bench",
        "ingest",
        "--agents",
        "3",
        "--interval",
        "100ms",
        "--duration",
        "1s",
        "--samples",
        "5",
    ]
    .map(String::from)
    .to_vec();
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{out}\n{err}");
    let sent: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("sent"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `sent` line in:\n{out}"));
    // How many go out in a second depends on the machine's load (tests run side by side);
    // what must hold is that each agent sent, and that nothing acknowledged is missing.
    assert!(sent >= 3, "3 agents for 1 s sent only {sent}:\n{out}");
    assert!(
        out.contains("loss      0 acknowledged batches missing from the store, 0 stored twice"),
        "{out}"
    );
}

/// `fleet bench commands` over both buses: every phase completes (the benchmark itself fails if
/// any command did not succeed) and every figure is printed.
#[test]
fn bench_commands_runs_over_both_buses() {
    for bus in ["nats", "http"] {
        let args: Vec<String> = [
            "bench", "commands", "--bus", bus, "--nodes", "3", "--count", "30", "--fanout", "20",
        ]
        .map(String::from)
        .to_vec();
        let (ok, out, err) = run_fleet(&args);
        assert!(ok, "{bus}: {out}\n{err}");
        for line in [
            "latency   p50",
            "throughput 30 commands",
            "fan-out   1 command to 20 nodes",
            "floor     NATS request/reply",
            "floor     fsync",
        ] {
            assert!(out.contains(line), "{bus}: no {line:?} in:\n{out}");
        }
    }
}

/// `fleet bench heartbeats` end to end at a small size: it fails by itself when a silent service
/// is not reported or a pulsing one is, so success means both held.
#[test]
fn bench_heartbeats_runs_and_checks_every_missed_deadline() {
    let args: Vec<String> = [
        "bench",
        "heartbeats",
        "--services",
        "300",
        "--interval",
        "2s",
        "--missed",
        "30",
    ]
    .map(String::from)
    .to_vec();
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("pulses    300 accepted"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("detection"))
        .unwrap_or_else(|| panic!("no detection line in:\n{out}"));
    assert!(
        line.contains("with 300 services watched and 270 pulsing"),
        "{line}"
    );
}

/// `fleet bench logs`: the in-process tail reads every generated line (it fails otherwise) and
/// a real agent follows a fed log to its end; every figure is printed.
#[test]
fn bench_logs_runs_and_the_agent_catches_up() {
    let args: Vec<String> = [
        "bench",
        "logs",
        "--lines",
        "20000",
        "--rate",
        "2000",
        "--seconds",
        "1",
        "--ship",
        "50",
    ]
    .map(String::from)
    .to_vec();
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{out}\n{err}");
    for line in [
        "baseline",
        "tail      ",
        "caught up",
        "peak RSS",
        "reached the store",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let shipped: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("shipped"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `shipped` line in:\n{out}"));
    assert!(shipped > 0, "some lines are shipped:\n{out}");
}

/// `fleet bench dashboard` seeds a node with everything an agent sends and measures its page at
/// every range: a short run renders every page (the benchmark fails on any error answer).
#[test]
fn bench_dashboard_runs_with_every_collector_seeded() {
    let args: Vec<String> = [
        "bench",
        "dashboard",
        "--nodes",
        "3",
        "--days",
        "1",
        "--interval",
        "5min",
        "--requests",
        "2",
    ]
    .map(String::from)
    .to_vec();
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("records of 10 collectors"), "{out}");
    for page in ["node page, 1h", "node page, 24h", "node page, 7d"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(page))
            .unwrap_or_else(|| panic!("no `{page}` line in:\n{out}"));
        let bytes: u64 = line
            .split_whitespace()
            .last()
            .and_then(|b| b.parse().ok())
            .unwrap_or_default();
        // Six host charts, traffic, checks, processes, log lines, the app and other series:
        // far more than the host charts alone.
        assert!(bytes > 50_000, "{page} is only {bytes} bytes:\n{out}");
    }
}
