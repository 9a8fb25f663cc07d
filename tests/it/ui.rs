//! The dashboard over HTTP: login and sessions, the overview, escaping, CSRF and cross-site
//! posts, the address allowlist. (The browser tests drive the same pages in Chromium.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{Backend, Env, InProcess, node};

const TOKEN: &str = "ui-test-operator-token";

struct Ui {
    c: InProcess,
    http: reqwest::Client,
}

impl Ui {
    async fn start(env: &Env, tweak: impl FnOnce(&mut fleet::config::ControllerConfig)) -> Self {
        let mut config = env.controller_config();
        config.api_tokens = vec![TOKEN.into()];
        tweak(&mut config);
        let c = InProcess::start(config).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self { c, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.c.url)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> reqwest::Response {
        let body: String = {
            let mut url = reqwest::Url::parse("http://x/").unwrap();
            url.query_pairs_mut().extend_pairs(form);
            url.query().unwrap_or_default().to_owned()
        };
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }

    /// Logs in and returns the `Cookie` header value.
    async fn log_in(&self) -> String {
        let response = self
            .post_form("/login", &[("token", TOKEN), ("next", "/")], None, None)
            .await;
        assert_eq!(response.status(), 303);
        let set = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        set.split(';').next().unwrap().to_owned()
    }
}

/// Reads a streamed response until `done` holds for all read so far, or `secs` pass; returns
/// what was read (the assertions after it say what was missing).
async fn read_until(
    stream: &mut reqwest::Response,
    secs: u64,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(&text) && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(1), stream.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    text
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_with_a_token_opens_the_overview_and_logging_out_closes_it() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![node("web1", "key-of-web1-0123456789", &[])];
    })
    .await;
    // Logged out: to the login page, and back afterwards.
    let response = ui.get("/?status=up", None).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/login?next=%2F%3Fstatus%3Dup"
    );
    let page = ui.get("/login?next=%2F", None).await.text().await.unwrap();
    assert!(page.contains("Operator token"), "{page}");

    let wrong = ui
        .post_form("/login", &[("token", "nope"), ("next", "/")], None, None)
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("That token is not valid.")
    );

    let response = ui
        .post_form(
            "/login",
            &[("token", TOKEN), ("next", "/?status=down")],
            None,
            None,
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/?status=down");
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();

    let page = ui.get("/", Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"node-web1\""), "{page}");
    assert!(
        page.contains("class=\"status down\">down<"),
        "a node never seen is down, in words: {page}"
    );
    assert!(page.contains("never"), "{page}");

    // Never an open redirect.
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let response = ui
            .post_form("/login", &[("token", TOKEN), ("next", next)], None, None)
            .await;
        assert_eq!(response.headers()["location"], "/", "{next}");
    }

    // Log out: the session is gone, here and for anyone holding the cookie.
    let csrf = csrf_of(&page);
    let response = ui
        .post_form("/logout", &[("csrf", &csrf)], Some(&cookie), None)
        .await;
    assert_eq!(response.status(), 303);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(ui.get("/", Some(&cookie)).await.status(), 303);
    ui.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_supplied_text_is_escaped_and_filters_narrow_the_overview() {
    let env = Env::new(Backend::Embedded).await;
    let mut evil = node("evil", "key-of-evil-0123456789", &[]);
    evil.labels = BTreeMap::from([
        ("role".to_owned(), "<script>alert(1)</script>".to_owned()),
        (
            "note".to_owned(),
            "\"><img src=x onerror=alert(2)>".to_owned(),
        ),
    ]);
    let mut web = node("web2", "key-of-web2-0123456789", &[]);
    web.labels = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
    let ui = Ui::start(&env, |config| config.nodes = vec![evil, web]).await;
    let cookie = ui.log_in().await;
    let page = ui.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    // A filter value comes back into the form escaped, too.
    let page = ui
        .get("/?label=role%3D%22%3E%3Cscript%3E", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("\"><script>"), "{page}");
    assert!(page.contains("No node matches these filters"), "{page}");
    let page = ui
        .get("/?label=role%3Dweb", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("node-web2") && !page.contains("node-evil"),
        "{page}"
    );
    let page = ui
        .get("/?status=up", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("No node matches"), "{page}");
    assert_eq!(
        ui.get("/?status=sideways", Some(&cookie)).await.status(),
        400
    );
    ui.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_fleet_says_how_to_enroll_a_first_node() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |_| {}).await;
    let cookie = ui.log_in().await;
    let page = ui.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(page.contains("No node is enrolled yet"), "{page}");
    assert!(page.contains("fleet node add web1"), "{page}");
    ui.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_and_forms_without_the_csrf_token_are_refused() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |_| {}).await;
    let cookie = ui.log_in().await;
    let page = ui.get("/", Some(&cookie)).await.text().await.unwrap();
    let csrf = csrf_of(&page);
    for (form, origin) in [
        (vec![("csrf", csrf.as_str())], Some("http://evil.example")),
        (vec![], None),
        (vec![("csrf", "0".repeat(64).as_str())], None),
    ] {
        let response = ui.post_form("/logout", &form, Some(&cookie), origin).await;
        assert_eq!(response.status(), 403, "{form:?} {origin:?}");
    }
    // Still logged in: nothing was changed by the refused posts.
    assert_eq!(ui.get("/", Some(&cookie)).await.status(), 200);
    let response = ui
        .post_form(
            "/login",
            &[("token", TOKEN)],
            None,
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(response.status(), 403);
    ui.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_only_the_allowed_networks() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| {
        config.ui.allow = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let response = ui.get("/login", None).await;
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("[ui] allow"));
    // The API is not the dashboard: its own rules apply.
    assert_eq!(ui.get("/healthz", None).await.status(), 200);
    ui.c.stop().await;
}

