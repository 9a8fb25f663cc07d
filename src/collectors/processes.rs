//! How many processes and threads the host runs, and the five busiest processes: one walk over
//! `/proc/[0-9]*` reading only each process's `stat`, plus `cmdline` for the five shown.
//!
//! A process's CPU percentage is of one CPU (as `top` shows it), so a busy multi-threaded
//! process can exceed 100.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::time::Instant;

use anyhow::Context;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, RawDir};
use serde::Serialize;

use super::{Collected, Collector, read_proc, round2};
use crate::model::Sample;

const TOP_N: usize = 5;
/// Longest command line kept for a top process, in bytes.
const CMDLINE_MAX: usize = 256;
/// A stat line is at most about 1.2 KiB (52 numbers and a name of at most 64 bytes).
const STAT_BUF: usize = 4 * 1024;
/// Enough directory entries per `getdents64` that a walk of a few hundred processes takes a
/// handful of calls.
const DIRENT_BUF: usize = 16 * 1024;

/// The fields of `/proc/PID/stat` this collector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PidStat<'a> {
    pub comm: &'a str,
    pub state: char,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub num_threads: u64,
    /// Clock ticks after boot when the process started: tells a reused PID from the old process.
    pub start_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Parses a `/proc/PID/stat` line; `None` when it is malformed or cut short.
pub(crate) fn parse_pid_stat(text: &str) -> Option<PidStat<'_>> {
    // The name is between the first '(' and the LAST ')': it may itself contain spaces and
    // parentheses (a process can name itself anything), but the fields after it never do.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    // Field numbers as in proc(5); the iterator starts at field 3 (state).
    let state = fields.next()?.chars().next()?;
    let mut rest = fields.skip(10); // to field 14
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    let mut rest = rest.skip(4); // to field 20
    let num_threads: u64 = rest.next()?.parse().ok()?;
    let mut rest = rest.skip(1); // to field 22
    let start_ticks: u64 = rest.next()?.parse().ok()?;
    let mut rest = rest.skip(1); // to field 24
    // rss is a signed long; it has been seen negative briefly on old kernels.
    let rss_pages = rest.next()?.parse::<i64>().ok()?.max(0).unsigned_abs();
    Some(PidStat {
        comm,
        state,
        cpu_ticks: utime.saturating_add(stime),
        num_threads,
        start_ticks,
        rss_pages,
    })
}

/// A command line for display: arguments separated by spaces instead of NULs, trimmed, at most
/// [`CMDLINE_MAX`] bytes without splitting a character.
pub(crate) fn display_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).replace('\0', " ");
    let trimmed = text.trim();
    trimmed[..trimmed.floor_char_boundary(CMDLINE_MAX)]
        .trim_end()
        .to_owned()
}

/// CPU percentage of one process from two readings of its CPU time.
pub(crate) fn cpu_percent(delta_ticks: u64, ticks_per_second: u64, elapsed_secs: f64) -> f64 {
    if elapsed_secs <= 0.0 || ticks_per_second == 0 {
        return 0.0;
    }
    delta_ticks as f64 / ticks_per_second as f64 / elapsed_secs * 100.0
}

/// What is remembered of a process between runs.
#[derive(Debug)]
struct Previous {
    start_ticks: u64,
    cpu_ticks: u64,
    /// The run that last saw it, so exited processes can be dropped.
    seen: u64,
}

#[derive(Debug, Clone, Serialize)]
struct TopProcess {
    pid: u32,
    name: String,
    cmdline: String,
    cpu_percent: f64,
    cpu_time_seconds: f64,
    rss_bytes: u64,
}

impl TopProcess {
    fn busier_than(&self, other: &TopProcess) -> bool {
        (self.cpu_percent, self.cpu_time_seconds) > (other.cpu_percent, other.cpu_time_seconds)
    }
}

/// Process and thread counts and the busiest processes.
pub struct ProcessesCollector {
    stat_buf: Vec<u8>,
    dirent_buf: Vec<MaybeUninit<u8>>,
    path: String,
    previous: HashMap<u32, Previous>,
    run: u64,
    last_run: Option<Instant>,
    ticks_per_second: u64,
    page_size: u64,
}

impl ProcessesCollector {
    pub fn new() -> Self {
        let ticks = rustix::param::clock_ticks_per_second();
        Self {
            stat_buf: vec![0; STAT_BUF],
            dirent_buf: vec![MaybeUninit::uninit(); DIRENT_BUF],
            path: String::with_capacity(32),
            previous: HashMap::new(),
            run: 0,
            last_run: None,
            // USER_HZ is 100 on every mainstream architecture; 0 would mean the auxiliary
            // vector lacked AT_CLKTCK.
            ticks_per_second: if ticks > 0 { ticks } else { 100 },
            page_size: rustix::param::page_size() as u64,
        }
    }
}

