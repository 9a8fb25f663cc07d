//! Heartbeats and events as values: a pulse ("expect me again within `next_in`"), the states a
//! watched service goes through, event levels, and the limits on all of them. No I/O: the store
//! keeps them (`store::heartbeats`, `store::events`), the pipeline watches them
//! (`pipeline::heartbeats`), the API and the watchTower listener parse into them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::InvalidInput;

pub mod limits {
    /// Bytes in a service name.
    pub const SERVICE_MAX: usize = 200;
    /// The longest `next_in` (and `grace`): a year. Longer is a mistake, not a heartbeat.
    pub const NEXT_IN_MAX_MS: i64 = 366 * 24 * 3600 * 1000;
    /// Bytes in an alert channel or target.
    pub const ALERT_FIELD_MAX: usize = 500;
    /// Bytes of a pulse's or an event's body as sent (HTTP or NATS): a valid one is at most a
    /// few tens of KiB (an event's message and fields are 16 KiB each).
    pub const REQUEST_BODY_MAX: usize = 64 * 1024;
    /// Bytes in an event message; longer ones are refused, not cut.
    pub const MESSAGE_MAX: usize = 16 * 1024;
    /// Bytes of an event's `fields` as JSON.
    pub const FIELDS_MAX: usize = 16 * 1024;
    /// Bytes of a search text (`q`).
    pub const SEARCH_MAX: usize = 1000;
    /// Most heartbeats one node may own (its own `node:<name>` included): a node pulsing a new
    /// name each time must not grow the store and the monitor without end.
    pub const PER_NODE_MAX: usize = 1000;
    /// Bytes of a failed run's output kept in its event: the end, where the error usually is.
    /// More is cut from the front (a fail is never refused for its output's length).
    pub const OUTPUT_TAIL_MAX: usize = 4096;
}

/// The name an agent's own heartbeat goes by. Names with this prefix are reserved: only an
/// agent's batches pulse them, so nothing else can keep a dead node looking alive.
pub fn node_service(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

const NODE_PREFIX: &str = "node:";

/// Whether `service` is named as an agent's own heartbeat, which only its batches pulse and
/// only `fleet node remove` ends. In any case: `Node:web1` beside `node:web1` would mislead
/// as much as a takeover.
pub fn is_node_service(service: &str) -> bool {
    service
        .get(..NODE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(NODE_PREFIX))
}

/// Who a heartbeat belongs to: whoever made it by its first pulse. Only its owner, or an
/// operator token, may pulse it (and so move its deadline or change its alert) or cancel it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A node, by a request signed with its key (or its agent's batches).
    Node(String),
    /// An operator token: may also pulse and cancel any heartbeat but a node's own.
    Operator,
    /// The watchTower compatibility listener (its one password).
    Watchtower,
}

impl Owner {
    /// As the store keeps it: `node:<name>`, `operator`, `watchtower`.
    pub fn stored(&self) -> String {
        match self {
            Owner::Node(node) => format!("{NODE_PREFIX}{node}"),
            Owner::Operator => "operator".into(),
            Owner::Watchtower => "watchtower".into(),
        }
    }

    /// The stored owner in words, for refusals: `node web1`, `an operator`, `the watchTower
    /// listener`.
    pub fn describe(owner: &str) -> String {
        match owner {
            "operator" => "an operator".into(),
            "watchtower" => "the watchTower listener".into(),
            other => match other.strip_prefix(NODE_PREFIX) {
                Some(node) => format!("node {node}"),
                None => other.into(),
            },
        }
    }
}

/// Where a service's alerts go (the notifier reads these; `email`, `slack`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    pub channel: String,
    pub target: String,
}

/// One "I am alive; expect me again within `next_in_ms`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulse {
    pub service: String,
    pub node: Option<String>,
    pub next_in_ms: i64,
    pub grace_ms: i64,
    pub alert: Option<AlertRoute>,
}

