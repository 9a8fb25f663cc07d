//! The dashboard over HTTP: login and sessions, the overview, escaping, CSRF and cross-site
//! posts, the address allowlist. (The browser tests drive the same pages in Chromium.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::both_backends;
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

/// What in `html` the dashboard's Content Security Policy would refuse: a `<style>` element, a
/// `style` attribute (SVG's too), a `<script>` without `src` or with content, an `on…` handler
/// attribute, a `javascript:` URL. Tags are read as a browser reads them: maud escapes `<` in
/// text and `"` and `>` in attribute values, so text that merely mentions these (an escaped
/// label such as `"><img onerror=…>`) is not a tag and does not count.
pub(crate) fn inline_code(html: &str) -> Vec<String> {
    static ATTRIBUTE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?"#)
            .unwrap()
    });
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue; // a closing tag, a comment, the doctype
        }
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        let mut has_src = false;
        for attribute in ATTRIBUTE.captures_iter(&tag[name_end..]) {
            let attr = attribute[1].to_ascii_lowercase();
            let value = [2, 3, 4]
                .iter()
                .find_map(|i| attribute.get(*i))
                .map_or("", |m| m.as_str());
            if attr == "style" || attr.starts_with("on") {
                found.push(format!("a {attr}= attribute in <{tag}>"));
            }
            if value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("javascript:")
            {
                found.push(format!("a javascript: URL in <{tag}>"));
            }
            has_src |= attr == "src";
        }
        if name == "style" {
            found.push(format!("a <style> element: <{tag}>"));
        }
        if name == "script" && !(has_src && rest[end..].starts_with("></script>")) {
            found.push(format!("an inline script: <{tag}>"));
        }
        rest = &rest[end..];
    }
    found
}

/// Fails if `html` (the page or fragment `what`) holds anything [`inline_code`] finds.
#[track_caller]
pub(crate) fn assert_no_inline_code(what: &str, html: &str) {
    let found = inline_code(html);
    assert!(
        found.is_empty(),
        "{what} holds what the dashboard's CSP refuses: {found:#?}\n{html}"
    );
}

/// Fails unless `headers` (of the response to `what`) carry every security header, as sent.
#[track_caller]
pub(crate) fn assert_security_headers(what: &str, headers: &reqwest::header::HeaderMap) {
    for (name, value) in fleet::web::SECURITY_HEADERS {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{what}: {name}"
        );
    }
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

/// The scan that every page of these tests and ui_pages.rs passes can fail: it finds each kind
/// of inline code the CSP refuses, and not text that only mentions it.
#[test]
fn the_inline_code_scan_finds_what_the_csp_refuses() {
    for bad in [
        "<p style=\"color: red\">x</p>",
        "<svg><rect STYLE='fill: red'/></svg>",
        "<style>p { color: red }</style>",
        "<script>alert(1)</script>",
        "<script src=\"/ui/live.js\">alert(1)</script>",
        "<button type=\"button\" onclick=\"go()\">go</button>",
        "<img src=x onerror=alert(2)>",
        "<a href=\"javascript:alert(3)\">x</a>",
    ] {
        assert_eq!(inline_code(bad).len(), 1, "{bad}");
    }
    let good = "<!DOCTYPE html><html><head><script src=\"/ui/live.js\" defer></script>\
        <link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body>\
        <td>&quot;&gt;&lt;img src=x onerror=alert(2)&gt; style=&quot;x&quot; &lt;script&gt;</td>\
        <svg viewBox=\"0 0 1 1\"><rect width=\"1\" fill=\"#0969da\"></rect></svg>\
        <input value=\"&quot; onfocus=&quot;x\"></body></html>";
    assert_eq!(inline_code(good), Vec::<String>::new());
}

