//! steward's inbox as `fleet send --watch FILE` keeps it: messages appended to a file
//! (`cat msg.json >> inmsg.txt`) are sent, and the file is emptied as they are.
//!
//! Drained safely: the file is renamed aside (`FILE.draining-<ms>`) before it is read, never
//! truncated under a writer: a `cat >>` still writing finishes into the renamed file, and the
//! next one makes a new FILE. An array still being written waits for the rest; one that stays
//! unfinished (or is not JSON) is moved to `FILE.bad-<ms>` after the complete ones are sent.
//! Each message's commands get ids derived from the aside file's name and their place in it,
//! so a restart that sends a file again (killed between sending and removing it) sends the same
//! ids, which the controller takes once.
//!
//! It never decides how commands travel or are signed: the caller's `submit` does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::steward::{self, Tail};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long an unfinished array may stay unchanged before it is given up on.
const SETTLE: Duration = Duration::from_secs(10);
/// How sending retries while the controller is away.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// One message to send, with where its commands' ids come from.
#[derive(Debug, Clone)]
pub struct Numbered {
    pub message: steward::Message,
    /// When its file was drained (the ids' time part).
    drained_ms: u64,
    /// Its place among the messages of that file.
    index: usize,
}

impl Numbered {
    /// The id of this message's command to its `target`-th node: the same every time the same
    /// drained file is read.
    pub fn command_id(&self, target: usize) -> String {
        let digest = Sha256::new()
            .chain_update(self.drained_ms.to_be_bytes())
            .chain_update((self.index as u64).to_be_bytes())
            .chain_update((target as u64).to_be_bytes())
            .finalize();
        let mut random = [0u8; 16];
        random.copy_from_slice(&digest[..16]);
        ulid::Ulid::from_parts(self.drained_ms, u128::from_be_bytes(random)).to_string()
    }
}

/// A watched inbox file.
pub struct InboxFile {
    path: PathBuf,
    /// Aside files seen unfinished: since when their size has not changed.
    unfinished: std::collections::HashMap<PathBuf, (u64, Instant)>,
}

