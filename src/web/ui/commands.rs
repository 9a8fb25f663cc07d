//! The commands page: the history, and the form that sends a command to one or many nodes.
//! Sending takes two posts: `/commands/confirm` shows which nodes a draft reaches (and the
//! `fleet send` line that does the same), `/commands/send` signs the commands with the
//! controller's dashboard key and queues them. Without a dashboard key the confirmation shows
//! only the `fleet send` line: the controller never signs with a key it does not hold, and a
//! node never runs what its own `trusted_keys` does not list.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{self, CommandDraft, SendForm};
use super::session::{self, Viewer};
use crate::command::{Kind, Method, limits};
use crate::pipeline::commands::Submission;
use crate::web::error::ApiError;
use crate::web::{ApiQuery, AppState};

/// Commands the history shows.
const HISTORY: i64 = 50;
/// How long a command from the form waits for an offline node.
const TTL: Duration = Duration::from_secs(3600);
/// Redeliveries of a command from the form (as `fleet send`'s default).
const RETRIES: u32 = 3;
const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The longest command line the form takes.
const LINE_MAX: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Fills the form's node field (the node page links here with its name).
    nodes: Option<String>,
    /// The history shows only this node's commands.
    node: Option<String>,
    /// The history shows only commands in this state.
    state: Option<String>,
}

/// Which commands the history (and its live stream) shows.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub node: Option<String>,
    pub state: Option<crate::command::CommandState>,
}

impl HistoryFilter {
    /// From a query string: an empty field means any; a bad one is refused.
    pub fn parse(node: Option<String>, state: Option<String>) -> Result<Self, ApiError> {
        let node = node.filter(|n| !n.is_empty());
        if let Some(n) = &node {
            crate::model::NodeName::parse(n).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        let state = match state.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                crate::command::CommandState::parse(text)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
        };
        Ok(Self { node, state })
    }

    /// The filter as a query string (without `?`), for the live stream.
    pub fn query(&self) -> String {
        let mut url = reqwest::Url::parse("http://q.invalid/").expect("a literal URL");
        {
            let mut q = url.query_pairs_mut();
            if let Some(n) = &self.node {
                q.append_pair("node", n);
            }
            if let Some(s) = self.state {
                q.append_pair("state", s.as_str());
            }
        }
        url.query().unwrap_or_default().to_owned()
    }

    /// The id, state and attempts of the newest commands that pass.
    pub async fn newest_states(
        &self,
        state: &AppState,
        limit: i64,
    ) -> Result<Vec<(String, crate::command::CommandState, i64)>, crate::store::durable::StoreError>
    {
        state
            .durable
            .command_states(self.node.as_deref(), self.state, limit)
            .await
    }

    /// The newest commands that pass.
    pub async fn newest(
        &self,
        state: &AppState,
        limit: i64,
    ) -> Result<Vec<crate::store::commands::CommandRecord>, crate::store::durable::StoreError> {
        state
            .durable
            .commands(self.node.as_deref(), self.state, limit)
            .await
    }
}

/// `GET /commands?nodes=`
pub async fn page(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let filter = HistoryFilter::parse(query.node, query.state)?;
    let draft = CommandDraft {
        targets: query.nodes.unwrap_or_default(),
        ..Default::default()
    };
    render_filtered(
        &state,
        &viewer,
        SendForm::Draft {
            draft: &draft,
            problem: None,
        },
        &filter,
    )
    .await
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    form: SendForm<'_>,
) -> Result<Response, ApiError> {
    render_filtered(state, viewer, form, &HistoryFilter::default()).await
}

async fn render_filtered(
    state: &AppState,
    viewer: &Viewer,
    form: SendForm<'_>,
    filter: &HistoryFilter,
) -> Result<Response, ApiError> {
    let commands = filter.newest(state, HISTORY).await?;
    let key = state.dashboard_key.as_ref().map(|k| k.public());
    // The empty history's example names a node that exists and takes commands (the first by
    // name), so it can be run as shown.
    let example = state.registry.snapshot().nodes.keys().min().cloned();
    Ok(Html(
        pages::commands_page(
            (&viewer.who, &viewer.csrf),
            key.as_deref(),
            form,
            filter,
            &commands,
            example.as_deref(),
            crate::timefmt::now_ms(),
        )
        .into_string(),
    )
    .into_response())
}

