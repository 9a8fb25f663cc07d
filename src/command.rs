//! The command model: what an operator asks a node to do, how it is signed, and what became of
//! it. Commands and events are one type (steward's four kinds share one envelope).
//!
//! A [`Command`] carries an ed25519 signature by an operator key over its canonical bytes
//! ([`Command::signed_bytes`]); nodes hold only public keys, so neither the broker nor the
//! controller can forge one. This module is plain data, validation and signing: it must never do
//! I/O or know about HTTP, SQL or NATS.

use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::model::{InvalidInput, NodeName};

/// Bounds on what a command and its result may carry.
pub mod limits {
    /// Most arguments in one command.
    pub const ARGS_MAX: usize = 256;
    /// Most bytes over all arguments.
    pub const ARGS_BYTES_MAX: usize = 64 * 1024;
    /// Longest timeout a command may ask for.
    pub const TIMEOUT_MAX_MS: u64 = 24 * 3600 * 1000;
    /// Longest a command may wait for its node.
    pub const TTL_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
    /// Most redeliveries.
    pub const RETRIES_MAX: u32 = 100;
    /// Most output kept per stream (stdout, stderr) by default; beyond it the result is marked
    /// truncated.
    pub const OUTPUT_DEFAULT_BYTES: usize = 64 * 1024;
    /// Most output any node config may keep per stream.
    pub const OUTPUT_MAX_BYTES: usize = 1024 * 1024;
    /// Most commands in one submission.
    pub const SUBMISSION_MAX: usize = 10_000;
}

/// The domain separator at the start of the signed bytes.
pub const SIGNATURE_SCHEME: &str = "fleet-command-v1";

/// The node name that addresses the controller itself (steward's `central`): event methods sent
/// there are handled by the controller, not by an agent.
pub const CENTRAL: &str = "central";

/// steward's four kinds: ACK kinds wait for a result, NACK kinds are delivered without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "CommandACK")]
    CommandAck,
    #[serde(rename = "CommandNACK")]
    CommandNack,
    #[serde(rename = "EventACK")]
    EventAck,
    #[serde(rename = "EventNACK")]
    EventNack,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::CommandAck,
        Kind::CommandNack,
        Kind::EventAck,
        Kind::EventNack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CommandAck => "CommandACK",
            Kind::CommandNack => "CommandNACK",
            Kind::EventAck => "EventACK",
            Kind::EventNack => "EventNACK",
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                InvalidInput::new(
                    "commandOrEvent",
                    format!(
                        "unknown kind {text:?}; use CommandACK, CommandNACK, EventACK or EventNACK"
                    ),
                )
            })
    }

    /// Whether the sender waits for a result.
    pub fn wants_result(self) -> bool {
        matches!(self, Kind::CommandAck | Kind::EventAck)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// Run an argv (no shell unless the argv names one).
    #[serde(rename = "CLICommand")]
    CliCommand,
    /// Append text to the node's event log.
    TextLogging,
    /// Presence: the node answers with its name and version.
    SayHello,
    /// An entry for the central error log.
    ErrorLog,
    /// Answer with the arguments: a round trip, for tests and benchmarks.
    Echo,
    /// Stop another command on this node (its id is the one argument): kill it if it runs,
    /// keep it from starting if it has not. Runs at once, beside everything else.
    Cancel,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::CliCommand,
        Method::TextLogging,
        Method::SayHello,
        Method::ErrorLog,
        Method::Echo,
        Method::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::CliCommand => "CLICommand",
            Method::TextLogging => "TextLogging",
            Method::SayHello => "SayHello",
            Method::ErrorLog => "ErrorLog",
            Method::Echo => "Echo",
            Method::Cancel => "Cancel",
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                InvalidInput::new(
                    "method",
                    format!(
                        "unknown method {text:?}; use CLICommand, TextLogging, SayHello, ErrorLog or Echo"
                    ),
                )
            })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signed command, exactly as it travels to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// A ULID made by the sender: sortable, unique, the key of exactly-once execution.
    pub id: String,
    pub node: String,
    pub kind: Kind,
    pub method: Method,
    pub args: Vec<String>,
    /// How long one run may take; the node kills it after this.
    pub timeout_ms: u64,
    /// Unix milliseconds after which the command must not start (sent + TTL).
    pub not_after_ms: i64,
    /// Whether it may run beside other commands instead of in order.
    #[serde(default)]
    pub parallel: bool,
    /// The operator's public key, `ed25519:<64 hex>`.
    pub key: String,
    /// Hex ed25519 signature over [`Command::signed_bytes`].
    pub signature: String,
}

