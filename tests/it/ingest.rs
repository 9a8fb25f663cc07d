//! `POST /api/v1/ingest`: a good batch is stored (durable, then hot) and readable through the
//! API; every kind of bad input gets its status and leaves nothing behind.

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, body_with_samples, node};

const KEY: &str = "0123456789abcdef0123456789abcdef";

async fn controller(env: &Env, allow: &[&str]) -> InProcess {
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, allow)];
    config.ingest.max_body_bytes = 64 * 1024;
    config.ingest.max_decompressed_bytes = 256 * 1024;
    InProcess::start(config).await
}

/// Asserts that nothing at all was stored for `web1`.
async fn nothing_stored(ctl: &InProcess) {
    assert!(
        ctl.store.stored_sequences("web1").await.unwrap().is_empty(),
        "a refused batch left a ledger entry"
    );
    assert!(
        ctl.store.node_status("web1").await.unwrap().is_none(),
        "a refused batch updated the node"
    );
    assert!(
        ctl.store.series("web1", None).await.unwrap().is_empty(),
        "a refused batch left samples"
    );
    let (_, recent) = ctl.client().get("/api/v1/nodes/web1/recent/test").await;
    assert_eq!(
        recent["records"],
        serde_json::json!([]),
        "a refused batch reached the hot ring"
    );
}

async fn good_batch_is_stored_and_readable(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &[]).await;
    let client = ctl.client();
    let mut batch = Batch::new("web1", KEY, 1);
    batch.body = serde_json::to_vec(&body_with_samples(1, 200)).unwrap();
    batch.gzip = true;
    let (status, reply) = client.send(&batch).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("stored")),
        "{reply}"
    );

    let (status, nodes) = client.get("/api/v1/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(nodes["nodes"][0]["name"], "web1");
    assert_eq!(nodes["nodes"][0]["status"], "up");
    assert!(
        nodes["nodes"][0]["last_seen"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let (status, metrics) = client
        .get("/api/v1/nodes/web1/metrics?name=test.m7&from=-1h&to=now")
        .await;
    assert_eq!(status, 200, "{metrics}");
    let points = metrics["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0][1], 1.0);

    let (status, recent) = client.get("/api/v1/nodes/web1/recent/test?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(recent["records"][0]["data"]["seq"], 1);
    assert_eq!(recent["records"][0]["node"], "web1");
    ctl.stop().await;
}

async fn replayed_sequence_is_acknowledged_and_stored_once(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &[]).await;
    let client = ctl.client();
    let batch = Batch::new("web1", KEY, 1);
    assert_eq!(client.send(&batch).await.1["status"], "stored");
    // The same sequence again, signed anew a moment later, as an agent retrying would.
    let mut again = batch.clone();
    again.timestamp_ms += 5;
    let (status, reply) = client.send(&again).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(ctl.store.stored_sequences("web1").await.unwrap().len(), 1);
    let (_, metrics) = client.get("/api/v1/nodes/web1/metrics?name=test.m0").await;
    assert_eq!(
        metrics["series"][0]["points"].as_array().unwrap().len(),
        1,
        "samples stored twice"
    );
    let (_, recent) = client.get("/api/v1/nodes/web1/recent/test").await;
    assert_eq!(
        recent["records"].as_array().unwrap().len(),
        1,
        "hot ring got the replay"
    );
    ctl.stop().await;
}

async fn gaps_and_drops_are_counted(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &[]).await;
    let client = ctl.client();
    for seq in [1, 2, 5] {
        let mut batch = Batch::new("web1", KEY, seq);
        if seq == 5 {
            let mut body = body_with_samples(5, 1);
            body.dropped_batches = 1;
            batch.body = serde_json::to_vec(&body).unwrap();
        }
        assert_eq!(client.send(&batch).await.0, 200);
    }
    let (_, node) = client.get("/api/v1/nodes/web1").await;
    assert_eq!(node["ingest"]["gaps"], 2, "{node}");
    assert_eq!(node["ingest"]["dropped"], 1, "{node}");
    // A late arrival fills one gap.
    assert_eq!(client.send(&Batch::new("web1", KEY, 3)).await.0, 200);
    let (_, node) = client.get("/api/v1/nodes/web1").await;
    assert_eq!(node["ingest"]["gaps"], 1, "{node}");
    ctl.stop().await;
}

async fn refused_batches_change_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &[]).await;
    let client = ctl.client();

    // Bad signature.
    let mut bad = Batch::new("web1", KEY, 1);
    bad.key = "not the key at all, not at all!".into();
    let (status, reply) = client.send(&bad).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("signature"));

    // A body that is not the one signed.
    let mut swapped = Batch::new("web1", KEY, 1);
    swapped.signature = Some(fleet::wire::sign(
        KEY.as_bytes(),
        &fleet::wire::BatchHeaders {
            node: "web1".into(),
            instance: swapped.instance.clone(),
            seq: 1,
            timestamp_ms: swapped.timestamp_ms,
        },
        b"{\"records\":[]}",
    ));
    assert_eq!(client.send(&swapped).await.0, 401);

    // Unknown node.
    let (status, reply) = client.send(&Batch::new("ghost", KEY, 1)).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("not enrolled"));

    // Timestamp outside the window, either way.
    for skew in [-10 * 60_000, 10 * 60_000] {
        let mut old = Batch::new("web1", KEY, 1);
        old.timestamp_ms += skew;
        let (status, reply) = client.send(&old).await;
        assert_eq!(status, 401, "{reply}");
        assert!(reply["error"].as_str().unwrap().contains("clock"));
    }

    // Regression (found writing docs/wire.md): an extreme timestamp must not overflow the
    // window check, and non-canonical numbers are refused rather than verified differently.
    let mut extreme = Batch::new("web1", KEY, 1);
    extreme.timestamp_ms = i64::MIN;
    assert_eq!(client.send(&extreme).await.0, 401);
    extreme.timestamp_ms = i64::MAX;
    assert_eq!(client.send(&extreme).await.0, 401);

    // A JSON array is not a batch, even one serde could read as a struct.
    let (status, _) = client
        .send(&Batch::new("web1", KEY, 1).body("[1,0,[]]"))
        .await;
    assert_eq!(status, 400);

    // Malformed JSON.
    let (status, reply) = client
        .send(&Batch::new("web1", KEY, 1).body("{\"records\": ["))
        .await;
    assert_eq!(status, 400, "{reply}");

    // Wrong type: the error names the field.
    let wrong =
        r#"{"records":[{"collector":"test","ts":1,"samples":[{"name":"a","value":"high"}]}]}"#;
    let (status, reply) = client.send(&Batch::new("web1", KEY, 1).body(wrong)).await;
    assert_eq!(status, 400);
    let message = reply["error"].as_str().unwrap();
    assert!(message.contains("records[0].samples[0].value"), "{message}");

    // Missing field.
    let (status, reply) = client
        .send(&Batch::new("web1", KEY, 1).body(r#"{"interval_ms":1}"#))
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("records"),
        "{reply}"
    );

    // Illegal and absurdly long metric names, collector names, label values.
    for body in [
        r#"{"records":[{"collector":"test","ts":1,"samples":[{"name":"a b","value":1}]}]}"#
            .to_owned(),
        format!(
            r#"{{"records":[{{"collector":"test","ts":1,"samples":[{{"name":"{}","value":1}}]}}]}}"#,
            "m".repeat(5000)
        ),
        r#"{"records":[{"collector":"te/st","ts":1}]}"#.to_owned(),
        format!(
            r#"{{"records":[{{"collector":"test","ts":1,"samples":[{{"name":"a","labels":{{"k":"{}"}},"value":1}}]}}]}}"#,
            "v".repeat(1000)
        ),
    ] {
        let (status, reply) = client.send(&Batch::new("web1", KEY, 1).body(body)).await;
        assert_eq!(status, 400, "{reply}");
    }

    // Illegal node name in the header.
    let (status, _) = client.send(&Batch::new("web 1", KEY, 1)).await;
    assert_eq!(status, 400);
    let (status, _) = client.send(&Batch::new(&"n".repeat(65), KEY, 1)).await;
    assert_eq!(status, 400);

    // Body over the limit (64 KiB here), plain.
    let big = serde_json::to_vec(&body_with_samples(1, 5000)).unwrap();
    assert!(big.len() > 64 * 1024);
    let (status, _) = client.send(&Batch::new("web1", KEY, 1).body(big)).await;
    assert_eq!(status, 413);

    // A gzip bomb: ~20 KiB of gzip inflating to 20 MiB, refused at the 256 KiB limit.
    let mut bomb_body = b"{\"records\":[],\"pad\":\"".to_vec();
    bomb_body.resize(20 * 1024 * 1024, b'a');
    let mut bomb = Batch::new("web1", KEY, 1).body(bomb_body);
    bomb.gzip = true;
    let (status, reply) = client.send(&bomb).await;
    assert_eq!(status, 413, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("inflates"),
        "{reply}"
    );

    nothing_stored(&ctl).await;
    ctl.stop().await;
}

