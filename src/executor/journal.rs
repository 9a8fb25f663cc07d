//! The agent's command journal: an append-only file that records, fsynced, each command id
//! before it starts and its result after it ends. It is what makes execution exactly-once per
//! id: a redelivered id gets the stored result, and an id that started but has no result after
//! a crash is reported interrupted and never run again.
//!
//! One line per entry (`S <command json>`, `R <report json>`, `A <id>` for an acknowledged
//! result). A torn last line (a crash mid-write) is ignored: a start that was not on disk had not
//! started. Entries whose command can no longer run (`not_after` long past) are compacted away;
//! a replay of such an id is refused by its `not_after` anyway.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::command::{Command, CommandReport};

/// How long after `not_after` an entry is kept.
const KEEP_AFTER_NOT_AFTER_MS: i64 = 3600 * 1000;
/// Compact when the file holds this many more lines than live entries.
const COMPACT_SLACK: usize = 10_000;

/// What the journal knows of one id.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Started; no result yet (running, or interrupted by a crash).
    Started { not_after_ms: i64 },
    /// Finished with this report; `acknowledged` once the controller has it.
    Finished {
        not_after_ms: i64,
        report: CommandReport,
        acknowledged: bool,
    },
}

impl Entry {
    fn not_after_ms(&self) -> i64 {
        match self {
            Entry::Started { not_after_ms } | Entry::Finished { not_after_ms, .. } => *not_after_ms,
        }
    }
}

pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
    lines: usize,
}

