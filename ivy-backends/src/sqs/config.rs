//! The `sqs://` URL and its options, and how Ivy's queue names map onto SQS queue names.

use std::collections::HashSet;
use std::net::IpAddr;

use ivy_core::url::ParsedUrl;
use ivy_core::{Error, Result};

use super::MAX_DELAY;

/// SQS's longest visibility timeout, 12 hours.
pub(super) const MAX_VISIBILITY: u32 = 43_200;

/// SQS queue names have at most 80 characters, `.fifo` included.
const MAX_QUEUE_NAME: usize = 80;
/// The defaults of the URL options.
const DEFAULT_VISIBILITY: u32 = 30;
const DEFAULT_WAIT: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Config {
    /// The URL for errors and logs (it never holds a secret: credentials in it are refused).
    pub(super) url: String,
    /// `http://host:port` (or `https://` with `tls=true`) for a local or private endpoint;
    /// `None` lets the AWS chain pick the endpoint.
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) create_queues: bool,
    pub(super) visibility_timeout: u32,
    pub(super) wait_time: u32,
    pub(super) prefix: String,
    pub(super) group: Option<String>,
    pub(super) max_delay: u32,
}

impl Config {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let parsed = match ParsedUrl::parse(url) {
            Ok(parsed) if parsed.scheme() == "sqs" => parsed,
            Ok(_) => return Err(bad("expected an sqs:// URL".into())),
            Err(e) => return Err(bad(format!("malformed sqs:// URL: {e}"))),
        };
        if parsed.has_credentials() {
            return Err(bad(
                "credentials come from the AWS credential chain (environment, profile, \
                 instance role), not from the URL"
                    .into(),
            ));
        }
        if !parsed.path_segments().iter().all(String::is_empty) {
            return Err(bad(
                "an sqs:// URL has no path: queues are named by the tasks".into(),
            ));
        }
        let authority = match (parsed.host(), parsed.port()) {
            (Some(host), Some(port)) => Some(format!("{host}:{port}")),
            (Some(host), None) => Some(host.to_owned()),
            (None, None) => None,
            (None, Some(port)) => {
                return Err(bad(format!(
                    "`:{port}` is not a host or host:port for the endpoint"
                )))
            }
        };
        let mut config = Config {
            url: parsed.redacted(),
            endpoint: None,
            region: None,
            create_queues: true,
            visibility_timeout: DEFAULT_VISIBILITY,
            wait_time: DEFAULT_WAIT,
            prefix: String::new(),
            group: None,
            max_delay: MAX_DELAY.as_secs() as u32,
        };
        let mut tls = false;
        let mut seen = HashSet::new();
        for (key, value) in parsed.query_pairs() {
            let (key, value) = (key.as_str(), value.as_str());
            if !seen.insert(key) {
                return Err(bad(format!("option `{key}` is given twice")));
            }
            let number = |min: u32, max: u32| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "{key} must be a whole number of seconds from {min} to {max}, not `{value}`"
                        ))
                    })
            };
            let flag = || match value {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad(format!(
                    "{key} must be `true` or `false`, not `{value}`"
                ))),
            };
            match key {
                "region" => {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(bad(format!("`{value}` is not an AWS region")));
                    }
                    config.region = Some(value.to_owned());
                }
                "create_queues" => config.create_queues = flag()?,
                "tls" => tls = flag()?,
                "visibility_timeout" => config.visibility_timeout = number(1, MAX_VISIBILITY)?,
                "wait_time" => config.wait_time = number(0, 20)?,
                "max_delay" => config.max_delay = number(1, MAX_DELAY.as_secs() as u32)?,
                "prefix" => {
                    if !value.chars().all(queue_name_char) || value.len() > MAX_QUEUE_NAME / 2 {
                        return Err(bad(format!(
                            "prefix may hold up to {} letters, digits, `-` and `_`",
                            MAX_QUEUE_NAME / 2
                        )));
                    }
                    config.prefix = value.to_owned();
                }
                "group" => {
                    // SQS: 1 to 128 characters, alphanumeric and punctuation.
                    if value.is_empty()
                        || value.len() > 128
                        || !value.chars().all(|c| c.is_ascii_graphic())
                    {
                        return Err(bad(
                            "group must have 1 to 128 letters, digits or punctuation".into(),
                        ));
                    }
                    config.group = Some(value.to_owned());
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option `{key}` (known: region, create_queues, visibility_timeout, \
                         wait_time, prefix, group, max_delay, tls)"
                    )))
                }
            }
        }
        if let Some(authority) = authority {
            let scheme = if tls { "https" } else { "http" };
            config.endpoint = Some(format!("{scheme}://{authority}"));
        } else if tls {
            return Err(bad(
                "tls applies to an endpoint given as sqs://host:port; AWS's own endpoints always use TLS"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// The SQS queue name of Ivy queue `queue`, or of its dead letters.
    pub(super) fn sqs_name(&self, queue: &str, dead: bool) -> String {
        let suffix = if dead { "-dead" } else { "" };
        match queue.strip_suffix(".fifo") {
            Some(base) => format!("{}{base}{suffix}.fifo", self.prefix),
            None => format!("{}{queue}{suffix}", self.prefix),
        }
    }

    pub(super) fn check_queue_name(&self, queue: &str) -> Result<()> {
        let base = queue.strip_suffix(".fifo").unwrap_or(queue);
        let longest = self.sqs_name(queue, true).len();
        if base.is_empty() || !base.chars().all(queue_name_char) || longest > MAX_QUEUE_NAME {
            return Err(Error::Config(format!(
                "SQS queue names take letters, digits, `-` and `_` (plus a `.fifo` suffix), and \
                 with the prefix and `-dead` at most {MAX_QUEUE_NAME} characters: `{queue}` does not fit"
            )));
        }
        Ok(())
    }

    pub(super) fn group<'a>(&'a self, queue: &'a str) -> &'a str {
        self.group.as_deref().unwrap_or(queue)
    }
}

pub(super) fn queue_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

pub(super) fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

/// Whether a request to `endpoint` (`scheme://host[:port]`) is signed with static `test`
/// credentials: only when no credentials are configured (`configured` false) and the endpoint
/// is on this machine, where a local server such as moto takes any. Anywhere else the AWS
/// credential chain decides, and a missing credential shows up as its error.
pub(super) fn test_credentials(endpoint: &str, configured: bool) -> bool {
    !configured && is_loopback(endpoint)
}

/// Whether `endpoint`'s host is `localhost` or a loopback address.
fn is_loopback(endpoint: &str) -> bool {
    let authority = endpoint.split_once("://").map_or(endpoint, |(_, a)| a);
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else if authority.parse::<IpAddr>().is_ok() {
        authority
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_credentials_only_for_this_machine() {
        for local in [
            "http://127.0.0.1:4566",
            "http://127.8.9.10",
            "http://localhost:4566",
            "https://LOCALHOST",
            "http://sqs.localhost:80",
            "http://[::1]:4566",
        ] {
            assert!(test_credentials(local, false), "{local}");
            assert!(!test_credentials(local, true), "{local}");
        }
        for remote in [
            "https://sqs.internal:443",
            "http://10.0.0.5:4566",
            "http://localhost.example.com",
            "http://[2001:db8::1]:4566",
            "https://sqs.eu-west-1.amazonaws.com",
        ] {
            assert!(!test_credentials(remote, false), "{remote}");
        }
    }

    #[test]
    fn urls_parse() {
        let c = Config::parse("sqs://?region=us-east-1").unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert!(c.create_queues);
        assert_eq!(
            (c.visibility_timeout, c.wait_time, c.max_delay),
            (30, 20, 900)
        );

        let c = Config::parse(
            "sqs://127.0.0.1:4566/?region=eu-west-1&create_queues=false&visibility_timeout=5\
             &wait_time=0&prefix=app-&group=g1&max_delay=2",
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(!c.create_queues);
        assert_eq!((c.visibility_timeout, c.wait_time, c.max_delay), (5, 0, 2));
        assert_eq!(c.prefix, "app-");
        assert_eq!(c.group.as_deref(), Some("g1"));

        let c = Config::parse("sqs://sqs.internal:443?tls=true").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://sqs.internal:443"));
        assert_eq!(c.region, None);
    }

    #[test]
    fn bad_urls_are_refused_without_secrets() {
        for url in [
            "amqp://h",
            "sqs://key:secret@h:4566",
            "sqs://h:notaport",
            "sqs://h/queue",
            "sqs://?region=",
            "sqs://?visibility_timeout=0",
            "sqs://?visibility_timeout=43201",
            "sqs://?wait_time=21",
            "sqs://?max_delay=901",
            "sqs://?create_queues=maybe",
            "sqs://?prefix=a.b",
            "sqs://?tls=true",
            "sqs://?colour=blue",
            "sqs://?region=a&region=b",
        ] {
            match Config::parse(url) {
                Err(Error::Url { url: shown, reason }) => {
                    assert!(!shown.contains("secret"), "{shown}");
                    assert!(!reason.contains("secret"), "{reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn queue_names_map() {
        let c = Config::parse("sqs://?prefix=p-").unwrap();
        assert_eq!(c.sqs_name("jobs", false), "p-jobs");
        assert_eq!(c.sqs_name("jobs", true), "p-jobs-dead");
        assert_eq!(c.sqs_name("jobs.fifo", false), "p-jobs.fifo");
        assert_eq!(c.sqs_name("jobs.fifo", true), "p-jobs-dead.fifo");
        assert!(c.check_queue_name("jobs").is_ok());
        assert!(c.check_queue_name("jobs.fifo").is_ok());
        for bad in ["", ".fifo", "a.b", "a b", &"x".repeat(80)] {
            assert!(c.check_queue_name(bad).is_err(), "{bad:?}");
        }
    }
}
