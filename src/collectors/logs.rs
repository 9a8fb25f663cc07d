//! The log tail: follows files matching glob patterns like `tail -F`, across rotation (the
//! path's inode changes: the old file is read to its end first; or the file shrinks: it was
//! truncated, read again from the start), and remembers each file's position in a state file so
//! a restarted agent neither repeats nor skips lines.
//!
//! Each run reads what was appended since the last, then:
//! - counts every line (read, filtered out, unparsed, cut for length) under `tail.<name>`;
//! - for an access log, adds the requests up into traffic figures under `web.<name>`
//!   (`access_log`);
//! - ships lines as records under `logs.<name>`, at most `ship_lines_per_second`: past it, a
//!   uniform sample of the interval's lines is shipped and the rest counted (`sampled_out`).
//!
//! The position is saved only in [`Collector::committed`], after the run's records are spooled.
//! Memory is bounded whatever the files hold: one read buffer, and a partial line of at most
//! `max_line_bytes` per file (a longer line is cut and the rest skipped to its newline).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::access_log::{self, Traffic};
use super::{Collected, Collector};
use crate::config::{LogConfig, LogFormat};
use crate::model::{Record, Sample};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 256 * 1024;
/// Most bytes one run reads over all files, so a run ends; the rest waits for the next.
const READ_PER_RUN_MAX: u64 = 1024 * 1024 * 1024;
/// Most files one log follows.
pub const FILES_MAX: usize = 256;

/// Where a file's virtual host comes from.
#[derive(Debug, Clone)]
enum VhostRule {
    Fixed(String),
    FromFile,
    FromLine,
}