impl Pulse {
    /// Checks a pulse from outside (the API, `fleet pulse`, the watchTower listener).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_service(&self.service)?;
        if is_node_service(&self.service) {
            return Err(InvalidInput::new(
                "service",
                format!(
                    "names starting with {NODE_PREFIX:?} belong to the agents' own heartbeats, which their batches pulse; choose another name"
                ),
            ));
        }
        if let Some(node) = &self.node {
            crate::model::NodeName::parse(node)
                .map_err(|e| InvalidInput::new("node", e.problem))?;
        }
        if self.next_in_ms <= 0 || self.next_in_ms > limits::NEXT_IN_MAX_MS {
            return Err(InvalidInput::new(
                "next_in",
                "must be more than 0 and at most 366 days",
            ));
        }
        if self.grace_ms < 0 || self.grace_ms > limits::NEXT_IN_MAX_MS {
            return Err(InvalidInput::new("grace", "must be between 0 and 366 days"));
        }
        if let Some(alert) = &self.alert {
            for (field, value) in [
                ("alert.channel", &alert.channel),
                ("alert.target", &alert.target),
            ] {
                if value.trim().is_empty() {
                    return Err(InvalidInput::new(field, "is empty"));
                }
                if value.len() > limits::ALERT_FIELD_MAX || value.chars().any(char::is_control) {
                    return Err(InvalidInput::new(
                        field,
                        format!(
                            "must be at most {} bytes without control characters",
                            limits::ALERT_FIELD_MAX
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// When it is due (`next_in` after `at_ms`) and when it is down (`grace` after that).
    pub fn due_and_deadline(&self, at_ms: i64) -> (i64, i64) {
        let due = at_ms + self.next_in_ms;
        (due, due + self.grace_ms)
    }
}

/// A service name: 1–200 bytes, no control characters.
pub fn check_service(service: &str) -> Result<(), InvalidInput> {
    if service.trim().is_empty() {
        return Err(InvalidInput::new("service", "is empty"));
    }
    if service.len() > limits::SERVICE_MAX || service.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            "service",
            format!(
                "must be at most {} bytes without control characters",
                limits::SERVICE_MAX
            ),
        ));
    }
    // A name that looks like another one in every list (`svc1 ` beside `svc1`) misleads the
    // person reading the list.
    if service.trim() != service || service.chars().any(invisible) {
        return Err(InvalidInput::new(
            "service",
            "must not start or end with spaces nor hold invisible characters",
        ));
    }
    Ok(())
}

/// Characters that print as nothing (zero-width spaces and joiners, direction marks, the
/// byte-order mark, the soft hyphen).
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Where a watched service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatState {
    /// It pulsed once; nothing has been expected of it yet.
    New,
    /// It pulsed in time.
    Up,
    /// `next_in` has passed without a pulse, the grace has not.
    Late,
    /// Its deadline passed without a pulse: reported.
    Down,
    /// Withdrawn by an operator: never reported, until it pulses again.
    Cancelled,
}

impl HeartbeatState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Up => "up",
            Self::Late => "late",
            Self::Down => "down",
            Self::Cancelled => "cancelled",
        }
    }

    /// The stored state (new, up, down, cancelled), read as of `now_ms`: an up or new service
    /// past its due time is late.
    pub fn read(stored: &str, due_ms: i64, now_ms: i64) -> Self {
        match stored {
            "down" => Self::Down,
            "cancelled" => Self::Cancelled,
            _ if now_ms > due_ms => Self::Late,
            "new" => Self::New,
            _ => Self::Up,
        }
    }
}

