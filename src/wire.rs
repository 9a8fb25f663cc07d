//! The agent → controller batch format: headers, the exact bytes that are signed, compression,
//! and bounded decompression. docs/wire.md is the prose version of this file; keep them in step.
//!
//! This is the only place that knows how a batch is framed and signed. It does no I/O beyond
//! in-memory (de)compression and knows nothing about HTTP servers or stores.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::DeflateEncoder;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the node name.
pub const HEADER_NODE: &str = "x-fleet-node";
/// Header carrying the agent instance id (a random id made when the agent's data dir is new).
pub const HEADER_INSTANCE: &str = "x-fleet-instance";
/// Header carrying the per-instance sequence number (1, 2, 3, …).
pub const HEADER_SEQ: &str = "x-fleet-seq";
/// Header carrying the send time in milliseconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "x-fleet-timestamp";
/// Header carrying the lowercase hex HMAC-SHA256 signature.
pub const HEADER_SIGNATURE: &str = "x-fleet-signature";

/// The first line of the signed message: names the scheme so it can change without ambiguity.
pub const SIGNATURE_SCHEME: &str = "fleet-batch-v1";

/// Bodies at least this long are gzip-compressed by the agent.
pub const GZIP_THRESHOLD: usize = 1024;

/// Longest accepted instance id.
pub const INSTANCE_MAX: usize = 64;

/// The signed metadata of one batch, as carried in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeaders {
    pub node: String,
    pub instance: String,
    pub seq: u64,
    pub timestamp_ms: i64,
}

