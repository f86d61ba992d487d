//! RabbitMQ's management HTTP API, for what a passive declare cannot tell: messages in flight
//! (unacknowledged), the delay queues, and the list of queues.
//!
//! A plain HTTP/1.0 GET over a TCP connection: one request per command, on loopback or a
//! private network, so no HTTP client crate (and its TLS stack) is built for it. HTTP/1.0
//! keeps the answer unchunked, its end the end of the connection. `https://` is refused.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use ivy_core::url::ParsedUrl;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::output::Failure;

/// The largest answer read (the queue list of a large broker, a few MB).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Where the API is and how to log in.
pub struct Management {
    host: String,
    port: u16,
    /// Basic credentials, base64: never printed.
    auth: String,
    vhost: String,
    shown: String,
    timeout: Duration,
}

impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("url", &self.shown)
            .field("vhost", &self.vhost)
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
    pub fn new(
        url: &ParsedUrl,
        (user, password): (String, String),
        vhost: String,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        if url.scheme() != "http" {
            return Err(Failure::Usage(format!(
                "management URL {}: only http:// is supported",
                url.redacted()
            )));
        }
        let host = url
            .host()
            .ok_or_else(|| Failure::Usage(format!("management URL {}: no host", url.redacted())))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(80);
        let shown = format!("http://{}:{port}", url.host().unwrap_or_default());
        Ok(Management {
            host,
            port,
            auth: base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
            vhost,
            shown,
            timeout,
        })
    }

    /// The API's address, without credentials.
    pub fn url(&self) -> &str {
        &self.shown
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
        let exchange = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| e.to_string())?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\nAccept: application/json\r\n\r\n",
                self.host, self.port, self.auth
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            stream
                .take(MAX_ANSWER)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        let head = String::from_utf8_lossy(&answer[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        match status {
            200 => serde_json::from_slice(&answer[split + 4..])
                .map_err(|e| format!("the answer is not JSON: {e}")),
            401 => Err("the credentials were refused (HTTP 401)".into()),
            404 => Err(format!("vhost `{}` not found (HTTP 404)", self.vhost)),
            other => Err(format!("HTTP {other}")),
        }
    }
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
    #[test]
    fn vhosts_are_encoded() {
        assert_eq!(super::encode("/"), "%2F");
        assert_eq!(super::encode("a b"), "a%20b");
    }
}
