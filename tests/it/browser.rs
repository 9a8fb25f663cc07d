//! The dashboard in a real browser: headless Chromium (Debian's `chromium`), driven over
//! WebDriver by `chromedriver` (Debian's `chromium-driver`) through fantoccini, against a
//! controller in process. These check what the HTTP tests in ui.rs cannot: that the pages work
//! as a person uses them (typing, clicking, redirects, cookies a script cannot read, forms
//! another site posts) and that they render. Each test starts its own chromedriver and Chromium
//! (own port, own profile) and talks only to 127.0.0.1 and 127.0.0.2. A PNG of each page is kept
//! in `<target>/browser-screenshots/` for a person to look at. Every test fails on any
//! Content Security Policy refusal Chromium logs (its console, read through chromedriver at
//! each screenshot and at the end): a page that needs an inline style or script is broken.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

use crate::harness::{Backend, Env, InProcess, free_port, node};

pub(crate) const TOKEN: &str = "browser-test-operator-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one wait for the browser lasts. Generous: Chromium starts slowly on a busy
/// two-core machine while the rest of the suite runs.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Where the screenshots go: next to the test binary's own target dir, so a custom
/// CARGO_TARGET_DIR (as scripts/test sets) is honoured.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-screenshots")
}

/// A chromedriver process of this test. It runs in a process group of its own, and Chromium
/// with it, so that dropping it ends the whole browser even when a test panics.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(dir: &Path) -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/test, which installs it, or \
                 `apt-get install -y chromium chromium-driver`"
            );
        }
        // A free port may be taken again before chromedriver binds it: try a few.
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.join(format!("chromedriver-{attempt}.log"));
            let out = std::fs::File::create(&log).expect("create the chromedriver log");
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                // Chromium keeps its crash database and caches under these: inside the
                // test's temp dir, not the user's home.
                .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
                .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log handle"))
                .stderr(out)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
            let mut driver = Self { child, port };
            let started = Instant::now();
            while started.elapsed() < WAIT {
                if let Ok(Some(_)) = driver.child.try_wait() {
                    break;
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return driver;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(driver);
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!(
            "chromedriver did not listen on a loopback port in three tries; its log:\n{last_log}"
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is the one this test made for chromedriver (its pid); Chromium and its
        // helpers are in it too.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session on the dashboard at `base`.
pub(crate) struct Browser {
    pub(crate) client: Client,
    pub(crate) base: String,
    // Dropped after the client: ends chromedriver and Chromium.
    _driver: Driver,
}

impl Browser {
    pub(crate) async fn open(env: &Env, base: &str) -> Self {
        let driver = Driver::start(env.dir.path());
        let profile = env.dir.path().join("chromium-profile");
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,900".to_owned(),
            // Nothing but the pages under test: no first-run pages, no updates, syncing,
            // metrics or proxies, and no name resolves (the tests use IP addresses only).
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-default-apps".to_owned(),
            "--metrics-recording-only".to_owned(),
            "--disable-breakpad".to_owned(),
            "--disable-crash-reporter".to_owned(),
            "--password-store=basic".to_owned(),
            "--no-proxy-server".to_owned(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE 127.0.0.2"
                .to_owned(),
        ];
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            // Chromium reports every CSP refusal ("Refused to apply inline style because it
            // violates the following Content Security Policy directive …") to the console:
            // keep the console for `csp_violations`.
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": { "pageLoad": WAIT.as_millis() as u64, "script": WAIT.as_millis() as u64, "implicit": 0 },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal");
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = fantoccini::ClientBuilder::new(connector);
        builder.capabilities(capabilities);
        let webdriver = format!("http://127.0.0.1:{}", driver.port);
        let connecting = builder.connect(&webdriver);
        let client = match tokio::time::timeout(Duration::from_secs(60), connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver could not start Chromium ({CHROMIUM}): {e}"),
            Err(_) => panic!("chromedriver did not start Chromium within 60 s"),
        };
        Self {
            client,
            base: base.to_owned(),
            _driver: driver,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("the browser could not open {url}: {e}"));
    }

    pub(crate) async fn current_url(&self) -> reqwest::Url {
        self.client
            .current_url()
            .await
            .expect("the browser tells its URL")
    }

    /// The visible text of the page, for assertions and failure messages.
    pub(crate) async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Polls `check` until it gives a value; fails saying what was expected and what the
    /// browser showed instead.
    pub(crate) async fn until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            if started.elapsed() > WAIT {
                let url = self.current_url().await;
                let text = self.text().await;
                panic!(
                    "expected {what} within {WAIT:?}, but the browser is at {url} showing:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the first element that matches `css`.
    pub(crate) async fn element(&self, what: &str, css: &str) -> fantoccini::elements::Element {
        self.until(what, async |b| b.client.find(Locator::Css(css)).await.ok())
            .await
    }

    /// Waits until the page's URL has this path (on the dashboard's origin).
    pub(crate) async fn at_path(&self, path: &str) {
        let origin = reqwest::Url::parse(&self.base).expect("the dashboard's URL");
        self.until(&format!("to be at {path}"), async |b| {
            let url = b.current_url().await;
            (url.origin() == origin.origin() && url.path() == path).then_some(())
        })
        .await;
    }

    /// Types `token` into the login form and clicks its button, as a person would.
    async fn submit_login(&self, token: &str) {
        let field = self
            .element("the login page's token field", "input#token")
            .await;
        assert_eq!(
            field.attr("type").await.expect("an attribute").as_deref(),
            Some("password"),
            "the token field hides what is typed"
        );
        field.send_keys(token).await.expect("type the token");
        self.client
            .find(Locator::XPath("//button[normalize-space()='Log in']"))
            .await
            .expect("a button labelled \"Log in\" on the login page")
            .click()
            .await
            .expect("click \"Log in\"");
    }

    /// From logged out: `/`, redirected to the login page, logged in, on the overview.
    pub(crate) async fn log_in(&self) {
        self.goto("/").await;
        self.at_path("/login").await;
        self.submit_login(TOKEN).await;
        self.element("the overview's node table after logging in", "table#nodes")
            .await;
        self.at_path("/").await;
    }

    /// What Chromium's console said since the last look (chromedriver hands each entry out
    /// once): the `message` of every entry.
    async fn console(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("chromedriver hands out the browser's console log");
        log.as_array()
            .expect("the browser log is a list of entries")
            .iter()
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The Content Security Policy refusals Chromium logged since the last look.
    async fn csp_violations(&self) -> Vec<String> {
        self.console()
            .await
            .into_iter()
            .filter(|m| m.contains("Content Security Policy"))
            .collect()
    }

    /// Fails on any CSP refusal since the last look: an inline style or script, or a load
    /// from elsewhere, that the policy blocked is a page that does not work as written.
    pub(crate) async fn assert_no_csp_violations(&self, when: &str) {
        let refused = self.csp_violations().await;
        assert!(
            refused.is_empty(),
            "the browser refused what the dashboard's Content Security Policy forbids ({when}):\n{}",
            refused.join("\n")
        );
    }

    /// Saves a PNG of what the browser shows as `name.png`, after checking that the page
    /// (and every page since the last check) broke no CSP rule.
    pub(crate) async fn screenshot(&self, name: &str) {
        self.assert_no_csp_violations(&format!("up to the page kept as {name}.png"))
            .await;
        let png = self
            .client
            .screenshot()
            .await
            .expect("a screenshot from Chromium");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
    }

    /// Ends the session, after checking that no page since the last check broke a CSP rule.
    pub(crate) async fn close(self) {
        self.assert_no_csp_violations("on the last pages of the test")
            .await;
        let Self {
            client, _driver, ..
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    }
}

/// chromedriver's own command for the console log (`goog:loggingPrefs` keeps it): W3C
/// WebDriver has none, and fantoccini sends it as a custom command.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    // The error is url's ParseError, named without depending on the url crate.
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_owned()),
        )
    }
}

/// A controller in process whose operator token is `TOKEN`, with these static nodes.
pub(crate) async fn controller(env: &Env, nodes: Vec<fleet::config::StaticNode>) -> InProcess {
    let mut config = env.controller_config();
    config.api_tokens = vec![TOKEN.into()];
    config.nodes = nodes;
    InProcess::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_through_the_form_opens_the_overview() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env, vec![node("web1", "key-of-web1-0123456789", &[])]).await;
    let b = Browser::open(&env, &c.url).await;

    b.goto("/").await;
    b.at_path("/login").await;
    let next = b.current_url().await;
    assert_eq!(
        next.query(),
        Some("next=%2F"),
        "the login page brings you back to where you were going"
    );
    b.element("the login page's heading", "h1").await;
    b.screenshot("login").await;

    b.submit_login(TOKEN).await;
    b.element("the overview's node table after logging in", "table#nodes")
        .await;
    b.at_path("/").await;
    let status = b
        .element("a row for the configured node web1", "tr#node-web1 .status")
        .await;
    assert_eq!(
        status.text().await.expect("the status text"),
        "down",
        "a node never seen is down, in words"
    );
    assert_eq!(
        status.attr("class").await.expect("an attribute").as_deref(),
        Some("status down"),
        "the status is coloured as down"
    );
    let text = b.text().await;
    assert!(
        text.contains("Log out"),
        "the header offers to log out: {text}"
    );

    // The session cookie is one the page's scripts cannot read.
    let cookie = b
        .client
        .get_named_cookie("fleet_session")
        .await
        .expect("the browser holds the session cookie fleet_session");
    assert_eq!(cookie.http_only(), Some(true), "HttpOnly: {cookie}");
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict"),
        "SameSite=Strict: {cookie}"
    );
    let visible = b
        .client
        .execute("return document.cookie", vec![])
        .await
        .expect("run a script on the page");
    assert!(
        !visible
            .as_str()
            .unwrap_or_default()
            .contains("fleet_session"),
        "scripts cannot see the session cookie: {visible}"
    );
    b.screenshot("overview").await;

    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// The check every test makes (`assert_no_csp_violations`) can fail: a fragment with an inline
/// style, put in place the way live.js puts the live streams' fragments, is refused by the
/// dashboard's policy and the refusal is seen. (Issue 14, point 7.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csp_check_sees_an_inline_style_the_policy_refuses() {
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env, vec![]).await;
    let b = Browser::open(&env, &c.url).await;
    b.goto("/login").await;
    b.element("the login page's heading", "h1").await;
    assert_eq!(
        b.csp_violations().await,
        Vec::<String>::new(),
        "the login page as served breaks no rule"
    );
    let colour = b
        .client
        .execute(
            r#"const t = document.createElement("template");
               t.innerHTML = '<p id="styled" style="color: rgb(255, 0, 0)">styled</p>';
               document.querySelector("main").append(t.content.firstElementChild);
               return getComputedStyle(document.getElementById("styled")).color;"#,
            vec![],
        )
        .await
        .expect("run a script on the page");
    assert_ne!(
        colour.as_str(),
        Some("rgb(255, 0, 0)"),
        "the policy kept the inline style off the page"
    );
    let refused = b.csp_violations().await;
    assert!(
        refused.iter().any(|m| m.contains("style-src 'self'")),
        "the browser's console names the refused inline style: {refused:?}"
    );
    b.close().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_shows_the_error_and_no_overview() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env, vec![node("web1", "key-of-web1-0123456789", &[])]).await;
    let b = Browser::open(&env, &c.url).await;

    b.goto("/").await;
    b.at_path("/login").await;
    b.submit_login("not-the-operator-token").await;
    let error = b
        .element(
            "the login page's error after a wrong token",
            "p.error[role=alert]",
        )
        .await;
    assert_eq!(
        error.text().await.expect("the error text"),
        "That token is not valid."
    );
    b.at_path("/login").await;
    let tables = b
        .client
        .find_all(Locator::Css("table#nodes"))
        .await
        .expect("look for the node table");
    assert!(tables.is_empty(), "a wrong token shows no overview");
    assert!(
        b.client.get_named_cookie("fleet_session").await.is_err(),
        "a wrong token gets no session cookie"
    );
    b.screenshot("login-error").await;

    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_from_the_header_returns_to_the_login_page() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env, vec![node("web1", "key-of-web1-0123456789", &[])]).await;
    let b = Browser::open(&env, &c.url).await;
    b.log_in().await;

    b.client
        .find(Locator::XPath(
            "//header//form[@action='/logout']//button[normalize-space()='Log out']",
        ))
        .await
        .expect("a \"Log out\" button in the header's logout form")
        .click()
        .await
        .expect("click \"Log out\"");
    b.at_path("/login").await;
    b.element("the login form after logging out", "input#token")
        .await;
    b.screenshot("logged-out").await;

    b.goto("/").await;
    b.at_path("/login").await;
    b.element(
        "the login form on visiting / after logging out",
        "input#token",
    )
    .await;

    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// A page of "another site": answers `GET /` with `page` and anything else with 404. Serves
