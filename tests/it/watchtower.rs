//! The watchTower compatibility listener: a controller with `[compat.watchtower]` on its own
//! loopback port over HTTPS, driven like watchTower's clients drive it (header `password`, JSON
//! or form bodies, every answer HTTP 200 with the status in `result`).

use std::net::SocketAddr;
use std::time::Duration;

use fleet::config::WatchtowerConfig;
use fleet::store::events::NewEvent;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Env, InProcess, eventually, free_port};

const PASSWORD: &str = "correct horse battery staple";
const TOKEN: &str = "watchtower-test-operator-token-0123456789";

/// A controller with the watchTower listener, and a client for it.
struct Setup {
    env: Env,
    ctl: InProcess,
    wt: Wt,
}

/// A client like watchTower's: HTTPS (trusting the test certificate), header `password`.
struct Wt {
    http: reqwest::Client,
    url: String,
    password: String,
}

/// A self-signed certificate for 127.0.0.1, written into the env's dir; returns (cert, key)
/// paths and the PEM to trust.
fn certificate(env: &Env) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_path = env.dir.path().join("wt-cert.pem");
    let key_path = env.dir.path().join("wt-key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.pem())
}

async fn start(backend: Backend) -> Setup {
    let env = Env::new(backend).await;
    let (cert, key, pem) = certificate(&env);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = env.controller_config();
    config.api_tokens = vec![TOKEN.into()];
    config.compat.watchtower = Some(WatchtowerConfig {
        listen,
        password: PASSWORD.into(),
        tls_cert: Some(cert),
        tls_key: Some(key),
    });
    let ctl = InProcess::start(config).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let wt = Wt {
        http,
        url: format!("https://{listen}"),
        password: PASSWORD.into(),
    };
    Setup { env, ctl, wt }
}

impl Wt {
    async fn send(&self, request: reqwest::RequestBuilder) -> Value {
        let response = request
            .send()
            .await
            .expect("the watchTower listener answers");
        assert_eq!(
            response.status(),
            200,
            "watchTower answers are always HTTP 200"
        );
        response.json().await.expect("a JSON answer")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("password", &self.password)
    }

