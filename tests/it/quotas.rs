//! Per-operator shares of what the controller serves to all: one token cannot hold every live
//! stream.

use std::time::Duration;

use crate::harness::{Backend, Env, InProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_take_every_live_stream() {
    let env = Env::new(Backend::Embedded).await;
    let mut config = env.controller_config();
    config.api_tokens = vec![
        "greedy-token-0123456789".into(),
        "other-token-0123456789".into(),
    ];
    let c = InProcess::start(config).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let open = |token: &'static str| {
        http.get(format!("{}/api/v1/stream?kinds=events", c.url))
            .bearer_auth(token)
            .send()
    };
    let mut held = Vec::new();
    for i in 0..fleet::web::STREAMS_PER_OPERATOR {
        let response = open("greedy-token-0123456789").await.unwrap();
        assert_eq!(response.status(), 200, "stream {i}");
        held.push(response);
    }
    let refused = open("greedy-token-0123456789").await.unwrap();
    assert_eq!(refused.status(), 429);
    // The same token spelled with spaces is the same token.
    let padded = http
        .get(format!("{}/api/v1/stream?kinds=events", c.url))
        .header("authorization", "Bearer    greedy-token-0123456789  ")
        .send()
        .await
        .unwrap();
    assert_eq!(padded.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let text = refused.text().await.unwrap();
    assert!(text.contains("close one"), "{text}");
    // Another operator still gets one, and a closed stream frees its slot.
    let other = open("other-token-0123456789").await.unwrap();
    assert_eq!(other.status(), 200);
    drop(held.pop());
    let again = crate::harness::eventually(Duration::from_secs(10), "a freed slot", || async {
        let r = open("greedy-token-0123456789").await.unwrap();
        (r.status() == 200).then_some(r)
    })
    .await;
    drop(again);
    drop(held);
    drop(other);
    c.stop().await;
}
