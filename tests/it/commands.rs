//! Command and control over the HTTP bus, with real processes: `fleet controller`, `fleet agent`
//! and `fleet send`. Exactly-once is judged by side effects on disk (a file each run appends
//! to), never by what the processes say.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::Duration;

use fleet::command::{CommandState, Kind, Method, OperatorKey};
use fleet::pipeline::commands::Submission;

use crate::both_backends;
use crate::e2e::ControllerProcess;
use crate::harness::{Backend, Env, FLEET, Process, enroll, eventually};

pub(crate) const TOKEN: &str = "fleet_test_operator_token_for_commands";

/// A controller process, an operator key, and helpers to run agents and `fleet send`.
pub(crate) struct Rig {
    pub env: Env,
    pub controller: ControllerProcess,
    pub key_file: PathBuf,
    pub key: OperatorKey,
    /// NATS URL, subject prefix of this test, extra `[nats]` lines; when it runs the NATS bus.
    pub nats: Option<(String, String, String)>,
}

pub(crate) const NATS_URL: &str = "nats://127.0.0.1:4222";

impl Rig {
    pub async fn new(backend: Backend) -> Self {
        Self::with_bus(backend, false).await
    }

    /// With `nats`, the controller and agents use NATS under a prefix of this test's own.
    pub async fn with_bus(backend: Backend, nats: bool) -> Self {
        if nats {
            Self::with_nats(backend, NATS_URL, "").await
        } else {
            Self::build(backend, None).await
        }
    }

    /// NATS at `url`, with extra `[nats]` lines (credentials).
    pub async fn with_nats(backend: Backend, url: &str, extra: &str) -> Self {
        let prefix = format!("t{:012x}", rand::random::<u64>() >> 16);
        Self::build(backend, Some((url.to_owned(), prefix, extra.to_owned()))).await
    }

