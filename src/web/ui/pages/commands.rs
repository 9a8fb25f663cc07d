//! `/commands`: the two-step send form (a draft, then the nodes it reaches with the button that
//! sends, or the `fleet send` line to run), then the history, whose rows its live stream
//! replaces as commands change state (the node page shows the same table).
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::{layout, when};
use crate::store::commands::CommandRecord;
use crate::web::ui::commands::HistoryFilter;

/// A command's state as a word, coloured.
fn command_state(state: crate::command::CommandState) -> Markup {
    use crate::command::CommandState as S;
    let class = match state {
        S::Succeeded => "state good",
        S::Failed | S::TimedOut | S::Expired => "state bad",
        S::Cancelled => "state muted",
        S::Queued | S::Delivered | S::Running => "state pending",
    };
    html! { span class=(class) { (state.as_str().replace('_', " ")) } }
}

/// Most output a list shows of one stream; the whole is in the API.
const OUTPUT_SHOWN: usize = 4096;

/// The end of a command's output, where the answer usually is, cut at [`OUTPUT_SHOWN`] bytes.
fn output_tail(text: &str) -> String {
    if text.len() <= OUTPUT_SHOWN {
        return text.to_owned();
    }
    // The cut moves forward to a character boundary: never more than OUTPUT_SHOWN bytes shown.
    let cut = text.ceil_char_boundary(text.len() - OUTPUT_SHOWN);
    format!(
        "… {} bytes before this (GET /api/v1/commands/{{id}} has them)\n{}",
        cut,
        &text[cut..]
    )
}

/// One command with its result: a row replaced live as its state changes.
pub fn command_row(c: &CommandRecord, now_ms: i64) -> Markup {
    let created = crate::timefmt::parse_time(&c.created_at, now_ms).ok();
    // A program as a shell would read it; another method by name, then its arguments.
    let args =
        shlex::try_join(c.args.iter().map(String::as_str)).unwrap_or_else(|_| c.args.join(" "));
    let what = match c.method {
        crate::command::Method::CliCommand => args,
        method if args.is_empty() => method.as_str().to_owned(),
        method => format!("{} {args}", method.as_str()),
    };
    html! {
        tr id={ "cmd-" (c.id) } data-state=(c.state.as_str()) {
            td { (when(created, now_ms)) }
            td { a href={ "/nodes/" (c.node) } { (c.node) } }
            td { code { (what) } }
            td { (command_state(c.state)) }
            td.num {
                @if let Some(code) = c.result.as_ref().and_then(|r| r.exit_code) { (code) }
            }
            td.output {
                @if let Some(r) = &c.result {
                    @if let Some(error) = &r.error { p.error { (error) } }
                    @if !r.stdout.is_empty() { pre.stdout { (output_tail(&r.stdout)) } }
                    @if !r.stderr.is_empty() { pre.stderr { (output_tail(&r.stderr)) } }
                    @if r.truncated { p.muted { "Output was cut at the node's limit." } }
                    @if r.duration_ms > 0 { span.muted { "took " (super::duration(r.duration_ms as i64)) } }
                }
            }
            td.wide.muted { (c.id) br; "by " (c.sent_by) }
        }
    }
}

pub fn command_table(commands: &[CommandRecord], live: Option<&str>, now_ms: i64) -> Markup {
    html! {
        table.commands {
            thead { tr { th { "Sent" } th { "Node" } th { "Command" } th { "State" } th.num { "Exit" } th { "Output" } th.wide { "Id" } } }
            tbody #commands data-live=[live] {
                @for c in commands { (command_row(c, now_ms)) }
            }
        }
    }
}

/// What the command form was given, to show it again (the confirmation, a refusal).
#[derive(Default, Clone)]
pub struct CommandDraft {
    /// Node names, comma or space separated, or `label:key=value`, or `all`.
    pub targets: String,
    pub command: String,
    pub timeout: String,
}

/// What the commands page says about sending.
pub enum SendForm<'a> {
    /// The form, empty or filled again with a problem.
    Draft {
        draft: &'a CommandDraft,
        problem: Option<&'a str>,
    },
    /// The nodes a draft resolves to, with the button that sends it.
    Confirm {
        draft: &'a CommandDraft,
        nodes: &'a [String],
        /// One command id per node, chosen now: the send form carries them.
        ids: &'a [String],
        fleet_send: &'a str,
    },
}

