//! Rate-limit counters shared by every instance, in Redis: one script call per request
//! counts it against all its limits atomically (all or none), with Redis' own clock so that
//! instances whose clocks differ still agree on the windows.
//!
//! Redis is never waited on for long: a call that takes more than the timeout fails, and
//! after a failure the store is left alone for a back-off period in which the plugin
//! decides locally. The connection is made, and remade, in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use prometheus::{IntCounterVec, IntGauge};
use rampart_plugins::rate_window::{
    SharedHit, SharedWindows, StoreError, StoreFuture, WindowState, BUCKETS,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::StoreConfig;

/// The slot arithmetic of `RateWindow`, over a hash per key (field: slot number, value:
/// count). KEYS: one per window; ARGV: slot width in ms, limit and amount per key, then
/// the slots per window and whether to enforce (`1`: count every amount if all windows are
/// below their limits, none otherwise; `0`: count them whatever the limits say, a negative
/// amount taken back from the newest slots). Returns, per key, allowed (1/0), the count,
/// and the milliseconds until the count falls below the limit (refused) or until the
/// oldest counted amount leaves (allowed).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[#ARGV - 1])
local enforce = ARGV[#ARGV] == '1'
local states = {}
local all = true
for i, key in ipairs(KEYS) do
  local width = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  local slot = math.floor(now / width)
  local counts = {}
  local total = 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local s = tonumber(fields[j])
    if s + n <= slot then
      redis.call('HDEL', key, fields[j])
    else
      local c = tonumber(fields[j + 1])
      counts[s] = c
      total = total + c
    end
  end
  if total >= limit then all = false end
  states[i] = { slot = slot, width = width, limit = limit, amount = amount, counts = counts, total = total }
end
local out = {}
for i, key in ipairs(KEYS) do
  local st = states[i]
  local count = st.total
  local counted = all or not enforce
  if counted and st.amount > 0 then
    redis.call('HINCRBY', key, st.slot, st.amount)
    redis.call('PEXPIRE', key, st.width * n)
    st.counts[st.slot] = (st.counts[st.slot] or 0) + st.amount
    count = count + st.amount
  elseif counted and st.amount < 0 then
    local left = -st.amount
    for s = st.slot, st.slot - n + 1, -1 do
      if left <= 0 then break end
      local c = st.counts[s] or 0
      local taken = math.min(c, left)
      if taken > 0 then
        redis.call('HINCRBY', key, s, -taken)
        st.counts[s] = c - taken
        count = count - taken
        left = left - taken
      end
    end
  end
  local allowed
  if enforce then allowed = all else allowed = count < st.limit end
  local below = st.limit
  if enforce and all then below = count end
  local left = count
  local reset = 0
  for later = st.slot + 1, st.slot + n do
    if left < below then break end
    left = left - (st.counts[later - n] or 0)
    if left < below then reset = later * st.width - now end
  end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = count
  out[#out + 1] = reset
end
return out
"#;

/// Metrics of the shared store, handed over by the gateway.
#[derive(Clone)]
pub struct StoreMetrics {
    pub errors: IntCounterVec,
    pub up: IntGauge,
}

pub struct RedisWindows {
    pub config: StoreConfig,
    connection: Arc<ArcSwapOption<ConnectionManager>>,
    script: redis::Script,
    /// Unix ms before which the store is not asked.
    resting_until: AtomicU64,
    metrics: Option<StoreMetrics>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisWindows {
    /// A store for `config`; with `connect`, a background thread connects to Redis (and
    /// keeps trying until it can). `rampart check` builds one without connecting.
    pub fn new(
        config: StoreConfig,
        metrics: Option<StoreMetrics>,
        connect: bool,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.redis.as_str())
            .map_err(|e| format!("rate_limit_store.redis: {e}"))?;
        let store = Arc::new(RedisWindows {
            connection: Arc::new(ArcSwapOption::empty()),
            script: redis::Script::new(SCRIPT),
            resting_until: AtomicU64::new(0),
            metrics,
            config,
        });
        if connect {
            spawn_connector(client, &store)?;
        }
        Ok(store)
    }

    fn failed(&self, kind: &'static str) -> StoreError {
        self.resting_until
            .store(unix_ms() + self.config.retry_ms, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[kind]).inc();
            m.up.set(0);
        }
        StoreError(format!("rate-limit store: {kind}"))
    }

    /// One call to Redis on the shared connection, given up after the timeout; a failure is
    /// counted and rests the store, a success marks it up.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            return Err(self.failed("not_connected"));
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(timeout, op(ConnectionManager::clone(&connection))).await {
            Err(_) => Err(self.failed("timeout")),
            Ok(Err(e)) => {
                log::debug!("rate-limit store: {e}");
                Err(self.failed("error"))
            }
            Ok(Ok(value)) => {
                if let Some(m) = &self.metrics {
                    m.up.set(1);
                }
                Ok(value)
            }
        }
    }

    async fn call(
        &self,
        hits: &[SharedHit],
        enforce: bool,
    ) -> Result<Vec<WindowState>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for hit in hits {
            invocation.key(&hit.key);
            invocation
                .arg(hit.spec.slot_ms())
                .arg(hit.spec.limit)
                .arg(hit.amount);
        }
        invocation.arg(BUCKETS).arg(u8::from(enforce));
        let values: Vec<i64> = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        if values.len() != 3 * hits.len() {
            return Err(self.failed("bad_reply"));
        }
        Ok(values
            .chunks_exact(3)
            .map(|v| WindowState {
                allowed: v[0] == 1,
                count: u32::try_from(v[1].max(0)).unwrap_or(u32::MAX),
                reset_ms: u64::try_from(v[2]).unwrap_or(0),
            })
            .collect())
    }
}

