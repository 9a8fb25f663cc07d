//! Slow and withheld bodies cannot starve signed work: hundreds of connections from another
//! loopback address (127.0.0.2) trickle bodies and headers at every route that reads one, half
//! of them claiming the real node's name (whose allowlist is empty, so its address does not save
//! it), while the node keeps reporting from 127.0.0.1.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Backend, Batch, Env, InProcess, node};

const KEY: &str = "slow-clients-key-0123456789";

async fn connect_from(source: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// What happened to one slow client.
#[derive(Debug)]
enum Fate {
    /// Answered with this status, after this long.
    Answered(u16, Duration),
    /// The server closed the connection without an answer, after this long.
    Closed(Duration),
    /// Still open when the test stopped trickling.
    Open,
}

/// Sends `head` (a request's headers) and then one byte of body every `every`, for at most
/// `hold`, noting when and how the server ends it.
async fn trickle(mut stream: TcpStream, head: String, every: Duration, hold: Duration) -> Fate {
    let started = Instant::now();
    if stream.write_all(head.as_bytes()).await.is_err() {
        return Fate::Closed(started.elapsed());
    }
    let mut answer = [0u8; 64];
    while started.elapsed() < hold {
        tokio::select! {
            read = stream.read(&mut answer) => {
                return match read {
                    Ok(n) if n >= 12 => {
                        let text = String::from_utf8_lossy(&answer[..n]);
                        let status = text[9..12].parse().unwrap_or(0);
                        Fate::Answered(status, started.elapsed())
                    }
                    _ => Fate::Closed(started.elapsed()),
                };
            }
            _ = tokio::time::sleep(every) => {
                if stream.write_all(b"x").await.is_err() {
                    return Fate::Closed(started.elapsed());
                }
            }
        }
    }
    Fate::Open
}

/// Sends a request's headers one byte per `every`.
async fn slow_headers(
    mut stream: TcpStream,
    head: String,
    every: Duration,
    hold: Duration,
) -> Fate {
    let started = Instant::now();
    for byte in head.bytes() {
        if started.elapsed() > hold {
            return Fate::Open;
        }
        if stream.write_all(&[byte]).await.is_err() {
            return Fate::Closed(started.elapsed());
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(every, stream.read(&mut probe)).await {
            Err(_) => {}
            Ok(Ok(n)) if n >= 12 => {
                let status = String::from_utf8_lossy(&probe[..n])[9..12]
                    .parse()
                    .unwrap_or(0);
                return Fate::Answered(status, started.elapsed());
            }
            Ok(_) => return Fate::Closed(started.elapsed()),
        }
    }
    Fate::Open
}

/// A controller on the embedded store with `web1` enrolled from anywhere (so its allow list
/// protects nothing), and its address.
async fn start() -> (Env, InProcess, std::net::SocketAddr) {
    let env = Env::new(Backend::Embedded).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    let controller = InProcess::start(config).await;
    let addr = controller
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (env, controller, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_another_address_do_not_starve_a_reporting_node() {
    let (_env, controller, addr) = start().await;
    let host = addr.to_string();

    let hold = Duration::from_secs(16);
    let mut attackers = Vec::new();
    for i in 0..300 {
        let now = fleet::timefmt::now_ms();
        let head = match i % 6 {
            // A batch claiming the real node, declaring a full megabyte.
            0 | 1 => format!(
                "POST /api/v1/ingest HTTP/1.1\r\nHost: {host}\r\nx-fleet-node: web1\r\nx-fleet-instance: evil\r\nx-fleet-seq: {}\r\nx-fleet-timestamp: {now}\r\nx-fleet-signature: {}\r\ncontent-length: 1000000\r\n\r\n",
                i + 1,
                "0".repeat(64)
            ),
            // Reports claiming the real node, a small declared body.
            2 => format!(
                "POST /api/v1/agent/reports HTTP/1.1\r\nHost: {host}\r\nx-fleet-node: web1\r\nx-fleet-timestamp: {now}\r\nx-fleet-signature: {}\r\ncontent-length: 100\r\n\r\n",
                "0".repeat(64)
            ),
            // An event with no credentials at all: refused before a byte is read.
            3 => format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: {host}\r\ncontent-length: 60000\r\n\r\n"
            ),
            // A login form, withheld.
            4 => format!(
                "POST /login HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 50\r\n\r\n"
            ),
            // Headers that never end.
            _ => format!("GET /api/v1/nodes HTTP/1.1\r\nHost: {host}\r\nx-slow: "),
        };
        let stream = connect_from("127.0.0.2", addr).await;
        attackers.push(tokio::spawn(async move {
            if i % 6 == 5 {
                (
                    i,
                    slow_headers(
                        stream,
                        head + &"a".repeat(100),
                        Duration::from_secs(1),
                        hold,
                    )
                    .await,
                )
            } else {
                (i, trickle(stream, head, Duration::from_secs(5), hold).await)
            }
        }));
    }

    // Meanwhile the node reports every half second, signed as its agent signs.
    let client = controller.client();
    let started = Instant::now();
    let mut seq = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(14) {
        seq += 1;
        let sent = Instant::now();
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            client.send(&Batch::new("web1", KEY, seq)),
        )
        .await
        .unwrap_or_else(|_| panic!("batch {seq} waited 5 s for an answer"));
        assert_eq!(status, 200, "batch {seq}: {body}");
        slowest = slowest.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(slowest < Duration::from_secs(3), "a batch took {slowest:?}");

    let mut fates = Vec::new();
    for a in attackers {
        fates.push(a.await.unwrap());
    }
    // Nothing unverified is held for ever: a body that falls behind the pace (10 s for the
    // first bytes, then 32 KiB/s) is cut, headers at their deadline; past 8 MiB from one
    // address, bodies are refused at once.
    let over_share = fates
        .iter()
        .filter(|(i, f)| {
            i % 6 < 2 && matches!(f, Fate::Answered(503, t) if *t < Duration::from_secs(2))
        })
        .count();
    assert!(
        over_share >= 80,
        "most megabyte bodies refused at once for their share: {fates:?}"
    );
    // Refused at once for the address's spent share is always a fine answer; otherwise each
    // kind ends as its headers or its deadline allow.
    let quick = Duration::from_secs(2);
    let cut = Duration::from_secs(13);
    let mut timed_out = 0;
    for (i, fate) in &fates {
        match (i % 6, fate) {
            (_, Fate::Answered(503, t)) if *t < quick => {}
            // The few that fit the address's share fell behind the pace a body must keep.
            (0 | 1 | 2 | 4, Fate::Answered(408, t)) if *t < cut => timed_out += 1,
            (3, Fate::Answered(401, t)) if *t < quick => {}
            (5, Fate::Answered(408, t) | Fate::Closed(t)) if *t < cut => {}
            _ => panic!("{i}: {fate:?}"),
        }
    }
    assert!(
        timed_out >= 5,
        "bodies withheld were cut at their deadline: {fates:?}"
    );
    // The node was never called down.
    let (_, events) = controller
        .client()
        .get("/api/v1/events?service=node:web1")
        .await;
    assert!(
        !events.to_string().contains("down"),
        "no false down: {events}"
    );
    let (_, beat) = controller
        .client()
        .get("/api/v1/heartbeats/node:web1")
        .await;
    assert_ne!(beat["state"], "down", "{beat}");
    controller.stop().await;
}

/// A TLS handshake that never comes, and a watchTower body withheld, are cut off too: the API
/// over HTTPS closes a silent connection after its handshake deadline, and the watchTower
/// listener answers a withheld body at its body deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_handshakes_and_withheld_watchtower_bodies_are_cut_off() {
    let env = Env::new(Backend::Embedded).await;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_path = env.dir.path().join("cert.pem");
    let key_path = env.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let wt_listen: std::net::SocketAddr = format!("127.0.0.1:{}", crate::harness::free_port())
        .parse()
        .unwrap();
    let mut config = env.controller_config();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    config.compat.watchtower = Some(fleet::config::WatchtowerConfig {
        listen: wt_listen,
        password: "slow watchtower password".into(),
        tls_cert: None,
        tls_key: None,
    });
    let controller = InProcess::start(config).await;
    let api: std::net::SocketAddr = controller
        .url
        .trim_start_matches("https://")
        .parse()
        .unwrap();

    // Connected, and not a byte of a ClientHello.
    let silent = async {
        let mut stream = connect_from("127.0.0.2", api).await;
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        (read, started.elapsed())
    };
    // The password, then a body that never comes.
    let withheld = async {
        let stream = connect_from("127.0.0.2", wt_listen).await;
        let head = format!(
            "POST /heartbeat HTTP/1.1\r\nHost: {wt_listen}\r\npassword: slow watchtower password\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{"
        );
        let mut stream = stream;
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&answer).contains("\"result\"") {
                break;
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    };
    let ((read, silent_for), (answer, withheld_for)) = tokio::join!(silent, withheld);
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("a silent TLS connection was not closed: {other:?}"),
    }
    assert!(
        silent_for >= Duration::from_secs(5) && silent_for < Duration::from_secs(15),
        "closed after {silent_for:?}"
    );
    assert!(answer.contains("\"result\":408"), "{answer}");
    assert!(
        withheld_for < Duration::from_secs(15),
        "answered after {withheld_for:?}"
    );
    controller.stop().await;
}

/// Declaring a huge body buys nothing: a login form, a pulse or a batch that declares more
/// than its route takes (and more than the 1 MiB read to its end so that an honest client
/// hears the answer) is refused at once, before anything is reserved or read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_size_over_the_route_is_refused_at_once() {
    let (_env, controller, addr) = start().await;
    let now = fleet::timefmt::now_ms();
    for (i, (path, extra, declared)) in [
        (
            "/login",
            "content-type: application/x-www-form-urlencoded\r\n",
            16 << 20,
        ),
        ("/api/v1/heartbeats", "", 2 << 20),
        (
            "/api/v1/ingest",
            "x-fleet-node: web1\r\nx-fleet-instance: i\r\nx-fleet-seq: 1\r\n",
            2 << 20,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let stream = connect_from(&format!("127.0.0.{}", 11 + i), addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}x-fleet-timestamp: {now}\r\ncontent-length: {declared}\r\n\r\n"
        );
        match trickle(stream, head, Duration::from_secs(5), Duration::from_secs(8)).await {
            Fate::Answered(413, t) if t < Duration::from_secs(2) => {}
            other => panic!("{path} declaring {declared} bytes: {other:?}"),
        }
    }
    controller.stop().await;
}