async fn source_outside_the_allowlist_is_forbidden(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &["10.0.0.0/8"]).await;
    let (status, reply) = ctl.client().send(&Batch::new("web1", KEY, 1)).await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("127.0.0.1"));
    nothing_stored(&ctl).await;
    ctl.stop().await;
}

async fn source_inside_the_allowlist_is_accepted(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env, &["10.0.0.0/8", "127.0.0.0/8"]).await;
    assert_eq!(ctl.client().send(&Batch::new("web1", KEY, 1)).await.0, 200);
    ctl.stop().await;
}

both_backends!(
    good_batch_is_stored_and_readable,
    replayed_sequence_is_acknowledged_and_stored_once,
    gaps_and_drops_are_counted,
    refused_batches_change_nothing,
    source_outside_the_allowlist_is_forbidden,
    source_inside_the_allowlist_is_accepted,
);

async fn series_per_node_are_bounded(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    let ctl = InProcess::start(config).await;
    let limit = fleet::model::limits::SERIES_PER_NODE_MAX;
    let mut batch = Batch::new("web1", KEY, 1);
    // One series more than allowed, in one batch (a label gone wild).
    batch.body = serde_json::to_vec(&body_with_samples(1, limit + 1)).unwrap();
    batch.gzip = true;
    let (status, reply) = ctl.client().send(&batch).await;
    assert_eq!(status, 200, "{reply}");
    let series = ctl.store.series("web1", None).await.unwrap();
    assert_eq!(series.len(), limit, "no series past the limit");
    // Known series keep being stored.
    let known = series.iter().find(|s| s.name == "test.m0").unwrap().clone();
    let mut next = Batch::new("web1", KEY, 2);
    next.body = serde_json::to_vec(&body_with_samples(2, 1)).unwrap();
    assert_eq!(ctl.client().send(&next).await.0, 200);
    let points = ctl
        .store
        .points_of(
            &known,
            0,
            i64::MAX,
            fleet::store::durable::Resolution::Newest(10),
        )
        .await
        .unwrap();
    assert_eq!(points.len(), 2);
    ctl.stop().await;
}

both_backends!(series_per_node_are_bounded);
