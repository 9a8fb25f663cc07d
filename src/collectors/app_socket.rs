//! The app socket: local apps tell the agent things by connecting to a unix socket and writing
//! JSON. The abstract socket `@fleet` by default (`@massaffect` is what MassAffect's apps
//! expect), and optionally a filesystem socket whose permissions say who may write.
//!
//! A client writes one JSON object, an array of objects, or newline-delimited objects, and
//! closes (or half-closes and reads the answer). Each item becomes a record through
//! [`Record::from_items`] (the one rule for items); one JSON value is taken whole or not at all.
//! The agent answers one line once the items are spooled (fsynced, as every batch):
//! `{"ok":true,"accepted":N}` at the end, or `{"error":"…","accepted":N}` at the first bad
//! value, and then closes, so a client never learns by silence and `accepted` counts only what
//! is on disk.
//!
//! This module must never block the agent: every read waits at most [`IDLE_TIMEOUT`], a
//! connection is read for at most [`CONNECTION_DEADLINE`], every value and connection is bounded,
//! and a full inbox is an answer, not a wait. When the agent stops, a connection stops reading,
//! hears whether what it handed in was spooled (the agent's last drain), and is answered.
//!
//! A socket that cannot be bound (`@fleet` taken by a second agent on the host) never stops the
//! agent: [`start`] leaves it out and hands it back as broken, and the agent reports it in its
//! first record (`broken_sources`) while everything else runs.
//!
//! An abstract socket has no file permissions: any process in the host's network namespace may
//! write to it. Where that is too wide, set `path` (and `mode`) and `name = ""`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Inbox;
use crate::config::AppSocketConfig;
use crate::model::Record;

/// How long a connection may stay silent before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may be read in all, however it trickles: a client writing a byte now
/// and then must not hold one of the few connections for ever. (Its answer may then wait up to
/// the confirmation timeout for the spool.)
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopping agent waits for its connections to hear their answers.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How long the answer line may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most distinct collector names apps may create on one agent: each is a ring in the hot store,
/// and a client inventing a name per item must not grow that without end.
pub const APP_COLLECTORS_MAX: usize = 64;

/// Collector names apps may not take: the agent's own.
pub use crate::model::AGENT_COLLECTORS as RESERVED;

/// Items handed to the inbox, waiting to hear that they were spooled.
type Waiting = (usize, tokio::sync::oneshot::Receiver<bool>);

/// How long a client's items may take to reach the spool before it is told they did not.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Values of one connection waiting for the spool at once; past it, the reading waits.
const WAITING_MAX: usize = 64;

/// Waits until every value in `waiting` is spooled, counting their items into `accepted`: an
/// app is told "accepted" only for what is on disk.
async fn confirm(waiting: &mut Vec<Waiting>, accepted: &mut usize) -> Result<(), String> {
    for (count, receipt) in waiting.drain(..) {
        match tokio::time::timeout(CONFIRM_TIMEOUT, receipt).await {
            Ok(Ok(true)) => *accepted += count,
            Ok(_) => {
                return Err(
                    "the agent could not store the items (its log says why); send them again"
                        .into(),
                );
            }
            Err(_) => {
                return Err(format!(
                    "the agent did not store the items within {} s; send them again",
                    CONFIRM_TIMEOUT.as_secs()
                ));
            }
        }
    }
    Ok(())
}

/// What the listeners share.
struct Shared {
    inbox: Arc<Inbox>,
    value_bytes_max: usize,
    connections: Arc<tokio::sync::Semaphore>,
    collectors: Mutex<HashSet<String>>,
    /// The connections being served, so a stopping agent can let them hear their answers.
    serving: TaskTracker,
    stop: CancellationToken,
    /// [`CONNECTION_DEADLINE`], shorter in tests.
    deadline: Duration,
}

/// The running app sockets.
#[derive(Debug)]
pub struct AppSockets {
    listeners: Vec<tokio::task::JoinHandle<()>>,
    serving: TaskTracker,
    /// `(source, why)` for each configured socket that could not be bound.
    broken: Vec<(String, anyhow::Error)>,
}

