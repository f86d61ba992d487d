//! The browser and the dashboard process for `tests/dashboard.rs`: chromedriver with headless
//! chromium (fantoccini over plain HTTP), and `ivy dashboard` on a free loopback port.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{amqp_url, redis_url};

/// chromedriver on a free loopback port, and one session of headless chromium.
pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    /// Fails (never skips) when chromium or chromedriver cannot be started.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (scripts/services installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,960",
                         "--hide-scrollbars", "--force-device-scale-factor=1"],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        _driver: driver,
                    }
                }
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("chromium did not start through chromedriver on {url}: {last:?}");
    }

    /// Runs `script` (a function body) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Waits until `script` returns true in the page, for at most 30 s; then fails showing
    /// the page's text.
    pub async fn wait(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.js(script).await != true {
            if std::time::Instant::now() > deadline {
                let page = self.js("return document.body.innerText;").await;
                panic!("timed out waiting for {what}; the page says: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element `selector` matches (null when none).
    pub async fn text(&self, selector: &str) -> Value {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.textContent.trim() : null;",
            json!(selector)
        ))
        .await
    }

    pub async fn close(self) {
        self.client.close().await.ok();
    }
}

/// `ivy dashboard` on a free loopback port, until dropped.
pub struct Dashboard {
    pub url: String,
    _child: tokio::process::Child,
}

impl Dashboard {
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[]).await
    }

    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ivy"));
        command
            .args(["dashboard", "--listen", "127.0.0.1:0", "--refresh", "500ms"])
            .args(args)
            .env_remove("IVY_KEYS")
            .env_remove("IVY_DASHBOARD_TOKEN")
            .env("IVY_BROKER_URL", amqp_url())
            .env("IVY_RESULT_URL", redis_url())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the ivy binary runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // Notes may come first; the line with the address says it is ready.
        let find_url = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("dashboard: {line}");
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                    return url.trim_end_matches('/').to_owned();
                }
            }
            panic!("the dashboard exited without saying where it listens");
        };
        let url = tokio::time::timeout(Duration::from_secs(30), find_url)
            .await
            .expect("the dashboard starts within 30 s");
        // Its notes, shown when a test fails; read so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("dashboard: {line}");
            }
        });
        Dashboard { url, _child: child }
    }
}