/// Connections that send nothing are closed after ten seconds, and one address may hold at
/// most 512 open: the rest are closed at once, while another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_one_address_holds_a_bounded_number() {
    let (_env, controller, addr) = start().await;
    let limit = fleet::web::admission::CONNECTIONS_PER_PEER;
    let mut silent = Vec::new();
    for _ in 0..limit + 20 {
        silent.push(connect_from("127.0.0.3", addr).await);
    }
    let started = Instant::now();
    let closed_by = |mut stream: TcpStream| async move {
        let mut buf = [0u8; 8];
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
            _ => None,
        }
    };
    let waits = futures::future::join_all(silent.into_iter().map(closed_by));
    // Meanwhile another address is served.
    let (status, body) = controller.client().send(&Batch::new("web1", KEY, 1)).await;
    assert_eq!(status, 200, "{body}");
    let closed = waits.await;
    let at_once = closed
        .iter()
        .filter(|t| t.is_some_and(|t| t < Duration::from_secs(2)))
        .count();
    assert!(
        at_once >= 20,
        "{at_once} closed at once of {}",
        closed.len()
    );
    for t in &closed {
        let t = t.expect("every silent connection is closed");
        assert!(t < Duration::from_secs(13), "closed after {t:?}");
    }
    controller.stop().await;
}