impl Command {
    /// The exact bytes the operator signs: every field that decides what runs, where and until
    /// when, each on its own line, the arguments last as a JSON array (so no argument can
    /// masquerade as another field).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let args = serde_json::to_string(&self.args).expect("strings serialise");
        format!(
            "{SIGNATURE_SCHEME}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{args}",
            self.id,
            self.node,
            self.kind,
            self.method,
            self.timeout_ms,
            self.not_after_ms,
            u8::from(self.parallel)
        )
        .into_bytes()
    }

    /// Checks the shape: id, node name, counts and sizes. Says nothing about the signature.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if ulid::Ulid::from_string(&self.id).is_err() {
            return Err(InvalidInput::new(
                "id",
                format!(
                    "{:?} is not a ULID (26 Crockford base-32 characters)",
                    self.id
                ),
            ));
        }
        NodeName::parse(&self.node).map_err(|e| InvalidInput::new("node", e.problem))?;
        if self.args.len() > limits::ARGS_MAX {
            return Err(InvalidInput::new(
                "args",
                format!(
                    "has {} arguments; the limit is {}",
                    self.args.len(),
                    limits::ARGS_MAX
                ),
            ));
        }
        let bytes: usize = self.args.iter().map(String::len).sum();
        if bytes > limits::ARGS_BYTES_MAX {
            return Err(InvalidInput::new(
                "args",
                format!("{bytes} bytes; the limit is {}", limits::ARGS_BYTES_MAX),
            ));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(InvalidInput::new("args", "an argument contains a NUL byte"));
        }
        if self.method == Method::CliCommand && self.args.first().is_none_or(|a| a.is_empty()) {
            return Err(InvalidInput::new(
                "args",
                "CLICommand needs a program as its first argument",
            ));
        }
        if self.method == Method::Cancel {
            if self.args.len() != 1 || ulid::Ulid::from_string(&self.args[0]).is_err() {
                return Err(InvalidInput::new(
                    "args",
                    "Cancel takes one argument: the id of the command to cancel",
                ));
            }
            if self.args[0] == self.id {
                return Err(InvalidInput::new("args", "a Cancel cannot cancel itself"));
            }
            if !self.parallel {
                // In order it would wait behind the very command it is meant to stop.
                return Err(InvalidInput::new(
                    "parallel",
                    "a Cancel must be sent parallel",
                ));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > limits::TIMEOUT_MAX_MS {
            return Err(InvalidInput::new(
                "timeout",
                format!(
                    "must be between 1 ms and {} h",
                    limits::TIMEOUT_MAX_MS / 3_600_000
                ),
            ));
        }
        if self.key.len() > 128 || self.signature.len() > 256 {
            return Err(InvalidInput::new("signature", "key or signature too long"));
        }
        Ok(())
    }

    /// Verifies the signature against the key the command names. The caller decides whether it
    /// trusts that key.
    pub fn verify_signature(&self) -> Result<(), String> {
        let public = parse_public_key(&self.key)?;
        let signature =
            hex::decode(&self.signature).map_err(|_| "the signature is not hex".to_owned())?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&self.signed_bytes(), &signature)
            .map_err(|_| "the signature does not match the command".to_owned())
    }

    /// The creation time encoded in the ULID, in Unix milliseconds.
    pub fn created_ms(&self) -> i64 {
        ulid::Ulid::from_string(&self.id)
            .map(|u| u.timestamp_ms() as i64)
            .unwrap_or(0)
    }
}

