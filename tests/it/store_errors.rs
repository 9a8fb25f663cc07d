//! Data the database cannot hold (issue 14, point 12): a NUL byte is refused alike on SQLite and
//! PostgreSQL (400, naming the field, nothing stored) or, inside JSON, stored escaped; a store
//! error caused by the data is a 4xx, never a 503 an agent would resend forever, and fails only
//! the batch that carries it, not the others written in its group; and no answer carries the
//! database's own words.

use std::time::Duration;

use fleet::model::{BatchBody, NodeName, Record, Sample};
use fleet::store::durable::{Fault, LedgerKey, SeriesCache};
use fleet::store::{IngestBatch, IngestOutcome};

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, body_with_samples, node};

const KEY: &str = "0123456789abcdef0123456789abcdef";

async fn controller(env: &Env) -> InProcess {
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    InProcess::start(config).await
}

/// Words of PostgreSQL's, SQLite's or sqlx's own errors, and of the test's poison rule: none
/// may reach a client.
const DATABASE_WORDS: &[&str] = &[
    "SQLSTATE",
    "sqlx",
    "invalid byte sequence",
    "violates",
    "constraint",
    "(code:",
    "error returned from database",
    "pool",
    "database error",
    "refuse_poison",
    "poison refused by the test",
];

fn assert_no_database_words(answer: &serde_json::Value) {
    let text = answer.to_string();
    for word in DATABASE_WORDS {
        assert!(
            !text.to_lowercase().contains(&word.to_lowercase()),
            "the answer carries the database's words ({word:?}): {text}"
        );
    }
}

both_backends!(an_event_with_a_nul_is_refused_alike_and_nothing_is_stored);

async fn an_event_with_a_nul_is_refused_alike_and_nothing_is_stored(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env).await;
    let client = ctl.client();

    let (status, answer) = client
        .post(
            "/api/v1/events",
            serde_json::json!({"service": "backup", "level": "error", "message": "disk\u{0}full"})
                .to_string(),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with("message: ") && error.contains("NUL"),
        "{error}"
    );
    assert_no_database_words(&answer);
    let (status, listed) = client.get("/api/v1/events").await;
    assert_eq!(status, 200);
    assert_eq!(listed["events"], serde_json::json!([]), "nothing stored");

    // In `fields` (JSON) a NUL is data like any other: stored, and read back as sent.
    let (status, answer) = client
        .post(
            "/api/v1/events",
            serde_json::json!({"service": "backup", "message": "done",
                "fields": {"path\u{0}": "a\u{0}b"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let (_, listed) = client.get("/api/v1/events").await;
    assert_eq!(
        listed["events"][0]["fields"],
        serde_json::json!({"path\u{0}": "a\u{0}b"})
    );

    // Searches and names with a NUL: 400 naming the field (PostgreSQL would fail the query).
    for (path, field) in [
        ("/api/v1/events?service=a%00b", "service"),
        ("/api/v1/events?node=a%00b", "node"),
        ("/api/v1/events?q=a%00b", "q"),
        ("/api/v1/heartbeats/a%00b", "service"),
    ] {
        let (status, answer) = client.get(path).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{path}: {answer}"
        );
    }
    // Where no check names the field, the database's refusal is still the client's (never a
    // 5xx), and said in our words.
    let (status, answer) = client.get("/api/v1/heartbeats?after=a%00b").await;
    assert!(status < 500, "{status} {answer}");
    assert_no_database_words(&answer);

    for pulse in [
        serde_json::json!({"service": "a\u{0}b", "next_in": 60}),
        serde_json::json!({"service": "backup", "next_in": 60,
            "alert": {"channel": "email", "target": "ops\u{0}@example.com"}}),
    ] {
        let (status, answer) = client.post("/api/v1/heartbeats", pulse.to_string()).await;
        assert_eq!(status, 400, "{pulse}: {answer}");
        assert_no_database_words(&answer);
    }
    let (_, listed) = client.get("/api/v1/heartbeats").await;
    assert_eq!(
        listed["heartbeats"],
        serde_json::json!([]),
        "no pulse stored"
    );
    ctl.stop().await;
}

both_backends!(a_record_with_a_nul_is_stored_escaped_and_read_back_as_sent);

async fn a_record_with_a_nul_is_stored_escaped_and_read_back_as_sent(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env).await;
    let data = serde_json::json!({"line": "GET /\u{0}", "key\u{0}": 1});
    let body = BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![
            Record {
                collector: "app".into(),
                ts: fleet::timefmt::now_ms(),
                data: data.clone(),
                samples: Vec::new(),
            },
            Record {
                collector: "test".into(),
                ts: fleet::timefmt::now_ms(),
                data: serde_json::json!({}),
                samples: vec![Sample::new("test.m", 1.0).with_label("path", "/a\u{0}b")],
            },
        ],
    };
    let batch = Batch::new("web1", KEY, 1).body(serde_json::to_vec(&body).unwrap());
    let (status, answer) = ctl.client().send(&batch).await;
    assert_eq!(status, 200, "{answer}");
    let records = ctl.store.records("web1", "app", 10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1, data, "the document reads back as sent");
    let series = ctl.store.series("web1", Some("test.m")).await.unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].labels["path"], "/a\u{0}b");
    ctl.stop().await;
}

