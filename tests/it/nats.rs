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
    let config = rig.agent_config("db.eu-1", &["sh -c *"], "");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commands_to_ten_nodes_over_nats() {
    thousand_to_ten(Rig::with_bus(Backend::Embedded, true).await).await
}