/// Sessions live in the store: a restarted controller (or another one on the same database)
/// honours them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_and_a_thousand_nodes_render() {
    let env = Env::new(Backend::Engines).await;
    let nodes: Vec<_> = (0..1000)
        .map(|i| node(&format!("n{i:04}"), "key-of-some-node-0123456789", &[]))
        .collect();
    let ui = Ui::start(&env, |config| config.nodes = nodes.clone()).await;
    let cookie = ui.log_in().await;
    ui.c.stop().await;
    let ui = Ui::start(&env, |config| config.nodes = nodes.clone()).await;
    let started = Instant::now();
    let response = ui.get("/", Some(&cookie)).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert_eq!(page.matches("<tr id=\"node-").count(), 1000);
    eprintln!(
        "the overview of 1,000 nodes: {} KiB in {elapsed:?} (debug build)",
        page.len() / 1024
    );
    ui.c.stop().await;
}

/// The overview follows the fleet live: a batch from a node that was down sends its row again,
/// rendered, now up; and a label with a carriage return travels escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_overview_sends_changed_rows() {
    let env = Env::new(Backend::Embedded).await;
    let key = "key-of-live1-0123456789";
    let mut live = node("live1", key, &[]);
    live.labels = BTreeMap::from([("note".to_owned(), "a\r\n<b>".to_owned())]);
    let ui = Ui::start(&env, |config| config.nodes = vec![live]).await;
    let cookie = ui.log_in().await;
    let page = ui.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(
        page.contains("data-live=\"/live/overview?rendered="),
        "{page}"
    );
    assert!(page.contains("<script src=\"/ui/live.js\""), "{page}");
    assert_eq!(ui.get("/ui/live.js", None).await.status(), 200);
    assert_eq!(
        ui.get("/live/overview", None).await.status(),
        303,
        "behind the login"
    );
    // The page's own stream URL: it starts from when the page was made, so the batch below
    // is sent however late the stream's first look comes.
    let at = page.find("data-live=\"").unwrap() + 11;
    let live = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
    let mut stream = ui.get(&live, Some(&cookie)).await;
    assert_eq!(stream.status(), 200);
    let (status, _) =
        ui.c.client()
            .send(&crate::harness::Batch::new("live1", key, 1))
            .await;
    assert_eq!(status, 200);
    let text = read_until(&mut stream, 15, |text| {
        text.contains("class=\"status up\">up<")
            && text.contains("<span>1 node</span><span class=\"status up\">1 up")
    })
    .await;
    assert!(text.contains("event: replace"), "{text}");
    assert!(text.contains("<tr id=\"node-live1\">"), "{text}");
    assert!(text.contains("class=\"status up\">up<"), "{text}");
    assert!(
        text.contains("&#13;") && text.contains("&lt;b&gt;"),
        "{text}"
    );
    assert!(text.contains("id=\"counts\""), "the counts follow: {text}");
    ui.c.stop().await;
}

