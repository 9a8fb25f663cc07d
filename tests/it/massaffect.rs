//! The MassAffect route: a controller with `[compat.massaffect]`, driven like MassAffect agents
//! drive it (`POST /collect`, a JSON array, gzip or not, `x-agent-signature`), the client bound
//! to 127.0.0.2 (the mapped agent) or 127.0.0.1 (a stranger). What it stores is read back
//! through the read API, as the dashboard reads it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use fleet::config::MassaffectConfig;
use fleet::model::NodeName;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::both_backends;
use crate::harness::{Backend, Env, InProcess};

const SECRET: &str = "massaffect shared secret";
const NODE: &str = "ma-web";
/// The mapped agent's address: any of 127.0.0.0/8 reaches the loopback listener.
const AGENT_ADDR: &str = "127.0.0.2";
/// The bound on inflated bodies in these tests, so a bomb stays cheap to build.
const DECOMPRESSED_MAX: usize = 256 * 1024;

struct Setup {
    _env: Env,
    ctl: InProcess,
    /// Connects from the mapped address.
    agent: reqwest::Client,
    /// Connects from 127.0.0.1, which is not in the map.
    stranger: reqwest::Client,
}

fn client(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn start(backend: Backend) -> Setup {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.compat.massaffect = Some(MassaffectConfig {
        secret: SECRET.into(),
        agents: BTreeMap::from([(AGENT_ADDR.parse().unwrap(), NodeName::parse(NODE).unwrap())]),
        max_body_bytes: None,
        max_decompressed_bytes: Some(DECOMPRESSED_MAX),
    });
    let ctl = InProcess::start(config).await;
    Setup {
        _env: env,
        ctl,
        agent: client(AGENT_ADDR),
        stranger: client("127.0.0.1"),
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// Posts `payload` as sent (gzip when `gzip`), with `signature` if any; status and raw body.
async fn post(
    setup: &Setup,
    from: &reqwest::Client,
    payload: Vec<u8>,
    gzip: bool,
    signature: Option<String>,
) -> (u16, String) {
    let mut request = from
        .post(format!("{}/collect", setup.ctl.url))
        .header("content-type", "application/json");
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    if let Some(signature) = signature {
        request = request.header("x-agent-signature", signature);
    }
    let response = request.body(payload).send().await.expect("an answer");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Posts `body` signed correctly, from the mapped agent.
async fn send(setup: &Setup, body: &Value, compress: bool) -> (u16, String) {
    let plain = serde_json::to_vec(body).unwrap();
    let signature = sign(&plain);
    let payload = if compress { gzip(&plain) } else { plain };
    post(setup, &setup.agent, payload, compress, Some(signature)).await
}

fn now_s() -> f64 {
    fleet::timefmt::now_ms() as f64 / 1000.0
}

async fn nothing_stored(setup: &Setup) {
    let store = &setup.ctl.store;
    assert!(
        store.node_status(NODE).await.unwrap().is_none(),
        "a refused request updated the node"
    );
    assert!(
        store.series(NODE, None).await.unwrap().is_empty(),
        "a refused request left samples"
    );
    assert!(
        store.records(NODE, "app", 10).await.unwrap().is_empty(),
        "a refused request left records"
    );
    let (status, recent) = setup
        .ctl
        .client()
        .get(&format!("/api/v1/nodes/{NODE}/recent/app"))
        .await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(
        recent["records"],
        json!([]),
        "a refused request reached the hot ring"
    );
}

async fn signed_items_are_stored_and_readable(backend: Backend) {
    let setup = start(backend).await;
    let api = setup.ctl.client();
    let ts = now_s();
    // Gzip, as MassAffect agents send large bodies; `site` is kept in the document.
    let gz = json!([
        {"collector": "app", "ts": ts - 2.0, "site": "eu-1",
         "metrics": {"requests": 10, "latency": {"p99": 0.25}}},
        {"collector": "system", "ts": ts - 2.0, "metrics": {"cpu": {"used_percent": 12.5}}},
    ]);
    assert_eq!(
        send(&setup, &gz, true).await,
        (200, r#"{"ok":true}"#.to_owned())
    );
    // Plain, and an item without metrics (kept as a durable record).
    // And MassAffect's own `system` item, as its collector sends it.
    let plain = json!([
        {"collector": "app", "ts": ts - 1.0, "site": "eu-1", "metrics": {"requests": 11}},
        {"collector": "deploy", "ts": ts, "version": "1.2.3"},
        {"collector": "system", "ts": ts, "metrics": {"load1": 0.5, "load5": 0.4, "load15": 0.3,
         "cpu_user": 20.0, "cpu_system": 5.0, "cpu_idle": 70.0, "cpu_iowait": 5.0}},
    ]);
    assert_eq!(
        send(&setup, &plain, false).await,
        (200, r#"{"ok":true}"#.to_owned())
    );

    // Listed like any node, though never enrolled with `fleet node add`.
    let (status, nodes) = api.get("/api/v1/nodes").await;
    assert_eq!(status, 200, "{nodes}");
    let listed = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == NODE)
        .unwrap_or_else(|| panic!("{NODE} is listed: {nodes}"));
    assert_eq!(listed["source"], "massaffect");
    assert_eq!(listed["status"], "up", "{listed}");
    // Its vitals, from MassAffect's names: CPU used is 100 − idle − iowait, as natively.
    assert_eq!(listed["vitals"]["cpu_percent"], 25.0, "{listed}");
    assert_eq!(listed["vitals"]["load1"], 0.5, "{listed}");

    // The hot ring, newest first, with the extra key kept.
    let (status, recent) = api.get(&format!("/api/v1/nodes/{NODE}/recent/app")).await;
    assert_eq!(status, 200, "{recent}");
    let records = recent["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{recent}");
    assert_eq!(records[0]["data"]["site"], "eu-1", "{recent}");
    assert_eq!(records[0]["data"]["metrics"]["requests"], 11);
    assert_eq!(records[1]["data"]["metrics"]["requests"], 10);
    assert_eq!(records[0]["node"], NODE);

    // History: samples named `<collector>.<path>`.
    let (status, metrics) = api
        .get(&format!("/api/v1/nodes/{NODE}/metrics?name=app.requests"))
        .await;
    assert_eq!(status, 200, "{metrics}");
    let points: Vec<f64> = metrics["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(points, vec![10.0, 11.0], "{metrics}");
    let (_, p99) = api
        .get(&format!(
            "/api/v1/nodes/{NODE}/metrics?name=app.latency.p99"
        ))
        .await;
    assert_eq!(p99["series"][0]["points"][0][1], 0.25, "{p99}");
    let (_, cpu) = api
        .get(&format!(
            "/api/v1/nodes/{NODE}/metrics?name=system.cpu.used_percent"
        ))
        .await;
    assert_eq!(cpu["series"][0]["points"][0][1], 12.5, "{cpu}");

    // A document without samples is kept durably.
    let deploy = setup.ctl.store.records(NODE, "deploy", 10).await.unwrap();
    assert_eq!(deploy.len(), 1);
    assert_eq!(deploy[0].1["version"], "1.2.3");

    // No sequence numbers: no ledger rows, no streams, no false gaps.
    assert!(
        setup
            .ctl
            .store
            .stored_sequences(NODE)
            .await
            .unwrap()
            .is_empty()
    );
    let (status, node) = api.get(&format!("/api/v1/nodes/{NODE}")).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["ingest"]["streams"], json!([]), "{node}");
    assert_eq!(node["ingest"]["gaps"], 0);
    setup.ctl.stop().await;
}

async fn bad_signatures_are_refused_and_store_nothing(backend: Backend) {
    let setup = start(backend).await;
    let body = serde_json::to_vec(&json!([{"collector": "app", "metrics": {"x": 1}}])).unwrap();
    let refused = (401, r#"{"error":"Invalid signature"}"#.to_owned());
    assert_eq!(
        post(&setup, &setup.agent, body.clone(), false, None).await,
        refused
    );
    let mut wrong = sign(&body);
    wrong.replace_range(..2, if wrong.starts_with("00") { "11" } else { "00" });
    assert_eq!(
        post(&setup, &setup.agent, body.clone(), false, Some(wrong)).await,
        refused
    );
    assert_eq!(
        post(
            &setup,
            &setup.agent,
            body.clone(),
            false,
            Some("not hex".into())
        )
        .await,
        refused
    );
    // Signed over the compressed bytes instead of the body: wrong.
    let compressed = gzip(&body);
    let over_gzip = sign(&compressed);
    assert_eq!(
        post(&setup, &setup.agent, compressed, true, Some(over_gzip)).await,
        refused
    );
    nothing_stored(&setup).await;
    setup.ctl.stop().await;
}

async fn addresses_outside_the_map_are_forbidden(backend: Backend) {
    let setup = start(backend).await;
    let body = serde_json::to_vec(&json!([{"collector": "app", "metrics": {"x": 1}}])).unwrap();
    let signature = sign(&body);
    assert_eq!(
        post(&setup, &setup.stranger, body, false, Some(signature)).await,
        (403, r#"{"error":"Forbidden"}"#.to_owned())
    );
    nothing_stored(&setup).await;
    setup.ctl.stop().await;
}

async fn malformed_bodies_are_refused_and_store_nothing(backend: Backend) {
    let setup = start(backend).await;
    let signed = |body: &[u8]| Some(sign(body));
    let error = |text: &str| -> String {
        serde_json::from_str::<Value>(text).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Not JSON, signed correctly.
    let (status, text) = post(&setup, &setup.agent, b"[{".to_vec(), false, signed(b"[{")).await;
    assert_eq!(status, 400, "{text}");
    assert!(error(&text).contains("not JSON"), "{text}");
    // JSON, but not an array.
    let object = br#"{"collector":"app"}"#.to_vec();
    let (status, text) = post(&setup, &setup.agent, object.clone(), false, signed(&object)).await;
    assert_eq!(status, 400, "{text}");
    assert!(error(&text).contains("array"), "{text}");
    // One bad item refuses the whole request, naming the item.
    let items = serde_json::to_vec(&json!([
        {"collector": "app", "metrics": {"x": 1}},
        {"collector": "bad name", "metrics": {"x": 1}},
    ]))
    .unwrap();
    let (status, text) = post(&setup, &setup.agent, items.clone(), false, signed(&items)).await;
    assert_eq!(status, 400, "{text}");
    assert!(error(&text).starts_with("item 1: collector:"), "{text}");
    // Binary garbage claiming to be gzip.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (status, text) = post(
        &setup,
        &setup.agent,
        garbage.clone(),
        true,
        signed(&garbage),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(error(&text).contains("gzip"), "{text}");
    // Binary garbage sent plain.
    let (status, text) = post(
        &setup,
        &setup.agent,
        garbage.clone(),
        false,
        signed(&garbage),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // A gzip bomb: small on the wire, past the bound once inflated; refused before the
    // signature is even looked at.
    let bomb = gzip(&vec![b' '; DECOMPRESSED_MAX * 8]);
    assert!(bomb.len() < 16 * 1024);
    let (status, text) = post(&setup, &setup.agent, bomb, true, Some("00".into())).await;
    assert_eq!(status, 413, "{text}");
    // Too many items.
    let many: Vec<Value> = (0..=fleet::model::limits::RECORDS_PER_BATCH_MAX)
        .map(|_| json!({"collector": "app"}))
        .collect();
    let many = serde_json::to_vec(&many).unwrap();
    let (status, text) = post(&setup, &setup.agent, many.clone(), false, signed(&many)).await;
    assert_eq!(status, 400, "{text}");
    nothing_stored(&setup).await;
    setup.ctl.stop().await;
}

both_backends!(
    signed_items_are_stored_and_readable,
    bad_signatures_are_refused_and_store_nothing,
    addresses_outside_the_map_are_forbidden,
    malformed_bodies_are_refused_and_store_nothing,
);

/// Without `[compat.massaffect]` the route does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn massaffect_route_is_absent_unless_configured() {
    let env = Env::new(Backend::Embedded).await;
    let ctl = InProcess::start(env.controller_config()).await;
    let response = client("127.0.0.1")
        .post(format!("{}/collect", ctl.url))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    ctl.stop().await;
}
