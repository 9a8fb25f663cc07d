//! The NATS bus with a real nats-server (JetStream): commands from the API and straight from
//! `fleet send --nats-url`, both recorded by the controller; a node that is away; telemetry
//! over NATS into the same ingest pipeline. Each test has its own subject prefix and streams.

use std::time::Duration;

use fleet::command::Method;

use crate::commands::{Rig, lines, thousand_to_ten};
use crate::harness::{Backend, enroll, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_straight_to_nats_is_run_answered_and_audited() {
    let rig = Rig::with_bus(Backend::Embedded, true).await;
    let key = enroll(&rig.env, "db.eu-1");
    let marker = rig.env.dir.path().join("ran");
    let config = rig.agent_config("db.eu-1", &["sh -c **"], "");
    let _agent = rig.start_agent("db.eu-1", &key, &config, 1);

    let script = format!("echo ran >> {}; echo over-nats", marker.display());
    let (code, out, err) = rig.send(&[
        "--nats-url",
        crate::commands::NATS_URL,
        "--node",
        "db.eu-1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "over-nats\n");
    assert_eq!(lines(&marker), vec!["ran"]);

    // The controller saw it on the stream although it bypassed the API, and the outcome too.
    let v = eventually(Duration::from_secs(15), "the audit record", || async {
        let v = rig.api_get("/api/v1/commands?node=db.eu-1").await;
        (v["commands"][0]["state"] == "succeeded").then_some(v)
    })
    .await;
    assert_eq!(v["commands"][0]["via"], "nats");
    assert!(
        v["commands"][0]["sent_by"]
            .as_str()
            .unwrap()
            .starts_with("key ed25519:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_away_node_gets_its_commands_from_the_stream_when_it_starts() {
    let rig = Rig::with_bus(Backend::Engines, true).await;
    let key = enroll(&rig.env, "away");
    let first = rig.command("away", Method::Echo, &["one"]);
    let second = rig.command("away", Method::TextLogging, &["two"]);
    let (status, body) = rig.submit(&[first.clone(), second.clone()]).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rig.api_get(&format!("/api/v1/commands/{}", first.command.id))
            .await["state"],
        "queued"
    );
    // Telemetry over NATS as well: the batch reaches the same ledger.
    let config = rig.agent_config("away", &[], "");
    let config_text = std::fs::read_to_string(&config).unwrap() + "telemetry = true\n";
    std::fs::write(&config, config_text).unwrap();
    let _agent = rig.start_agent("away", &key, &config, 1);
    let v = rig.wait_state(&first.command.id, "succeeded").await;
    assert_eq!(v["result"]["stdout"], "one");
    rig.wait_state(&second.command.id, "succeeded").await;
    assert_eq!(
        lines(&rig.agent_dir("away").join("events.log"))
            .iter()
            .filter(|l| l.ends_with(" two"))
            .count(),
        1
    );
    let store = rig.env.store().await;
    eventually(Duration::from_secs(15), "a batch over NATS", || async {
        (!store.ledger("away").await.unwrap().is_empty()).then_some(())
    })
    .await;
}

/// A command already on the stream cannot be withdrawn: it is stopped on its node by a signed
/// Cancel, whether sent through the controller or straight onto NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_commands_are_cancelled_through_the_api_and_straight_over_nats() {
    let rig = Rig::with_bus(Backend::Embedded, true).await;
    let key = enroll(&rig.env, "slow");
    let config = rig.agent_config("slow", &["sleep *"], "");
    let _agent = rig.start_agent("slow", &key, &config, 1);

    let (code, out, err) = rig.send(&["--node", "slow", "--no-wait", "--", "sleep", "30"]);
    assert_eq!(code, 0, "{err}");
    let through_api = out.trim().to_owned();
    rig.wait_state(&through_api, "running").await;
    let (code, out, err) = rig.send(&["--cancel", &through_api]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("now slow: cancelled"), "{out}");

    let (code, out, err) = rig.send(&[
        "--nats-url",
        crate::commands::NATS_URL,
        "--node",
        "slow",
        "--no-wait",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code, 0, "{err}");
    let straight = out.trim().to_owned();
    rig.wait_state(&straight, "running").await;
    let (code, out, err) = rig.send(&[
        "--nats-url",
        crate::commands::NATS_URL,
        "--cancel",
        &straight,
    ]);
    assert_ne!(code, 0, "the node must be named over NATS");
    assert!(err.contains("--node"), "{err}");
    let (code, out2, err2) = rig.send(&[
        "--nats-url",
        crate::commands::NATS_URL,
        "--node",
        "slow",
        "--cancel",
        &straight,
    ]);
    assert_eq!(code, 0, "{out}{err}{out2}{err2}");
    assert!(out2.contains(&format!("{straight}: stopped")), "{out2}");
    let v = rig.wait_state(&straight, "cancelled").await;
    assert!(
        v["result"]["error"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by command")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commands_to_ten_nodes_over_nats() {
    thousand_to_ten(Rig::with_bus(Backend::Embedded, true).await).await
}

/// A private nats-server (own port, own JetStream dir, a token): credentials are used, a wrong
/// token is a clear error, and commands stored in the stream survive the server restarting
/// between send and delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_a_nats_restart_and_credentials_are_checked() {
    let mut server = PrivateNats::start(&["--auth", "s3cret-token"]).await;
    let url = format!("nats://127.0.0.1:{}", server.port);
    let rig = Rig::with_nats(Backend::Embedded, &url, "token = \"s3cret-token\"\n").await;
    let key = enroll(&rig.env, "n1");
    let cmd = rig.command("n1", Method::Echo, &["survived"]);
    let (status, body) = rig.submit(std::slice::from_ref(&cmd)).await;
    assert_eq!(status, 201, "{body}");
    // Published to the stream (the controller marks it so once the stream has it).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A wrong token is refused with a sentence that says so.
    let (code, _, err) = rig.send(&[
        "--nats-url",
        &url,
        "--nats-token",
        "wrong",
        "--node",
        "n1",
        "--method",
        "Echo",
        "--",
        "x",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to NATS"), "{err}");

    server.restart().await;

    let config = rig.agent_config("n1", &[], "");
    let _agent = rig.start_agent("n1", &key, &config, 1);
    let v = rig.wait_state(&cmd.command.id, "succeeded").await;
    assert_eq!(v["result"]["stdout"], "survived");
    let (code, out, err) = rig.send(&[
        "--nats-url",
        &url,
        "--nats-token",
        "s3cret-token",
        "--node",
        "n1",
        "--method",
        "Echo",
        "--",
        "direct",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "direct");
    drop(rig);
    drop(server);
}

/// NATS over TLS: a private nats-server with a certificate; the controller, the agent and
/// `fleet send` verify it with the CA they are given; without it, the connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_travel_over_nats_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = PrivateNats::start(&[
        "--tls",
        "--tlscert",
        &cert_path.display().to_string(),
        "--tlskey",
        &key_path.display().to_string(),
    ])
    .await;
    let port = server.port;
    let url = format!("tls://127.0.0.1:{port}");
    let ca = format!("ca_cert = {:?}\n", cert_path.display().to_string());
    let rig = Rig::with_nats(Backend::Embedded, &url, &ca).await;
    let key = enroll(&rig.env, "sealed");
    let config = rig.agent_config("sealed", &[], "");
    let _agent = rig.start_agent("sealed", &key, &config, 1);

    let ca_flag = cert_path.display().to_string();
    let (code, out, err) = rig.send(&[
        "--nats-url",
        &url,
        "--ca-cert",
        &ca_flag,
        "--node",
        "sealed",
        "--method",
        "Echo",
        "--",
        "over-tls",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "over-tls");
    // Through the controller's API too (it publishes over TLS).
    let cmd = rig.command("sealed", Method::SayHello, &[]);
    rig.submit(std::slice::from_ref(&cmd)).await;
    rig.wait_state(&cmd.command.id, "succeeded").await;

    // Without the CA the server's certificate is not trusted.
    let (code, _, err) = rig.send(&[
        "--nats-url",
        &url,
        "--node",
        "sealed",
        "--method",
        "Echo",
        "--",
        "x",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to NATS"), "{err}");
    drop(rig);
    drop(server);
}

/// A nats-server of a test's own (own port, own JetStream dir), killed when dropped.
struct PrivateNats {
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl PrivateNats {
    async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::harness::free_port();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, dir.path(), &args);
        let server = Self {
            port,
            args,
            dir,
            child,
        };
        server.wait_up().await;
        server
    }

    fn spawn(port: u16, dir: &std::path::Path, args: &[String]) -> std::process::Child {
        std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is needed (scripts/test installs it)")
    }

    async fn wait_up(&self) {
        eventually(Duration::from_secs(10), "nats-server to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await
    }

    /// Kills the server and starts it again on the same port and JetStream dir.
    async fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path(), &self.args);
        self.wait_up().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One durable consumer per node: the streams carry an explicit consumer limit far above any
/// fleet, because servers from 2.15 read 0 (and -1) as a default cap of 1,000 consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_admit_a_consumer_for_every_node() {
    let prefix = format!("t{:012x}", rand::random::<u64>() >> 16);
    let subjects = fleet::bus::nats::Subjects::new(&prefix).unwrap();
    let client = async_nats::connect(crate::commands::NATS_URL)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    fleet::bus::nats::ensure_streams(&js, &subjects, Duration::from_secs(3600))
        .await
        .unwrap();
    let upper = prefix.to_uppercase();
    for name in [format!("{upper}_COMMANDS"), format!("{upper}_REPLIES")] {
        let mut stream = js.get_stream(&name).await.unwrap();
        let limit = stream.info().await.unwrap().config.max_consumers;
        let _ = js.delete_stream(&name).await;
        assert!(limit >= 100_000, "{name} admits only {limit} consumers");
    }
}

/// Runs the CLI as node `node` signing with `key`, over NATS under the rig's prefix only (no
/// controller URL, no token): (exit code, stdout, stderr).
fn fleet_over_nats(rig: &Rig, node: &str, key: &str, args: &[&str]) -> (i32, String, String) {
    let (url, prefix, _) = rig.nats.clone().expect("a NATS rig");
    let output = std::process::Command::new(crate::harness::FLEET)
        .args(args)
        .env("FLEET_NATS_URL", &url)
        .env("FLEET_NATS_PREFIX", &prefix)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_API_TOKEN")
        .env("FLEET_NODE", node)
        .env("FLEET_NODE_KEY", key)
        .output()
        .expect("run fleet");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One bus: `fleet pulse` and `fleet run --heartbeat` on a node that reaches only NATS. The
/// pulse and the failure event arrive signed by the node, through the same pipeline as over
/// HTTP; a node cannot speak for another, and a signed request is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulses_and_events_travel_over_nats_too() {
    let rig = Rig::with_bus(Backend::Embedded, true).await;
    let key = enroll(&rig.env, "edge.1");
    let other_key = enroll(&rig.env, "edge.2");
    // The enrolments reach the controller at its next registry refresh.
    rig.wait_enrolled(&["edge.1", "edge.2"]).await;

    let (code, out, err) = eventually(Duration::from_secs(15), "a pulse over NATS", || async {
        let run = fleet_over_nats(
            &rig,
            "edge.1",
            &key,
            &["pulse", "backup", "--next-in", "1d"],
        );
        (run.0 == 0).then_some(run)
    })
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("backup: new; down unless it pulses again by "),
        "{out}"
    );
    let beat = rig.api_get("/api/v1/heartbeats/backup").await;
    assert_eq!(beat["node"], "edge.1", "{beat}");
    assert_eq!(beat["next_in_ms"], 86_400_000u64);

    // The heartbeat is edge.1's: edge.2 may not pulse it.
    let (code, _, err) = fleet_over_nats(
        &rig,
        "edge.2",
        &other_key,
        &["pulse", "backup", "--next-in", "1d"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("403") && err.contains("belongs to"), "{err}");
    // A wrong key is refused as such.
    let (code, _, err) = fleet_over_nats(
        &rig,
        "edge.1",
        &other_key,
        &["pulse", "backup", "--next-in", "1d"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("401") && err.contains("bad signature"),
        "{err}"
    );

    // `fleet run`: start, then a fail from the node: down at once, with the exit status.
    let (code, _, err) = fleet_over_nats(
        &rig,
        "edge.1",
        &key,
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
    );
    assert_eq!(code, 3, "{err}");
    let events = rig.api_get("/api/v1/events?service=nightly").await;
    let events = events["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["node"], "edge.1");
    assert_eq!(events[0]["fields"]["heartbeat"], "down");
    assert_eq!(events[0]["fields"]["exit_status"], 3);
    assert_eq!(events[0]["fields"]["output"], "disk full\n");
    let beat = rig.api_get("/api/v1/heartbeats/nightly").await;
    assert_eq!(beat["state"], "down", "{beat}");
    assert_eq!(beat["node"], "edge.1", "{beat}");

    // Straight onto the subjects: a request signed by edge.1 on edge.2's subject is refused,
    // and the same signed request twice is taken once.
    let (url, prefix, _) = rig.nats.clone().unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let body = br#"{"service":"raw","next_in":"1h"}"#.to_vec();
    let signed = |subject: &str| {
        let ts = fleet::wire::request_timestamp_ms();
        let signature = fleet::wire::sign_agent(key.as_bytes(), "edge.1", subject, ts, &body);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(fleet::wire::HEADER_NODE, "edge.1");
        headers.insert(fleet::wire::HEADER_TIMESTAMP, ts.to_string().as_str());
        headers.insert(fleet::wire::HEADER_SIGNATURE, signature.as_str());
        headers
    };
    let ask = |subject: String, headers: async_nats::HeaderMap| {
        let client = client.clone();
        let body = body.clone();
        async move {
            let answer = client
                .request_with_headers(subject, headers, body.into())
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap()
        }
    };
    let theirs = format!("{prefix}.edge~2.Heartbeat");
    let answer = ask(theirs.clone(), signed(&theirs)).await;
    assert_eq!(answer["status"], 403, "{answer}");
    let mine = format!("{prefix}.edge~1.Heartbeat");
    let headers = signed(&mine);
    let answer = ask(mine.clone(), headers.clone()).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["heartbeat"]["node"], "edge.1", "{answer}");
    let answer = ask(mine, headers).await;
    assert_eq!(answer["status"], 401, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("already received"),
        "{answer}"
    );
}
