//! The notifier URLs that name more than one node: a primary found through Redis Sentinel
//! (`redis+sentinel://`) and a Redis Cluster (`redis+cluster://`). Parses them and refuses bad
//! ones, naming the URL with its passwords hidden; connecting is `redis/conn.rs`'s business.
//!
//! redis-rs has no URL form for either (it takes lists of nodes), so these follow the forms
//! users know from other clients: `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master>[/<db>]`
//! is the one of redis-py's URL helpers, RedisVL and Prefect (sentinel port 26379 by default);
//! `redis+cluster://[[user]:password@]host[:port][,host[:port]…][/]` the same shape for a
//! cluster's seed nodes (port 6379 by default). Lettuce's `redis-sentinel://…#master` keeps the
//! master name in the fragment, which shells and `.env` files treat as a comment; hence the
//! path.

use ivy_core::url::ParsedUrl;
use ivy_core::{Error, Result};

use super::durable::{Wait, WAIT_OPTIONS};
use super::namespace::{Namespace, PREFIX_OPTION};
use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo,
};

/// `redis+sentinel://…/<master name>[/<db>]`.
pub const SENTINEL_SCHEME: &str = "redis+sentinel";
/// `redis+cluster://host:port,host:port/`.
pub const CLUSTER_SCHEME: &str = "redis+cluster";
const SENTINEL_PORT: u16 = 26379;
const REDIS_PORT: u16 = 6379;
/// Query options of a Sentinel URL: the sentinels' own credentials, when they ask for any (the
/// URL's user info is the data nodes').
const SENTINEL_OPTIONS: [&str; 5] = [
    "sentinel_username",
    "sentinel_password",
    WAIT_OPTIONS[0],
    WAIT_OPTIONS[1],
    PREFIX_OPTION,
];
/// Query options of a Cluster URL.
const CLUSTER_OPTIONS: [&str; 3] = [WAIT_OPTIONS[0], WAIT_OPTIONS[1], PREFIX_OPTION];

/// The scheme of a URL that lists several nodes, if `url` is one (such URLs do not parse as
/// one URL: their host part holds commas).
pub(crate) fn multi_node_scheme(url: &str) -> Option<&'static str> {
    let (scheme, _) = url.split_once("://")?;
    [
        SENTINEL_SCHEME,
        CLUSTER_SCHEME,
        "rediss+sentinel",
        "rediss+cluster",
    ]
    .into_iter()
    .find(|known| known.eq_ignore_ascii_case(scheme))
}

/// A URL listing nodes: `scheme://[userinfo@]host[:port][,host[:port]…][/path][?query]`.
#[derive(Debug)]
struct NodesUrl {
    redacted: String,
    nodes: Vec<(String, u16)>,
    user: String,
    password: Option<String>,
    path: Vec<String>,
    query: Vec<(String, String)>,
}

/// `scheme`, user info, hosts and the rest (path and query) of `scheme://[userinfo@]hosts[/…][?…]`.
fn split(url: &str) -> Option<(&str, Option<&str>, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    Some(match authority.rsplit_once('@') {
        Some((u, h)) => (scheme, Some(u), h, tail),
        None => (scheme, None, authority, tail),
    })
}

/// An [`Error::Url`] for `url`, a URL listing nodes, shown with its passwords hidden.
pub(super) fn refuse(url: &str, reason: impl Into<String>) -> Error {
    match split(url) {
        Some((scheme, userinfo, hosts, tail)) => Error::Url {
            url: redact(scheme, userinfo, hosts, tail),
            reason: reason.into(),
        },
        None => ivy_core::url::error(url, reason),
    }
}

impl NodesUrl {
    fn parse(url: &str, default_port: u16) -> Result<Self> {
        let Some((scheme, userinfo, hosts, tail)) = split(url) else {
            return Err(ivy_core::url::error(url, "expected scheme://…"));
        };
        let redacted = redact(scheme, userinfo, hosts, tail);
        let bad = |reason: String| Error::Url {
            url: redacted.clone(),
            reason,
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let one = ParsedUrl::parse(&format!("redis://{host}"))
                .map_err(|e| bad(format!("bad node `{host}`: {e}")))?;
            let name = one
                .host()
                .ok_or_else(|| bad(format!("bad node `{host}`")))?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            nodes.push((name.to_owned(), one.port().unwrap_or(default_port)));
        }
        if nodes.is_empty() {
            return Err(bad("lists no node: expected host:port[,host:port…]".into()));
        }
        // The user info, path and query as a one-host URL has them, decoded.
        let at = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let one = ParsedUrl::parse(&format!("redis://{at}node{tail}"))
            .map_err(|e| bad(format!("malformed URL: {e}")))?;
        Ok(NodesUrl {
            nodes,
            user: one.user().into_owned(),
            password: one.password().map(|p| p.into_owned()),
            path: one.path_segments().to_vec(),
            query: one.query_pairs().to_vec(),
            redacted,
        })
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Url {
            url: self.redacted.clone(),
            reason: reason.into(),
        }
    }

