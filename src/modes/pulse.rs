//! `fleet pulse SERVICE --next-in 10m` and `fleet run --heartbeat SERVICE --next-in 1d -- CMD…`
//! for shell scripts and cron. As an operator (token) through the controller's API, or on a node
//! signed with the node key over the bus: HTTP to the controller, or NATS with `--nats-url`.

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

    async fn event(&self, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        match self {
            Pulser::Operator(api) => api.post("api/v1/events", body).await,
            Pulser::Node(bus) => bus.event(body).await.map_err(refused),
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
    #[command(flatten)]
    pub spec: PulseSpec,
}

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

/// `fleet pulse`: one pulse; prints the service's state and when it is next expected.
pub async fn pulse(args: PulseArgs) -> anyhow::Result<u8> {
    let pulser = Pulser::connect(&args.spec.client, &args.spec.nats).await?;
    let answer = pulser
        .pulse(&pulse_body(&args.service, &args.spec)?)
        .await?;
    let beat = &answer["heartbeat"];
    println!(
        "{}: {}; down unless it pulses again by {}",
        args.service,
        beat["state"].as_str().unwrap_or("?"),
        beat["deadline"].as_str().unwrap_or("?")
    );
    if answer["recovered"] == true {
        println!("{} was down and is up again", args.service);
    }
    Ok(0)
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Pulse this service when the command succeeds.
    #[arg(long)]
    pub heartbeat: String,
    #[command(flatten)]
    pub pulse: PulseSpec,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Output kept for the failure event: the end, where the error usually is.
const TAIL_BYTES: usize = 4096;

/// `fleet run`: runs the command with its output passed through; on success pulses, on failure
/// records an error event with the exit status and the tail of the output. Exits as the command
/// did.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let pulser = Pulser::connect(&args.pulse.client, &args.pulse.nats).await?;
    let program = &args.command[0];
    let mut child = std::process::Command::new(program)
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program:?}"))?;
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
                let excess = tail.len().saturating_sub(TAIL_BYTES);
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
            .pulse(&pulse_body(&args.heartbeat, &args.pulse)?)
            .await
            .context("the command succeeded but the pulse was not recorded")?;
        return Ok(0);
    }
    let tail = String::from_utf8_lossy(&tail.lock().expect("tail lock poisoned")).into_owned();
    let mut message = format!(
        "{} failed with exit status {code}: {}",
        args.heartbeat,
        args.command.join(" ")
    );
    crate::command::cut(&mut message, heartbeat::limits::MESSAGE_MAX / 2);
    pulser
        .event(&serde_json::json!({
                "service": args.heartbeat,
                "level": "error",
                "message": message,
                "fields": { "exit_code": code, "output_tail": tail, "command": args.command },
        }))
        .await
        .context("the command failed and the failure could not be recorded")?;
    Ok(u8::try_from(code).unwrap_or(1).max(1))
}