/// Makes the test's database refuse records of the collector `poison`, as it would refuse a
/// value it cannot hold: a CHECK constraint on PostgreSQL (SQLSTATE 23514), a trigger on
/// SQLite (SQLITE_CONSTRAINT). The name `poison` passes every check of fleet's own.
async fn refuse_poison(env: &Env, backend: Backend) {
    match backend {
        Backend::Engines => {
            let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();
            sqlx::query(
                "ALTER TABLE records ADD CONSTRAINT refuse_poison CHECK (collector <> 'poison')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        Backend::Embedded => {
            let pool = sqlx::SqlitePool::connect(&env.database_url).await.unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON records \
                 WHEN NEW.collector = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

fn body(collector: &str) -> BatchBody {
    BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![Record {
            collector: collector.into(),
            ts: fleet::timefmt::now_ms(),
            data: serde_json::json!({"line": "x"}),
            samples: Vec::new(),
        }],
    }
}

both_backends!(a_poison_batch_fails_alone_not_the_group_written_with_it);

async fn a_poison_batch_fails_alone_not_the_group_written_with_it(backend: Backend) {
    let env = Env::new(backend).await;
    let store = env.store().await;
    refuse_poison(&env, backend).await;

    // One transaction for the three, as the ingest writer groups them.
    let batch = |seq: u64, collector: &str| IngestBatch {
        node: NodeName::parse("web1").unwrap(),
        ledger: Some(LedgerKey {
            instance: "i1".into(),
            seq,
            sent_at_ms: fleet::timefmt::now_ms(),
        }),
        received_at_ms: fleet::timefmt::now_ms(),
        body: body(collector),
    };
    let group = [batch(1, "app"), batch(2, "poison"), batch(3, "app")];
    let results = fleet::pipeline::ingest::write_group(
        &store,
        &group,
        &|_: &Record| false,
        &mut SeriesCache::default(),
    )
    .await;
    assert_eq!(
        results,
        vec![
            Ok(IngestOutcome::Stored),
            Err(Fault::Data),
            Ok(IngestOutcome::Stored)
        ]
    );
    let stored: Vec<i64> = store
        .stored_sequences("web1")
        .await
        .unwrap()
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(
        stored,
        vec![1, 3],
        "the neighbours are stored, the poison is not"
    );
    // Sent again, the stored ones are duplicates and the poison is refused again, alone.
    let results = fleet::pipeline::ingest::write_group(
        &store,
        &group,
        &|_: &Record| false,
        &mut SeriesCache::default(),
    )
    .await;
    assert_eq!(
        results,
        vec![
            Ok(IngestOutcome::Duplicate),
            Err(Fault::Data),
            Ok(IngestOutcome::Duplicate)
        ]
    );

    // Over HTTP: the poison batch is a 400 (the agent drops and counts it) in our words; the
    // batches around it, sent at the same moment, are stored.
    let ctl = controller(&env).await;
    let client = ctl.client();
    let batches: Vec<Batch> = (1..=12u64)
        .map(|seq| {
            let collector = if seq == 6 { "poison" } else { "app" };
            let mut b =
                Batch::new("web1", KEY, seq).body(serde_json::to_vec(&body(collector)).unwrap());
            b.instance = "i2".into();
            b
        })
        .collect();
    let answers = futures::future::join_all(batches.iter().map(|b| client.send(b))).await;
    for (b, (status, answer)) in batches.iter().zip(&answers) {
        if b.seq == 6 {
            assert_eq!(*status, 400, "{answer}");
            assert_eq!(answer["error"], Fault::Data.public_message());
            assert_no_database_words(answer);
        } else {
            assert_eq!(*status, 200, "seq {}: {answer}", b.seq);
        }
    }
    let stored = store
        .stored_sequences("web1")
        .await
        .unwrap()
        .into_iter()
        .filter(|(instance, _)| instance == "i2")
        .count();
    assert_eq!(stored, 11);
    ctl.stop().await;
}

both_backends!(an_unavailable_store_answers_503_in_our_words);

async fn an_unavailable_store_answers_503_in_our_words(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = controller(&env).await;
    let client = ctl.client();
    let (status, _) = client.send(&Batch::new("web1", KEY, 1)).await;
    assert_eq!(status, 200);
    // The controller's pool, closed under it: every use of the store now fails.
    ctl.store.close().await;

    let (status, answer) = client
        .post(
            "/api/v1/events",
            serde_json::json!({"service": "backup", "message": "done"}).to_string(),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "the store is unavailable; retry later");
    let batch = Batch {
        body: serde_json::to_vec(&body_with_samples(2, 1)).unwrap(),
        ..Batch::new("web1", KEY, 2)
    };
    let (status, answer) = client.send(&batch).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "the store is unavailable; retry later");
    let (status, answer) = client.get("/api/v1/events").await;
    assert_eq!(status, 503, "{answer}");
    assert_no_database_words(&answer);
    let ready = reqwest::Client::new()
        .get(format!("{}/readyz", ctl.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["durable"], "the store is unavailable; retry later");
    // Its store is gone: it is only dropped (which cancels it), not stopped cleanly.
    drop(ctl);
}

both_backends!(a_node_report_with_nuls_keeps_its_output_and_escapes_its_error);

/// A command's output may hold NUL bytes: kept exactly (inside the JSON result). Its error text
/// also goes to the audit trail and the error log as plain text: there a NUL is written `\0`
/// rather than refused, which would fail the report (and the agent would resend it forever).
async fn a_node_report_with_nuls_keeps_its_output_and_escapes_its_error(backend: Backend) {
    let rig = crate::commands::Rig::new(backend).await;
    let key = crate::harness::enroll(&rig.env, "raw");
    let cmd = rig.command("raw", fleet::command::Method::Echo, &["a"]);
    let (status, _) = rig.submit(std::slice::from_ref(&cmd)).await;
    assert_eq!(status, 201);
    // The node's enrollment reaches the controller's registry within its refresh (2 s).
    rig.wait_enrolled(&["raw"]).await;
    let id = cmd.command.id.as_str();
    let body = serde_json::json!({ "reports": [{
        "id": id, "state": "failed",
        "result": { "exit_code": 1, "stdout": "out\u{0}put", "error": "bad\u{0}thing" },
    }]})
    .to_string();
    let path = "/api/v1/agent/reports";
    let response = rig
        .agent_request(
            "raw",
            &key,
            reqwest::Method::POST,
            path,
            &format!("POST {path}"),
            &body,
        )
        .await;
    assert_eq!(response.status(), 200);
    let v = rig.wait_state(id, "failed").await;
    assert_eq!(v["result"]["stdout"], "out\u{0}put", "output kept exactly");
    assert_eq!(
        v["result"]["error"], "bad\u{0}thing",
        "the result as the node sent it"
    );
    let log = v["log"].as_array().unwrap();
    assert!(
        log.iter().any(|e| e["detail"] == "bad\\0thing"),
        "the audit trail's text, escaped: {v}"
    );
    let errors = rig.api_get("/api/v1/errors?node=raw").await;
    assert!(
        errors.to_string().contains(r"bad\\0thing"),
        "the error log's text, escaped: {errors}"
    );
}