/// `/commands`: the form, then the history (live).
pub fn commands_page(
    viewer: (&str, &str),
    dashboard_key: Option<&str>,
    form: SendForm,
    filter: &HistoryFilter,
    commands: &[CommandRecord],
    example_node: Option<&str>,
    now_ms: i64,
) -> Markup {
    let (_, csrf) = viewer;
    let live = match filter.query() {
        q if q.is_empty() => "/live/commands".to_owned(),
        q => format!("/live/commands?{q}"),
    };
    let filtered = filter.node.is_some() || filter.state.is_some();
    layout(
        "Commands",
        Some(viewer),
        html! {
            h1 { "Commands" }
            section.send {
                h2 { "Send a command" }
                @match form {
                    SendForm::Draft { draft, problem } => {
                        @if let Some(problem) = problem { p.error role="alert" { (problem) } }
                        form method="post" action="/commands/confirm" {
                            input type="hidden" name="csrf" value=(csrf);
                            p { label { "Nodes " br;
                                input #targets type="text" name="targets" value=(draft.targets) required size="40"
                                    placeholder="web1, web2   or   label:role=web   or   all"; } }
                            p { label { "Command " br;
                                input #command type="text" name="command" value=(draft.command) required size="60"
                                    placeholder="uptime"; } }
                            p { label { "Timeout " br;
                                input #timeout type="text" name="timeout" value=(draft.timeout) size="8" placeholder="30s"; } }
                            button type="submit" { "Review" }
                        }
                    }
                    SendForm::Confirm { draft, nodes, ids, fleet_send } => {
                        p { "Run " code { (draft.command) } " on " strong { (nodes.len()) @if nodes.len() == 1 { " node" } @else { " nodes" } } ": " (nodes.join(", ")) "?" }
                        @if dashboard_key.is_some() {
                            form method="post" action="/commands/send" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="targets" value=(draft.targets);
                                input type="hidden" name="command" value=(draft.command);
                                input type="hidden" name="timeout" value=(draft.timeout);
                                input type="hidden" name="nodes" value=(nodes.join(","));
                                input type="hidden" name="ids" value=(ids.join(","));
                                button #send type="submit" { "Send to " (nodes.len()) @if nodes.len() == 1 { " node" } @else { " nodes" } }
                                " " a href="/commands" { "Cancel" }
                            }
                            p.muted { "Or from a terminal:" }
                        } @else {
                            p { "This controller holds no dashboard key, so it cannot sign commands. Run this where your operator key is:" }
                        }
                        pre #fleet-send { (fleet_send) }
                        @if dashboard_key.is_none() { p { a href="/commands" { "Back" } } }
                    }
                }
                @match dashboard_key {
                    Some(key) => p.muted { "Commands from this form are signed with the dashboard key "
                        code { (key) } "; a node runs them only if its " code { "[commands] trusted_keys" }
                        " lists that key and its policy allows the command." },
                    None => p.muted { "Sending from this page is off: it needs a dashboard key ("
                        code { "[ui] signing_key" } ", made with " code { "fleet operator keygen" }
                        ") that the nodes trust. Until then the page shows the " code { "fleet send" } " command to run." },
                }
            }
            h2 { "History" }
            form.filters method="get" action="/commands" {
                label { "Node " input type="text" name="node" value=[filter.node.as_deref()] size="12"; }
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for s in crate::command::CommandState::ALL {
                            option value=(s.as_str()) selected[filter.state == Some(s)] { (s.as_str().replace('_', " ")) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            (command_table(commands, Some(&live), now_ms))
            @if commands.is_empty() {
                @if filtered {
                    p.empty { "No command matches these filters. " a href="/commands" { "Show all" } }
                } @else {
                    @match example_node {
                        Some(node) => p.empty data-until-rows { "No commands yet. Send one above, or with " code { "fleet send --node " (node) " -- uptime" } "." },
                        None => p.empty data-until-rows { "No commands yet, and no node to send one to: enroll one with " code { "fleet node add NAME" } " and start its agent." },
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_shows_its_end_and_says_how_much_is_left_out() {
        assert_eq!(output_tail("short"), "short");
        let long = format!("{}é{}", "a".repeat(10_000), "the answer");
        let shown = output_tail(&long);
        assert!(shown.ends_with("the answer"), "{shown}");
        assert!(shown.starts_with("… 5"), "{shown}");
        assert!(shown.len() < OUTPUT_SHOWN + 100);
    }
}