impl fmt::Display for HeartbeatState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A heartbeat as the store has it, read at some moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub service: String,
    pub node: Option<String>,
    pub state: HeartbeatState,
    pub next_in_ms: i64,
    pub grace_ms: i64,
    pub alert: Option<AlertRoute>,
    pub last_pulse: String,
    pub last_pulse_ms: i64,
    /// When it is reported down without another pulse.
    pub deadline: String,
    pub deadline_ms: i64,
    pub state_since: String,
    pub state_since_ms: i64,
    /// Milliseconds in its current state.
    pub for_ms: i64,
    pub pulses: i64,
    /// Who it belongs to ([`Owner::stored`]).
    pub owner: String,
    /// The run in progress: when it signalled `start` (cleared by its success or failure).
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// When that run is down unless it finishes first (`start` with `max_runtime`).
    #[serde(default)]
    pub run_deadline: Option<String>,
    #[serde(default)]
    pub run_deadline_ms: Option<i64>,
}

/// What a pulse says about the job behind it (Healthchecks' signals). A success is the plain
/// pulse; `start` and `fail` bracket a run (`fleet run` sends them around its command).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Signal {
    /// It ran (or is alive): up, expected again within `next_in`.
    #[default]
    Success,
    /// A run began. With `max_runtime_ms`, a run that neither succeeds nor fails by then is
    /// down (a hung job); the state is not changed otherwise.
    Start { max_runtime_ms: Option<i64> },
    /// A run failed: down at once, with what the failure said.
    Fail(Failure),
}

impl Signal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Signal::Success => "success",
            Signal::Start { .. } => "start",
            Signal::Fail(_) => "fail",
        }
    }
}

/// What a failed run reports: its exit status and the end of its output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Failure {
    pub exit_status: Option<i64>,
    /// At most [`limits::OUTPUT_TAIL_MAX`] bytes: the end of what it printed.
    pub output: Option<String>,
}

impl Failure {
    /// A failure as sent: the output's end is kept (its last
    /// [`limits::OUTPUT_TAIL_MAX`] bytes, on a character boundary) rather than refused, so a
    /// long-winded failure is still recorded.
    pub fn new(exit_status: Option<i64>, output: Option<String>) -> Self {
        Self {
            exit_status,
            // A NUL (binary output) is the one character a PostgreSQL text cannot hold.
            output: output
                .map(|o| tail(&o.replace('\0', "\u{FFFD}"), limits::OUTPUT_TAIL_MAX).to_owned()),
        }
    }

    /// The event's one line: `nightly failed with exit status 3`.
    pub fn message(&self, service: &str) -> String {
        match self.exit_status {
            Some(code) => format!("{service} failed with exit status {code}"),
            None => format!("{service} failed"),
        }
    }

    /// The event's fields beside `heartbeat`: what the failure said.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("signal".into(), "fail".into());
        if let Some(code) = self.exit_status {
            fields.insert("exit_status".into(), code.into());
        }
        if let Some(output) = &self.output {
            fields.insert("output".into(), output.clone().into());
        }
        fields
    }
}

/// The last `max` bytes of `text` at most, starting on a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    let mut from = text.len().saturating_sub(max);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// A time span given as seconds (a JSON number) or a duration string (`"10m"`), in ms.
pub fn span_ms(field: &str, value: &serde_json::Value) -> Result<i64, InvalidInput> {
    let ms = match value {
        serde_json::Value::Number(n) => {
            let seconds = n
                .as_f64()
                .ok_or_else(|| InvalidInput::new(field, "is not a number"))?;
            if !seconds.is_finite() || seconds > (limits::NEXT_IN_MAX_MS / 1000) as f64 * 2.0 {
                return Err(InvalidInput::new(field, "is too large"));
            }
            (seconds * 1000.0).round() as i64
        }
        serde_json::Value::String(text) => {
            // A number in a string (form-encoded bodies have nothing else) is seconds.
            if let Ok(seconds) = text.trim().parse::<f64>() {
                return span_ms(field, &serde_json::json!(seconds));
            }
            let span =
                crate::timefmt::parse_duration(text).map_err(|e| InvalidInput::new(field, e))?;
            i64::try_from(span.as_millis()).map_err(|_| InvalidInput::new(field, "is too large"))?
        }
        _ => {
            return Err(InvalidInput::new(
                field,
                "must be seconds (a number) or a duration like \"10m\"",
            ));
        }
    };
    Ok(ms)
}

