//! Running one accepted command: an argv through the bounded runner ([`crate::process`]), or
//! one of the built-in methods.

use std::path::Path;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::command::{Command, CommandReport, CommandResult, CommandState, Method};

/// Runs `command` (already checked against the policy) and says how it ended. A process still
/// running when `stop` fires is killed with its group and reported cancelled.
pub async fn run(
    command: &Command,
    node: &str,
    event_log: &Path,
    max_output: usize,
    stop: &CancellationToken,
) -> CommandReport {
    let started = Instant::now();
    let (state, mut result) = match command.method {
        Method::CliCommand => {
            crate::process::run_argv(
                &command.args,
                Duration::from_millis(command.timeout_ms),
                max_output,
                stop,
            )
            .await
        }
        Method::Cancel => unreachable!("the executor runs Cancel itself"),
        Method::Echo => (
            CommandState::Succeeded,
            CommandResult {
                exit_code: Some(0),
                stdout: command.args.join(" "),
                ..Default::default()
            },
        ),
        Method::SayHello => (
            CommandState::Succeeded,
            CommandResult {
                exit_code: Some(0),
                stdout: format!("hello from {node}, fleet {}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            },
        ),
        Method::TextLogging | Method::ErrorLog => {
            let level = if command.method == Method::ErrorLog {
                "ERROR"
            } else {
                "INFO"
            };
            match append_event(event_log, level, &command.args.join(" ")) {
                Ok(()) => (
                    CommandState::Succeeded,
                    CommandResult {
                        exit_code: Some(0),
                        ..Default::default()
                    },
                ),
                Err(err) => (
                    CommandState::Failed,
                    CommandResult {
                        error: Some(format!(
                            "cannot append to the event log {}: {err}",
                            event_log.display()
                        )),
                        ..Default::default()
                    },
                ),
            }
        }
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    CommandReport {
        id: command.id.clone(),
        state,
        result: Some(result),
    }
}

/// The node's local event log grows to this size, then rotates to `events.log.1`.
const EVENT_LOG_MAX: u64 = 16 * 1024 * 1024;

fn append_event(path: &Path, level: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > EVENT_LOG_MAX) {
        std::fs::rename(path, path.with_extension("log.1"))?;
    }
    let mut file = crate::files::options()
        .create(true)
        .append(true)
        .open(path)?;
    let line = format!(
        "{} {level} {}\n",
        crate::timefmt::rfc3339(crate::timefmt::now_ms()),
        text.replace('\n', " ")
    );
    file.write_all(line.as_bytes())
}
