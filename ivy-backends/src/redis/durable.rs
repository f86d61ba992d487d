//! Writes that must survive a failover, when the URL asks for it: `?wait_replicas=N` (and
//! `wait_timeout_ms=M`, 1000 by default, at most 4000: a response's own timeout is 5 s) on any
//! of the Redis URL forms.
//!
//! Redis replicates asynchronously: a primary that dies may take its last writes with it, and
//! the replica promoted in its place never had them. For most of what Ivy writes that costs a
//! status or a re-announcement; for four writes it costs more: a stored result (a producer
//! waits for it forever, a copy of a `once` call runs again), a fenced claim (a copy runs
//! beside the call), a claim marked done (a tick is published again) and a chord member's
//! count. With `wait_replicas`, each of these is followed by `WAIT N M` on the same connection
//! (in the same pipeline, so on a cluster it goes to the key's node), and fewer than `N`
//! replicas acknowledging it within `M` ms is an error: the write happened on the primary,
//! and the caller (the worker) does what it does when the notifier fails, which for each of
//! these is safe to try again. Like Redis' own `min-replicas-to-write`, it trades availability
//! for this: with fewer than `N` replicas up, these writes fail. `WAIT` narrows the window, it
//! does not close it: a failover may still promote a replica that had not acknowledged.

use ivy_core::url::ParsedUrl;
use ivy_core::{Error, Result};
use redis::{Cmd, FromRedisValue};

use std::time::Duration;

use super::{px, RedisNotifier, FAILURE};

/// The URL options read here.
pub(super) const WAIT_OPTIONS: [&str; 2] = ["wait_replicas", "wait_timeout_ms"];
const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Below the response timeout (5 s), which would otherwise cut `WAIT` short.
const MAX_TIMEOUT_MS: u64 = 4000;

/// How many replicas must acknowledge the writes that must survive a failover, and how long
/// to wait for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Wait {
    replicas: u32,
    timeout_ms: u64,
}

impl Wait {
    /// From the URL's query pairs; `bad` makes the error for a bad value.
    pub(super) fn from_query(
        pairs: &[(String, String)],
        bad: impl Fn(String) -> Error,
    ) -> Result<Option<Wait>> {
        let find = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let timeout_ms = match find("wait_timeout_ms") {
            None => DEFAULT_TIMEOUT_MS,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 && ms <= MAX_TIMEOUT_MS => ms,
                _ => {
                    return Err(bad(format!(
                        "bad wait_timeout_ms `{v}`: a number of ms from 1 to {MAX_TIMEOUT_MS}"
                    )))
                }
            },
        };
        match find("wait_replicas") {
            None => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(0) => Ok(None),
                Ok(replicas) => Ok(Some(Wait {
                    replicas,
                    timeout_ms,
                })),
                Err(_) => Err(bad(format!(
                    "bad wait_replicas `{v}`: a number of replicas"
                ))),
            },
        }
    }

    /// [`from_query`](Self::from_query) for a one-host URL.
    pub(super) fn from_url(url: &str, parsed: &ParsedUrl) -> Result<Option<Wait>> {
        Wait::from_query(parsed.query_pairs(), |reason| {
            ivy_core::url::error(url, reason)
        })
    }
}

impl RedisNotifier {
    /// Runs `cmd`, a write of one key, and then, if the URL asks for it, `WAIT`s until enough
    /// replicas have it (see the module's docs). Retried as [`query`](Self::query) is.
    pub(super) async fn query_durable<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &Cmd,
    ) -> Result<T> {
        let Some(wait) = self.wait else {
            return self
                .query(
                    what,
                    |mut conn| async move { cmd.query_async(&mut conn).await },
                )
                .await;
        };
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout_ms);
        let pipe = &pipe;
        let (answer, acknowledged): (T, u32) = self
            .query(
                what,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        if acknowledged < wait.replicas {
            return Err(FAILURE.error(format!(
                "{what} at {}: only {acknowledged} of {} replicas acknowledged it within {} ms (wait_replicas)",
                self.redacted, wait.replicas, wait.timeout_ms
            )));
        }
        Ok(answer)
    }
}

impl RedisNotifier {
    /// [`Results::publish_final`]'s work: store, then publish.
    pub(super) async fn store_and_publish(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = px(ttl);
        // One round trip (but on a cluster); the store comes first so a subscriber that
        // misses the publish finds the result with `fetch`.
        let mut store = redis::cmd("SET");
        store
            .arg(self.result_key(task_id))
            .arg(&payload)
            .arg("PX")
            .arg(ttl_ms);
        if self.wait.is_some() {
            // Published once replicas have it (a retry stores and publishes again).
            let what = "storing a result in Redis";
            let () = self.query_durable(what, &store).await?;
            let publish = &self.publish_cmd(channel, &payload);
            return self
                .query(what, |mut conn| async move {
                    publish.query_async(&mut conn).await
                })
                .await;
        }
        let cmds = [store, self.publish_cmd(channel, &payload)];
        let _: Vec<redis::Value> = self.query_each("storing a result in Redis", &cmds).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(query: &[(&str, &str)]) -> Result<Option<Wait>> {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Wait::from_query(&pairs, |reason| Error::Url {
            url: "u".into(),
            reason,
        })
    }

    #[test]
    fn wait_options_are_read() {
        assert_eq!(wait(&[]).unwrap(), None);
        assert_eq!(wait(&[("wait_replicas", "0")]).unwrap(), None);
        assert_eq!(
            wait(&[("wait_replicas", "2")]).unwrap(),
            Some(Wait {
                replicas: 2,
                timeout_ms: 1000
            })
        );
        assert_eq!(
            wait(&[("wait_timeout_ms", "50"), ("wait_replicas", "1")]).unwrap(),
            Some(Wait {
                replicas: 1,
                timeout_ms: 50
            })
        );
        for bad in [
            [("wait_replicas", "x"), ("a", "b")],
            [("wait_replicas", "1"), ("wait_timeout_ms", "0")],
            [("wait_replicas", "1"), ("wait_timeout_ms", "5000")],
        ] {
            assert!(matches!(wait(&bad), Err(Error::Url { .. })));
        }
    }
}
