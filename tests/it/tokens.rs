//! Operator tokens listed and revoked (`fleet token list | revoke`, `GET /api/v1/tokens`,
//! `DELETE /api/v1/tokens/{id}`): never a secret or a full hash shown, last use written at most
//! once a minute, and a revoked token refused at once with its open event stream and its
//! dashboard session (and that session's live stream) ended.

use std::time::{Duration, Instant};

use crate::both_backends;
use crate::harness::{Backend, Client, Env, InProcess, eventually, run_fleet};

fn fleet_with(env: &Env, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(env.store_flags());
    run_fleet(&all)
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Reads a streamed response until it ends (`true`) or `secs` pass (`false`).
async fn ends_within(response: &mut reqwest::Response, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), response.chunk()).await {
            Ok(Ok(None)) | Ok(Err(_)) => return true,
            Ok(Ok(Some(_))) | Err(_) => {}
        }
    }
    false
}

async fn tokens_are_listed_and_a_revoked_one_stops_at_once(backend: Backend) {
    let env = Env::new(backend).await;
    let ctl = InProcess::start(env.controller_config()).await;
    let admin = ctl.client();

    let (ok, out, err) = fleet_with(&env, &["token", "create", "--label", "ci job"]);
    assert!(ok, "{err}");
    let ci_token = out.trim().to_owned();
    let ci = Client::new(&ctl.url, &ci_token);
    let ci_id = sha256_hex(&ci_token)[..16].to_owned();
    eventually(
        Duration::from_secs(5),
        "the new token to be accepted",
        || {
            let ci = &ci;
            async move { (ci.get("/api/v1/nodes").await.0 == 200).then_some(()) }
        },
    )
    .await;

    // Listed: labels, ids, created, last used; never the secret, never the full hash.
    let listed = eventually(Duration::from_secs(5), "the use to be noted", || {
        let admin = &admin;
        let ci_id = ci_id.clone();
        async move {
            let (status, body) = admin.get("/api/v1/tokens").await;
            assert_eq!(status, 200, "{body}");
            let ci = body["tokens"]
                .as_array()?
                .iter()
                .find(|t| t["id"] == ci_id.as_str())?
                .clone();
            (!ci["last_used_ms"].is_null()).then_some((body, ci))
        }
    })
    .await;
    let (body, ci_entry) = listed;
    let text = body.to_string();
    for secret in [&ci_token, &ctl.token] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is listed: {text}"
        );
        assert!(
            !text.contains(&sha256_hex(secret)),
            "a full hash is listed: {text}"
        );
    }
    assert_eq!(body["tokens"].as_array().unwrap().len(), 2, "{text}");
    assert_eq!(ci_entry["label"], "ci job");
    assert_eq!(ci_entry["source"], "store");
    assert!(ci_entry["created_at"].is_string() && ci_entry["revoked_at"].is_null());
    // Used again within the minute: not written again.
    let first_use = ci_entry["last_used_ms"].as_i64().unwrap();
    assert_eq!(ci.get("/api/v1/nodes").await.0, 200);
    ctl.store
        .token_used(&sha256_hex(&ci_token), first_use + 1_000)
        .await
        .unwrap();
    let (_, body) = admin.get("/api/v1/tokens").await;
    let again = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == ci_id.as_str())
        .unwrap()["last_used_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(
        again, first_use,
        "last use is written at most once a minute"
    );

    // The CLI lists the same, aligned, without secrets.
    let (ok, out, err) = fleet_with(&env, &["token", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains(&ci_id) && out.contains("ci job") && out.contains("first start"),
        "{out}"
    );
    assert!(
        !out.contains(&ci_token) && !out.contains(&ctl.token),
        "{out}"
    );
    let created = out.lines().next().unwrap().find("CREATED").unwrap();
    assert!(
        out.lines().skip(1).all(|l| l[created..].starts_with("20")),
        "aligned, a creation time under CREATED on every line: {out}"
    );

    // What the token holds open: an event stream, a dashboard session and its live stream.
    let mut events = ci
        .http
        .get(format!("{}/api/v1/stream", ctl.url))
        .bearer_auth(&ci_token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let (browser, cookie) = crate::harness::dashboard_login(&ctl.url, &ci_token).await;
    let page = |path: &'static str| {
        browser
            .get(format!("{}{path}", ctl.url))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(page("/").await.unwrap().status(), 200);
    let mut live = page("/live/overview").await.unwrap();
    assert_eq!(live.status(), 200);

    // Refused: bad ids change nothing.
    let (status, answer) = admin.delete("/api/v1/tokens/nonsense").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("fleet token list")
    );
    let (status, answer) = admin.delete("/api/v1/tokens/0123456789abcdef").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(ci.get("/api/v1/nodes").await.0, 200);

    // Revoked: refused at once here, its stream and session end.
    let (status, answer) = admin.delete(&format!("/api/v1/tokens/{ci_id}")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["revoked_at"].is_string(), "{answer}");
    let (status, _) = ci.get("/api/v1/nodes").await;
    assert_eq!(
        status, 401,
        "refused at once on the controller that revoked it"
    );
    assert!(ends_within(&mut events, 5).await, "the event stream ends");
    assert!(
        ends_within(&mut live, 5).await,
        "the dashboard's live stream ends"
    );
    assert_eq!(
        page("/").await.unwrap().status(),
        303,
        "the session is over"
    );
    let (status, _) = admin.get("/api/v1/nodes").await;
    assert_eq!(status, 200, "other tokens work on");

    // Listed as revoked; revoking again changes nothing.
    let (_, body) = admin.get("/api/v1/tokens").await;
    let entry = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == ci_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["revoked_at"], answer["revoked_at"]);
    let (status, twice) = admin.delete(&format!("/api/v1/tokens/{ci_id}")).await;
    assert_eq!((status, &twice["revoked_at"]), (200, &answer["revoked_at"]));

    // The CLI revokes too: the running controller refuses the token within its refresh.
    let admin_id = sha256_hex(&ctl.token)[..16].to_owned();
    let (ok, out, err) = fleet_with(&env, &["token", "revoke", "nothex"]);
    assert!(!ok && err.contains("not a token id"), "{out}{err}");
    let (ok, out, err) = fleet_with(&env, &["token", "revoke", &admin_id]);
    assert!(
        ok && out.contains("revoked token") && out.contains("first start"),
        "{out}{err}"
    );
    let revoked = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the CLI's revocation to reach the controller",
        || {
            let admin = &admin;
            async move { (admin.get("/api/v1/nodes").await.0 == 401).then_some(()) }
        },
    )
    .await;
    assert!(revoked.elapsed() < Duration::from_secs(5));
    let (ok, out, _) = fleet_with(&env, &["token", "list"]);
    assert!(ok);
    assert!(
        out.lines()
            .filter(|l| l.contains(&ci_id) || l.contains(&admin_id))
            .all(|l| l.ends_with('Z')),
        "both revoked, with a time: {out}"
    );
    ctl.stop().await;
}

both_backends!(tokens_are_listed_and_a_revoked_one_stops_at_once);

/// A token of the config file is listed as such and cannot be revoked here (it says where).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_token_is_listed_and_its_revocation_says_where_it_lives() {
    let env = Env::new(Backend::Embedded).await;
    let mut config = env.controller_config();
    config.api_tokens = vec!["config-token-0123456789abcdef".into()];
    let ctl = InProcess::start(config).await;
    let (status, body) = ctl.client().get("/api/v1/tokens").await;
    assert_eq!(status, 200);
    let tokens = body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{body}");
    assert_eq!(tokens[0]["source"], "config");
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    let (status, answer) = ctl.client().delete(&format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("api_tokens"),
        "{answer}"
    );
    assert_eq!(ctl.client().get("/api/v1/nodes").await.0, 200);
    ctl.stop().await;
}