    async fn get(&self, path: &str) -> Value {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.send(
            self.request(method, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.json(reqwest::Method::POST, path, body).await
    }

    async fn delete(&self, path: &str, body: Value) -> Value {
        self.json(reqwest::Method::DELETE, path, body).await
    }

    async fn form(&self, path: &str, pairs: &[(&str, &str)], content_type: bool) -> Value {
        let mut request = self.request(reqwest::Method::POST, path);
        if content_type {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        self.send(request.body(form(pairs))).await
    }

    async fn pulse(&self, service: &str, next_in: Value) -> Value {
        let answer = self
            .post(
                "/heartbeat",
                json!({
                    "service": service,
                    "alertType": "email",
                    "alertTarget": "ops@example.com",
                    "nextIn": next_in,
                }),
            )
            .await;
        assert_eq!(answer["result"], 200, "{answer}");
        answer
    }

    async fn event(&self, body: Value) {
        let answer = self.post("/event", body).await;
        assert_eq!(answer, json!({"result": 200, "action": "event"}));
    }

    /// The messages `GET /events?<query>` finds, newest first.
    async fn messages(&self, query: &str) -> Vec<String> {
        let answer = self.get(&format!("/events?{query}")).await;
        assert_eq!(answer["result"], 200, "{answer}");
        answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// `application/x-www-form-urlencoded` as a browser writes it.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_s() -> i64 {
    fleet::timefmt::now_ms() / 1000
}

fn find<'a>(list: &'a Value, service: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|h| h["service"] == service)
}

both_backends!(
    watchtower_pulse_is_listed_in_epoch_seconds_and_seen_natively,
    watchtower_missed_deadline_is_alerted,
    watchtower_cancel_keeps_the_heartbeat_listed,
    watchtower_events_filter_by_window_level_service_and_message,
);

async fn watchtower_pulse_is_listed_in_epoch_seconds_and_seen_natively(backend: Backend) {
    let Setup { env: _env, ctl, wt } = start(backend).await;
    let before = now_s();
    let answer = wt.pulse("backup-db", json!(60)).await;
    let after = now_s();
    assert_eq!(answer["action"], "pulse");
    let hb = &answer["heartBeat"];
    assert_eq!(hb["service"], "backup-db");
    assert_eq!(hb["alertType"], "email");
    assert_eq!(hb["alertTarget"], "ops@example.com");
    assert_eq!(hb["nextIn"], 60);
    let last = hb["last"].as_i64().expect("last is epoch seconds");
    assert!(
        (before..=after).contains(&last),
        "{last} in {before}..={after}"
    );
    let expected = hb["expected"].as_i64().expect("expected is epoch seconds");
    assert!((last + 59..=last + 61).contains(&expected), "{hb}");
    assert_eq!(hb["alerted"], false);
    assert_eq!(hb["cancelled"], false);

    // nextIn as a numeric string, as a form would send it.
    let answer = wt.pulse("report", json!("90")).await;
    assert_eq!(answer["heartBeat"]["nextIn"], 90);

    let list = wt.get("/heartbeats").await;
    assert_eq!(list["result"], 200);
    let listed = find(&list["heartBeats"], "backup-db").expect("the pulse is listed");
    assert_eq!(listed["last"], last);
    assert_eq!(listed["expected"], expected);
    assert!(find(&list["heartBeats"], "report").is_some());

    let one = wt.get("/heartbeat/backup-db").await;
    assert_eq!(one["result"], 200);
    assert_eq!(one["heartBeat"]["service"], "backup-db");
    assert_eq!(one["heartBeat"]["expected"], expected);

    // The same heartbeat through the native API.
    let (status, native) = ctl.client().get("/api/v1/heartbeats/backup-db").await;
    assert_eq!(status, 200, "{native}");
    assert_eq!(native["next_in_ms"], 60_000);
    assert_eq!(
        native["alert"],
        json!({"channel": "email", "target": "ops@example.com"})
    );
    assert_eq!(native["last_pulse_ms"].as_i64().unwrap() / 1000, last);
    assert_eq!(native["deadline_ms"].as_i64().unwrap() / 1000, expected);
    ctl.stop().await;
}

async fn watchtower_missed_deadline_is_alerted(backend: Backend) {
    let Setup { env: _env, ctl, wt } = start(backend).await;
    let answer = wt.pulse("flaky", json!(1)).await;
    assert_eq!(answer["heartBeat"]["alerted"], false);
    let wt = &wt;
    let hb = eventually(
        Duration::from_secs(10),
        "the missed pulse alerted",
        || async {
            let one = wt.get("/heartbeat/flaky").await;
            (one["heartBeat"]["alerted"] == true).then_some(one["heartBeat"].clone())
        },
    )
    .await;
    assert_eq!(hb["cancelled"], false);
    let (_, native) = ctl.client().get("/api/v1/heartbeats/flaky").await;
    assert_eq!(native["state"], "down");
    ctl.stop().await;
}

async fn watchtower_cancel_keeps_the_heartbeat_listed(backend: Backend) {
    let Setup { env: _env, ctl, wt } = start(backend).await;
    wt.pulse("nightly", json!(3600)).await;
    let answer = wt.delete("/heartbeat", json!({"service": "nightly"})).await;
    assert_eq!(answer["result"], 200, "{answer}");
    assert_eq!(answer["action"], "cancel");
    assert_eq!(answer["heartBeat"]["service"], "nightly");
    assert_eq!(answer["heartBeat"]["cancelled"], true);
    assert_eq!(answer["heartBeat"]["alerted"], false);

    let list = wt.get("/heartbeats").await;
    let listed = find(&list["heartBeats"], "nightly").expect("still listed once cancelled");
    assert_eq!(listed["cancelled"], true);
    let (_, native) = ctl.client().get("/api/v1/heartbeats/nightly").await;
    assert_eq!(native["state"], "cancelled");

    let unknown = wt
        .delete("/heartbeat", json!({"service": "never-seen"}))
        .await;
    assert_eq!(unknown, json!({"result": 500, "hint": "service not found"}));
    let unknown = wt.get("/heartbeat/never-seen").await;
    assert_eq!(unknown, json!({"result": 500, "hint": "service not found"}));

    // A pulse brings it back.
    let answer = wt.pulse("nightly", json!(3600)).await;
    assert_eq!(answer["heartBeat"]["cancelled"], false);
    ctl.stop().await;
}

async fn watchtower_events_filter_by_window_level_service_and_message(backend: Backend) {
    let Setup { env: _env, ctl, wt } = start(backend).await;
    // Two days old: outside the default window.
    ctl.store
        .add_event(
            &NewEvent {
                node: None,
                service: Some("db-main".into()),
                level: 4,
                message: "ancient history".into(),
                fields: json!({}),
                category: "event",
            },
            fleet::timefmt::now_ms() - 2 * 86_400_000,
        )
        .await
        .unwrap();
    let before = now_s();
    wt.event(json!({"service": "DB-main", "message": "Backup started"}))
        .await;
    wt.event(json!({"service": "db-main", "message": "backup FAILED: disk full", "level": 4, "alert": true}))
        .await;
    wt.event(json!({"service": "web", "message": "deploy done", "level": "warning"}))
        .await;
    let after = now_s();

    // Newest first; the default window is the last 24 hours.
    let all = wt.get("/events").await;
    assert_eq!(all["result"], 200);
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{all}");
    assert_eq!(events[0]["message"], "deploy done");
    assert_eq!(events[0]["level"], 3);
    assert_eq!(events[0]["service"], "web");
    assert_eq!(events[0]["alert"], Value::Null);
    assert_eq!(events[1]["message"], "backup FAILED: disk full");
    assert_eq!(events[1]["alert"], true);
    assert_eq!(events[2]["level"], 0, "the default level");
    let date = events[0]["date"].as_i64().expect("date is epoch seconds");
    assert!((before..=after).contains(&date), "{date}");

    assert_eq!(
        wt.messages("level=3").await,
        ["deploy done", "backup FAILED: disk full"]
    );
    assert_eq!(
        wt.messages("level=error").await,
        ["backup FAILED: disk full"]
    );
    // Case-insensitive regular expressions, searched in the field.
    assert_eq!(
        wt.messages(&format!("service={}", encode("^db-"))).await,
        ["backup FAILED: disk full", "Backup started"]
    );
    assert_eq!(
        wt.messages(&format!("message={}", encode("backup (started|failed)")))
            .await,
        ["backup FAILED: disk full", "Backup started"]
    );
    assert_eq!(
        wt.messages(&format!(
            "service={}&message={}",
            encode("main"),
            encode("fail")
        ))
        .await,
        ["backup FAILED: disk full"]
    );
    // An explicit window reaches back further, and `to` bounds it.
    let three_days_ago = now_s() - 3 * 86_400;
    let old = wt
        .messages(&format!("from={three_days_ago}&service=db"))
        .await;
    assert_eq!(
        old,
        [
            "backup FAILED: disk full",
            "Backup started",
            "ancient history"
        ]
    );
    let old = wt
        .messages(&format!("from={three_days_ago}&to={}", now_s() - 86_400))
        .await;
    assert_eq!(old, ["ancient history"]);
    assert!(wt.messages("from=1&to=2").await.is_empty());

    // The native event log has them as events of their service.
    let (status, native) = ctl.client().get("/api/v1/events?service=web").await;
    assert_eq!(status, 200, "{native}");
    assert_eq!(native["events"][0]["message"], "deploy done");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_hello_answers_the_clock_and_version() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    let before = now_s();
    let hello = wt.get("/hello").await;
    assert_eq!(hello["result"], 200);
    assert_eq!(hello["version"], env!("CARGO_PKG_VERSION"));
    let world = hello["world"].as_i64().expect("world is epoch seconds");
    assert!((before..=now_s()).contains(&world), "{hello}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_legacy_paths_still_work() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    let answer = wt
        .post(
            "/",
            json!({"service": "old-client", "alertType": "slack", "alertTarget": "#ops", "nextIn": 30}),
        )
        .await;
    assert_eq!(answer["result"], 200, "{answer}");
    assert_eq!(answer["action"], "pulse");
    assert_eq!(answer["heartBeat"]["alertType"], "slack");

    let one = wt.get("/get/old-client").await;
    assert_eq!(one["result"], 200, "{one}");
    assert_eq!(one["heartBeat"]["nextIn"], 30);
    assert_eq!(
        wt.get("/get/nobody").await,
        json!({"result": 500, "hint": "service not found"})
    );

    let answer = wt
        .post(
            "/add-event",
            json!({"service": "old-client", "message": "legacy event"}),
        )
        .await;
    assert_eq!(answer, json!({"result": 200, "action": "event"}));
    assert_eq!(wt.messages("service=old").await, ["legacy event"]);

    let answer = wt.delete("/", json!({"service": "old-client"})).await;
    assert_eq!(answer["result"], 200, "{answer}");
    assert_eq!(answer["action"], "cancel");
    assert_eq!(answer["heartBeat"]["cancelled"], true);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_bad_password_is_refused_and_changes_nothing() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    wt.pulse("guarded", json!(3600)).await;
    let refused = json!({"result": 403});
    for password in [
        None,
        Some(""),
        Some("wrong"),
        Some("correct horse battery stapl"),
    ] {
        let request = |method: reqwest::Method, path: &str| {
            let request = wt.http.request(method, format!("{}{path}", wt.url));
            match password {
                Some(p) => request.header("password", p),
                None => request,
            }
        };
        let pulse = json!({"service": "intruder", "alertType": "email", "alertTarget": "x@example.com", "nextIn": 5});
        let calls = [
            request(reqwest::Method::POST, "/heartbeat").body(pulse.to_string()),
            request(reqwest::Method::POST, "/").body(pulse.to_string()),
            request(reqwest::Method::DELETE, "/heartbeat").body(r#"{"service":"guarded"}"#),
            request(reqwest::Method::DELETE, "/").body(r#"{"service":"guarded"}"#),
            request(reqwest::Method::POST, "/event")
                .body(r#"{"service":"intruder","message":"hi"}"#),
            request(reqwest::Method::POST, "/add-event")
                .body(r#"{"service":"intruder","message":"hi"}"#),
            request(reqwest::Method::GET, "/heartbeats"),
            request(reqwest::Method::GET, "/heartbeat/guarded"),
            request(reqwest::Method::GET, "/get/guarded"),
            request(reqwest::Method::GET, "/events"),
            request(reqwest::Method::GET, "/hello"),
            request(reqwest::Method::GET, "/no-such-path"),
        ];
        for call in calls {
            assert_eq!(wt.send(call).await, refused, "password {password:?}");
        }
    }
    // Nothing changed.
    let list = wt.get("/heartbeats").await;
    assert!(find(&list["heartBeats"], "intruder").is_none(), "{list}");
    assert_eq!(
        find(&list["heartBeats"], "guarded").unwrap()["cancelled"],
        false
    );
    assert!(wt.messages("").await.is_empty());
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_each_missing_field_has_its_hint() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    let full =
        json!({"service": "s", "alertType": "email", "alertTarget": "a@example.com", "nextIn": 10});
    let without = |field: &str| {
        let mut body = full.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    for (path, body, hint) in [
        ("/heartbeat", without("service"), "no service provided"),
        ("/heartbeat", without("nextIn"), "no nextIn provided"),
        ("/heartbeat", without("alertType"), "no alert type provided"),
        (
            "/heartbeat",
            without("alertTarget"),
            "no alert target provided",
        ),
        ("/heartbeat", json!({}), "no service provided"),
        ("/", without("nextIn"), "no nextIn provided"),
        (
            "/heartbeat",
            json!({"service": "  ", "alertType": "e", "alertTarget": "t", "nextIn": 1}),
            "no service provided",
        ),
        ("/event", json!({"message": "m"}), "no service provided"),
        ("/event", json!({"service": "s"}), "no message provided"),
        (
            "/add-event",
            json!({"service": "s", "message": ""}),
            "no message provided",
        ),
    ] {
        let answer = wt.post(path, body.clone()).await;
        assert_eq!(
            answer,
            json!({"result": 500, "hint": hint}),
            "{path} {body}"
        );
    }
    let answer = wt.delete("/heartbeat", json!({})).await;
    assert_eq!(
        answer,
        json!({"result": 500, "hint": "no service provided"})
    );
    // An empty body is a body without fields.
    let answer = wt
        .send(wt.request(reqwest::Method::POST, "/heartbeat"))
        .await;
    assert_eq!(
        answer,
        json!({"result": 500, "hint": "no service provided"})
    );

    // Invalid values name the field as the client wrote it.
    for (body, field) in [
        (json!({"nextIn": "soon"}), "nextIn:"),
        (json!({"nextIn": 0}), "nextIn:"),
        (json!({"nextIn": -5}), "nextIn:"),
        (json!({"nextIn": true}), "nextIn:"),
        (json!({"service": "x".repeat(300)}), "service:"),
        // Agents' own heartbeats cannot be kept alive from outside.
        (json!({"service": "node:web1"}), "service:"),
        (json!({"alertTarget": "a\nb"}), "alertTarget:"),
    ] {
        let mut pulse = full.clone();
        pulse
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let answer = wt.post("/heartbeat", pulse).await;
        assert_eq!(answer["result"], 500, "{answer}");
        let hint = answer["hint"].as_str().unwrap();
        assert!(hint.starts_with(field), "{hint} should start with {field}");
    }
    let answer = wt
        .post(
            "/event",
            json!({"service": "s", "message": "m", "level": 9}),
        )
        .await;
    assert_eq!(answer["result"], 500);
    assert!(answer["hint"].as_str().unwrap().starts_with("level:"));
    let answer = wt.get("/events?level=loud").await;
    assert_eq!(answer["result"], 500);
    let answer = wt.get("/events?from=yesterday").await;
    assert_eq!(answer["result"], 500);
    assert!(answer["hint"].as_str().unwrap().starts_with("from:"));

    // Bodies that are not fields at all.
    let answer = wt
        .send(
            wt.request(reqwest::Method::POST, "/heartbeat")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(answer["result"], 500);
    assert!(
        answer["hint"].as_str().unwrap().contains("JSON"),
        "{answer}"
    );
    let answer = wt
        .send(
            wt.request(reqwest::Method::POST, "/heartbeat")
                .header("content-type", "application/json")
                .body("[1, 2]"),
        )
        .await;
    assert_eq!(answer["result"], 500);
    let huge = json!({"service": "s", "message": "x".repeat(100 * 1024)});
    let answer = wt.post("/event", huge).await;
    assert_eq!(answer["result"], 413, "{answer}");

    // Unknown paths and methods.
    assert_eq!(wt.get("/nowhere").await, json!({"result": 404}));
    assert_eq!(
        wt.send(wt.request(reqwest::Method::PUT, "/heartbeat"))
            .await,
        json!({"result": 404})
    );
    // Nothing was stored by any of it.
    let list = wt.get("/heartbeats").await;
    assert_eq!(list, json!({"result": 200, "heartBeats": []}));
    assert!(wt.messages("").await.is_empty());
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_invalid_regex_is_a_hint() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    wt.event(json!({"service": "s", "message": "m"})).await;
    for query in [
        format!("service={}", encode("(unclosed")),
        format!("message={}", encode("[z-a]")),
        format!("message={}", "a".repeat(1001)),
        // Compiles to far more than the size limit.
        format!("message={}", encode(r"\w{1000}\w{1000}\w{1000}")),
    ] {
        let answer = wt.get(&format!("/events?{query}")).await;
        assert_eq!(answer["result"], 500, "{query}: {answer}");
        let hint = answer["hint"].as_str().expect("a hint");
        assert!(
            hint.starts_with("service:") || hint.starts_with("message:"),
            "{hint}"
        );
    }
    // The listener is still there.
    assert_eq!(wt.messages("message=M").await, ["m"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_form_encoded_bodies_work() {
    let Setup { env: _env, ctl, wt } = start(Backend::Embedded).await;
    let pulse = [
        ("service", "form service"),
        ("alertType", "email"),
        ("alertTarget", "ops+oncall@example.com"),
        ("nextIn", "120"),
    ];
    let answer = wt.form("/heartbeat", &pulse, true).await;
    assert_eq!(answer["result"], 200, "{answer}");
    let hb = &answer["heartBeat"];
    assert_eq!(hb["service"], "form service");
    assert_eq!(hb["alertTarget"], "ops+oncall@example.com");
    assert_eq!(hb["nextIn"], 120);
    assert_eq!(
        wt.get("/heartbeat/form%20service").await["heartBeat"]["nextIn"],
        120
    );

    // Without a Content-Type, a body that is not JSON is read as a form.
    let answer = wt
        .form(
            "/",
            &[
                ("service", "untyped"),
                ("alertType", "email"),
                ("alertTarget", "t"),
                ("nextIn", "5"),
            ],
            false,
        )
        .await;
    assert_eq!(answer["result"], 200, "{answer}");

    let answer = wt
        .form(
            "/event",
            &[
                ("service", "form service"),
                ("message", "from a form"),
                ("level", "critical"),
                ("alert", "true"),
            ],
            true,
        )
        .await;
    assert_eq!(answer, json!({"result": 200, "action": "event"}));
    let events = wt.get("/events").await;
    assert_eq!(events["events"][0]["level"], 5);
    assert_eq!(events["events"][0]["alert"], true);
    let answer = wt
        .form("/heartbeat", &[("service", "form service")], true)
        .await;
    assert_eq!(answer, json!({"result": 500, "hint": "no nextIn provided"}));
    let answer = wt
        .send(
            wt.request(reqwest::Method::DELETE, "/heartbeat")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[("service", "form service")])),
        )
        .await;
    assert_eq!(answer["heartBeat"]["cancelled"], true, "{answer}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchtower_listener_that_cannot_start_fails_the_start() {
    let env = Env::new(Backend::Embedded).await;
    let (cert, key, _) = certificate(&env);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let good = WatchtowerConfig {
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        password: PASSWORD.into(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
    };
    for (watchtower, expected) in [
        (
            WatchtowerConfig {
                listen: taken.local_addr().unwrap(),
                ..good.clone()
            },
            "compat.watchtower.listen",
        ),
        (
            WatchtowerConfig {
                tls_key: Some(env.dir.path().join("missing.pem")),
                ..good.clone()
            },
            "compat.watchtower.tls_cert",
        ),
        (
            WatchtowerConfig {
                tls_key: None,
                ..good.clone()
            },
            "both tls_cert and tls_key",
        ),
        (
            WatchtowerConfig {
                password: String::new(),
                ..good.clone()
            },
            "compat.watchtower.password",
        ),
    ] {
        let mut config = env.controller_config();
        config.compat.watchtower = Some(watchtower);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let err = match fleet::modes::controller::start(config, shutdown.clone()).await {
            Ok(_) => panic!("the controller started without its watchTower listener"),
            Err(err) => format!("{err:#}"),
        };
        shutdown.cancel();
        assert!(err.contains(expected), "{err:?} should mention {expected}");
    }
}