    async fn build(backend: Backend, nats: Option<(String, String, String)>) -> Self {
        let env = Env::new(backend).await;
        let config = env.dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "[commands]\nsweep_interval = \"100ms\"\ngrace = \"1s\"\n{}",
                nats_block(nats.as_ref())
            ),
        )
        .unwrap();
        let mut controller = ControllerProcess::new(&env);
        controller.args.extend([
            "--config".to_owned(),
            config.display().to_string(),
            "--api-token".to_owned(),
            TOKEN.to_owned(),
        ]);
        controller.start().await;
        let key_file = env.dir.path().join("operator.key");
        let (ok, out, err) = crate::harness::run_fleet(&[
            "operator".into(),
            "keygen".into(),
            "--out".into(),
            key_file.display().to_string(),
        ]);
        assert!(ok, "{err}");
        let key = OperatorKey::parse(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        assert_eq!(out.trim(), key.public());
        Self {
            env,
            controller,
            key_file,
            key,
            nats,
        }
    }

    /// Writes an agent config trusting this rig's key, allowing `allow`.
    pub fn agent_config(&self, node: &str, allow: &[&str], extra: &str) -> PathBuf {
        let path = self.env.dir.path().join(format!("agent-{node}.toml"));
        let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "interval = \"1h\"\n[commands]\ntrusted_keys = [{:?}]\nallow = [{}]\npoll_timeout = \"5s\"\n{extra}\n{}",
                self.key.public(),
                allow.join(", "),
                nats_block(self.nats.as_ref()),
            ),
        )
        .unwrap();
        path
    }

    pub fn agent_dir(&self, node: &str) -> PathBuf {
        self.env.dir.path().join(format!("agent-{node}"))
    }

    pub fn start_agent(&self, node: &str, key: &str, config: &Path, run: usize) -> Process {
        let args: Vec<String> = [
            "agent",
            "--config",
            &config.display().to_string(),
            "--controller",
            &self.controller.url(),
            "--node",
            node,
            "--key",
            key,
            "--data-dir",
            &self.agent_dir(node).display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        Process::spawn(
            &args,
            &self.env.dir.path().join(format!("agent-{node}-{run}.log")),
        )
    }

    /// Runs `fleet send` with this rig's controller, token and key; returns (exit code,
    /// stdout, stderr).
    pub fn send(&self, args: &[&str]) -> (i32, String, String) {
        let mut proc = Proc::new(FLEET);
        proc.arg("send");
        if let Some((_, prefix, _)) = &self.nats {
            proc.args(["--nats-prefix", prefix]);
        }
        let output = proc
            .args(args)
            .env("FLEET_CONTROLLER", self.controller.url())
            .env("FLEET_API_TOKEN", TOKEN)
            .env("FLEET_SIGNING_KEY", &self.key_file)
            .env_remove("FLEET_NATS_URL")
            .output()
            .expect("run fleet send");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let response = self
            .client()
            .get(format!("{}{path}", self.controller.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Submits signed commands through the API; returns the status and the answer.
    pub async fn submit(&self, submissions: &[Submission]) -> (u16, serde_json::Value) {
        let response = self
            .client()
            .post(format!("{}/api/v1/commands", self.controller.url()))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "commands": submissions }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A request to the agent side of the HTTP bus, signed with `key` as `node` over `signed_as`
    /// (normally the request's own method and path; a test may sign something else).
    pub async fn agent_request(
        &self,
        node: &str,
        key: &str,
        method: reqwest::Method,
        path_and_query: &str,
        signed_as: &str,
        body: &str,
    ) -> reqwest::Response {
        let ts = fleet::wire::request_timestamp_ms();
        let sig = fleet::wire::sign_agent(key.as_bytes(), node, signed_as, ts, body.as_bytes());
        self.client()
            .request(method, format!("{}{path_and_query}", self.controller.url()))
            .header("x-fleet-node", node)
            .header("x-fleet-timestamp", ts.to_string())
            .header("x-fleet-signature", sig)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Polls for `node`'s commands as its agent would (without running them).
    pub async fn agent_poll(&self, node: &str, key: &str) -> serde_json::Value {
        self.agent_request(
            node,
            key,
            reqwest::Method::GET,
            "/api/v1/agent/commands?wait_ms=100",
            "GET /api/v1/agent/commands",
            "",
        )
        .await
        .json()
        .await
        .unwrap()
    }

    /// Waits until the controller's registry (re-read every `registry_refresh`, 2 s) holds each
    /// of `nodes`, just enrolled with `fleet node add`: `GET /api/v1/nodes/<node>` answers 200
    /// from the same snapshot that admits the node's signed requests.
    pub async fn wait_enrolled(&self, nodes: &[&str]) {
        for node in nodes {
            let url = format!("{}/api/v1/nodes/{node}", self.controller.url());
            eventually(
                Duration::from_secs(15),
                &format!("node {node} to reach the controller's registry (GET {url} → 200)"),
                || async {
                    let response = self.client().get(&url).bearer_auth(TOKEN).send().await;
                    response
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
                        .then_some(())
                },
            )
            .await;
        }
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        eventually(
            Duration::from_secs(30),
            &format!("{id} to be {state}"),
            || async {
                let v = self
                    .api_get(&format!("/api/v1/commands/{id}?wait=2s"))
                    .await;
                (v["state"] == state).then_some(v)
            },
        )
        .await
    }

    pub fn command(&self, node: &str, method: Method, args: &[&str]) -> Submission {
        Submission {
            command: fleet::command::build(
                &self.key,
                node,
                Kind::CommandAck,
                method,
                args.iter().map(|s| s.to_string()).collect(),
                Duration::from_secs(10),
                Duration::from_secs(3600),
                false,
            ),
            retries: 2,
        }
    }
}

fn nats_block(nats: Option<&(String, String, String)>) -> String {
    match nats {
        Some((url, prefix, extra)) => {
            format!("[nats]\nurl = {url:?}\nprefix = {prefix:?}\n{extra}")
        }
        None => String::new(),
    }
}

impl Drop for Rig {
    /// Deletes this test's streams (and with them its consumers).
    fn drop(&mut self) {
        let Some((url, prefix, _)) = self.nats.clone() else {
            return;
        };
        if url != NATS_URL {
            // A private server of the test's own: it goes with its directory.
            return;
        }
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(NATS_URL).await {
                    let js = async_nats::jetstream::new(client);
                    let upper = prefix.to_uppercase();
                    let _ = js.delete_stream(format!("{upper}_COMMANDS")).await;
                    let _ = js.delete_stream(format!("{upper}_REPLIES")).await;
                }
            });
        })
        .join();
    }
}

pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

both_backends!(a_command_runs_once_and_the_sender_gets_its_output_and_status);

async fn a_command_runs_once_and_the_sender_gets_its_output_and_status(backend: Backend) {
    let rig = Rig::new(backend).await;
    let key = enroll(&rig.env, "web1");
    let marker = rig.env.dir.path().join("ran");
    let script = format!(
        "echo ran >> {}; echo hello; echo oops >&2; exit 3",
        marker.display()
    );
    let config = rig.agent_config("web1", &["sh -c **"], "");
    let _agent = rig.start_agent("web1", &key, &config, 1);

    let (code, out, err) = rig.send(&["--node", "web1", "--", "sh", "-c", &script]);
    assert_eq!(code, 3, "the command's exit status: {err}");
    assert_eq!(out, "hello\n");
    assert!(err.starts_with("oops\n"), "{err}");
    assert!(err.contains("web1: failed, exit 3"), "{err}");
    assert_eq!(lines(&marker), vec!["ran"]);

    // The audit log has it, with who sent it and every transition.
    let list = rig.api_get("/api/v1/commands?node=web1").await;
    let record = &list["commands"][0];
    assert_eq!(record["state"], "failed");
    assert_eq!(record["result"]["exit_code"], 3);
    assert!(
        record["sent_by"]
            .as_str()
            .unwrap()
            .contains("config api_tokens"),
        "{record}"
    );
    let id = record["id"].as_str().unwrap();
    let full = rig.api_get(&format!("/api/v1/commands/{id}")).await;
    let states: Vec<&str> = full["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"queued"));
    assert!(states.contains(&"delivered"), "{states:?}");
    assert_eq!(states.last(), Some(&"failed"));

    // A NACK kind is done once the node has it; its outcome is still recorded.
    let (code, out, err) = rig.send(&[
        "--node", "web1", "--nack", "--json", "--method", "Echo", "--", "n",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["kind"], "CommandNACK");
    assert_ne!(json[0]["state"], "queued");
    let nack_id = json[0]["id"].as_str().unwrap().to_owned();
    rig.wait_state(&nack_id, "succeeded").await;

    // Status and JSON output.
    let (code, out, _) = rig.send(&["--status", id]);
    assert_eq!(code, 0);
    assert!(out.contains("failed, exit 3"), "{out}");
    let (code, out, _) = rig.send(&[
        "--node", "web1", "--json", "--method", "Echo", "--", "a", "b",
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["result"]["stdout"], "a b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_offline_runs_the_command_when_it_comes_back() {
    let mut rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "late");
    let marker = rig.env.dir.path().join("ran");
    let (code, out, err) = rig.send(&[
        "--node",
        "late",
        "--no-wait",
        "--",
        "sh",
        "-c",
        &format!("echo once >> {}", marker.display()),
    ]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    assert_eq!(
        rig.api_get(&format!("/api/v1/commands/{id}")).await["state"],
        "queued"
    );

    // A sender that stops waiting says so, exits 75, and the command stays queued.
    let (code, _, err) = rig.send(&[
        "--node", "late", "--wait", "1s", "--method", "Echo", "--", "x",
    ]);
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains("not settled yet") && err.contains("--status"),
        "{err}"
    );

    // The controller restarts while the command waits: nothing is lost.
    rig.controller.stop();
    rig.controller.start().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let config = rig.agent_config("late", &["sh -c **"], "");
    let _agent = rig.start_agent("late", &key, &config, 1);
    let done = rig.wait_state(&id, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(lines(&marker), vec!["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_are_reported_logged_and_not_run() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "strict");
    let marker = rig.env.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let config = rig.agent_config(
        "strict",
        &["uname -a"],
        "methods = [\"CLICommand\", \"Echo\"]\n",
    );
    let _agent = rig.start_agent("strict", &key, &config, 1);

    // Unsigned or wrongly signed: the controller refuses it outright.
    let mut unsigned = rig.command("strict", Method::CliCommand, &["sh", "-c", &touch]);
    unsigned.command.signature = String::new();
    let (status, body) = rig.submit(&[unsigned]).await;
    assert_eq!(status, 400, "{body}");
    let mut tampered = rig.command("strict", Method::CliCommand, &["uname", "-a"]);
    tampered.command.args = vec!["sh".into(), "-c".into(), touch.clone()];
    let (status, body) = rig.submit(&[tampered]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // Signed by a key the node does not trust; a method it does not allow; an argv outside
    // its allow-list: delivered, refused by the node, reported, logged centrally.
    let stranger = OperatorKey::generate();
    let mut untrusted = rig.command("strict", Method::CliCommand, &["uname", "-a"]);
    stranger.sign(&mut untrusted.command);
    let method = rig.command("strict", Method::TextLogging, &["hello"]);
    let argv = rig.command("strict", Method::CliCommand, &["sh", "-c", &touch]);
    let allowed = rig.command("strict", Method::CliCommand, &["uname", "-a"]);
    let all = [untrusted, method, argv, allowed];
    let (status, body) = rig.submit(&all).await;
    assert_eq!(status, 201, "{body}");
    let reasons = ["not among", "not allowed", "allow-list"];
    for (s, reason) in all.iter().zip(reasons) {
        let v = rig.wait_state(&s.command.id, "failed").await;
        let error = v["result"]["error"].as_str().unwrap();
        assert!(
            error.starts_with("refused: ") && error.contains(reason),
            "{error}"
        );
    }
    let ok = rig.wait_state(&all[3].command.id, "succeeded").await;
    assert!(ok["result"]["stdout"].as_str().unwrap().contains("Linux"));
    assert!(!marker.exists(), "a refused command ran");
    let errors = rig.api_get("/api/v1/errors?node=strict").await;
    assert_eq!(errors["errors"].as_array().unwrap().len(), 3, "{errors}");

    // Unknown node, expired TTL: refused at the controller.
    let (status, _) = rig
        .submit(&[rig.command("nosuchnode", Method::Echo, &[])])
        .await;
    assert_eq!(status, 404);
}

/// Issue 14, point 3: with `cat <dir>/pub/*` allowed, `cat <dir>/pub/../secret` ran and sent
/// the secret back. The node refuses it now, and nothing of the file reaches the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_a_star_in_the_allow_list_does_not_leave_its_directory() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "files");
    let dir = rig.env.dir.path().display().to_string();
    std::fs::create_dir(rig.env.dir.path().join("pub")).unwrap();
    std::fs::write(rig.env.dir.path().join("pub/file"), "public words\n").unwrap();
    std::fs::write(rig.env.dir.path().join("secret"), "the-secret-words\n").unwrap();
    let config = rig.agent_config("files", &[&format!("cat {dir}/pub/*")], "");
    let _agent = rig.start_agent("files", &key, &config, 1);

    let (code, out, err) = rig.send(&["--node", "files", "--", "cat", &format!("{dir}/pub/file")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "public words\n");

    let (code, out, err) = rig.send(&[
        "--node",
        "files",
        "--json",
        "--",
        "cat",
        &format!("{dir}/pub/../secret"),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        !out.contains("the-secret-words") && !err.contains("the-secret-words"),
        "the secret came back: {out}\n{err}"
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["state"], "failed", "{json}");
    let error = json[0]["result"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused: ") && error.contains("allow-list"),
        "{error}"
    );
}

/// Issue 14, point 10: a node's output reaches a pipe as it was sent (it is the user's data),
/// but on a terminal its escape sequences are shown, not obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_fleet_send_output_is_raw_into_a_pipe_and_shown_on_a_terminal() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "tty");
    let config = rig.agent_config("tty", &["echo *"], "");
    let _agent = rig.start_agent("tty", &key, &config, 1);
    let hostile = "\x1b]0;pwned\x07\x1b[2Jdone";

    let (code, out, err) = rig.send(&["--node", "tty", "--", "echo", hostile]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{hostile}\n"), "a pipe gets the bytes as sent");

    // The same through a terminal (util-linux `script` gives fleet send a pty).
    let output = Proc::new("script")
        .args([
            "-qec",
            r#"exec "$FLEET" send --node tty -- echo "$HOSTILE""#,
            "/dev/null",
        ])
        .env("FLEET", FLEET)
        .env("HOSTILE", hostile)
        .env("FLEET_CONTROLLER", rig.controller.url())
        .env("FLEET_API_TOKEN", TOKEN)
        .env("FLEET_SIGNING_KEY", &rig.key_file)
        .env_remove("FLEET_NATS_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(
        screen.contains("\\x1b]0;pwned\\x07\\x1b[2Jdone"),
        "{screen:?}"
    );
    assert!(
        !screen.contains('\x1b') && !screen.contains('\x07'),
        "the terminal was sent escapes: {screen:?}"
    );
    assert!(screen.contains("tty: succeeded"), "{screen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retries_and_ttl() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "slow");
    let config = rig.agent_config("slow", &["sleep *"], "");
    let mut agent = rig.start_agent("slow", &key, &config, 1);

    // A hung command is killed at its timeout on the node.
    let (code, _, err) = rig.send(&["--node", "slow", "--timeout", "500ms", "--", "sleep", "30"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("timed_out"), "{err}");

    // A node that takes a command and never answers: redelivered `retries` times, then timed out.
    agent.kill();
    let ghost = rig.command("slow", Method::Echo, &["x"]);
    let mut ghost = ghost;
    ghost.retries = 1;
    ghost.command = fleet::command::build(
        &rig.key,
        "slow",
        Kind::CommandAck,
        Method::Echo,
        vec!["x".into()],
        Duration::from_millis(200),
        Duration::from_secs(3600),
        false,
    );
    let (status, _) = rig.submit(std::slice::from_ref(&ghost)).await;
    assert_eq!(status, 201);
    let poll = |_: ()| async {
        rig.agent_poll("slow", &key).await["commands"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(poll(()).await, 1);
    // Not answered within 200 ms + 1 s grace: delivered again.
    let again = eventually(Duration::from_secs(10), "a redelivery", || async {
        let n = poll(()).await;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(again, 1);
    let v = rig.wait_state(&ghost.command.id, "timed_out").await;
    assert_eq!(v["attempts"], 2);

    // A command whose node never returns expires at its TTL.
    let mut short = rig.command("slow", Method::Echo, &[]);
    short.command = fleet::command::build(
        &rig.key,
        "slow",
        Kind::CommandAck,
        Method::Echo,
        vec![],
        Duration::from_secs(1),
        Duration::from_millis(500),
        false,
    );
    rig.submit(std::slice::from_ref(&short)).await;
    let v = rig.wait_state(&short.command.id, "expired").await;
    assert_eq!(v["attempts"], 0);

    // Cancel: withdrawn before delivery; a finished one is left as it is.
    let queued = rig.command("slow", Method::Echo, &[]);
    rig.submit(std::slice::from_ref(&queued)).await;
    let (code, out, err) = rig.send(&["--cancel", &queued.command.id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"));
    let (code, out, _) = rig.send(&["--cancel", &ghost.command.id]);
    assert_eq!(code, 1);
    assert!(out.contains("nothing to cancel"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_before_its_report_is_acknowledged_delivers_it_after_restart() {
    let mut rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "crashy");
    let marker = rig.env.dir.path().join("ran");
    let config = rig.agent_config("crashy", &["sh -c **"], "");
    let mut agent = rig.start_agent("crashy", &key, &config, 1);

    // The command runs for a second; the controller goes away meanwhile, so the report cannot
    // be acknowledged; the agent is killed with the result only in its journal.
    let slow = rig.command(
        "crashy",
        Method::CliCommand,
        &[
            "sh",
            "-c",
            &format!("echo x >> {}; sleep 1; echo done", marker.display()),
        ],
    );
    rig.submit(std::slice::from_ref(&slow)).await;
    eventually(Duration::from_secs(10), "the command to start", || async {
        marker.exists().then_some(())
    })
    .await;
    rig.controller.kill();
    let journal = rig.agent_dir("crashy").join("commands/commands.journal");
    eventually(
        Duration::from_secs(10),
        "the result in the journal",
        || async {
            std::fs::read_to_string(&journal)
                .unwrap_or_default()
                .contains("\"stdout\":\"done\\n\"")
                .then_some(())
        },
    )
    .await;
    agent.kill();
    rig.controller.start().await;
    let _agent = rig.start_agent("crashy", &key, &config, 2);
    let v = rig.wait_state(&slow.command.id, "succeeded").await;
    assert_eq!(v["result"]["stdout"], "done\n");
    assert_eq!(lines(&marker), vec!["x"], "ran exactly once");

    // Killed while the command runs: reported interrupted after restart, never run again.
    let marker2 = rig.env.dir.path().join("ran2");
    let killer = rig.command(
        "crashy",
        Method::CliCommand,
        &[
            "sh",
            "-c",
            &format!("echo y >> {}; sleep 30", marker2.display()),
        ],
    );
    rig.submit(std::slice::from_ref(&killer)).await;
    eventually(
        Duration::from_secs(10),
        "the second command to start",
        || async { marker2.exists().then_some(()) },
    )
    .await;
    drop(_agent);
    let _agent = rig.start_agent("crashy", &key, &config, 3);
    let v = rig.wait_state(&killer.command.id, "failed").await;
    assert!(
        v["result"]["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted"),
        "{v}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lines(&marker2), vec!["y"], "never run again");
    let errors = rig.api_get("/api/v1/errors?node=crashy").await;
    assert!(
        errors["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
}

both_backends!(a_thousand_commands_to_ten_nodes_run_once_each_in_order);

async fn a_thousand_commands_to_ten_nodes_run_once_each_in_order(backend: Backend) {
    thousand_to_ten(Rig::new(backend).await).await
}

/// 1,000 commands to 10 nodes (names with dots), each executed exactly once, per-node order
/// kept. Shared by both buses.
pub(crate) async fn thousand_to_ten(rig: Rig) {
    let mut agents = Vec::new();
    let nodes: Vec<String> = (0..10).map(|i| format!("n{i}.example")).collect();
    for node in &nodes {
        let key = enroll(&rig.env, node);
        let config = rig.agent_config(node, &[], "");
        agents.push(rig.start_agent(node, &key, &config, 1));
    }
    // 100 per node, interleaved across nodes, in 4 submissions.
    let mut all = Vec::new();
    for i in 0..100 {
        for node in &nodes {
            all.push(rig.command(node, Method::TextLogging, &[&format!("{i}")]));
        }
    }
    for chunk in all.chunks(250) {
        let (status, body) = rig.submit(chunk).await;
        assert_eq!(status, 201, "{body}");
    }
    let ids: Vec<String> = all.iter().map(|s| s.command.id.clone()).collect();
    eventually(Duration::from_secs(120), "all 1000 to succeed", || async {
        let response = rig
            .client()
            .post(format!("{}/api/v1/commands/wait", rig.controller.url()))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "ids": ids, "wait": "5s" }))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = response.json().await.unwrap();
        let done = v["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "succeeded")
            .count();
        (done == 1000).then_some(())
    })
    .await;
    for node in &nodes {
        let log = lines(&rig.agent_dir(node).join("events.log"));
        let numbers: Vec<String> = log
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(numbers, expected, "{node}: each once, in the order sent");
    }
    let list = rig
        .api_get("/api/v1/commands?state=succeeded&limit=1000")
        .await;
    assert_eq!(list["commands"].as_array().unwrap().len(), 1000);
    assert!(
        list["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["attempts"] == 1)
    );
    let _ = CommandState::Succeeded;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_by_label_and_steward_files_and_events_to_central() {
    let rig = Rig::new(Backend::Embedded).await;
    let mut agents = Vec::new();
    for (name, role) in [("w1", "web"), ("w2", "web"), ("d1", "db")] {
        let mut args = vec!["node".to_owned(), "add".to_owned(), name.to_owned()];
        args.extend([
            "--create".to_owned(),
            "--label".to_owned(),
            format!("role={role}"),
        ]);
        args.extend(rig.env.store_flags());
        let (ok, out, err) = crate::harness::run_fleet(&args);
        assert!(ok, "{err}");
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("key: "))
            .unwrap()
            .to_owned();
        let config = rig.agent_config(name, &["sh -c **"], "");
        agents.push(rig.start_agent(name, &key, &config, 1));
    }
    rig.wait_enrolled(&["w1", "w2", "d1"]).await;

    // --label: the web nodes only, one row each; all succeeded, so exit 0.
    let (code, out, err) = rig.send(&["--label", "role=web", "--method", "SayHello"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("w1 ") && out.contains("w2 ") && !out.contains("d1 "),
        "{out}"
    );
    assert!(out.contains("hello from w1"), "{out}");

    // --all with one failure: exit 1, and the failing node named in the table.
    let (code, out, _) = rig.send(&[
        "--all",
        "--",
        "sh",
        "-c",
        "test \"$(hostname)\" = nowhere-at-all && echo same || exit 4",
    ]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("failed")).count(),
        3,
        "{out}"
    );

    // A steward message file, unchanged: several messages, toNode, data, commandOrEvent,
    // method, timeout (seconds), retries; a field fleet does not use is noted, not fatal.
    let file = rig.env.dir.path().join("msgs.json");
    std::fs::write(
        &file,
        r#"[
          {"toNode": "w1", "data": ["sh", "-c", "echo from-file"], "commandOrEvent": "CommandACK",
           "method": "CLICommand", "timeout": 10, "retries": 1, "replyMethod": "REQToFileAppend"},
          {"toNode": "d1", "data": ["x"], "commandOrEvent": "EventACK", "method": "Echo"}
        ]"#,
    )
    .unwrap();
    let (code, out, err) = rig.send(&["--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("from-file"), "{out}");
    assert!(err.contains("replyMethod"), "{err}");
    std::fs::write(
        &file,
        r#"[{"toNode": "w1", "data": [], "commandOrEvent": "Command", "method": "Echo"}]"#,
    )
    .unwrap();
    let (code, _, err) = rig.send(&["--file", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("message 0") && err.contains("unknown kind"),
        "{err}"
    );

    // Events to the controller itself: the event log and the central error log.
    let (code, _, err) = rig.send(&[
        "--event", "--node", "central", "--method", "ErrorLog", "--", "disk", "on", "fire",
    ]);
    assert_eq!(code, 0, "{err}");
    let errors = rig.api_get("/api/v1/errors").await;
    assert_eq!(errors["errors"][0]["message"], "disk on fire", "{errors}");
    assert_eq!(errors["errors"][0]["node"], "central");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_command_delays_no_other_node_and_parallel_skips_the_queue() {
    let rig = Rig::new(Backend::Embedded).await;
    let mut agents = Vec::new();
    let mut keys = Vec::new();
    for name in ["busy", "free"] {
        let key = enroll(&rig.env, name);
        let config = rig.agent_config(name, &["sleep *"], "");
        agents.push(rig.start_agent(name, &key, &config, 1));
        keys.push(key);
    }
    let (code, out, err) = rig.send(&["--node", "busy", "--no-wait", "--", "sleep", "20"]);
    assert_eq!(code, 0, "{err}");
    let hung = out.trim().to_owned();
    rig.wait_state(&hung, "running").await;
    // Another node answers at once; on the busy node an ordered command waits its turn while
    // a parallel one does not.
    let started = std::time::Instant::now();
    let (code, _, err) = rig.send(&["--node", "free", "--method", "Echo", "--", "hi"]);
    assert_eq!(code, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, queued, _) = rig.send(&[
        "--node",
        "busy",
        "--no-wait",
        "--method",
        "Echo",
        "--",
        "later",
    ]);
    let (code, _, err) = rig.send(&[
        "--node",
        "busy",
        "--parallel",
        "--method",
        "Echo",
        "--",
        "now",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = rig
        .api_get(&format!("/api/v1/commands/{}", queued.trim()))
        .await;
    // Ordered commands go out one at a time: the next waits queued behind the hung one (so its
    // own timeout has not started), and can still be cancelled.
    assert_eq!(
        v["state"], "queued",
        "the ordered one waits behind the hung command: {v}"
    );
    let (code, out, err) = rig.send(&["--cancel", queued.trim()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled (its node never had it)"), "{out}");
    // A running command is stopped on its node by a signed Cancel, which kills it.
    let started = std::time::Instant::now();
    let (code, out, err) = rig.send(&["--cancel", &hung]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{hung}: stopped")), "{out}");
    assert!(out.contains("now busy: cancelled"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let v = rig.api_get(&format!("/api/v1/commands/{hung}")).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    let why = v["result"]["error"].as_str().unwrap();
    assert!(why.starts_with("cancelled by command "), "{v}");
    // The node is free again, and a second cancel finds nothing to do.
    let (code, _, err) = rig.send(&["--node", "busy", "--method", "Echo", "--", "free"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = rig.send(&["--cancel", &hung]);
    assert_eq!(code, 1);
    assert!(
        out.contains("already cancelled; nothing to cancel"),
        "{out}"
    );
    // An event (a notice), not an entry in the error log.
    let store = rig.env.store().await;
    let events = store
        .events(&fleet::store::events::EventQuery {
            category: "event",
            node: Some("busy".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.level == 2
            && e.message.contains(&hung)
            && e.message.contains("cancelled by")),
        "{events:?}"
    );
    let errors = rig.api_get("/api/v1/errors?node=busy").await;
    assert!(
        !errors.to_string().contains(&hung),
        "a cancel is not an error: {errors}"
    );
}

/// A malformed report does not hold up the good ones sent with it (the agent would resend the
/// batch for ever): the good one is stored, the bad one fails its command with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_report_fails_its_command_and_spares_the_rest() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "raw");
    let good = rig.command("raw", Method::Echo, &["a"]);
    let bad = rig.command("raw", Method::Echo, &["b"]);
    let (status, _) = rig.submit(&[good.clone(), bad.clone()]).await;
    assert_eq!(status, 201);
    rig.wait_enrolled(&["raw"]).await;
    let body = serde_json::json!({ "reports": [
        { "id": good.command.id, "state": "succeeded", "result": { "exit_code": 0, "stdout": "a" } },
        { "id": bad.command.id, "state": "expired" },
    ]})
    .to_string();
    let path = "/api/v1/agent/reports";
    let signed_as = format!("POST {path}");
    let response = rig
        .agent_request("raw", &key, reqwest::Method::POST, path, &signed_as, &body)
        .await;
    assert_eq!(response.status(), 200);
    rig.wait_state(&good.command.id, "succeeded").await;
    let v = rig.wait_state(&bad.command.id, "failed").await;
    assert!(
        v["result"]["error"]
            .as_str()
            .unwrap()
            .contains("report was refused"),
        "{v}"
    );
    // The same body signed for another request is refused.
    let response = rig
        .agent_request(
            "raw",
            &key,
            reqwest::Method::POST,
            path,
            "GET /api/v1/agent/commands",
            &body,
        )
        .await;
    assert_eq!(response.status(), 401);
}

/// The answer to a poll is lost (here: taken by a poll whose caller goes away): the command is
/// sent again on a later poll, well before its timeout, and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_poll_answer_is_sent_again() {
    let rig = Rig::new(Backend::Embedded).await;
    let key = enroll(&rig.env, "lossy");
    let marker = rig.env.dir.path().join("ran");
    let cmd = rig.command(
        "lossy",
        Method::CliCommand,
        &["sh", "-c", &format!("echo once >> {}", marker.display())],
    );
    rig.submit(std::slice::from_ref(&cmd)).await;
    rig.wait_enrolled(&["lossy"]).await;
    let taken = rig.agent_poll("lossy", &key).await;
    assert_eq!(taken["commands"][0]["id"], cmd.command.id.as_str());
    // The agent never saw that answer; it starts and polls.
    let config = rig.agent_config("lossy", &["sh -c **"], "");
    let _agent = rig.start_agent("lossy", &key, &config, 1);
    let v = rig.wait_state(&cmd.command.id, "succeeded").await;
    assert_eq!(
        v["attempts"], 1,
        "sent again, not redelivered as a new attempt: {v}"
    );
    assert_eq!(lines(&marker), vec!["once"]);
    let log = v["log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|e| e["detail"].as_str().unwrap().starts_with("sent again")),
        "{v}"
    );
}