impl AppSockets {
    /// The sockets that could not be bound, as `(source, why)`: `app_socket @NAME` or
    /// `app_socket PATH`. Empty when all listen.
    pub fn take_broken(&mut self) -> Vec<(String, anyhow::Error)> {
        std::mem::take(&mut self.broken)
    }

    /// Waits for the listeners to stop accepting (after `stop`).
    pub async fn stopped_accepting(&mut self) {
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
    }

    /// Waits (briefly) for the connections to be answered: call it after the inbox's last
    /// drain is settled, which is what they wait for.
    pub async fn answered(self) {
        self.serving.close();
        if tokio::time::timeout(STOP_WAIT, self.serving.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.serving.len(),
                "app connections still open at stop; closed unanswered"
            );
        }
    }
}

/// Binds the configured sockets and serves them until `stop`. Never fails: a socket that cannot
/// be bound (a name in use means another agent runs on this host) is left out and listed in
/// [`AppSockets::take_broken`], for the agent to report with its other broken sources, while
/// the other socket (if any) and every other source run.
pub fn start(config: &AppSocketConfig, inbox: Arc<Inbox>, stop: CancellationToken) -> AppSockets {
    let serving = TaskTracker::new();
    let shared = Arc::new(Shared {
        inbox,
        value_bytes_max: config.max_value_bytes,
        connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        collectors: Mutex::new(HashSet::new()),
        serving: serving.clone(),
        stop: stop.clone(),
        deadline: CONNECTION_DEADLINE,
    });
    let mut tasks = Vec::new();
    let mut broken = Vec::new();
    if !config.name.is_empty() {
        let socket = format!("@{}", config.name);
        match bind_abstract(&config.name) {
            Ok(listener) => {
                tracing::info!(%socket, "app socket listening");
                tasks.push(tokio::spawn(accept_loop(
                    listener,
                    shared.clone(),
                    stop.clone(),
                )));
            }
            Err(err) => broken.push((format!("app_socket {socket}"), err)),
        }
    }
    if let Some(path) = &config.path {
        match bind_path(path, config.mode) {
            Ok(listener) => {
                tracing::info!(socket = %path.display(), "app socket listening");
                tasks.push(tokio::spawn(accept_loop(listener, shared, stop)));
            }
            Err(err) => broken.push((format!("app_socket {}", path.display()), err)),
        }
    }
    AppSockets {
        listeners: tasks,
        serving,
        broken,
    }
}

fn bind_abstract(name: &str) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .with_context(|| format!("@{name} is not a usable abstract socket name"))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).with_context(|| {
        format!(
            "cannot listen on the app socket @{name}: another agent may be running on this host; \
             give this one another name with `--app-socket NAME` (or `off`), or `name` under \
             `[app_socket]` in its config (`[local_agent.app_socket]` for `fleet controller --local-agent`)"
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

fn bind_path(path: &std::path::Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "app_socket.path {} exists and is not a socket; choose another path",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "app_socket.path {} is in use by another process (another agent?); set `path` under \
                 `[app_socket]` to another path",
                path.display()
            );
        }
        // A socket nobody listens on is what a stopped agent leaves behind.
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the app socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(cause = %format!("{err:#}"), "app socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            let mut stream = stream;
            shared.serving.spawn(async move {
                answer(
                    &mut stream,
                    Err("too many app connections at once; retry shortly"),
                    0,
                )
                .await;
            });
            continue;
        };
        let served = shared.clone();
        shared.serving.spawn(async move {
            let _permit = permit;
            serve_connection(stream, &served).await;
        });
    }
}

