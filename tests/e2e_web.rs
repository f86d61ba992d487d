//! examples/web against RabbitMQ and Redis, as two processes of the one binary: `web worker`
//! and `web serve`. A client POSTs a call, follows its Server-Sent Events to the result, and
//! reads its status; errors come back as JSON. The client is a few lines of HTTP/1.0 over a
//! `TcpStream` (HTTP/1.0: no chunked encoding to decode, the body ends when the connection
//! does), which is all a test needs.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

/// A process of examples/web, its stderr in a log file; killed when dropped.
struct Web {
    child: Child,
    log: PathBuf,
}

impl Web {
    /// Starts `web <mode>` on `queue` and waits for it to log `ready`.
    async fn start(mode: &str, queue: &str, ready: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{queue}-{mode}.log"));
        let child = Command::new(processes::example("web"))
            .arg(mode)
            .env("IVY_BROKER_URL", processes::amqp_url())
            .env("IVY_RESULT_URL", processes::redis_url())
            .env("IVY_QUEUE", queue)
            .env("IVY_WEB_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("IVY_KEYS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the web example");
        let mut web = Web { child, log };
        web.wait_for_log(ready).await;
        web
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "web exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "web did not log {needle:?} within {WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address `web serve` printed (`listening on http://127.0.0.1:PORT`).
    fn addr(&self) -> String {
        let log = self.log();
        let rest = log
            .split("listening on http://")
            .nth(1)
            .expect("the address");
        rest.split_whitespace()
            .next()
            .expect("an address")
            .to_string()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The worker and the service on a queue of their own.
async fn start() -> (Web, Web) {
    let queue = processes::queue("web");
    let worker = Web::start("worker", &queue, "worker started").await;
    let server = Web::start("serve", &queue, "listening on http://").await;
    (worker, server)
}

/// One HTTP/1.0 exchange: the status code and the whole body.
async fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to web serve");
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(body) = body {
            req += "Content-Type: application/json\r\n";
            req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
        } else {
            req += "\r\n";
        }
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("read the response");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no whole answer to {method} {path} within {WAIT:?}"));
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.expect("a status code"), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `POST /calls`: the new call's id.
async fn post_call(addr: &str, body: &str) -> String {
    let (status, answer) = request(addr, "POST", "/calls", Some(body)).await;
    assert_eq!(status, 202, "{answer}");
    let answer = json(&answer);
    let id = answer["id"].as_str().expect("an id").to_string();
    assert_eq!(answer["events"], format!("/calls/{id}/events"));
    id
}

/// The events of `GET /calls/{id}/events`, in order, read until the stream ends.
async fn events(addr: &str, id: &str) -> Vec<(String, Value)> {
    let (stream, head) = open_events(addr, id).await;
    read_events(stream, head).await
}

/// Sends `GET /calls/{id}/events` and waits for the head of the answer: from then on the
/// service follows the call. The stream, and what was read of it.
async fn open_events(addr: &str, id: &str) -> (TcpStream, Vec<u8>) {
    let open = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to web serve");
        let req = format!("GET /calls/{id}/events HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "the stream closed before its head: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        }
        (stream, raw)
    };
    tokio::time::timeout(WAIT, open)
        .await
        .unwrap_or_else(|_| panic!("no head of the event stream within {WAIT:?}"))
}

/// The rest of an event stream opened with [`open_events`], parsed.
async fn read_events(mut stream: TcpStream, mut raw: Vec<u8>) -> Vec<(String, Value)> {
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("the event stream did not end within {WAIT:?}"))
        .expect("read the event stream");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.contains(" 200 "), "{head}\n{body}");
    body.split("\n\n")
        .filter(|block| block.contains("event:"))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim_start().to_string())
                    .unwrap_or_else(|| panic!("no {name} in {block:?}"))
            };
            (field("event:"), json(&field("data:")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_then_follow_progress_to_the_result_then_read_the_status() {
    let queue = processes::queue("web");
    let server = Web::start("serve", &queue, "listening on http://").await;
    let addr = server.addr();
    let id = post_call(&addr, r#"{"title": "Q3", "pages": 5}"#).await;
    let (stream, head) = open_events(&addr, &id).await;
    // Only now a worker: every progress report comes after the stream opened.
    let _worker = Web::start("worker", &queue, "worker started").await;
    let events = read_events(stream, head).await;
    let (last, result) = events.last().expect("events");
    assert_eq!(last, "result", "{events:?}");
    assert_eq!(result["status"], "succeeded", "{events:?}");
    assert_eq!(result["result"]["title"], "Q3");
    assert_eq!(result["result"]["pages"], 5);
    let progress: Vec<u64> = events[..events.len() - 1]
        .iter()
        .map(|(name, data)| {
            assert_eq!(name, "progress", "{events:?}");
            assert_eq!(data["of"], 5);
            data["page"].as_u64().expect("a page number")
        })
        .collect();
    // Reported to this stream in order (the latest when several arrive at once), the last
    // page included, before the result.
    assert!(
        !progress.is_empty(),
        "no progress before the result: {events:?}"
    );
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&5), "{progress:?}");

    let (status, body) = request(&addr, "GET", &format!("/calls/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    let view = json(&body);
    assert_eq!(view["status"], "succeeded", "{body}");
    assert_eq!(view, *result, "GET says what the stream's last event said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_bad_requests_are_json_with_a_message() {
    let (_worker, server) = start().await;
    let addr = server.addr();

    // The task fails: the stream and the status say so, with the task's message.
    let id = post_call(&addr, r#"{"title": " ", "pages": 2}"#).await;
    let events = events(&addr, &id).await;
    let (last, result) = events.last().expect("events");
    assert_eq!(last, "result", "{events:?}");
    assert_eq!(result["status"], "failed", "{events:?}");
    assert_eq!(result["error"], "a report needs a title", "{events:?}");
    let (status, body) = request(&addr, "GET", &format!("/calls/{id}"), None).await;
    assert_eq!((status, json(&body)), (200, result.clone()));

    // A call nobody made has no stored result: pending.
    let (status, body) = request(&addr, "GET", "/calls/no-such-call", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "pending", "{body}");

    // Requests the service refuses: 4xx, and the reason as JSON (Display text, not Debug).
    for (method, path, body, code, says) in [
        (
            "POST",
            "/calls",
            Some(r#"{"title": "Q3"}"#),
            422,
            "missing field `pages`",
        ),
        ("POST", "/calls", Some("not json"), 400, "expected ident"),
        (
            "POST",
            "/calls",
            Some(r#"{"title": "Q3", "pages": 0}"#),
            400,
            "pages must be between 1 and 50, not 0",
        ),
        ("GET", "/reports", None, 404, "no route for GET /reports"),
    ] {
        let (status, answer) = request(&addr, method, path, body).await;
        assert_eq!(status, code, "{method} {path}: {answer}");
        let error = json(&answer)["error"].as_str().map(str::to_string);
        let error = error.unwrap_or_else(|| panic!("no error message: {answer}"));
        assert!(error.contains(says), "{method} {path}: {error}");
    }
}

/// The Rust blocks of docs/web-service.md are excerpts of examples/web, word for word: the
/// example is built and run by the tests above, so the chapter's code is too.
#[test]
fn the_chapter_shows_the_example_s_own_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let example: String = ["main.rs", "routes.rs", "tasks.rs"]
        .iter()
        .map(|f| read(&format!("examples/web/{f}")))
        .collect();
    let chapter = read("docs/web-service.md");
    let blocks: Vec<&str> = chapter
        .split("```rust")
        .skip(1)
        .map(|b| {
            b.split_once('\n')
                .and_then(|(_, b)| b.split_once("```"))
                .expect("a closed block")
                .0
        })
        .collect();
    assert!(!blocks.is_empty(), "no Rust blocks in docs/web-service.md");
    for block in blocks {
        // Runs of lines, cut at blank lines and at the `// …` that marks what is left out.
        let mut run: Vec<&str> = Vec::new();
        for line in block.lines().chain([""]) {
            if !line.trim().is_empty() && line.trim() != "// …" {
                run.push(line);
                continue;
            }
            let part = run.join("\n");
            assert!(
                example.contains(&part),
                "docs/web-service.md shows code that is not in examples/web:\n{part}"
            );
            run.clear();
        }
    }
}
