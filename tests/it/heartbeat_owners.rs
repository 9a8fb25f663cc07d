//! Who may touch a heartbeat: its owner (the node, the operator or the watchTower listener that
//! made it) or an operator token; nobody cancels a node's own heartbeat but `fleet node remove`.

use std::net::SocketAddr;
use std::time::Duration;

use fleet::config::WatchtowerConfig;
use fleet::wire;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, free_port, node};

const TOKEN: &str = "owners-test-operator-token-0123456789";
const PASSWORD: &str = "owners test password";

struct Setup {
    ctl: InProcess,
    http: reqwest::Client,
    wt_url: String,
    _env: Env,
}

async fn start(backend: Backend) -> Setup {
    let env = Env::new(backend).await;
    let wt_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = env.controller_config();
    config.api_tokens = vec![TOKEN.into()];
    config.nodes = vec![
        node("web1", "key-web1-0123456789", &[]),
        node("web2", "key-web2-0123456789", &[]),
    ];
    config.compat.watchtower = Some(WatchtowerConfig {
        listen: wt_listen,
        password: PASSWORD.into(),
        tls_cert: None,
        tls_key: None,
    });
    let ctl = InProcess::start(config).await;
    Setup {
        ctl,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        wt_url: format!("http://{wt_listen}"),
        _env: env,
    }
}