/// The exact bytes the HMAC covers:
/// `fleet-batch-v1\n<node>\n<instance>\n<seq>\n<timestamp_ms>\n<uncompressed body>`.
fn signed_message(mac: &mut Hmac<Sha256>, headers: &BatchHeaders, body: &[u8]) {
    let preamble = format!(
        "{SIGNATURE_SCHEME}\n{}\n{}\n{}\n{}\n",
        headers.node, headers.instance, headers.seq, headers.timestamp_ms
    );
    mac.update(preamble.as_bytes());
    mac.update(body);
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Signs a batch: lowercase hex HMAC-SHA256 under the node's key.
pub fn sign(key: &[u8], headers: &BatchHeaders, body: &[u8]) -> String {
    let mut mac = keyed(key);
    signed_message(&mut mac, headers, body);
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies a signature in constant time. A signature that is not 64 hex digits fails.
pub fn verify(key: &[u8], headers: &BatchHeaders, body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = keyed(key);
    signed_message(&mut mac, headers, body);
    mac.verify_slice(&signature).is_ok()
}

/// Where an agent long-polls for its commands over the HTTP bus (a signed `GET`).
pub const AGENT_POLL_PATH: &str = "/api/v1/agent/commands";
/// Where an agent posts its command reports over the HTTP bus (a signed `POST`).
pub const AGENT_REPORTS_PATH: &str = "/api/v1/agent/reports";

/// Where pulses are posted (by an operator, or signed by a node).
pub const HEARTBEATS_PATH: &str = "/api/v1/heartbeats";
/// Where events are posted (by an operator, or signed by a node).
pub const EVENTS_PATH: &str = "/api/v1/events";

/// The domain separator of signed agent requests and NATS reports (anything an agent sends
/// that is not a batch).
pub const AGENT_SIGNATURE_SCHEME: &str = "fleet-agent-v1";

/// The timestamp to sign an agent request with: now, but later than every one this process
/// signed before. The controller takes each signed request once (it remembers signatures for
/// the clock window), so two requests alike in all but time must not share a millisecond.
pub fn request_timestamp_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = crate::timefmt::now_ms();
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .expect("the update always succeeds");
    now.max(previous + 1)
}

/// Signs an agent request (a command poll, a report): HMAC-SHA256 under the node's key over
/// `fleet-agent-v1\n<node>\n<what>\n<timestamp_ms>\n<body>`, where `what` names the request
/// (`GET /api/v1/agent/commands`, `POST /api/v1/agent/reports`, or the NATS subject), so a
/// signature for one request is worthless for another.
pub fn sign_agent(key: &[u8], node: &str, what: &str, timestamp_ms: i64, body: &[u8]) -> String {
    let mut mac = keyed(key);
    agent_message(&mut mac, node, what, timestamp_ms, body);
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies [`sign_agent`] in constant time.
pub fn verify_agent(
    key: &[u8],
    node: &str,
    what: &str,
    timestamp_ms: i64,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = keyed(key);
    agent_message(&mut mac, node, what, timestamp_ms, body);
    mac.verify_slice(&signature).is_ok()
}

fn agent_message(mac: &mut Hmac<Sha256>, node: &str, what: &str, timestamp_ms: i64, body: &[u8]) {
    mac.update(format!("{AGENT_SIGNATURE_SCHEME}\n{node}\n{what}\n{timestamp_ms}\n").as_bytes());
    mac.update(body);
}

/// Largest records array one spooled batch holds, as JSON: well under the controller's default
/// limits (1 MiB as sent, 8 MiB inflated) even for text that does not compress.
pub const BATCH_RECORDS_BYTES_MAX: usize = 768 * 1024;

/// Packs one tick's records into as few records arrays (JSON, ready to spool) as the limits
/// allow: at most [`limits::RECORDS_PER_BATCH_MAX`](crate::model::limits) records,
/// [`SAMPLES_PER_BATCH_MAX`](crate::model::limits) samples and `bytes_max` bytes each. A record
/// larger than `bytes_max` on its own still goes, alone: sources bound their records' size.
pub fn pack_records(records: &[crate::model::Record], bytes_max: usize) -> Vec<Vec<u8>> {
    use crate::model::limits;
    let mut batches = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let (mut count, mut samples) = (0usize, 0usize);
    let mut one = Vec::new();
    for record in records {
        one.clear();
        serde_json::to_writer(&mut one, record).expect("records serialise");
        let full = count + 1 > limits::RECORDS_PER_BATCH_MAX
            || samples + record.samples.len() > limits::SAMPLES_PER_BATCH_MAX
            || current.len() + one.len() + 2 > bytes_max;
        if count > 0 && full {
            current.push(b']');
            batches.push(std::mem::take(&mut current));
            (count, samples) = (0, 0);
        }
        current.push(if count == 0 { b'[' } else { b',' });
        current.extend_from_slice(&one);
        count += 1;
        samples += record.samples.len();
    }
    if count > 0 {
        current.push(b']');
        batches.push(current);
    }
    batches
}

/// The body for a spooled batch: the records, wrapped with what is known at send time.
pub fn frame(interval_ms: u64, records_json: &[u8], dropped_batches: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(records_json.len() + 64);
    body.extend_from_slice(
        format!(
            "{{\"interval_ms\":{interval_ms},\"dropped_batches\":{dropped_batches},\"records\":"
        )
        .as_bytes(),
    );
    body.extend_from_slice(records_json);
    body.push(b'}');
    body
}

/// A batch ready to go: signed now, compressed when worth it. The same for every transport
/// (HTTP headers or NATS headers carry [`Sealed::headers`]).
pub struct Sealed {
    pub header: BatchHeaders,
    pub signature: String,
    pub payload: Vec<u8>,
    pub gzip: bool,
}

impl Sealed {
    /// Signs `body` under `key` at this moment and encodes it.
    pub fn new(key: &[u8], node: &str, instance: &str, seq: u64, body: &[u8]) -> Self {
        let header = BatchHeaders {
            node: node.to_owned(),
            instance: instance.to_owned(),
            seq,
            timestamp_ms: crate::timefmt::now_ms(),
        };
        let signature = sign(key, &header, body);
        let (payload, gzip) = encode(body);
        Self {
            header,
            signature,
            payload,
            gzip,
        }
    }

    /// The headers that go with the payload: node, instance, sequence, timestamp, signature,
    /// and `content-encoding: gzip` when compressed.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (HEADER_NODE, self.header.node.clone()),
            (HEADER_INSTANCE, self.header.instance.clone()),
            (HEADER_SEQ, self.header.seq.to_string()),
            (HEADER_TIMESTAMP, self.header.timestamp_ms.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ];
        if self.gzip {
            headers.push(("content-encoding", "gzip".to_owned()));
        }
        headers
    }
}

/// Gzips `body` when it is at least [`GZIP_THRESHOLD`] bytes. Returns the bytes to send and
/// whether they are compressed.
pub fn encode(body: &[u8]) -> (Vec<u8>, bool) {
    if body.len() < GZIP_THRESHOLD {
        return (body.to_vec(), false);
    }
    thread_local! {
        // The compressor's state is a few hundred KiB; making it anew per batch cost more
        // (allocation, zeroing, page faults) than compressing. One per thread, reset each time;
        // the gzip framing (RFC 1952) around the raw deflate stream is written here.
        static DEFLATE: std::cell::RefCell<DeflateEncoder<Vec<u8>>> =
            std::cell::RefCell::new(DeflateEncoder::new(Vec::new(), Compression::fast()));
    }
    let compressed = DEFLATE.with_borrow_mut(|encoder| {
        let mut out = Vec::with_capacity(body.len() / 4 + 18);
        // ID1 ID2, CM = deflate, no flags, no mtime, no extra flags, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        encoder
            .reset(out)
            .expect("resetting onto a Vec cannot fail");
        encoder
            .write_all(body)
            .expect("writing to a Vec cannot fail");
        let mut out = encoder
            .reset(Vec::new())
            .expect("finishing into a Vec cannot fail");
        let mut crc = flate2::Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out
    });
    (compressed, true)
}

/// Why a compressed body could not be inflated.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    #[error("the body inflates past the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is not valid gzip: {0}")]
    Corrupt(#[from] std::io::Error),
}

/// Inflates a gzip body, stopping as soon as the output would pass `limit` bytes (a gzip bomb is
/// refused after reading at most `limit + 1` bytes of output, never inflated whole).
pub fn inflate_bounded(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity((compressed.len() * 4).min(limit));
    MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(InflateError::TooLarge { limit });
    }
    Ok(out)
}

