//! Traffic of each network interface but loopback, from the kernel's counters in
//! `/proc/net/dev`: totals as they stand, and per-second rates against the previous run.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::{Collected, Collector, rate, read_proc_text, round2};
use crate::model::Sample;

/// Keeps a host with hundreds of veth or tap interfaces (container hosts) from flooding a batch.
const MAX_INTERFACES: usize = 64;

/// One interface's line of `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetDev<'a> {
    pub name: &'a str,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces in `/proc/net/dev`, in the kernel's order. The two header lines have no ':'
/// and malformed lines are skipped.
pub(crate) fn parse_net_dev(text: &str) -> impl Iterator<Item = NetDev<'_>> {
    text.lines().filter_map(parse_net_dev_line)
}

fn parse_net_dev_line(line: &str) -> Option<NetDev<'_>> {
    // Interface names cannot contain ':' or whitespace, so the first ':' ends the name. Old
    // kernels print no space between it and a wide first counter.
    let (name, counters) = line.split_once(':')?;
    let mut fields = counters.split_ascii_whitespace();
    let mut values = [0u64; 12];
    for slot in &mut values {
        *slot = fields.next()?.parse().ok()?;
    }
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets
    // errs drop ...
    let [
        rx_bytes,
        rx_packets,
        rx_errors,
        rx_dropped,
        _,
        _,
        _,
        _,
        tx_bytes,
        tx_packets,
        tx_errors,
        tx_dropped,
    ] = values;
    Some(NetDev {
        name: name.trim(),
        rx_bytes,
        rx_packets,
        rx_errors,
        rx_dropped,
        tx_bytes,
        tx_packets,
        tx_errors,
        tx_dropped,
    })
}

/// The counters a rate is taken from, as the previous run saw them.
#[derive(Debug)]
struct Previous {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    /// The run that last saw the interface, so vanished ones can be dropped.
    seen: u64,
}

#[derive(Debug, Serialize)]
struct InterfaceData<'a> {
    interface: &'a str,
    rx_bytes_per_sec: Option<f64>,
    tx_bytes_per_sec: Option<f64>,
    rx_packets_per_sec: Option<f64>,
    tx_packets_per_sec: Option<f64>,
    rx_bytes_total: u64,
    tx_bytes_total: u64,
    rx_errors_total: u64,
    tx_errors_total: u64,
    rx_dropped_total: u64,
    tx_dropped_total: u64,
}

/// Per-interface traffic.
pub struct NetworkCollector {
    buf: Vec<u8>,
    previous: HashMap<String, Previous>,
    run: u64,
    last_run: Option<Instant>,
}

impl NetworkCollector {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(4 * 1024),
            previous: HashMap::new(),
            run: 0,
            last_run: None,
        }
    }
}

impl Default for NetworkCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for NetworkCollector {
    fn name(&self) -> &str {
        "network"
    }

