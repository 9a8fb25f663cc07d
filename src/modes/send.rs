//! `fleet send`: builds commands (from flags or a steward message file), signs them with the
//! operator key, submits them through the controller's API (or straight onto NATS), waits for
//! the results and prints them. Also `--status ID` and `--cancel ID`, and `fleet operator
//! keygen`. Wiring and presentation only: signing is `command`, the queue is the controller's.
//! What nodes said is printed through `termsafe`: a command's output raw into a pipe or a file,
//! with its control characters made visible on a terminal; summaries always made visible.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::command::{CommandState, Kind, Method, OperatorKey, build};
use crate::pipeline::commands::Submission;
use crate::store::commands::CommandRecord;
use crate::termsafe::{self, Shape};
use crate::timefmt::parse_duration;

/// Exit status when the wait ended before every command was settled (EX_TEMPFAIL).
pub const EXIT_PENDING: u8 = 75;
/// Exit status of a command that timed out (as `timeout(1)`).
pub const EXIT_TIMED_OUT: u8 = 124;

#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// Target node.
    #[arg(long, conflicts_with_all = ["nodes", "all", "label"])]
    pub node: Option<String>,
    /// Target nodes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Every enrolled node.
    #[arg(long)]
    pub all: bool,
    /// Nodes with this label (key=value); repeat to require several.
    #[arg(long, value_name = "KEY=VALUE", value_parser = crate::model::parse_label)]
    pub label: Vec<(String, String)>,
    /// Send an event (EventACK) instead of a command (CommandACK).
    #[arg(long)]
    pub event: bool,
    /// Do not wait for a result (CommandNACK / EventNACK): done once the node has it.
    #[arg(long)]
    pub nack: bool,
    /// Method: CLICommand, TextLogging, SayHello, ErrorLog, Echo, Cancel [default: CLICommand; TextLogging with --event].
    #[arg(long)]
    pub method: Option<String>,
    /// Longest one attempt may run on the node.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Redeliveries when no answer comes within the timeout (never re-executions).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// How long the command may wait for a node that is offline.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Let it run beside other commands on the node instead of in order.
    #[arg(long)]
    pub parallel: bool,
    /// Print the id(s) and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest to wait for results [default: timeout × (retries + 1) + 30s].
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show a command's state and result instead of sending.
    #[arg(long, value_name = "ID", conflicts_with_all = ["cancel", "file"])]
    pub status: Option<String>,
    /// Cancel a command: withdrawn if no node has it yet, else stopped on its node by a signed
    /// Cancel (killed if it runs). With --nats-url, also give --node.
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    pub cancel: Option<String>,
    /// Send the messages of a steward message file (JSON array with toNode, data,
    /// commandOrEvent, method, timeout, retries).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Controller base URL.
    #[arg(long, env = "FLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator API token.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Operator key file (from `fleet operator keygen`) to sign commands with.
    #[arg(long, env = "FLEET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// PEM CA certificate to verify the controller (or a tls:// NATS server) with.
    #[arg(long, env = "FLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Talk to NATS directly instead of the controller's API.
    #[arg(long, env = "FLEET_NATS_URL")]
    pub nats_url: Option<String>,
    /// First token of NATS subjects.
    #[arg(long, env = "FLEET_NATS_PREFIX", default_value = "fleet")]
    pub nats_prefix: String,
    /// NATS user (with --nats-password).
    #[arg(long, env = "FLEET_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "FLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "FLEET_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS nkey seed (SU…).
    #[arg(long, env = "FLEET_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// The command (CLICommand: program and arguments) or the event's text.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Runs `fleet send` and returns the process exit status.
