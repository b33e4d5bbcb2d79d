//! Sliding-window request counters: the local store of `rate_limit`, and the interface of
//! a shared one (Redis, in the proxy) that several instances count in together.
//!
//! A window of length W is cut into slots of W / 15, and a key's count is the sum of the 16
//! slots that overlap the last W (the current one, partly elapsed, and 15 before it, the
//! oldest partly inside). A slot is forgotten only once all of it is older than W: no moment ever sees more than the limit inside any W-long interval, a burst gets
//! exactly the limit, and capacity comes back slot by slot (there is no fixed-window edge at
//! which twice the limit could pass). The same arithmetic runs in the Redis script.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Mutex;

/// Slots counted; the most a freed request can wait beyond W is one slot (W / 15).
pub const BUCKETS: usize = 16;

const SHARDS: usize = 64;

/// Wall-clock milliseconds, the time windows count in (shared stores count in it too, so
/// instances agree on slots).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a limit is: requests per window, and how finely the window slides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    pub limit: u32,
    pub window_ms: u64,
}

impl WindowSpec {
    pub fn slot_ms(&self) -> u64 {
        (self.window_ms / (BUCKETS as u64 - 1)).max(1)
    }
}

/// A key's state after a request was counted (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub allowed: bool,
    /// Requests inside the window, this one included when allowed.
    pub count: u32,
    /// Milliseconds until a refused key may pass again, or until the oldest counted
    /// request of an allowed one leaves the window.
    pub reset_ms: u64,
}

impl WindowState {
    pub fn remaining(&self, spec: &WindowSpec) -> u32 {
        spec.limit.saturating_sub(self.count)
    }
}

#[derive(Clone, Copy)]
struct Slots {
    /// Absolute slot number (time / slot width) of `counts[newest % BUCKETS]`.
    newest: u64,
    counts: [u32; BUCKETS],
}

impl Slots {
    /// Forgets slots that left the window ending at `slot`.
    fn advance(&mut self, slot: u64) {
        if slot <= self.newest {
            return;
        }
        let gone = (slot - self.newest).min(BUCKETS as u64);
        for s in 1..=gone {
            self.counts[((self.newest + s) % BUCKETS as u64) as usize] = 0;
        }
        self.newest = slot;
    }

    fn total(&self) -> u32 {
        self.counts.iter().fold(0u32, |t, &c| t.saturating_add(c))
    }

    /// Milliseconds from `now_ms` until the count falls below `below`.
    fn reset_ms(&self, spec: &WindowSpec, below: u32, now_ms: u64) -> u64 {
        let width = spec.slot_ms();
        let mut total = self.total();
        // Oldest slot first. Slot `s` leaves the window when slot `s + BUCKETS` begins;
        // counting by that later slot keeps the arithmetic unsigned near time zero.
        for later in self.newest + 1..=self.newest + BUCKETS as u64 {
            if total < below {
                break;
            }
            total = total.saturating_sub(self.counts[(later % BUCKETS as u64) as usize]);
            if total < below {
                return (later * width).saturating_sub(now_ms);
            }
        }
        0
    }
}