    fn collect(&mut self) -> anyhow::Result<Collected> {
        let now = Instant::now();
        let elapsed = self.last_run.map(|last| now.duration_since(last));
        self.last_run = Some(now);
        self.run += 1;
        let run = self.run;

        let text = read_proc_text("/proc/net/dev", &mut self.buf)?;
        let mut samples = Vec::new();
        let mut interfaces = Vec::new();
        for dev in parse_net_dev(&text)
            .filter(|dev| dev.name != "lo")
            .take(MAX_INTERFACES)
        {
            let rates = match self.previous.get_mut(dev.name) {
                Some(prev) => {
                    // Only an interface seen by the run just before has a meaningful elapsed.
                    let rates = match elapsed {
                        Some(elapsed) if prev.seen + 1 == run => {
                            let r = |p, c| rate(p, c, elapsed).map(round2);
                            [
                                r(prev.rx_bytes, dev.rx_bytes),
                                r(prev.tx_bytes, dev.tx_bytes),
                                r(prev.rx_packets, dev.rx_packets),
                                r(prev.tx_packets, dev.tx_packets),
                            ]
                        }
                        _ => [None; 4],
                    };
                    *prev = Previous {
                        rx_bytes: dev.rx_bytes,
                        tx_bytes: dev.tx_bytes,
                        rx_packets: dev.rx_packets,
                        tx_packets: dev.tx_packets,
                        seen: run,
                    };
                    rates
                }
                None => {
                    self.previous.insert(
                        dev.name.to_owned(),
                        Previous {
                            rx_bytes: dev.rx_bytes,
                            tx_bytes: dev.tx_bytes,
                            rx_packets: dev.rx_packets,
                            tx_packets: dev.tx_packets,
                            seen: run,
                        },
                    );
                    [None; 4]
                }
            };

            let label =
                |name: &str, value: f64| Sample::new(name, value).with_label("interface", dev.name);
            let [rx_bps, tx_bps, rx_pps, tx_pps] = rates;
            for (name, value) in [
                ("net.rx_bytes_per_sec", rx_bps),
                ("net.tx_bytes_per_sec", tx_bps),
                ("net.rx_packets_per_sec", rx_pps),
                ("net.tx_packets_per_sec", tx_pps),
            ] {
                if let Some(value) = value {
                    samples.push(label(name, value));
                }
            }
            for (name, value) in [
                ("net.rx_bytes_total", dev.rx_bytes),
                ("net.tx_bytes_total", dev.tx_bytes),
                ("net.rx_errors_total", dev.rx_errors),
                ("net.tx_errors_total", dev.tx_errors),
                ("net.rx_dropped_total", dev.rx_dropped),
                ("net.tx_dropped_total", dev.tx_dropped),
            ] {
                samples.push(label(name, value as f64));
            }
            interfaces.push(InterfaceData {
                interface: dev.name,
                rx_bytes_per_sec: rx_bps,
                tx_bytes_per_sec: tx_bps,
                rx_packets_per_sec: rx_pps,
                tx_packets_per_sec: tx_pps,
                rx_bytes_total: dev.rx_bytes,
                tx_bytes_total: dev.tx_bytes,
                rx_errors_total: dev.rx_errors,
                tx_errors_total: dev.tx_errors,
                rx_dropped_total: dev.rx_dropped,
                tx_dropped_total: dev.tx_dropped,
            });
        }
        self.previous.retain(|_, prev| prev.seen == run);

        let data = serde_json::json!({ "interfaces": interfaces });
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

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   48097     565    0    0    0     0          0         0    48097     565    0    0    0     0       0          0
  eth0: 211986637    8693    1    2    0     0          0         0   503206    5234    3    4    0     0       0          0
wlan0:1234567890123 10 0 0 0 0 0 0 99 9 0 0 0 0 0 0
  bad0: 1 2 3
";

    #[test]
    fn parses_interfaces_and_skips_headers_and_bad_lines() {
        let devs: Vec<_> = parse_net_dev(NET_DEV).collect();
        assert_eq!(
            devs.iter().map(|d| d.name).collect::<Vec<_>>(),
            ["lo", "eth0", "wlan0"]
        );
        let eth0 = devs[1];
        assert_eq!(eth0.rx_bytes, 211_986_637);
        assert_eq!(eth0.rx_packets, 8693);
        assert_eq!(eth0.rx_errors, 1);
        assert_eq!(eth0.rx_dropped, 2);
        assert_eq!(eth0.tx_bytes, 503_206);
        assert_eq!(eth0.tx_packets, 5234);
        assert_eq!(eth0.tx_errors, 3);
        assert_eq!(eth0.tx_dropped, 4);
        // No space after the colon, as old kernels print wide counters.
        assert_eq!(devs[2].rx_bytes, 1_234_567_890_123);
        assert_eq!(devs[2].tx_bytes, 99);
    }

    #[test]
    fn a_counter_going_backwards_gives_no_rate() {
        let d = std::time::Duration::from_secs(1);
        assert_eq!(rate(1000, 10, d), None);
        assert_eq!(rate(1000, 1500, d), Some(500.0));
    }

    fn value(collected: &Collected, name: &str, interface: &str) -> Option<f64> {
        collected
            .samples
            .iter()
            .find(|s| {
                s.name == name && s.labels.get("interface").map(String::as_str) == Some(interface)
            })
            .map(|s| s.value)
    }

    #[test]
    fn collects_this_host() {
        let mut collector = NetworkCollector::new();
        let first = collector.collect().unwrap();
        assert!(
            !first.samples.iter().any(|s| s.name.ends_with("_per_sec")),
            "no rates on the first run"
        );
        assert!(
            !first.samples.iter().any(|s| s.labels["interface"] == "lo"),
            "loopback is left out"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        let second = collector.collect().unwrap();
        let interfaces = second.data["interfaces"].as_array().unwrap();
        for iface in interfaces {
            let name = iface["interface"].as_str().unwrap();
            let rx = value(&second, "net.rx_bytes_per_sec", name).unwrap();
            assert!(rx >= 0.0 && rx.is_finite());
            assert!(value(&second, "net.rx_bytes_total", name).is_some());
            assert!(iface["tx_bytes_per_sec"].is_number());
        }
        assert!(interfaces.len() <= MAX_INTERFACES);
    }
}
