//! What `ivy dashboard` refuses, over raw TCP against the real RabbitMQ and Redis: a 65th
//! live view (event stream) while 64 are open, until one closes; and, at start, a token a
//! cookie cannot carry.

#[allow(dead_code)] // The browser half is for tests/dashboard.rs.
#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Dashboard;
use common::{amqp_url, queue, redis_url, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// As the server's `MAX_EVENT_STREAMS`.
const MAX_EVENT_STREAMS: usize = 64;

/// Opens `/events`; the connection and the answer's head (status line and headers).
async fn open_events(url: &str) -> (TcpStream, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_given_back() {
    let q = queue("dash-cap");
    let dash = Dashboard::start(&[&q]).await;

    let mut open = Vec::new();
    for n in 0..MAX_EVENT_STREAMS {
        let (stream, head) = open_events(&dash.url).await;
        assert_eq!(status(&head), 200, "stream {n}: {head}");
        open.push(stream);
    }

    // One more: refused, with a page that says why.
    let (mut stream, head) = open_events(&dash.url).await;
    assert_eq!(status(&head), 503, "{head}");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("live views are open already"), "{body}");

    // A tab closes: its place is given back (once the server sees the connection gone).
    drop(open.pop());
    let (stream, _) = until("a place given back", || async {
        let (stream, head) = open_events(&dash.url).await;
        (status(&head) == 200).then_some((stream, head))
    })
    .await;
    open.push(stream);
}

#[tokio::test]
async fn a_token_a_cookie_cannot_carry_is_refused_at_start() {
    // Bounded: a dashboard that accepted the token would serve until stopped.
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        common::ivy(
            &[
                "dashboard",
                "--token",
                "0123456789abcdef; Domain=evil.example",
            ],
            &[
                ("IVY_BROKER_URL", &amqp_url()),
                ("IVY_RESULT_URL", &redis_url()),
            ],
        ),
    )
    .await
    .expect("refused at start, not served");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cookie cannot carry"), "{run:?}");
}