pub async fn run(args: SendArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    if let Some(id) = &args.status {
        let api = Api::new(&args)?;
        let value = api.get(&format!("api/v1/commands/{id}")).await?;
        if args.json {
            writeln!(
                out,
                "{}",
                termsafe::json(serde_json::to_string_pretty(&value)?)
            )?;
            return Ok(0);
        }
        let record: CommandRecord = serde_json::from_value(value.clone())
            .context("the controller's answer is not a command")?;
        print_one(&mut out, &record)?;
        if let Some(log) = value["log"].as_array() {
            for entry in log {
                let field = |name: &str| entry[name].as_str().unwrap_or("").to_owned();
                writeln!(
                    out,
                    "  {}  {:<10} {}",
                    field("ts"),
                    field("state"),
                    // The detail may quote a node's report.
                    termsafe::visible(&field("detail"), Shape::OneLine)
                )?;
            }
        }
        return Ok(0);
    }
    if let Some(id) = &args.cancel {
        return cancel(&args, id, &mut out).await;
    }

    let key = load_signing_key(args.signing_key.as_deref())?;
    let submissions = if let Some(file) = &args.file {
        from_steward_file(file, &key, args.ttl, args.parallel)?
    } else {
        let targets = targets(&args).await?;
        let kind = match (args.event, args.nack) {
            (false, false) => Kind::CommandAck,
            (false, true) => Kind::CommandNack,
            (true, false) => Kind::EventAck,
            (true, true) => Kind::EventNack,
        };
        let method = match &args.method {
            Some(m) => Method::parse(m).map_err(|e| anyhow::anyhow!("--method: {}", e.problem))?,
            None if args.event => Method::TextLogging,
            None => Method::CliCommand,
        };
        if method == Method::CliCommand && args.args.is_empty() {
            bail!(
                "nothing to run: put the command after `--`, e.g. `fleet send --node web1 -- uname -a`"
            );
        }
        targets
            .iter()
            .map(|node| Submission {
                command: build(
                    &key,
                    node,
                    kind,
                    method,
                    args.args.clone(),
                    args.timeout,
                    args.ttl,
                    args.parallel,
                ),
                retries: args.retries,
            })
            .collect()
    };
    if submissions.is_empty() {
        bail!("no node matches: check --nodes, --all or --label against `fleet node list`");
    }
    let wait = args.wait.unwrap_or_else(|| {
        let longest = submissions
            .iter()
            .map(|s| Duration::from_millis(s.command.timeout_ms) * (s.retries + 1))
            .max()
            .unwrap_or_default();
        longest + Duration::from_secs(30)
    });
    let ids: Vec<String> = submissions.iter().map(|s| s.command.id.clone()).collect();

    let records = if args.nats_url.is_some() {
        nats_sender(&args)
            .await?
            .send_and_wait(&submissions, (!args.no_wait).then_some(wait))
            .await?
    } else {
        let api = Api::new(&args)?;
        api.post(
            "api/v1/commands",
            &serde_json::json!({ "commands": submissions }),
        )
        .await?;
        if args.no_wait {
            Vec::new()
        } else {
            api.wait(&ids, wait).await?
        }
    };
    if args.no_wait {
        for id in &ids {
            writeln!(out, "{id}")?;
        }
        return Ok(0);
    }
    report(&mut out, &ids, &records, args.json)
}

async fn nats_sender(args: &SendArgs) -> anyhow::Result<crate::bus::nats::Sender> {
    crate::bus::nats::Sender::connect(&crate::config::NatsConfig {
        url: args.nats_url.clone(),
        prefix: args.nats_prefix.clone(),
        ca_cert: args.ca_cert.clone(),
        user: args.nats_user.clone(),
        password: args.nats_password.clone(),
        token: args.nats_token.clone(),
        nkey: args.nats_nkey.clone(),
        ..Default::default()
    })
    .await
}

/// How long a node has to carry out a `Cancel` (it waits up to 5 s for the command it stops).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(15);

