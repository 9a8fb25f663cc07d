//! Running a child process bounded: its own process group, stdin closed, output captured up to
//! a limit, the whole group killed at the timeout, on cancellation, or when the run is dropped.
//! The executor runs commands with it and the plugins collector Nagios plugins: one place that
//! knows how to leave nothing behind.
//!
//! It never decides whether something may run (the executor's policy does) and never retries.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::command::{CommandResult, CommandState};

/// Runs `argv` as a child in its own process group, stdin closed, each output stream kept up to
/// `max_output` bytes, and kills the whole group at `timeout` or when `stop` is cancelled.
/// The result is a command's: state, exit code (128 + signal), output, why it failed.
pub async fn run_argv(
    argv: &[String],
    timeout: Duration,
    max_output: usize,
    stop: &CancellationToken,
) -> (CommandState, CommandResult) {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The agent keeps its own files private (umask 077); what a command creates is the
    // command's business, as it would be outside fleet.
    crate::files::restore_umask(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return (
                CommandState::Failed,
                CommandResult {
                    error: Some(format!("cannot start {:?}: {err}", argv[0])),
                    ..Default::default()
                },
            );
        }
    };
    let mut group = GroupKill(
        child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32)),
    );
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        let (out, err, status) = tokio::join!(
            read_bounded(stdout, max_output),
            read_bounded(stderr, max_output),
            child.wait()
        );
        (out, err, status)
    };
    let ended = tokio::select! {
        ended = tokio::time::timeout(timeout, work) => ended.ok(),
        _ = stop.cancelled() => None,
    };
    let Some(((stdout, out_cut), (stderr, err_cut), status)) = ended else {
        // The whole group: a shell's children must not outlive the command.
        group.kill();
        let _ = child.kill().await;
        return if stop.is_cancelled() {
            (
                CommandState::Cancelled,
                CommandResult {
                    error: Some("cancelled".into()),
                    ..Default::default()
                },
            )
        } else {
            (
                CommandState::TimedOut,
                CommandResult {
                    error: Some(format!(
                        "killed after the timeout of {}",
                        humantime::format_duration(timeout)
                    )),
                    ..Default::default()
                },
            )
        };
    };
    // Ran to its end (every pipe closed, the child reaped). A background process that let go
    // of the pipes is the plugin's or command's business and keeps running; after the reap the
    // group's id may be reused, so it is not signalled any more.
    group.disarm();
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            return (
                CommandState::Failed,
                CommandResult {
                    error: Some(format!("cannot wait for {:?}: {err}", argv[0])),
                    ..Default::default()
                },
            );
        }
    };
    let exit_code = status.code().or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        status.signal().map(|s| 128 + s)
    });
    let state = if status.success() {
        CommandState::Succeeded
    } else {
        CommandState::Failed
    };
    (
        state,
        CommandResult {
            exit_code,
            stdout,
            stderr,
            truncated: out_cut || err_cut,
            ..Default::default()
        },
    )
}

/// Kills a child's whole process group unless disarmed, also when dropped: a run dropped midway
/// (an agent stopping while a plugin runs) must not leave the group's processes behind, and
/// `kill_on_drop` reaches only the child itself.
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, keeping the first `max` bytes: the child must never block on a
/// full pipe because its output is over the limit.
async fn read_bounded(mut stream: impl AsyncRead + Unpin, max: usize) -> (String, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    // Lossy decoding may grow the text (a replacement character is 3 bytes): keep the limit a
    // limit.
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    truncated |= crate::command::cut(&mut text, max);
    (text, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let (state, r) = run_argv(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(5),
            1024,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(state, CommandState::Failed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert_eq!(r.stderr, "err\n");
        assert!(!r.truncated);
    }

    #[tokio::test]
    async fn output_over_the_limit_is_cut_and_marked() {
        let (state, r) = run_argv(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]),
            Duration::from_secs(5),
            1000,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(state, CommandState::Succeeded);
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.truncated);
    }

    #[tokio::test]
    async fn a_hung_command_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let (state, r) = run_argv(
            &argv(&["sh", "-c", &script]),
            Duration::from_millis(300),
            1024,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(state, CommandState::TimedOut);
        assert!(r.error.unwrap().contains("timeout"));
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "a child of the timed-out command survived"
        );
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_fails_with_the_reason() {
        let (state, r) = run_argv(
            &argv(&["/nonexistent/program"]),
            Duration::from_secs(1),
            1024,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(state, CommandState::Failed);
        assert!(r.error.unwrap().contains("cannot start"));
    }
}