/// Provider cooldowns, shared: a target one instance sends to rest is rested by all.
impl RedisWindows {
    fn cooldown_key(target: &str) -> String {
        format!("rampart:cooldown:{target}")
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run(|mut connection| async move { cmd.query_async(&mut connection).await })
            .await
    }

    /// Says that `target` rests until `until_ms` (Unix milliseconds).
    pub async fn publish_rest(&self, target: &str, until_ms: u64) -> Result<(), StoreError> {
        let ttl = until_ms.saturating_sub(unix_ms()).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::cooldown_key(target))
            .arg(until_ms)
            .arg("PX")
            .arg(ttl);
        self.query::<()>(&cmd).await
    }

    /// Says that `target` answered: it rests no longer.
    pub async fn end_rest(&self, target: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(Self::cooldown_key(target));
        self.query::<()>(&cmd).await
    }

    /// Until when (Unix milliseconds) each of `targets` rests, as any instance said.
    pub async fn rests(&self, targets: &[&str]) -> Result<Vec<Option<u64>>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for target in targets {
            cmd.arg(Self::cooldown_key(target));
        }
        let values: Vec<Option<u64>> = self.query(&cmd).await?;
        if values.len() != targets.len() {
            return Err(self.failed("bad_reply"));
        }
        Ok(values)
    }
}

impl SharedWindows for RedisWindows {
    fn hit<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a> {
        Box::pin(self.call(hits, true))
    }

    fn charge<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a> {
        Box::pin(self.call(hits, false))
    }

    fn available(&self) -> bool {
        unix_ms() >= self.resting_until.load(Ordering::Relaxed)
    }
}

/// Connects on a thread of its own, whose runtime then drives the connection; the
/// connection manager reconnects by itself after Redis comes back.
fn spawn_connector(client: redis::Client, store: &Arc<RedisWindows>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("rate-limit store runtime: {e}"))?;
    let timeout = Duration::from_millis(store.config.timeout_ms.max(100));
    let retry = Duration::from_millis(store.config.retry_ms.max(100));
    let slot = store.connection.clone();
    let weak = Arc::downgrade(store);
    std::thread::Builder::new()
        .name("redis".into())
        .spawn(move || {
            runtime.block_on(async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1);
                loop {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    match client
                        .get_connection_manager_with_config(config.clone())
                        .await
                    {
                        Ok(manager) => {
                            slot.store(Some(Arc::new(manager)));
                            log::info!("rate-limit store connected");
                            break;
                        }
                        Err(e) => {
                            log::warn!("rate-limit store: cannot connect yet: {e}");
                            tokio::time::sleep(retry).await;
                        }
                    }
                }
                // Keep driving the connection while the store is in use.
                while weak.strong_count() > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .map_err(|e| format!("rate-limit store thread: {e}"))?;
    Ok(())
}