/// `fleet send --cancel ID`. A command no node has yet is withdrawn by the controller; one
/// that is with its node (or on the NATS stream) is stopped there by a signed `Cancel`, which
/// kills it if it runs and keeps it from starting if it has not.
async fn cancel(args: &SendArgs, id: &str, out: &mut impl Write) -> anyhow::Result<u8> {
    let wait = args
        .wait
        .unwrap_or(CANCEL_TIMEOUT + Duration::from_secs(15));
    if args.nats_url.is_some() {
        let node = args.node.as_deref().context(
            "with --nats-url, name the command's node: `fleet send --nats-url URL --node NODE --cancel ID`",
        )?;
        let key = load_signing_key(args.signing_key.as_deref())?;
        let submission = cancel_submission(&key, node, id, args);
        let records = nats_sender(args)
            .await?
            .send_and_wait(std::slice::from_ref(&submission), Some(wait))
            .await?;
        return report(out, &[submission.command.id], &records, args.json);
    }
    let api = Api::new(args)?;
    let target = api.record(id).await?;
    if target.state.is_terminal() {
        writeln!(out, "{id}: already {}; nothing to cancel", target.state)?;
        return Ok(1);
    }
    if let Ok(value) = api
        .post(
            &format!("api/v1/commands/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await
    {
        writeln!(
            out,
            "{id}: {} (its node never had it)",
            value["state"].as_str().unwrap_or("cancelled")
        )?;
        return Ok(0);
    }
    // The node has it, or may: only a command signed by a key the node trusts can stop it.
    let key = load_signing_key(args.signing_key.as_deref()).with_context(|| {
        format!(
            "{id} is already with {}; stopping it there takes a Cancel signed with your operator key",
            target.node
        )
    })?;
    let submission = cancel_submission(&key, &target.node, id, args);
    let cancel_id = submission.command.id.clone();
    api.post(
        "api/v1/commands",
        &serde_json::json!({ "commands": [submission] }),
    )
    .await?;
    let records = api.wait(std::slice::from_ref(&cancel_id), wait).await?;
    let Some(sent) = records.first().filter(|r| r.state.is_terminal()) else {
        writeln!(
            out,
            "{id}: a Cancel ({cancel_id}) is on its way to {}; follow with `fleet send --status {id}`",
            target.node
        )?;
        return Ok(EXIT_PENDING);
    };
    if sent.state != CommandState::Succeeded {
        writeln!(out, "{id}: the Cancel ({cancel_id}) {}", one_line(sent))?;
        return Ok(1);
    }
    if let Some(result) = &sent.result {
        writeln!(
            out,
            "{}",
            termsafe::visible(&result.stdout, Shape::MultiLine)
        )?;
    }
    let after = api.record(id).await?;
    writeln!(out, "{id}: now {}", one_line(&after))?;
    Ok(if after.state == CommandState::Cancelled {
        0
    } else {
        1
    })
}

fn cancel_submission(key: &OperatorKey, node: &str, id: &str, args: &SendArgs) -> Submission {
    Submission {
        command: build(
            key,
            node,
            Kind::CommandAck,
            Method::Cancel,
            vec![id.to_owned()],
            CANCEL_TIMEOUT,
            args.ttl,
            true,
        ),
        retries: args.retries,
    }
}

/// Prints the results and works out the exit status.
fn report(
    out: &mut impl Write,
    ids: &[String],
    records: &[CommandRecord],
    json: bool,
) -> anyhow::Result<u8> {
    let by_id: BTreeMap<&str, &CommandRecord> =
        records.iter().map(|r| (r.id.as_str(), r)).collect();
    let pending = ids.iter().filter(|id| {
        by_id
            .get(id.as_str())
            .is_none_or(|r| !crate::pipeline::commands::settled(r))
    });
    let pending_count = pending.count();
    if json {
        writeln!(
            out,
            "{}",
            termsafe::json(serde_json::to_string_pretty(records)?)
        )?;
    } else if ids.len() == 1 {
        if let Some(r) = by_id.get(ids[0].as_str()) {
            if let Some(result) = &r.result {
                let stderr = std::io::stderr();
                let stdout = output(&result.stdout, std::io::stdout().is_terminal());
                out.write_all(stdout.as_bytes())?;
                let text = output(&result.stderr, stderr.is_terminal());
                stderr.lock().write_all(text.as_bytes())?;
            }
            eprintln!("{}", one_line(r));
        }
    } else {
        writeln!(
            out,
            "{:<24} {:<10} {:>5} {:>8}  OUTPUT",
            "NODE", "STATE", "EXIT", "MS"
        )?;
        for id in ids {
            if let Some(r) = by_id.get(id.as_str()) {
                let result = r.result.as_ref();
                let text = result
                    .map(|x| {
                        x.error
                            .clone()
                            .unwrap_or_else(|| x.stdout.lines().next().unwrap_or("").to_owned())
                    })
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<24} {:<10} {:>5} {:>8}  {}",
                    termsafe::visible(&r.node, Shape::OneLine),
                    r.state.as_str(),
                    result
                        .and_then(|x| x.exit_code)
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    result
                        .map(|x| x.duration_ms.to_string())
                        .unwrap_or_default(),
                    termsafe::visible(&text, Shape::OneLine)
                )?;
            }
        }
    }
    if pending_count > 0 {
        eprintln!(
            "{pending_count} command(s) not settled yet; they stay queued until their TTL. Follow with `fleet send --status ID`: {}",
            ids.iter()
                .filter(|id| by_id
                    .get(id.as_str())
                    .is_none_or(|r| !r.state.is_terminal()))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Ok(EXIT_PENDING);
    }
    if ids.len() == 1 {
        return Ok(by_id.get(ids[0].as_str()).map_or(1, |r| exit_status(r)));
    }
    Ok(if records.iter().all(|r| exit_status(r) == 0) {
        0
    } else {
        1
    })
}

/// A command's stdout or stderr as printed. It is the user's data: as sent into a pipe or a
/// file, where a program reads it; shown, not obeyed, on a terminal, where a hostile node's
/// escape sequences would otherwise drive the operator's screen.
fn output(text: &str, terminal: bool) -> Cow<'_, str> {
    if terminal {
        termsafe::visible(text, Shape::MultiLine)
    } else {
        Cow::Borrowed(text)
    }
}

