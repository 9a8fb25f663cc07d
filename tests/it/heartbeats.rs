//! Heartbeats and the event log through the API, against SQLite and PostgreSQL: a silent
//! service goes down once and comes back once, a restart loses no deadline, two controllers on
//! one database report each transition once, agents pulse for their nodes, bad input changes
//! nothing. Detection bounds here keep a margin for a loaded machine; the tight figure is the
//! benchmark's (`fleet bench heartbeats`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, Client, Env, InProcess, eventually};

/// Real-time tests allow this much between a deadline and its report.
const MARGIN_MS: i64 = 3000;

async fn controller(env: &Env) -> InProcess {
    let mut config = env.controller_config();
    config.api_tokens = vec!["heartbeat-test-token".into()];
    InProcess::start(config).await
}

async fn pulse(client: &Client, body: serde_json::Value) -> (u16, serde_json::Value) {
    client.post("/api/v1/heartbeats", body.to_string()).await
}

async fn log_event(client: &Client, body: serde_json::Value) -> (u16, serde_json::Value) {
    client.post("/api/v1/events", body.to_string()).await
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

both_backends!(a_silent_service_goes_down_once_and_comes_back_once);
async fn a_silent_service_goes_down_once_and_comes_back_once(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let (status, v) = pulse(
        &client,
        json!({"service": "backup", "next_in": 1, "grace": "1s",
                   "alert": {"channel": "email", "target": "ops@example.com"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["state"], "new");
    assert_eq!(v["recovered"], false);
    let deadline = v["heartbeat"]["deadline_ms"].as_i64().unwrap();
    let pulsed = v["heartbeat"]["last_pulse_ms"].as_i64().unwrap();
    assert_eq!(deadline - pulsed, 2000, "next_in + grace");

    // Past next_in, within the grace: late, not yet down.
    let late = eventually(Duration::from_secs(5), "late", || async {
        let v = state_of(&client, "backup").await;
        (v["state"] != "new").then_some(v)
    })
    .await;
    assert_eq!(late["state"], "late", "{late}");
    assert!(events_of(&client, "backup").await.is_empty());

    let down = eventually(Duration::from_secs(10), "down", || async {
        let v = state_of(&client, "backup").await;
        (v["state"] == "down").then_some(v)
    })
    .await;
    let reported = down["state_since_ms"].as_i64().unwrap();
    assert!(
        (deadline..deadline + MARGIN_MS).contains(&reported),
        "reported at {reported}, deadline {deadline}"
    );
    // Once, however long it stays down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = events_of(&client, "backup").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["level"], 4);
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("backup is down")
    );

    // It pulses again: recovered, once.
    let (_, v) = pulse(&client, json!({"service": "backup", "next_in": "1h"})).await;
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["heartbeat"]["state"], "up");
    let (_, v) = pulse(&client, json!({"service": "backup", "next_in": "1h"})).await;
    assert_eq!(v["recovered"], false, "{v}");
    // The alert route given once is kept.
    assert_eq!(v["heartbeat"]["alert"]["target"], "ops@example.com");
    let events = events_of(&client, "backup").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0]["message"].as_str().unwrap().contains("up again"));

    let (_, alerts) = client.get("/api/v1/alerts").await;
    let kinds: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovered", "down"]);
    assert_eq!(alerts["alerts"][1]["channel"], "email");
    c.stop().await;
}

both_backends!(a_cancelled_service_is_never_reported);
async fn a_cancelled_service_is_never_reported(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let (status, _) = pulse(&client, json!({"service": "cron/nightly", "next_in": 0.5})).await;
    assert_eq!(status, 200);
    let (status, v) = client.delete("/api/v1/heartbeats/cron%2Fnightly").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["state"], "cancelled");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        state_of(&client, "cron%2Fnightly").await["state"],
        "cancelled"
    );
    assert!(events_of(&client, "cron/nightly").await.is_empty());
    let (status, v) = client.delete("/api/v1/heartbeats/nonesuch").await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no heartbeat named"));
    c.stop().await;
}

