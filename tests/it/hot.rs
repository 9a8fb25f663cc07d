//! The hot ring in Redis: key layout, newest first, capped; and a Redis outage that must not stop
//! ingest into the durable store. The outage test runs its own redis-server on its own port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Backend, Batch, Env, InProcess, eventually, free_port, node};

const KEY: &str = "0123456789abcdef0123456789abcdef";

struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/test installs it)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ring_uses_the_documented_keys_newest_first_and_capped() {
    let env = Env::new(Backend::Engines).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    config.hot.ring_size = 3;
    let ctl = InProcess::start(config).await;
    for seq in 1..=5 {
        assert_eq!(
            ctl.client().send(&Batch::new("web1", KEY, seq)).await.0,
            200
        );
    }
    let client = redis::Client::open(env.redis_url.clone().unwrap()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = format!("{}node:web1:test:events", env.redis_prefix);
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let seqs: Vec<u64> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["data"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![5, 4, 3]);
    // Each entry carries the ring's sequence number, rising, and the counter is kept.
    let ring_seqs: Vec<u64> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(ring_seqs.windows(2).all(|w| w[0] > w[1]), "{ring_seqs:?}");
    let counter: u64 = redis::cmd("GET")
        .arg(format!("{}node:web1:test:seq", env.redis_prefix))
        .query(&mut conn)
        .unwrap();
    assert_eq!(counter, ring_seqs[0]);
    let floor = fleet::timefmt::now_ms() as u64 * 1000 - 60_000_000;
    assert!(ring_seqs[2] > floor, "never below the clock: {ring_seqs:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_does_not_stop_ingest() {
    let env = Env::new(Backend::Engines).await;
    let mut redis = PrivateRedis::start(free_port());
    let mut config = env.controller_config();
    config.redis_url = Some(redis.url());
    config.nodes = vec![node("web1", KEY, &[])];
    let ctl = InProcess::start(config).await;
    let client = ctl.client();
    assert_eq!(client.send(&Batch::new("web1", KEY, 1)).await.0, 200);
    let (_, recent) = client.get("/api/v1/nodes/web1/recent/test").await;
    assert_eq!(recent["records"][0]["data"]["seq"], 1);
    let ring_seq_before = recent["records"][0]["seq"].as_u64().unwrap();

    redis.stop();
    for seq in 2..=6 {
        let started = std::time::Instant::now();
        let (status, reply) = client.send(&Batch::new("web1", KEY, seq)).await;
        assert_eq!(status, 200, "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "ingest stalled on Redis"
        );
    }
    let seqs: Vec<i64> = ctl
        .store
        .stored_sequences("web1")
        .await
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5, 6],
        "durable ingest went on without Redis"
    );
    let ready = reqwest::get(format!("{}/readyz", ctl.url)).await.unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the hot store down");
    let (status, _) = client.get("/api/v1/nodes/web1/recent/test").await;
    assert_eq!(status, 503);

    // Redis comes back on the same port: the controller reconnects by itself.
    let _redis = PrivateRedis::start(redis.port);
    let mut seq = 6;
    let recent = eventually(Duration::from_secs(15), "hot writes to resume", || {
        seq += 1;
        let batch = Batch::new("web1", KEY, seq);
        let client = &client;
        async move {
            assert_eq!(client.send(&batch).await.0, 200);
            let (status, recent) = client.get("/api/v1/nodes/web1/recent/test").await;
            (status == 200 && recent["records"][0]["data"]["seq"] == batch.seq).then_some(recent)
        }
    })
    .await;
    // The new Redis knew no counter; the sequence still rises past what readers saw.
    let ring_seq_after = recent["records"][0]["seq"].as_u64().unwrap();
    assert!(
        ring_seq_after > ring_seq_before,
        "{ring_seq_after} after {ring_seq_before}"
    );
    ctl.stop().await;
}