/// One followed file.
struct Followed {
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes of the file read so far (the file's position).
    read: u64,
    /// The start of a line not yet ended, at most `max_line_bytes` of it.
    partial: Vec<u8>,
    /// Inside a line that was cut: skip to its newline.
    skipping: bool,
    vhost: String,
    /// The file's first bytes (up to [`HEAD_BYTES`]): a file cut and written again past the old
    /// position (copytruncate while busy) is told by its start having changed.
    head: Vec<u8>,
    /// Where it was opened, to go back to if the run that read it could not be spooled.
    opened_at: (u64, bool),
}

/// How much of a file's start is kept to recognise it.
const HEAD_BYTES: usize = 256;

/// The first `HEAD_BYTES` of `file` (fewer if it is shorter).
fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; HEAD_BYTES];
    let mut filled = 0;
    while filled < HEAD_BYTES {
        let n = file.read_at(&mut head[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

impl Followed {
    /// Whether the file was cut since it was last read: shorter than what was read, or its
    /// start is not what it was.
    fn was_truncated(&self) -> bool {
        match self.file.metadata() {
            Ok(meta) if meta.len() < self.read => true,
            Ok(_) => read_head(&self.file).is_ok_and(|now| !now.starts_with(&self.head)),
            Err(_) => false,
        }
    }

    /// Keeps the head up to date while the file is young.
    fn refresh_head(&mut self) {
        if self.head.len() < HEAD_BYTES
            && let Ok(head) = read_head(&self.file)
        {
            self.head = head;
        }
    }
}

impl Followed {
    /// The position to resume from: after the last whole line (or inside a cut one).
    fn resume_at(&self) -> u64 {
        self.read - self.partial.len() as u64
    }

    fn inode(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    fn file_state(&self, path: &Path) -> FileState {
        FileState {
            path: path.to_owned(),
            dev: self.dev,
            ino: self.ino,
            offset: self.resume_at(),
            skipping: self.skipping,
        }
    }

    /// Goes back to `offset`, forgetting what was read past it.
    fn rewind(&mut self, (offset, skipping): (u64, bool)) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.read = offset;
        self.partial.clear();
        self.skipping = skipping;
        Ok(())
    }
}

/// The state file: where each file was left, by inode (the path is where it was last seen: a
/// file rotated while the agent was down is looked for beside it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: Vec<FileState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileState {
    path: PathBuf,
    dev: u64,
    ino: u64,
    offset: u64,
    #[serde(default)]
    skipping: bool,
}

/// What one run counted.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    lines: u64,
    bytes: u64,
    filtered_out: u64,
    unparsed: u64,
    truncated: u64,
    shipped: u64,
    sampled_out: u64,
    rotations: u64,
    truncations: u64,
}

/// A log source as configured by one `[[logs]]`.
pub struct LogTail {
    name: String,
    lines_collector: String,
    web_collector: String,
    patterns: Vec<String>,
    format: LogFormat,
    filter: Option<regex::Regex>,
    vhost: VhostRule,
    from_beginning: bool,
    ship_per_second: f64,
    max_line: usize,
    state_path: PathBuf,
    files: BTreeMap<PathBuf, Followed>,
    /// Files their path no longer names (rotated), read until they stay quiet.
    retired: Vec<(PathBuf, Followed)>,
    /// Saved positions not yet matched to an open file, by inode (first run only).
    saved: Option<HashMap<(u64, u64), FileState>>,
    /// Whether a state file was found: then a file not in it is new since the last run.
    had_state: bool,
    /// The positions of the last spooled run, by inode.
    committed: HashMap<(u64, u64), (u64, bool)>,
    first_run: bool,
    last_run: Option<Instant>,
    interval_secs: f64,
    buf: Vec<u8>,
    traffic: Traffic,
    reservoir: Reservoir,
    rng: rand::rngs::SmallRng,
}

impl LogTail {
    /// A tail for `config`, keeping its positions under `data_dir`.
    pub fn new(
        config: &LogConfig,
        data_dir: &Path,
        interval: std::time::Duration,
    ) -> anyhow::Result<Self> {
        use rand::SeedableRng;
        let filter = config
            .filter
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .with_context(|| {
                format!("logs {:?}: filter is not a regular expression", config.name)
            })?;
        let vhost = match config.vhost.as_deref() {
            Some("$file") => VhostRule::FromFile,
            Some(name) => VhostRule::Fixed(name.to_owned()),
            None if config.format == LogFormat::VhostCombined => VhostRule::FromLine,
            None => VhostRule::Fixed("-".into()),
        };
        let state_path = data_dir.join(format!("tail-{}.json", config.name));
        let saved = match std::fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => Some(
                    state
                        .files
                        .into_iter()
                        .map(|f| ((f.dev, f.ino), f))
                        .collect::<HashMap<_, _>>(),
                ),
                Err(err) => {
                    tracing::warn!(log = %config.name, state = %state_path.display(), cause = %format!("{err:#}"),
                        "the log tail's state file is unreadable; starting from the files' ends");
                    None
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", state_path.display()));
            }
        };
        Ok(Self {
            name: format!("tail.{}", config.name),
            lines_collector: format!("logs.{}", config.name),
            web_collector: format!("web.{}", config.name),
            patterns: config.paths.clone(),
            format: config.format,
            filter,
            vhost,
            from_beginning: config.from_beginning,
            ship_per_second: config.ship_lines_per_second,
            max_line: config.max_line_bytes,
            state_path,
            files: BTreeMap::new(),
            retired: Vec::new(),
            had_state: saved.is_some(),
            committed: saved
                .iter()
                .flatten()
                .map(|(inode, f)| (*inode, (f.offset, f.skipping)))
                .collect(),
            saved: Some(saved.unwrap_or_default()),
            first_run: true,
            last_run: None,
            interval_secs: interval.as_secs_f64(),
            buf: vec![0; READ_CHUNK],
            traffic: Traffic::default(),
            reservoir: Reservoir::default(),
            rng: rand::rngs::SmallRng::from_os_rng(),
        })
    }

    /// The paths the patterns match now, sorted, at most [`FILES_MAX`].
    fn matching_paths(&self) -> Vec<PathBuf> {
        matching_paths(&self.patterns)
    }

    fn vhost_of(&self, path: &Path) -> String {
        match &self.vhost {
            VhostRule::Fixed(name) => name.clone(),
            VhostRule::FromLine => "-".into(),
            VhostRule::FromFile => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                let name = name
                    .strip_suffix(".access.log")
                    .or_else(|| name.strip_suffix("_access.log"))
                    .or_else(|| name.strip_suffix(".log"))
                    .unwrap_or(&name);
                name.to_owned()
            }
        }
    }

    /// Opens `path` at the position it should be read from: where the state file left that
    /// inode; its start if it is new since the last run; its end at the very first start
    /// (unless `from_beginning`).
    fn open(&mut self, path: &Path) -> std::io::Result<Followed> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let saved = self
            .saved
            .as_mut()
            .and_then(|s| s.remove(&(meta.dev(), meta.ino())));
        let start = match saved {
            Some(s) if s.offset <= meta.len() => (s.offset, s.skipping),
            // Shorter than where it was left: truncated while the agent was down.
            Some(_) => (0, false),
            None if self.first_run && !self.had_state && !self.from_beginning => {
                (meta.len(), false)
            }
            None => (0, false),
        };
        self.follow(path, file, start)
    }

    fn follow(&self, path: &Path, mut file: File, start: (u64, bool)) -> std::io::Result<Followed> {
        let meta = file.metadata()?;
        file.seek(SeekFrom::Start(start.0))?;
        Ok(Followed {
            head: read_head(&file)?,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            read: start.0,
            partial: Vec::new(),
            skipping: start.1,
            vhost: self.vhost_of(path),
            opened_at: start,
        })
    }

    /// At the first start: files the state file knows but no pattern matches any more were
    /// rotated while the agent was down; the rest of each is read from beside its old path.
    fn find_rotated_while_down(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        for (inode, state) in saved {
            let Some(dir) = state.path.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let found = entries.flatten().find(|e| {
                e.metadata().is_ok_and(|m| {
                    m.is_file() && (m.dev(), m.ino()) == inode && m.len() > state.offset
                })
            });
            if let Some(entry) = found
                && let Ok(file) = File::open(entry.path())
                && let Ok(followed) =
                    self.follow(&entry.path(), file, (state.offset, state.skipping))
            {
                self.retired.push((entry.path(), followed));
            }
        }
    }

    /// Reads `followed` to its end (or the run's budget), handling each whole line. Returns
    /// the bytes read and whether the end was reached.
    fn drain(
        &mut self,
        path: &Path,
        followed: &mut Followed,
        counts: &mut Counts,
        budget: &mut u64,
    ) -> std::io::Result<(u64, bool)> {
        let mut chunk = std::mem::take(&mut self.buf);
        let result = self.drain_with(&mut chunk, path, followed, counts, budget);
        self.buf = chunk;
        result
    }

    fn drain_with(
        &mut self,
        chunk: &mut [u8],
        path: &Path,
        followed: &mut Followed,
        counts: &mut Counts,
        budget: &mut u64,
    ) -> std::io::Result<(u64, bool)> {
        let mut total = 0;
        while *budget > 0 {
            let want = (chunk.len() as u64).min(*budget) as usize;
            let n = followed.file.read(&mut chunk[..want])?;
            if n == 0 {
                return Ok((total, true));
            }
            *budget -= n as u64;
            total += n as u64;
            followed.read += n as u64;
            counts.bytes += n as u64;
            let mut rest = &chunk[..n];
            while let Some(end) = memchr::memchr(b'\n', rest) {
                let piece = &rest[..end];
                rest = &rest[end + 1..];
                if followed.skipping {
                    followed.skipping = false;
                    continue;
                }
                if followed.partial.is_empty() {
                    let cut = piece.len() > self.max_line;
                    let piece = &piece[..piece.len().min(self.max_line)];
                    self.line(path, &followed.vhost, piece, cut, counts);
                } else {
                    let room = self.max_line.saturating_sub(followed.partial.len());
                    followed
                        .partial
                        .extend_from_slice(&piece[..piece.len().min(room)]);
                    let whole = std::mem::take(&mut followed.partial);
                    self.line(path, &followed.vhost, &whole, piece.len() > room, counts);
                }
            }
            if !rest.is_empty() && !followed.skipping {
                let room = self.max_line.saturating_sub(followed.partial.len());
                if rest.len() <= room {
                    followed.partial.extend_from_slice(rest);
                } else {
                    // Cut: what fits is the line; the rest of it is skipped to its newline.
                    followed.partial.extend_from_slice(&rest[..room]);
                    let cut = std::mem::take(&mut followed.partial);
                    self.line(path, &followed.vhost, &cut, true, counts);
                    followed.skipping = true;
                }
            }
        }
        Ok((total, false))
    }

    /// A file that gets no more lines: its unended last one is a line.
    fn finish(&mut self, path: &Path, mut followed: Followed, counts: &mut Counts) {
        if !followed.partial.is_empty() {
            let last = std::mem::take(&mut followed.partial);
            self.line(path, &followed.vhost, &last, false, counts);
        }
    }

    /// Handles one line: filter, parse, add up, maybe ship.
    fn line(&mut self, path: &Path, vhost: &str, bytes: &[u8], cut: bool, counts: &mut Counts) {
        counts.lines += 1;
        if cut {
            counts.truncated += 1;
        }
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes);
        if let Some(filter) = &self.filter
            && !filter.is_match(&text)
        {
            counts.filtered_out += 1;
            return;
        }
        let parsed = match self.format {
            LogFormat::Raw => None,
            LogFormat::Combined | LogFormat::VhostCombined => {
                match access_log::parse(&text, self.format == LogFormat::VhostCombined) {
                    Some(line) => {
                        let vhost = line.vhost.unwrap_or(vhost);
                        self.traffic.add(vhost, &line);
                        Some(line)
                    }
                    None => {
                        counts.unparsed += 1;
                        None
                    }
                }
            }
        };
        // Built only when the reservoir keeps it: most lines of a busy log are not shipped.
        let Some(slot) = self.reservoir.offer(&mut self.rng) else {
            return;
        };
        let mut data = match &parsed {
            Some(line) => line.to_json(line.vhost.unwrap_or(vhost)),
            None => serde_json::json!({ "line": text }),
        };
        data["file"] = path.to_string_lossy().into();
        if cut {
            data["truncated"] = true.into();
        }
        if self.format != LogFormat::Raw && parsed.is_none() {
            data["unparsed"] = true.into();
        }
        let ts = parsed
            .as_ref()
            .and_then(|l| l.time_ms())
            .filter(|t| *t >= 0)
            .unwrap_or_else(crate::timefmt::now_ms);
        self.reservoir.put(
            slot,
            Record {
                collector: self.lines_collector.clone(),
                ts,
                data,
                samples: Vec::new(),
            },
        );
    }

    fn state(&self) -> State {
        State {
            files: self
                .files
                .iter()
                .chain(self.retired.iter().map(|(p, f)| (p, f)))
                .map(|(path, f)| f.file_state(path))
                .collect(),
        }
    }
}