impl Setup {
    /// A pulse signed by `node` (with its key), as `fleet pulse` on a node sends it.
    async fn node_pulse(&self, node: &str, body: Value) -> (u16, Value) {
        let key = format!("key-{node}-0123456789");
        let body = body.to_string();
        let ts = wire::request_timestamp_ms();
        let signature = wire::sign_agent(
            key.as_bytes(),
            node,
            "POST /api/v1/heartbeats",
            ts,
            body.as_bytes(),
        );
        let response = self
            .http
            .post(format!("{}/api/v1/heartbeats", self.ctl.url))
            .header(wire::HEADER_NODE, node)
            .header(wire::HEADER_TIMESTAMP, ts.to_string())
            .header(wire::HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn operator(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.ctl.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A watchTower request; answers are HTTP 200 with the status in `result`.
    async fn watchtower(&self, method: reqwest::Method, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}/heartbeat", self.wt_url))
            .header("password", PASSWORD)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn heartbeat(&self, service: &str) -> Value {
        let (status, v) = self
            .operator(
                reqwest::Method::GET,
                &format!("/api/v1/heartbeats/{service}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{service}: {v}");
        v
    }
}

both_backends!(a_heartbeat_is_touched_only_by_its_owner_or_an_operator);

async fn a_heartbeat_is_touched_only_by_its_owner_or_an_operator(backend: Backend) {
    let s = start(backend).await;
    let (status, v) = s
        .node_pulse("web1", json!({"service": "backup", "next_in": "1h", "alert": {"channel": "email", "target": "ops@example.com"}}))
        .await;
    assert_eq!(status, 200, "{v}");
    let before = s.heartbeat("backup").await;
    assert_eq!(before["owner"], "node:web1", "{before}");

    // Another node may neither move its deadline nor redirect its alert.
    let (status, v) = s
        .node_pulse("web2", json!({"service": "backup", "next_in": "300d", "alert": {"channel": "email", "target": "attacker@example.net"}}))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("belongs to node web1"),
        "{v}"
    );
    let after = s.heartbeat("backup").await;
    for field in ["deadline_ms", "alert", "node", "owner", "pulses"] {
        assert_eq!(after[field], before[field], "{field} changed: {after}");
    }

    // Neither may the watchTower listener, pulse nor cancel.
    let v = s
        .watchtower(reqwest::Method::POST, json!({"service": "backup", "nextIn": 30000000, "alertType": "email", "alertTarget": "attacker@example.net"}))
        .await;
    assert_eq!(v["result"], 403, "{v}");
    let v = s
        .watchtower(reqwest::Method::DELETE, json!({"service": "backup"}))
        .await;
    assert_eq!(v["result"], 403, "{v}");
    assert_ne!(s.heartbeat("backup").await["state"], "cancelled");

    // An operator token may pulse it; it stays web1's.
    let (status, v) = s
        .operator(
            reqwest::Method::POST,
            "/api/v1/heartbeats",
            Some(json!({"service": "backup", "next_in": "2h"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["heartbeat"]["owner"], "node:web1", "{v}");
    assert_eq!(v["heartbeat"]["next_in_ms"], 7_200_000, "{v}");
    // And the owner still may.
    let (status, v) = s
        .node_pulse("web1", json!({"service": "backup", "next_in": "1h"}))
        .await;
    assert_eq!(status, 200, "{v}");

    // watchTower clients keep working, unchanged, for the services they made: they send the
    // alert route with every pulse.
    for _ in 0..2 {
        let v = s
            .watchtower(reqwest::Method::POST, json!({"service": "site", "nextIn": 60, "alertType": "email", "alertTarget": "me@example.com"}))
            .await;
        assert_eq!(v["result"], 200, "{v}");
    }
    assert_eq!(s.heartbeat("site").await["owner"], "watchtower");
    let (status, v) = s
        .node_pulse("web1", json!({"service": "site", "next_in": "300d"}))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("watchTower"), "{v}");
    let v = s
        .watchtower(reqwest::Method::DELETE, json!({"service": "site"}))
        .await;
    assert_eq!(v["result"], 200, "{v}");
    assert_eq!(s.heartbeat("site").await["state"], "cancelled");
    let v = s
        .watchtower(reqwest::Method::DELETE, json!({"service": "nothing-here"}))
        .await;
    assert_eq!(v["result"], 500, "not found, as watchTower says it: {v}");

    // A node's own heartbeat: no cancel by the watchTower password nor by a token.
    let (status, v) = s
        .ctl
        .client()
        .send(&Batch::new("web1", "key-web1-0123456789", 1))
        .await;
    assert_eq!(status, 200, "{v}");
    let own = crate::harness::eventually(
        Duration::from_secs(10),
        "node:web1 to be watched",
        || async {
            let (status, v) = s
                .operator(reqwest::Method::GET, "/api/v1/heartbeats/node:web1", None)
                .await;
            (status == 200).then_some(v)
        },
    )
    .await;
    assert_eq!(own["owner"], "node:web1");
    let v = s
        .watchtower(reqwest::Method::DELETE, json!({"service": "node:web1"}))
        .await;
    assert_eq!(v["result"], 403, "{v}");
    let v = s
        .watchtower(reqwest::Method::POST, json!({"service": "node:web1", "nextIn": 30000000, "alertType": "email", "alertTarget": "x@example.net"}))
        .await;
    assert_ne!(v["result"], 200, "{v}");
    let (status, v) = s
        .operator(
            reqwest::Method::DELETE,
            "/api/v1/heartbeats/node:web1",
            None,
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("fleet node remove"),
        "{v}"
    );
    assert_ne!(s.heartbeat("node:web1").await["state"], "cancelled");

    // An operator may cancel anything else.
    let (status, v) = s
        .operator(reqwest::Method::DELETE, "/api/v1/heartbeats/backup", None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.heartbeat("backup").await["state"], "cancelled");
}

both_backends!(two_nodes_racing_for_a_new_service_one_owns_it);

/// Pulses of two senders for one new service, at once (so in one group of the writer): the
/// first stored owns it, every pulse of the other is refused, none of the owner's is.
async fn two_nodes_racing_for_a_new_service_one_owns_it(backend: Backend) {
    let s = start(backend).await;
    let pulses = (0..40).map(|i| {
        let node = if i % 2 == 0 { "web1" } else { "web2" };
        let s = &s;
        async move {
            let (status, v) = s
                .node_pulse(node, json!({"service": "contested", "next_in": "1h"}))
                .await;
            (node, status, v)
        }
    });
    let results = futures::future::join_all(pulses).await;
    let owner = s.heartbeat("contested").await["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    for (node, status, v) in results {
        let expected = if owner == format!("node:{node}") {
            200
        } else {
            403
        };
        assert_eq!(status, expected, "{node} (owner {owner}): {v}");
    }
    assert_eq!(s.heartbeat("contested").await["pulses"], 20);
}

/// A node may own at most `PER_NODE_MAX` heartbeats: one more is refused with 429, while the
/// ones it owns still pulse and others still make theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_owns_a_bounded_number_of_heartbeats() {
    let s = start(Backend::Embedded).await;
    let max = fleet::heartbeat::limits::PER_NODE_MAX;
    for chunk in (0..max).collect::<Vec<_>>().chunks(50) {
        let pulses = chunk.iter().map(|i| {
            let s = &s;
            async move {
                s.node_pulse(
                    "web1",
                    json!({"service": format!("q-{i}"), "next_in": "1h"}),
                )
                .await
            }
        });
        for (status, v) in futures::future::join_all(pulses).await {
            assert_eq!(status, 200, "{v}");
        }
    }
    let (status, v) = s
        .node_pulse("web1", json!({"service": "one-too-many", "next_in": "1h"}))
        .await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("the most a node may"),
        "{v}"
    );
    let (status, v) = s
        .operator(
            reqwest::Method::GET,
            "/api/v1/heartbeats/one-too-many",
            None,
        )
        .await;
    assert_eq!(status, 404, "nothing made: {v}");
    let (status, v) = s
        .node_pulse("web1", json!({"service": "q-7", "next_in": "1h"}))
        .await;
    assert_eq!(status, 200, "its own still pulse: {v}");
    // An operator's cancel makes room.
    let (status, v) = s
        .operator(reqwest::Method::DELETE, "/api/v1/heartbeats/q-3", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .node_pulse("web1", json!({"service": "in-its-place", "next_in": "1h"}))
        .await;
    assert_eq!(status, 200, "{v}");
    // And pulsing the cancelled one again would make one too many.
    let (status, v) = s
        .node_pulse("web1", json!({"service": "q-3", "next_in": "1h"}))
        .await;
    assert_eq!(status, 429, "{v}");
    let (status, v) = s
        .node_pulse("web2", json!({"service": "web2-job", "next_in": "1h"}))
        .await;
    assert_eq!(status, 200, "another node is not held back: {v}");
    let (status, v) = s
        .operator(
            reqwest::Method::POST,
            "/api/v1/heartbeats",
            Some(json!({"service": "ops-job", "next_in": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}
