//! RabbitMQ's management HTTP API, for what a passive declare cannot tell: messages in flight
//! (unacknowledged), the delay queues, and the list of queues.
//!
//! It owns where the API is (HTTPS on 15671 for an `amqps://` broker, HTTP on 15672 for
//! `amqp://`, or the URL given) and whether the AMQP user's password may be sent there: over
//! TLS, to loopback, or in clear text only when the user asked for it ([`access`]). Otherwise
//! it never connects, and every reading fails with the reason and how to enable it, so the
//! commands fall back as when the API is down. The client is hyper-util's on hyper-rustls
//! (rustls with ring, the system's roots), the one the AWS SDK and lapin already build.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ivy_core::url::ParsedUrl;
use serde_json::Value;

use crate::output::Failure;

/// The largest answer read (the queue list of a large broker, a few MB).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// RabbitMQ's management ports: plain HTTP, and HTTPS (its `management.ssl.port`).
const HTTP_PORT: u16 = 15672;
const HTTPS_PORT: u16 = 15671;
/// How long one request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Whether the AMQP user's credentials may be sent to the API, decided once from its URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// HTTPS, or loopback, or plain HTTP the user asked for.
    Allowed,
    /// Plain HTTP to another host, not asked for: the password would cross the network in
    /// clear text. The API is not used.
    ClearText,
}

/// The decision: `asked_for_clear_text` is an explicit `http://` management URL or
/// `--insecure-management`.
pub fn access(scheme: &str, host: &str, asked_for_clear_text: bool) -> Access {
    if scheme == "https" || asked_for_clear_text || loopback(host) {
        Access::Allowed
    } else {
        Access::ClearText
    }
}

/// `localhost`, 127.0.0.0/8 or `[::1]`.
fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The API's address when none is given: on the AMQP host, over TLS when the broker is.
pub fn default_url(amqp: &ParsedUrl) -> String {
    let host = amqp.host().unwrap_or("localhost");
    if amqp.scheme() == "amqps" {
        format!("https://{host}:{HTTPS_PORT}")
    } else {
        format!("http://{host}:{HTTP_PORT}")
    }
}

/// Where the API is and how to log in.
pub struct Management {
    /// `scheme://host:port`, without credentials.
    base: String,
    /// Basic credentials, base64: never printed.
    auth: String,
    vhost: String,
    /// The client (boxed: it is large, and most commands never use it), or why the API is
    /// not used.
    client: Result<Box<HttpsClient>, String>,
    timeout: Duration,
}

impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("url", &self.base)
            .field("vhost", &self.vhost)
            .field("skipped", &self.client.as_ref().err())
            .finish_non_exhaustive()
    }
}

/// One queue as the API reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiQueue {
    pub name: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

impl Management {
    /// `asked_for_clear_text`: see [`access`].
    pub fn new(
        url: &ParsedUrl,
        (user, password): (String, String),
        vhost: String,
        connect_timeout: Duration,
        asked_for_clear_text: bool,
    ) -> Result<Self, Failure> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Failure::Usage(format!(
                "management URL {}: http:// or https:// only",
                url.redacted()
            )));
        }
        let host = url
            .host()
            .ok_or_else(|| Failure::Usage(format!("management URL {}: no host", url.redacted())))?;
        let port = url
            .port()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let base = format!("{scheme}://{host}:{port}");
        let client = match access(scheme, host, asked_for_clear_text) {
            Access::Allowed => client(connect_timeout).map(Box::new),
            Access::ClearText => Err(format!(
                "not sending the AMQP password in clear text to {base}: give \
                 --management-url https://{host}:{HTTPS_PORT} (RabbitMQ's TLS port), or accept \
                 clear text with --management-url http://… or --insecure-management"
            )),
        };
        Ok(Management {
            base,
            auth: base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
            vhost,
            client,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The API's address, without credentials.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The queues of the AMQP URL's vhost.
    pub async fn queues(&self) -> Result<Vec<ApiQueue>, String> {
        let path = format!(
            "/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers",
            encode(&self.vhost)
        );
        let answer = self.get(&path).await?;
        let list = answer
            .as_array()
            .ok_or_else(|| "the answer is not a list of queues".to_owned())?;
        let number = |q: &Value, k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(list
            .iter()
            .filter_map(|q| {
                Some(ApiQueue {
                    name: q.get("name")?.as_str()?.to_owned(),
                    ready: number(q, "messages_ready"),
                    unacked: number(q, "messages_unacknowledged"),
                    consumers: number(q, "consumers"),
                })
            })
            .collect())
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let client = self.client.as_ref().map_err(String::clone)?;
        let request = Request::get(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Basic {}", self.auth))
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| chain(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        match status {
            StatusCode::OK => {
                serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
            }
            StatusCode::UNAUTHORIZED => Err("the credentials were refused (HTTP 401)".into()),
            StatusCode::NOT_FOUND => Err(format!("vhost `{}` not found (HTTP 404)", self.vhost)),
            other => Err(format!("HTTP {}", other.as_u16())),
        }
    }
}

/// A client for HTTP and HTTPS: the system's roots (as lapin's `amqps://`), ring, HTTP/1.
fn client(connect_timeout: Duration) -> Result<HttpsClient, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// An error and its causes on one line (hyper-util's own says only "client error (Connect)").
fn chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes a path segment (the vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> ParsedUrl {
        ParsedUrl::parse(url).unwrap()
    }

    #[test]
    fn vhosts_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("a b"), "a%20b");
    }

    #[test]
    fn a_tls_broker_gets_the_tls_management_port() {
        assert_eq!(
            default_url(&parsed("amqps://u:p@rabbit.example:5671/%2f")),
            "https://rabbit.example:15671"
        );
        assert_eq!(
            default_url(&parsed("amqp://u:p@rabbit.example/%2f")),
            "http://rabbit.example:15672"
        );
        assert_eq!(
            default_url(&parsed("amqps://[::1]:5671")),
            "https://[::1]:15671"
        );
    }

    #[test]
    fn credentials_go_in_clear_text_only_to_loopback_or_when_asked() {
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"] {
            assert_eq!(access("http", host, false), Access::Allowed, "{host}");
        }
        for host in ["rabbit.example", "10.0.0.5", "[fe80::1]"] {
            assert_eq!(access("http", host, false), Access::ClearText, "{host}");
            assert_eq!(access("http", host, true), Access::Allowed, "{host}");
            assert_eq!(access("https", host, false), Access::Allowed, "{host}");
        }
    }

    /// Without the opt-in nothing is sent: no connection is even opened.
    #[tokio::test]
    async fn a_remote_http_api_is_skipped_with_the_reason() {
        let m = Management::new(
            &parsed("http://192.0.2.1:15672"),
            ("u".into(), "secret".into()),
            "/".into(),
            Duration::from_secs(5),
            false,
        )
        .unwrap();
        let why = m.queues().await.unwrap_err();
        assert!(why.contains("clear text"), "{why}");
        assert!(why.contains("--insecure-management"), "{why}");
        assert!(!why.contains("secret"), "{why}");
    }

    /// A server that accepts and never answers: the request fails in one line, in time.
    #[tokio::test]
    async fn a_silent_api_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let mut m = Management::new(
            &parsed(&format!("http://127.0.0.1:{port}")),
            ("u".into(), "p".into()),
            "/".into(),
            Duration::from_secs(5),
            false,
        )
        .unwrap();
        m.timeout = Duration::from_millis(300);
        let why = m.queues().await.unwrap_err();
        assert_eq!(why, "no answer within 300ms");
        held.abort();
    }
}
