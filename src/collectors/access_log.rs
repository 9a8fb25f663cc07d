//! The nginx / Apache access log: one line parsed into its fields, and lines added up into web
//! traffic figures (requests/s by status class, bytes/s, request time) per virtual host.
//!
//! The parser borrows from the line and allocates nothing: the log tail runs it on every line,
//! 100,000 and more a second. It must stay a pure function of the line (no I/O, no clock).

use std::collections::HashMap;

use crate::model::Sample;

/// The fields of one combined-format line, borrowed from it.
///
/// `remote_addr - remote_user [time_local] "request" status body_bytes_sent "referer"
/// "user_agent"`, then optionally the request time in seconds (nginx `$request_time`);
/// `vhost_combined` puts `host:port ` first.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine<'a> {
    pub vhost: Option<&'a str>,
    pub remote_addr: &'a str,
    pub remote_user: &'a str,
    pub time_local: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub body_bytes_sent: u64,
    pub referer: &'a str,
    pub user_agent: &'a str,
    /// Seconds, when the line carries it.
    pub request_time: Option<f64>,
}

/// Splits off the next space-separated token.
fn token(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ');
    if rest.is_empty() {
        return None;
    }
    Some(match rest.find(' ') {
        Some(end) => (&rest[..end], &rest[end + 1..]),
        None => (rest, ""),
    })
}

/// Splits off a `"…"` field; `\"` inside is part of it (Apache escapes quotes so).
fn quoted(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ').strip_prefix('"')?;
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some((&rest[..i], &rest[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Parses one line; `None` when it is not in the format.
pub fn parse(line: &str, with_vhost: bool) -> Option<AccessLine<'_>> {
    let mut rest = line;
    let vhost = if with_vhost {
        let (host, r) = token(rest)?;
        rest = r;
        Some(host.rsplit_once(':').map_or(host, |(h, _port)| h))
    } else {
        None
    };
    let (remote_addr, r) = token(rest)?;
    let (_ident, r) = token(r)?;
    let (remote_user, r) = token(r)?;
    let r = r.trim_start_matches(' ').strip_prefix('[')?;
    let end = r.find(']')?;
    let (time_local, r) = (&r[..end], &r[end + 1..]);
    let (request, r) = quoted(r)?;
    let (status, r) = token(r)?;
    let status: u16 = status.parse().ok().filter(|s| (100..1000).contains(s))?;
    let (bytes, r) = token(r)?;
    // Apache's %b writes "-" for no body.
    let body_bytes_sent = if bytes == "-" { 0 } else { bytes.parse().ok()? };
    let (referer, r) = quoted(r).unwrap_or(("-", r));
    let (user_agent, r) = quoted(r).unwrap_or(("-", r));
    let request_time = token(r)
        .and_then(|(t, _)| t.strip_prefix("rt=").unwrap_or(t).parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0);
    // "GET /path HTTP/1.1"; a garbled request (a TLS hello on a plain port) is kept as the path.
    let mut parts = request.splitn(3, ' ');
    let (method, path, protocol) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) => (m, p, v),
        (Some(m), Some(p), None) => (m, p, ""),
        _ => ("", request, ""),
    };
    Some(AccessLine {
        vhost,
        remote_addr,
        remote_user,
        time_local,
        method,
        path,
        protocol,
        status,
        body_bytes_sent,
        referer,
        user_agent,
        request_time,
    })
}

impl AccessLine<'_> {
    /// The line as a record document.
    pub fn to_json(&self, vhost: &str) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "vhost": vhost,
            "remote_addr": self.remote_addr,
            "remote_user": self.remote_user,
            "time_local": self.time_local,
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "status": self.status,
            "body_bytes_sent": self.body_bytes_sent,
            "referer": self.referer,
            "user_agent": self.user_agent,
        });
        if let Some(t) = self.request_time {
            doc["request_time"] = t.into();
        }
        doc
    }

    /// When the request was logged, in epoch milliseconds.
    pub fn time_ms(&self) -> Option<i64> {
        chrono::DateTime::parse_from_str(self.time_local, "%d/%b/%Y:%H:%M:%S %z")
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

/// Most virtual hosts told apart in one log over its life; the rest are added up under `other`.
pub const VHOSTS_MAX: usize = 256;

/// One interval's traffic of one virtual host.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VhostTraffic {
    /// Requests by status class: 1xx … 5xx.
    pub by_class: [u64; 5],
    pub bytes: u64,
    pub timed: u64,
    pub time_sum: f64,
    pub time_max: f64,
}