// Deadlines are durable: one that passed while the controller was down is reported once after
// the restart; one that is still ahead is not.
both_backends!(a_deadline_that_passes_while_the_controller_is_down_is_reported_once_after);
async fn a_deadline_that_passes_while_the_controller_is_down_is_reported_once_after(
    backend: Backend,
) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    for (service, next_in) in [("dies", json!(1)), ("lives", json!("1h"))] {
        let (status, _) = pulse(&client, json!({"service": service, "next_in": next_in})).await;
        assert_eq!(status, 200);
    }
    c.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = controller(&env).await;
    let client = c.client();
    eventually(Duration::from_secs(5), "the missed deadline", || async {
        (state_of(&client, "dies").await["state"] == "down").then_some(())
    })
    .await;
    c.stop().await;
    // And a second restart does not report it again.
    let c = controller(&env).await;
    let client = c.client();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(events_of(&client, "dies").await.len(), 1);
    assert_eq!(state_of(&client, "lives").await["state"], "new");
    assert!(events_of(&client, "lives").await.is_empty());
    c.stop().await;
}

/// Two controllers on one PostgreSQL both watch every deadline; each transition is reported
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_one_database_report_each_transition_once() {
    let env = Env::new(Backend::Engines).await;
    let a = controller(&env).await;
    let b = controller(&env).await;
    let (ca, cb) = (a.client(), b.client());
    let services: Vec<String> = (0..100).map(|i| format!("svc-{i}")).collect();
    for (i, service) in services.iter().enumerate() {
        let client = if i % 2 == 0 { &ca } else { &cb };
        let (status, _) = pulse(client, json!({"service": service, "next_in": 1})).await;
        assert_eq!(status, 200);
    }
    eventually(Duration::from_secs(10), "all down", || async {
        let (_, v) = ca.get("/api/v1/heartbeats").await;
        v["heartbeats"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["state"] == "down")
            .then_some(())
    })
    .await;
    // Back up, through either controller.
    for (i, service) in services.iter().enumerate() {
        let client = if i % 3 == 0 { &ca } else { &cb };
        pulse(client, json!({"service": service, "next_in": "1h"})).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = ca.get("/api/v1/events?limit=1000").await;
    let events = v["events"].as_array().unwrap();
    for service in &services {
        let of: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["service"] == *service).collect();
        assert_eq!(of.len(), 2, "{service}: {of:?}");
    }
    let (_, alerts) = cb.get("/api/v1/alerts").await;
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 200);
    // Both pulsing the same services at once: groups lock rows in one order, claims skip rows
    // being pulsed, so nothing deadlocks and every pulse is stored.
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(0..4000)
        .map(|i| {
            let client = if i % 2 == 0 { &ca } else { &cb };
            let service = format!("svc-{}", (i * 7) % 50);
            async move {
                pulse(client, json!({"service": service, "next_in": 0.3}))
                    .await
                    .0
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).count()
    );
    a.stop().await;
    b.stop().await;
}