/// until dropped.
struct OtherSite {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl OtherSite {
    async fn serve(ip: [u8; 4], page: String) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {ip:?} for the other site: {e}"));
        let addr = listener.local_addr().expect("a local address");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let page = page.clone();
                tokio::spawn(async move {
                    let socket = socket.into_std().expect("a std socket");
                    let _ = tokio::task::spawn_blocking(move || answer(socket, &page)).await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 exchange, bounded in size and time.
fn answer(mut socket: std::net::TcpStream, page: &str) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if request.starts_with(b"GET / ") {
        ("200 OK", page)
    } else {
        ("404 Not Found", "not here")
    };
    write!(
        socket,
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )?;
    socket.flush()
}

/// A page that posts a logout form to the dashboard as soon as it loads, as a hostile page
/// would. It cannot know the session's CSRF token.
fn hostile_page(dashboard: &str) -> String {
    format!(
        "<!doctype html><title>Another site</title>\
         <form id=\"f\" method=\"post\" action=\"{dashboard}/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"></form>\
         <script>document.getElementById(\"f\").submit()</script>",
        "0".repeat(64)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_from_another_site_does_not_log_out() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let c = controller(&env, vec![node("web1", "key-of-web1-0123456789", &[])]).await;
    let b = Browser::open(&env, &c.url).await;
    b.log_in().await;

    // Another origin on the same site (127.0.0.1, another port): SameSite lets the cookie
    // through, so the dashboard's own check (Origin, then the CSRF token) must refuse.
    let same_site = OtherSite::serve([127, 0, 0, 1], hostile_page(&c.url)).await;
    b.client
        .goto(&same_site.url)
        .await
        .expect("open the other origin's page");
    b.until(
        "the dashboard to refuse the other origin's logout form with a 403 that says why",
        async |b| {
            let url = b.current_url().await;
            (url.as_str() == b.url("/logout")
                && b.text()
                    .await
                    .contains("another site cannot change anything"))
            .then_some(())
        },
    )
    .await;
    b.screenshot("cross-origin-refused").await;
    b.goto("/").await;
    b.element(
        "the overview: still logged in after the other origin's post",
        "table#nodes",
    )
    .await;
    b.at_path("/").await;

    // Another site (127.0.0.2): the browser keeps the SameSite=Strict cookie off the post,
    // so the dashboard sees no session at all and sends the browser to its login page.
    let other_site = OtherSite::serve([127, 0, 0, 2], hostile_page(&c.url)).await;
    b.client
        .goto(&other_site.url)
        .await
        .expect("open the other site's page");
    b.until(
        "the other site's form to reach the dashboard without the cookie and be sent to \
         the login page (/login?next=%2F: a post is not replayed after logging in)",
        async |b| (b.current_url().await.as_str() == b.url("/login?next=%2F")).then_some(()),
    )
    .await;
    b.goto("/").await;
    b.element(
        "the overview: still logged in after the other site's post",
        "table#nodes",
    )
    .await;
    b.at_path("/").await;
    assert!(
        b.client.get_named_cookie("fleet_session").await.is_ok(),
        "the session cookie is still there"
    );

    drop((same_site, other_site));
    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overview_of_a_thousand_nodes_renders() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    let nodes: Vec<_> = (0..1000)
        .map(|i| node(&format!("n{i:04}"), "key-of-some-node-0123456789", &[]))
        .collect();
    let c = controller(&env, nodes).await;
    let b = Browser::open(&env, &c.url).await;
    b.log_in().await;

    let rendering = Instant::now();
    b.goto("/").await;
    let rows = b
        .client
        .find_all(Locator::Css("table#nodes > tbody > tr[id^='node-']"))
        .await
        .expect("look for the overview's rows");
    let elapsed = rendering.elapsed();
    assert_eq!(rows.len(), 1000, "one row per configured node");
    let last = b.element("the last node's row", "tr#node-n0999").await;
    assert!(
        last.text().await.expect("the row's text").contains("down"),
        "the last row shows its status"
    );
    let counts = b
        .element("the counts above the table", "#counts")
        .await
        .text()
        .await
        .expect("the counts' text");
    assert!(counts.contains("1000 nodes"), "{counts}");
    eprintln!("the overview of 1,000 nodes loaded and its rows counted in {elapsed:?}");
    b.screenshot("overview-1000-nodes").await;

    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// A batch of what a node's system collector sends: CPU and memory at `cpu` and `memory`
/// percent, one record, stamped now.
fn system_batch(node: &str, key: &str, seq: u64, cpu: f64, memory: f64) -> crate::harness::Batch {
    use fleet::model::{BatchBody, Record, Sample};
    let body = BatchBody {
        interval_ms: 1000,
        dropped_batches: 0,
        records: vec![Record {
            collector: "system".into(),
            ts: fleet::timefmt::now_ms(),
            data: serde_json::json!({ "cpu": { "used_percent": cpu }, "seq": seq }),
            samples: vec![
                Sample::new("cpu.used_percent", cpu),
                Sample::new("memory.used_percent", memory),
                Sample::new("load.1", 0.5),
            ],
        }],
    };
    crate::harness::Batch::new(node, key, seq).body(serde_json::to_vec(&body).unwrap())
}

/// Marks the page so a later check can tell it was not reloaded.
pub(crate) async fn mark_page(b: &Browser) {
    b.client
        .execute("window.__notReloaded = true; return true", vec![])
        .await
        .expect("run a script on the page");
}

pub(crate) async fn page_was_not_reloaded(b: &Browser) -> bool {
    b.client
        .execute("return window.__notReloaded === true", vec![])
        .await
        .expect("run a script on the page")
        .as_bool()
        .unwrap_or(false)
}

/// Waits for an element's text to contain `text`.
pub(crate) async fn element_with_text(b: &Browser, what: &str, css: &str, text: &str) -> String {
    b.until(what, async |b| {
        let el = b.client.find(Locator::Css(css)).await.ok()?;
        let shown = el.text().await.ok()?;
        shown.contains(text).then_some(shown)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_shows_new_samples_and_events_without_a_reload() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    const KEY: &str = "key-of-web1-0123456789";
    let mut web1 = node("web1", KEY, &[]);
    web1.labels = [("role".to_owned(), "web".to_owned())].into();
    let c = controller(&env, vec![web1, node("db1", "key-of-db1-0123456789", &[])]).await;
    let api = c.client();
    for seq in 1..=3 {
        let (status, answer) = api.send(&system_batch("web1", KEY, seq, 20.0, 40.0)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let b = Browser::open(&env, &c.url).await;
    b.log_in().await;

    // The overview: web1 is up, in words, with its vitals and sparklines; db1 never reported.
    let row = element_with_text(&b, "web1's row, up", "tr#node-web1", "up").await;
    assert!(row.contains("20 %") && row.contains("40 %"), "{row}");
    assert!(
        b.client
            .find(Locator::Css(
                "tr#node-web1 img[src='/ui/spark/web1/cpu.svg']"
            ))
            .await
            .is_ok(),
        "a CPU sparkline for web1"
    );
    b.screenshot("overview-live-node").await;

    // The overview follows a change without a reload.
    mark_page(&b).await;
    let (status, _) = api.send(&system_batch("web1", KEY, 4, 87.0, 41.0)).await;
    assert_eq!(status, 200);
    element_with_text(&b, "web1's CPU to show 87 % live", "tr#node-web1", "87 %").await;
    assert!(page_was_not_reloaded(&b).await, "the row changed in place");

    // The node page: charts, the tail from the hot ring, then live.
    b.goto("/nodes/web1").await;
    b.element("the CPU chart's line", "#chart-cpu svg path")
        .await;
    b.element("the tail's newest record", "#tail tr").await;
    b.screenshot("node").await;
    mark_page(&b).await;
    let (status, _) = api.send(&system_batch("web1", KEY, 5, 63.0, 42.0)).await;
    assert_eq!(status, 200);
    element_with_text(&b, "the vitals to show 63 % live", "#vitals", "63 %").await;
    element_with_text(
        &b,
        "the new record at the top of the tail",
        "#tail tr:first-child",
        "\"seq\":5",
    )
    .await;
    let message = "deploy <b>finished</b> on web1";
    let (status, answer) = api
        .post(
            "/api/v1/events",
            serde_json::json!({ "node": "web1", "service": "deploy", "level": "warning", "message": message })
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let shown = element_with_text(
        &b,
        "the event at the top of the node's events",
        "#events tr:first-child",
        "deploy <b>finished</b>",
    )
    .await;
    assert!(shown.contains("warning"), "{shown}");
    assert!(
        page_was_not_reloaded(&b).await,
        "the node page was not reloaded"
    );
    assert!(
        b.client.find(Locator::Css("#events b")).await.is_err(),
        "the message's markup is text, not elements"
    );
    b.screenshot("node-live").await;

    // The event log: filtered, and live.
    b.goto("/events?level=warning").await;
    b.element("the warning in the event log", "#events tr")
        .await;
    mark_page(&b).await;
    for (level, text) in [("info", "an info line"), ("error", "disk almost full")] {
        let (status, _) = api
            .post(
                "/api/v1/events",
                serde_json::json!({ "node": "web1", "level": level, "message": text }).to_string(),
            )
            .await;
        assert_eq!(status, 201);
    }
    element_with_text(
        &b,
        "the error at the top of the event log",
        "#events tr:first-child",
        "disk almost full",
    )
    .await;
    let text = b.text().await;
    assert!(
        !text.contains("an info line"),
        "the page's level filter holds live: {text}"
    );
    assert!(page_was_not_reloaded(&b).await);
    b.screenshot("events").await;

    // Heartbeats (web1's agent pulses node:web1 with every batch) and errors.
    b.goto("/heartbeats").await;
    element_with_text(&b, "web1's heartbeat", "table.heartbeats", "node:web1").await;
    b.screenshot("heartbeats").await;
    b.goto("/errors").await;
    b.element("the error log's heading", "h1").await;
    b.screenshot("errors").await;

    // On a phone's width the pages still read (the wide columns fold away).
    b.client
        .set_window_size(390, 844)
        .await
        .expect("resize the window");
    b.goto("/").await;
    b.element("the overview on a narrow screen", "tr#node-web1")
        .await;
    b.screenshot("overview-phone").await;
    b.goto("/nodes/web1").await;
    b.element("the node page on a narrow screen", "#chart-cpu")
        .await;
    b.screenshot("node-phone").await;

    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_from_the_form_shows_its_result_live() {
    let started = Instant::now();
    let env = Env::new(Backend::Embedded).await;
    const KEY: &str = "key-of-web1-0123456789";
    // The controller's dashboard key, and a node that trusts it and allows one command.
    let key_file = env.dir.path().join("dashboard.key");
    let dashboard = fleet::command::OperatorKey::generate();
    std::fs::write(&key_file, dashboard.secret_text()).unwrap();
    let mut config = env.controller_config();
    config.api_tokens = vec![TOKEN.into()];
    config.nodes = vec![node("web1", KEY, &[])];
    config.ui.signing_key = Some(key_file);
    let c = InProcess::start(config).await;
    let agent_config = env.dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "interval = \"1h\"\n[commands]\ntrusted_keys = [{:?}]\nallow = [\"sh -c *\"]\npoll_timeout = \"5s\"\n",
            dashboard.public()
        ),
    )
    .unwrap();
    let agent_args: Vec<String> = [
        "agent",
        "--config",
        &agent_config.display().to_string(),
        "--controller",
        &c.url,
        "--node",
        "web1",
        "--key",
        KEY,
        "--data-dir",
        &env.dir.path().join("agent").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut agent = crate::harness::Process::spawn(&agent_args, &env.dir.path().join("agent.log"));

    let b = Browser::open(&env, &c.url).await;
    b.log_in().await;
    b.goto("/commands").await;
    b.screenshot("commands-empty").await;
    b.element("the form's node field", "input#targets")
        .await
        .send_keys("web1")
        .await
        .unwrap();
    b.element("the form's command field", "input#command")
        .await
        .send_keys("sh -c 'sleep 1; echo hello from the form'")
        .await
        .unwrap();
    b.client
        .find(Locator::XPath("//button[normalize-space()='Review']"))
        .await
        .expect("a Review button")
        .click()
        .await
        .expect("click Review");

    // The confirmation names the nodes and shows the same command for a terminal.
    let line = b
        .element("the fleet send line on the confirmation", "pre#fleet-send")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        line,
        "fleet send --node web1 --timeout 30s --ttl 1h -- sh -c 'sleep 1; echo hello from the form'"
    );
    let text = b.text().await;
    assert!(text.contains("on 1 node: web1?"), "{text}");
    b.screenshot("commands-confirm").await;
    b.element("the send button", "button#send")
        .await
        .click()
        .await
        .expect("click Send");
    b.at_path("/commands").await;
    mark_page(&b).await;

    // Queued or running first, then the result arrives in place.
    let row = element_with_text(
        &b,
        "the command's result to appear live",
        "#commands tr:first-child",
        "succeeded",
    )
    .await;
    assert!(row.contains("hello from the form"), "{row}");
    assert!(row.contains("(dashboard)"), "who sent it: {row}");
    assert!(
        page_was_not_reloaded(&b).await,
        "the result arrived without a reload"
    );
    b.screenshot("commands-result").await;

    // Recorded as signed by the dashboard key.
    let (status, listed) = c.client().get("/api/v1/commands?node=web1").await;
    assert_eq!(status, 200);
    let first = &listed["commands"][0];
    assert_eq!(first["state"], "succeeded", "{listed}");
    assert_eq!(
        first["result"]["stdout"].as_str().map(str::trim),
        Some("hello from the form")
    );

    agent.terminate();
    b.close().await;
    c.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// Types a name and password into the login page's second form and sends it.
async fn submit_password(b: &Browser, user: &str, password: &str) {
    for (what, css, text) in [
        ("name", "input#user", user),
        ("password", "input#password", password),
    ] {
        b.element(&format!("the {what} field"), css)
            .await
            .send_keys(text)
            .await
            .unwrap();
    }
    b.client
        .find(Locator::XPath(
            "//button[normalize-space()='Log in with password']",
        ))
        .await
        .expect("the password form's button")
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_with_a_name_and_password() {
    let env = Env::new(Backend::Embedded).await;
    let mut config = env.controller_config();
    config.api_tokens = vec![TOKEN.into()];
    config.nodes = vec![node("web1", "key-of-web1-0123456789", &[])];
    config.ui.users = vec![fleet::config::UiUser {
        name: "alice".into(),
        password_hash: fleet::web::ui::session::hash_password("correct horse battery"),
    }];
    let c = InProcess::start(config).await;
    let b = Browser::open(&env, &c.url).await;
    b.goto("/").await;
    b.at_path("/login").await;
    submit_password(&b, "alice", "not her password").await;
    let error = b
        .element("the error after a wrong password", "p.error[role=alert]")
        .await;
    assert_eq!(
        error.text().await.unwrap(),
        "That name and password do not match."
    );
    b.screenshot("login-password-error").await;
    submit_password(&b, "alice", "correct horse battery").await;
    b.element("the overview after the password login", "table#nodes")
        .await;
    let text = b.text().await;
    assert!(text.contains("signed in with user \"alice\""), "{text}");
    b.close().await;
    c.stop().await;
}
