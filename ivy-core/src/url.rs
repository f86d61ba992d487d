//! Broker and notifier URLs, parsed in one place (on the `url` crate) and shown in one way:
//! [`ParsedUrl::redacted`] and [`redact`] replace the password with `***`, and every URL in an
//! error or a log line goes through them. For the in-memory backend and `ivy-backends`; not a
//! stable API. It does not judge what a backend accepts: each backend checks its own options.

use std::borrow::Cow;
use std::fmt;

use crate::error::Error;

/// What stands for an unusable URL that might hold a secret anywhere.
const UNPARSEABLE: &str = "<unparseable URL>";

/// A URL split into its parts; user, password, path segments and query pairs percent-decoded.
///
/// Its `Debug` shows the redacted form.
#[derive(Clone)]
pub struct ParsedUrl {
    url: url::Url,
    path: Vec<String>,
    query: Vec<(String, String)>,
}

/// Why a text is not a URL. Never quotes the text, which may hold a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidUrl(url::ParseError);

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            url::ParseError::RelativeUrlWithoutBase => f.write_str("expected scheme://…"),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for InvalidUrl {}

impl ParsedUrl {
    /// Parses `text` as `scheme://[user[:password]@][host][:port][/path][?query]`.
    pub fn parse(text: &str) -> Result<Self, InvalidUrl> {
        let url = url::Url::parse(text).map_err(InvalidUrl)?;
        let path = match url.path_segments() {
            Some(segments) if !url.path().is_empty() => {
                segments.map(|s| decode(s).into_owned()).collect()
            }
            _ => Vec::new(),
        };
        let query = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(ParsedUrl { url, path, query })
    }

    /// The scheme, lowercase.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The host as written (an IPv6 address in brackets); `None` when empty.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str().filter(|h| !h.is_empty())
    }

    /// The port, when one is written.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// The user name; empty when there is none.
    pub fn user(&self) -> Cow<'_, str> {
        decode(self.url.username())
    }

    /// The password, when there is one.
    pub fn password(&self) -> Option<Cow<'_, str>> {
        self.url.password().map(decode)
    }

    /// Whether the URL carries a user or a password.
    pub fn has_credentials(&self) -> bool {
        !self.url.username().is_empty() || self.url.password().is_some()
    }

    /// The path's segments: none for no path, `[""]` for `/`.
    pub fn path_segments(&self) -> &[String] {
        &self.path
    }

    /// The query's `key=value` pairs in order, duplicates kept; a bare `key` has an empty value.
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// The whole URL, password included, without the query pairs whose key is in `keys`: for
    /// a client library that takes the URL itself but not the options that are Ivy's.
    pub fn without_query_keys(&self, keys: &[&str]) -> String {
        let kept: Vec<&(String, String)> = self
            .query
            .iter()
            .filter(|(k, _)| !keys.contains(&k.as_str()))
            .collect();
        if kept.len() == self.query.len() {
            return self.url.as_str().to_owned();
        }
        let mut url = self.url.clone();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept.iter().map(|(k, v)| (k, v)));
        }
        url.into()
    }

    /// The URL for errors and logs: the password replaced by `***` (a user name without a
    /// password too, since some clients take a lone user info as the password).
    pub fn redacted(&self) -> String {
        let mut url = self.url.clone();
        let hidden = if url.password().is_some() {
            url.set_password(Some("***"))
        } else if !url.username().is_empty() {
            url.set_username("***")
        } else {
            return url.into();
        };
        match hidden {
            Ok(()) => url.into(),
            Err(()) => UNPARSEABLE.to_owned(),
        }
    }
}

impl fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ParsedUrl").field(&self.redacted()).finish()
    }
}