/// An operator's signing key (ed25519).
pub struct OperatorKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl OperatorKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_seed(&rand::random::<[u8; 32]>())
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            seed: *seed,
            pair: Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed"),
        }
    }

    /// Reads a key file: `ed25519-secret:<64 hex>` on one line (what `fleet operator keygen`
    /// writes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_seed = text
            .trim()
            .strip_prefix("ed25519-secret:")
            .ok_or("an operator key file holds one line `ed25519-secret:<64 hex digits>`")?;
        let seed: [u8; 32] = hex::decode(hex_seed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the operator key is not 64 hex digits")?;
        Ok(Self::from_seed(&seed))
    }

    /// The key file's text (keep it secret).
    pub fn secret_text(&self) -> String {
        format!("ed25519-secret:{}\n", hex::encode(self.seed))
    }

    /// The public key as nodes list it: `ed25519:<64 hex>`.
    pub fn public(&self) -> String {
        format!("ed25519:{}", hex::encode(self.pair.public_key().as_ref()))
    }

    /// Fills in `key` and `signature`.
    pub fn sign(&self, command: &mut Command) {
        command.key = self.public();
        command.signature = hex::encode(self.pair.sign(&command.signed_bytes()).as_ref());
    }
}

/// Parses `ed25519:<64 hex>` into the 32 raw bytes.
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, String> {
    let hex_key = text
        .strip_prefix("ed25519:")
        .ok_or_else(|| format!("{text:?} is not an ed25519 public key (`ed25519:<64 hex>`)"))?;
    match hex::decode(hex_key) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(format!(
            "{text:?} is not an ed25519 public key (`ed25519:<64 hex>`)"
        )),
    }
}

/// Where a command is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Queued,
    Delivered,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Expired,
    Cancelled,
}

impl CommandState {
    pub const ALL: [CommandState; 8] = [
        CommandState::Queued,
        CommandState::Delivered,
        CommandState::Running,
        CommandState::Succeeded,
        CommandState::Failed,
        CommandState::TimedOut,
        CommandState::Expired,
        CommandState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Delivered => "delivered",
            CommandState::Running => "running",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
            CommandState::Expired => "expired",
            CommandState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        CommandState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                InvalidInput::new(
                    "state",
                    format!("unknown state {text:?}; use one of queued, delivered, running, succeeded, failed, timed_out, expired, cancelled"),
                )
            })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            CommandState::Queued | CommandState::Delivered | CommandState::Running
        )
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node reports about a command: `running` while it runs, then the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandReport {
    pub id: String,
    /// `running`, `succeeded`, `failed` or `timed_out`.
    pub state: CommandState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
}

/// The outcome of one command on one node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Whether stdout or stderr was cut at the node's output limit.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub duration_ms: u64,
    /// Why it failed without an exit code: refused by policy, could not start, interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Bounds on a report the controller accepts from a node.
pub const REPORT_OUTPUT_MAX: usize = limits::OUTPUT_MAX_BYTES + 1024;

/// Longest error text a result carries.
pub const ERROR_MAX: usize = 1024;

/// Cuts `text` to at most `max` bytes on a character boundary; says whether it cut.
pub fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    text.truncate(text.floor_char_boundary(max));
    true
}

impl CommandReport {
    /// Bounds what the report carries: each output stream to `max_output` bytes (marking the
    /// result truncated) and the error to [`ERROR_MAX`], so it always passes [`Self::validate`].
    pub fn bounded(mut self, max_output: usize) -> Self {
        let max_output = max_output.min(limits::OUTPUT_MAX_BYTES);
        if let Some(r) = self.result.as_mut() {
            let cut_out = cut(&mut r.stdout, max_output);
            let cut_err = cut(&mut r.stderr, max_output);
            r.truncated |= cut_out || cut_err;
            if let Some(e) = r.error.as_mut() {
                cut(e, ERROR_MAX);
            }
        }
        self
    }

