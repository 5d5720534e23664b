//! End-to-end tests of the web console in a real headless browser: Debian's `chromium`,
//! driven over WebDriver by `chromedriver` (CI: `apt-get install chromium chromium-driver`).
//!
//! The [`Browser`] helper at the top starts chromedriver on a free loopback port, opens one
//! Chromium session with a fresh profile, and offers the few steps page tests need: `goto`,
//! `fill`, `click`, `text`, bounded waits and screenshots (PNG files under
//! `target/browser-screenshots/`). Every wait gives up after [`WAIT`].

#![allow(dead_code)]

use crate::support::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::header::CONTENT_SECURITY_POLICY;
use serde_json::{json, Value};

use crate::support::{run_cli, TestApp, PASSWORD};

/// How long any single wait (page load, element, URL, script) may take.
pub const WAIT: Duration = Duration::from_secs(10);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "install them with `apt-get install chromium chromium-driver`";

/// A chromedriver process and one Chromium session on it, pointed at one appliance.
pub struct Browser {
    client: Option<Client>,
    /// WebDriver session id, for ending the session from `Drop` without the async client.
    session: Option<String>,
    driver: Option<Child>,
    /// chromedriver's port on 127.0.0.1.
    port: u16,
    base: String,
    /// Test name, used to name screenshots.
    name: String,
    /// chromedriver's log and Chromium's profile; removed after the processes are gone.
    tmp: tempfile::TempDir,
}

/// The path of a required browser binary, or a failure that says how to install it.
fn require_binary(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "browser tests need {path}, which is missing: {INSTALL_HINT}"
    );
    p
}

/// `<target>/browser-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-screenshots")
}

impl Browser {
    /// Start chromedriver and a headless Chromium session for `app`; `name` names screenshots.
    pub async fn start(app: &TestApp, name: &str) -> Browser {
        let chromium = require_binary(CHROMIUM);
        let chromedriver = require_binary(CHROMEDRIVER);
        let tmp = tempfile::tempdir().expect("tempdir");
        let profile = tmp.path().join("profile");
        std::fs::create_dir_all(&profile).expect("mkdir profile");
        let log_path = tmp.path().join("chromedriver.log");

        // The port may be taken between choosing and binding it: try a few.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).expect("chromedriver log");
            let mut driver = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("log fd")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
            let url = format!("http://127.0.0.1:{port}");
            match wait_for_driver(&url, &mut driver).await {
                Ok(()) => {
                    let mut browser = Browser {
                        client: None,
                        session: None,
                        driver: Some(driver),
                        port,
                        base: app.base.clone(),
                        name: name.to_string(),
                        tmp,
                    };
                    let client = connect(&url, &chromium, &profile, &log_path).await;
                    browser.session = client.session_id().await.ok().flatten();
                    browser.client = Some(client);
                    return browser;
                }
                Err(why) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    last_failure = format!(
                        "{why}\nchromedriver log:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        }
        panic!("chromedriver did not start: {last_failure}");
    }

    /// The WebDriver client, for steps the helpers do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session is open")
    }

    /// Absolute URL of an appliance path such as `/tenants`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Load `path` of the appliance and wait for the page to finish loading.
    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client()
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// The path (without query) of the page now shown.
    pub async fn path(&self) -> String {
        self.client()
            .current_url()
            .await
            .expect("current url")
            .path()
            .to_string()
    }

    /// The full URL of the page now shown.
    pub async fn current_url(&self) -> String {
        self.client()
            .current_url()
            .await
            .expect("current url")
            .to_string()
    }

    /// Wait until the page shown is `path` (ignoring the query string).
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.path().await;
            if now == path {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected to reach {path} within {WAIT:?}, still on {}\n{}",
                    self.current_url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for the element matching the CSS selector `css`.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client()
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "no element {css} on {} within {WAIT:?}: {e}\npage text:\n{}",
                self.current_url().await,
                self.body_text().await
            ),
        }
    }

    /// Whether an element matches `css` right now (no waiting).
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client()
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .is_empty()
    }

    /// Replace the value of the input with id `id` by `text`.
    pub async fn fill(&self, id: &str, text: &str) {
        let e = self.find(&format!("#{id}")).await;
        e.clear()
            .await
            .unwrap_or_else(|err| panic!("clear #{id}: {err}"));
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into #{id}: {err}"));
    }

    /// Click the element with id `id`.
    pub async fn click(&self, id: &str) {
        self.click_css(&format!("#{id}")).await;
    }

    /// Click the element matching the CSS selector `css`.
    pub async fn click_css(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// Wait until the element matching `css` shows text containing `needle`; returns its text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "{css} on {} did not show {needle:?} within {WAIT:?}; it shows:\n{text}",
                    self.current_url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the whole page (for failure messages).
    pub async fn body_text(&self) -> String {
        match self.client().find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// Run `script` in the page (WebDriver "execute") and return its JSON result.
    pub async fn execute(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("execute {script}: {e}"))
    }

    /// Save a PNG of the viewport as `target/browser-screenshots/<test>-<label>.png`.
    pub async fn screenshot(&self, label: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("mkdir screenshots");
        let path = dir.join(format!("{}-{label}.png", self.name));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// End the session (Chromium quits) and stop chromedriver.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            if tokio::time::timeout(WAIT, c.close()).await.is_ok() {
                self.session = None;
            }
        }
        // `Drop` stops chromedriver (and anything of Chromium still running).
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failure the async client cannot be used here: end the session with a plain
        // blocking request so chromedriver quits Chromium, then kill whatever is left of the
        // process tree we started (Chromium outlives a killed chromedriver otherwise).
        self.client.take();
        if let Some(id) = self.session.take() {
            delete_session_blocking(self.port, &id);
        }
        if let Some(mut d) = self.driver.take() {
            let leftovers = descendants(d.id());
            if !leftovers.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(leftovers.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// `DELETE /session/{id}` to chromedriver on 127.0.0.1:`port`, waiting at most [`WAIT`].
fn delete_session_blocking(port: u16, id: &str) {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    ) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(WAIT));
    let _ = conn.set_write_timeout(Some(WAIT));
    let request = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).is_ok() {
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
    }
}