impl Journal {
    /// Opens (creating) `dir/commands.journal` and reads it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::files::create_dir(dir)?;
        let path = dir.join("commands.journal");
        let mut entries = HashMap::new();
        let mut lines = 0;
        // Only whole lines count; a torn tail (a crash or a full disk mid-write) is cut off so
        // the next entry does not run into it.
        let mut whole_len = 0u64;
        if let Ok(bytes) = std::fs::read(&path) {
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            whole_len = whole as u64;
            for line in bytes[..whole].split(|b| *b == b'\n') {
                if !line.is_empty() {
                    lines += 1;
                    apply_line(&mut entries, line);
                }
            }
        }
        // Private: the journal holds every command's output.
        let file = crate::files::options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        // One agent per data dir: two would each run what the other has started.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                io::Error::other(format!(
                    "{} is in use by another agent; give each agent its own data dir",
                    path.display()
                ))
            },
        )?;
        if file.metadata()?.len() > whole_len {
            file.set_len(whole_len)?;
            file.sync_all()?;
        }
        let mut journal = Self {
            path,
            file,
            entries,
            lines,
        };
        journal.compact_if_needed(crate::timefmt::now_ms())?;
        Ok(journal)
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Ids that started and never finished: interrupted by a crash.
    pub fn unfinished(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Started { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Results the controller has not acknowledged yet, oldest first.
    pub fn unacknowledged(&self) -> Vec<CommandReport> {
        let mut reports: Vec<CommandReport> = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Finished {
                    report,
                    acknowledged: false,
                    ..
                } => Some(report.clone()),
                _ => None,
            })
            .collect();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        reports
    }

    /// Records, durably, that `command` is about to start.
    pub fn record_start(&mut self, command: &Command) -> io::Result<()> {
        let json = serde_json::to_string(command).expect("commands serialise");
        self.append(&format!("S {json}\n"))?;
        self.entries.insert(
            command.id.clone(),
            Entry::Started {
                not_after_ms: command.not_after_ms,
            },
        );
        Ok(())
    }

    /// Records, durably, the outcome of a command (started or refused).
    pub fn record_result(&mut self, not_after_ms: i64, report: &CommandReport) -> io::Result<()> {
        let json = serde_json::to_string(&Finished {
            not_after_ms,
            report: report.clone(),
        })
        .expect("reports serialise");
        self.append(&format!("R {json}\n"))?;
        self.entries.insert(
            report.id.clone(),
            Entry::Finished {
                not_after_ms,
                report: report.clone(),
                acknowledged: false,
            },
        );
        Ok(())
    }

    /// Notes that the controller has the result. Not fsynced: losing it only re-sends a
    /// result the controller ignores.
    pub fn acknowledge(&mut self, id: &str) -> io::Result<()> {
        if let Some(Entry::Finished { acknowledged, .. }) = self.entries.get_mut(id) {
            if *acknowledged {
                return Ok(());
            }
            *acknowledged = true;
            self.file.write_all(format!("A {id}\n").as_bytes())?;
            self.lines += 1;
        }
        self.compact_if_needed(crate::timefmt::now_ms())
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        let before = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // Leave no torn line behind for the next entry to run into.
            let _ = self.file.set_len(before);
            return Err(err);
        }
        self.lines += 1;
        Ok(())
    }

    fn compact_if_needed(&mut self, now_ms: i64) -> io::Result<()> {
        self.entries.retain(|_, e| {
            e.not_after_ms().saturating_add(KEEP_AFTER_NOT_AFTER_MS) > now_ms
                || !matches!(
                    e,
                    Entry::Finished {
                        acknowledged: true,
                        ..
                    }
                )
        });
        if self.lines < self.entries.len() * 3 + COMPACT_SLACK {
            return Ok(());
        }
        let tmp = self.path.with_extension("journal.tmp");
        {
            let mut out = io::BufWriter::new(crate::files::create(&tmp)?);
            let mut ids: Vec<&String> = self.entries.keys().collect();
            ids.sort();
            for id in ids {
                match &self.entries[id] {
                    Entry::Started { not_after_ms } => {
                        // Only the fields the journal reads back are needed.
                        writeln!(
                            out,
                            "S {}",
                            serde_json::json!({"id": id, "not_after_ms": not_after_ms})
                        )?;
                    }
                    Entry::Finished {
                        not_after_ms,
                        report,
                        acknowledged,
                    } => {
                        let json = serde_json::to_string(&Finished {
                            not_after_ms: *not_after_ms,
                            report: report.clone(),
                        })
                        .expect("reports serialise");
                        writeln!(out, "R {json}")?;
                        if *acknowledged {
                            writeln!(out, "A {id}")?;
                        }
                    }
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        rustix::fs::flock(
            &self.file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(io::Error::from)?;
        self.lines = self.entries.len() * 2;
        Ok(())
    }

    #[cfg(test)]
    fn force_compact(&mut self, now_ms: i64) -> io::Result<()> {
        self.lines = usize::MAX / 2;
        self.compact_if_needed(now_ms)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Finished {
    not_after_ms: i64,
    report: CommandReport,
}

#[derive(serde::Deserialize)]
struct StartedLine {
    id: String,
    not_after_ms: i64,
}

fn apply_line(entries: &mut HashMap<String, Entry>, line: &[u8]) {
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    if let Some(json) = line.strip_prefix("S ") {
        // A command line or a compacted one: both have id and not_after_ms.
        if let Ok(started) = serde_json::from_str::<StartedLine>(json).or_else(|_| {
            serde_json::from_str::<Command>(json).map(|c| StartedLine {
                id: c.id,
                not_after_ms: c.not_after_ms,
            })
        }) {
            entries.entry(started.id).or_insert(Entry::Started {
                not_after_ms: started.not_after_ms,
            });
        }
    } else if let Some(json) = line.strip_prefix("R ") {
        if let Ok(finished) = serde_json::from_str::<Finished>(json) {
            entries.insert(
                finished.report.id.clone(),
                Entry::Finished {
                    not_after_ms: finished.not_after_ms,
                    report: finished.report,
                    acknowledged: false,
                },
            );
        }
    } else if let Some(id) = line.strip_prefix("A ")
        && let Some(Entry::Finished { acknowledged, .. }) = entries.get_mut(id)
    {
        *acknowledged = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandResult, CommandState, Kind, Method};

    fn command(id: &str, not_after_ms: i64) -> Command {
        Command {
            id: id.into(),
            node: "n".into(),
            kind: Kind::CommandAck,
            method: Method::Echo,
            args: vec![],
            timeout_ms: 1000,
            not_after_ms,
            parallel: false,
            key: String::new(),
            signature: String::new(),
        }
    }

    fn report(id: &str) -> CommandReport {
        CommandReport {
            id: id.into(),
            state: CommandState::Succeeded,
            result: Some(CommandResult {
                exit_code: Some(0),
                stdout: "out".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let far = crate::timefmt::now_ms() + 3_600_000;
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.record_start(&command("A1", far)).unwrap();
            j.record_start(&command("B2", far)).unwrap();
            j.record_result(far, &report("B2")).unwrap();
            j.record_start(&command("C3", far)).unwrap();
            j.record_result(far, &report("C3")).unwrap();
            j.acknowledge("C3").unwrap();
        }
        // A crash mid-write leaves half a line.
        let path = dir.path().join("commands.journal");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"S {\"id\":\"D4\",\"not_af").unwrap();
        drop(f);
        let mut j = Journal::open(dir.path()).unwrap();
        // The torn tail is gone: an entry written now reads back.
        j.record_start(&command("E5", far)).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.get("E5"), Some(&Entry::Started { not_after_ms: far }));
        assert_eq!(j.get("A1"), Some(&Entry::Started { not_after_ms: far }));
        assert_eq!(j.unfinished(), vec!["A1".to_owned(), "E5".to_owned()]);
        assert_eq!(j.unacknowledged(), vec![report("B2")]);
        // A second agent on the same data dir is refused.
        let err = Journal::open(dir.path())
            .err()
            .expect("the journal is locked");
        assert!(err.to_string().contains("another agent"), "{err}");
        assert!(matches!(
            j.get("C3"),
            Some(Entry::Finished {
                acknowledged: true,
                ..
            })
        ));
        assert_eq!(j.get("D4"), None);
    }

    #[test]
    fn compaction_keeps_what_can_still_run_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::timefmt::now_ms();
        let mut j = Journal::open(dir.path()).unwrap();
        j.record_start(&command("OLD", now - 2 * KEEP_AFTER_NOT_AFTER_MS))
            .unwrap();
        j.record_result(now - 2 * KEEP_AFTER_NOT_AFTER_MS, &report("OLD"))
            .unwrap();
        j.acknowledge("OLD").unwrap();
        j.record_start(&command("LIVE", now + 60_000)).unwrap();
        j.record_result(now + 60_000, &report("LIVE")).unwrap();
        j.acknowledge("LIVE").unwrap();
        j.record_start(&command("RUN", now + 60_000)).unwrap();
        j.force_compact(now).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.get("OLD"), None);
        assert!(matches!(
            j.get("LIVE"),
            Some(Entry::Finished {
                acknowledged: true,
                ..
            })
        ));
        assert_eq!(j.unfinished(), vec!["RUN".to_owned()]);
    }
}
