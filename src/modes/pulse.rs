//! `fleet pulse SERVICE --next-in 10m [--start | --fail]` and `fleet run --heartbeat SERVICE
//! --next-in 1d [--max-runtime 2h] -- CMD…` for shell scripts and cron. As an operator (token)
//! through the controller's API, or on a node signed with the node key over the bus: HTTP to the
//! controller, or NATS with `--nats-url`. `run` brackets its command with the signals (start
//! before, success or fail after); what they do is the pipeline's (`pipeline::heartbeats`).

use std::io::{Read, Write};
use std::process::Stdio;

use anyhow::{Context, bail};

use super::{ControllerClient, NatsArgs};
use crate::bus::{Bus, BusError};
use crate::client::Api;
use crate::heartbeat;
use crate::timefmt::parse_duration;

/// Who pulses, and which way.
enum Pulser {
    /// An operator, through the API.
    Operator(Api),
    /// A node, signed with its key, over the bus (HTTP or NATS).
    Node(Box<Bus>),
}

impl Pulser {
    async fn connect(client: &ControllerClient, nats: &NatsArgs) -> anyhow::Result<Self> {
        match (&client.api_token, &client.as_node, &client.node_key) {
            (Some(token), _, _) if nats.url.is_none() => Ok(Pulser::Operator(Api::connect(
                client.controller()?,
                token,
                client.ca_cert.as_deref(),
            )?)),
            (_, Some(node), Some(key)) => Ok(Pulser::Node(Box::new(match &nats.url {
                Some(_) => {
                    Bus::nats(
                        &nats.config(client.ca_cert.as_deref()),
                        node,
                        key,
                        PULSE_INTERVAL,
                    )
                    .await?
                }
                None => Bus::http(
                    client.controller()?,
                    node,
                    key,
                    client.ca_cert.as_deref(),
                    std::time::Duration::from_secs(30),
                    PULSE_INTERVAL,
                    PULSE_INTERVAL,
                )?,
            }))),
            (Some(_), _, _) => bail!(
                "over NATS a pulse is signed by its node: set FLEET_NODE and FLEET_NODE_KEY (an operator token works over HTTP only)"
            ),
            _ => bail!(
                "no credentials: set FLEET_API_TOKEN (an operator token), or on a node FLEET_NODE and FLEET_NODE_KEY"
            ),
        }
    }

    async fn pulse(&self, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        match self {
            Pulser::Operator(api) => api.post("api/v1/heartbeats", body).await,
            Pulser::Node(bus) => bus.pulse(body).await.map_err(refused),
        }
    }
}

/// The interval a CLI bus declares: it sends no batches, so any will do.
const PULSE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn refused(err: BusError) -> anyhow::Error {
    match err {
        BusError::Refused { message, .. } => anyhow::anyhow!("the controller answered {message}"),
        BusError::Unreachable(why) => anyhow::anyhow!(why),
    }
}

/// When the next pulse is due and where alerts go: the same for `pulse` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct PulseSpec {
    /// When to expect the next pulse, e.g. 10m, 1d.
    #[arg(long, value_parser = parse_duration)]
    pub next_in: std::time::Duration,
    /// Extra time after that before it counts as down.
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<std::time::Duration>,
    /// Where its alerts go, as CHANNEL:TARGET (e.g. email:ops@example.com).
    #[arg(long, value_name = "CHANNEL:TARGET")]
    pub alert: Option<String>,
    #[command(flatten)]
    pub client: ControllerClient,
    // On a node that reaches only NATS: pulse (and record a failure) there.
    #[command(flatten)]
    pub nats: NatsArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PulseArgs {
    /// The service's name (a cron job, a backup, an app).
    pub service: String,
    /// Signal that a run began (instead of that it succeeded); with --max-runtime, a run that
    /// neither succeeds nor fails in time is down.
    #[arg(long, conflicts_with = "fail")]
    pub start: bool,
    /// How long a started run may take, e.g. 30m (with --start).
    #[arg(long, value_parser = parse_duration, requires = "start")]
    pub max_runtime: Option<std::time::Duration>,
    /// Signal that a run failed: the heartbeat is down at once.
    #[arg(long)]
    pub fail: bool,
    /// The failed run's exit status (with --fail).
    #[arg(long, requires = "fail", allow_negative_numbers = true)]
    pub exit_status: Option<i64>,
    /// What the failed run printed (with --fail); its last 4 KiB are kept.
    #[arg(long, requires = "fail", value_name = "TEXT")]
    pub output: Option<String>,
    #[command(flatten)]
    pub spec: PulseSpec,
}

/// A success pulse's body (`POST /api/v1/heartbeats`); a signal adds its fields to it.
fn pulse_body(service: &str, spec: &PulseSpec) -> anyhow::Result<serde_json::Value> {
    let mut body = serde_json::json!({
        "service": service,
        "next_in": spec.next_in.as_secs_f64(),
        "grace": spec.grace.unwrap_or_default().as_secs_f64(),
    });
    if let Some(alert) = &spec.alert {
        let (channel, target) = alert
            .split_once(':')
            .context("--alert is CHANNEL:TARGET, e.g. email:ops@example.com")?;
        body["alert"] = serde_json::json!({ "channel": channel, "target": target });
    }
    Ok(body)
}

