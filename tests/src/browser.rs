//! A real browser for the dashboard's tests: headless Chromium driven by `chromedriver`
//! over the W3C WebDriver protocol (plain JSON over HTTP, so a few calls suffice).
//!
//! Without `chromedriver` the tests that need it skip loudly, unless
//! `LIFEBOAT_REQUIRE_CHROMIUM` is set (CI sets it), where they fail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

fn which(cmd: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or `None` (after a loud
    /// message) where they are not installed and `LIFEBOAT_REQUIRE_CHROMIUM` is not set.
    pub fn start() -> Option<Browser> {
        let (Some(driver), Some(chromium)) = (which("chromedriver"), which("chromium")) else {
            assert!(
                std::env::var_os("LIFEBOAT_REQUIRE_CHROMIUM").is_none(),
                "chromedriver and chromium are required (LIFEBOAT_REQUIRE_CHROMIUM is set): apt-get install chromium chromium-driver"
            );
            eprintln!(
                "\n!!! SKIPPED: this test needs headless Chromium (apt-get install chromium chromium-driver)\n!!! set LIFEBOAT_REQUIRE_CHROMIUM=1 to make this a failure\n"
            );
            return None;
        };
        let port = crate::free_ports(1)[0];
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build(),
        );
        let base = format!("http://127.0.0.1:{port}");
        crate::wait_for("chromedriver to answer", Duration::from_secs(30), || {
            http.get(format!("{base}/status"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1360,1000", "--hide-scrollbars",
                         format!("--user-data-dir={}", b._profile.path().display())],
            },
        }}});
        let created = b.call("POST", "/session", Some(caps));
        b.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_string();
        Some(b)
    }

    /// One WebDriver command; returns its `value`, panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let resp = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status == 200, "WebDriver {method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Loads a page and waits for it to finish loading.
    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.session_path("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a script in the page and returns its result (reading the page, not changing it).
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The visible text of the first element matching `css` (None: no such element).
    pub fn text(&self, css: &str) -> Option<String> {
        let v = self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            json!(css)
        ));
        v.as_str().map(str::to_string)
    }

    /// Every element matching `css`: its attribute `attr` and its visible text.
    pub fn all(&self, css: &str, attr: &str) -> Vec<(String, String)> {
        let v = self.eval(&format!(
            "return Array.from(document.querySelectorAll({})).map(e => [e.getAttribute({}) || '', e.innerText || e.textContent || '']);",
            json!(css),
            json!(attr)
        ));
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_string(),
                            p[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Clicks the first element matching `css`, as a user would.
    pub fn click(&self, css: &str) {
        let found = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    /// Clicks a link or button that loads another page, and waits until that page has
    /// loaded (a form's answer can come after the click returns).
    pub fn follow(&self, css: &str) {
        self.eval("window.__lifeboat_left = true; return null;");
        self.click(css);
        crate::wait_for(
            &format!("the page after clicking {css}"),
            Duration::from_secs(60),
            || {
                let v = self
                    .eval("return !window.__lifeboat_left && document.readyState === 'complete';");
                (v == Value::Bool(true)).then_some(())
            },
        );
    }

    /// A PNG of the whole page (the window's width, the page's full height).
    pub fn screenshot(&self, path: &Path) {
        let height = self
            .eval("return Math.ceil(document.documentElement.scrollHeight);")
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(json!({ "width": 1360, "height": height + 140 })),
        );
        let b64 = self.call("GET", &self.session_path("/screenshot"), None);
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