/// Event levels: a higher number is more severe (watchTower's order, the reverse of syslog's).
pub const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// A level given as a number (0–7) or a name (`warning`, also `warn`, `err`, `crit`, `emerg`).
pub fn parse_level(value: &serde_json::Value) -> Result<i64, InvalidInput> {
    let out_of_range = || {
        InvalidInput::new(
            "level",
            format!("must be 0–7 or one of {}", LEVELS.join(", ")),
        )
    };
    match value {
        serde_json::Value::Number(n) => n
            .as_i64()
            .filter(|l| (0..=7).contains(l))
            .ok_or_else(out_of_range),
        serde_json::Value::String(text) => level_of_name(text).ok_or_else(out_of_range),
        _ => Err(out_of_range()),
    }
}

/// A "level at least" filter as a query string gives it.
pub fn level_filter(text: &str) -> Result<i64, InvalidInput> {
    level_of_name(text).ok_or_else(|| {
        InvalidInput::new(
            "level",
            format!("{text:?} is not 0–7 or one of {}", LEVELS.join(", ")),
        )
    })
}

/// A search text (`q`): bounded, no NUL.
pub fn check_search(text: &str) -> Result<(), InvalidInput> {
    if text.len() > limits::SEARCH_MAX {
        return Err(InvalidInput::new(
            "q",
            format!("at most {} bytes", limits::SEARCH_MAX),
        ));
    }
    crate::model::check_no_nul("q", text)
}

/// A level from its name or its number as text.
pub fn level_of_name(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(n) = text.parse::<i64>() {
        return (0..=7).contains(&n).then_some(n);
    }
    let canonical = match text.as_str() {
        "warn" => "warning",
        "err" => "error",
        "crit" => "critical",
        "emerg" => "emergency",
        other => other,
    };
    LEVELS
        .iter()
        .position(|l| *l == canonical)
        .map(|p| p as i64)
}

