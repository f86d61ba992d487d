//! The namespace of one deployment's Redis names (PROTOCOL.md §3): what goes before every key
//! and channel, from the URL's `?prefix=` and database. Read on any of the URL forms.
//!
//! Keys live in a database, channels do not: Redis pub/sub ignores the database, so without a
//! namespace the workers on database 3 would hear the cancels and answer the reply channels
//! of those on database 0, and `ivy watch` would show both deployments' events. Hence two
//! prefixes: the key prefix is `<prefix>:` (or nothing without `?prefix=`, as before); the
//! channel prefix is the key prefix, preceded by `db<n>:` on a database `n` other than 0.
//! Database 0 without `?prefix=` keeps the names of earlier releases, so a deployment there
//! shares them with older processes; on another database only the channels change, so that
//! kept results, claims and limits survive an upgrade.
//!
//! The prefix goes before the whole name, outside a Redis Cluster hash tag (`{…}`), and holds
//! no braces: keys that a script touches together keep sharing their slot.

use std::fmt;
use std::sync::Arc;

use ivy_core::{Error, Result};

use super::{RedisNotifier, RESULT_KEY_PREFIX, WORKER_KEY_PREFIX};

/// The URL option read here.
pub(super) const PREFIX_OPTION: &str = "prefix";
/// The longest prefix: every key and channel name carries it.
const MAX_LEN: usize = 64;

/// The prefixes of one deployment's keys and channels. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Namespace {
    /// `""` or `<prefix>:`.
    keys: Arc<str>,
    /// The key prefix, preceded by `db<n>:` on a database `n` other than 0.
    channels: Arc<str>,
}

impl Namespace {
    /// From the URL's query pairs and the database it names; `bad` makes the error for a bad
    /// prefix.
    pub(super) fn from_query(
        pairs: &[(String, String)],
        db: i64,
        bad: impl Fn(String) -> Error,
    ) -> Result<Namespace> {
        let prefix = pairs
            .iter()
            .find(|(k, _)| k == PREFIX_OPTION)
            .map_or("", |(_, v)| v.as_str());
        if let Some(why) = refusal(prefix) {
            return Err(bad(format!("bad prefix `{prefix}`: {why}")));
        }
        let keys = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        let channels = match db {
            0 => keys.clone(),
            n => format!("db{n}:{keys}"),
        };
        Ok(Namespace {
            keys: keys.into(),
            channels: channels.into(),
        })
    }

    /// The key `name` (e.g. `ivy:result:<id>`) of this deployment.
    pub(super) fn key(&self, name: impl fmt::Display) -> String {
        format!("{}{name}", self.keys)
    }

    /// The channel `name` (e.g. `ivy:events`) of this deployment.
    pub(super) fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.channels)
    }
}

impl RedisNotifier {
    pub(super) fn result_key(&self, task_id: &str) -> String {
        self.names.key(format_args!("{RESULT_KEY_PREFIX}{task_id}"))
    }

    pub(super) fn worker_key(&self, worker_id: &str) -> String {
        self.names
            .key(format_args!("{WORKER_KEY_PREFIX}{worker_id}"))
    }
}

/// Why `prefix` cannot be one, if it cannot.
fn refusal(prefix: &str) -> Option<String> {
    if prefix.len() > MAX_LEN {
        return Some(format!("at most {MAX_LEN} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if !prefix.chars().all(allowed) {
        // Braces above all: a prefix holding a hash tag would move every key to its slot.
        return Some("only letters, digits, `_`, `-`, `.` and `:`".into());
    }
    if prefix.starts_with(':') || prefix.ends_with(':') {
        return Some("a separating `:` is added by Ivy".into());
    }
    let first = prefix.split(':').next().unwrap_or_default();
    let digits = first.strip_prefix("db").unwrap_or_default();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some("`db<n>` begins the channels of database n".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: Option<&str>, db: i64) -> Result<Namespace> {
        let pairs: Vec<(String, String)> = prefix
            .map(|p| vec![("prefix".to_owned(), p.to_owned())])
            .unwrap_or_default();
        Namespace::from_query(&pairs, db, |reason| Error::Url {
            url: "u".into(),
            reason,
        })
    }

    #[test]
    fn keys_and_channels_are_prefixed_as_documented() {
        let cases = [
            (None, 0, "ivy:result:t", "ivy:events"),
            (Some(""), 0, "ivy:result:t", "ivy:events"),
            (None, 3, "ivy:result:t", "db3:ivy:events"),
            (Some("app"), 0, "app:ivy:result:t", "app:ivy:events"),
            (Some("app"), 3, "app:ivy:result:t", "db3:app:ivy:events"),
            (
                Some("org:app-1.x"),
                0,
                "org:app-1.x:ivy:result:t",
                "org:app-1.x:ivy:events",
            ),
        ];
        for (prefix, db, key, channel) in cases {
            let n = names(prefix, db).unwrap();
            assert_eq!(n.key("ivy:result:t"), key, "{prefix:?} {db}");
            assert_eq!(n.channel("ivy:events"), channel, "{prefix:?} {db}");
        }
    }

    #[test]
    fn hash_tags_stay_intact() {
        let n = names(Some("app"), 0).unwrap();
        assert_eq!(n.key("ivy:claim:{k}"), "app:ivy:claim:{k}");
    }

    #[test]
    fn bad_prefixes_are_url_errors() {
        for bad in [
            "{app}",
            "a b",
            "app:",
            ":app",
            "db3",
            "db12:x",
            &"x".repeat(65),
        ] {
            match names(Some(bad), 0) {
                Err(Error::Url { reason, .. }) => {
                    assert!(reason.contains("bad prefix"), "{reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(names(Some("dbx"), 0).is_ok());
        assert!(names(Some("db"), 0).is_ok());
    }
}
