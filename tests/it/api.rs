//! The read API: operator tokens, node listing, query validation, health.

use crate::both_backends;
use crate::harness::{Backend, Batch, Client, Env, InProcess, node};

const KEY: &str = "0123456789abcdef0123456789abcdef";

async fn read_api_needs_a_valid_operator_token(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = InProcess::start(env.controller_config()).await;
    for path in [
        "/api/v1/nodes",
        "/api/v1/nodes/web1",
        "/api/v1/nodes/web1/metrics",
        "/api/v1/nodes/web1/recent/system",
    ] {
        let response = reqwest::get(format!("{}{path}", ctl.url)).await.unwrap();
        assert_eq!(response.status(), 401, "{path} without a token");
        let wrong = Client::new(&ctl.url, "fleet_wrong");
        assert_eq!(wrong.get(path).await.0, 401, "{path} with a wrong token");
    }
    assert_eq!(ctl.client().get("/api/v1/nodes").await.0, 200);
    ctl.stop().await;
}

async fn tokens_from_config_and_token_create_are_accepted(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.api_tokens = vec!["automation-token-from-env".into()];
    config.registry_refresh = std::time::Duration::from_millis(200);
    let ctl = InProcess::start(config).await;
    assert_eq!(
        Client::new(&ctl.url, "automation-token-from-env")
            .get("/api/v1/nodes")
            .await
            .0,
        200
    );

    let mut args = vec!["token".to_owned(), "create".to_owned()];
    args.extend(env.store_flags());
    let (ok, out, err) = crate::harness::run_fleet(&args);
    assert!(ok, "{err}");
    let created = out.trim().to_owned();
    assert!(created.starts_with("fleet_"));
    let client = Client::new(&ctl.url, &created);
    crate::harness::eventually(
        std::time::Duration::from_secs(5),
        "the new token to be accepted",
        || async { (client.get("/api/v1/nodes").await.0 == 200).then_some(()) },
    )
    .await;
    ctl.stop().await;
}

async fn queries_are_validated(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    let ctl = InProcess::start(config).await;
    let client = ctl.client();
    assert_eq!(client.send(&Batch::new("web1", KEY, 1)).await.0, 200);
    for (path, status) in [
        ("/api/v1/nodes/ghost", 404),
        ("/api/v1/nodes/bad%20name", 400),
        (
            "/api/v1/nodes/web1/metrics?name=test.m0&from=yesterday",
            400,
        ),
        (
            "/api/v1/nodes/web1/metrics?name=test.m0&from=now&to=-1h",
            400,
        ),
        ("/api/v1/nodes/web1/metrics?name=test.m0&limit=0", 400),
        ("/api/v1/nodes/web1/metrics?name=bad%20name", 400),
        ("/api/v1/nodes/web1/metrics?nme=test.m0", 400),
        ("/api/v1/nodes/web1/recent/test?limit=999999", 400),
        (
            "/api/v1/nodes/web1/metrics?name=test.m0&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00%2B02:00",
            200,
        ),
    ] {
        let (got, body) = client.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        if status >= 400 {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{path}: {body}"
            );
        }
    }
    let (_, listing) = client.get("/api/v1/nodes/web1/metrics").await;
    assert_eq!(listing["series"].as_array().unwrap().len(), 5, "{listing}");
    ctl.stop().await;
}

async fn health_and_readiness(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = InProcess::start(env.controller_config()).await;
    let health = reqwest::get(format!("{}/healthz", ctl.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", ctl.url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["durable"], "ok");
    assert_eq!(body["hot"], "ok");
    ctl.stop().await;
}

both_backends!(
    read_api_needs_a_valid_operator_token,
    tokens_from_config_and_token_create_are_accepted,
    queries_are_validated,
    health_and_readiness,
);

async fn retention_deletes_old_history_and_keeps_new(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    config.retention.samples = std::time::Duration::from_secs(86_400);
    config.retention.records = std::time::Duration::from_secs(86_400);
    config.retention.sweep_interval = std::time::Duration::from_millis(200);
    let ctl = InProcess::start(config).await;
    let client = ctl.client();
    let now = fleet::timefmt::now_ms();
    for (seq, age_ms) in [(1, 3 * 86_400_000), (2, 0)] {
        let mut body = crate::harness::body_with_samples(seq, 1);
        body.records[0].ts = now - age_ms;
        // A record without samples is kept as a document, under the same retention.
        body.records.push(fleet::model::Record {
            collector: "notes".into(),
            ts: now - age_ms,
            data: serde_json::json!({ "seq": seq }),
            samples: vec![],
        });
        let batch = Batch::new("web1", KEY, seq).body(serde_json::to_vec(&body).unwrap());
        assert_eq!(client.send(&batch).await.0, 200);
    }
    let store = ctl.store.clone();
    let series = store.series("web1", Some("test.m0")).await.unwrap();
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "the old sample and the old record to be purged",
        // One sweep deletes samples, then the ledger, then records: wait for the whole sweep.
        || async {
            let points = store
                .points_of(
                    &series[0],
                    0,
                    i64::MAX,
                    fleet::store::durable::Resolution::Newest(100),
                )
                .await
                .unwrap();
            let records = store.records("web1", "notes", 10).await.unwrap();
            (points.len() == 1 && records.len() == 1).then_some(())
        },
    )
    .await;
    let points = store
        .points_of(
            &series[0],
            0,
            i64::MAX,
            fleet::store::durable::Resolution::Newest(100),
        )
        .await
        .unwrap();
    assert_eq!(points[0].1, 2.0, "the new sample stays");
    let records = store.records("web1", "notes", 10).await.unwrap();
    assert_eq!(records.len(), 1, "the old record document is purged");
    assert_eq!(records[0].1["seq"], 2);
    ctl.stop().await;
}

both_backends!(retention_deletes_old_history_and_keeps_new);
