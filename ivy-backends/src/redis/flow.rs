//! Workflow state in Redis (issue 14, PROTOCOL.md §12): the members of a chord counted by id;
//! and the fenced claims (issue 21, PROTOCOL.md §13) behind every "once": a call's run, a
//! schedule's tick. Each operation is one
//! round trip; those that must be atomic are Lua scripts.

use std::sync::LazyLock;
use std::time::Duration;

use ivy_core::Result;

use super::{px, RedisNotifier};

/// The key prefix of workflow state (PROTOCOL.md §12): `ivy:flow:{<set>}:members` (a chord's
/// arrived members). The braces are a Redis Cluster hash tag.
const FLOW_KEY_PREFIX: &str = "ivy:flow:";

/// The key prefix of fenced claims (PROTOCOL.md §13): `ivy:claim:{<key>}`, holding the
/// owner's token while a lease runs, or [`DONE_MARKER`].
pub const CLAIM_KEY_PREFIX: &str = "ivy:claim:";

/// Adds a member and counts, in one step (KEYS[1] the set; ARGV: member, TTL in ms).
const JOIN_SCRIPT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('SCARD', KEYS[1])
";

/// A fenced claim (KEYS[1]; ARGV: owner, lease ms, the done marker): 2 done; 1 won (free,
/// lapsed, or the owner's own, whose lease is renewed); 0 held by another owner.
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[3] then return 2 end
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Compare-and-delete (KEYS[1]; ARGV: owner).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The value of a claim marked done; owners are never given it.
pub const DONE_MARKER: &str = "=done";

// Sent by SHA (`EVALSHA`, loaded on first use), as the limits' scripts are: they run once per
// chain step and chord member.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(JOIN_SCRIPT));
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_SCRIPT));

/// `EVAL script 1 key args…`: the script's text rather than its SHA, so that it can share a
/// pipeline with `WAIT` (a pipeline cannot load a missing script and try again).
fn eval(script: &str, key: &str, args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(1).arg(key).arg(args);
    cmd
}

impl RedisNotifier {
    /// Outside the hash tag, as every prefix is (`redis/namespace.rs`).
    fn claim_key(&self, key: &str) -> String {
        self.names.key(format_args!("{CLAIM_KEY_PREFIX}{{{key}}}"))
    }

    pub(super) async fn flow_count_member(
        &self,
        set: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64> {
        let set = self
            .names
            .key(format_args!("{FLOW_KEY_PREFIX}{{{set}}}:members"));
        if self.wait.is_some() {
            let join = eval(JOIN_SCRIPT, &set, &[member, &px(ttl).to_string()]);
            return self
                .query_durable("counting a chord member in Redis", &join)
                .await;
        }
        let (set, ttl) = (&set, px(ttl));
        self.query("counting a chord member in Redis", |mut conn| async move {
            JOIN.key(set)
                .arg(member)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    pub(super) async fn fenced_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<ivy_core::Claim> {
        let (key, lease) = (&self.claim_key(key), px(lease));
        let answer: i64 = if self.wait.is_some() {
            let claim = eval(CLAIM_SCRIPT, key, &[owner, &lease.to_string(), DONE_MARKER]);
            self.query_durable("claiming in Redis", &claim).await?
        } else {
            self.query("claiming in Redis", |mut conn| async move {
                CLAIM
                    .key(key)
                    .arg(owner)
                    .arg(lease)
                    .arg(DONE_MARKER)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?
        };
        Ok(match answer {
            2 => ivy_core::Claim::Done,
            1 => ivy_core::Claim::Won,
            _ => ivy_core::Claim::Held,
        })
    }

    pub(super) async fn fenced_release(&self, key: &str, owner: &str) -> Result<()> {
        let key = &self.claim_key(key);
        let _: i64 = self
            .query("releasing a claim in Redis", |mut conn| async move {
                RELEASE.key(key).arg(owner).invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn fenced_mark_done(&self, key: &str, ttl: Duration) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.claim_key(key))
            .arg(DONE_MARKER)
            .arg("PX")
            .arg(px(ttl));
        self.query_durable("marking a claim done in Redis", &cmd)
            .await
    }
}
