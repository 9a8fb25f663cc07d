//! Times in and out: milliseconds since the Unix epoch inside, RFC 3339 at the edges, and the
//! forms operators type (`-1h`, `now`, durations like `10s` or `14d`).
//!
//! Pure functions; no I/O beyond reading the clock.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T01:02:03.456Z`.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A span for people, to the second: `3m 12s`, `1h`, `250ms` below a second.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// Parses a duration such as `10s`, `5m`, `14d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("{text:?} is not a duration ({err}); write it like \"10s\", \"5m\" or \"14d\"")
    })
}

/// Parses a time given by a user: RFC 3339 (`2026-11-22T01:00:00Z`, any offset), `now`, or a
/// duration before now (`-1h`, `-30m`, `-7d`). Returns milliseconds since the epoch.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let duration = humantime::parse_duration(ago).map_err(|e| {
            format!("{text:?} is not a relative time ({e}); write it like -1h or -30m")
        })?;
        return Ok(now_ms - duration.as_millis().min(i64::MAX as u128) as i64);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("{text:?} is not a time ({e}); use RFC 3339 like 2026-11-22T01:00:00Z, or -1h")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_relative_and_now() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00", now).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("-soon", now).is_err());
    }

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        assert_eq!(
            parse_duration("14d").unwrap(),
            std::time::Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
    }
}