/// Traffic figures being added up over one interval.
#[derive(Debug, Default)]
pub struct Traffic {
    vhosts: HashMap<String, VhostTraffic>,
    /// Every vhost told apart so far (at most [`VHOSTS_MAX`]).
    known: std::collections::HashSet<String>,
}

impl Traffic {
    /// Adds one request.
    pub fn add(&mut self, vhost: &str, line: &AccessLine<'_>) {
        let entry = match self.vhosts.get_mut(vhost) {
            Some(entry) => entry,
            None => {
                // A vhost is a label: clients choose the Host header, so both the number of
                // vhosts (over the log's life, not per interval: each is a series) and the
                // length of a name are bounded.
                let key = if self.known.contains(vhost) {
                    vhost
                } else if self.known.len() < VHOSTS_MAX
                    && vhost.len() <= crate::model::limits::LABEL_VALUE_MAX
                {
                    self.known.insert(vhost.to_owned());
                    vhost
                } else {
                    "other"
                };
                self.vhosts.entry(key.to_owned()).or_default()
            }
        };
        let class = (line.status / 100).clamp(1, 5) as usize - 1;
        entry.by_class[class] += 1;
        entry.bytes += line.body_bytes_sent;
        if let Some(t) = line.request_time {
            entry.timed += 1;
            entry.time_sum += t;
            entry.time_max = entry.time_max.max(t);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vhosts.is_empty()
    }

    /// The figures over `seconds`, as a document and samples labelled `log` and `vhost`, and
    /// starts a new interval.
    pub fn take(&mut self, log: &str, seconds: f64) -> (serde_json::Value, Vec<Sample>) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let seconds = seconds.max(0.001);
        let mut doc = serde_json::Map::new();
        let mut samples = Vec::new();
        let mut vhosts: Vec<_> = self.vhosts.drain().collect();
        vhosts.sort_by(|a, b| a.0.cmp(&b.0));
        for (vhost, t) in vhosts {
            let sample = |name: &str, value: f64| {
                Sample::new(name, super::round2(value))
                    .with_label("log", log)
                    .with_label("vhost", vhost.as_str())
            };
            let requests: u64 = t.by_class.iter().sum();
            samples.push(sample("web.requests_per_second", requests as f64 / seconds));
            for (class, count) in CLASSES.iter().zip(t.by_class) {
                samples.push(
                    sample("web.requests_per_second", count as f64 / seconds)
                        .with_label("class", *class),
                );
            }
            samples.push(sample("web.bytes_per_second", t.bytes as f64 / seconds));
            let mut entry = serde_json::json!({
                "requests": requests,
                "by_class": CLASSES.iter().zip(t.by_class).map(|(c, n)| (c.to_string(), serde_json::Value::from(n))).collect::<serde_json::Map<_, _>>(),
                "bytes": t.bytes,
            });
            if t.timed > 0 {
                let avg_ms = t.time_sum / t.timed as f64 * 1000.0;
                samples.push(sample("web.request_time_avg_ms", avg_ms));
                samples.push(sample("web.request_time_max_ms", t.time_max * 1000.0));
                entry["request_time_avg_ms"] = super::round2(avg_ms).into();
                entry["request_time_max_ms"] = super::round2(t.time_max * 1000.0).into();
            }
            doc.insert(vhost, entry);
        }
        (
            serde_json::json!({ "seconds": super::round2(seconds), "vhosts": doc }),
            samples,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = r#"203.0.113.9 - alice [10/Oct/2026:13:55:36 +0000] "GET /index.html?q=1 HTTP/1.1" 200 2326 "https://example.com/" "Mozilla/5.0 (X11; Linux) \"quoted\"" 0.042"#;

    #[test]
    fn a_combined_line_is_read_field_by_field() {
        let line = parse(NGINX, false).unwrap();
        assert_eq!(line.remote_addr, "203.0.113.9");
        assert_eq!(line.remote_user, "alice");
        assert_eq!(line.time_local, "10/Oct/2026:13:55:36 +0000");
        assert_eq!(
            (line.method, line.path, line.protocol),
            ("GET", "/index.html?q=1", "HTTP/1.1")
        );
        assert_eq!((line.status, line.body_bytes_sent), (200, 2326));
        assert_eq!(line.referer, "https://example.com/");
        assert_eq!(line.user_agent, r#"Mozilla/5.0 (X11; Linux) \"quoted\""#);
        assert_eq!(line.request_time, Some(0.042));
        assert_eq!(line.time_ms(), Some(1_791_640_536_000));
        // Apache: no request time, "-" for an empty body; vhost_combined's host:port first.
        let apache = r#"www.example.org:443 10.0.0.1 - - [10/Oct/2026:13:55:36 -0700] "POST /login HTTP/2.0" 302 - "-" "curl/8""#;
        let line = parse(apache, true).unwrap();
        assert_eq!(line.vhost, Some("www.example.org"));
        assert_eq!(
            (line.status, line.body_bytes_sent, line.request_time),
            (302, 0, None)
        );
        // A garbled request still counts, with its status.
        let tls = r#"1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "\x16\x03\x01" 400 157 "-" "-""#;
        assert_eq!(parse(tls, false).unwrap().status, 400);
        for bad in [
            "",
            "hello world",
            r#"1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "GET / HTTP/1.1" abc 1"#,
            r#"1.2.3.4 - - 10/Oct/2026 "GET / HTTP/1.1" 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "GET / HTTP/1.1 200 1"#,
        ] {
            assert!(parse(bad, false).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn traffic_adds_up_per_vhost_and_class() {
        let mut traffic = Traffic::default();
        let ok = parse(NGINX, false).unwrap();
        let mut err = ok.clone();
        err.status = 503;
        err.request_time = Some(0.5);
        for _ in 0..8 {
            traffic.add("a", &ok);
        }
        traffic.add("a", &err);
        traffic.add("b", &ok);
        let (doc, samples) = traffic.take("nginx", 2.0);
        let find = |vhost: &str, name: &str, class: Option<&str>| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels["vhost"] == vhost
                        && s.labels.get("class").map(String::as_str) == class
                })
                .map(|s| s.value)
        };
        assert_eq!(find("a", "web.requests_per_second", None), Some(4.5));
        assert_eq!(find("a", "web.requests_per_second", Some("2xx")), Some(4.0));
        assert_eq!(find("a", "web.requests_per_second", Some("5xx")), Some(0.5));
        assert_eq!(
            find("a", "web.bytes_per_second", None),
            Some(2326.0 * 9.0 / 2.0)
        );
        assert_eq!(find("a", "web.request_time_max_ms", None), Some(500.0));
        assert_eq!(find("b", "web.requests_per_second", None), Some(0.5));
        assert_eq!(doc["vhosts"]["a"]["by_class"]["5xx"], 1);
        assert!(traffic.is_empty(), "take starts a new interval");
        // Vhosts are labels clients choose: a name too long for one, and more names than the
        // bound over the log's life (not per interval), are added up as `other`.
        traffic.add(&"h".repeat(300), &ok);
        for interval in 0..3 {
            for i in 0..VHOSTS_MAX {
                traffic.add(&format!("v{interval}-{i}"), &ok);
            }
            traffic.take("nginx", 1.0);
        }
        traffic.add("v2-0", &ok);
        traffic.add("a", &ok);
        let (doc, _) = traffic.take("nginx", 1.0);
        let names: Vec<&String> = doc["vhosts"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["a", "other"]);
    }
}