/// Reads values as they complete, takes each whole or refuses it, and answers once.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: &Shared) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut accepted = 0usize;
    let mut waiting: Vec<Waiting> = Vec::new();
    // Parsing restarts at the value's start each time: it is tried when a line ends, at the
    // end, or once the bytes waiting have doubled, so a large value costs linear time.
    let mut tried_at = 0usize;
    let deadline = tokio::time::Instant::now() + shared.deadline;
    loop {
        let idle_until = (tokio::time::Instant::now() + IDLE_TIMEOUT).min(deadline);
        let read = tokio::select! {
            // Stopping wins over more input: nothing more is taken once the agent stops.
            biased;
            _ = shared.stop.cancelled() => {
                // What was handed in hears from the agent's last drain; the rest is not read.
                let error = match confirm(&mut waiting, &mut accepted).await {
                    Ok(()) => "the agent is stopping; send the items after those accepted again once it is back".to_owned(),
                    Err(error) => error,
                };
                refuse(&mut stream, &error, accepted).await;
                return;
            }
            read = tokio::time::timeout_at(idle_until, stream.read(&mut chunk)) => read,
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return,
            Err(_) => {
                let error = if idle_until == deadline {
                    format!(
                        "the connection lasted {} s, the most allowed; write the JSON and close",
                        shared.deadline.as_secs_f64()
                    )
                } else {
                    format!(
                        "nothing came for {} s; write the JSON and close",
                        IDLE_TIMEOUT.as_secs()
                    )
                };
                // Values already handed in are settled first, so `accepted` is the truth.
                let error = confirm(&mut waiting, &mut accepted)
                    .await
                    .err()
                    .unwrap_or(error);
                refuse(&mut stream, &error, accepted).await;
                return;
            }
        };
        let at_end = n == 0;
        pending.extend_from_slice(&chunk[..n]);
        let line_ended = memchr::memchr(b'\n', &chunk[..n]).is_some();
        if !(at_end || line_ended || pending.len() >= 2 * tried_at) {
            continue;
        }
        let (values, malformed) = take_values(&mut pending, at_end, shared.value_bytes_max);
        tried_at = pending.len();
        let mut refusal = None;
        for value in values {
            match shared.accept(value) {
                Ok(offered) => waiting.push(offered),
                Err(error) => {
                    refusal = Some(error);
                    break;
                }
            }
        }
        let refusal = refusal.or(malformed.err());
        if (refusal.is_some() || at_end || waiting.len() >= WAITING_MAX)
            && let Err(error) = confirm(&mut waiting, &mut accepted).await
        {
            refuse(&mut stream, &error, accepted).await;
            return;
        }
        if let Some(error) = refusal {
            refuse(&mut stream, &error, accepted).await;
            return;
        }
        if at_end {
            answer(&mut stream, Ok(()), accepted).await;
            return;
        }
    }
}

impl Shared {
    /// One JSON value (an item or an array of them) into the inbox, whole or not at all.
    fn accept(&self, value: serde_json::Value) -> Result<Waiting, String> {
        let items = match value {
            serde_json::Value::Array(items) => items,
            item => vec![item],
        };
        let records = Record::from_items(items, crate::timefmt::now_ms(), &RESERVED)
            .map_err(|e| e.to_string())?;
        {
            let mut known = self.collectors.lock().expect("collectors lock poisoned");
            let new: HashSet<&str> = records
                .iter()
                .map(|r| r.collector.as_str())
                .filter(|c| !known.contains(*c))
                .collect();
            if known.len() + new.len() > APP_COLLECTORS_MAX {
                return Err(format!(
                    "apps on this node already use {} collector names, the most allowed; reuse one",
                    known.len()
                ));
            }
            known.extend(new.into_iter().map(str::to_owned));
        }
        let count = records.len();
        let receipt = self
            .inbox
            .offer_confirmed(records)
            .map_err(|e| e.to_string())?;
        Ok((count, receipt))
    }
}

/// Takes the complete JSON values at the front of `pending`, leaving an incomplete last one
/// for more bytes (unless `at_end`). Whitespace (newlines) between values is allowed, so a JSON
/// object, an array and NDJSON all read the same way. The values before a malformed one are
/// returned with the error, so NDJSON lines before a bad line are kept.
pub fn take_values(
    pending: &mut Vec<u8>,
    at_end: bool,
    value_bytes_max: usize,
) -> (Vec<serde_json::Value>, Result<(), String>) {
    let mut values = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(pending).into_iter::<serde_json::Value>();
    let mut consumed = 0;
    let mut outcome = Ok(());
    loop {
        match stream.next() {
            Some(Ok(value)) => {
                if stream.byte_offset() - consumed > value_bytes_max {
                    outcome = Err(too_large(value_bytes_max));
                    break;
                }
                consumed = stream.byte_offset();
                values.push(value);
            }
            Some(Err(err)) if err.is_eof() && !at_end => break,
            Some(Err(err)) => {
                outcome = Err(format!("not JSON: {err}"));
                break;
            }
            None => break,
        }
    }
    pending.drain(..consumed);
    if outcome.is_ok() && pending.len() > value_bytes_max {
        outcome = Err(too_large(value_bytes_max));
    }
    (values, outcome)
}