/// The per-instance counters of one limit: a sharded map from key to its slots, bounded.
///
/// Each key costs 80 bytes of slots plus the map's 16-byte key and its bookkeeping, about
/// 100 bytes in all, and up to twice that in a table that just doubled (a million keys
/// measured 230 MiB); `max_keys` bounds the total. A full shard first forgets keys idle for
/// a whole window, then the tenth of keys idle longest.
pub struct RateWindow {
    spec: WindowSpec,
    shards: Vec<Mutex<HashMap<u128, Slots>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl RateWindow {
    pub fn new(spec: WindowSpec, max_keys: usize) -> Self {
        RateWindow {
            spec,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_keys / SHARDS).max(1),
            hasher: Default::default(),
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, Slots>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Counts a request for `key` at `now_ms` if the limit allows it.
    pub fn hit(&self, key: u128, now_ms: u64) -> WindowState {
        self.apply(key, now_ms, true, 1)
    }

    /// Whether `key` is below its limit at `now_ms`, counting nothing (a token budget is
    /// checked before a request and charged after its response).
    pub fn peek(&self, key: u128, now_ms: u64) -> WindowState {
        self.apply(key, now_ms, true, 0)
    }

    /// Counts `amount` for `key` whatever the limit says (tokens a response used).
    pub fn add(&self, key: u128, now_ms: u64, amount: u32) {
        self.apply(key, now_ms, false, amount);
    }

    /// Counts a request whatever the limit says (a shared store decided already: the local
    /// count is kept so that a fallback starts from what this instance saw).
    pub fn record(&self, key: u128, now_ms: u64) {
        self.apply(key, now_ms, false, 1);
    }

    /// Takes back a request counted at `now_ms` (another limit refused it).
    pub fn undo(&self, key: u128, now_ms: u64) {
        let slot = now_ms / self.spec.slot_ms();
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = shard.get_mut(&key) {
            if slot + (BUCKETS as u64) > slots.newest {
                let c = &mut slots.counts[(slot % BUCKETS as u64) as usize];
                *c = c.saturating_sub(1);
            }
        }
    }

    fn apply(&self, key: u128, now_ms: u64, enforce: bool, amount: u32) -> WindowState {
        let slot = now_ms / self.spec.slot_ms();
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            self.make_room(&mut shard, slot);
        }
        let slots = shard.entry(key).or_insert(Slots {
            newest: slot,
            counts: [0; BUCKETS],
        });
        slots.advance(slot);
        let total = slots.total();
        let allowed = !enforce || total < self.spec.limit;
        if allowed {
            let c = &mut slots.counts[(slot % BUCKETS as u64) as usize];
            *c = c.saturating_add(amount);
        }
        let count = if allowed {
            total.saturating_add(amount)
        } else {
            total
        };
        let below = if allowed { count } else { self.spec.limit };
        WindowState {
            allowed,
            count,
            reset_ms: slots.reset_ms(&self.spec, below, now_ms),
        }
    }

    fn make_room(&self, shard: &mut HashMap<u128, Slots>, slot: u64) {
        shard.retain(|_, s| s.newest + BUCKETS as u64 > slot);
        if shard.len() < self.per_shard {
            return;
        }
        let mut ages: Vec<(u64, u128)> = shard.iter().map(|(k, s)| (s.newest, *k)).collect();
        let cut = (ages.len() / 10).max(1);
        ages.select_nth_unstable(cut - 1);
        for (_, key) in &ages[..cut] {
            shard.remove(key);
        }
    }

    /// Keys held, for tests and the memory figures.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// One limit's part of a request, as a shared store sees it.
#[derive(Debug, Clone)]
pub struct SharedHit {
    /// The store key: limit name, definition and request key; never a raw secret.
    pub key: String,
    pub spec: WindowSpec,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

pub type StoreFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<WindowState>, StoreError>> + Send + 'a>>;

/// Counters shared by several instances. `hit` counts the request against every window at
/// once if all allow it, and against none otherwise, in one round trip.
pub trait SharedWindows: Send + Sync {
    fn hit<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a>;
    /// Whether the store is worth asking now (not in a back-off after failures).
    fn available(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn window(limit: u32) -> RateWindow {
        RateWindow::new(
            WindowSpec {
                limit,
                window_ms: 15 * MIN,
            },
            1000,
        )
    }

    #[test]
    fn a_burst_gets_exactly_the_limit() {
        let w = window(1000);
        let passed = (0..1500).filter(|_| w.hit(7, 5 * MIN).allowed).count();
        assert_eq!(passed, 1000);
        let refused = w.hit(7, 5 * MIN);
        assert!(!refused.allowed);
        assert_eq!(refused.count, 1000);
        // The burst's slot (minute 5) is wholly out of the 15-minute window at minute 21.
        assert_eq!(refused.reset_ms, 16 * MIN);
        assert!(w.hit(8, 5 * MIN).allowed, "keys are independent");
    }

    #[test]
    fn no_double_burst_at_any_edge() {
        // Requests at the end of one window and the start of the next are still one window.
        let w = window(100);
        let late = (0..100).filter(|_| w.hit(1, 15 * MIN - 1).allowed).count();
        let early = (0..100).filter(|_| w.hit(1, 15 * MIN + 1).allowed).count();
        assert_eq!((late, early), (100, 0));
        // Once the burst's slot is wholly older than the window, all of it is free again.
        assert!(!w.hit(1, 30 * MIN - 1).allowed);
        assert!(w.hit(1, 30 * MIN).allowed);
    }

    #[test]
    fn capacity_comes_back_slot_by_slot() {
        let w = window(4);
        for minute in 0..4 {
            assert!(w.hit(1, minute * MIN).allowed);
        }
        assert!(!w.hit(1, 4 * MIN).allowed);
        let s = w.hit(1, 15 * MIN);
        assert!(!s.allowed);
        assert_eq!(s.reset_ms, MIN, "the minute-0 request leaves at minute 16");
        assert!(w.hit(1, 16 * MIN).allowed);
        assert!(!w.hit(1, 16 * MIN + 1).allowed, "minute 1 is still inside");
        assert!(w.hit(1, 17 * MIN).allowed);
    }

    #[test]
    fn sliding_never_lets_more_than_the_limit_into_any_window() {
        let w = window(50);
        let mut passed_at = Vec::new();
        // A steady client asking every 7 seconds for two hours.
        for i in 0..1030u64 {
            let t = i * 7_000;
            if w.hit(1, t).allowed {
                passed_at.push(t);
            }
        }
        for (i, &start) in passed_at.iter().enumerate() {
            let inside = passed_at[i..]
                .iter()
                .take_while(|&&t| t < start + 15 * MIN)
                .count();
            assert!(inside <= 50, "{inside} passed in the window from {start}");
        }
        // Two hours are eight windows: nearly 8 x 50 pass, no more.
        assert!(
            (350..=400).contains(&passed_at.len()),
            "{}",
            passed_at.len()
        );
    }

    #[test]
    fn undo_and_record() {
        let w = window(2);
        assert!(w.hit(1, 0).allowed);
        w.undo(1, 0);
        assert!(w.hit(1, 0).allowed && w.hit(1, 0).allowed);
        assert!(!w.hit(1, 0).allowed);
        w.record(2, 0);
        w.record(2, 0);
        w.record(2, 0);
        assert!(!w.hit(2, 0).allowed, "recorded requests count");
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let w = RateWindow::new(
            WindowSpec {
                limit: 10,
                window_ms: MIN,
            },
            64 * 100,
        );
        for key in 0..100_000u128 {
            w.hit(key, 1000);
        }
        assert!(w.keys() <= 64 * 100, "{}", w.keys());
        // A key idle for a window is forgotten before an active one.
        for key in 0..10u128 {
            for _ in 0..10 {
                w.hit(1_000_000 + key, 10 * MIN);
            }
        }
        assert!(!w.hit(1_000_000, 10 * MIN).allowed);
    }
}