/// The single-node URLs of a URL that names several nodes in its authority,
/// `scheme://[user[:password]@]host1[:port1],host2[:port2],…[/path][?query]` (the form of
/// RabbitMQ's and Redis' cluster clients, and of MongoDB's connection strings): one URL per
/// node, each with the same user info, path and query. A URL with one node gives itself back.
///
/// Fails, without quoting the URL, when a node is empty (`h1,,h2`, a trailing comma) or the
/// text is not `scheme://…`.
pub fn split_hosts(text: &str) -> Result<Vec<String>, String> {
    let parts = Authority::of(text).ok_or_else(|| "expected scheme://…".to_owned())?;
    if !parts.hosts.contains(',') {
        return Ok(vec![text.to_owned()]);
    }
    let mut nodes = Vec::new();
    for (i, host) in parts.hosts.split(',').enumerate() {
        let host = host.trim();
        if host.is_empty() {
            return Err(format!(
                "node {} of the comma-separated list is empty; write host[:port],host[:port],…",
                i + 1
            ));
        }
        nodes.push(format!(
            "{}{}{host}{}",
            parts.scheme_sep, parts.userinfo, parts.rest
        ));
    }
    Ok(nodes)
}

/// `scheme://`, `user:password@` (with its `@`; may be empty), the host list and the rest
/// (path, query, fragment) of a URL, split as text.
struct Authority<'a> {
    scheme_sep: &'a str,
    userinfo: &'a str,
    hosts: &'a str,
    rest: &'a str,
}

impl<'a> Authority<'a> {
    fn of(text: &'a str) -> Option<Self> {
        let start = text.find("://")? + 3;
        if start == 3 {
            return None;
        }
        let after = &text[start..];
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..end];
        let at = authority.rfind('@').map_or(0, |i| i + 1);
        Some(Authority {
            scheme_sep: &text[..start],
            userinfo: &authority[..at],
            hosts: &authority[at..],
            rest: &after[end..],
        })
    }
}

/// `text` for errors and logs: see [`ParsedUrl::redacted`]. Text that is not a URL is shown
/// only when it has no `@` (so no user info) and looks like `scheme://…`; anything else might
/// be a bare secret. A URL naming several nodes ([`split_hosts`]) is shown with all of them.
pub fn redact(text: &str) -> String {
    // Celery's form of a node list: whole URLs separated by `;`.
    if text.contains(';') && text.matches("://").count() > 1 {
        return text.split(';').map(redact).collect::<Vec<_>>().join(";");
    }
    if let Some(parts) = Authority::of(text).filter(|p| p.hosts.contains(',')) {
        let first = parts.hosts.split(',').next().unwrap_or_default();
        let one = format!(
            "{}{}{first}{}",
            parts.scheme_sep, parts.userinfo, parts.rest
        );
        let shown = redact(&one);
        // Put the other nodes back after the first, in the redacted form of the first.
        return match Authority::of(&shown) {
            Some(p) if shown != UNPARSEABLE => {
                format!("{}{}{}{}", p.scheme_sep, p.userinfo, parts.hosts, p.rest)
            }
            _ => UNPARSEABLE.to_owned(),
        };
    }
    match ParsedUrl::parse(text) {
        Ok(url) => url.redacted(),
        Err(_) if text.contains("://") && !text.contains('@') => text.to_owned(),
        Err(_) => UNPARSEABLE.to_owned(),
    }
}

/// An [`Error::Url`] for `url`, shown redacted.
pub fn error(url: &str, reason: impl Into<String>) -> Error {
    Error::Url {
        url: redact(url),
        reason: reason.into(),
    }
}