#[derive(Deserialize)]
pub struct SendFormBody {
    csrf: Option<String>,
    #[serde(default)]
    targets: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    timeout: String,
    /// The nodes the operator confirmed, comma separated (the send form carries them).
    #[serde(default)]
    nodes: String,
    /// The command ids chosen at confirmation, one per node: sending the form twice (a
    /// double click, a reload) queues each command once.
    #[serde(default)]
    ids: String,
}

/// Whom a draft is for.
#[derive(Debug, Clone, PartialEq)]
enum Targets {
    All,
    Label(String, String),
    Names(Vec<String>),
}

/// A draft read and checked: the targets, the argv, the timeout.
struct Checked {
    targets: Targets,
    argv: Vec<String>,
    timeout: Duration,
}

fn check(draft: &CommandDraft) -> Result<Checked, String> {
    if draft.targets.len() > LINE_MAX {
        return Err(format!(
            "The node list is longer than {LINE_MAX} bytes: use a label."
        ));
    }
    let text = draft.targets.trim();
    let targets = if text.is_empty() {
        return Err("Say which nodes: names, label:key=value, or all.".into());
    } else if text == "all" {
        Targets::All
    } else if let Some(label) = text.strip_prefix("label:") {
        let (k, v) = crate::model::parse_label(label.trim()).map_err(|e| e.to_string())?;
        Targets::Label(k, v)
    } else {
        let names: Vec<String> = text
            .split([',', ' '])
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        for n in &names {
            crate::model::NodeName::parse(n).map_err(|e| e.to_string())?;
        }
        Targets::Names(names)
    };
    if draft.command.len() > LINE_MAX {
        return Err(format!("The command is longer than {LINE_MAX} bytes."));
    }
    let argv = shlex::split(draft.command.trim()).ok_or("The command's quotes do not close.")?;
    if argv.is_empty() {
        return Err("Say what to run, e.g. uptime.".into());
    }
    if argv.len() > limits::ARGS_MAX {
        return Err(format!("More than {} arguments.", limits::ARGS_MAX));
    }
    let timeout = match draft.timeout.trim() {
        "" => TIMEOUT_DEFAULT,
        t => humantime::parse_duration(t)
            .map_err(|e| format!("Timeout {t:?}: {e}; write it like 30s or 5m."))?,
    };
    if timeout.is_zero() || timeout.as_millis() > u128::from(limits::TIMEOUT_MAX_MS) {
        return Err("The timeout must be more than 0 and at most 24h.".into());
    }
    Ok(Checked {
        targets,
        argv,
        timeout,
    })
}

/// The enrolled nodes a draft reaches, by name.
async fn resolve(state: &AppState, targets: &Targets) -> Result<Vec<String>, String> {
    let mut nodes = crate::web::api::node_summaries(state)
        .await
        .map_err(|e| format!("The node list cannot be read: {e:?}"))?;
    // MassAffect agents are listed but take no commands.
    nodes.retain(|n| n.source != crate::model::NodeSource::Massaffect);
    let names: Vec<String> = match targets {
        Targets::All => nodes.into_iter().map(|n| n.name).collect(),
        Targets::Label(k, v) => nodes
            .into_iter()
            .filter(|n| n.labels.get(k) == Some(v))
            .map(|n| n.name)
            .collect(),
        Targets::Names(wanted) => {
            let unknown: Vec<&str> = wanted
                .iter()
                .filter(|w| !nodes.iter().any(|n| &n.name == *w))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(format!("Not enrolled: {}.", unknown.join(", ")));
            }
            // Each node once, in the order typed: a name given twice must not run twice.
            let mut seen = std::collections::HashSet::new();
            let mut names = wanted.clone();
            names.retain(|n| seen.insert(n.clone()));
            names
        }
    };
    if names.is_empty() {
        return Err("No node matches.".into());
    }
    if names.len() > limits::SUBMISSION_MAX {
        return Err(format!(
            "More than {} nodes at once.",
            limits::SUBMISSION_MAX
        ));
    }
    Ok(names)
}

