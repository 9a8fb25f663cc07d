//! One enrolled node cannot fill the controller with small requests: a record's document is
//! bounded in bytes (413 naming the limit), and a node's hot rings are bounded in bytes.

use fleet::model::{BatchBody, Record, Sample};

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, node};

const KEY: &str = "record-bounds-key-0123456789";

/// A batch body of these records.
fn body_of(records: Vec<Record>) -> Vec<u8> {
    serde_json::to_vec(&BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records,
    })
    .unwrap()
}

/// A record of `collector` at this moment.
fn record(collector: &str, data: serde_json::Value, samples: Vec<Sample>) -> Record {
    Record {
        collector: collector.into(),
        ts: fleet::timefmt::now_ms(),
        data,
        samples,
    }
}

fn body_with_data(seq: u64, bytes: usize) -> Vec<u8> {
    body_of(vec![record(
        "blob",
        serde_json::json!({ "seq": seq, "pad": "a".repeat(bytes) }),
        Vec::new(),
    )])
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

both_backends!(many_samples_or_many_collectors_do_not_grow_a_nodes_rings);

/// The two ways around a document's bound: a record of hundreds of samples with long labels
/// (kept in the ring without its samples), and a new collector name for every record (at most
/// 256 rings a node, in memory and in Redis).
async fn many_samples_or_many_collectors_do_not_grow_a_nodes_rings(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    config.hot.max_node_bytes = 256 * 1024;
    let c = InProcess::start(config).await;
    let client = c.client();

    let labels: std::collections::BTreeMap<String, String> = (0..16)
        .map(|i| (format!("l{i}"), "v".repeat(200)))
        .collect();
    let samples = (0..500)
        .map(|i| {
            let mut s = Sample::new("wide.metric", i as f64);
            s.labels = labels.clone();
            s
        })
        .collect();
    let body = body_of(vec![record(
        "wide",
        serde_json::json!({ "note": "small document" }),
        samples,
    )]);
    let mut batch = Batch::new("web1", KEY, 1).body(body);
    batch.gzip = true;
    let (status, v) = client.send(&batch).await;
    assert_eq!(status, 200, "{v}");
    let (_, recent) = client.get("/api/v1/nodes/web1/recent/wide?limit=10").await;
    let entry = &recent["records"][0];
    assert_eq!(entry["samples_omitted"], 500, "{}", entry);
    assert!(entry.to_string().len() <= fleet::store::hot::ENTRY_BYTES_MAX);

    // 300 collector names, one 50 KiB record each, in batches of 30.
    let mut seq = 10;
    for chunk in (0..300).collect::<Vec<_>>().chunks(30) {
        seq += 1;
        let body = body_of(
            chunk
                .iter()
                .map(|i| {
                    record(
                        &format!("c{i}"),
                        serde_json::json!({ "pad": "b".repeat(50 * 1024) }),
                        Vec::new(),
                    )
                })
                .collect(),
        );
        let mut batch = Batch::new("web1", KEY, seq).body(body);
        batch.gzip = true;
        let (status, v) = client.send(&batch).await;
        assert_eq!(status, 200, "{v}");
    }
    let mut rings = 0;
    for i in 0..300 {
        let (_, recent) = client
            .get(&format!("/api/v1/nodes/web1/recent/c{i}?limit=10"))
            .await;
        let n = recent["records"].as_array().map(Vec::len).unwrap_or(0);
        assert!(n <= 1, "c{i}: each ring is down to its newest: {n}");
        rings += n;
    }
    // "wide" and the first 255 of these have rings; the rest are kept durably only.
    assert_eq!(rings, fleet::store::hot::RINGS_PER_NODE_MAX - 1);
    c.stop().await;
}
