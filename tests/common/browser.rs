//! A minimal WebDriver client for Debian's chromium + chromium-driver (W3C protocol over
//! HTTP), so page tests run in a real browser from Rust.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn post(url: &str, body: Value) -> Value {
    let mut r = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(&body)
        .unwrap_or_else(|e| panic!("webdriver {url}: {e}"));
    r.body_mut().read_json::<Value>().unwrap()
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    /// Whether Debian's chromium and chromium-driver are installed. Tests check this first
    /// (`common::require`), so that a missing browser is a reported skip, or a CI failure.
    pub fn available() -> bool {
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
    }

    /// `None` only when chromium or chromedriver is not installed.
    pub fn start() -> Option<Browser> {
        if !Self::available() {
            return None;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1400,900", format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let v = post(&format!("{base}/session"), caps);
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no webdriver session: {v}"))
            .to_string();
        Some(Browser {
            driver,
            base,
            session,
            _profile: profile,
        })
    }

    fn cmd(&self, path: &str, body: Value) -> Value {
        post(
            &format!("{}/session/{}/{path}", self.base, self.session),
            body,
        )["value"]
            .clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("url", json!({ "url": url }));
    }

    /// Run JavaScript in the page and return its result.
    pub fn eval(&self, script: &str) -> Value {
        self.cmd("execute/sync", json!({ "script": script, "args": [] }))
    }

    pub fn screenshot(&self, path: &Path) {
        let v: Value = ureq::get(&format!(
            "{}/session/{}/screenshot",
            self.base, self.session
        ))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