/// Issue 14, point 7: every response carries the security headers (a page, a live stream and
/// its fragments, the login page and a failed login, the stylesheet, the script, a sparkline,
/// a 404, the JSON API and its refusals, the watchTower listener), and no page holds inline
/// style or script (the browser tests see what the CSP refuses; this reads every page's HTML).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers_and_no_page_holds_inline_code() {
    let env = Env::new(Backend::Embedded).await;
    let key = "key-of-web1-0123456789";
    let watchtower: std::net::SocketAddr = format!("127.0.0.1:{}", crate::harness::free_port())
        .parse()
        .unwrap();
    let ui = Ui::start(&env, |config| {
        let mut web1 = node("web1", key, &[]);
        web1.labels = BTreeMap::from([("role".to_owned(), "<b style=\"x\">web</b>".to_owned())]);
        config.nodes = vec![web1];
        config.compat.watchtower = Some(fleet::config::WatchtowerConfig {
            listen: watchtower,
            password: "watchtower-password".into(),
            tls_cert: None,
            tls_key: None,
        });
    })
    .await;
    // Samples for the charts (their legends' swatches) and the sparklines, an event, a
    // heartbeat (the node's pulse), so every page shows what it can.
    let now = fleet::timefmt::now_ms();
    for (seq, cpu) in [(1, 20.0), (2, 35.0)] {
        let body = fleet::model::BatchBody {
            interval_ms: 10_000,
            dropped_batches: 0,
            records: vec![fleet::model::Record {
                collector: "system".into(),
                ts: now - 20_000 + seq as i64 * 10_000,
                data: serde_json::json!({ "note": "<i style=\"x\" onclick=\"y\">" }),
                samples: vec![
                    fleet::model::Sample::new("cpu.used_percent", cpu),
                    fleet::model::Sample::new("memory.used_percent", 40.0),
                    fleet::model::Sample::new("load.1", 0.5),
                ],
            }],
        };
        let batch =
            crate::harness::Batch::new("web1", key, seq).body(serde_json::to_vec(&body).unwrap());
        let (status, answer) = ui.c.client().send(&batch).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = ui
        .c
        .client()
        .post(
            "/api/v1/events",
            serde_json::json!({ "node": "web1", "level": "error", "message": "<style>x</style>" })
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let cookie = ui.log_in().await;

    // Pages: their headers, and nothing inline.
    let page = |path: &'static str, cookie: Option<String>| {
        let ui = &ui;
        async move {
            let response = ui.get(path, cookie.as_deref()).await;
            assert_eq!(response.status(), 200, "GET {path}");
            assert_security_headers(path, response.headers());
            let html = response.text().await.unwrap();
            assert_no_inline_code(path, &html);
            html
        }
    };
    let login = page("/login?next=%2F", None).await;
    assert!(
        login.contains("<script src=\"/ui/live.js\" defer></script>"),
        "{login}"
    );
    let node_page = page("/nodes/web1", Some(cookie.clone())).await;
    assert!(
        node_page.contains("class=\"swatch\""),
        "the charts' legends are on the page: {node_page}"
    );
    for path in [
        "/",
        "/?status=up",
        "/events",
        "/errors",
        "/heartbeats",
        "/commands",
    ] {
        page(path, Some(cookie.clone())).await;
    }
    let failed = ui
        .post_form(
            "/login",
            &[("token", "not-a-token"), ("next", "/")],
            None,
            None,
        )
        .await;
    assert_eq!(failed.status(), 401);
    assert_security_headers("a failed login", failed.headers());
    assert_no_inline_code("a failed login", &failed.text().await.unwrap());
    let overview = page("/", Some(cookie.clone())).await;
    let confirm = ui
        .post_form(
            "/commands/confirm",
            &[
                ("csrf", &csrf_of(&overview)),
                ("targets", "web1"),
                ("command", "uptime"),
                ("timeout", ""),
            ],
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(confirm.status(), 200);
    assert_security_headers("the command form's confirmation", confirm.headers());
    let confirm = confirm.text().await.unwrap();
    assert!(confirm.contains("id=\"fleet-send\""), "{confirm}");
    assert_no_inline_code("the command form's confirmation", &confirm);

    // A live stream: its headers, and the fragments it sends.
    let mut stream = ui
        .http
        .get(ui.url("/live/overview"))
        .header("cookie", &cookie)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_security_headers("/live/overview", stream.headers());
    let text = read_until(&mut stream, 10, |t| {
        t.contains("node-web1") && t.contains("id=\"counts\"")
    })
    .await;
    assert!(text.contains("<tr id=\"node-web1\">"), "{text}");
    let fragments: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_no_inline_code("/live/overview's fragments", &fragments);
    drop(stream);

    // What pages load, the rest of the API, refusals.
    for (path, cookie, status, kind) in [
        ("/ui/app.css", None, 200, "text/css"),
        ("/ui/live.js", None, 200, "text/javascript"),
        (
            "/ui/spark/web1/cpu.svg",
            Some(cookie.as_str()),
            200,
            "image/svg+xml",
        ),
        ("/no/such/page", None, 404, ""),
        ("/api/v1/nodes", None, 401, "application/json"),
        ("/healthz", None, 200, ""),
    ] {
        let response = ui.get(path, cookie).await;
        assert_eq!(response.status(), status, "GET {path}");
        assert_security_headers(path, response.headers());
        let got = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(got.starts_with(kind), "GET {path}: {got}");
        if kind == "image/svg+xml" {
            assert_no_inline_code(path, &response.text().await.unwrap());
        }
    }
    let api = ui
        .http
        .get(ui.url("/api/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    assert_security_headers("the JSON API", api.headers());
    let ingest = ui
        .http
        .post(ui.url("/api/v1/ingest"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(ingest.status().is_client_error(), "{}", ingest.status());
    assert_security_headers("a refused batch", ingest.headers());
    let hello = ui
        .http
        .get(format!("http://{watchtower}/hello"))
        .header("password", "watchtower-password")
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    assert_security_headers("the watchTower listener", hello.headers());
    ui.c.stop().await;
}

const ALICE_PASSWORD: &str = "correct horse battery staple";

/// The dashboard settings of the login tests: one user, alice, and failed logins that first
/// wait `backoff`.
fn alice(backoff: &str) -> fleet::config::UiConfig {
    fleet::config::UiConfig {
        users: vec![fleet::config::UiUser {
            name: "alice".into(),
            password_hash: fleet::web::ui::session::hash_password(ALICE_PASSWORD),
        }],
        login_backoff: humantime::parse_duration(backoff).unwrap(),
        ..Default::default()
    }
}

/// A client whose requests come from the loopback address `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One login from the loopback address `from`: the status, Retry-After (if any), the page.
async fn login_from(ui: &Ui, from: &str, form: &[(&str, &str)]) -> (u16, Option<u64>, String) {
    login_with(ui, &client_from(from), form).await
}

async fn login_with(
    ui: &Ui,
    http: &reqwest::Client,
    form: &[(&str, &str)],
) -> (u16, Option<u64>, String) {
    let body = {
        let mut url = reqwest::Url::parse("http://x/").unwrap();
        url.query_pairs_mut().extend_pairs(form);
        url.query().unwrap_or_default().to_owned()
    };
    let response = http
        .post(ui.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("log in: {e}"));
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, response.text().await.unwrap())
}

async fn password_from(
    ui: &Ui,
    from: &str,
    user: &str,
    password: &str,
) -> (u16, Option<u64>, String) {
    login_from(
        ui,
        from,
        &[("user", user), ("password", password), ("next", "/")],
    )
    .await
}

/// A 429 that says, in its page and its Retry-After, when to try again (at most `max_s`).
#[track_caller]
fn told_to_wait(what: &str, (status, retry_after, page): &(u16, Option<u64>, String), max_s: u64) {
    assert_eq!(*status, 429, "{what}: {page}");
    let retry_after = retry_after.unwrap_or_else(|| panic!("{what}: a 429 says when to retry"));
    assert!((1..=max_s).contains(&retry_after), "{what}: {retry_after}");
    let says = format!("Too many failed logins; try again in {retry_after} s.");
    assert!(page.contains(&says), "{what}: {page}");
}

/// Issue 14, point 8: after five wrong passwords for alice from 127.0.0.2, the next attempt
/// from there is refused at once, 429 with Retry-After, even with the right password (so the
/// password was not checked); alice from 127.0.0.1 logs in all the same; and the failures are
/// in the store, so another controller on the same database refuses the same.
async fn wrong_passwords_back_off_the_address_not_the_real_user(backend: Backend) {
    let env = Env::new(backend).await;
    let ui = Ui::start(&env, |config| config.ui = alice("60s")).await;
    for i in 1..=5 {
        let (status, _, page) = password_from(&ui, "127.0.0.2", "alice", "guess").await;
        assert_eq!(status, 401, "wrong password {i}: {page}");
        assert!(
            page.contains("That name and password do not match."),
            "{page}"
        );
    }
    let refused = password_from(&ui, "127.0.0.2", "alice", ALICE_PASSWORD).await;
    told_to_wait("the right password from 127.0.0.2, unchecked", &refused, 60);
    let (status, _, page) = password_from(&ui, "127.0.0.1", "alice", ALICE_PASSWORD).await;
    assert_eq!(status, 303, "alice from her own address: {page}");

    let second = Ui::start(&env, |config| config.ui = alice("60s")).await;
    let refused = password_from(&second, "127.0.0.2", "alice", ALICE_PASSWORD).await;
    told_to_wait("another controller on the same database", &refused, 60);
    second.c.stop().await;
    ui.c.stop().await;
}

both_backends!(wrong_passwords_back_off_the_address_not_the_real_user);

/// A spray of wrong passwords for alice from many addresses (four from each, under every
/// address's and pair's limit) holds the name back, but not where alice logged in before:
/// 127.0.0.1 gets in, a new address waits. Another name from the new address is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_from_many_addresses_holds_the_name_back_but_not_where_it_logged_in() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.ui = alice("60s")).await;
    let (status, _, page) = password_from(&ui, "127.0.0.1", "alice", ALICE_PASSWORD).await;
    assert_eq!(status, 303, "{page}");
    for from in 2..=6 {
        for _ in 0..4 {
            let (status, _, page) =
                password_from(&ui, &format!("127.0.0.{from}"), "alice", "guess").await;
            assert_eq!(status, 401, "from 127.0.0.{from}: {page}");
        }
    }
    let (status, _, page) = password_from(&ui, "127.0.0.1", "alice", ALICE_PASSWORD).await;
    assert_eq!(status, 303, "alice where she logged in before: {page}");
    let refused = password_from(&ui, "127.0.0.7", "alice", ALICE_PASSWORD).await;
    told_to_wait("alice from a new address", &refused, 60);
    let (status, _, page) = password_from(&ui, "127.0.0.7", "bob", "a password").await;
    assert_eq!(status, 401, "another name from there is checked: {page}");
    ui.c.stop().await;
}

/// The wait ends: after it the right password gets in. A success clears its pair's count:
/// four more wrong passwords from there do not reach the limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_expires_and_a_success_starts_the_count_again() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.ui = alice("3s")).await;
    for _ in 0..5 {
        let (status, _, page) = password_from(&ui, "127.0.0.3", "alice", "guess").await;
        assert_eq!(status, 401, "{page}");
    }
    let refused = password_from(&ui, "127.0.0.3", "alice", ALICE_PASSWORD).await;
    told_to_wait("after five wrong passwords", &refused, 3);
    tokio::time::sleep(Duration::from_millis(refused.1.unwrap() * 1000 + 200)).await;
    let (status, _, page) = password_from(&ui, "127.0.0.3", "alice", ALICE_PASSWORD).await;
    assert_eq!(status, 303, "once the wait is over: {page}");
    for _ in 0..4 {
        let (status, _, page) = password_from(&ui, "127.0.0.3", "alice", "guess").await;
        assert_eq!(status, 401, "{page}");
    }
    let (status, _, page) = password_from(&ui, "127.0.0.3", "alice", ALICE_PASSWORD).await;
    assert_eq!(
        status, 303,
        "nine failures, but four since the success: {page}"
    );
    ui.c.stop().await;
}

/// Wrong operator tokens count against their address: the eleventh attempt waits, even with
/// the right token; the right token from elsewhere gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_back_off_their_address() {
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |_| {}).await;
    for i in 1..=10 {
        let (status, _, page) =
            login_from(&ui, "127.0.0.4", &[("token", &format!("guess-{i}"))]).await;
        assert_eq!(status, 401, "{page}");
        assert!(page.contains("That token is not valid."), "{page}");
    }
    let refused = login_from(&ui, "127.0.0.4", &[("token", TOKEN)]).await;
    told_to_wait("the right token from 127.0.0.4", &refused, 1);
    let (status, _, page) = login_from(&ui, "127.0.0.1", &[("token", TOKEN)]).await;
    assert_eq!(status, 303, "{page}");
    ui.c.stop().await;
}

