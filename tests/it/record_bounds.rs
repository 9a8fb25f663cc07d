//! One enrolled node cannot fill the controller with small requests: a record's document is
//! bounded in bytes (413 naming the limit), and a node's hot rings are bounded in bytes.

use fleet::model::{BatchBody, Record};

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, node};

const KEY: &str = "record-bounds-key-0123456789";

fn body_with_data(seq: u64, bytes: usize) -> Vec<u8> {
    let body = BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![Record {
            collector: "blob".into(),
            ts: fleet::timefmt::now_ms(),
            data: serde_json::json!({ "seq": seq, "pad": "a".repeat(bytes) }),
            samples: Vec::new(),
        }],
    };
    serde_json::to_vec(&body).unwrap()
}

both_backends!(a_large_record_is_refused_and_a_nodes_rings_stay_within_their_bytes);

async fn a_large_record_is_refused_and_a_nodes_rings_stay_within_their_bytes(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    config.hot.max_node_bytes = 256 * 1024;
    let c = InProcess::start(config).await;
    let client = c.client();

    // 100 KiB of one letter: a few hundred bytes of gzip, refused for what it would become.
    let mut big = Batch::new("web1", KEY, 1).body(body_with_data(1, 100 * 1024));
    big.gzip = true;
    let (status, v) = client.send(&big).await;
    assert_eq!(status, 413, "{v}");
    let message = v["error"].as_str().unwrap();
    assert!(
        message.contains("records[0].data") && message.contains("65536"),
        "{v}"
    );
    let (_, recent) = client.get("/api/v1/nodes/web1/recent/blob?limit=10").await;
    assert_eq!(
        recent["records"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{recent}"
    );

    // Records under the limit are taken; the rings keep at most their bytes, newest first.
    for seq in 2..=40 {
        let mut batch = Batch::new("web1", KEY, seq).body(body_with_data(seq, 30 * 1024));
        batch.gzip = true;
        let (status, v) = client.send(&batch).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, recent) = client
        .get("/api/v1/nodes/web1/recent/blob?limit=1000")
        .await;
    assert_eq!(status, 200, "{recent}");
    let records = recent["records"].as_array().unwrap();
    let held: usize = records.iter().map(|r| r.to_string().len()).sum();
    assert!(!records.is_empty());
    assert_eq!(records[0]["data"]["seq"], 40, "the newest is kept");
    assert!(
        held <= 256 * 1024 + 31 * 1024,
        "{} records, {held} bytes held",
        records.len()
    );
    assert!(
        records.len() < 39,
        "older records were let go: {}",
        records.len()
    );
    c.stop().await;
}
