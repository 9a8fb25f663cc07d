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
    assert!(
        sent >= 15,
        "3 agents at 10/s for 1 s sent only {sent}:\n{out}"
    );
    assert!(
        out.contains("loss      0 acknowledged batches missing from the store, 0 stored twice"),
        "{out}"
    );
}