/// The `fleet send` line that sends the same command.
fn fleet_send_line(checked: &Checked, nodes: &[String]) -> String {
    let target = match &checked.targets {
        Targets::All => "--all".to_owned(),
        Targets::Label(k, v) => format!("--label {}", quote(&format!("{k}={v}"))),
        Targets::Names(_) if nodes.len() == 1 => format!("--node {}", nodes[0]),
        Targets::Names(_) => format!("--nodes {}", nodes.join(",")),
    };
    let argv: Vec<String> = checked.argv.iter().map(|a| quote(a)).collect();
    format!(
        "fleet send {target} --timeout {} --ttl {} -- {}",
        humantime::format_duration(checked.timeout),
        humantime::format_duration(TTL),
        argv.join(" ")
    )
}

fn quote(text: &str) -> String {
    shlex::try_quote(text)
        .map(|q| q.into_owned())
        // A NUL cannot be quoted for a shell, nor sent as an argument.
        .unwrap_or_else(|_| text.replace('\0', ""))
}

/// The draft a posted form holds, once the form is known to be this session's own.
fn draft_of(
    headers: &HeaderMap,
    viewer: &Viewer,
    body: &SendFormBody,
) -> Result<CommandDraft, session::Refused> {
    viewer.check_form(headers, body.csrf.as_deref())?;
    Ok(CommandDraft {
        targets: body.targets.clone(),
        command: body.command.clone(),
        timeout: body.timeout.clone(),
    })
}

/// A draft checked, and the nodes it reaches; or what to fix, for the form.
async fn check_and_resolve(
    state: &AppState,
    draft: &CommandDraft,
) -> Result<(Checked, Vec<String>), String> {
    let checked = check(draft)?;
    let nodes = resolve(state, &checked.targets).await?;
    Ok((checked, nodes))
}

/// `POST /commands/confirm`: which nodes the draft reaches, and the button that sends it.
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(body): Form<SendFormBody>,
) -> Result<Response, ApiError> {
    let draft = match draft_of(&headers, &viewer, &body) {
        Ok(draft) => draft,
        Err(refused) => return Ok(refused.into_response()),
    };
    match check_and_resolve(&state, &draft).await {
        Ok((checked, nodes)) => {
            let line = fleet_send_line(&checked, &nodes);
            let ids: Vec<String> = nodes.iter().map(|_| crate::command::new_id()).collect();
            render(
                &state,
                &viewer,
                SendForm::Confirm {
                    draft: &draft,
                    nodes: &nodes,
                    ids: &ids,
                    fleet_send: &line,
                },
            )
            .await
        }
        Err(problem) => refuse(&state, &viewer, &draft, &problem).await,
    }
}

async fn refuse(
    state: &AppState,
    viewer: &Viewer,
    draft: &CommandDraft,
    problem: &str,
) -> Result<Response, ApiError> {
    let mut page = render(
        state,
        viewer,
        SendForm::Draft {
            draft,
            problem: Some(problem),
        },
    )
    .await?;
    *page.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    Ok(page)
}

