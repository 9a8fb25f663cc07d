//! End to end with real processes: `fleet controller` and `fleet agent`, the controller killed
//! and restarted, the agent SIGKILLed while the controller is down, the spool overflowing.
//! Loss is judged from the store's ledger, never from acknowledgements.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::store::Durable;
use fleet::store::durable::LedgerEntry;

use crate::both_backends;
use crate::harness::{Backend, Env, Process, enroll, eventually, free_port};

/// A controller process on a fixed port (so it can be restarted on the same address).
pub(crate) struct ControllerProcess {
    pub(crate) port: u16,
    pub(crate) args: Vec<String>,
    dir: PathBuf,
    process: Option<Process>,
    starts: usize,
}

impl ControllerProcess {
    pub(crate) fn new(env: &Env) -> Self {
        let port = free_port();
        let mut args = vec![
            "controller".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(env.store_flags());
        if let Some(redis) = &env.redis_url {
            args.extend(["--redis-url".to_owned(), redis.clone()]);
            args.extend(["--redis-prefix".to_owned(), env.redis_prefix.clone()]);
        }
        Self {
            port,
            args,
            dir: env.dir.path().to_owned(),
            process: None,
            starts: 0,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn start(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("controller-{}.log", self.starts));
        self.process = Some(Process::spawn(&self.args, &log));
        crate::harness::wait_healthy(&self.url()).await;
    }

    pub(crate) fn stop(&mut self) {
        let mut process = self.process.take().expect("the controller is running");
        assert!(
            process.terminate(),
            "the controller did not exit cleanly on SIGTERM:\n{}",
            process.log_text()
        );
    }

    /// SIGKILL: what it acknowledged must already be durable.
    pub(crate) fn kill(&mut self) {
        self.process
            .take()
            .expect("the controller is running")
            .kill();
    }
}

fn agent_args(
    controller: &str,
    node: &str,
    key: &str,
    data_dir: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "--controller",
        controller,
        "--node",
        node,
        "--key",
        key,
        "--interval",
        "200ms",
        "--data-dir",
    ]
    .map(String::from)
    .to_vec();
    args.push(data_dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spooled(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("spool"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
        .unwrap_or(0)
}

fn last_seq(data_dir: &Path) -> i64 {
    std::fs::read_to_string(data_dir.join("seq"))
        .expect("the agent keeps its sequence number")
        .trim()
        .parse()
        .expect("a number")
}

/// Asserts the ledger of one instance holds exactly 1..=last, each once, received in order.
fn assert_complete_and_in_order(ledger: &[LedgerEntry], last: i64) {
    let seqs: Vec<i64> = ledger.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=last).collect();
    assert_eq!(seqs, expected, "every batch 1..={last} stored exactly once");
    for pair in ledger.windows(2) {
        assert!(
            pair[0].received_at_ms <= pair[1].received_at_ms,
            "batch {} arrived after batch {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

/// Waits until the store holds at least `n` batches of `node`.
async fn wait_for_batches(store: &Durable, node: &str, n: usize) {
    eventually(Duration::from_secs(15), "batches to arrive", || async {
        (store.ledger(node).await.unwrap().len() >= n).then_some(())
    })
    .await;
}

/// Waits until the agent's spool holds at least `n` unsent batches.
async fn wait_for_spool(agent_dir: &Path, n: usize) {
    eventually(
        Duration::from_secs(15),
        "the agent to spool a backlog",
        || async { (spooled(agent_dir) >= n).then_some(()) },
    )
    .await;
}

async fn controller_outage_loses_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let key = enroll(&env, "n1");
    let mut controller = ControllerProcess::new(&env);
    controller.start().await;
    let agent_dir = env.dir.path().join("agent");
    let mut agent = Process::spawn(
        &agent_args(&controller.url(), "n1", &key, &agent_dir, &[]),
        &env.dir.path().join("agent.log"),
    );
    let store = env.store().await;
    wait_for_batches(&store, "n1", 3).await;

    controller.kill();
    // The agent keeps collecting into its spool while the controller is away.
    wait_for_spool(&agent_dir, 8).await;
    let outage_last = last_seq(&agent_dir);
    controller.start().await;
    eventually(Duration::from_secs(20), "the backlog to drain", || async {
        let ledger = store.ledger("n1").await.unwrap();
        (ledger.last().is_some_and(|e| e.seq > outage_last) && spooled(&agent_dir) <= 1)
            .then_some(())
    })
    .await;
    assert!(
        agent.terminate(),
        "the agent did not exit cleanly on SIGTERM:\n{}",
        agent.log_text()
    );
    // After a clean stop everything spooled was delivered (the controller is up).
    assert_eq!(spooled(&agent_dir), 0, "{}", agent.log_text());
    let last = last_seq(&agent_dir);
    let ledger = store.ledger("n1").await.unwrap();
    assert_complete_and_in_order(&ledger, last);
    let streams = store.ingest_streams("n1").await.unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!((streams[0].gaps, streams[0].dropped), (0, 0));
    // The samples of the outage are there, one CPU point per batch.
    let series = store.series("n1", Some("cpu.used_percent")).await.unwrap();
    let points = store
        .points_of(
            &series[0],
            0,
            i64::MAX,
            fleet::store::durable::Resolution::Newest(100_000),
        )
        .await
        .unwrap();
    assert_eq!(points.len() as i64, last, "one CPU sample per batch");
    controller.stop();
}

async fn agent_killed_while_controller_down_delivers_its_spool_exactly_once(backend: Backend) {
    let env = Env::new(backend).await;
    let key = enroll(&env, "n2");
    let mut controller = ControllerProcess::new(&env);
    controller.start().await;
    let agent_dir = env.dir.path().join("agent");
    let args = agent_args(&controller.url(), "n2", &key, &agent_dir, &[]);
    let mut agent = Process::spawn(&args, &env.dir.path().join("agent-1.log"));
    let store = env.store().await;
    wait_for_batches(&store, "n2", 2).await;
    controller.stop();
    wait_for_spool(&agent_dir, 5).await;
    agent.kill();
    let spooled_before_kill = spooled(&agent_dir);
    let killed_at = last_seq(&agent_dir);
    assert!(spooled_before_kill >= 5);

    controller.start().await;
    let mut agent = Process::spawn(&args, &env.dir.path().join("agent-2.log"));
    eventually(
        Duration::from_secs(20),
        "the spool from before the kill to drain",
        || async {
            let ledger = store.ledger("n2").await.unwrap();
            ledger
                .last()
                .is_some_and(|e| e.seq > killed_at)
                .then_some(())
        },
    )
    .await;
    assert!(agent.terminate(), "{}", agent.log_text());
    let ledger = store.ledger("n2").await.unwrap();
    let instances: std::collections::BTreeSet<_> =
        ledger.iter().map(|e| e.instance.clone()).collect();
    assert_eq!(
        instances.len(),
        1,
        "the restarted agent is the same instance"
    );
    assert_complete_and_in_order(&ledger, last_seq(&agent_dir));
    let streams = store.ingest_streams("n2").await.unwrap();
    assert_eq!(streams[0].gaps, 0);
    assert_eq!(
        streams[0].batches,
        ledger.len() as i64,
        "no batch counted twice"
    );
    controller.stop();
}

async fn a_full_spool_drops_the_oldest_and_says_so(backend: Backend) {
    let env = Env::new(backend).await;
    let key = enroll(&env, "n3");
    let mut controller = ControllerProcess::new(&env);
    // The controller is not started yet: the agent spools into a spool that holds ~3 batches.
    let agent_dir = env.dir.path().join("agent");
    let mut agent = Process::spawn(
        &agent_args(
            &controller.url(),
            "n3",
            &key,
            &agent_dir,
            &["--spool-max-bytes", "30000"],
        ),
        &env.dir.path().join("agent.log"),
    );
    eventually(Duration::from_secs(20), "the spool to overflow", || async {
        let dropped: u64 = std::fs::read_to_string(agent_dir.join("dropped"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        (dropped >= 3).then_some(())
    })
    .await;
    controller.start().await;
    let store = env.store().await;
    let streams = eventually(Duration::from_secs(20), "drops to be reported", || async {
        let streams = store.ingest_streams("n3").await.unwrap();
        streams
            .first()
            .is_some_and(|s| s.dropped >= 3 && s.batches >= 2)
            .then_some(streams)
    })
    .await;
    // Every dropped batch shows as a gap: lost data is counted, never silent.
    assert!(streams[0].gaps >= 3, "{streams:?}");
    assert!(agent.terminate());
    let dropped: i64 = std::fs::read_to_string(agent_dir.join("dropped"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let streams = store.ingest_streams("n3").await.unwrap();
    assert_eq!(
        streams[0].gaps, dropped,
        "gaps and reported drops agree: {streams:?}"
    );
    controller.stop();
}

both_backends!(
    controller_outage_loses_nothing,
    agent_killed_while_controller_down_delivers_its_spool_exactly_once,
    a_full_spool_drops_the_oldest_and_says_so,
);
