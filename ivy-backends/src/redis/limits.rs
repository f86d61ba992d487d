//! Rate limits and concurrency slots in Redis (PROTOCOL.md §10): what lets any
//! number of schedulers and workers share schedules and limits. Times come from the server's
//! clock (`TIME` inside the scripts), so hosts whose clocks differ still agree.

use std::sync::LazyLock;
use std::time::Duration;

use ivy_core::{Result, Turn};

use super::{px, RedisNotifier};

/// The key prefix of rate limits: `ivy:rate:<task>`, the next turn's time in µs (GCRA).
pub const RATE_KEY_PREFIX: &str = "ivy:rate:";
/// The key prefix of concurrency limits: `ivy:slots:<task>`, a sorted set of holders scored
/// by the end of their lease in ms.
pub const SLOTS_KEY_PREFIX: &str = "ivy:slots:";

/// GCRA without burst: `KEYS[1]` holds the theoretical arrival time (TAT) of the next turn in
/// µs. A turn at most `ARGV[2]` µs away is taken (the TAT moves on by `ARGV[1]` µs);
/// returns `{taken 1|0, wait µs}`.
const RESERVE_TURN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.floor((next - now) / 1000) + 1000)
return {1, wait}
";

/// A lease-based semaphore: `KEYS[1]` is a sorted set of holders scored by lease end (ms).
/// Expired holders go; `ARGV[1]` gets (or renews) a slot if it holds one or fewer than
/// `ARGV[2]` are held, until `ARGV[3]` ms from now. Returns 1 if it holds one, else 0.
const ACQUIRE_SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  return 1
end
return 0
";

static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE_TURN));
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACQUIRE_SLOT));

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RedisNotifier {
    pub(super) async fn reserve_turn_in_redis(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> Result<Turn> {
        let key = self.names.key(format_args!("{RATE_KEY_PREFIX}{task}"));
        let (interval, horizon) = (micros(interval).max(1), micros(horizon));
        let key = &key;
        // Not retried: a reservation whose answer was lost may have been made, and a second
        // one would spend another turn. The call goes back to the broker instead.
        let (taken, wait): (u8, u64) = self
            .query_once(
                "reserving a rate-limit turn in Redis",
                |mut conn| async move {
                    RESERVE
                        .key(key)
                        .arg(interval)
                        .arg(horizon)
                        .invoke_async(&mut conn)
                        .await
                },
            )
            .await?;
        let wait = Duration::from_micros(wait);
        Ok(if taken == 1 {
            Turn::Reserved(wait)
        } else {
            Turn::Busy(wait)
        })
    }

    pub(super) async fn acquire_slot_in_redis(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> Result<bool> {
        let key = self.names.key(format_args!("{SLOTS_KEY_PREFIX}{task}"));
        let (key, lease) = (&key, px(lease));
        let held: u8 = self
            .query(
                "taking a concurrency slot in Redis",
                |mut conn| async move {
                    ACQUIRE
                        .key(key)
                        .arg(holder)
                        .arg(max)
                        .arg(lease)
                        .invoke_async(&mut conn)
                        .await
                },
            )
            .await?;
        Ok(held == 1)
    }

    pub(super) async fn release_slot_in_redis(&self, task: &str, holder: &str) -> Result<()> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.names.key(format_args!("{SLOTS_KEY_PREFIX}{task}")))
            .arg(holder);
        let cmd = &cmd;
        self.query(
            "giving a concurrency slot back in Redis",
            |mut conn| async move { cmd.query_async::<()>(&mut conn).await },
        )
        .await
    }
}