/// A page that reconnects (its browser sends the last event id it saw) gets every row again,
/// at once: it may have missed changes while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_live_page_gets_every_row_again() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![
            node("r1", "key-of-r1-0123456789", &[]),
            node("r2", "key-of-r2-0123456789", &[]),
        ];
    })
    .await;
    let cookie = ui.log_in().await;
    let mut stream = ui
        .http
        .get(ui.url("/live/overview"))
        .header("cookie", &cookie)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let text = read_until(&mut stream, 10, |text| {
        text.contains("node-r1") && text.contains("node-r2") && text.contains("id=\"counts\"")
    })
    .await;
    assert!(
        text.contains("<tr id=\"node-r1\">") && text.contains("<tr id=\"node-r2\">"),
        "{text}"
    );
    assert!(
        text.contains("id: "),
        "events carry ids, so the next reconnect says so: {text}"
    );
    ui.c.stop().await;
}

/// What changed between the page and its stream's first look (a batch while the page loaded
/// its script) still reaches the page: the stream starts from when the page was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_the_page_and_its_stream_reaches_the_page() {
    let env = Env::new(Backend::Embedded).await;
    let key = "key-of-late1-0123456789";
    let ui = Ui::start(&env, |config| {
        config.nodes = vec![
            node("late1", key, &[]),
            node("quiet1", "key-of-quiet1-0123456789", &[]),
        ]
    })
    .await;
    let cookie = ui.log_in().await;
    let page = ui.get("/", Some(&cookie)).await.text().await.unwrap();
    let at = page.find("data-live=\"").unwrap() + 11;
    let live = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
    let (status, _) =
        ui.c.client()
            .send(&crate::harness::Batch::new("late1", key, 1))
            .await;
    assert_eq!(status, 200);
    let mut stream = ui.get(&live, Some(&cookie)).await;
    let text = read_until(&mut stream, 10, |text| text.contains("id=\"counts\"")).await;
    assert!(
        text.contains("<tr id=\"node-late1\">") && text.contains("class=\"status up\">up<"),
        "the row that changed since the page: {text}"
    );
    assert!(
        !text.contains("node-quiet1"),
        "a row that did not change is not sent again: {text}"
    );
    ui.c.stop().await;
}

/// Under a status filter, a node that left it between the page and its stream's first look
/// makes the page reload: its rows are no longer the filter's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_the_status_filter_before_the_stream_reloads_the_page() {
    let env = Env::new(Backend::Embedded).await;
    let key = "key-of-gone1-0123456789";
    let ui = Ui::start(&env, |config| config.nodes = vec![node("gone1", key, &[])]).await;
    let cookie = ui.log_in().await;
    let page = ui
        .get("/?status=down", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"node-gone1\""),
        "never seen: down: {page}"
    );
    let at = page.find("data-live=\"").unwrap() + 11;
    let live = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
    assert!(live.contains("rows="), "{live}");
    let (status, _) =
        ui.c.client()
            .send(&crate::harness::Batch::new("gone1", key, 1))
            .await;
    assert_eq!(status, 200);
    let mut stream = ui.get(&live, Some(&cookie)).await;
    let text = read_until(&mut stream, 10, |text| text.contains("event: reload")).await;
    assert!(text.contains("event: reload"), "{text}");
    ui.c.stop().await;
}