// Ten thousand services pulsing at once are all stored and listed.
both_backends!(ten_thousand_services_pulse);
async fn ten_thousand_services_pulse(backend: Backend) {
    use futures::StreamExt;
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..10_000)
        .map(|i| {
            let client = &client;
            async move {
                pulse(
                    client,
                    json!({"service": format!("s{i:05}"), "next_in": "1h"}),
                )
                .await
                .0
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    eprintln!("10,000 pulses in {:?}", started.elapsed());
    let (_, v) = client.get("/api/v1/heartbeats?limit=10000").await;
    let all = v["heartbeats"].as_array().unwrap();
    assert_eq!(all.len(), 10_000);
    assert_eq!(
        v["next_after"], "s09999",
        "a full page says where the next starts"
    );
    let (_, v) = client.get("/api/v1/heartbeats?after=s09997").await;
    assert_eq!(v["heartbeats"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_after"], serde_json::Value::Null);
    assert!(all.iter().all(|h| h["state"] == "new" && h["pulses"] == 1));
    c.stop().await;
}

both_backends!(bad_pulses_and_events_are_refused_and_change_nothing);
async fn bad_pulses_and_events_are_refused_and_change_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let huge = "x".repeat(20_000);
    for (body, words) in [
        (json!({"next_in": 10}).to_string(), "service"),
        (json!({"service": "a"}).to_string(), "next_in"),
        (json!({"service": "a", "next_in": 0}).to_string(), "next_in"),
        (
            json!({"service": "a", "next_in": -3}).to_string(),
            "next_in",
        ),
        (
            json!({"service": "a", "next_in": 1e12}).to_string(),
            "next_in",
        ),
        (
            json!({"service": "a", "next_in": "400d"}).to_string(),
            "next_in",
        ),
        (
            json!({"service": "a", "next_in": "soon"}).to_string(),
            "next_in",
        ),
        (
            json!({"service": "a", "next_in": [1]}).to_string(),
            "next_in",
        ),
        (json!({"service": 5, "next_in": 1}).to_string(), "service"),
        (json!({"service": "", "next_in": 1}).to_string(), "service"),
        (
            json!({"service": huge, "next_in": 1}).to_string(),
            "service",
        ),
        (
            json!({"service": "a", "next_in": 1, "grace": -1}).to_string(),
            "grace",
        ),
        (
            json!({"service": "a", "next_in": 1, "colour": "red"}).to_string(),
            "colour",
        ),
        (
            json!({"service": "a", "next_in": 1, "alert": {"channel": "email"}}).to_string(),
            "alert",
        ),
        ("{not json".to_owned(), "not valid"),
    ] {
        let (status, v) = client.post("/api/v1/heartbeats", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.contains(words), "{body}: {error}");
    }
    for (body, words) in [
        (json!({"service": "a", "level": 3}).to_string(), "message"),
        (
            json!({"level": 3, "message": "m"}).to_string(),
            "service or a node",
        ),
        (
            json!({"service": "a", "level": 9, "message": "m"}).to_string(),
            "level",
        ),
        (
            json!({"service": "a", "level": "loud", "message": "m"}).to_string(),
            "level",
        ),
        (
            json!({"service": "a", "message": huge}).to_string(),
            "limit",
        ),
        (
            json!({"service": "a", "message": "m", "fields": [1]}).to_string(),
            "fields",
        ),
    ] {
        let (status, v) = client.post("/api/v1/events", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(words), "{body}: {v}");
    }
    for query in [
        "level=loud",
        "from=yesterday",
        "limit=0",
        "limit=5000",
        "colour=red",
    ] {
        let (status, v) = client.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {v}");
    }
    // Nothing was stored.
    let (_, v) = client.get("/api/v1/heartbeats").await;
    assert_eq!(v["heartbeats"], json!([]));
    let (_, v) = client.get("/api/v1/events").await;
    assert_eq!(v["events"], json!([]));
    // Without a token: refused.
    let anonymous = Client::new(&c.url, "wrong");
    let (status, _) = pulse(&anonymous, json!({"service": "a", "next_in": 1})).await;
    assert_eq!(status, 401);
    let (status, _) = anonymous.get("/api/v1/events").await;
    assert_eq!(status, 401);
    c.stop().await;
}

both_backends!(events_are_searched_newest_first_with_a_cursor);
async fn events_are_searched_newest_first_with_a_cursor(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let entries = [
        ("web", json!(1), "request served"),
        ("web", json!("warning"), "Slow Request: 2.5 s"),
        ("db", json!("error"), "replication 100% behind"),
        ("db", json!(0), "vacuum done"),
        ("web", json!("critical"), "Out of memory"),
    ];
    for (service, level, message) in entries.clone() {
        let (status, v) = log_event(
            &client,
            json!({"service": service, "level": level, "message": message,
                       "fields": {"pid": 42}}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    let messages = |v: &serde_json::Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, v) = client.get("/api/v1/events?service=web").await;
    assert_eq!(
        messages(&v),
        ["Out of memory", "Slow Request: 2.5 s", "request served"]
    );
    let (_, v) = client.get("/api/v1/events?level=warning").await;
    assert_eq!(
        messages(&v),
        [
            "Out of memory",
            "replication 100% behind",
            "Slow Request: 2.5 s"
        ]
    );
    let (_, v) = client.get("/api/v1/events?q=SLOW%20request").await;
    assert_eq!(messages(&v), ["Slow Request: 2.5 s"]);
    // `%` and `_` are literal in `q`.
    let (_, v) = client.get("/api/v1/events?q=100%25").await;
    assert_eq!(messages(&v), ["replication 100% behind"]);
    let (_, v) = client.get("/api/v1/events?q=_").await;
    assert_eq!(messages(&v), Vec::<String>::new());
    let (_, v) = client.get("/api/v1/events?from=-1h&to=now&level=4").await;
    assert_eq!(messages(&v).len(), 2);
    let (_, v) = client.get("/api/v1/events?service=none").await;
    assert_eq!(messages(&v).len(), 0);
    assert_eq!(
        client.get("/api/v1/events?limit=2").await.1["events"][0]["fields"]["pid"],
        42
    );
    // Pages of two, newest first, each continuing where the last ended.
    let mut seen = Vec::new();
    let mut path = "/api/v1/events?limit=2".to_owned();
    loop {
        let (_, v) = client.get(&path).await;
        seen.extend(messages(&v));
        match v["next_before"].as_i64() {
            Some(id) => path = format!("/api/v1/events?limit=2&before={id}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = entries.iter().map(|e| e.2.to_owned()).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    c.stop().await;
}

/// An agent's batches pulse `node:<name>`, with the spine's down rule as the deadline; when the
/// agent stops, the node is reported down, and recovered when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_pulse_for_their_nodes_and_a_stopped_agent_is_reported_down() {
    let env = Env::new(Backend::Embedded).await;
    let key = crate::harness::enroll(&env, "web1");
    let mut config = env.controller_config();
    config.api_tokens = vec!["heartbeat-test-token".into()];
    config.status.down_after = Duration::from_secs(2);
    let c = InProcess::start(config).await;
    let client = c.client();
    let agent_args = |run: usize| -> Vec<String> {
        [
            "agent",
            "--controller",
            &c.url,
            "--node",
            "web1",
            "--key",
            &key,
            "--interval",
            "100ms",
            "--data-dir",
            &env.dir
                .path()
                .join(format!("agent-{run}"))
                .display()
                .to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let mut agent =
        crate::harness::Process::spawn(&agent_args(1), &env.dir.path().join("agent-1.log"));
    let beat = eventually(Duration::from_secs(15), "the node's heartbeat", || async {
        let (status, v) = client.get("/api/v1/heartbeats/node:web1").await;
        (status == 200).then_some(v)
    })
    .await;
    assert_eq!(beat["node"], "web1");
    assert_eq!(beat["next_in_ms"], 2000, "max(down_after, 10 × interval)");
    agent.kill();
    let stopped = Instant::now();
    eventually(Duration::from_secs(10), "the node down", || async {
        (state_of(&client, "node:web1").await["state"] == "down").then_some(())
    })
    .await;
    assert!(stopped.elapsed() >= Duration::from_millis(1500));
    let (_, v) = client.get("/api/v1/events?node=web1").await;
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["events"][0]["service"], "node:web1");
    let _agent =
        crate::harness::Process::spawn(&agent_args(2), &env.dir.path().join("agent-2.log"));
    eventually(Duration::from_secs(10), "the node up again", || async {
        (state_of(&client, "node:web1").await["state"] == "up").then_some(())
    })
    .await;
    let (_, v) = client.get("/api/v1/events?node=web1").await;
    assert!(
        v["events"][0]["message"]
            .as_str()
            .unwrap()
            .contains("up again"),
        "{v}"
    );
}

/// `fleet pulse` (as an operator and as a node), `fleet run --heartbeat`, `fleet events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_run_and_events_from_the_command_line() {
    let env = Env::new(Backend::Embedded).await;
    let key = crate::harness::enroll(&env, "db1");
    let c = controller(&env).await;
    let client = c.client();
    let fleet = |args: &[&str], as_node: bool| {
        let mut proc = std::process::Command::new(crate::harness::FLEET);
        proc.args(args)
            .env("FLEET_CONTROLLER", &c.url)
            .env_remove("FLEET_API_TOKEN")
            .env_remove("FLEET_NODE")
            .env_remove("FLEET_NODE_KEY");
        if as_node {
            proc.env("FLEET_NODE", "db1").env("FLEET_NODE_KEY", &key);
        } else {
            proc.env("FLEET_API_TOKEN", "heartbeat-test-token");
        }
        let out = proc.output().expect("run fleet");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = fleet(
        &[
            "pulse",
            "backup",
            "--next-in",
            "10m",
            "--alert",
            "email:ops@example.com",
        ],
        false,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("backup: new; down unless it pulses again by "),
        "{out}"
    );
    let v = state_of(&client, "backup").await;
    assert_eq!(v["next_in_ms"], 600_000);
    assert_eq!(v["alert"]["channel"], "email");

    // A node signs its own pulses, and speaks only for itself.
    let (code, _, err) = fleet(&["pulse", "db1-dump", "--next-in", "1d"], true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state_of(&client, "db1-dump").await["node"], "db1");
    let (code, _, err) = fleet(&["pulse", "x", "--next-in", "1d"], false);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fleet(&["pulse", "y", "--next-in", "0s"], false);
    assert_ne!(code, 0);
    assert!(err.contains("next_in"), "{err}");

    // `fleet run`: success pulses; failure signals fail, with the exit status and the
    // output's tail (heartbeat_signals.rs has the rest of the signals).
    let (code, out, err) = fleet(
        &[
            "run",
            "--heartbeat",
            "nightly",
            "--next-in",
            "1d",
            "--",
            "sh",
            "-c",
            "echo all good",
        ],
        true,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "all good\n", "the command's output passes through");
    assert_eq!(state_of(&client, "nightly").await["pulses"], 1);
    let (code, _, err) = fleet(
        &[
            "run",
            "--heartbeat",
            "nightly",
            "--next-in",
            "1d",
            "--",
            "sh",
            "-c",
            "echo disk full >&2; exit 3",
        ],
        true,
    );
    assert_eq!(code, 3);
    assert!(err.contains("disk full"), "{err}");
    let v = state_of(&client, "nightly").await;
    assert_eq!(v["pulses"], 1, "no pulse on failure");
    assert_eq!(v["state"], "down", "a failure is down at once");
    let events = events_of(&client, "nightly").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["level"], 4);
    assert_eq!(events[0]["node"], "db1");
    assert_eq!(events[0]["fields"]["exit_status"], 3);
    assert!(
        events[0]["fields"]["output"]
            .as_str()
            .unwrap()
            .contains("disk full")
    );

    let (code, out, err) = fleet(&["events", "--service", "nightly"], false);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ERROR") && out.contains("db1/nightly") && out.contains("exit status 3"),
        "{out}"
    );
    let (code, _, err) = fleet(&["events"], true);
    assert_ne!(code, 0, "reading is for operators");
    assert!(err.contains("operator token"), "{err}");

    // --follow prints what is written after it started.
    let mut follower = std::process::Command::new(crate::harness::FLEET)
        .args(["events", "--follow", "--service", "live", "--json"])
        .env("FLEET_CONTROLLER", &c.url)
        .env("FLEET_API_TOKEN", "heartbeat-test-token")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    for i in 0..3 {
        let (status, _) = log_event(
            &client,
            json!({"service": "live", "message": format!("m{i}")}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a followed event");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        got.push(v["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
    let _ = follower.kill();
    let _ = follower.wait();
}

/// Issue 14, point 10: `fleet events` printed an event's escape sequences as they were, so
/// whoever could log an event could retitle the operator's terminal, clear it, or forge lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_fleet_events_shows_escape_sequences_instead_of_obeying_them() {
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env).await;
    let client = c.client();
    let hostile =
        "\x1b]0;pwned\x07\x1b[2Jcleared\r\n2026-01-01T00:00:00Z  EMERGENCY web1  \u{9b}forged";
    let fleet = |args: &[&str]| {
        let mut proc = std::process::Command::new(crate::harness::FLEET);
        proc.args(args)
            .env("FLEET_CONTROLLER", &c.url)
            .env("FLEET_API_TOKEN", "heartbeat-test-token");
        proc
    };
    let obeyed = |text: &str| text.chars().any(|c| c.is_control() && c != '\n');
    let (status, v) = log_event(&client, json!({"service": "hostile", "message": hostile})).await;
    assert_eq!(status, 201, "{v}");

    let out = fleet(&["events", "--service", "hostile"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !obeyed(&text),
        "a control character reached the terminal: {text:?}"
    );
    assert_eq!(text.lines().count(), 1, "one event, one line: {text:?}");
    assert!(
        text.contains("\\x1b]0;pwned\\x07\\x1b[2Jcleared\\r\\n2026-01-01T00:00:00Z  EMERGENCY web1  \\u{9b}forged"),
        "{text:?}"
    );

    // As JSON: the same message once decoded, with no control character in the text itself.
    let out = fleet(&["events", "--service", "hostile", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!obeyed(&text), "{text:?}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["message"], hostile);

    // Followed: the same.
    let mut follower = fleet(&["events", "--follow", "--service", "hostile", "--limit", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stored event");
    assert!(first.contains("pwned"), "{first:?}");
    let (status, _) = log_event(
        &client,
        json!({"service": "hostile", "message": "\x1b[31mred"}),
    )
    .await;
    assert_eq!(status, 201);
    let followed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed event");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed.ends_with("\\x1b[31mred"), "{followed:?}");
    assert!(!obeyed(&followed), "{followed:?}");
}

// The SSE stream resumes after `Last-Event-ID`: nothing missed, nothing repeated.
both_backends!(the_stream_resumes_after_the_last_event_id);
async fn the_stream_resumes_after_the_last_event_id(backend: Backend) {
    let env = Env::new(backend).await;
    let c = controller(&env).await;
    let client = c.client();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, v) = log_event(&client, json!({"service": "s", "message": format!("m{i}")})).await;
        ids.push(v["id"].as_i64().unwrap());
    }
    let mut response = client
        .http
        .get(format!("{}/api/v1/stream?kinds=events", c.url))
        .bearer_auth(&client.token)
        .header("last-event-id", ids[1].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.matches("data:").count() < 3 && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(2), response.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let sent: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().parse().unwrap())
        .collect();
    assert_eq!(sent, ids[2..].to_vec(), "{text}");
    assert!(text.contains("\"message\":\"m2\""));
    let (status, v) = client.get("/api/v1/stream?kinds=gossip").await;
    assert_eq!(status, 400, "{v}");
    // An open stream does not hold the controller at shutdown.
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), c.stop())
        .await
        .expect("the controller stops with a stream open");
    assert!(stopping.elapsed() < Duration::from_secs(15));
    drop(response);
}

/// On PostgreSQL a rolled-back insert leaves a hole in the event ids; a follower resuming
/// across old holes does not wait at each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_does_not_wait_at_old_holes_in_the_ids() {
    let env = Env::new(Backend::Engines).await;
    let c = controller(&env).await;
    let client = c.client();
    let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();
    for i in 0..4 {
        log_event(
            &client,
            json!({"service": "holes", "message": format!("m{i}")}),
        )
        .await;
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (ts, level, message, fields, category) VALUES (0, 1, 'x', '{}', 'event')",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    log_event(&client, json!({"service": "holes", "message": "last"})).await;
    // Old enough that the holes cannot be commits in flight.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let started = Instant::now();
    let mut response = client
        .http
        .get(format!("{}/api/v1/stream?service=holes", c.url))
        .bearer_auth(&client.token)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\"last\"") && started.elapsed() < Duration::from_secs(15) {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(1), response.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert_eq!(text.matches("data:").count(), 5, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} across 4 old holes",
        started.elapsed()
    );
    pool.close().await;
}

// Events older than the retention go (and their alerts); newer ones stay.
both_backends!(events_past_their_retention_are_deleted);
async fn events_past_their_retention_are_deleted(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.api_tokens = vec!["heartbeat-test-token".into()];
    config.retention.events = Duration::from_secs(86_400);
    config.retention.sweep_interval = Duration::from_millis(200);
    let store = env.store().await;
    let old = fleet::store::events::NewEvent {
        node: None,
        service: Some("old".into()),
        level: 1,
        message: "long ago".into(),
        fields: json!({}),
        category: "event",
    };
    store
        .add_event(&old, fleet::timefmt::now_ms() - 2 * 86_400_000)
        .await
        .unwrap();
    let c = InProcess::start(config).await;
    let client = c.client();
    log_event(&client, json!({"service": "new", "message": "just now"})).await;
    eventually(Duration::from_secs(10), "the old event to go", || async {
        events_of(&client, "old").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(events_of(&client, "new").await.len(), 1);
    c.stop().await;
}

/// A controller that was away longer than an agent's deadline does not report the live agent
/// down when it returns: the agent's batches failed, not the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_outage_does_not_report_live_agents_down() {
    let env = Env::new(Backend::Embedded).await;
    let key = crate::harness::enroll(&env, "web2");
    let port = crate::harness::free_port();
    let config = || {
        let mut config = env.controller_config();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.api_tokens = vec!["heartbeat-test-token".into()];
        config.status.down_after = Duration::from_secs(2);
        config
    };
    let c = InProcess::start(config()).await;
    let url = c.url.clone();
    let _agent = crate::harness::Process::spawn(
        &[
            "agent",
            "--controller",
            &url,
            "--node",
            "web2",
            "--key",
            &key,
            "--interval",
            "100ms",
            "--data-dir",
            &env.dir.path().join("agent").display().to_string(),
        ]
        .map(String::from),
        &env.dir.path().join("agent.log"),
    );
    let client = c.client();
    eventually(Duration::from_secs(15), "the node's heartbeat", || async {
        let (status, v) = client.get("/api/v1/heartbeats/node:web2").await;
        (status == 200).then_some(v)
    })
    .await;
    c.stop().await;
    // Away for longer than the node's deadline (2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = InProcess::start(config()).await;
    let client = c.client();
    eventually(Duration::from_secs(40), "the agent back", || async {
        let v = state_of(&client, "node:web2").await;
        (v["pulses"].as_i64().unwrap() > 1 && v["state"] == "up").then_some(())
    })
    .await;
    let (_, v) = client.get("/api/v1/events?node=web2").await;
    assert_eq!(v["events"], json!([]), "no down, no recovery");
    c.stop().await;
}