/// `POST /commands/send`: signs the draft's commands with the dashboard key and queues them;
/// back to the history, where their results arrive live.
pub async fn send(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(body): Form<SendFormBody>,
) -> Result<Response, ApiError> {
    let draft = match draft_of(&headers, &viewer, &body) {
        Ok(draft) => draft,
        Err(refused) => return Ok(refused.into_response()),
    };
    let Some(key) = state.dashboard_key.clone() else {
        return refuse(
            &state,
            &viewer,
            &draft,
            "This controller holds no dashboard key ([ui] signing_key): send it with fleet send.",
        )
        .await;
    };
    let (checked, nodes) = match check_and_resolve(&state, &draft).await {
        Ok(both) => both,
        Err(problem) => return refuse(&state, &viewer, &draft, &problem).await,
    };
    // Exactly the nodes the operator confirmed: `all` or a label may reach others by now.
    let confirmed: Vec<&str> = body.nodes.split(',').filter(|n| !n.is_empty()).collect();
    if confirmed != nodes.iter().map(String::as_str).collect::<Vec<_>>() {
        let problem = format!(
            "The nodes this reaches changed since you reviewed it (now {}): review it again.",
            nodes.join(", ")
        );
        return refuse(&state, &viewer, &draft, &problem).await;
    }
    let ids: Vec<&str> = body.ids.split(',').filter(|i| !i.is_empty()).collect();
    if ids.len() != nodes.len() || ids.iter().any(|i| ulid::Ulid::from_string(i).is_err()) {
        return refuse(
            &state,
            &viewer,
            &draft,
            "The form is incomplete: review the command again.",
        )
        .await;
    }
    let submissions: Vec<Submission> = nodes
        .iter()
        .zip(&ids)
        .map(|(node, id)| {
            let mut command = crate::command::build(
                &key,
                node,
                Kind::CommandAck,
                Method::CliCommand,
                checked.argv.clone(),
                checked.timeout,
                TTL,
                false,
            );
            command.id = (*id).to_owned();
            key.sign(&mut command);
            Submission {
                command,
                retries: RETRIES,
            }
        })
        .collect();
    let sent_by = format!("{} (dashboard)", viewer.who);
    state.commands.submit(submissions, &sent_by, "ui").await?;
    Ok(Redirect::to("/commands").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(targets: &str, command: &str, timeout: &str) -> CommandDraft {
        CommandDraft {
            targets: targets.into(),
            command: command.into(),
            timeout: timeout.into(),
        }
    }

    #[test]
    fn a_draft_reads_its_targets_argv_and_timeout() {
        let c = check(&draft("web1, web2 db1", "systemctl restart 'my app'", "5m")).unwrap();
        assert_eq!(
            c.targets,
            Targets::Names(vec!["web1".into(), "web2".into(), "db1".into()])
        );
        assert_eq!(c.argv, ["systemctl", "restart", "my app"]);
        assert_eq!(c.timeout, Duration::from_secs(300));
        let c = check(&draft("label:role=web", "uptime", "")).unwrap();
        assert_eq!(c.targets, Targets::Label("role".into(), "web".into()));
        assert_eq!(c.timeout, TIMEOUT_DEFAULT);
        assert_eq!(
            check(&draft("all", "uptime", "")).unwrap().targets,
            Targets::All
        );
    }

    #[test]
    fn a_bad_draft_says_what_to_fix() {
        for (d, says) in [
            (draft("", "uptime", ""), "Say which nodes"),
            (draft("web1", "  ", ""), "Say what to run"),
            (draft("web1", "echo 'open", ""), "quotes do not close"),
            (draft("web/1", "uptime", ""), "node"),
            (draft("label:role", "uptime", ""), "key=value"),
            (draft("web1", "uptime", "soon"), "write it like 30s"),
            (draft("web1", "uptime", "2d"), "at most 24h"),
        ] {
            let problem = check(&d)
                .err()
                .unwrap_or_else(|| panic!("{:?} passed", d.targets));
            assert!(problem.contains(says), "{problem:?} should say {says:?}");
        }
    }

    #[test]
    fn the_fleet_send_line_quotes_what_a_shell_would_split() {
        let c = check(&draft("web1,web2", "sh -c 'echo $HOME; ls'", "10s")).unwrap();
        let line = fleet_send_line(&c, &["web1".into(), "web2".into()]);
        assert_eq!(
            line,
            "fleet send --nodes web1,web2 --timeout 10s --ttl 1h -- sh -c 'echo $HOME; ls'"
        );
        let c = check(&draft("label:role=web", "uptime", "")).unwrap();
        assert_eq!(
            fleet_send_line(&c, &["a".into()]),
            "fleet send --label 'role=web' --timeout 30s --ttl 1h -- uptime"
        );
    }
}
