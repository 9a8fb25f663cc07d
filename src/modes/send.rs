//! `fleet send`: builds commands (from flags or a steward message file), signs them with the
//! operator key, submits them through the controller's API (or straight onto NATS), waits for
//! the results and prints them. Also `--status ID` and `--cancel ID`. Wiring and presentation
//! only: signing is `command`, the API client `client`, the key file `operator`, the queue the
//! controller's.
//! What nodes said is printed through `termsafe`: a command's output raw into a pipe or a file,
//! with its control characters made visible on a terminal; summaries always made visible.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::operator::load_signing_key;
use crate::client::Api;
use crate::command::{CommandRecord, CommandState, Kind, Method, OperatorKey, Submission, build};
use crate::steward;
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
    /// Send the messages of a steward message file: JSON arrays of messages (toNode(s),
    /// data or methodArgs, method, timeout or methodTimeout, retries), either version's names.
    #[arg(long, value_name = "FILE", conflicts_with = "watch")]
    pub file: Option<PathBuf>,
    /// steward's inbox: send the messages appended to FILE (`cat msg.json >> FILE`) as they
    /// come, emptying it; runs until interrupted. Either version's names are taken.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["status", "cancel"])]
    pub watch: Option<PathBuf>,
    /// Controller base URL [default: http://127.0.0.1:7070].
    #[arg(long, env = "FLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator API token [default with the default controller: the one in
    /// ./fleet-data/operator-token].
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Operator key file (from `fleet operator keygen`) to sign commands with.
    #[arg(long, env = "FLEET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// PEM CA certificate to verify the controller (or a tls:// NATS server) with.
    #[arg(long, env = "FLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub nats: super::NatsArgs,
    /// The command (CLICommand: program and arguments) or the event's text.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Runs `fleet send` and returns the process exit status.
pub async fn run(args: SendArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    if let Some(id) = &args.status {
        let api = api(&args)?;
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

    if let Some(file) = &args.watch {
        return watch(&args, file).await;
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

    let records = if args.nats.url.is_some() {
        nats_sender(&args)
            .await?
            .send_and_wait(&submissions, (!args.no_wait).then_some(wait))
            .await?
    } else {
        let api = api(&args)?;
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
    crate::bus::nats::Sender::connect(&args.nats.config(args.ca_cert.as_deref())).await
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
    if args.nats.url.is_some() {
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
    let api = api(args)?;
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
    let pending = ids
        .iter()
        .filter(|id| by_id.get(id.as_str()).is_none_or(|r| !r.settled()));
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

/// The commands of steward messages, signed; `id` names each (message, target) pair's id.
fn steward_submissions(
    messages: &[steward::Message],
    key: &OperatorKey,
    ttl: Duration,
    parallel: bool,
    mut id: impl FnMut(usize, usize) -> Option<String>,
    source: &str,
) -> anyhow::Result<Vec<Submission>> {
    let mut submissions = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = |e: String| anyhow::anyhow!("{source}: message {i}: {e}");
        if !m.other.is_empty() {
            eprintln!(
                "note: {source}: message {i}: ignoring fields fleet does not use: {}",
                m.other.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let request = m.request().map_err(at)?;
        for (t, node) in request.nodes.iter().enumerate() {
            let mut command = build(
                key,
                node,
                request.kind,
                request.method,
                request.args.clone(),
                request.timeout,
                ttl,
                parallel || request.parallel,
            );
            if let Some(id) = id(i, t) {
                // A derived id: the same message sent again is recognised by the controller.
                command.id = id;
                key.sign(&mut command);
            }
            submissions.push(Submission {
                command,
                retries: request.retries,
            });
        }
    }
    Ok(submissions)
}

fn from_steward_file(
    path: &Path,
    key: &OperatorKey,
    ttl: Duration,
    parallel: bool,
) -> anyhow::Result<Vec<Submission>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let read = steward::parse_appended(&bytes);
    match read.tail {
        steward::Tail::Complete => {}
        steward::Tail::Partial => bail!(
            "{}: the file ends inside a message array; is it still being written?",
            path.display()
        ),
        steward::Tail::Invalid { offset, problem } => bail!(
            "{}: not a message array at byte {offset}: {problem}",
            path.display()
        ),
    }
    steward_submissions(
        &read.messages,
        key,
        ttl,
        parallel,
        |_, _| None,
        &path.display().to_string(),
    )
}

/// `fleet send --watch FILE`: steward's inbox. Messages appended to FILE are sent, and the file
/// emptied as they are (`inbox_file`); runs until interrupted.
async fn watch(args: &SendArgs, file: &Path) -> anyhow::Result<u8> {
    let key = load_signing_key(args.signing_key.as_deref())?;
    let api = if args.nats.url.is_some() {
        None
    } else {
        Some(api(args)?)
    };
    let nats = match &args.nats.url {
        Some(_) => Some(nats_sender(args).await?),
        None => None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
    }
    eprintln!(
        "watching {}: messages appended to it are sent (Ctrl-C to stop)",
        file.display()
    );
    let source = file.display().to_string();
    crate::inbox_file::InboxFile::new(file)
        .watch(&stop, |batch| {
            let messages: Vec<steward::Message> = batch.iter().map(|n| n.message.clone()).collect();
            let submissions = steward_submissions(
                &messages,
                &key,
                args.ttl,
                args.parallel,
                |i, t| Some(batch[i].command_id(t)),
                &source,
            );
            let (api, nats) = (api.as_ref(), nats.as_ref());
            async move {
                let submissions = match submissions {
                    Ok(s) => s,
                    // A message that cannot be a command: say so, send the rest.
                    Err(err) => {
                        eprintln!("fleet send --watch: {err:#}");
                        Vec::new()
                    }
                };
                if submissions.is_empty() {
                    return Ok(());
                }
                match (api, nats) {
                    (Some(api), _) => {
                        api.post(
                            "api/v1/commands",
                            &serde_json::json!({ "commands": submissions }),
                        )
                        .await?;
                    }
                    (None, Some(nats)) => {
                        nats.send_and_wait(&submissions, None).await?;
                    }
                    (None, None) => unreachable!("one of the two is made above"),
                }
                for s in &submissions {
                    println!("{} {}", s.command.id, s.command.node);
                }
                Ok(())
            }
        })
        .await?;
    Ok(0)
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
    let api = api(args).context("--all and --label look nodes up through the controller")?;
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

/// The controller's API as the operator `args` name.
/// Without --controller and --api-token, the local quick-start controller and its token file
/// (`super::operator_endpoint`).
fn api(args: &SendArgs) -> anyhow::Result<Api> {
    let endpoint =
        super::operator_endpoint(args.controller.as_deref(), args.api_token.as_deref(), true)?;
    let controller = endpoint.controller.as_str();
    let token = endpoint.token.ok_or_else(|| super::no_token(controller))?;
    Api::connect(controller, &token, args.ca_cert.as_deref())
}
