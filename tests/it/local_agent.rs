//! `fleet controller --local-agent` as a new user runs it: its agent starts only once its
//! enrollment is visible (no "is not enrolled" at start), and `[local_agent]` in the controller
//! config configures it with the agent config's keys, so the quick-start node runs commands.

use std::time::Duration;

use fleet::command::OperatorKey;

use crate::commands::TOKEN;
use crate::e2e::ControllerProcess;
use crate::harness::{Backend, Env, FLEET, Process, eventually, run_fleet, wait_healthy};

/// A controller process with `--local-agent` and `[local_agent]` holding `section` (after the
/// app socket this test's own).
async fn start(env: &Env, section: &str) -> ControllerProcess {
    let mut controller = controller(env, section);
    controller.start().await;
    controller
}

/// [`start`]'s controller, not started.
fn controller(env: &Env, section: &str) -> ControllerProcess {
    let config = env.dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[local_agent]\ninterval = \"500ms\"\n\n[local_agent.app_socket]\nname = \"fleettest-local-{}\"\n{section}",
            ulid::Ulid::new()
        ),
    )
    .unwrap();
    let mut controller = ControllerProcess::new(env);
    controller.args.extend([
        "--config".to_owned(),
        config.display().to_string(),
        "--api-token".to_owned(),
        TOKEN.to_owned(),
        "--local-agent".to_owned(),
    ]);
    controller
}

async fn api_get(controller: &ControllerProcess, path: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", controller.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if !response.status().is_success() {
        return serde_json::Value::Null;
    }
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_agent_starts_only_once_enrolled_so_nothing_is_refused() {
    let env = Env::new(Backend::Embedded).await;
    let mut controller = start(&env, "").await;
    let node = fleet::modes::controller::local_node_name();
    // Its first seconds: the agent's first record and several ticks after it are stored.
    eventually(
        Duration::from_secs(20),
        "the local agent's system records",
        || async {
            let recent = api_get(
                &controller,
                &format!("/api/v1/nodes/{node}/recent/system?limit=10"),
            )
            .await;
            (recent["records"].as_array().map_or(0, Vec::len) >= 3).then_some(())
        },
    )
    .await;
    let log = std::fs::read_to_string(env.dir.path().join("controller-1.log")).unwrap();
    assert!(log.contains("local agent: node"), "{log}");
    assert!(!log.contains("not enrolled"), "{log}");
    assert!(!log.contains("401"), "{log}");
    controller.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_agent_configured_in_the_controller_config_runs_a_sent_command() {
    let env = Env::new(Backend::Embedded).await;
    let key_file = env.dir.path().join("operator.key");
    let (ok, _, err) = run_fleet(&[
        "operator".into(),
        "keygen".into(),
        "--out".into(),
        key_file.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let key = OperatorKey::parse(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let mut controller = start(
        &env,
        &format!(
            "\n[local_agent.commands]\ntrusted_keys = [{:?}]\nallow = [\"echo ...\"]\n",
            key.public()
        ),
    )
    .await;
    let node = fleet::modes::controller::local_node_name().to_string();
    // As a user would: once the controller said its local agent runs (the node is listed).
    eventually(
        Duration::from_secs(20),
        "the local node to be listed",
        || async {
            api_get(&controller, &format!("/api/v1/nodes/{node}"))
                .await
                .is_object()
                .then_some(())
        },
    )
    .await;
    let send = |args: &[&str]| {
        let output = std::process::Command::new(FLEET)
            .arg("send")
            .args(["--node", &node])
            .args(args)
            .env("FLEET_CONTROLLER", controller.url())
            .env("FLEET_API_TOKEN", TOKEN)
            .env("FLEET_SIGNING_KEY", &key_file)
            .env_remove("FLEET_NATS_URL")
            .output()
            .expect("run fleet send");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = send(&["--", "echo", "hello", "from", "the", "quick", "start"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "hello from the quick start\n", "{err}");
    // The local policy is the section's: an argv outside its allow list is refused.
    let (code, _, err) = send(&["--", "cat", "/etc/hostname"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("refused"), "{err}");
    controller.stop();
}

/// The local agent is part of the controller's process: when it fails for good (its spool
/// directory removed under it), the process stops and exits non-zero, for a supervisor to
/// restart, rather than serve on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_agent_that_fails_for_good_stops_the_controller_non_zero() {
    let env = Env::new(Backend::Embedded).await;
    let controller = controller(&env, "");
    let mut process = Process::spawn(&controller.args, &env.dir.path().join("controller.log"));
    wait_healthy(&controller.url()).await;
    let node = fleet::modes::controller::local_node_name();
    eventually(
        Duration::from_secs(20),
        "the local agent's first record",
        || async {
            let recent = api_get(&controller, &format!("/api/v1/nodes/{node}/recent/agent")).await;
            recent["records"].get(0).map(|_| ())
        },
    )
    .await;
    let spool = env.dir.path().join("controller/local-agent/spool");
    std::fs::remove_dir_all(&spool).unwrap();
    let status = eventually(Duration::from_secs(20), "the controller to exit", || {
        let exited = process.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let log = process.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the local agent failed"), "{log}");
}

/// A `[local_agent]` the agent would refuse stops the controller before it starts: the error
/// names the section and the key, and nothing is created or enrolled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_local_agent_section_is_refused_before_anything_starts() {
    let env = Env::new(Backend::Embedded).await;
    let controller = controller(
        &env,
        "[local_agent.commands]\ntrusted_keys = [\"ed25519:not-a-key\"]\n",
    );
    let (ok, out, err) = run_fleet(&controller.args);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("[local_agent] in the controller config"),
        "{err}"
    );
    assert!(err.contains("not-a-key"), "{err}");
    assert!(!out.contains("API at"), "{out}");
    assert!(!env.dir.path().join("controller").exists());
    assert!(!env.dir.path().join("fleet.db").exists());
}

#[test]
fn local_agent_keys_the_controller_fills_in_are_refused_by_name() {
    for key in ["controller = \"http://x\"", "node = \"n\"", "key = \"k\""] {
        let err =
            toml::from_str::<fleet::config::ControllerConfig>(&format!("[local_agent]\n{key}\n"))
                .unwrap_err()
                .to_string();
        let name = key.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("local_agent.{name} is set by the controller")),
            "{err}"
        );
    }
    let err =
        toml::from_str::<fleet::config::ControllerConfig>("[local_agent]\nintervall = \"1s\"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("intervall"), "{err}");
}