/// Process ids of every descendant of `root`, found through Linux `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Poll chromedriver's `/status` until it reports ready, or fail after [`WAIT`].
async fn wait_for_driver(url: &str, driver: &mut Child) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .expect("http client");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver exited with {status}"));
        }
        if let Ok(res) = http.get(format!("{url}/status")).send().await {
            if let Ok(v) = res.json::<Value>().await {
                if v["value"]["ready"] == json!(true) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("chromedriver at {url} not ready within {WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open a headless Chromium session with a fresh profile that accepts the appliance's CA.
async fn connect(url: &str, chromium: &Path, profile: &Path, log: &Path) -> Client {
    let args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.display()),
        "--ignore-certificate-errors".into(),
        "--window-size=1280,900".into(),
        // Loopback only: never route the appliance's address through a proxy from the environment.
        "--no-proxy-server".into(),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "timeouts".into(),
        json!({"pageLoad": WAIT.as_millis() as u64, "script": WAIT.as_millis() as u64, "implicit": 0}),
    );
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium.display().to_string(), "args": args}),
    );
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(caps);
    let session = builder.connect(url);
    match tokio::time::timeout(Duration::from_secs(30), session).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "cannot open a Chromium session via chromedriver ({e}); is {CHROMIUM} working? \
             {INSTALL_HINT}\nchromedriver log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
        Err(_) => panic!(
            "Chromium session did not open within 30 s\nchromedriver log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// Complete setup in the browser as `username`, ending on the login page.
async fn set_up_in_browser(b: &Browser, app: &TestApp, username: &str) {
    let token = app
        .setup_token
        .clone()
        .expect("fresh appliance prints a setup token");
    b.goto(&format!("/setup?token={token}")).await;
    b.find("#setup-form").await;
    b.fill("username", username).await;
    b.fill("password", PASSWORD).await;
    b.click("setup-submit").await;
    b.wait_for_path("/login").await;
}

/// Log in through the login form and wait for the dashboard.
async fn log_in_in_browser(b: &Browser, username: &str, password: &str) {
    b.goto("/login").await;
    b.fill("username", username).await;
    b.fill("password", password).await;
    b.click("login-submit").await;
    b.wait_for_path("/").await;
}

#[tokio::test]
async fn console_setup_login_create_tenant_and_logout_work_in_a_browser() {
    let started = Instant::now();
    let app = TestApp::start();
    let b = Browser::start(&app, "setup-login-tenant").await;

    // Before any account exists, the console sends visitors to setup.
    b.goto("/").await;
    b.wait_for_path("/setup").await;

    set_up_in_browser(&b, &app, "alice").await;
    let notice = b.text(".flash.ok").await;
    assert!(
        notice.contains("Administrator alice created"),
        "setup notice: {notice}"
    );
    assert!(b.exists("#login-form").await);

    // A wrong password stays on the login page with the error flash.
    b.fill("username", "alice").await;
    b.fill("password", "not-the-right-password").await;
    b.click("login-submit").await;
    b.wait_for_path("/login").await;
    let error = b.text(".flash.error").await;
    assert!(!error.trim().is_empty(), "empty error flash");
    assert!(
        !b.exists("#whoami").await,
        "a wrong password must not log in"
    );

    log_in_in_browser(&b, "alice", PASSWORD).await;
    assert_eq!(b.text("#whoami").await, "alice");
    assert_eq!(b.text("h1").await, "Dashboard");
    b.screenshot("dashboard").await;

    b.goto("/tenants").await;
    b.fill("tenant-name", "acme").await;
    b.fill("tenant-description", "Acme Corporation").await;
    b.click("tenant-submit").await;
    b.wait_for_text(".flash.ok", "Tenant acme created").await;
    assert_eq!(b.path().await, "/tenants");
    let list = b.text("#tenant-list").await;
    assert!(
        list.contains("acme") && list.contains("Acme Corporation"),
        "tenant list: {list}"
    );
    b.screenshot("tenants").await;

    // The dashboard lists it too.
    b.goto("/").await;
    let tenants = b.text("#tenants").await;
    assert!(tenants.contains("acme"), "dashboard tenants: {tenants}");

    // Log out: back on the login page, and the console no longer lets us in.
    b.click_css("form[action='/logout'] button").await;
    b.wait_for_path("/login").await;
    b.wait_for_text(".flash.ok", "Logged out").await;
    b.goto("/").await;
    b.wait_for_path("/login").await;
    assert!(!b.exists("#whoami").await);
    b.goto("/tenants").await;
    b.wait_for_path("/login").await;

    b.close().await;
    eprintln!("browser flow took {:?}", started.elapsed());
}

/// Script listing every URL the page refers to for loading or posting: links, `src`
/// attributes, form actions, style sheets and the `url()`s inside them.
const PAGE_REFERENCES: &str = r#"
const out = [];
for (const e of document.querySelectorAll('link[href]')) out.push(e.href);
for (const e of document.querySelectorAll('[src]')) out.push(e.src);
for (const f of document.forms) out.push(f.action);
for (const s of document.styleSheets) {
  if (s.href) out.push(s.href);
  for (const r of s.cssRules) {
    for (const m of r.cssText.matchAll(/url\(\s*["']?([^"')]+)/g)) {
      out.push(new URL(m[1], s.href || location.href).href);
    }
  }
}
return out;
"#;

#[tokio::test]
async fn console_loads_nothing_from_outside_the_appliance() {
    let app = TestApp::start();
    let http = app.client();
    let csp_of = |res: &reqwest::Response, path: &str| {
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.headers()
            .get(CONTENT_SECURITY_POLICY)
            .unwrap_or_else(|| panic!("{path} sets no Content-Security-Policy"))
            .to_str()
            .expect("ascii")
            .to_string()
    };
    // The setup page (shown only before the first account exists) forbids loading from elsewhere.
    let res = http
        .get(format!("{}/setup", app.base))
        .send()
        .await
        .expect("request");
    let csp = csp_of(&res, "/setup");
    assert!(csp.contains("default-src 'self'"), "/setup CSP: {csp}");

    let b = Browser::start(&app, "same-origin").await;
    set_up_in_browser(&b, &app, "admin").await;
    log_in_in_browser(&b, "admin", PASSWORD).await;

    let origin = b.execute("return location.origin").await;
    assert_eq!(origin, json!(app.base), "console origin");
    for path in [
        "/",
        "/tenants",
        "/tokens",
        "/users",
        "/clusters",
        "/bundles",
        "/audit",
    ] {
        b.goto(path).await;
        b.find("#whoami").await;
        let resources = b
            .execute("return performance.getEntriesByType('resource').map(e => e.name)")
            .await;
        let urls: Vec<&str> = resources
            .as_array()
            .expect("resource list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // The style sheet is the one resource every page loads: proof the list is real.
        assert!(
            urls.iter().any(|u| u.ends_with("/static/console.css")),
            "{path}: style sheet not among the loaded resources {urls:?}"
        );
        for u in &urls {
            assert!(
                u.starts_with(&format!("{}/", app.base)),
                "{path} loaded {u}, which is not from the appliance {}",
                app.base
            );
        }
        // A reference to elsewhere would be blocked by the page's policy and so missing from
        // the list above: check what the page asks for, too (style sheet `url()`s included).
        let refs = b.execute(PAGE_REFERENCES).await;
        let refs: Vec<&str> = refs
            .as_array()
            .expect("reference list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            refs.iter().any(|u| u.ends_with("/static/console.css")),
            "{path}: style sheet link not found among {refs:?}"
        );
        for u in &refs {
            assert!(
                u.starts_with(&format!("{}/", app.base)) || u.starts_with("data:"),
                "{path} refers to {u}, which is not on the appliance {}",
                app.base
            );
        }
        // ...and it applied (a style sheet blocked by the page's own policy would not).
        let bg = b
            .execute("return getComputedStyle(document.body).backgroundColor")
            .await;
        assert_eq!(
            bg,
            json!("rgb(245, 246, 248)"),
            "{path}: console.css not applied"
        );
    }

    // So do the login page and every page behind it.
    let res = http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .expect("request");
    let csp = csp_of(&res, "/login");
    assert!(csp.contains("default-src 'self'"), "/login CSP: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "/login CSP: {csp}");
    let session = app.login("admin", PASSWORD).await;
    for path in ["/", "/tenants", "/tokens"] {
        let r = session.send(reqwest::Method::GET, path, None, &[]).await;
        assert!(r.status.is_success(), "{path}: {}", r.status);
        let csp = r
            .headers
            .get(CONTENT_SECURITY_POLICY)
            .unwrap_or_else(|| panic!("{path} sets no Content-Security-Policy"))
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(csp.contains("default-src 'self'"), "{path} CSP: {csp}");
    }

    b.close().await;
}

#[tokio::test]
async fn console_shows_a_new_api_token_secret_once() {
    let app = TestApp::start();
    let b = Browser::start(&app, "token-once").await;
    set_up_in_browser(&b, &app, "admin").await;
    log_in_in_browser(&b, "admin", PASSWORD).await;

    b.goto("/tokens").await;
    assert!(!b.exists("#new-token-secret").await);
    b.fill("token-name", "ci-pipeline").await;
    b.fill("token-days", "30").await;
    b.click_css("#token-form button[type=submit]").await;
    b.wait_for_text(".flash.ok", "Token ci-pipeline created")
        .await;
    let secret = b.text("#new-token-secret").await.trim().to_string();
    assert!(secret.len() >= 20, "secret looks too short: {secret:?}");
    assert!(
        !b.current_url().await.contains(&secret),
        "the secret must not be in the URL"
    );
    let list = b.text("#token-list").await;
    assert!(list.contains("ci-pipeline"), "token list: {list}");

    // The secret works against the API...
    let api = crate::support::Api {
        client: app.client(),
        base: app.base.clone(),
        token: Some(secret.clone()),
        csrf: None,
    };
    let (status, body) = api.get("/v1/tokens").await;
    assert!(
        status.is_success(),
        "token from the console: {status} {body}"
    );

    // ...and is not shown again.
    b.goto("/tokens").await;
    b.find("#token-list").await;
    assert!(
        !b.exists("#new-token-secret").await,
        "reloading /tokens shows a secret again"
    );
    let source = b.client().source().await.expect("page source");
    assert!(
        !source.contains(&secret),
        "reloading /tokens still has the secret in the page"
    );
    assert!(b.text("#token-list").await.contains("ci-pipeline"));

    // Nor can a link make the page present some other text as a new secret.
    b.goto("/tokens?token=forged-secret").await;
    b.find("#token-list").await;
    assert!(
        !b.exists("#new-token-secret").await,
        "a ?token= link shows a secret box"
    );
    assert!(!b.body_text().await.contains("forged-secret"));

    b.close().await;
}

/// A data directory with the system admin `admin` and a trusted bundle signing key, plus what
/// it takes to build bundles signed with that key.
struct BundleKit {
    tmp: tempfile::TempDir,
    data: PathBuf,
    key: PathBuf,
}

/// Run the executable and require success; returns stdout.
fn palisade_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = run_cli(args, stdin);
    assert_eq!(code, 0, "palisade {args:?}: {out}{err}");
    out
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Deterministic incompressible bytes (xorshift), so a bundle's size is what the test says.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl BundleKit {
    /// Create the admin offline and trust a fresh key (throwaway, made for this test).
    fn new() -> BundleKit {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let key = tmp.path().join("throwaway-signing.pem");
        palisade_ok(&["bundle", "keygen", "-o", utf8(&key)], None);
        palisade_ok(
            &[
                "admin",
                "create-user",
                "--data-dir",
                utf8(&data),
                "--password-stdin",
                "admin",
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        let public = tmp.path().join("throwaway-signing.pem.pub");
        palisade_ok(
            &[
                "bundle",
                "trust",
                "add",
                utf8(&public),
                "--data-dir",
                utf8(&data),
            ],
            None,
        );
        BundleKit { tmp, data, key }
    }

    /// Build bundle `console-upload` `version` holding one file of `len` noise bytes.
    fn build(&self, version: &str, len: usize) -> PathBuf {
        let work = self.tmp.path().join(format!("src-{version}"));
        std::fs::create_dir_all(&work).expect("mkdir");
        std::fs::write(work.join("payload.bin"), noise(len as u64, len)).expect("payload");
        std::fs::write(
            work.join("recipe.toml"),
            format!(
                "[bundle]\nname = \"console-upload\"\nversion = \"{version}\"\n\
                 [[file]]\npath = \"payload.bin\"\nname = \"payload\"\nversion = \"{version}\"\n"
            ),
        )
        .expect("recipe");
        let out = self
            .tmp
            .path()
            .join(format!("console-upload-{version}.bundle"));
        palisade_ok(
            &[
                "bundle",
                "build",
                utf8(&work.join("recipe.toml")),
                "--key",
                utf8(&self.key),
                "-o",
                utf8(&out),
            ],
            None,
        );
        out
    }
}

/// Files left in the appliance's upload staging directory.
fn staged_uploads(app: &TestApp) -> Vec<PathBuf> {
    match std::fs::read_dir(app.dir.join("staging/uploads")) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// How long an upload and import from the Bundles page may take.
const UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Wait for the Bundles page to report the outcome of an upload: the notice after success, or
/// the error shown in the page; `Err` carries the error text.
async fn upload_outcome(b: &Browser) -> Result<String, String> {
    let deadline = Instant::now() + UPLOAD_WAIT;
    loop {
        if b.exists(".flash.ok").await {
            return Ok(b.text(".flash.ok").await);
        }
        if b.exists("#upload-result.error:not([hidden])").await {
            return Err(b.text("#upload-result").await);
        }
        if Instant::now() > deadline {
            b.screenshot("upload-timeout").await;
            panic!(
                "no upload outcome within {UPLOAD_WAIT:?}; the page shows:\n{}",
                b.body_text().await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Open the Bundles page with the script running, small chunks (so a small bundle takes
/// several PATCH requests), and `file` chosen in the file input.
async fn choose_bundle_file(b: &Browser, file: &Path) {
    b.goto("/bundles").await;
    b.find("#upload-form:not([hidden])").await;
    b.execute("document.getElementById('upload-form').dataset.chunkBytes = '65536'; return null")
        .await;
    b.find("#bundle-file")
        .await
        .send_keys(utf8(file))
        .await
        .unwrap_or_else(|e| panic!("choose {}: {e}", file.display()));
}

#[tokio::test]
async fn console_uploads_a_bundle_in_chunks_resumes_an_interrupted_upload_and_imports_it() {
    let kit = BundleKit::new();
    let first = kit.build("1.0.0", 300_000);
    let second = kit.build("1.1.0", 400_000);
    let app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;

    // Not for other users: no nav entry, and the page refuses (no form, no script).
    admin
        .create(
            "/v1/users",
            json!({"username": "viewer", "password": PASSWORD, "tenant_id": null}),
        )
        .await;
    let viewer = app.login("viewer", PASSWORD).await;
    let r = viewer
        .send(reqwest::Method::GET, "/bundles", None, &[])
        .await;
    assert!(r.status.is_success(), "/bundles for a viewer: {}", r.status);
    assert!(
        r.text.contains("Bundles are imported by system admins."),
        "{}",
        r.text
    );
    assert!(!r.text.contains("upload-form") && !r.text.contains("bundles.js"));
    assert!(!r.text.contains("href=\"/bundles\""), "nav entry shown");
    // The script is served as JavaScript (the page's policy and nosniff need that).
    let js = app
        .client()
        .get(format!("{}/static/bundles.js", app.base))
        .send()
        .await
        .expect("request");
    assert!(js.status().is_success());
    let mime = js.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(mime.contains("javascript"), "bundles.js served as {mime}");

    let b = Browser::start(&app, "bundle-upload").await;
    log_in_in_browser(&b, "admin", PASSWORD).await;
    b.click_css("header nav a[href='/bundles']").await;
    b.wait_for_path("/bundles").await;
    b.find("#upload-form:not([hidden])").await;
    assert!(
        !b.exists("#upload-needs-script:not([hidden])").await,
        "the no-script hint stays visible although the script runs"
    );
    assert!(b.text("#cli-help").await.contains("palisade bundle import"));
    assert!(b
        .text("#bundle-list")
        .await
        .contains("No bundles imported yet"));

    // Nothing chosen: a clear error, nothing sent.
    b.click("upload-submit").await;
    let err = b
        .wait_for_text("#upload-result", "Choose the bundle file")
        .await;
    assert!(!err.is_empty());

    // Upload in 64 KiB chunks and import.
    choose_bundle_file(&b, &first).await;
    b.click("upload-submit").await;
    let notice = upload_outcome(&b).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        notice.contains("Imported console-upload 1.0.0")
            && notice.contains("signed by a trusted key"),
        "{notice}"
    );
    assert!(!notice.contains("resumed"), "{notice}");
    assert_eq!(b.path().await, "/bundles");
    let list = b.text("#bundle-list").await;
    assert!(
        list.contains("console-upload") && list.contains("1.0.0") && list.contains("admin"),
        "{list}"
    );
    b.screenshot("imported").await;
    let (status, audit) = admin.get("/v1/audit?action=bundle%20import").await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.to_string().contains("console-upload 1.0.0"),
        "the import is not in the audit log: {audit}"
    );
    assert!(
        staged_uploads(&app).is_empty(),
        "{:?}",
        staged_uploads(&app)
    );

    // Resume: an upload interrupted after part of the file (sent through the API here, as a
    // page that lost its connection and was reloaded would have) is continued from the
    // server's offset when the same file is chosen again.
    let bytes = std::fs::read(&second).expect("bundle");
    let (status, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let part = bytes.len() / 3;
    let r = crate::support::call(
        &admin,
        reqwest::Method::PATCH,
        &format!("/v1/bundle-uploads/{id}"),
        &[
            ("content-type", "application/octet-stream"),
            ("upload-offset", "0"),
        ],
        Some(bytes[..part].to_vec()),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.describe());
    choose_bundle_file(&b, &second).await;
    // What the page would have remembered: the session id under the file's name, size and
    // modification time (as the browser reports them).
    let size = b
        .client()
        .execute(
            "const f = document.getElementById('bundle-file').files[0];
             localStorage.setItem('palisade.bundle-upload:' + f.name + ':' + f.size + ':' + f.lastModified, arguments[0]);
             return f.size;",
            vec![json!(id)],
        )
        .await
        .expect("remember the upload");
    assert_eq!(size, json!(bytes.len()));
    b.click("upload-submit").await;
    let notice = upload_outcome(&b).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        notice.contains("Imported console-upload 1.1.0") && notice.contains("resumed"),
        "{notice}"
    );
    // The import consumed the interrupted session: the page continued it, not a new one.
    assert_eq!(
        admin.get(&format!("/v1/bundle-uploads/{id}")).await.0,
        404,
        "the interrupted upload session is still there"
    );
    assert!(
        staged_uploads(&app).is_empty(),
        "{:?}",
        staged_uploads(&app)
    );
    assert!(b.text("#bundle-list").await.contains("1.1.0"));
    let forgotten = b
        .execute("return Object.keys(localStorage).filter(k => k.startsWith('palisade.bundle-upload:')).length")
        .await;
    assert_eq!(forgotten, json!(0), "upload ids left in localStorage");

    // A file that is no bundle: the server's reason in the page, the upload dropped.
    let junk = kit.tmp.path().join("not-a-bundle.bin");
    std::fs::write(&junk, noise(7, 100_000)).expect("junk");
    choose_bundle_file(&b, &junk).await;
    b.click("upload-submit").await;
    let err = upload_outcome(&b)
        .await
        .expect_err("a file that is no bundle was imported");
    assert!(err.contains("Import failed (HTTP 400)"), "{err}");
    assert!(err.contains("bundle refused"), "{err}");
    b.screenshot("refused").await;
    assert!(
        staged_uploads(&app).is_empty(),
        "{:?}",
        staged_uploads(&app)
    );
    assert!(
        b.find("#upload-submit")
            .await
            .is_enabled()
            .await
            .expect("enabled"),
        "the button stays disabled after a failure"
    );

    b.close().await;
}

/// Wait until the element matching `css` shows `needle`, for at most `limit`, reloading the
/// page between looks.
async fn wait_for_text_across_reloads(b: &Browser, css: &str, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    // Read through a script: an element handle goes stale when the page refreshes itself.
    let script = format!(
        "const e = document.querySelector({}); return e ? e.innerText : '';",
        serde_json::Value::String(css.to_string())
    );
    loop {
        let text = b.execute(&script).await;
        if text.as_str().is_some_and(|t| t.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} did not show {needle:?} within {limit:?}; the page shows:\n{}",
            b.body_text().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A page showing a settled state does not refresh itself: look again as a user would.
        let here = b.current_url().await;
        let _ = b.client().goto(&here).await;
    }
}

#[tokio::test]
async fn console_checks_an_account_then_creates_scales_and_deletes_a_cluster() {
    let target = crate::providers_baremetal::e2e_target(
        serde_json::json!({}),
        "image:\n  name: node-installer\n",
    )
    .await;
    let app = TestApp::start_with(&["--resync-interval", "2"]);
    let admin = app.admin().await;
    let tenant = admin
        .create("/v1/tenants", serde_json::json!({"name": "site"}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let project = admin
        .create(
            "/v1/projects",
            serde_json::json!({"tenant_id": tenant, "name": "main"}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    admin
        .create(
            "/v1/profiles",
            serde_json::json!({"project_id": project, "name": "k8s", "layers": [
                {"type": "os", "pack": "node-image", "version": "1.0.0", "values": target.os_values},
                {"type": "kubernetes", "pack": "kubernetes-kubeadm", "version": "1.30.4"},
            ]}),
        )
        .await;
    let b = Browser::start(&app, "provisioning").await;
    log_in_in_browser(&b, "admin", PASSWORD).await;

    // A cloud account made in the console, with its placement settings.
    b.goto("/cloud-accounts").await;
    b.fill("account-name", "rack-a").await;
    b.execute("document.getElementById('account-kind').value = 'baremetal';")
        .await;
    b.fill("account-endpoint", &target.endpoint).await;
    b.fill("account-username", &target.username).await;
    b.fill("account-password", &target.password).await;
    let boot_iso = target.placement["boot_iso"].as_str().expect("boot_iso");
    b.fill("account-placement", &format!("boot_iso = {boot_iso}"))
        .await;
    b.click_css("#account-form button").await;
    b.wait_for_text(".flash.ok", "Cloud account rack-a created")
        .await;

    // Check it: the result and the placement pickers filled from the provider.
    b.click_css("#account-list a").await;
    b.click_css("form[action$='/validate'] button").await;
    wait_for_text_across_reloads(&b, ".flash.ok", "Check started", Duration::from_secs(10)).await;
    wait_for_text_across_reloads(&b, "#account-check", "Passed", Duration::from_secs(60)).await;
    assert!(
        b.exists("#placement-form select").await,
        "placement pickers: {}",
        b.body_text().await
    );
    b.screenshot("cloud-account-checked").await;

    // Create a cluster of 1 + 2: its page shows it Running with three machines.
    b.goto("/clusters").await;
    b.fill("cluster-name", "web").await;
    b.fill("w-count", "2").await;
    b.click_css("#cluster-form button").await;
    wait_for_text_across_reloads(
        &b,
        ".flash.ok",
        "Cluster web created",
        Duration::from_secs(10),
    )
    .await;
    wait_for_text_across_reloads(&b, "#cluster-status", "Running", Duration::from_secs(120)).await;
    let machines = b
        .execute("return document.getElementById('machines').innerText;")
        .await;
    let machines = machines.as_str().unwrap_or_default();
    assert_eq!(
        machines.matches("running").count(),
        3,
        "three running machines: {machines}"
    );
    b.screenshot("cluster-running").await;

    // Scale the workers to 3.
    b.fill("pool-workers", "3").await;
    b.click_css("#scale-form button").await;
    wait_for_text_across_reloads(&b, ".flash.ok", "being scaled", Duration::from_secs(10)).await;
    wait_for_text_across_reloads(&b, "#machines", "workers-2", Duration::from_secs(120)).await;
    wait_for_text_across_reloads(&b, "#cluster-status", "Running", Duration::from_secs(120)).await;
    let events = b
        .execute("return document.getElementById('events').innerText;")
        .await;
    assert!(
        events.as_str().unwrap_or_default().contains("created"),
        "{events}"
    );

    // Delete it: the list ends empty.
    b.click_css("#delete-form input[type=checkbox]").await;
    b.click_css("#delete-form button").await;
    wait_for_text_across_reloads(&b, ".flash.ok", "being deleted", Duration::from_secs(10)).await;
    b.goto("/clusters").await;
    wait_for_text_across_reloads(&b, "#cluster-list", "No clusters", Duration::from_secs(120))
        .await;
    b.close().await;
}