/// An event's message: present, within bounds, no NUL (other control characters, newlines and
/// tabs among them, are a message's own).
pub fn check_message(message: &str) -> Result<(), InvalidInput> {
    if message.trim().is_empty() {
        return Err(InvalidInput::new("message", "is empty"));
    }
    crate::model::check_no_nul("message", message)?;
    if message.len() > limits::MESSAGE_MAX {
        return Err(InvalidInput::new(
            "message",
            format!(
                "is {} bytes; the limit is {}",
                message.len(),
                limits::MESSAGE_MAX
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, point 12: PostgreSQL cannot hold a NUL and SQLite can; both refuse it here.
    #[test]
    fn names_that_look_like_others_are_refused() {
        for bad in ["svc ", " svc", "svc\u{200B}", "\u{FEFF}svc", "a\u{202E}b"] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
        for good in ["svc", "backup db", "nightly-dump.v2", "dépôt"] {
            check_service(good).unwrap();
        }
        for reserved in ["node:web1", "Node:web1", "NODE:web1"] {
            let pulse = Pulse {
                service: reserved.into(),
                node: None,
                next_in_ms: 60_000,
                grace_ms: 0,
                alert: None,
            };
            assert!(pulse.validate().is_err(), "{reserved}");
        }
    }

    #[test]
    fn a_nul_is_refused_in_messages_and_searches_naming_the_field() {
        let err = check_message("disk \0full").unwrap_err();
        assert_eq!(err.field, "message");
        assert!(err.problem.contains("NUL"), "{err}");
        assert!(check_message("line one\nline\ttwo").is_ok());
        assert_eq!(check_search("a\0").unwrap_err().field, "q");
        assert_eq!(check_service("a\0b").unwrap_err().field, "service");
    }

    #[test]
    fn spans_are_seconds_or_durations() {
        assert_eq!(span_ms("next_in", &serde_json::json!(10)), Ok(10_000));
        assert_eq!(span_ms("next_in", &serde_json::json!(1.5)), Ok(1_500));
        assert_eq!(span_ms("next_in", &serde_json::json!("10m")), Ok(600_000));
        assert_eq!(span_ms("next_in", &serde_json::json!("30")), Ok(30_000));
        assert!(span_ms("next_in", &serde_json::json!("soon")).is_err());
        assert!(span_ms("next_in", &serde_json::json!(true)).is_err());
        assert!(span_ms("next_in", &serde_json::json!(1e300)).is_err());
    }

    #[test]
    fn levels_by_number_or_name() {
        assert_eq!(parse_level(&serde_json::json!(4)), Ok(4));
        assert_eq!(parse_level(&serde_json::json!("warning")), Ok(3));
        assert_eq!(parse_level(&serde_json::json!("WARN")), Ok(3));
        assert_eq!(parse_level(&serde_json::json!("emergency")), Ok(7));
        assert!(parse_level(&serde_json::json!(8)).is_err());
        assert!(parse_level(&serde_json::json!(-1)).is_err());
        assert!(parse_level(&serde_json::json!("loud")).is_err());
    }

    #[test]
    fn bad_pulses_are_refused_with_the_field() {
        let ok = Pulse {
            service: "backup".into(),
            node: None,
            next_in_ms: 1000,
            grace_ms: 0,
            alert: None,
        };
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (
                Pulse {
                    service: " ".into(),
                    ..ok.clone()
                },
                "service",
            ),
            (
                Pulse {
                    service: "x".repeat(201),
                    ..ok.clone()
                },
                "service",
            ),
            (
                Pulse {
                    service: "a\nb".into(),
                    ..ok.clone()
                },
                "service",
            ),
            (
                Pulse {
                    service: "node:web1".into(),
                    ..ok.clone()
                },
                "service",
            ),
            (
                Pulse {
                    next_in_ms: 0,
                    ..ok.clone()
                },
                "next_in",
            ),
            (
                Pulse {
                    next_in_ms: -5,
                    ..ok.clone()
                },
                "next_in",
            ),
            (
                Pulse {
                    next_in_ms: limits::NEXT_IN_MAX_MS + 1,
                    ..ok.clone()
                },
                "next_in",
            ),
            (
                Pulse {
                    grace_ms: -1,
                    ..ok.clone()
                },
                "grace",
            ),
            (
                Pulse {
                    node: Some("bad name!".into()),
                    ..ok.clone()
                },
                "node",
            ),
            (
                Pulse {
                    alert: Some(AlertRoute {
                        channel: "".into(),
                        target: "x".into(),
                    }),
                    ..ok.clone()
                },
                "alert.channel",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field, "{bad:?}");
        }
    }

    #[test]
    fn a_failure_keeps_the_end_of_its_output() {
        let long = format!("{}é{}", "a".repeat(5000), "z".repeat(4095));
        let failure = Failure::new(Some(3), Some(long));
        let output = failure.output.as_deref().unwrap();
        assert!(output.len() <= limits::OUTPUT_TAIL_MAX, "{}", output.len());
        assert!(
            output.ends_with('z') && !output.contains('a'),
            "the end is kept"
        );
        assert_eq!(tail("héllo", 4), "llo", "never inside a character");
        assert_eq!(
            failure.message("nightly"),
            "nightly failed with exit status 3"
        );
        assert_eq!(failure.fields()["exit_status"], 3);
    }

    #[test]
    fn late_is_read_from_the_clock() {
        assert_eq!(HeartbeatState::read("up", 100, 50), HeartbeatState::Up);
        assert_eq!(HeartbeatState::read("up", 100, 150), HeartbeatState::Late);
        assert_eq!(HeartbeatState::read("new", 100, 150), HeartbeatState::Late);
        assert_eq!(HeartbeatState::read("down", 100, 150), HeartbeatState::Down);
        assert_eq!(
            HeartbeatState::read("cancelled", 100, 150),
            HeartbeatState::Cancelled
        );
    }
}
