//! Redis keys of issue 14: kept cancellations (`ivy:cancel:<task id>`, indexed by the sorted set
//! `ivy:cancels`, announced on the channel `ivy:cancel`) and deduplication claims
//! (`ivy:unique:<key>`). PROTOCOL.md §11 documents them.
//!
//! The steps that must be atomic (record a cancel unless the result is stored; claim a key or
//! read who holds it) are short Lua scripts sent with `EVAL`: they run rarely (one per cancel or
//! per unique call), so the script's bytes cost less than `EVALSHA`'s bookkeeping.

use std::time::Duration;

use ivy_core::cancel::{CancelOutcome, CANCEL_CHANNEL};
use ivy_core::envelope::now_ms;
use ivy_core::{Error, Result, TaskId};

use super::{px, RedisNotifier, MGET_CHUNK};

/// The key prefix of kept cancellations (`ivy:cancel:<task id>`, value: the cancel note).
pub const CANCEL_KEY_PREFIX: &str = "ivy:cancel:";

/// The sorted set indexing kept cancellations (member: task id, score: expiry in ms).
pub const CANCEL_INDEX_KEY: &str = "ivy:cancels";

/// The key prefix of deduplication claims (`ivy:unique:<key>`, value: `<task id> <token>`, the
/// call holding it and the request's random token; task ids hold no space).
pub const UNIQUE_KEY_PREFIX: &str = "ivy:unique:";

/// How far past their expiry index entries are kept (other hosts' clocks may differ); whether a
/// cancellation holds is its key's own TTL.
const INDEX_SLACK_MS: u64 = 60_000;

/// KEYS: result, cancel key, index. ARGV: task id, ttl ms, expiry ms, stale before (ms),
/// channel, note. Returns 0 (recorded), 1 (already cancelled), 2 (already finished). The same
/// note kept already is this cancel asked again after a lost answer: 0, so a retry is safe.
const CANCEL_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if not redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[2]) == ARGV[6] then return 0 end
  return 1
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 0
";

/// On a cluster, where the result, the cancellation and the index live in different slots:
/// KEYS: cancel key. ARGV: ttl ms, note. Returns 0 (recorded, or this note kept already: a
/// retry), 1 (already cancelled). The result's check comes before, the index and the
/// announcement after (see [`RedisNotifier::record_cancel_sharded`]).
const SHARDED_CANCEL_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1]) then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 0 end
return 1
";

/// KEYS: claim. ARGV: `<task id> <token>`, ttl ms. Returns nil (claimed now, or held by this
/// very request: a retry after a lost answer) or the holder's value.
const CLAIM_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return false end
return holder
";

