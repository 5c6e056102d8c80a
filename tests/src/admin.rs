//! The admin HTTP listener from the outside: a small JSON client for its API, and a headless
//! Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/install-test-deps.sh`) for the dashboard.
//!
//! The WebDriver client speaks the W3C protocol's few commands the dashboard test needs
//! (new session, navigate, find, click, text, run a script, screenshot) over plain HTTP to
//! chromedriver on a loopback port. chromedriver is stopped by its PID, after the browser
//! session is closed (which ends Chromium's processes).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Time limit of one HTTP request to the admin API or chromedriver.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one broker's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// The API at `addr`, sending no token.
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient {
            base: format!("http://{addr}"),
            token: None,
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("HTTP client"),
        }
    }

    /// The same API, sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> AdminClient {
        AdminClient {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any request; the status and the body parsed as JSON (`Value::Null` for an empty body;
    /// an error if it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let (status, text) = self.call_text(method, path, body).await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{path}: not JSON ({status}): {text}"))?
        };
        Ok((status, value))
    }

    /// Any request; the status and the body as text.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("request {path}"))?;
        let status = resp.status();
        Ok((status, resp.text().await?))
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// GET that must answer 200; its JSON.
    pub async fn ok(&self, path: &str) -> Result<Value> {
        let (status, v) = self.get(path).await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Polls GET `path` (200) until `done` holds for its JSON (bounded); returns that JSON.
    pub async fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.ok(path).await?;
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("GET {path}: condition not met within {timeout:?}; last: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A chromedriver process on a loopback port. Killed by PID on drop.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Option<Child>,
    port: u16,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free port and waits (bounded) until it is ready.
    pub async fn start() -> Result<ChromeDriver> {
        let exe = which("chromedriver")
            .ok_or_else(|| anyhow!("chromedriver not found: run scripts/install-test-deps.sh"))?;
        // A free port: bound and released just before chromedriver takes it (retried if
        // another process took it in between).
        let mut last = anyhow!("chromedriver did not start");
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new(&exe)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn chromedriver")?;
            let mut driver = ChromeDriver {
                child: Some(child),
                port,
            };
            match driver.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return Ok(driver),
                Err(e) => {
                    driver.stop();
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("chromedriver exited: {status}");
                }
            }
            let url = format!("http://127.0.0.1:{}/status", self.port);
            if let Ok(r) = http.get(&url).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("chromedriver not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A headless Chromium session with a fresh profile in `profile`.
    pub async fn session(&self, profile: &std::path::Path) -> Result<Browser> {
        let binary = which("chromium")
            .ok_or_else(|| anyhow!("chromium not found: run scripts/install-test-deps.sh"))?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1600,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": binary, "args": args }
                }
            }
        });
        let base = format!("http://127.0.0.1:{}", self.port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let v = wd(&http, Method::POST, &format!("{base}/session"), Some(caps)).await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_owned();
        Ok(Browser {
            http,
            url: format!("{base}/session/{id}"),
            port: self.port,
            id: Some(id),
        })
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One WebDriver command; the response's `value`, or its error.
async fn wd(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut req = http.request(method, url);
    // WebDriver wants a JSON body on every POST, `{}` when there is nothing to say.
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("WebDriver {url}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .with_context(|| format!("WebDriver {url}: body"))?;
    if !status.is_success() {
        bail!("WebDriver {url}: {status} {}", v["value"]);
    }
    Ok(v["value"].clone())
}

/// A browser session. Closed (ending Chromium) by [`Browser::quit`], or on drop.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    url: String,
    port: u16,
    id: Option<String>,
}

/// A found element's WebDriver reference.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        wd(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .cmd(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        let id = v
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no element reference in {v}"))?;
        Ok(Element(id.to_owned()))
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.cmd(
            Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        let v = self
            .cmd(Method::GET, &format!("/element/{}/text", e.0), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns true (bounded).
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(script, json!([])).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let v = self.cmd(Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot: base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Closes the session (and Chromium).
    pub async fn quit(mut self) -> Result<()> {
        if self.id.take().is_some() {
            wd(&self.http, Method::DELETE, &self.url, None).await?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    /// A test that failed half-way still closes Chromium: a blocking `DELETE /session/ID`
    /// (raw HTTP/1.1, bounded), since drop cannot await.
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let req = format!(
            "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

/// `name` on PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