/// Checks an instance id: 1–64 characters of `[a-zA-Z0-9_-]`.
pub fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= INSTANCE_MAX
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_packed_into_batches_within_the_limits() {
        use crate::model::{Record, Sample, limits};
        let record = |n: usize, samples: usize| Record {
            collector: "logs.app".into(),
            ts: n as i64,
            data: serde_json::json!({ "line": "x".repeat(100) }),
            samples: (0..samples)
                .map(|i| Sample::new(format!("m{i}"), 1.0))
                .collect(),
        };
        let records: Vec<_> = (0..2_500).map(|n| record(n, 0)).collect();
        let batches = pack_records(&records, usize::MAX);
        let counts: Vec<usize> = batches
            .iter()
            .map(|b| serde_json::from_slice::<Vec<Record>>(b).unwrap().len())
            .collect();
        assert_eq!(
            counts,
            [
                limits::RECORDS_PER_BATCH_MAX,
                limits::RECORDS_PER_BATCH_MAX,
                500
            ]
        );
        let batches = pack_records(&records[..100], 4_000);
        assert!(batches.iter().all(|b| b.len() <= 4_000), "bytes bound kept");
        let back: Vec<Record> = batches
            .iter()
            .flat_map(|b| serde_json::from_slice::<Vec<Record>>(b).unwrap())
            .collect();
        assert_eq!(back, records[..100], "nothing lost or reordered");
        let heavy: Vec<_> = (0..3).map(|n| record(n, 15_000)).collect();
        assert_eq!(
            pack_records(&heavy, usize::MAX).len(),
            3,
            "samples bound kept"
        );
        assert!(pack_records(&[], 10).is_empty());
    }

    fn headers() -> BatchHeaders {
        BatchHeaders {
            node: "web1".into(),
            instance: "01HX".into(),
            seq: 7,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = br#"{"records":[]}"#;
        let sig = sign(b"secret", &headers(), body);
        assert_eq!(sig.len(), 64);
        assert!(verify(b"secret", &headers(), body, &sig));
        assert!(!verify(b"other", &headers(), body, &sig));
        assert!(!verify(b"secret", &headers(), b"{}", &sig));
        let mut moved = headers();
        moved.seq = 8;
        assert!(!verify(b"secret", &moved, body, &sig));
        assert!(!verify(b"secret", &headers(), body, "zz"));
    }

    #[test]
    fn known_vector_matches_the_documented_message() {
        // The same message computed by hand, as docs/wire.md describes it.
        let mut mac = keyed(b"k");
        mac.update(b"fleet-batch-v1\nweb1\n01HX\n7\n1700000000000\n{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sign(b"k", &headers(), b"{}"), expected);
    }

    #[test]
    fn small_bodies_stay_plain_and_large_ones_round_trip() {
        let (plain, compressed) = encode(b"{}");
        assert!(!compressed);
        assert_eq!(plain, b"{}");
        let big = vec![b'a'; 10_000];
        let (gz, compressed) = encode(&big);
        assert!(compressed);
        assert!(gz.len() < big.len());
        assert_eq!(inflate_bounded(&gz, 10_000).unwrap(), big);
    }

    #[test]
    fn concatenated_gzip_members_inflate_whole() {
        let (mut first, _) = encode(&[b'a'; 2000]);
        let (second, _) = encode(&[b'b'; 2000]);
        first.extend_from_slice(&second);
        let out = inflate_bounded(&first, 10_000).unwrap();
        assert_eq!(out.len(), 4000);
        assert_eq!(out[3999], b'b');
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let (gz, _) = encode(&vec![0u8; 5_000_000]);
        assert!(matches!(
            inflate_bounded(&gz, 1_000_000),
            Err(InflateError::TooLarge { .. })
        ));
        assert!(matches!(
            inflate_bounded(b"not gzip", 100),
            Err(InflateError::Corrupt(_))
        ));
    }
}
