//! Refused batches are recorded at the centre: each (claimed node, reason) once per window in
//! the central error log (`GET /api/v1/errors`), however many are sent, and a flood of random
//! node names is a bounded number of entries.

use std::time::Duration;

use crate::both_backends;
use crate::harness::{Backend, Batch, Client, Env, InProcess, eventually, node};

const KEY: &str = "key-of-web1-0123456789";

/// The error log's entries about refused batches, as (claimed node, reason).
async fn refusals(client: &Client) -> Vec<(String, String)> {
    let (status, body) = client.get("/api/v1/errors?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    refusals_of(body["errors"].as_array().unwrap())
}

fn refusals_of(errors: &[serde_json::Value]) -> Vec<(String, String)> {
    errors
        .iter()
        .filter(|e| e["fields"]["refused"] == "batch")
        .map(|e| {
            (
                e["fields"]["node_claimed"].as_str().unwrap().to_owned(),
                e["fields"]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until the error log holds a refusal of `node` for `reason`.
async fn recorded(client: &Client, node: &str, reason: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("a refusal of {node} ({reason}) in the error log"),
        || async move {
            refusals(client)
                .await
                .iter()
                .any(|(n, r)| n == node && r == reason)
                .then_some(())
        },
    )
    .await;
}

fn count(entries: &[(String, String)], node: &str, reason: &str) -> usize {
    entries
        .iter()
        .filter(|(n, r)| n == node && r == reason)
        .count()
}

async fn refused_batches_reach_the_error_log_once_per_node_and_reason(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![
        node("web1", KEY, &[]),
        node("lan1", "key-of-lan1-0123456789", &["10.0.0.0/8"]),
    ];
    let ctl = InProcess::start(config).await;
    let client = ctl.client();

    // A forged batch (signed with another key), an unknown node, another network.
    let forged = Batch::new("web1", "not-the-key-of-web1-xx", 1);
    assert_eq!(client.send(&forged).await.0, 401);
    assert_eq!(client.send(&Batch::new("ghost", KEY, 1)).await.0, 401);
    assert_eq!(
        client
            .send(&Batch::new("lan1", "key-of-lan1-0123456789", 1))
            .await
            .0,
        403
    );
    recorded(&client, "web1", "bad_signature").await;
    recorded(&client, "ghost", "unknown_node").await;
    recorded(&client, "lan1", "wrong_network").await;
    let (_, body) = client.get("/api/v1/errors?node=web1").await;
    let entry = &body["errors"][0];
    assert!(
        entry["message"].as_str().unwrap().contains("bad signature")
            && entry["message"].as_str().unwrap().contains("127.0.0.1"),
        "{entry}"
    );
    assert_eq!(entry["fields"]["status"], 401);

    // A burst of 1,000 more of the same: still one entry each.
    let burst: Vec<_> = (2..1002)
        .map(|seq| {
            let batch = if seq % 2 == 0 {
                Batch::new("web1", "not-the-key-of-web1-xx", seq)
            } else {
                Batch::new("ghost", KEY, seq)
            };
            let client = &client;
            async move { client.send(&batch).await.0 }
        })
        .collect();
    for chunk in futures::stream::iter(burst)
        .buffer_unordered(32)
        .collect::<Vec<u16>>()
        .await
    {
        assert_eq!(chunk, 401);
    }
    // A stored batch still goes through, and a new pair is recorded after the burst.
    assert_eq!(client.send(&Batch::new("web1", KEY, 1)).await.0, 200);
    assert_eq!(client.send(&Batch::new("after", KEY, 1)).await.0, 401);
    recorded(&client, "after", "unknown_node").await;
    let entries = refusals(&client).await;
    assert_eq!(count(&entries, "web1", "bad_signature"), 1, "{entries:?}");
    assert_eq!(count(&entries, "ghost", "unknown_node"), 1, "{entries:?}");

    // A flood of random names: a bounded number of entries.
    let flood: Vec<_> = (0..1000)
        .map(|i| {
            let batch = Batch::new(&format!("rnd{i:04}x{:x}", rand::random::<u32>()), KEY, 1);
            let client = &client;
            async move { client.send(&batch).await.0 }
        })
        .collect();
    let answers: Vec<u16> = futures::stream::iter(flood)
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == 401));
    // Past the limiter's pairs, the flood shares one entry that says so.
    let entries = eventually(Duration::from_secs(10), "the flood's shared entry", || {
        let client = &client;
        async move {
            let (_, body) = client.get("/api/v1/errors?limit=1000").await;
            let errors = body["errors"].as_array().unwrap().clone();
            errors
                .iter()
                .any(|e| e["fields"]["overflow"] == true)
                .then(|| refusals_of(&errors))
        }
    })
    .await;
    let random = entries.iter().filter(|(n, _)| n.starts_with("rnd")).count();
    assert!(
        random <= fleet::pipeline::refusals::KEYS_MAX,
        "{random} entries for 1,000 random names"
    );
    ctl.stop().await;
}

both_backends!(refused_batches_reach_the_error_log_once_per_node_and_reason);

use futures::StreamExt;
