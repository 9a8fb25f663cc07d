//! The dashboard's small words: counts in the singular, spans written one way, an empty
//! Commands history that names a node that exists, and the favicon (a route, as the CSP wants).

use std::time::Duration;

use serde_json::json;

use crate::harness::{Backend, Env, InProcess, eventually, node};

const TOKEN: &str = "words-test-operator-token";

struct Page {
    c: InProcess,
    http: reqwest::Client,
    cookie: String,
}

impl Page {
    async fn start(env: &Env, nodes: Vec<fleet::config::StaticNode>) -> Self {
        let mut config = env.controller_config();
        config.api_tokens = vec![TOKEN.into()];
        config.nodes = nodes;
        let c = InProcess::start(config).await;
        let (http, cookie) = crate::harness::dashboard_login(&c.url, TOKEN).await;
        Self { c, http, cookie }
    }

    async fn get(&self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.c.url))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heartbeat_down_is_singular_and_spans_read_alike() {
    let env = Env::new(Backend::Embedded).await;
    let page = Page::start(&env, vec![]).await;
    let api = page.c.client();
    for body in [
        json!({ "service": "quick", "next_in": 1, "grace": 0 }),
        json!({ "service": "nightly", "next_in": "1d", "grace": "1h" }),
    ] {
        let (status, v) = api.post("/api/v1/heartbeats", body.to_string()).await;
        assert_eq!(status, 200, "{v}");
    }
    let overview = eventually(Duration::from_secs(10), "one heartbeat down", || async {
        let overview = page.get("/").await;
        overview.contains(">1 heartbeat down<").then_some(overview)
    })
    .await;
    assert!(!overview.contains("1 heartbeats down"), "{overview}");
    assert!(
        overview.contains(">0 commands failed (24 h)<"),
        "{overview}"
    );
    let beats = page.get("/heartbeats").await;
    assert!(beats.contains("every 1 d + 1 h grace"), "{beats}");
    assert!(beats.contains("every 1 s, no grace"), "{beats}");
    assert!(!beats.contains("1day"), "{beats}");
    page.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_command_history_names_a_node_that_exists() {
    let env = Env::new(Backend::Embedded).await;
    let page = Page::start(
        &env,
        vec![
            node("zeta", "key-of-zeta-0123456789", &[]),
            node("alpha", "key-of-alpha-0123456789", &[]),
        ],
    )
    .await;
    let commands = page.get("/commands").await;
    assert!(
        commands.contains("fleet send --node alpha -- uptime"),
        "{commands}"
    );
    page.c.stop().await;

    let env = Env::new(Backend::Embedded).await;
    let page = Page::start(&env, vec![]).await;
    let commands = page.get("/commands").await;
    assert!(
        commands.contains("no node to send one to") && commands.contains("fleet node add NAME"),
        "{commands}"
    );
    page.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_favicon_is_a_route_of_this_origin() {
    let env = Env::new(Backend::Embedded).await;
    let page = Page::start(&env, vec![]).await;
    let overview = page.get("/").await;
    assert!(
        overview.contains("<link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">"),
        "{overview}"
    );
    for path in ["/favicon.svg", "/favicon.ico"] {
        // Served before logging in too: the login page shows it.
        let response = reqwest::get(format!("{}{path}", page.c.url)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
        assert!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("img-src 'self'")
        );
        let svg = response.text().await.unwrap();
        assert!(svg.starts_with("<svg") && !svg.contains("style"), "{svg}");
    }
    page.c.stop().await;
}
