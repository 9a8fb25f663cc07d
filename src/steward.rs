//! steward's message files, as `fleet send --file` and `fleet send --watch` read them: a JSON
//! array of messages, or several arrays appended one after the other (`cat msg.json >>
//! inmsg.txt`), in the field and method names of steward's first versions (`data`,
//! `commandOrEvent`, `CLICommand`) or its later ones (`methodArgs`, `methodTimeout`,
//! `ACKTimeout`, `REQCliCommand`, …), mapped onto fleet's commands.
//!
//! A value: it parses text and names methods; it never reads files or sends anything.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::command::{Kind, Method};

/// One message of a steward message file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub to_node: Option<String>,
    #[serde(default)]
    pub to_nodes: Vec<String>,
    /// The method's arguments (`methodArgs` in later versions).
    #[serde(default, alias = "methodArgs")]
    pub data: Vec<String>,
    /// CommandACK, CommandNACK, EventACK or EventNACK; later versions have none (CommandACK).
    pub command_or_event: Option<String>,
    pub method: String,
    /// Seconds: first versions' only timeout.
    pub timeout: Option<u64>,
    /// Seconds a method may run (later versions).
    pub method_timeout: Option<u64>,
    /// Seconds to wait for the node's acknowledgement (later versions): fleet redelivers after
    /// the command's timeout, so it stands in for one when no other is given.
    #[serde(rename = "ACKTimeout")]
    pub ack_timeout: Option<u64>,
    pub retries: Option<u32>,
    /// Fields fleet does not use (`replyMethod`, `directory`, `fileName`, …): named in a note.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What a message asks of fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub nodes: Vec<String>,
    pub kind: Kind,
    pub method: Method,
    pub args: Vec<String>,
    /// Runs beside other commands on the node instead of in order (`REQnCliCommand`).
    pub parallel: bool,
    pub timeout: Duration,
    pub retries: u32,
}

/// How long a command may run when the message says nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Message {
    /// The fleet request this message makes, or why it cannot be one.
    pub fn request(&self) -> Result<Request, String> {
        let kind = match &self.command_or_event {
            Some(kind) => Kind::parse(kind).map_err(|e| e.problem)?,
            None => Kind::CommandAck,
        };
        let (method, parallel) = method_of(&self.method)?;
        let nodes: Vec<String> = self.to_node.iter().chain(&self.to_nodes).cloned().collect();
        if nodes.is_empty() {
            return Err("no toNode (or toNodes)".into());
        }
        let seconds = self
            .method_timeout
            .or(self.timeout)
            .or(self.ack_timeout)
            .map(|s| Duration::from_secs(s.max(1)));
        Ok(Request {
            nodes,
            kind,
            method,
            args: self.data.clone(),
            parallel,
            timeout: seconds.unwrap_or(DEFAULT_TIMEOUT),
            retries: self.retries.unwrap_or(3),
        })
    }
}

/// fleet's method for a steward method name of either version, and whether it runs beside
/// others; a method fleet has no equivalent for is refused by name.
pub fn method_of(name: &str) -> Result<(Method, bool), String> {
    let aliased = match name {
        "REQCliCommand" | "cliCommand" => Some((Method::CliCommand, false)),
        "REQnCliCommand" => Some((Method::CliCommand, true)),
        "ECHORequest" | "REQEcho" => Some((Method::Echo, false)),
        "REQToFileAppend" => Some((Method::TextLogging, false)),
        "REQHello" => Some((Method::SayHello, false)),
        "REQErrorLog" => Some((Method::ErrorLog, false)),
        _ => None,
    };
    if let Some(found) = aliased {
        return Ok(found);
    }
    Method::parse(name).map(|m| (m, false)).map_err(|_| {
        format!(
            "fleet has no equivalent of the steward method {name:?}; it runs CLICommand \
             (REQCliCommand, REQnCliCommand), TextLogging (REQToFileAppend), SayHello (REQHello), \
             ErrorLog (REQErrorLog) and Echo (ECHORequest)"
        )
    })
}

