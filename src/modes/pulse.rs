//! `fleet pulse SERVICE --next-in 10m` and `fleet run --heartbeat SERVICE --next-in 1d -- CMD…`
//! for shell scripts and cron, and `fleet events [--follow]` for the terminal. Clients of the
//! controller's API only: as an operator (token) or, on a node, signed with the node key.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::bus::http::NodeClient;
use crate::heartbeat;
use crate::modes::send::Api;
use crate::termsafe::{self, Shape};
use crate::timefmt::parse_duration;

/// How a client reaches the controller and says who it is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerClient {
    /// Controller base URL.
    #[arg(long, env = "FLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator API token.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// On a node, without a token: sign as this node (with --node-key).
    #[arg(long = "as-node", env = "FLEET_NODE")]
    pub as_node: Option<String>,
    /// The node's key (as `fleet node add` printed it).
    #[arg(long, env = "FLEET_NODE_KEY", hide_env_values = true)]
    pub node_key: Option<String>,
    /// PEM CA certificate to verify the controller with.
    #[arg(long, env = "FLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

enum Caller {
    Operator(Api),
    Node(NodeClient),
}

impl ControllerClient {
    fn connect(&self) -> anyhow::Result<Caller> {
        let controller = self
            .controller
            .as_deref()
            .context("no controller: pass --controller URL or set FLEET_CONTROLLER")?;
        match (&self.api_token, &self.as_node, &self.node_key) {
            (Some(token), _, _) => Ok(Caller::Operator(Api::connect(
                controller,
                token,
                self.ca_cert.as_deref(),
            )?)),
            (None, Some(node), Some(key)) => Ok(Caller::Node(NodeClient::new(
                controller,
                node,
                key,
                self.ca_cert.as_deref(),
                Duration::from_secs(30),
            )?)),
            _ => bail!(
                "no credentials: set FLEET_API_TOKEN (an operator token), or on a node FLEET_NODE and FLEET_NODE_KEY"
            ),
        }
    }
}

impl Caller {
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        match self {
            Caller::Operator(api) => api.post(path, body).await,
            Caller::Node(client) => {
                let bytes = serde_json::to_vec(body).expect("JSON serialises");
                // The signature covers the absolute path, as the controller sees it.
                let path = format!("/{}", path.trim_start_matches('/'));
                let response = crate::modes::send::accepted(client.signed(
                    reqwest::Method::POST,
                    &path,
                    "",
                    bytes,
                )?)
                .await?;
                response
                    .json()
                    .await
                    .context("the controller's answer is not JSON")
            }
        }
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
    let caller = args.spec.client.connect()?;
    let answer = caller
        .post("api/v1/heartbeats", &pulse_body(&args.service, &args.spec)?)
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
    let caller = args.pulse.client.connect()?;
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
        caller
            .post(
                "api/v1/heartbeats",
                &pulse_body(&args.heartbeat, &args.pulse)?,
            )
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
    caller
        .post(
            "api/v1/events",
            &serde_json::json!({
                "service": args.heartbeat,
                "level": "error",
                "message": message,
                "fields": { "exit_code": code, "output_tail": tail, "command": args.command },
            }),
        )
        .await
        .context("the command failed and the failure could not be recorded")?;
    Ok(u8::try_from(code).unwrap_or(1).max(1))
}

#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// At least this level (0–7 or debug, info, notice, warning, error, critical, alert, emergency).
    #[arg(long)]
    pub level: Option<String>,
    /// Since (RFC 3339 or relative, e.g. -1h).
    #[arg(long)]
    pub from: Option<String>,
    /// Until (RFC 3339 or relative).
    #[arg(long)]
    pub to: Option<String>,
    /// Messages containing this text (any case).
    #[arg(long, short = 'q')]
    pub query: Option<String>,
    /// How many of the newest to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Then keep printing new ones as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print each as a line of JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ControllerClient,
}

/// `fleet events`: the newest entries oldest first, like a log; with --follow, then new ones as
/// they are written (resuming after a dropped connection without gaps or repeats).
pub async fn events(args: EventsArgs) -> anyhow::Result<u8> {
    let controller = args
        .client
        .controller
        .as_deref()
        .context("no controller: pass --controller URL or set FLEET_CONTROLLER")?;
    let token = args
        .client
        .api_token
        .as_deref()
        .context("reading events takes an operator token: set FLEET_API_TOKEN")?;
    if args.follow && args.to.is_some() {
        bail!("--to and --follow do not go together: following has no end");
    }
    let api = Api::connect(controller, token, args.client.ca_cert.as_deref())?;
    let limit = args.limit.clamp(1, 1000).to_string();
    let page = api
        .get(&format!(
            "api/v1/events?{}",
            query_string(&[
                ("service", args.service.as_deref()),
                ("node", args.node.as_deref()),
                ("level", args.level.as_deref()),
                ("from", args.from.as_deref()),
                ("to", args.to.as_deref()),
                ("q", args.query.as_deref()),
                ("limit", Some(&limit)),
            ])
        ))
        .await?;
    let mut entries: Vec<crate::store::events::EventEntry> =
        serde_json::from_value(page["events"].clone())
            .context("the controller's answer is not a list of events")?;
    entries.reverse();
    let mut out = std::io::stdout().lock();
    // Followed from the newest entry there was when the page was read, printed or not.
    let mut last_id = page["latest_id"].as_i64().unwrap_or(0);
    for entry in &entries {
        print_event(&mut out, entry, args.json)?;
        last_id = last_id.max(entry.id);
    }
    drop(out);
    if !args.follow {
        return Ok(0);
    }
    let path = format!(
        "api/v1/stream?{}",
        query_string(&[
            ("kinds", Some("events")),
            ("service", args.service.as_deref()),
            ("node", args.node.as_deref()),
            ("level", args.level.as_deref()),
            ("q", args.query.as_deref()),
        ])
    );
    loop {
        match api
            .follow(&path, Some(last_id), |entry| {
                let mut out = std::io::stdout().lock();
                print_event(&mut out, &entry, args.json)?;
                last_id = entry.id;
                Ok(())
            })
            .await
        {
            Ok(()) => {}
            Err(err) => eprintln!("fleet events: {err:#}; reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `a=1&b=2`, escaped, leaving out the absent ones.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a literal URL");
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in pairs {
            if let Some(v) = value {
                query.append_pair(key, v);
            }
        }
    }
    url.query().unwrap_or_default().to_owned()
}

fn print_event(
    out: &mut impl Write,
    e: &crate::store::events::EventEntry,
    json: bool,
) -> anyhow::Result<()> {
    // Messages and services are anyone's text (apps, nodes, watchTower clients): shown, never
    // obeyed by the terminal, in either format and whatever stdout is.
    if json {
        writeln!(out, "{}", termsafe::json(serde_json::to_string(e)?))?;
    } else {
        let level = heartbeat::LEVELS
            .get(e.level as usize)
            .copied()
            .unwrap_or("?")
            .to_uppercase();
        let source = match (&e.node, &e.service) {
            (Some(n), Some(s)) => format!("{n}/{s}"),
            (Some(n), None) => n.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => "-".into(),
        };
        writeln!(
            out,
            "{}  {level:<9} {}  {}",
            e.ts,
            termsafe::visible(&source, Shape::OneLine),
            termsafe::visible(&e.message, Shape::OneLine)
        )?;
    }
    out.flush()?;
    Ok(())
}