/// The store's side, with its clock given: failures past the threshold double the wait up to
/// the cap; concurrent failures all count (several controllers share the database); a quiet
/// period forgets them, a clear drops them; a login is known where and while it happened.
async fn the_store_counts_login_failures_and_forgets_them(backend: Backend) {
    use fleet::store::logins::Backoff;
    let env = Env::new(backend).await;
    let store = env.store().await;
    let backoff = Backoff {
        threshold: 2,
        first_ms: 1_000,
        max_ms: 4_000,
        forget_ms: 10_000,
    };
    let key = "pair:192.0.2.1|alice";
    let mut next = Vec::new();
    for t in 0..5 {
        let standing = store.record_login_failure(key, &backoff, t).await.unwrap();
        assert_eq!(standing.failures, t + 1);
        next.push(standing.next_allowed_ms);
    }
    assert_eq!(next, [0, 1_001, 2_002, 4_003, 4_004]);
    let keys = [key.to_owned(), "addr:192.0.2.1".to_owned()];
    let now = store.login_failures(&keys, 4 - 10_000).await.unwrap();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].next_allowed_ms, 4_004);
    // Quiet for longer than forget_ms: forgotten, and counted from one again.
    let later = 4 + 10_001;
    assert!(
        store
            .login_failures(&keys, later - 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .record_login_failure(key, &backoff, later)
        .await
        .unwrap();
    assert_eq!(
        (again.failures, again.next_allowed_ms),
        (1, later),
        "no wait"
    );
    store.clear_login_failures(key).await.unwrap();
    assert!(store.login_failures(&keys, 0).await.unwrap().is_empty());

    futures::future::join_all((0..20).map(|_| {
        let store = store.clone();
        async move {
            store
                .record_login_failure("user:alice", &backoff, 50_000)
                .await
                .unwrap()
        }
    }))
    .await;
    let counted = store
        .login_failures(&["user:alice".to_owned()], 0)
        .await
        .unwrap();
    assert_eq!(counted[0].failures, 20, "every failure counts, once");
    assert_eq!(
        counted[0].next_allowed_ms,
        50_000 + 4_000,
        "the longest wait holds"
    );

    store
        .record_login_success("alice", "192.0.2.1", 60_000, 0)
        .await
        .unwrap();
    assert!(
        store
            .login_known("alice", "192.0.2.1", 59_999)
            .await
            .unwrap()
    );
    assert!(
        !store
            .login_known("alice", "192.0.2.1", 60_001)
            .await
            .unwrap()
    );
    assert!(!store.login_known("alice", "192.0.2.2", 0).await.unwrap());
}

both_backends!(the_store_counts_login_failures_and_forgets_them);

/// A flood of password logins from many addresses (each under every limit, so each would be
/// checked) is answered at once: checked and refused (401), or "busy" (503, Retry-After)
/// after a short wait for a check, never a long queue. Meanwhile alice, from where she logged
/// in before, gets a check of her own and logs in: the flood keeps coming while she does, so
/// in the line for the other checks she would always have someone ahead of her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_password_logins_is_answered_quickly_and_the_known_user_gets_in() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new(Backend::Embedded).await;
    let ui = Ui::start(&env, |config| config.ui = alice("60s")).await;
    let (status, _, page) = password_from(&ui, "127.0.0.1", "alice", ALICE_PASSWORD).await;
    assert_eq!(status, 303, "{page}");
    // 40 logins in flight at all times, each a new name (so no name's limit is reached), from
    // 120 addresses in turn (each far under its limit), the first 40 spread over a second so
    // that they keep arriving evenly: every moment someone is waiting who came less than a
    // second ago.
    const IN_FLIGHT: usize = 40;
    let clients: Vec<_> = (1..=120)
        .map(|i| client_from(&format!("127.0.2.{i}")))
        .collect();
    let alice_client = client_from("127.0.0.1");
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let flood = async {
        let mut answers = Vec::new();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut n = 0;
        loop {
            while !done.load(Ordering::Relaxed) && in_flight.len() < IN_FLIGHT {
                let (ui, http, name) = (&ui, &clients[n % clients.len()], format!("user{n}"));
                let stagger = Duration::from_millis(25 * n.min(IN_FLIGHT) as u64);
                let first = n < IN_FLIGHT;
                in_flight.push(async move {
                    if first {
                        tokio::time::sleep(stagger).await;
                    }
                    let form = [
                        ("user", name.as_str()),
                        ("password", "guess"),
                        ("next", "/"),
                    ];
                    login_with(ui, http, &form).await
                });
                n += 1;
            }
            match in_flight.next().await {
                Some(answer) => answers.push(answer),
                None => return answers,
            }
        }
    };
    let alice = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at = Instant::now();
        let form = [
            ("user", "alice"),
            ("password", ALICE_PASSWORD),
            ("next", "/"),
        ];
        let answer = login_with(&ui, &alice_client, &form).await;
        done.store(true, Ordering::Relaxed);
        (answer, at.elapsed())
    };
    let (answers, ((status, _, page), alice_took)) = tokio::join!(flood, alice);
    let flood_took = started.elapsed();
    assert_eq!(
        status, 303,
        "alice during the flood, after {alice_took:?}: {page}"
    );
    let mut busy = 0;
    for (status, retry_after, page) in &answers {
        match status {
            401 => assert!(
                page.contains("That name and password do not match."),
                "{page}"
            ),
            503 => {
                busy += 1;
                assert_eq!(*retry_after, Some(2), "{page}");
                assert!(
                    page.contains("Too many logins are being checked at once"),
                    "{page}"
                );
            }
            other => panic!("a login of the flood was answered {other}: {page}"),
        }
    }
    eprintln!(
        "{} logins, 40 at a time: {busy} busy, {} checked, in {flood_took:?}; alice in {alice_took:?}",
        answers.len(),
        answers.len() - busy
    );
    // Each check costs Argon2's tens of milliseconds (far more in a debug build): with a few
    // checks at once, most of 40 at a time cannot be checked within a second's wait.
    assert!(
        busy > 0,
        "no login of the flood was told the checks are busy"
    );
    assert!(
        alice_took < Duration::from_secs(10),
        "alice waited {alice_took:?}"
    );
    ui.c.stop().await;
}
