//! The agent's durable spool: every batch is written here (fsynced) before it counts as
//! collected, and removed only when the controller acknowledged it.
//!
//! Layout of `<data_dir>/`:
//! - `instance`: this agent instance's id, made once; a wiped data dir makes a new one, so a
//!   restarted sequence is never mistaken for replays.
//! - `seq`: the last sequence number handed out (survives restarts).
//! - `dropped`: how many batches were dropped from a full spool or refused for good (cumulative,
//!   reported to the controller in every batch).
//! - `spool/<seq, 20 digits>.json`: one unsent batch's records (a JSON array).
//!
//! Every file is written to a temporary name, fsynced, renamed into place and the directory
//! fsynced: after a crash a file is either whole or absent. Files are 0600 and directories 0700
//! whatever the umask (`crate::files`): batches hold whatever the collectors read. This module
//! does no networking.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The spool of one agent.
pub struct Spool {
    dir: PathBuf,
    spool_dir: PathBuf,
    max_bytes: u64,
    instance: String,
    last_seq: u64,
    dropped: u64,
    /// Unsent batches, oldest first: (seq, size in bytes).
    entries: VecDeque<(u64, u64)>,
    /// The batch being sent right now: never dropped for room, or it could be both delivered
    /// and counted as dropped.
    in_flight: Option<u64>,
    total_bytes: u64,
}

fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = crate::files::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn read_number(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not hold a number", path.display()),
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn spool_file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl Spool {
    /// Opens the spool in `data_dir`, creating it (and a new instance id) if it is new.
    pub fn open(data_dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let spool_dir = data_dir.join("spool");
        crate::files::create_dir(&spool_dir)?;
        let instance_path = data_dir.join("instance");
        let instance = match fs::read_to_string(&instance_path) {
            Ok(text) if crate::wire::valid_instance(text.trim()) => text.trim().to_owned(),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged; remove the data dir to start a new agent instance",
                        instance_path.display()
                    ),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let id = ulid::Ulid::new().to_string();
                write_durably(data_dir, "instance", id.as_bytes())?;
                id
            }
            Err(err) => return Err(err),
        };
        let mut entries = Vec::new();
        for entry in fs::read_dir(&spool_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue; // temporary files of an interrupted write
            };
            entries.push((seq, entry.metadata()?.len()));
        }
        entries.sort_unstable();
        let spooled_max = entries.last().map_or(0, |(seq, _)| *seq);
        let last_seq = read_number(&data_dir.join("seq"))?
            .unwrap_or(0)
            .max(spooled_max);
        let dropped = read_number(&data_dir.join("dropped"))?.unwrap_or(0);
        let total_bytes = entries.iter().map(|(_, size)| size).sum();
        Ok(Self {
            dir: data_dir.to_owned(),
            spool_dir,
            max_bytes,
            instance,
            last_seq,
            dropped,
            entries: entries.into(),
            in_flight: None,
            total_bytes,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Batches dropped so far (cumulative over this instance's life).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores a batch durably and returns its sequence number. When the spool is over its size
    /// bound, the oldest batches are dropped (and counted) to make room.
    pub fn append(&mut self, records_json: &[u8]) -> io::Result<u64> {
        let seq = self.last_seq + 1;
        write_durably(&self.spool_dir, &spool_file_name(seq), records_json)?;
        self.last_seq = seq;
        write_durably(&self.dir, "seq", seq.to_string().as_bytes())?;
        self.entries.push_back((seq, records_json.len() as u64));
        self.total_bytes += records_json.len() as u64;
        let mut dropped_now = 0;
        while self.total_bytes > self.max_bytes {
            // The oldest that is neither being sent nor the batch just written.
            let Some(&(victim, _)) = self
                .entries
                .iter()
                .take(self.entries.len() - 1)
                .find(|(s, _)| Some(*s) != self.in_flight)
            else {
                break;
            };
            self.remove_file(victim)?;
            dropped_now += 1;
        }
        if dropped_now > 0 {
            self.count_dropped(dropped_now)?;
            tracing::warn!(
                dropped = dropped_now,
                total_dropped = self.dropped,
                "spool is full: dropped the oldest batches (the controller is told)"
            );
        }
        Ok(seq)
    }

    /// The oldest unsent batch, its sequence number and records, marked as being sent until
    /// it is acknowledged, discarded or [`Spool::release`]d.
    pub fn take_oldest(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let Some(&(seq, _)) = self.entries.front() else {
            return Ok(None);
        };
        let bytes = fs::read(self.spool_dir.join(spool_file_name(seq)))?;
        self.in_flight = Some(seq);
        Ok(Some((seq, bytes)))
    }

    /// The batch being sent was not delivered; it may be dropped for room again.
    pub fn release(&mut self) {
        self.in_flight = None;
    }

    /// Removes an acknowledged batch.
    pub fn acknowledge(&mut self, seq: u64) -> io::Result<()> {
        self.remove_file(seq)
    }

    /// Removes a batch the controller refused for good (it would be refused forever), counting
    /// it as dropped.
    pub fn discard(&mut self, seq: u64) -> io::Result<()> {
        self.remove_file(seq)?;
        self.count_dropped(1)
    }

    fn remove_file(&mut self, seq: u64) -> io::Result<()> {
        if self.in_flight == Some(seq) {
            self.in_flight = None;
        }
        if let Some(pos) = self.entries.iter().position(|(s, _)| *s == seq) {
            let (_, size) = self
                .entries
                .remove(pos)
                .expect("the position was just found");
            self.total_bytes -= size;
            match fs::remove_file(self.spool_dir.join(spool_file_name(seq))) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }

    fn count_dropped(&mut self, n: u64) -> io::Result<()> {
        self.dropped += n;
        write_durably(&self.dir, "dropped", self.dropped.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_reopen_in_order_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let instance = spool.instance().to_owned();
        assert_eq!(spool.append(b"[1]").unwrap(), 1);
        assert_eq!(spool.append(b"[2]").unwrap(), 2);
        spool.acknowledge(1).unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.instance(), instance);
        assert_eq!(spool.take_oldest().unwrap(), Some((2, b"[2]".to_vec())));
        spool.acknowledge(2).unwrap();
        assert!(spool.take_oldest().unwrap().is_none());
        // Everything was acknowledged: the sequence still continues, never restarts.
        assert_eq!(spool.append(b"[3]").unwrap(), 3);
    }

    #[test]
    fn a_wiped_data_dir_is_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path(), 1 << 20)
            .unwrap()
            .instance()
            .to_owned();
        fs::remove_dir_all(dir.path()).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_ne!(spool.instance(), first);
        assert_eq!(spool.append(b"[]").unwrap(), 1);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 25).unwrap();
        for i in 0..5 {
            spool.append(format!("[{i:08}]").as_bytes()).unwrap(); // 10 bytes each
        }
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.dropped(), 3);
        assert_eq!(spool.take_oldest().unwrap().unwrap().0, 4);
        drop(spool);
        let spool = Spool::open(dir.path(), 25).unwrap();
        assert_eq!(spool.dropped(), 3);
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn the_batch_being_sent_is_never_dropped_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 25).unwrap();
        spool.append(b"[00000001]").unwrap();
        assert_eq!(spool.take_oldest().unwrap().unwrap().0, 1);
        for i in 2..=4 {
            spool.append(format!("[{i:08}]").as_bytes()).unwrap();
        }
        // 1 is in flight, 4 is newest: 2 and 3 went for room.
        assert_eq!(spool.dropped(), 2);
        spool.acknowledge(1).unwrap();
        assert_eq!(spool.take_oldest().unwrap().unwrap().0, 4);
        assert_eq!(spool.dropped(), 2);
    }

    #[test]
    fn a_discarded_batch_counts_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(b"[]").unwrap();
        spool.discard(1).unwrap();
        assert_eq!(spool.dropped(), 1);
        assert!(spool.is_empty());
    }
}