/// Percent-decodes `s` (the `url` crate leaves user info and path segments encoded); a `%`
/// not followed by two hex digits stays as it is, and bytes that are not UTF-8 become U+FFFD.
fn decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_decoded() {
        let u = ParsedUrl::parse("amqp://us%40r:p%3Ass@host:5672/%2f?a=1&b=x%20y&a=2&c").unwrap();
        assert_eq!(u.scheme(), "amqp");
        assert_eq!(u.host(), Some("host"));
        assert_eq!(u.port(), Some(5672));
        assert_eq!(u.user(), "us@r");
        assert_eq!(u.password().as_deref(), Some("p:ss"));
        assert_eq!(u.path_segments(), ["/"]);
        let pairs: Vec<(&str, &str)> = u
            .query_pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "1"), ("b", "x y"), ("a", "2"), ("c", "")]);

        let u = ParsedUrl::parse("sqs://?region=x").unwrap();
        assert_eq!((u.host(), u.port()), (None, None));
        assert!(u.path_segments().is_empty());
        assert!(!u.has_credentials());
        assert_eq!(ParsedUrl::parse("m://x/").unwrap().path_segments(), [""]);
    }

    #[test]
    fn bad_urls_do_not_quote_themselves() {
        for bad in ["amqp://u:secret@h:notaport/", "secret", "m://a b"] {
            let e = ParsedUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret") && !e.contains("a b"), "{e}");
        }
        assert_eq!(
            ParsedUrl::parse("no-scheme").unwrap_err().to_string(),
            "expected scheme://…"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact("redis://:secret@host:6379/1"),
            "redis://:***@host:6379/1"
        );
        assert_eq!(redact("redis://secret@host"), "redis://***@host");
        assert_eq!(
            redact("redis://host:6379/?p=a@b"),
            "redis://host:6379/?p=a@b"
        );
        assert_eq!(redact("memory://x"), "memory://x");
        assert_eq!(redact("secret"), UNPARSEABLE);
        assert_eq!(redact("amqp://u:secret@h:notaport/"), UNPARSEABLE);
        assert_eq!(redact("amqp://h:notaport/"), "amqp://h:notaport/");
        let u = ParsedUrl::parse("amqp://u:secret@h/").unwrap();
        assert!(!format!("{u:?}").contains("secret"));
    }

    #[test]
    fn several_nodes_split_into_one_url_each() {
        let nodes = split_hosts("amqp://u:p%40ss@a:5701,b:5702 , c/%2f?heartbeat=10").unwrap();
        assert_eq!(
            nodes,
            [
                "amqp://u:p%40ss@a:5701/%2f?heartbeat=10",
                "amqp://u:p%40ss@b:5702/%2f?heartbeat=10",
                "amqp://u:p%40ss@c/%2f?heartbeat=10",
            ]
        );
        assert_eq!(split_hosts("amqp://h:1/x").unwrap(), ["amqp://h:1/x"]);
        assert_eq!(
            split_hosts("redis://a,b").unwrap(),
            ["redis://a", "redis://b"]
        );
        for bad in [
            "amqp://u:secret@a,,b/",
            "amqp://u:secret@a,/",
            "amqp://u:secret@,a/",
        ] {
            let e = split_hosts(bad).unwrap_err();
            assert!(e.contains("empty") && !e.contains("secret"), "{e}");
        }
        assert!(split_hosts("secret").is_err());
    }

    #[test]
    fn several_nodes_are_redacted_together() {
        assert_eq!(
            redact("amqp://guest:secret@a:5701,b:5702/%2f?x=1"),
            "amqp://guest:***@a:5701,b:5702/%2f?x=1"
        );
        assert_eq!(redact("redis://secret@a,b/0"), "redis://***@a,b/0");
        assert_eq!(redact("amqp://a:1,b:2/"), "amqp://a:1,b:2/");
        assert_eq!(redact("amqp://u:secret@a:x,b/"), UNPARSEABLE);
        assert_eq!(
            redact("amqp://u:secret@a/;amqp://u:secret@b/"),
            "amqp://u:***@a/;amqp://u:***@b/"
        );
    }

    #[test]
    fn ivy_options_are_taken_out() {
        let u = ParsedUrl::parse("amqp://u:p@h:5672/%2f?queue_type=quorum&heartbeat=10").unwrap();
        assert_eq!(
            u.without_query_keys(&["queue_type"]),
            "amqp://u:p@h:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            u.without_query_keys(&["queue_type", "heartbeat"]),
            "amqp://u:p@h:5672/%2f"
        );
        assert_eq!(
            u.without_query_keys(&["other"]),
            "amqp://u:p@h:5672/%2f?queue_type=quorum&heartbeat=10"
        );
    }
}