fn too_large(max: usize) -> String {
    format!("a JSON value is over {max} bytes; send smaller values (one item per line)")
}

async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, outcome: Result<(), &str>, accepted: usize) {
    let line = match outcome {
        Ok(()) => serde_json::json!({ "ok": true, "accepted": accepted }),
        Err(error) => serde_json::json!({ "error": error, "accepted": accepted }),
    };
    let mut bytes = serde_json::to_vec(&line).expect("JSON serialises");
    bytes.push(b'\n');
    // A client that closed both ways cannot read it; that is its choice.
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// Answers a refusal, then reads and discards what the client is still writing (for a moment,
/// a bounded amount): closing on unread bytes resets the connection, and the client would
/// never see why.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, error: &str, accepted: usize) {
    answer(stream, Err(error), accepted).await;
    let mut sink = [0u8; 16 * 1024];
    let mut left: usize = 64 * 1024 * 1024;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that keeps a connection by writing a byte now and then is cut off at the
    /// deadline, told why, and what it had completed is still counted.
    #[tokio::test]
    async fn a_trickling_client_is_cut_off_at_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let inbox = Arc::new(Inbox::new(100, 1 << 20));
        let shared = Shared {
            inbox: inbox.clone(),
            value_bytes_max: 64 * 1024,
            connections: Arc::new(tokio::sync::Semaphore::new(1)),
            collectors: Mutex::new(HashSet::new()),
            serving: TaskTracker::new(),
            stop: CancellationToken::new(),
            deadline: Duration::from_millis(800),
        };
        // The spool's part: every waiting item is stored.
        let spooling = tokio::spawn({
            let inbox = inbox.clone();
            async move {
                loop {
                    inbox.wanted().await;
                    inbox.drain().1.settle(true);
                }
            }
        });
        let started = tokio::time::Instant::now();
        let serving = tokio::spawn(async move { serve_connection(server, &shared).await });
        client
            .write_all(b"{\"collector\":\"slow\"}\n{\"collector\":")
            .await
            .unwrap();
        let (mut reading, mut writing) = tokio::io::split(client);
        let trickle = tokio::spawn(async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writing.write_all(b" ").await.is_err() {
                    return;
                }
            }
        });
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), reading.read_to_string(&mut answer))
            .await
            .expect("answered within the deadline")
            .unwrap();
        let elapsed = started.elapsed();
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("the most allowed"),
            "{answer}"
        );
        assert_eq!(answer["accepted"], 1, "{answer}");
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        serving.await.unwrap();
        trickle.abort();
        spooling.abort();
    }

    #[test]
    fn objects_arrays_and_ndjson_read_alike() {
        let mut pending = br#"{"collector":"a"} [{"collector":"b"}]
{"collector":"c"}
{"collector":"d","#
            .to_vec();
        let (values, outcome) = take_values(&mut pending, false, 1024);
        assert_eq!(values.len(), 3);
        assert!(outcome.is_ok());
        assert_eq!(
            pending.trim_ascii_start(),
            br#"{"collector":"d","#,
            "the incomplete value waits"
        );
        let (values, outcome) = take_values(&mut pending, true, 1024);
        assert!(
            values.is_empty() && outcome.is_err(),
            "and at the end it is an error"
        );
        let mut garbage = b"{\"collector\":\"ok\"}\n".to_vec();
        garbage.extend([0xff, 0x00, 0x13, b'{']);
        let (values, outcome) = take_values(&mut garbage, false, 1024);
        assert_eq!(values.len(), 1, "what came before the garbage");
        assert!(outcome.unwrap_err().starts_with("not JSON"));
        let mut big = format!("[\"{}\"", "x".repeat(2000)).into_bytes();
        assert!(
            take_values(&mut big, false, 1024)
                .1
                .unwrap_err()
                .contains("over 1024")
        );
    }
}
