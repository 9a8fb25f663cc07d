//! The test harness: isolated environments on the real services (a PostgreSQL schema, a Redis
//! key prefix, a temp dir and free ports per test), controllers in process or as real
//! processes, and a client that signs batches exactly as the agent does.
//!
//! A service that is missing fails the test with a message; nothing is skipped silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet::config::{ControllerConfig, StaticNode};
use fleet::model::{BatchBody, NodeName, Record, Sample};
use fleet::store::Durable;
use fleet::wire::{self, BatchHeaders};
use tokio_util::sync::CancellationToken;

pub const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

/// Which durable and hot stores a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the temp dir, hot ring in memory: the embedded defaults.
    Embedded,
    /// PostgreSQL (own schema) and Redis (own key prefix).
    Engines,
}

/// Generates one test per backend from an `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::harness::Backend::Embedded).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn engines() {
                    super::$name($crate::harness::Backend::Engines).await
                }
            }
        )*
    };
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

pub fn postgres_base() -> String {
    std::env::var("FLEET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_base() -> String {
    std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One test's private corner of every service.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    schema: Option<String>,
}

impl Env {
    pub async fn new(backend: Backend) -> Self {
        fleet::install_crypto();
        let dir = tempfile::tempdir().expect("a temp dir");
        let redis_prefix = format!("{}:", unique("fleettest"));
        match backend {
            Backend::Embedded => Self {
                database_url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("fleet.db").display()
                ),
                dir,
                redis_url: None,
                redis_prefix,
                schema: None,
            },
            Backend::Engines => {
                let schema = unique("fleettest");
                let admin = sqlx::PgPool::connect(&postgres_base())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is needed at {} (run scripts/test, which starts it): {e}",
                            postgres_base()
                        )
                    });
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .expect("create the test schema");
                admin.close().await;
                let redis = redis::Client::open(redis_base()).expect("a Redis URL");
                let mut conn = redis
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .unwrap_or_else(|e| {
                        panic!(
                            "Redis is needed at {} (run scripts/test, which starts it): {e}",
                            redis_base()
                        )
                    });
                let _: String = redis::cmd("PING")
                    .query(&mut conn)
                    .expect("Redis answers PING");
                let sep = if postgres_base().contains('?') {
                    '&'
                } else {
                    '?'
                };
                Self {
                    database_url: format!(
                        "{}{sep}options=-c%20search_path%3D{schema}",
                        postgres_base()
                    ),
                    dir,
                    redis_url: Some(redis_base()),
                    redis_prefix,
                    schema: Some(schema),
                }
            }
        }
    }

    /// A controller config on a free loopback port over this env's stores.
    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            data_dir: self.dir.path().join("controller"),
            database_url: Some(self.database_url.clone()),
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            ..ControllerConfig::default()
        }
    }

    pub async fn store(&self) -> Durable {
        Durable::connect(&self.database_url)
            .await
            .expect("open the test store")
    }

    /// Flags that point a `fleet` subcommand at this env's store.
    pub fn store_flags(&self) -> Vec<String> {
        vec![
            "--data-dir".into(),
            self.dir.path().join("controller").display().to_string(),
            "--database-url".into(),
            self.database_url.clone(),
        ]
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(schema) = &self.schema {
            let _ = Command::new("psql")
                .args([
                    &postgres_base(),
                    "-qc",
                    &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.redis_url.is_some()
            && let Ok(client) = redis::Client::open(redis_base())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.redis_prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// A static node for a controller config.
pub fn node(name: &str, key: &str, allow: &[&str]) -> StaticNode {
    StaticNode {
        name: NodeName::parse(name).expect("a valid test node name"),
        key: key.into(),
        allow: allow
            .iter()
            .map(|a| a.parse().expect("a valid CIDR"))
            .collect(),
        labels: BTreeMap::new(),
    }
}

/// A controller running inside the test process.
pub struct InProcess {
    pub url: String,
    pub token: String,
    pub store: Durable,
    shutdown: CancellationToken,
    running: Option<fleet::modes::controller::Running>,
}

impl InProcess {
    pub async fn start(config: ControllerConfig) -> Self {
        let shutdown = CancellationToken::new();
        let configured_token = config.api_tokens.first().cloned();
        let running = fleet::modes::controller::start(config, shutdown.clone())
            .await
            .expect("the controller starts");
        Self {
            url: running.url.clone(),
            token: running
                .first_token
                .clone()
                .or(configured_token)
                .expect("a fresh store makes a first token unless the config has one"),
            store: running.durable.clone(),
            shutdown,
            running: Some(running),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await.expect("the controller stops cleanly");
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, &self.token)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client for the API and for signed batches.
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

/// A batch to send, every part of which a test may spoil.
#[derive(Clone)]
pub struct Batch {
    pub node: String,
    pub key: String,
    pub instance: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub body: Vec<u8>,
    pub gzip: bool,
    /// Sign this body instead of `body` (to send a body that does not match its signature).
    pub signature: Option<String>,
}

impl Batch {
    pub fn new(node: &str, key: &str, seq: u64) -> Self {
        Self {
            node: node.into(),
            key: key.into(),
            instance: "testinstance".into(),
            seq,
            timestamp_ms: fleet::timefmt::now_ms(),
            body: serde_json::to_vec(&body_with_samples(seq, 5)).expect("serialises"),
            gzip: false,
            signature: None,
        }
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A batch body with one `test` record carrying `n` samples whose values encode `seq`.
pub fn body_with_samples(seq: u64, n: usize) -> BatchBody {
    BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![Record {
            collector: "test".into(),
            ts: fleet::timefmt::now_ms(),
            data: serde_json::json!({ "seq": seq }),
            samples: (0..n)
                .map(|i| Sample::new(format!("test.m{i}"), seq as f64))
                .collect(),
        }],
    }
}

impl Client {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
            url: url.into(),
            token: token.into(),
        }
    }

    /// Sends a batch; returns the status and the JSON answer.
    pub async fn send(&self, batch: &Batch) -> (u16, serde_json::Value) {
        let headers = BatchHeaders {
            node: batch.node.clone(),
            instance: batch.instance.clone(),
            seq: batch.seq,
            timestamp_ms: batch.timestamp_ms,
        };
        let signature = batch
            .signature
            .clone()
            .unwrap_or_else(|| wire::sign(batch.key.as_bytes(), &headers, &batch.body));
        let payload = if batch.gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&batch.body).expect("gzip into memory");
            enc.finish().expect("gzip into memory")
        } else {
            batch.body.clone()
        };
        let mut request = self
            .http
            .post(format!("{}/api/v1/ingest", self.url))
            .header(wire::HEADER_NODE, &batch.node)
            .header(wire::HEADER_INSTANCE, &batch.instance)
            .header(wire::HEADER_SEQ, batch.seq.to_string())
            .header(wire::HEADER_TIMESTAMP, batch.timestamp_ms.to_string())
            .header(wire::HEADER_SIGNATURE, signature);
        if batch.gzip {
            request = request.header("content-encoding", "gzip");
        }
        let response = request
            .body(payload)
            .send()
            .await
            .expect("the controller answers");
        let status = response.status().as_u16();
        let json = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// GET an API path with the operator token.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// POST a body (JSON, or raw bytes as given) with the operator token.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        self.call(
            self.http
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// DELETE an API path with the operator token.
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(self.http.delete(format!("{}{path}", self.url)))
            .await
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the controller answers");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("a local address")
        .port()
}

/// A `fleet` child process, killed when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(args: &[String], log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("create the log file");
        let child = Command::new(FLEET)
            .args(args)
            .env("FLEET_LOG", "fleet=debug,warn")
            // Agents in parallel tests must not share the abstract socket `@fleet`.
            .env("FLEET_APP_SOCKET", unique("fleettest"))
            .env_remove("FLEET_CONFIG")
            .env_remove("FLEET_DATABASE_URL")
            .env_remove("FLEET_REDIS_URL")
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("start fleet");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to 20 s) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fleet` to completion; returns (success, stdout, stderr).
pub fn run_fleet(args: &[String]) -> (bool, String, String) {
    let output = Command::new(FLEET)
        .args(args)
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_DATABASE_URL")
        .output()
        .expect("run fleet");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until `url/healthz` answers.
pub async fn wait_healthy(url: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .danger_accept_invalid_certs(true)
        .build()
        .expect("an HTTP client");
    eventually(
        Duration::from_secs(20),
        "the controller to answer /healthz",
        || {
            let client = client.clone();
            let url = format!("{url}/healthz");
            async move {
                match client.get(url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await
}

/// Enrolls a node with `fleet node add` against this env's store (made by this call if no
/// controller has made it yet: `--create`); returns its key.
pub fn enroll(env: &Env, name: &str) -> String {
    let mut args = vec![
        "node".to_owned(),
        "add".to_owned(),
        name.to_owned(),
        "--create".to_owned(),
    ];
    args.extend(env.store_flags());
    let (ok, out, err) = run_fleet(&args);
    assert!(ok, "{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("node add prints the key")
        .to_owned()
}

/// Logs in to the dashboard at `url` with an operator token: a client that does not follow
/// redirects, and the session cookie (`name=value`) to send with its requests.
pub async fn dashboard_login(url: &str, token: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303, "the login is accepted");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (http, cookie)
}