impl Collector for LogTail {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&mut self) -> anyhow::Result<Collected> {
        let now = Instant::now();
        let seconds = self.last_run.map_or(self.interval_secs, |last| {
            now.duration_since(last).as_secs_f64()
        });
        self.last_run = Some(now);
        let budget_lines = (self.ship_per_second * seconds).round() as usize;
        self.reservoir.start(budget_lines);
        let mut counts = Counts::default();
        let mut budget = READ_PER_RUN_MAX;
        let paths = self.matching_paths();

        // Files rotated away: the writer may still append until it reopens its log, so each
        // is read until a run finds nothing new, then let go.
        for (path, mut f) in std::mem::take(&mut self.retired) {
            match self.drain(&path, &mut f, &mut counts, &mut budget) {
                Ok((0, true)) => self.finish(&path, f, &mut counts),
                Ok(_) => self.retired.push((path, f)),
                Err(err) => {
                    tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot read a rotated log file");
                    self.finish(&path, f, &mut counts);
                }
            }
        }
        // Files followed already: read what was appended, then see whether the path still
        // names the same file.
        let followed: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in followed {
            let mut f = self.files.remove(&path).expect("listed just now");
            if f.was_truncated() {
                // Cut under us (copytruncate): everything there now is new.
                counts.truncations += 1;
                if let Err(err) = f.rewind((0, false)) {
                    tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot read a truncated log file again");
                }
                f.head.clear();
            }
            if let Err(err) = self.drain(&path, &mut f, &mut counts, &mut budget) {
                tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot read a log file");
            }
            f.refresh_head();
            let rotated = std::fs::metadata(&path)
                .ok()
                .is_none_or(|m| (m.dev(), m.ino()) != f.inode());
            if rotated {
                counts.rotations += 1;
                self.retired.push((path, f));
            } else {
                self.files.insert(path, f);
            }
        }
        for path in paths {
            if self.files.contains_key(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let inode = (meta.dev(), meta.ino());
            // Another name of a file followed already (a link, or one rotated to a name the
            // patterns also match): the same file, followed once, from where it is.
            if self.files.values().any(|f| f.inode() == inode) {
                continue;
            }
            if let Some(at) = self.retired.iter().position(|(_, f)| f.inode() == inode) {
                let (_, f) = self.retired.remove(at);
                self.files.insert(path, f);
                continue;
            }
            match self.open(&path) {
                Ok(mut f) => {
                    if let Err(err) = self.drain(&path, &mut f, &mut counts, &mut budget) {
                        tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot read a log file");
                    }
                    f.refresh_head();
                    self.files.insert(path, f);
                }
                Err(err) => {
                    tracing::debug!(file = %path.display(), cause = %format!("{err:#}"), "cannot open a log file")
                }
            }
        }
        if self.first_run {
            self.find_rotated_while_down();
            for (path, mut f) in std::mem::take(&mut self.retired) {
                if let Err(err) = self.drain(&path, &mut f, &mut counts, &mut budget) {
                    tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot read a rotated log file");
                }
                self.retired.push((path, f));
            }
        }
        self.first_run = false;
        self.saved = None;

        let (mut records, seen) = self.reservoir.take();
        counts.shipped = records.len() as u64;
        counts.sampled_out = seen.saturating_sub(records.len() as u64);
        let log = self.name.trim_start_matches("tail.").to_owned();
        if self.format != LogFormat::Raw {
            let (data, samples) = self.traffic.take(&log, seconds);
            records.push(Record {
                collector: self.web_collector.clone(),
                ts: crate::timefmt::now_ms(),
                data,
                samples,
            });
        }
        let per_second = |n: u64| super::round2(n as f64 / seconds.max(0.001));
        let data = serde_json::json!({
            "files": self.files.keys().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
            "seconds": super::round2(seconds),
            "lines": counts.lines,
            "bytes": counts.bytes,
            "filtered_out": counts.filtered_out,
            "unparsed": counts.unparsed,
            "truncated": counts.truncated,
            "shipped": counts.shipped,
            "sampled_out": counts.sampled_out,
            "rotations": counts.rotations,
            "truncations": counts.truncations,
        });
        let sample =
            |name: &str, value: f64| Sample::new(name, value).with_label("log", log.as_str());
        let samples = vec![
            sample("tail.lines_per_second", per_second(counts.lines)),
            sample("tail.bytes_per_second", per_second(counts.bytes)),
            sample("tail.unparsed", counts.unparsed as f64),
            sample("tail.truncated", counts.truncated as f64),
            sample("tail.sampled_out", counts.sampled_out as f64),
            sample("tail.files", self.files.len() as f64),
        ];
        Ok(Collected {
            data,
            samples,
            records,
        })
    }

