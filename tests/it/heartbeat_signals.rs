//! Issue 16, point 7: the signals around a job's run, as Healthchecks users know them. A fail
//! takes a heartbeat down at once (creating it if need be) with the exit status and the output's
//! end in its event, and the next success recovers it; a start with a max runtime catches a
//! hung job through the monitor's deadlines. Through the API on both engines, and `fleet run` /
//! `fleet pulse` as real processes. (Over NATS: nats.rs, `pulses_and_events_travel_over_nats_too`.)

use std::time::Duration;

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, Client, Env, InProcess, eventually};

/// Real-time tests allow this much between a deadline and its report (a loaded machine).
const MARGIN_MS: i64 = 3000;

async fn controller(env: &Env) -> InProcess {
    let mut config = env.controller_config();
    config.api_tokens = vec!["signal-test-token".into()];
    InProcess::start(config).await
}

async fn pulse(client: &Client, body: serde_json::Value) -> (u16, serde_json::Value) {
    client.post("/api/v1/heartbeats", body.to_string()).await
}

async fn events_of(client: &Client, service: &str) -> Vec<serde_json::Value> {
    let (status, v) = client
        .get(&format!("/api/v1/events?service={service}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

async fn state_of(client: &Client, service: &str) -> serde_json::Value {
    let (status, v) = client.get(&format!("/api/v1/heartbeats/{service}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The kinds of the alerts raised for `service`, newest first.
async fn alerts_of(client: &Client, service: &str) -> Vec<String> {
    let (status, v) = client.get("/api/v1/alerts").await;
    assert_eq!(status, 200, "{v}");
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["subject"] == service)
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(a_fail_is_down_at_once_with_what_it_said_and_a_success_recovers_it);
async fn a_fail_is_down_at_once_with_what_it_said_and_a_success_recovers_it(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let (status, v) = pulse(
        &client,
        json!({"service": "backup", "next_in": "1h",
               "alert": {"channel": "email", "target": "ops@example.com"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Down in the answer itself: no deadline to wait for.
    let (status, v) = pulse(
        &client,
        json!({"service": "backup", "next_in": "1h", "signal": "fail",
               "exit_status": 3, "output": "copying…\ndisk full\n"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["state"], "down", "{v}");
    assert_eq!(v["recovered"], false);
    assert_eq!(v["heartbeat"]["pulses"], 1, "a fail is not a pulse");
    let events = events_of(&client, "backup").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["level"], 4);
    assert_eq!(events[0]["message"], "backup failed with exit status 3");
    assert_eq!(events[0]["fields"]["heartbeat"], "down");
    assert_eq!(events[0]["fields"]["signal"], "fail");
    assert_eq!(events[0]["fields"]["exit_status"], 3);
    assert_eq!(events[0]["fields"]["output"], "copying…\ndisk full\n");
    assert_eq!(alerts_of(&client, "backup").await, ["down"]);

    // Failing again while down is logged (with its own output's end), never raised twice; a
    // long output keeps its last 4 KiB.
    let long = format!("{}THE END", "x".repeat(20_000));
    let (status, v) = pulse(
        &client,
        json!({"service": "backup", "next_in": "1h", "signal": "fail",
               "exit_status": 1, "output": long}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["state"], "down");
    let events = events_of(&client, "backup").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["fields"]["heartbeat"], "failed");
    let kept = events[0]["fields"]["output"].as_str().unwrap();
    assert_eq!(kept.len(), 4096);
    assert!(kept.ends_with("THE END"), "the end is kept");
    assert_eq!(alerts_of(&client, "backup").await, ["down"]);

    // The next success is the usual recovery: once, with its event and alert.
    let (_, v) = pulse(&client, json!({"service": "backup", "next_in": "1h"})).await;
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["heartbeat"]["state"], "up");
    let (_, v) = pulse(&client, json!({"service": "backup", "next_in": "1h"})).await;
    assert_eq!(v["recovered"], false, "{v}");
    let events = events_of(&client, "backup").await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("backup is up again")
    );
    assert_eq!(alerts_of(&client, "backup").await, ["recovered", "down"]);
    c.stop().await;
}

both_backends!(a_fail_for_an_unknown_service_creates_it_down);
async fn a_fail_for_an_unknown_service_creates_it_down(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    // A job whose very first run fails is seen at once.
    let (status, v) = pulse(
        &client,
        json!({"service": "first-run", "next_in": "1d", "signal": "fail", "exit_status": 127}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["state"], "down", "{v}");
    assert_eq!(v["heartbeat"]["pulses"], 0);
    assert_eq!(state_of(&client, "first-run").await["state"], "down");
    let events = events_of(&client, "first-run").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["heartbeat"], "down");
    assert_eq!(events[0]["fields"]["exit_status"], 127);
    assert_eq!(alerts_of(&client, "first-run").await, ["down"]);

    let (_, v) = pulse(&client, json!({"service": "first-run", "next_in": "1d"})).await;
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["heartbeat"]["state"], "up");
    assert_eq!(events_of(&client, "first-run").await.len(), 2);
    c.stop().await;
}

both_backends!(a_started_run_that_outlives_its_max_runtime_is_down);
async fn a_started_run_that_outlives_its_max_runtime_is_down(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let (status, v) = pulse(
        &client,
        json!({"service": "etl", "next_in": "1h", "signal": "start", "max_runtime": 1}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let beat = &v["heartbeat"];
    assert_eq!(beat["state"], "new", "a start changes no state: {v}");
    let started = beat["started_ms"].as_i64().expect("the run is timed");
    let run_deadline = beat["run_deadline_ms"].as_i64().unwrap();
    assert_eq!(run_deadline - started, 1000);
    assert_eq!(
        beat["deadline_ms"], run_deadline,
        "the earlier deadline rules"
    );

    let down = eventually(Duration::from_secs(10), "the hung run down", || async {
        let v = state_of(&client, "etl").await;
        (v["state"] == "down").then_some(v)
    })
    .await;
    let reported = down["state_since_ms"].as_i64().unwrap();
    assert!(
        (run_deadline..run_deadline + MARGIN_MS).contains(&reported),
        "reported at {reported}, run deadline {run_deadline}"
    );
    let events = events_of(&client, "etl").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains("etl is down") && message.contains("did not finish within 1s"),
        "{message}"
    );
    assert_eq!(events[0]["fields"]["heartbeat"], "down");
    assert_eq!(events[0]["fields"]["signal"], "start");
    assert_eq!(events[0]["fields"]["max_runtime_ms"], 1000);
    assert_eq!(alerts_of(&client, "etl").await, ["down"]);

    // The hung job finally finishes: recovered, its run over.
    let (_, v) = pulse(&client, json!({"service": "etl", "next_in": "1h"})).await;
    assert_eq!(v["recovered"], true, "{v}");
    assert!(v["heartbeat"]["run_deadline_ms"].is_null(), "{v}");
    c.stop().await;
}

both_backends!(a_run_that_succeeds_in_time_stays_up);
async fn a_run_that_succeeds_in_time_stays_up(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let (status, _) = pulse(&client, json!({"service": "job", "next_in": "1h"})).await;
    assert_eq!(status, 200);
    let (status, v) = pulse(
        &client,
        json!({"service": "job", "next_in": "1h", "signal": "start", "max_runtime": 1.5}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let run_deadline = v["heartbeat"]["run_deadline_ms"].as_i64().unwrap();
    // A sentinel due after the run's deadline: once it is reported, the monitor has looked
    // past that deadline.
    let (status, _) = pulse(&client, json!({"service": "sentinel", "next_in": 2.5})).await;
    assert_eq!(status, 200);
    let (status, v) = pulse(&client, json!({"service": "job", "next_in": "1h"})).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        fleet::timefmt::now_ms() < run_deadline,
        "the success came in time"
    );
    assert_eq!(v["heartbeat"]["state"], "up", "{v}");
    assert!(v["heartbeat"]["started_ms"].is_null(), "{v}");
    assert!(v["heartbeat"]["run_deadline_ms"].is_null(), "{v}");
    let deadline = v["heartbeat"]["deadline_ms"].as_i64().unwrap();
    assert!(deadline > run_deadline + 3_000_000, "the period's deadline");

    eventually(Duration::from_secs(10), "the sentinel down", || async {
        (state_of(&client, "sentinel").await["state"] == "down").then_some(())
    })
    .await;
    assert!(fleet::timefmt::now_ms() > run_deadline);
    assert_eq!(state_of(&client, "job").await["state"], "up");
    assert!(events_of(&client, "job").await.is_empty(), "no down event");
    assert!(alerts_of(&client, "job").await.is_empty());
    c.stop().await;
}

both_backends!(signals_with_fields_of_another_signal_are_refused_and_change_nothing);
async fn signals_with_fields_of_another_signal_are_refused_and_change_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    for (body, says) in [
        (
            json!({"service": "s", "next_in": 60, "max_runtime": 10}),
            "max_runtime",
        ),
        (
            json!({"service": "s", "next_in": 60, "signal": "fail", "max_runtime": 10}),
            "max_runtime",
        ),
        (
            json!({"service": "s", "next_in": 60, "exit_status": 1}),
            "exit_status",
        ),
        (
            json!({"service": "s", "next_in": 60, "signal": "start", "output": "x"}),
            "output",
        ),
        (
            json!({"service": "s", "next_in": 60, "signal": "start", "max_runtime": 0}),
            "max_runtime",
        ),
        (
            json!({"service": "s", "next_in": 60, "signal": "start", "max_runtime": "soon"}),
            "max_runtime",
        ),
        (
            json!({"service": "s", "next_in": 60, "signal": "stop"}),
            "stop",
        ),
        (
            json!({"service": "node:web1", "next_in": 60, "signal": "fail"}),
            "service",
        ),
    ] {
        let (status, v) = pulse(&client, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.contains(says), "{body}: {error}");
    }
    let (status, v) = client.get("/api/v1/heartbeats/s").await;
    assert_eq!(status, 404, "nothing was created: {v}");
    let (_, v) = client.get("/api/v1/heartbeats").await;
    assert_eq!(v["heartbeats"], json!([]));
    c.stop().await;
}

/// `fleet run` sends start before its command and success or fail after it; `fleet pulse
/// --start/--fail` send them by hand; the owner rule holds for both. Real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_run_brackets_its_command_with_start_and_success_or_fail() {
    let env = Env::new(Backend::Embedded).await;
    let key = crate::harness::enroll(&env, "db1");
    let other_key = crate::harness::enroll(&env, "db2");
    let c = controller(&env).await;
    let client = c.client();
    let dir = env.dir.path().to_owned();
    let fleet = |args: &[&str], node: (&str, &str)| {
        let mut proc = std::process::Command::new(crate::harness::FLEET);
        proc.args(args)
            .current_dir(&dir)
            .env("FLEET_CONTROLLER", &c.url)
            .env_remove("FLEET_API_TOKEN")
            .env("FLEET_NODE", node.0)
            .env("FLEET_NODE_KEY", node.1);
        proc
    };
    let output = |mut proc: std::process::Command| {
        let out = proc.output().expect("run fleet");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The command waits for a file, so the run is seen in progress: the start came first.
    let waits_for = |file: &str| format!("while [ ! -e {file} ]; do sleep 0.05; done; echo done");
    let script = waits_for("go");
    let running = fleet(
        &[
            "run",
            "--heartbeat",
            "nightly",
            "--next-in",
            "1d",
            "--max-runtime",
            "5m",
            "--",
            "sh",
            "-c",
            &script,
        ],
        ("db1", &key),
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let started = eventually(Duration::from_secs(15), "the start", || async {
        let (status, v) = client.get("/api/v1/heartbeats/nightly").await;
        (status == 200).then_some(v)
    })
    .await;
    assert_eq!(started["state"], "new", "{started}");
    assert_eq!(started["node"], "db1");
    assert_eq!(started["pulses"], 0);
    let run_deadline = started["run_deadline_ms"].as_i64().expect("timed");
    assert_eq!(
        run_deadline - started["started_ms"].as_i64().unwrap(),
        300_000
    );
    std::fs::write(dir.join("go"), "").unwrap();
    let status = tokio::task::spawn_blocking(move || running.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout), "done\n");
    let v = state_of(&client, "nightly").await;
    assert_eq!(v["state"], "up", "{v}");
    assert_eq!(v["pulses"], 1);
    assert!(v["run_deadline_ms"].is_null(), "the run is over: {v}");

    // A failing run: down at once, with its exit status and the end of its output.
    let (code, _, err) = output(fleet(
        &[
            "run",
            "--heartbeat",
            "nightly",
            "--next-in",
            "1d",
            "--",
            "sh",
            "-c",
            "echo copying; echo disk full >&2; exit 3",
        ],
        ("db1", &key),
    ));
    assert_eq!(code, 3, "exits as the command did: {err}");
    assert!(
        err.contains("disk full"),
        "the output passes through: {err}"
    );
    let v = state_of(&client, "nightly").await;
    assert_eq!(v["state"], "down", "{v}");
    let events = events_of(&client, "nightly").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["node"], "db1");
    assert_eq!(events[0]["fields"]["exit_status"], 3);
    let tail = events[0]["fields"]["output"].as_str().unwrap();
    assert!(
        tail.contains("copying") && tail.contains("disk full"),
        "{tail}"
    );

    // Another node may not fail (or start) db1's heartbeat.
    for signal in ["--fail", "--start"] {
        let (code, _, err) = output(fleet(
            &["pulse", "nightly", "--next-in", "1d", signal],
            ("db2", &other_key),
        ));
        assert_ne!(code, 0, "{signal}");
        assert!(err.contains("belongs to node db1"), "{signal}: {err}");
    }

    // A hung run (max runtime 1 s) is down while it still runs; when it ends well, it recovers.
    let script = waits_for("go2");
    let mut hung = fleet(
        &[
            "run",
            "--heartbeat",
            "hangs",
            "--next-in",
            "1d",
            "--max-runtime",
            "1s",
            "--",
            "sh",
            "-c",
            &script,
        ],
        ("db1", &key),
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let events = eventually(Duration::from_secs(15), "the hung run down", || async {
        let (status, v) = client.get("/api/v1/heartbeats/hangs").await;
        if status == 200 && v["state"] == "down" {
            Some(events_of(&client, "hangs").await)
        } else {
            None
        }
    })
    .await;
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1s"),
        "{events:?}"
    );
    std::fs::write(dir.join("go2"), "").unwrap();
    let status = tokio::task::spawn_blocking(move || hung.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(state_of(&client, "hangs").await["state"], "up");
    assert!(
        events_of(&client, "hangs").await[0]["message"]
            .as_str()
            .unwrap()
            .contains("up again")
    );

    // By hand: a fail for a service nobody pulsed yet, and a timed start.
    let (code, out, err) = output(fleet(
        &[
            "pulse",
            "manual",
            "--next-in",
            "1d",
            "--fail",
            "--exit-status",
            "2",
            "--output",
            "it broke",
        ],
        ("db1", &key),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("manual: down;"), "{out}");
    let events = events_of(&client, "manual").await;
    assert_eq!(events[0]["fields"]["exit_status"], 2);
    assert_eq!(events[0]["fields"]["output"], "it broke");
    let (code, out, err) = output(fleet(
        &[
            "pulse",
            "manual",
            "--next-in",
            "1d",
            "--start",
            "--max-runtime",
            "10m",
        ],
        ("db1", &key),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("manual: down;"),
        "a start changes no state: {out}"
    );
    let v = state_of(&client, "manual").await;
    assert_eq!(
        v["run_deadline_ms"].as_i64().unwrap() - v["started_ms"].as_i64().unwrap(),
        600_000
    );
    c.stop().await;
}
