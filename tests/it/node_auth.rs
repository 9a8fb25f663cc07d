//! One node authentication for every signed path: the same matrix of refusals for batches,
//! command polls, reports, pulses and events (unknown node, another network, a clock outside
//! the window, a timestamp not in plain decimal, a wrong key, a signature made for another
//! request), and a replay of a request taken once.

use std::time::Duration;

use fleet::wire;

use crate::both_backends;
use crate::harness::{Backend, Env, InProcess, node};

const KEY: &str = "k-node-auth-0123456789";

/// A signed path and a body it accepts.
#[derive(Clone, Copy, Debug)]
enum Path {
    Ingest,
    Poll,
    Reports,
    Pulse,
    Event,
}

impl Path {
    const ALL: [Path; 5] = [
        Path::Ingest,
        Path::Poll,
        Path::Reports,
        Path::Pulse,
        Path::Event,
    ];

    fn method_and_path(self) -> (&'static str, &'static str) {
        match self {
            Path::Ingest => ("POST", "/api/v1/ingest"),
            Path::Poll => ("GET", "/api/v1/agent/commands"),
            Path::Reports => ("POST", "/api/v1/agent/reports"),
            Path::Pulse => ("POST", "/api/v1/heartbeats"),
            Path::Event => ("POST", "/api/v1/events"),
        }
    }