/// KEYS: claim. ARGV: `<task id> <token>`. Deletes the claim only if that request holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RedisNotifier {
    fn cancel_key(&self, task_id: &str) -> String {
        self.names.key(format_args!("{CANCEL_KEY_PREFIX}{task_id}"))
    }

    fn unique_key(&self, key: &str) -> String {
        self.names.key(format_args!("{UNIQUE_KEY_PREFIX}{key}"))
    }

    pub(super) async fn record_cancel(
        &self,
        task_id: &str,
        note: Vec<u8>,
        ttl: Duration,
    ) -> Result<CancelOutcome> {
        if self.commands.is_cluster() {
            return self.record_cancel_sharded(task_id, note, ttl).await;
        }
        let ttl_ms = px(ttl);
        let now = now_ms();
        let index_key = self.names.key(CANCEL_INDEX_KEY);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CANCEL_SCRIPT)
            .arg(3)
            .arg(self.result_key(task_id))
            .arg(self.cancel_key(task_id))
            .arg(&index_key)
            .arg(task_id)
            .arg(ttl_ms)
            .arg(now.saturating_add(ttl_ms))
            .arg(now.saturating_sub(INDEX_SLACK_MS))
            .arg(self.names.channel(CANCEL_CHANNEL))
            .arg(note);
        let cmd = &cmd;
        let code: i64 = self
            .query("recording a cancellation in Redis", |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        match code {
            0 => Ok(CancelOutcome::Cancelled),
            1 => Ok(CancelOutcome::AlreadyCancelled),
            2 => Ok(CancelOutcome::AlreadyFinished),
            other => Err(Error::Malformed(format!(
                "Redis answered {other} to recording a cancellation"
            ))),
        }
    }

    /// [`record_cancel`](Self::record_cancel) on a cluster, whose scripts may touch only keys
    /// of one slot: the same steps, but only the cancellation's own (keep it unless kept
    /// already) is atomic. A result stored between the check and the keeping leaves a
    /// cancellation that the finished call never heeds, and the caller told `Cancelled`: the
    /// race a cancel reaching a call as it ends loses anyway (PROTOCOL.md §11). A cancel
    /// asked again after a lost answer (the same note kept) indexes and announces it again,
    /// so a retry completes a first try cut short after its keeping.
    async fn record_cancel_sharded(
        &self,
        task_id: &str,
        note: Vec<u8>,
        ttl: Duration,
    ) -> Result<CancelOutcome> {
        let ttl_ms = px(ttl);
        let mut finished = redis::cmd("EXISTS");
        finished.arg(self.result_key(task_id));
        let finished = &finished;
        let n: i64 = self
            .query(
                "checking for a stored result in Redis",
                |mut conn| async move { finished.query_async(&mut conn).await },
            )
            .await?;
        if n > 0 {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        let mut keep = redis::cmd("EVAL");
        keep.arg(SHARDED_CANCEL_SCRIPT)
            .arg(1)
            .arg(self.cancel_key(task_id))
            .arg(ttl_ms)
            .arg(&note);
        let keep = &keep;
        let code: i64 = self
            .query("recording a cancellation in Redis", |mut conn| async move {
                keep.query_async(&mut conn).await
            })
            .await?;
        if code == 1 {
            return Ok(CancelOutcome::AlreadyCancelled);
        }
        let now = now_ms();
        let index_key = self.names.key(CANCEL_INDEX_KEY);
        let mut index = redis::cmd("ZADD");
        index
            .arg(&index_key)
            .arg(now.saturating_add(ttl_ms))
            .arg(task_id);
        let mut prune = redis::cmd("ZREMRANGEBYSCORE");
        prune
            .arg(&index_key)
            .arg("-inf")
            .arg(now.saturating_sub(INDEX_SLACK_MS));
        let announce = self.publish_cmd(CANCEL_CHANNEL, &note);
        let _: Vec<redis::Value> = self
            .query_each(
                "announcing a cancellation in Redis",
                &[index, prune, announce],
            )
            .await?;
        Ok(CancelOutcome::Cancelled)
    }

    pub(super) async fn cancel_kept(&self, task_id: &str) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.cancel_key(task_id));
        let cmd = &cmd;
        let n: i64 = self
            .query(
                "checking for a cancellation in Redis",
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        Ok(n > 0)
    }

    /// The cancellations listed by the index whose keys still exist (a key's own TTL says
    /// whether it holds), with the expiry their notes give.
    pub(super) async fn kept_cancellations(&self) -> Result<Vec<(TaskId, u64)>> {
        let now = now_ms();
        let index_key = self.names.key(CANCEL_INDEX_KEY);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&index_key)
            .arg("-inf")
            .arg(now.saturating_sub(INDEX_SLACK_MS))
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(&index_key)
            .arg(now)
            .arg("+inf");
        let pipe = &pipe;
        let (ids,): (Vec<String>,) = self
            .query("listing cancellations in Redis", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        // How long each still holds, by the server's clock (`PTTL`), counted from now by
        // this host's: the notes' `until` is the producer's clock, which may differ.
        let mut kept = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MGET_CHUNK) {
            let cmds: Vec<redis::Cmd> = chunk
                .iter()
                .map(|id| {
                    let mut pttl = redis::cmd("PTTL");
                    pttl.arg(self.cancel_key(id));
                    pttl
                })
                .collect();
            let ttls: Vec<i64> = self
                .query_all("reading cancellations from Redis", &cmds)
                .await?;
            let now = now_ms();
            for (id, ttl) in chunk.iter().zip(ttls) {
                // -2: gone; -1: no expiry (not written by Ivy): kept for a day.
                let left = match ttl {
                    -2 => continue,
                    -1 => ivy_core::DEFAULT_CANCEL_TTL.as_millis() as u64,
                    ms => ms.max(0) as u64,
                };
                kept.push((id.clone(), now.saturating_add(left)));
            }
        }
        Ok(kept)
    }

    pub(super) async fn claim(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<TaskId>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_SCRIPT)
            .arg(1)
            .arg(self.unique_key(key))
            .arg(format!("{task_id} {token}"))
            .arg(px(ttl));
        let cmd = &cmd;
        let holder: Option<String> = self
            .query(
                "claiming a unique call's key in Redis",
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        // The task id is the value's first word (an older value is the task id alone).
        Ok(holder.map(|h| h.split(' ').next().unwrap_or_default().to_owned()))
    }

    pub(super) async fn release(&self, key: &str, task_id: &str, token: &str) -> Result<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(self.unique_key(key))
            .arg(format!("{task_id} {token}"));
        let cmd = &cmd;
        let _: i64 = self
            .query(
                "releasing a unique call's key in Redis",
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        Ok(())
    }
}