fn exit_status(r: &CommandRecord) -> u8 {
    match r.state {
        CommandState::Succeeded => 0,
        // NACK kinds: done once delivered.
        CommandState::Delivered | CommandState::Running | CommandState::Queued => 0,
        CommandState::TimedOut => EXIT_TIMED_OUT,
        CommandState::Failed => match r.result.as_ref().and_then(|x| x.exit_code) {
            Some(code) if (1..=255).contains(&code) => code as u8,
            _ => 1,
        },
        CommandState::Expired | CommandState::Cancelled => 1,
    }
}

fn one_line(r: &CommandRecord) -> String {
    let result = r.result.as_ref();
    let mut line = format!("{}: {}", r.node, r.state);
    if let Some(code) = result.and_then(|x| x.exit_code) {
        line.push_str(&format!(", exit {code}"));
    }
    if let Some(x) = result {
        line.push_str(&format!(", {} ms", x.duration_ms));
        if x.truncated {
            line.push_str(", output truncated");
        }
        if let Some(e) = &x.error {
            line.push_str(&format!(": {e}"));
        }
    }
    line.push_str(&format!(" ({} attempt(s), id {})", r.attempts, r.id));
    // The error is the node's own words (and over NATS unverified): shown, not obeyed.
    termsafe::visible(&line, Shape::OneLine).into_owned()
}