    fn body(self, n: u64) -> Vec<u8> {
        match self {
            Path::Ingest => serde_json::to_vec(&crate::harness::body_with_samples(n, 1)).unwrap(),
            Path::Poll => Vec::new(),
            Path::Reports => br#"{"reports":[]}"#.to_vec(),
            Path::Pulse => format!(r#"{{"service":"job-{n}","next_in":"1h"}}"#).into_bytes(),
            Path::Event => format!(r#"{{"message":"event {n}"}}"#).into_bytes(),
        }
    }
}

/// One request as a node would make it, each part of which the test may spoil.
#[derive(Clone)]
struct Signed {
    path: Path,
    node: String,
    timestamp: String,
    signature: String,
    seq: u64,
    body: Vec<u8>,
}

impl Signed {
    fn new(path: Path, node: &str, key: &str, n: u64) -> Self {
        let ts = wire::request_timestamp_ms();
        Self::at(path, node, key, n, ts)
    }

    fn at(path: Path, node: &str, key: &str, n: u64, ts: i64) -> Self {
        let body = path.body(n);
        let (method, p) = path.method_and_path();
        let signature = match path {
            Path::Ingest => {
                let headers = wire::BatchHeaders {
                    node: node.into(),
                    instance: "inst-auth".into(),
                    seq: n,
                    timestamp_ms: ts,
                };
                wire::sign(key.as_bytes(), &headers, &body)
            }
            _ => wire::sign_agent(key.as_bytes(), node, &format!("{method} {p}"), ts, &body),
        };
        Self {
            path,
            node: node.into(),
            timestamp: ts.to_string(),
            signature,
            seq: n,
            body,
        }
    }

    async fn send(&self, http: &reqwest::Client, url: &str) -> (u16, String) {
        let (method, p) = self.path.method_and_path();
        let mut request = http
            .request(method.parse().unwrap(), format!("{url}{p}"))
            .header(wire::HEADER_NODE, &self.node)
            .header(wire::HEADER_TIMESTAMP, &self.timestamp)
            .header(wire::HEADER_SIGNATURE, &self.signature)
            .header("content-type", "application/json");
        if let Path::Ingest = self.path {
            request = request
                .header(wire::HEADER_INSTANCE, "inst-auth")
                .header(wire::HEADER_SEQ, self.seq.to_string());
        }
        let response = request.body(self.body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(address.parse().unwrap()))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

both_backends!(every_signed_path_refuses_the_same_way_and_takes_a_request_once);

async fn every_signed_path_refuses_the_same_way_and_takes_a_request_once(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![
        node("web1", KEY, &["127.0.0.1/32"]),
        node("fenced", KEY, &["127.0.0.9/32"]),
    ];
    let controller = InProcess::start(config).await;
    let url = controller.url.clone();
    let http = client_from("127.0.0.1");
    let mut n = 100;
    for path in Path::ALL {
        let what = format!("{path:?}");
        n += 1;
        let good = Signed::new(path, "web1", KEY, n);
        let (status, body) = good.send(&http, &url).await;
        assert!(status == 200 || status == 201, "{what}: {status} {body}");

        // Played again, as captured: a batch is acknowledged as a duplicate (its sequence
        // number is its rule); anything else is refused.
        let (status, body) = good.send(&http, &url).await;
        match path {
            Path::Ingest => {
                assert_eq!(status, 200, "{what}: {body}");
                assert!(body.contains("duplicate"), "{what}: {body}");
            }
            _ => {
                assert_eq!(status, 401, "{what} replayed: {body}");
                assert!(body.contains("already received"), "{what}: {body}");
                // Hex is case-insensitive to the verifier; the replay check must be too.
                let mut shouted = good.clone();
                shouted.signature = shouted.signature.to_ascii_uppercase();
                let (status, body) = shouted.send(&http, &url).await;
                assert_eq!(status, 401, "{what} replayed in capitals: {body}");
            }
        }

        n += 1;
        let stranger = Signed::new(path, "nobody", KEY, n);
        let (status, body) = stranger.send(&http, &url).await;
        assert_eq!(status, 401, "{what} unknown node: {body}");
        assert!(body.contains("not enrolled"), "{what}: {body}");

        n += 1;
        let fenced = Signed::new(path, "fenced", KEY, n);
        let (status, body) = fenced.send(&http, &url).await;
        assert_eq!(status, 403, "{what} outside the node's networks: {body}");

        n += 1;
        let old = Signed::at(path, "web1", KEY, n, fleet::timefmt::now_ms() - 600_000);
        let (status, body) = old.send(&http, &url).await;
        assert_eq!(status, 401, "{what} ten minutes old: {body}");
        assert!(body.contains("clock"), "{what}: {body}");

        n += 1;
        let mut padded = Signed::new(path, "web1", KEY, n);
        padded.timestamp = format!("0{}", padded.timestamp);
        let (status, body) = padded.send(&http, &url).await;
        assert_eq!(status, 401, "{what} timestamp with a leading zero: {body}");

        n += 1;
        let forged = Signed::new(path, "web1", "not-the-key", n);
        let (status, body) = forged.send(&http, &url).await;
        assert_eq!(status, 401, "{what} wrong key: {body}");
        assert!(body.contains("signature"), "{what}: {body}");

        if !matches!(path, Path::Ingest) {
            // A signature made for another kind of request.
            n += 1;
            let other = if matches!(path, Path::Poll) {
                Path::Event
            } else {
                Path::Poll
            };
            let mut borrowed = Signed::new(path, "web1", KEY, n);
            borrowed.signature =
                Signed::at(other, "web1", KEY, n, borrowed.timestamp.parse().unwrap()).signature;
            let (status, body) = borrowed.send(&http, &url).await;
            assert_eq!(status, 401, "{what} signed as {other:?}: {body}");
        }
    }
    // The refused requests changed nothing: one batch, one pulse, one event.
    let c = controller.client();
    let (_, events) = c.get("/api/v1/events?node=web1").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    let (_, beats) = c.get("/api/v1/heartbeats").await;
    let jobs: Vec<_> = beats["heartbeats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["service"].as_str().unwrap().starts_with("job-"))
        .collect();
    assert_eq!(jobs.len(), 1, "{beats}");
    controller.stop().await;
}

/// The agent's own client never signs two requests alike: two polls in a row in one
/// millisecond still differ in their timestamps.
#[test]
fn request_timestamps_always_rise() {
    let stamps: Vec<i64> = (0..10_000).map(|_| wire::request_timestamp_ms()).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]));
    let late = stamps.last().unwrap() - fleet::timefmt::now_ms();
    assert!(late < 60_000, "ahead of the clock by {late} ms");
}