    fn refuse_options_but(&self, known: &[&str]) -> Result<()> {
        match self
            .query
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(self.bad(format!(
                "unknown option `{k}` (known: {})",
                known.join(", ")
            ))),
        }
    }

    fn option(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The data nodes' settings: credentials, database, RESP3 (for subscriptions' pushes).
    fn redis_settings(&self, db: i64) -> RedisConnectionInfo {
        let mut settings = RedisConnectionInfo::default()
            .set_db(db)
            .set_protocol(ProtocolVersion::RESP3);
        if !self.user.is_empty() {
            settings = settings.set_username(&self.user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        settings
    }
}

/// `user:***@` or `***@` for the user info (a lone user may be a password, as redis-rs reads
/// it), and `sentinel_password=***`.
fn redact(scheme: &str, userinfo: Option<&str>, hosts: &str, tail: &str) -> String {
    let userinfo = match userinfo {
        None => String::new(),
        Some(u) => match u.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => "***@".to_owned(),
        },
    };
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k == "sentinel_password" => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
    };
    format!("{scheme}://{userinfo}{hosts}{tail}")
}

/// A primary watched by Redis Sentinel, as its URL names it.
#[derive(Debug)]
pub(super) struct SentinelTarget {
    pub(super) redacted: String,
    pub(super) sentinels: Vec<ConnectionInfo>,
    pub(super) master: String,
    pub(super) node: SentinelNodeConnectionInfo,
    pub(super) wait: Option<Wait>,
    pub(super) names: Namespace,
}

impl SentinelTarget {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let parsed = NodesUrl::parse(url, SENTINEL_PORT)?;
        parsed.refuse_options_but(&SENTINEL_OPTIONS)?;
        let form = "expected redis+sentinel://host:26379[,host:26379…]/<master name>[/<db>]";
        let (master, db) = match parsed.path.as_slice() {
            [master] if !master.is_empty() => (master.clone(), 0),
            [master, empty] if !master.is_empty() && empty.is_empty() => (master.clone(), 0),
            [master, db] if !master.is_empty() => {
                let db = db
                    .parse::<i64>()
                    .map_err(|_| parsed.bad(format!("bad database `{db}`: {form}")))?;
                (master.clone(), db)
            }
            _ => return Err(parsed.bad(format!("names no master: {form}"))),
        };
        let mut sentinel = RedisConnectionInfo::default();
        if let Some(user) = parsed.option("sentinel_username") {
            sentinel = sentinel.set_username(user);
        }
        if let Some(password) = parsed.option("sentinel_password") {
            sentinel = sentinel.set_password(password);
        }
        let sentinels = parsed
            .nodes
            .iter()
            .map(|(host, port)| {
                ConnectionAddr::Tcp(host.clone(), *port)
                    .into_connection_info()
                    .map(|info| info.set_redis_settings(sentinel.clone()))
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| parsed.bad(format!("unusable node list ({:?})", e.kind())))?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(parsed.redis_settings(db));
        let wait = Wait::from_query(&parsed.query, |reason| parsed.bad(reason))?;
        let names = Namespace::from_query(&parsed.query, db, |reason| parsed.bad(reason))?;
        Ok(SentinelTarget {
            wait,
            names,
            redacted: parsed.redacted,
            sentinels,
            master,
            node,
        })
    }
}

/// A Redis Cluster's seed nodes, as its URL names them.
#[derive(Debug)]
pub(super) struct ClusterTarget {
    pub(super) redacted: String,
    pub(super) nodes: Vec<ConnectionInfo>,
    pub(super) wait: Option<Wait>,
    pub(super) names: Namespace,
}