fn print_one(out: &mut impl Write, r: &CommandRecord) -> std::io::Result<()> {
    writeln!(out, "{} {} {} {:?}", r.id, r.kind, r.method, r.args)?;
    writeln!(out, "  {}", one_line(r))?;
    writeln!(
        out,
        "  sent by {} via {} at {}",
        r.sent_by, r.via, r.created_at
    )?;
    if let Some(result) = &r.result {
        if !result.stdout.is_empty() {
            let text = termsafe::visible(result.stdout.trim_end(), Shape::MultiLine);
            writeln!(out, "  stdout: {text}")?;
        }
        if !result.stderr.is_empty() {
            let text = termsafe::visible(result.stderr.trim_end(), Shape::MultiLine);
            writeln!(out, "  stderr: {text}")?;
        }
    }
    Ok(())
}

/// Reads the operator key file.
pub fn load_signing_key(path: Option<&Path>) -> anyhow::Result<OperatorKey> {
    let path = path.context(
        "no operator key: pass --signing-key FILE or set FLEET_SIGNING_KEY (make one with `fleet operator keygen`)",
    )?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the operator key {}", path.display()))?;
    OperatorKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// One message of a steward message file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StewardMessage {
    to_node: Option<String>,
    #[serde(default)]
    to_nodes: Vec<String>,
    #[serde(default)]
    data: Vec<String>,
    command_or_event: String,
    method: String,
    /// Seconds.
    timeout: Option<u64>,
    retries: Option<u32>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn from_steward_file(
    path: &Path,
    key: &OperatorKey,
    ttl: Duration,
    parallel: bool,
) -> anyhow::Result<Vec<Submission>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let messages: Vec<StewardMessage> = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: {} at {}", path.display(), e.inner(), e.path()))?;
    let mut submissions = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let at = |e: String| anyhow::anyhow!("{}: message {i}: {e}", path.display());
        if !m.other.is_empty() {
            eprintln!(
                "note: {}: message {i}: ignoring fields fleet does not use: {}",
                path.display(),
                m.other.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let kind = Kind::parse(&m.command_or_event).map_err(|e| at(e.problem))?;
        let method = Method::parse(&m.method).map_err(|e| at(e.problem))?;
        let nodes: Vec<String> = m.to_node.into_iter().chain(m.to_nodes).collect();
        if nodes.is_empty() {
            return Err(at("no toNode".into()));
        }
        let timeout = Duration::from_secs(m.timeout.unwrap_or(30).max(1));
        for node in nodes {
            submissions.push(Submission {
                command: build(
                    key,
                    &node,
                    kind,
                    method,
                    m.data.clone(),
                    timeout,
                    ttl,
                    parallel,
                ),
                retries: m.retries.unwrap_or(3),
            });
        }
    }
    Ok(submissions)
}

/// The target nodes of a send: named, or resolved through the controller.
async fn targets(args: &SendArgs) -> anyhow::Result<Vec<String>> {
    if let Some(node) = &args.node {
        return Ok(vec![node.clone()]);
    }
    if !args.nodes.is_empty() {
        return Ok(args.nodes.clone());
    }
    if !args.all && args.label.is_empty() {
        bail!("no target: pass --node NAME, --nodes a,b,c, --all or --label key=value");
    }
    let api = Api::new(args).context("--all and --label look nodes up through the controller")?;
    let value = api.get("api/v1/nodes").await?;
    let nodes = value["nodes"].as_array().cloned().unwrap_or_default();
    Ok(nodes
        .iter()
        // MassAffect agents are listed but take no commands.
        .filter(|n| n["source"] != "massaffect")
        .filter(|n| {
            args.label
                .iter()
                .all(|(k, v)| n["labels"][k].as_str() == Some(v.as_str()))
        })
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect())
}

/// The controller's API, as an operator.
pub struct Api {
    client: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

impl Api {
    fn new(args: &SendArgs) -> anyhow::Result<Self> {
        let controller = args.controller.as_deref().context(
            "no controller: pass --controller URL or set FLEET_CONTROLLER (or use --nats-url)",
        )?;
        let token = args
            .api_token
            .clone()
            .context("no operator token: pass --api-token or set FLEET_API_TOKEN")?;
        Self::connect(controller, &token, args.ca_cert.as_deref())
    }

    pub fn connect(controller: &str, token: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let token = token.to_owned();
        let mut base = reqwest::Url::parse(controller)
            .with_context(|| format!("controller URL {controller:?} is not a URL"))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self {
            client: crate::bus::http::agent_client(ca_cert, Duration::from_secs(90))?,
            base,
            token,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = accepted(request.bearer_auth(&self.token)).await?;
        response
            .json()
            .await
            .context("the controller's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(self.client.get(self.base.join(path)?)).await
    }

    /// One command's record.
    pub async fn record(&self, id: &str) -> anyhow::Result<CommandRecord> {
        let value = self.get(&format!("api/v1/commands/{id}")).await?;
        serde_json::from_value(value).context("the controller's answer is not a command")
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.call(self.client.post(self.base.join(path)?).json(body))
            .await
    }

    /// Reads the Server-Sent Events at `path` (resuming after `last_id`) and hands each entry
    /// to `on_entry`; returns when the stream ends or goes silent past its keep-alives.
    pub async fn follow(
        &self,
        path: &str,
        last_id: Option<i64>,
        mut on_entry: impl FnMut(crate::store::events::EventEntry) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut request = self
            .client
            .get(self.base.join(path)?)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            // The stream is meant to last; silence is watched below instead.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let mut response = accepted(request).await?;
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            // Keep-alives come every 15 s: three missed means the connection is gone.
            let chunk = tokio::time::timeout(Duration::from_secs(45), response.chunk())
                .await
                .context("the event stream went silent")?
                .context("the event stream broke")?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buffer.extend_from_slice(&chunk);
            if buffer.len() > 4 * 1024 * 1024 {
                bail!("an event in the stream is larger than 4 MiB");
            }
            // One event per blank-line-separated block; only `data:` lines matter here.
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                let entry = serde_json::from_str(&data)
                    .with_context(|| format!("an event in the stream is not an entry: {data}"))?;
                on_entry(entry)?;
            }
        }
    }

    /// Long-polls until every id is settled or `wait` passes.
    pub async fn wait(&self, ids: &[String], wait: Duration) -> anyhow::Result<Vec<CommandRecord>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let step = left.min(Duration::from_secs(25));
            let value = self
                .post(
                    "api/v1/commands/wait",
                    &serde_json::json!({ "ids": ids, "wait": format!("{}ms", step.as_millis()) }),
                )
                .await?;
            let records: Vec<CommandRecord> = serde_json::from_value(value["commands"].clone())
                .context("the controller's answer is not a list of commands")?;
            let done = records.iter().all(crate::pipeline::commands::settled);
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }
}

/// Sends a request to the controller; a refusal becomes an error carrying its reason.
pub async fn accepted(request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let response = request
        .send()
        .await
        .context("cannot reach the controller")?;
    if !response.status().is_success() {
        bail!(
            "the controller answered {}",
            crate::bus::http::error_text(response).await
        );
    }
    Ok(response)
}

/// `fleet operator keygen`: writes a new key file (mode 0600) and `FILE.pub`, and returns the
/// public key to list in nodes' `[commands] trusted_keys`.
pub fn keygen(path: &Path, force: bool) -> anyhow::Result<String> {
    let key = OperatorKey::generate();
    let mut file = crate::files::options()
        .write(true)
        .create(true)
        .create_new(!force)
        .truncate(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (it may exist already: pass --force to replace it)",
                path.display()
            )
        })?;
    // A file replaced with --force keeps its mode unless narrowed: a new secret in an old
    // world-readable file would be no secret.
    crate::files::narrow(&file)
        .with_context(|| format!("cannot make {} private", path.display()))?;
    file.write_all(key.secret_text().as_bytes())?;
    file.sync_all()?;
    let public = key.public();
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok(public)
}