    fn committed(&mut self) {
        let state = self.state();
        if let Err(err) = write_atomically(&self.state_path, &state) {
            tracing::error!(state = %self.state_path.display(), cause = %format!("{err:#}"),
                "cannot save the log tail's positions; a restart may read lines again");
        }
        self.committed = state
            .files
            .iter()
            .map(|f| ((f.dev, f.ino), (f.offset, f.skipping)))
            .collect();
        for f in self
            .files
            .values_mut()
            .chain(self.retired.iter_mut().map(|(_, f)| f))
        {
            f.opened_at = (f.resume_at(), f.skipping);
        }
    }

    fn rolled_back(&mut self) {
        // Back to the last spooled positions: the next run reads those lines again.
        let committed = &self.committed;
        for (path, f) in self
            .files
            .iter_mut()
            .chain(self.retired.iter_mut().map(|(p, f)| (&*p, f)))
        {
            let back = committed.get(&f.inode()).copied().unwrap_or(f.opened_at);
            if let Err(err) = f.rewind(back) {
                tracing::warn!(file = %path.display(), cause = %format!("{err:#}"), "cannot go back in a log file");
            }
        }
    }
}

/// Writes `state` to a temporary file, syncs it and renames it over `path`.
/// The files `patterns` match now, sorted, at most [`FILES_MAX`].
///
/// The glob crate's `*` stays within one path level and never lists `.` or `..`, but a
/// component that starts with a literal dot (`.*`) also matches those two: `/var/log/app/.*/x.log`
/// would reach `/var/log/x.log`. As in the command allow list (`executor::policy`), a wildcard
/// may not climb: a path with more `..` components than its pattern spells is dropped. Symlinks
/// are followed (so a log directory must not be writable by anyone untrusted: a link there
/// ships whatever it points to).
fn matching_paths(patterns: &[String]) -> Vec<PathBuf> {
    let climbs = |path: &Path| {
        path.components()
            .filter(|c| *c == std::path::Component::ParentDir)
            .count()
    };
    let mut paths: Vec<PathBuf> = patterns
        .iter()
        .filter_map(|p| {
            let spelled = climbs(Path::new(p));
            let found = glob::glob(p).ok()?;
            Some(
                found
                    .filter_map(Result::ok)
                    .filter(move |path| climbs(path) <= spelled),
            )
        })
        .flatten()
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.dedup();
    paths.truncate(FILES_MAX);
    paths
}

