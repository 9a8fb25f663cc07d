//! Host-wide CPU, load, memory, swap and uptime: CPU time split from the aggregate `cpu` line of
//! `/proc/stat`, load averages from `/proc/loadavg`, memory and swap from `/proc/meminfo`, and
//! uptime from `/proc/uptime`.

use anyhow::{Context, bail};
use serde_json::json;

use super::{Collected, Collector, read_proc_text, round2};
use crate::model::{Sample, metric};

/// Cumulative CPU time of all CPUs together, in clock ticks, as the `cpu` line of `/proc/stat`
/// gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// What `/proc/stat` says about the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuStat {
    pub times: CpuTimes,
    /// Number of `cpuN` lines, i.e. online CPUs.
    pub count: u32,
}

/// How the CPU time between two readings was spent, in percent of it. The parts sum to 100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuPercent {
    pub user: f64,
    pub system: f64,
    pub iowait: f64,
    pub idle: f64,
    pub steal: f64,
}

impl CpuPercent {
    pub fn used(&self) -> f64 {
        metric::cpu_used_percent(self.idle, self.iowait)
    }
}

/// Figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

pub(crate) fn parse_stat(text: &str) -> anyhow::Result<CpuStat> {
    let mut times = None;
    let mut count = 0u32;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            // The cpu lines come first; stopping here spares scanning the long `intr` line.
            if times.is_some() {
                break;
            }
            continue;
        };
        if rest.starts_with(' ') {
            times = Some(parse_cpu_fields(rest)?);
        } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
            count += 1;
        }
    }
    let Some(times) = times else {
        bail!("no aggregate cpu line in /proc/stat");
    };
    Ok(CpuStat { times, count })
}

fn parse_cpu_fields(fields: &str) -> anyhow::Result<CpuTimes> {
    let mut values = [0u64; 8];
    let mut found = 0;
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice, so they are
    // left out rather than counted twice.
    for (slot, field) in values.iter_mut().zip(fields.split_ascii_whitespace()) {
        *slot = field
            .parse()
            .with_context(|| format!("bad number {field:?} in the cpu line of /proc/stat"))?;
        found += 1;
    }
    // Kernels before 2.6 had only four fields; later ones are absent, not malformed.
    if found < 4 {
        bail!("the cpu line of /proc/stat has only {found} fields");
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values;
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
    })
}

/// Percentages of the time between `previous` and `current`; `None` when no tick passed.
pub(crate) fn cpu_percent(previous: &CpuTimes, current: &CpuTimes) -> Option<CpuPercent> {
    // Per field and saturating: iowait is known to go backwards on some kernels, and one field's
    // hiccup must not wrap into an absurd share.
    let d = |prev: u64, cur: u64| cur.saturating_sub(prev) as f64;
    let user = d(previous.user, current.user) + d(previous.nice, current.nice);
    let system = d(previous.system, current.system)
        + d(previous.irq, current.irq)
        + d(previous.softirq, current.softirq);
    let idle = d(previous.idle, current.idle);
    let iowait = d(previous.iowait, current.iowait);
    let steal = d(previous.steal, current.steal);
    let total = user + system + idle + iowait + steal;
    if total <= 0.0 {
        return None;
    }
    let pct = |part: f64| part / total * 100.0;
    Some(CpuPercent {
        user: pct(user),
        system: pct(system),
        iowait: pct(iowait),
        idle: pct(idle),
        steal: pct(steal),
    })
}

pub(crate) fn parse_meminfo(text: &str) -> anyhow::Result<MemInfo> {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64);
    let (mut swap_total, mut swap_free) = (0u64, 0u64);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => total.insert(0),
            "MemAvailable" => available.insert(0),
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            "SwapTotal" => &mut swap_total,
            "SwapFree" => &mut swap_free,
            _ => continue,
        };
        *slot = parse_kib(value)
            .with_context(|| format!("bad value {value:?} for {key} in /proc/meminfo"))?;
    }
    let Some(total) = total else {
        bail!("no MemTotal in /proc/meminfo");
    };
    // MemAvailable exists since Linux 3.14; before it, free + buffers + cache is the usual
    // (optimistic) stand-in.
    let available = available.unwrap_or(free + buffers + cached).min(total);
    Ok(MemInfo {
        total,
        available,
        swap_total,
        swap_free: swap_free.min(swap_total),
    })
}

/// `  16384 kB` as bytes. The unit is always kB (KiB); a bare number (the HugePages counts) is
/// taken as it is.
fn parse_kib(value: &str) -> Option<u64> {
    let value = value.trim();
    match value.strip_suffix("kB") {
        Some(kib) => kib.trim_end().parse::<u64>().ok()?.checked_mul(1024),
        None => value.parse().ok(),
    }
}

pub(crate) fn parse_loadavg(text: &str) -> anyhow::Result<[f64; 3]> {
    let mut fields = text.split_ascii_whitespace();
    let mut load = [0.0; 3];
    for slot in &mut load {
        let field = fields
            .next()
            .context("/proc/loadavg has fewer than 3 fields")?;
        *slot = field
            .parse()
            .with_context(|| format!("bad load average {field:?} in /proc/loadavg"))?;
    }
    Ok(load)
}