impl Default for ProcessesCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a file under `/proc` relative to the open `/proc` directory in one `read`: procfs
/// renders `stat` whole on the first read when the buffer is large enough, so reading on to EOF
/// would only cost another syscall per process. Returns the bytes read.
fn read_once(proc_dir: &OwnedFd, path: &str, buf: &mut [u8]) -> rustix::io::Result<usize> {
    let fd = rustix::fs::openat(
        proc_dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::io::read(&fd, buf)
}

fn pid_of(name: &[u8]) -> Option<u32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

impl Collector for ProcessesCollector {
    fn name(&self) -> &str {
        "processes"
    }

    fn collect(&mut self) -> anyhow::Result<Collected> {
        use std::fmt::Write as _;

        let now = Instant::now();
        let elapsed = self
            .last_run
            .map(|last| now.duration_since(last).as_secs_f64());
        self.last_run = Some(now);
        self.run += 1;
        let run = self.run;
        let ticks_per_second = self.ticks_per_second;
        // For processes not seen by the previous run (all of them on the first run, then those
        // started since), CPU % is the average over their lifetime, as `ps` shows it: the first
        // record then already names the busy processes instead of showing zeros. (`read_proc`'s
        // one small String a run keeps `stat_buf` sized for the stat reads.)
        let uptime = super::system::parse_uptime(&read_proc("/proc/uptime")?)?;

        let proc_dir = rustix::fs::open(
            "/proc",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context("opening /proc")?;

        let mut count = 0u64;
        let mut running = 0u64;
        let mut threads = 0u64;
        let mut top: Vec<TopProcess> = Vec::with_capacity(TOP_N + 1);

        let mut dir = RawDir::new(&proc_dir, &mut self.dirent_buf);
        while let Some(entry) = dir.next() {
            let entry = entry.context("listing /proc")?;
            let Some(pid) = pid_of(entry.file_name().to_bytes()) else {
                continue;
            };
            self.path.clear();
            write!(self.path, "{pid}/stat").expect("writing to a String cannot fail");
            // A process that exits mid-walk fails here or yields a short line: skipped.
            let Ok(len) = read_once(&proc_dir, &self.path, &mut self.stat_buf) else {
                continue;
            };
            if len == self.stat_buf.len() {
                continue;
            }
            let text = String::from_utf8_lossy(&self.stat_buf[..len]);
            let Some(stat) = parse_pid_stat(&text) else {
                continue;
            };

            count += 1;
            threads += stat.num_threads;
            if stat.state == 'R' {
                running += 1;
            }

            let previous = self
                .previous
                .get_mut(&pid)
                .filter(|p| p.start_ticks == stat.start_ticks && p.seen + 1 == run);
            let cpu = match (previous, elapsed) {
                (Some(prev), Some(elapsed)) => {
                    let delta = stat.cpu_ticks.saturating_sub(prev.cpu_ticks);
                    prev.cpu_ticks = stat.cpu_ticks;
                    prev.seen = run;
                    cpu_percent(delta, ticks_per_second, elapsed)
                }
                _ => {
                    self.previous.insert(
                        pid,
                        Previous {
                            start_ticks: stat.start_ticks,
                            cpu_ticks: stat.cpu_ticks,
                            seen: run,
                        },
                    );
                    // At least a second: CPU time is counted in whole ticks, so a process a few
                    // milliseconds old could otherwise show several hundred percent.
                    let age = (uptime - stat.start_ticks as f64 / ticks_per_second as f64).max(1.0);
                    cpu_percent(stat.cpu_ticks, ticks_per_second, age)
                }
            };

            let candidate = TopProcess {
                pid,
                name: String::new(),
                cmdline: String::new(),
                cpu_percent: round2(cpu),
                cpu_time_seconds: round2(stat.cpu_ticks as f64 / ticks_per_second as f64),
                rss_bytes: stat.rss_pages.saturating_mul(self.page_size),
            };
            // The name is copied only for processes that make the cut, so the walk allocates
            // nothing for the hundreds that do not.
            if top.len() < TOP_N || top.last().is_some_and(|last| candidate.busier_than(last)) {
                let mut candidate = candidate;
                candidate.name.push_str(stat.comm);
                top.push(candidate);
                top.sort_unstable_by(|a, b| {
                    (b.cpu_percent, b.cpu_time_seconds)
                        .partial_cmp(&(a.cpu_percent, a.cpu_time_seconds))
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                top.truncate(TOP_N);
            }
        }
        self.previous.retain(|_, p| p.seen == run);

        for process in &mut top {
            self.path.clear();
            write!(self.path, "{}/cmdline", process.pid).expect("writing to a String cannot fail");
            // Kernel threads have an empty command line, and the process may be gone by now:
            // either way an empty string.
            if let Ok(len) = read_once(&proc_dir, &self.path, &mut self.stat_buf) {
                process.cmdline = display_cmdline(&self.stat_buf[..len]);
            }
        }

        let samples = vec![
            Sample::new("processes.count", count as f64),
            Sample::new("processes.running", running as f64),
            Sample::new("processes.threads_total", threads as f64),
        ];
        let data = serde_json::json!({
            "count": count,
            "running": running,
            "threads_total": threads,
            "top": top,
        });
        Ok(Collected {
            data,
            samples,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str) -> String {
        format!(
            "1234 ({comm}) S 1 1234 1234 0 -1 4194560 1500 0 3 0 250 50 0 0 20 0 7 0 \
             4200 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    #[test]
    fn parses_the_fields_after_the_name() {
        let line = stat_line("sshd");
        let stat = parse_pid_stat(&line).unwrap();
        assert_eq!(
            stat,
            PidStat {
                comm: "sshd",
                state: 'S',
                cpu_ticks: 300,
                num_threads: 7,
                start_ticks: 4200,
                rss_pages: 2560,
            }
        );
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_is_taken_whole() {
        let line = stat_line("evil) R 1 2 (x");
        let stat = parse_pid_stat(&line).unwrap();
        assert_eq!(stat.comm, "evil) R 1 2 (x");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.cpu_ticks, 300);
        let line = stat_line("Web Content");
        assert_eq!(parse_pid_stat(&line).unwrap().comm, "Web Content");
        let line = stat_line("");
        assert_eq!(parse_pid_stat(&line).unwrap().comm, "");
    }

    #[test]
    fn a_cut_or_malformed_line_is_refused() {
        let line = stat_line("sshd");
        assert_eq!(parse_pid_stat(&line[..60]), None);
        assert_eq!(parse_pid_stat("1234 sshd S 1 2 3"), None);
        assert_eq!(parse_pid_stat(""), None);
        assert_eq!(parse_pid_stat(&line.replace(" 250 ", " x ")), None);
    }

    #[test]
    fn command_lines_are_joined_trimmed_and_cut_on_a_char_boundary() {
        assert_eq!(
            display_cmdline(b"/usr/bin/python3\0-m\0http.server\0"),
            "/usr/bin/python3 -m http.server"
        );
        assert_eq!(display_cmdline(b""), "");
        let mut long = "é".repeat(200).into_bytes(); // 400 bytes
        long.push(0);
        let cut = display_cmdline(&long);
        assert_eq!(cut.len(), 256);
        assert!(cut.chars().all(|c| c == 'é'));
        let cut = display_cmdline(format!("a{}", "é".repeat(200)).as_bytes());
        assert_eq!(
            cut.len(),
            255,
            "the character across byte 256 is dropped whole"
        );
        assert_eq!(display_cmdline(b"bad\xff\0x"), "bad\u{fffd} x");
    }

    #[test]
    fn cpu_percent_of_one_cpu() {
        assert_eq!(cpu_percent(50, 100, 1.0), 50.0);
        assert_eq!(cpu_percent(300, 100, 2.0), 150.0);
        assert_eq!(cpu_percent(10, 100, 0.0), 0.0);
    }

    #[test]
    fn pids_are_all_digits() {
        assert_eq!(pid_of(b"1234"), Some(1234));
        assert_eq!(pid_of(b"self"), None);
        assert_eq!(pid_of(b""), None);
        assert_eq!(pid_of(b"12a"), None);
    }

    #[test]
    fn clock_ticks_and_page_size_are_known() {
        let c = ProcessesCollector::new();
        assert!(c.ticks_per_second > 0);
        assert!(c.page_size >= 4096);
    }

    #[test]
    fn collects_this_host() {
        let mut collector = ProcessesCollector::new();
        let first = collector.collect().unwrap();
        assert!(first.data["count"].as_u64().unwrap() >= 1);
        // Burn a little CPU so this test process has something to show.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let second = collector.collect().unwrap();
        let value = |name: &str| {
            second
                .samples
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .value
        };
        assert!(value("processes.count") >= 1.0);
        assert!(value("processes.threads_total") >= value("processes.count"));
        let top = second.data["top"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= TOP_N);
        let cpus = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
        for process in top {
            let pct = process["cpu_percent"].as_f64().unwrap();
            assert!((0.0..=100.0 * cpus + 1.0).contains(&pct), "{process}");
            assert!(process["pid"].as_u64().unwrap() >= 1);
            assert!(process["cmdline"].as_str().unwrap().len() <= CMDLINE_MAX);
        }
        let pcts: Vec<f64> = top
            .iter()
            .map(|p| p["cpu_percent"].as_f64().unwrap())
            .collect();
        assert!(pcts.windows(2).all(|w| w[0] >= w[1]), "sorted: {pcts:?}");
        // At least this process was busy in between.
        assert!(pcts[0] > 1.0, "{pcts:?}");
        // On a loaded machine other processes may outrank this one, so only check it if shown.
        let me = u64::from(std::process::id());
        if let Some(mine) = top.iter().find(|p| p["pid"].as_u64() == Some(me)) {
            assert!(mine["cpu_percent"].as_f64().unwrap() > 1.0, "{mine}");
            assert!(mine["rss_bytes"].as_u64().unwrap() > 0);
            assert!(!mine["cmdline"].as_str().unwrap().is_empty());
        }
    }
}