fn write_atomically(path: &Path, state: &State) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = crate::files::create(&tmp)?;
    file.write_all(&serde_json::to_vec(state).expect("state serialises"))?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Uniform sampling of one run's lines (Algorithm R): the first `size` are kept, then line `i`
/// replaces a random kept one with probability `size / i`, so a burst's shipped lines stand for
/// the whole interval, not its first second.
#[derive(Default)]
struct Reservoir {
    size: usize,
    seen: u64,
    kept: Vec<(u64, Record)>,
}

impl Reservoir {
    fn start(&mut self, size: usize) {
        self.size = size;
        self.seen = 0;
        self.kept.clear();
    }

    /// Whether the next line is kept, and in which slot.
    fn offer(&mut self, rng: &mut rand::rngs::SmallRng) -> Option<usize> {
        use rand::Rng;
        let i = self.seen;
        self.seen += 1;
        if (i as usize) < self.size {
            return Some(i as usize);
        }
        let j = rng.random_range(0..=i);
        ((j as usize) < self.size).then_some(j as usize)
    }

    fn put(&mut self, slot: usize, record: Record) {
        let order = self.seen - 1;
        if slot < self.kept.len() {
            self.kept[slot] = (order, record);
        } else {
            self.kept.push((order, record));
        }
    }