/// `body` as a start, timed when `max_runtime` is given.
fn start_body(
    mut body: serde_json::Value,
    max_runtime: Option<std::time::Duration>,
) -> serde_json::Value {
    body["signal"] = "start".into();
    if let Some(max) = max_runtime {
        body["max_runtime"] = max.as_secs_f64().into();
    }
    body
}

/// `body` as a fail, with what the run reported.
fn fail_body(
    mut body: serde_json::Value,
    exit_status: Option<i64>,
    output: Option<String>,
) -> serde_json::Value {
    body["signal"] = "fail".into();
    if let Some(code) = exit_status {
        body["exit_status"] = code.into();
    }
    if let Some(output) = output {
        body["output"] = output.into();
    }
    body
}

/// `fleet pulse`: one pulse (or a start or a fail); prints where the service stands.
pub async fn pulse(args: PulseArgs) -> anyhow::Result<u8> {
    let pulser = Pulser::connect(&args.spec.client, &args.spec.nats).await?;
    let body = pulse_body(&args.service, &args.spec)?;
    let body = if args.start {
        start_body(body, args.max_runtime)
    } else if args.fail {
        fail_body(body, args.exit_status, args.output.clone())
    } else {
        body
    };
    let answer = pulser.pulse(&body).await?;
    println!("{}", standing(&args.service, &answer));
    if answer["recovered"] == true {
        println!("{} was down and is up again", args.service);
    }
    Ok(0)
}

/// Where a pulse left its service, in one line.
fn standing(service: &str, answer: &serde_json::Value) -> String {
    let beat = &answer["heartbeat"];
    let state = beat["state"].as_str().unwrap_or("?");
    let text = |field: &str| beat[field].as_str().unwrap_or("?").to_owned();
    match state {
        "down" => format!("{service}: down; a successful pulse brings it up again"),
        "cancelled" => format!("{service}: cancelled; a successful pulse watches it again"),
        _ if beat["run_deadline"].is_string() => format!(
            "{service}: {state}; run started, down unless it finishes by {}",
            text("deadline")
        ),
        _ => format!(
            "{service}: {state}; down unless it pulses again by {}",
            text("deadline")
        ),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The service to signal: start before the command, then success or fail.
    #[arg(long)]
    pub heartbeat: String,
    /// How long the command may run before its heartbeat is down, e.g. 2h (a hung job).
    #[arg(long, value_parser = parse_duration)]
    pub max_runtime: Option<std::time::Duration>,
    #[command(flatten)]
    pub pulse: PulseSpec,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `fleet run`: signals start, runs the command with its output passed through, then pulses
/// on success or signals fail with the exit status and the tail of the output. Exits as the
/// command did.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let pulser = Pulser::connect(&args.pulse.client, &args.pulse.nats).await?;
    let body = pulse_body(&args.heartbeat, &args.pulse)?;
    // The job matters more than its watching: a start that cannot be recorded is said, and
    // the command runs anyway (its success or failure is still sent).
    if let Err(err) = pulser
        .pulse(&start_body(body.clone(), args.max_runtime))
        .await
    {
        eprintln!(
            "fleet run: the start of {} was not recorded ({err:#}); running the command anyway",
            args.heartbeat
        );
    }
    let program = &args.command[0];
    let mut child = match std::process::Command::new(program)
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            // A job that cannot start has failed: its heartbeat says so, not just this line.
            let why = format!("cannot start {program:?}: {err}");
            let _ = pulser
                .pulse(&fail_body(body, None, Some(why.clone())))
                .await;
            bail!(why);
        }
    };
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let copy = |mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>| {
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = to.write_all(&buf[..n]);
                let _ = to.flush();
                let mut tail = tail.lock().expect("tail lock poisoned");
                tail.extend_from_slice(&buf[..n]);
                let excess = tail
                    .len()
                    .saturating_sub(heartbeat::limits::OUTPUT_TAIL_MAX);
                tail.drain(..excess);
            }
        })
    };
    let out = copy(
        Box::new(child.stdout.take().expect("piped")),
        Box::new(std::io::stdout()),
    );
    let err = copy(
        Box::new(child.stderr.take().expect("piped")),
        Box::new(std::io::stderr()),
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .context("the wait for the command failed")?
        .context("cannot wait for the command")?;
    let _ = out.join();
    let _ = err.join();
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    if status.success() {
        pulser
            .pulse(&body)
            .await
            .context("the command succeeded but the pulse was not recorded")?;
        return Ok(0);
    }
    let output = String::from_utf8_lossy(&tail.lock().expect("tail lock poisoned")).into_owned();
    // Invalid UTF-8 at the cut grows as it is replaced: keep the end within the bound.
    let output = heartbeat::tail(&output, heartbeat::limits::OUTPUT_TAIL_MAX).to_owned();
    pulser
        .pulse(&fail_body(body, Some(i64::from(code)), Some(output)))
        .await
        .context("the command failed and the failure could not be recorded")?;
    Ok(u8::try_from(code).unwrap_or(1).max(1))
}