    /// The same report, its output cut until its JSON fits in `max_bytes` (a NATS message).
    pub fn fitted(mut self, max_bytes: usize) -> Self {
        loop {
            let size = serde_json::to_vec(&self)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            let Some(r) = self.result.as_mut() else {
                return self;
            };
            if size <= max_bytes || (r.stdout.is_empty() && r.stderr.is_empty()) {
                return self;
            }
            let half_out = r.stdout.len() / 2;
            let half_err = r.stderr.len() / 2;
            cut(&mut r.stdout, half_out);
            cut(&mut r.stderr, half_err);
            r.truncated = true;
        }
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        if ulid::Ulid::from_string(&self.id).is_err() {
            return Err(InvalidInput::new("id", "is not a ULID"));
        }
        if matches!(self.state, CommandState::Queued | CommandState::Expired) {
            return Err(InvalidInput::new(
                "state",
                format!("a node cannot report {}", self.state),
            ));
        }
        if let Some(result) = &self.result
            && (result.stdout.len() > REPORT_OUTPUT_MAX
                || result.stderr.len() > REPORT_OUTPUT_MAX
                || result
                    .error
                    .as_ref()
                    .is_some_and(|e| e.len() > ERROR_MAX * 4))
        {
            return Err(InvalidInput::new("result", "output over the limit"));
        }
        Ok(())
    }
}

/// The first hex digits of a public key, to name a signer briefly.
pub fn short_key(key: &str) -> String {
    let hex = key.strip_prefix("ed25519:").unwrap_or(key);
    format!("ed25519:{}", hex.chars().take(16).collect::<String>())
}

/// A new command id, greater than every id this process made before it.
///
/// Commands to one node run in id order, so ids made within one millisecond (a `fleet send
/// --file` with several messages, the dashboard's form, any fast sender) must keep the order
/// they were made in: `Ulid::new()` draws a fresh random part each time and does not. The
/// generator increments the random part within a millisecond (and when the clock steps back).
pub fn new_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match generator.generate() {
            Ok(id) => return id.to_string(),
            // 2^80 ids in one millisecond: wait for the next one.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
}

/// Builds and signs one command.
#[allow(clippy::too_many_arguments)]
pub fn build(
    key: &OperatorKey,
    node: &str,
    kind: Kind,
    method: Method,
    args: Vec<String>,
    timeout: std::time::Duration,
    ttl: std::time::Duration,
    parallel: bool,
) -> Command {
    let mut c = Command {
        id: new_id(),
        node: node.to_owned(),
        kind,
        method,
        args,
        timeout_ms: timeout.as_millis() as u64,
        not_after_ms: crate::timefmt::now_ms() + ttl.as_millis() as i64,
        parallel,
        key: String::new(),
        signature: String::new(),
    };
    key.sign(&mut c);
    c
}

/// A command as the controller keeps it and what became of it (the API's view of a command).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CommandRecord {
    pub id: String,
    pub node: String,
    pub kind: Kind,
    pub method: Method,
    pub args: Vec<String>,
    pub parallel: bool,
    pub state: CommandState,
    pub attempts: i64,
    pub retries: i64,
    pub timeout_ms: i64,
    pub not_after: String,
    pub sent_by: String,
    pub via: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub result: Option<CommandResult>,
}

impl CommandRecord {
    /// Settled: nothing more will happen unless the node answers late. NACK kinds are settled
    /// once the node has them.
    pub fn settled(&self) -> bool {
        self.state.is_terminal()
            || (!self.kind.wants_result() && self.state != CommandState::Queued)
    }
}