    /// The kept lines in the order they were read, and how many were offered.
    fn take(&mut self) -> (Vec<Record>, u64) {
        let mut kept = std::mem::take(&mut self.kept);
        kept.sort_by_key(|(order, _)| *order);
        (kept.into_iter().map(|(_, r)| r).collect(), self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, point 3 (reviewing every glob): a `.*` component matches `..` in the glob crate;
    /// the tail must not climb out of the directory its pattern names unless it spells `..`.
    #[test]
    fn issue_14_a_pattern_does_not_climb_unless_it_spells_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/.hidden")).unwrap();
        std::fs::write(root.join("secret.log"), "s\n").unwrap();
        std::fs::write(root.join("app/ok.log"), "o\n").unwrap();
        std::fs::write(root.join("app/.hidden/h.log"), "h\n").unwrap();
        let at = |p: &str| format!("{}/{p}", root.display());

        let found = matching_paths(&[at("app/.*/*.log")]);
        assert!(
            !found.iter().any(|p| p.ends_with("secret.log")),
            "climbed out: {found:?}"
        );
        assert!(found.contains(&root.join("app/.hidden/h.log")), "{found:?}");
        assert_eq!(
            matching_paths(&[at("app/*")]),
            vec![root.join("app/ok.log")]
        );
        // Spelled by the author, `..` is taken as written.
        assert_eq!(
            matching_paths(&[at("app/../*.log")]),
            vec![root.join("app/../secret.log")]
        );
    }
}