impl ClusterTarget {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let parsed = NodesUrl::parse(url, REDIS_PORT)?;
        parsed.refuse_options_but(&CLUSTER_OPTIONS)?;
        match parsed.path.as_slice() {
            [] => {}
            [db] if db.is_empty() || db == "0" => {}
            _ => return Err(parsed.bad(
                "a cluster has only database 0: expected redis+cluster://host:port[,host:port…]/",
            )),
        }
        let settings = parsed.redis_settings(0);
        let nodes = parsed
            .nodes
            .iter()
            .map(|(host, port)| {
                ConnectionAddr::Tcp(host.clone(), *port)
                    .into_connection_info()
                    .map(|info| info.set_redis_settings(settings.clone()))
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| parsed.bad(format!("unusable node list ({:?})", e.kind())))?;
        let wait = Wait::from_query(&parsed.query, |reason| parsed.bad(reason))?;
        let names = Namespace::from_query(&parsed.query, 0, |reason| parsed.bad(reason))?;
        Ok(ClusterTarget {
            wait,
            names,
            redacted: parsed.redacted,
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<impl std::fmt::Debug>) -> (String, String) {
        match result {
            Err(Error::Url { url, reason }) => (url, reason),
            other => panic!("expected a URL error, got {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_database() {
        let t = SentinelTarget::parse(
            "redis+sentinel://:secret@127.0.0.1:26401,127.0.0.1,[::1]:26403/mymaster/2?sentinel_password=s3",
        )
        .unwrap();
        let addrs: Vec<String> = t.sentinels.iter().map(|s| s.addr().to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:26401", "127.0.0.1:26379", "::1:26403"]);
        assert_eq!(t.master, "mymaster");
        assert_eq!(
            t.redacted,
            "redis+sentinel://:***@127.0.0.1:26401,127.0.0.1,[::1]:26403/mymaster/2?sentinel_password=***"
        );
        assert!(!format!("{t:?}").contains("secret"), "{t:?}");
        let t = SentinelTarget::parse("redis+sentinel://h:1/m/").unwrap();
        assert_eq!((t.master.as_str(), t.sentinels.len()), ("m", 1));
    }

    #[test]
    fn cluster_urls_name_seed_nodes() {
        let t = ClusterTarget::parse("redis+cluster://u:pw@h1:7001,h2:7002,h3/").unwrap();
        let addrs: Vec<String> = t.nodes.iter().map(|s| s.addr().to_string()).collect();
        assert_eq!(addrs, ["h1:7001", "h2:7002", "h3:6379"]);
        assert_eq!(t.nodes[0].redis_settings().password(), Some("pw"));
        assert_eq!(t.redacted, "redis+cluster://u:***@h1:7001,h2:7002,h3/");
        assert!(ClusterTarget::parse("redis+cluster://h1:7001").is_ok());
        assert!(ClusterTarget::parse("redis+cluster://h1:7001/0").is_ok());
    }

    #[test]
    fn sentinel_and_cluster_urls_take_a_prefix() {
        let t = ClusterTarget::parse("redis+cluster://h1:7001/?prefix=app").unwrap();
        assert_eq!(t.names.channel("ivy:events"), "app:ivy:events");
        assert_eq!(t.names.key("ivy:claim:{k}"), "app:ivy:claim:{k}");
        let t = SentinelTarget::parse("redis+sentinel://h/m/3?prefix=app").unwrap();
        assert_eq!(t.names.channel("ivy:events"), "db3:app:ivy:events");
        let t = SentinelTarget::parse("redis+sentinel://h/m/3").unwrap();
        assert_eq!(t.names.channel("ivy:events"), "db3:ivy:events");
        assert_eq!(t.names.key("ivy:result:x"), "ivy:result:x");
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        let cases = [
            (
                SentinelTarget::parse("redis+sentinel://:secret@/mymaster").map(|_| ()),
                "lists no node",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@,,/mymaster").map(|_| ()),
                "lists no node",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@h:26379").map(|_| ()),
                "names no master",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@h/m/x").map(|_| ()),
                "bad database",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@h:notaport/m").map(|_| ()),
                "bad node",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@h/m?db=1").map(|_| ()),
                "unknown option `db`",
            ),
            (
                ClusterTarget::parse("redis+cluster://:secret@").map(|_| ()),
                "lists no node",
            ),
            (
                ClusterTarget::parse("redis+cluster://:secret@h:7001/3").map(|_| ()),
                "only database 0",
            ),
            (
                ClusterTarget::parse("redis+cluster://:secret@h:7001/?x=1").map(|_| ()),
                "unknown option `x`",
            ),
            (
                ClusterTarget::parse("redis+cluster://:secret@h:7001/?prefix={a}").map(|_| ()),
                "bad prefix",
            ),
            (
                SentinelTarget::parse("redis+sentinel://:secret@h/m?prefix=a%20b").map(|_| ()),
                "bad prefix",
            ),
        ];
        for (result, why) in cases {
            let (url, reason) = refusal(result);
            assert!(reason.contains(why), "{reason} (wanted {why})");
            assert!(!url.contains("secret") && url.contains(":***@"), "{url}");
        }
    }

    #[test]
    fn multi_node_schemes_are_recognised() {
        assert_eq!(
            multi_node_scheme("redis+sentinel://a,b/m"),
            Some(SENTINEL_SCHEME)
        );
        assert_eq!(
            multi_node_scheme("REDIS+CLUSTER://a,b"),
            Some(CLUSTER_SCHEME)
        );
        assert_eq!(multi_node_scheme("redis://a"), None);
        assert_eq!(multi_node_scheme("nothing"), None);
    }
}