impl InboxFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            unfinished: Default::default(),
        }
    }

    /// Watches until `stop`: drains the file whenever it holds something and hands each
    /// drained file's messages to `submit`, which returns once they are stored (an error is
    /// retried with backoff; the file stays until `submit` succeeds).
    pub async fn watch<F, Fut>(
        &mut self,
        stop: &CancellationToken,
        mut submit: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(Vec<Numbered>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut backoff = RETRY;
        loop {
            let wait = match self.drain_once(&mut submit).await {
                Ok(()) => {
                    backoff.succeeded();
                    POLL
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(cause = %format!("{err:#}"), retry_in_ms = wait.as_millis() as u64, "cannot send the inbox's messages yet");
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look: moves the file aside if it holds anything, then sends every aside file whose
    /// arrays are whole (oldest first) and removes it.
    pub async fn drain_once<F, Fut>(&mut self, submit: &mut F) -> anyhow::Result<()>
    where
        F: FnMut(Vec<Numbered>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0) {
            let aside = self.aside_name("draining", crate::timefmt::now_ms() as u64);
            std::fs::rename(&self.path, &aside).with_context(|| {
                format!("cannot move {} aside to drain it", self.path.display())
            })?;
        }
        for (drained_ms, aside) in self.aside_files()? {
            let bytes = std::fs::read(&aside)
                .with_context(|| format!("cannot read {}", aside.display()))?;
            let read = steward::parse_appended(&bytes);
            let problem = match read.tail {
                Tail::Complete => None,
                Tail::Partial if !self.settled(&aside, bytes.len() as u64) => continue,
                Tail::Partial => Some(format!(
                    "an array was left unfinished for {} s",
                    SETTLE.as_secs()
                )),
                Tail::Invalid { offset, problem } => {
                    Some(format!("not a message array at byte {offset}: {problem}"))
                }
            };
            let numbered = read
                .messages
                .into_iter()
                .enumerate()
                .map(|(index, message)| Numbered {
                    message,
                    drained_ms,
                    index,
                })
                .collect();
            submit(numbered).await?;
            self.unfinished.remove(&aside);
            match problem {
                None => std::fs::remove_file(&aside)
                    .with_context(|| format!("cannot remove {}", aside.display()))?,
                Some(problem) => {
                    let bad = self.aside_name("bad", drained_ms);
                    std::fs::rename(&aside, &bad)
                        .with_context(|| format!("cannot move {} aside", aside.display()))?;
                    tracing::error!(file = %bad.display(), %problem, "part of the inbox could not be read; the messages before it were sent, the file is kept");
                }
            }
        }
        Ok(())
    }

    fn aside_name(&self, what: &str, ms: u64) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{what}-{ms}"));
        PathBuf::from(name)
    }

    /// The files drained but not yet sent, oldest first, with their drain times.
    fn aside_files(&self) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let prefix = format!(
            "{}.draining-",
            self.path
                .file_name()
                .context("the inbox must name a file")?
                .to_string_lossy()
        );
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(ms) = name
                .strip_prefix(&prefix)
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                found.push((ms, dir.join(&name)));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Whether an unfinished file has kept its size for [`SETTLE`].
    fn settled(&mut self, aside: &Path, len: u64) -> bool {
        let now = Instant::now();
        let seen = self
            .unfinished
            .entry(aside.to_owned())
            .or_insert((len, now));
        if seen.0 != len {
            *seen = (len, now);
        }
        now.duration_since(seen.1) >= SETTLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"[{"toNode": "a", "method": "Echo", "data": ["x"]}]"#;

    async fn drain(inbox: &mut InboxFile) -> Vec<Vec<String>> {
        let mut sent = Vec::new();
        inbox
            .drain_once(&mut |batch: Vec<Numbered>| {
                sent.push(batch.iter().map(|n| n.command_id(0)).collect::<Vec<_>>());
                async { Ok::<(), anyhow::Error>(()) }
            })
            .await
            .unwrap();
        sent
    }

    #[tokio::test]
    async fn a_drained_file_is_sent_once_and_removed_and_a_half_array_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inmsg.txt");
        let mut inbox = InboxFile::new(&path);
        std::fs::write(&path, format!("{ONE}\n{ONE}\n[{{\"toNode\"")).unwrap();
        // The tail is unfinished: nothing is sent yet, the file waits aside.
        assert!(drain(&mut inbox).await.is_empty());
        assert!(!path.exists());
        let aside = inbox.aside_files().unwrap();
        assert_eq!(aside.len(), 1);
        // The writer finishes into the renamed file.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&aside[0].1)
            .unwrap();
        writeln!(f, ": \"b\", \"method\": \"Echo\"}}]").unwrap();
        let sent = drain(&mut inbox).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].len(), 3);
        assert!(inbox.aside_files().unwrap().is_empty());
        assert!(drain(&mut inbox).await.is_empty(), "sent once");
    }

    #[tokio::test]
    async fn a_failed_send_keeps_the_file_and_the_retry_has_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inmsg.txt");
        std::fs::write(&path, ONE).unwrap();
        let mut inbox = InboxFile::new(&path);
        let mut first = Vec::new();
        let failed = inbox
            .drain_once(&mut |batch: Vec<Numbered>| {
                first = batch.iter().map(|n| n.command_id(0)).collect();
                async { anyhow::bail!("the controller is away") }
            })
            .await;
        assert!(failed.is_err());
        // A new process (after kill -9) reads the same aside file: the same ids.
        let mut inbox = InboxFile::new(&path);
        let again = drain(&mut inbox).await;
        assert_eq!(again, vec![first]);
        assert!(ulid::Ulid::from_string(&again[0][0]).is_ok());
    }

    #[tokio::test]
    async fn what_is_not_json_is_kept_aside_after_the_whole_arrays_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inmsg.txt");
        std::fs::write(&path, format!("{ONE}\nnot json")).unwrap();
        let mut inbox = InboxFile::new(&path);
        let sent = drain(&mut inbox).await;
        assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![1]);
        let bad: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            bad.len() == 1 && bad[0].starts_with("inmsg.txt.bad-"),
            "{bad:?}"
        );
    }
}
