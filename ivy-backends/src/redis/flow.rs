//! Workflow state in Redis (issue 14, PROTOCOL.md §12): the members of a chord counted by id,
//! and the claim and mark that make what follows a call published once. Each operation is one
//! round trip; those that must be atomic are Lua scripts.

use std::sync::LazyLock;
use std::time::Duration;

use ivy_core::Result;

use super::{px, RedisNotifier};

/// The key prefix of workflow state (PROTOCOL.md §12): `ivy:flow:{<set>}:members` (a chord's
/// arrived members), `ivy:flow:{<key>}:claim` and `ivy:flow:{<key>}:published`. The braces
/// are a Redis Cluster hash tag: a claim and its mark live in one slot.
const FLOW_KEY_PREFIX: &str = "ivy:flow:";

/// Adds a member and counts, in one step (KEYS[1] the set; ARGV: member, TTL in ms).
const JOIN_SCRIPT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('SCARD', KEYS[1])
";

/// 2: published already; 1: claimed now for ARGV[1] ms; 0: held by another claim.
const CLAIM_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
";

// Sent by SHA (`EVALSHA`, loaded on first use), as the limits' scripts are: they run once per
// chain step and chord member.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(JOIN_SCRIPT));
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));

impl RedisNotifier {
    pub(super) async fn flow_count_member(
        &self,
        set: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64> {
        let set = format!("{FLOW_KEY_PREFIX}{{{set}}}:members");
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

    pub(super) async fn flow_claim_publication(
        &self,
        key: &str,
        lease: Duration,
    ) -> Result<ivy_core::Claim> {
        let claim = format!("{FLOW_KEY_PREFIX}{{{key}}}:claim");
        let published = format!("{FLOW_KEY_PREFIX}{{{key}}}:published");
        let (claim, published, lease) = (&claim, &published, px(lease));
        let answer: i64 = self
            .query("claiming a publication in Redis", |mut conn| async move {
                CLAIM
                    .key(claim)
                    .key(published)
                    .arg(lease)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match answer {
            2 => ivy_core::Claim::Published,
            1 => ivy_core::Claim::Won,
            _ => ivy_core::Claim::Held,
        })
    }

    pub(super) async fn flow_mark_published(&self, key: &str, ttl: Duration) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{FLOW_KEY_PREFIX}{{{key}}}:published"))
            .arg(1)
            .arg("PX")
            .arg(px(ttl))
            .ignore()
            .cmd("DEL")
            .arg(format!("{FLOW_KEY_PREFIX}{{{key}}}:claim"))
            .ignore();
        let pipe = &pipe;
        self.query("marking a publication in Redis", |mut conn| async move {
            pipe.query_async(&mut conn).await
        })
        .await
    }
}