/// A command as submitted (`POST /api/v1/commands`, `fleet send`): the signed envelope and
/// how often to redeliver it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub command: Command,
    /// Redeliveries when no answer comes within the timeout.
    #[serde(default)]
    pub retries: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_one_millisecond_keep_their_order() {
        // Thousands of ids fall in each millisecond here; with a fresh random part per id,
        // about half of the neighbours would be out of order.
        let ids: Vec<String> = (0..20_000).map(|_| new_id()).collect();
        let same_ms = ids.windows(2).filter(|w| w[0][..10] == w[1][..10]).count();
        assert!(same_ms > 0, "the test needs ids that share a millisecond");
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} then {}", w[0], w[1]);
        }
        // From several threads at once, too.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| new_id()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no id twice");
    }

    fn command() -> Command {
        Command {
            id: new_id(),
            node: "web1".into(),
            kind: Kind::CommandAck,
            method: Method::CliCommand,
            args: vec!["uname".into(), "-a".into()],
            timeout_ms: 30_000,
            not_after_ms: 1_900_000_000_000,
            parallel: false,
            key: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_command_verifies_and_any_change_breaks_it() {
        let key = OperatorKey::generate();
        let mut cmd = command();
        key.sign(&mut cmd);
        cmd.validate().unwrap();
        cmd.verify_signature().unwrap();
        let tamper: [fn(&mut Command); 7] = [
            |c| c.node = "web2".into(),
            |c| c.args[1] = "-r".into(),
            |c| c.method = Method::Echo,
            |c| c.kind = Kind::CommandNack,
            |c| c.timeout_ms += 1,
            |c| c.not_after_ms += 1,
            |c| c.parallel = true,
        ];
        for change in tamper {
            let mut bad = cmd.clone();
            change(&mut bad);
            assert!(bad.verify_signature().is_err(), "{bad:?}");
        }
        // Another operator's key over the same bytes is a different signature.
        let mut other = cmd.clone();
        other.key = OperatorKey::generate().public();
        assert!(other.verify_signature().is_err());
    }

    #[test]
    fn args_cannot_spill_into_other_fields() {
        let key = OperatorKey::generate();
        let mut a = command();
        a.args = vec!["a\nb".into()];
        key.sign(&mut a);
        let mut b = a.clone();
        b.args = vec!["a".into(), "b".into()];
        assert_ne!(a.signed_bytes(), b.signed_bytes());
        assert!(b.verify_signature().is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let seed = rand::random::<[u8; 32]>();
        let key = OperatorKey::from_seed(&seed);
        let text = key.secret_text();
        assert_eq!(OperatorKey::parse(&text).unwrap().public(), key.public());
        assert!(OperatorKey::parse("nonsense").is_err());
        assert!(parse_public_key(&key.public()).is_ok());
        assert!(parse_public_key("ed25519:abcd").is_err());
    }

    #[test]
    fn reports_are_bounded_to_pass_validation_and_fit_a_message() {
        let huge = CommandReport {
            id: new_id(),
            state: CommandState::Failed,
            result: Some(CommandResult {
                stdout: "é".repeat(600_000),
                stderr: "x".repeat(10),
                error: Some("refused: ".to_owned() + &"a".repeat(100_000)),
                ..Default::default()
            }),
        };
        assert!(huge.validate().is_err());
        let bounded = huge.clone().bounded(limits::OUTPUT_MAX_BYTES);
        bounded.validate().unwrap();
        let r = bounded.result.as_ref().unwrap();
        assert!(r.truncated && r.stdout.len() <= limits::OUTPUT_MAX_BYTES);
        assert_eq!(r.error.as_ref().unwrap().len(), ERROR_MAX);
        let fitted = bounded.fitted(100_000);
        assert!(serde_json::to_vec(&fitted).unwrap().len() <= 100_000);
        assert!(fitted.result.unwrap().truncated);
    }

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()).unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()).unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        for s in CommandState::ALL {
            assert_eq!(CommandState::parse(s.as_str()).unwrap(), s);
        }
        assert!(Method::parse("Reboot").is_err());
    }
}