/// What [`parse_appended`] found in a file's bytes.
#[derive(Debug)]
pub struct Appended {
    /// The messages of every complete array, in order.
    pub messages: Vec<Message>,
    /// How the text ends after them.
    pub tail: Tail,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing but whitespace: every array was whole.
    Complete,
    /// An array still being written (the text ends inside it): wait for the rest.
    Partial,
    /// Something that is not a message array, at this byte offset.
    Invalid { offset: usize, problem: String },
}

/// Reads one or more JSON arrays of messages appended one after the other.
pub fn parse_appended(bytes: &[u8]) -> Appended {
    let mut messages = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Vec<Message>>();
    loop {
        let start = stream.byte_offset();
        match stream.next() {
            None => {
                return Appended {
                    messages,
                    tail: Tail::Complete,
                };
            }
            Some(Ok(array)) => messages.extend(array),
            Some(Err(err)) if err.is_eof() => {
                return Appended {
                    messages,
                    tail: Tail::Partial,
                };
            }
            Some(Err(err)) => {
                return Appended {
                    messages,
                    tail: Tail::Invalid {
                        offset: start,
                        problem: err.to_string(),
                    },
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_map_onto_fleet_requests() {
        let old = r#"[{"toNode": "ship1", "data": ["uname", "-a"], "commandOrEvent": "CommandACK",
            "method": "CLICommand", "timeout": 5, "retries": 1}]"#;
        let new = r#"[{"toNodes": ["ship1"], "methodArgs": ["uname", "-a"], "method": "REQCliCommand",
            "ACKTimeout": 10, "methodTimeout": 5, "retries": 1, "replyMethod": "REQToFileAppend",
            "directory": "x", "fileName": "y"}]"#;
        let a = parse_appended(old.as_bytes());
        let b = parse_appended(new.as_bytes());
        assert_eq!((a.tail, b.tail), (Tail::Complete, Tail::Complete));
        let (a, b) = (
            a.messages[0].request().unwrap(),
            b.messages[0].request().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.method, Method::CliCommand);
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.args, ["uname", "-a"]);
    }

    #[test]
    fn later_method_names_are_aliases_and_the_rest_are_refused_by_name() {
        assert_eq!(
            method_of("REQnCliCommand").unwrap(),
            (Method::CliCommand, true)
        );
        assert_eq!(method_of("ECHORequest").unwrap(), (Method::Echo, false));
        assert_eq!(method_of("REQHello").unwrap(), (Method::SayHello, false));
        assert_eq!(method_of("REQErrorLog").unwrap(), (Method::ErrorLog, false));
        assert_eq!(
            method_of("REQToFileAppend").unwrap(),
            (Method::TextLogging, false)
        );
        let err = method_of("REQCopySrc").unwrap_err();
        assert!(
            err.contains("REQCopySrc") && err.contains("no equivalent"),
            "{err}"
        );
    }

    #[test]
    fn appended_arrays_are_read_and_a_half_written_one_waits() {
        let one = r#"[{"toNode": "a", "method": "Echo"}]"#;
        let two = format!("{one}\n{one}\n");
        let read = parse_appended(two.as_bytes());
        assert_eq!(read.messages.len(), 2);
        assert_eq!(read.tail, Tail::Complete);
        let half = format!("{one}\n[{{\"toNode\": \"b\", \"meth");
        let read = parse_appended(half.as_bytes());
        assert_eq!(read.messages.len(), 1);
        assert_eq!(read.tail, Tail::Partial);
        let bad = format!("{one}\nhello");
        let read = parse_appended(bad.as_bytes());
        assert_eq!(read.messages.len(), 1);
        assert!(
            matches!(read.tail, Tail::Invalid { offset, .. } if offset == one.len()),
            "{:?}",
            read.tail
        );
        assert_eq!(parse_appended(b"  \n").tail, Tail::Complete);
    }
}