/// Seconds since boot, the first field of `/proc/uptime`.
pub(crate) fn parse_uptime(text: &str) -> anyhow::Result<f64> {
    let field = text
        .split_ascii_whitespace()
        .next()
        .context("/proc/uptime is empty")?;
    field
        .parse()
        .with_context(|| format!("bad uptime {field:?} in /proc/uptime"))
}

/// CPU, load, memory, swap and uptime of the whole host.
pub struct SystemCollector {
    buf: Vec<u8>,
    /// Zeros until the first run, so that run reports the split since boot instead of nothing.
    previous: CpuTimes,
    /// Reported again when no clock tick passed between two runs (runs closer than 10 ms).
    last_percent: Option<CpuPercent>,
}

impl SystemCollector {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(8 * 1024),
            previous: CpuTimes::default(),
            last_percent: None,
        }
    }
}

impl Default for SystemCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for SystemCollector {
    fn name(&self) -> &str {
        "system"
    }

    fn collect(&mut self) -> anyhow::Result<Collected> {
        let stat = parse_stat(&read_proc_text("/proc/stat", &mut self.buf)?)?;
        if let Some(pct) = cpu_percent(&self.previous, &stat.times) {
            self.previous = stat.times;
            self.last_percent = Some(pct);
        }
        let load = parse_loadavg(&read_proc_text("/proc/loadavg", &mut self.buf)?)?;
        let mem = parse_meminfo(&read_proc_text("/proc/meminfo", &mut self.buf)?)?;
        let uptime = parse_uptime(&read_proc_text("/proc/uptime", &mut self.buf)?)?;

        let mem_used = mem.total - mem.available;
        let mem_used_percent = if mem.total > 0 {
            round2(mem_used as f64 / mem.total as f64 * 100.0)
        } else {
            0.0
        };
        let swap_used = mem.swap_total - mem.swap_free;

        let mut samples = Vec::with_capacity(18);
        let mut cpu = serde_json::Map::new();
        if let Some(pct) = self.last_percent {
            for (sample_name, key, value) in [
                ("cpu.user_percent", "user_percent", pct.user),
                ("cpu.system_percent", "system_percent", pct.system),
                ("cpu.iowait_percent", "iowait_percent", pct.iowait),
                ("cpu.idle_percent", "idle_percent", pct.idle),
                ("cpu.steal_percent", "steal_percent", pct.steal),
                (metric::CPU_USED_PERCENT, "used_percent", pct.used()),
            ] {
                let value = round2(value);
                samples.push(Sample::new(sample_name, value));
                cpu.insert(key.to_owned(), value.into());
            }
        }
        samples.push(Sample::new("cpu.count", f64::from(stat.count)));
        cpu.insert("count".to_owned(), stat.count.into());

        samples.extend([
            Sample::new(metric::LOAD1, load[0]),
            Sample::new("load.5", load[1]),
            Sample::new("load.15", load[2]),
            Sample::new("memory.total_bytes", mem.total as f64),
            Sample::new("memory.available_bytes", mem.available as f64),
            Sample::new("memory.used_bytes", mem_used as f64),
            Sample::new(metric::MEMORY_USED_PERCENT, mem_used_percent),
            Sample::new("swap.total_bytes", mem.swap_total as f64),
            Sample::new("swap.free_bytes", mem.swap_free as f64),
            Sample::new("swap.used_bytes", swap_used as f64),
            Sample::new("uptime_seconds", uptime),
        ]);

        let data = json!({
            "cpu": cpu,
            "load": { "1": load[0], "5": load[1], "15": load[2] },
            "memory": {
                "total_bytes": mem.total,
                "available_bytes": mem.available,
                "used_bytes": mem_used,
                "used_percent": mem_used_percent,
            },
            "swap": {
                "total_bytes": mem.swap_total,
                "free_bytes": mem.swap_free,
                "used_bytes": swap_used,
            },
            "uptime_seconds": uptime,
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

    const STAT: &str = "\
cpu  22790 10 4092 29234 663 5 230 3595 100 7
cpu0 12021 0 2067 13953 443 0 69 1715 0 0
cpu1 10769 10 2025 15281 219 5 161 1879 100 7
intr 399640 0 0 0 0 0 0
ctxt 777740
btime 1700000000
processes 4321
procs_running 2
procs_blocked 0
";

    #[test]
    fn stat_gives_the_aggregate_line_and_the_cpu_count() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.count, 2);
        assert_eq!(
            stat.times,
            CpuTimes {
                user: 22790,
                nice: 10,
                system: 4092,
                idle: 29234,
                iowait: 663,
                irq: 5,
                softirq: 230,
                steal: 3595,
            }
        );
    }

    #[test]
    fn stat_from_an_old_kernel_with_four_fields_parses() {
        let stat = parse_stat("cpu  1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(stat.times.idle, 4);
        assert_eq!(stat.times.steal, 0);
        assert!(parse_stat("cpu  1 2\n").is_err());
        assert!(parse_stat("intr 1 2 3\n").is_err());
        assert!(parse_stat("cpu  1 x 3 4\n").is_err());
    }

    #[test]
    fn percentages_split_the_interval_and_sum_to_100() {
        let prev = CpuTimes {
            user: 100,
            nice: 0,
            system: 50,
            idle: 800,
            iowait: 10,
            irq: 0,
            softirq: 0,
            steal: 0,
        };
        let cur = CpuTimes {
            user: 130,
            nice: 10,
            system: 60,
            idle: 850,
            iowait: 20,
            irq: 5,
            softirq: 5,
            steal: 10,
        };
        // Deltas: user 40, system 20, idle 50, iowait 10, steal 10 = 130 ticks.
        let pct = cpu_percent(&prev, &cur).unwrap();
        let sum = pct.user + pct.system + pct.iowait + pct.idle + pct.steal;
        assert!((sum - 100.0).abs() < 1e-9);
        assert!((pct.user - 40.0 / 130.0 * 100.0).abs() < 1e-9);
        assert!((pct.used() - 70.0 / 130.0 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_counter_going_backwards_counts_as_zero() {
        let prev = CpuTimes {
            user: 100,
            idle: 100,
            iowait: 50,
            ..CpuTimes::default()
        };
        let cur = CpuTimes {
            user: 150,
            idle: 150,
            iowait: 40,
            ..CpuTimes::default()
        };
        let pct = cpu_percent(&prev, &cur).unwrap();
        assert_eq!(pct.iowait, 0.0);
        assert_eq!(pct.user, 50.0);
        assert_eq!(pct.idle, 50.0);
    }

    #[test]
    fn no_tick_between_readings_gives_no_percentages() {
        let t = parse_stat(STAT).unwrap().times;
        assert_eq!(cpu_percent(&t, &t), None);
    }

    #[test]
    fn first_run_reports_the_split_since_boot() {
        let t = parse_stat(STAT).unwrap().times;
        let pct = cpu_percent(&CpuTimes::default(), &t).unwrap();
        assert!(pct.idle > 40.0 && pct.idle < 60.0, "{pct:?}");
    }

    #[test]
    fn meminfo_in_bytes() {
        let text = "\
MemTotal:       16384000 kB
MemFree:         1000000 kB
MemAvailable:    8192000 kB
Buffers:          100000 kB
Cached:          2000000 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        2000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";
        let mem = parse_meminfo(text).unwrap();
        assert_eq!(mem.total, 16_384_000 * 1024);
        assert_eq!(mem.available, 8_192_000 * 1024);
        assert_eq!(mem.swap_total, 2_097_148 * 1024);
        assert_eq!(mem.swap_free, 2_000_000 * 1024);
    }

    #[test]
    fn meminfo_without_memavailable_falls_back() {
        let text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n";
        let mem = parse_meminfo(text).unwrap();
        assert_eq!(mem.available, 420 * 1024);
        assert_eq!(mem.swap_total, 0);
        assert!(parse_meminfo("MemFree: 100 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: lots kB\n").is_err());
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(
            parse_loadavg("0.52 1.05 0.98 2/345 6789\n").unwrap(),
            [0.52, 1.05, 0.98]
        );
        assert!(parse_loadavg("0.52 1.05\n").is_err());
        assert_eq!(parse_uptime("12345.67 23456.78\n").unwrap(), 12345.67);
        assert!(parse_uptime("").is_err());
    }

    fn value(collected: &Collected, name: &str) -> f64 {
        collected
            .samples
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no sample {name}"))
            .value
    }

    #[test]
    fn collects_this_host() {
        let mut collector = SystemCollector::new();
        let first = collector.collect().unwrap();
        // The first run already has CPU figures (since boot).
        assert!(value(&first, metric::CPU_USED_PERCENT) >= 0.0);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let second = collector.collect().unwrap();
        let parts: f64 = [
            "cpu.user_percent",
            "cpu.system_percent",
            "cpu.iowait_percent",
            "cpu.idle_percent",
            "cpu.steal_percent",
        ]
        .iter()
        .map(|name| {
            let v = value(&second, name);
            assert!((0.0..=100.0).contains(&v), "{name} = {v}");
            v
        })
        .sum();
        assert!((parts - 100.0).abs() < 0.1, "parts sum to {parts}");
        let used = value(&second, metric::CPU_USED_PERCENT);
        assert!((0.0..=100.0).contains(&used));
        assert!(value(&second, "cpu.count") >= 1.0);
        assert!(value(&second, "memory.total_bytes") > 0.0);
        assert!(value(&second, "memory.used_bytes") <= value(&second, "memory.total_bytes"));
        let mem_pct = value(&second, metric::MEMORY_USED_PERCENT);
        assert!((0.0..=100.0).contains(&mem_pct));
        assert!(value(&second, metric::LOAD1) >= 0.0);
        assert!(value(&second, "uptime_seconds") > 0.0);
        assert!(second.data["memory"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(second.data["cpu"]["idle_percent"].is_number());
        assert!(second.data["load"]["15"].is_number());
        for sample in &second.samples {
            assert!(sample.value.is_finite(), "{}", sample.name);
        }
    }
}
