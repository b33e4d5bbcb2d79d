//! Sliding-window request counters: the local store of `rate_limit`, and the interface of
//! a shared one (Redis, in the proxy) that several instances count in together.
//!
//! A window of length W is cut into slots of W / 15, and a key's count is the sum of the 16
//! slots that overlap the last W (the current one, partly elapsed, and 15 before it, the
//! oldest partly inside). A slot is forgotten only once all of it is older than W: no moment ever sees more than the limit inside any W-long interval, a burst gets
//! exactly the limit, and capacity comes back slot by slot (there is no fixed-window edge at
//! which twice the limit could pass). The same arithmetic runs in the Redis script.

use crate::prehashed::Prehashed;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Mutex;

/// Slots counted; the most a freed request can wait beyond W is one slot (W / 15).
pub const BUCKETS: usize = 16;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

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

/// A slot's count: `u16` for limits a `u16` holds (request limits), `u32` for larger ones
/// (token budgets). A count saturates at its type's maximum, which is at least the limit, so
/// a saturated slot still says "over": enforcement is exact either way.
trait Count: Copy + Default + Send + 'static {
    fn get(self) -> u32;
    fn saturating(value: u32) -> Self;
}

impl Count for u16 {
    fn get(self) -> u32 {
        u32::from(self)
    }
    fn saturating(value: u32) -> Self {
        u16::try_from(value).unwrap_or(u16::MAX)
    }
}

impl Count for u32 {
    fn get(self) -> u32 {
        self
    }
    fn saturating(value: u32) -> Self {
        value
    }
}

/// A key's slots. Slot numbers are kept as their low 32 bits and compared by wrapping
/// difference: exact for any key seen within 2^31 slots (four years with a one-second
/// window's 66 ms slots); an older one is forgotten long before, when its shard fills.
#[derive(Clone, Copy)]
struct Slots<C> {
    /// Slot number (time / slot width, low 32 bits) of `counts[newest % BUCKETS]`.
    newest: u32,
    counts: [C; BUCKETS],
}

impl<C: Count> Slots<C> {
    fn new(slot: u32) -> Self {
        Slots {
            newest: slot,
            counts: [C::default(); BUCKETS],
        }
    }

    /// Slots from `newest` forward to `slot`, or `None` when `slot` is not ahead.
    fn ahead(&self, slot: u32) -> Option<u32> {
        let d = slot.wrapping_sub(self.newest);
        (d != 0 && d < 1 << 31).then_some(d)
    }

    fn index(slot: u32) -> usize {
        slot as usize % BUCKETS
    }

    /// Forgets slots that left the window ending at `slot`.
    fn advance(&mut self, slot: u32) {
        let Some(ahead) = self.ahead(slot) else {
            return;
        };
        let gone = ahead.min(BUCKETS as u32);
        for s in 1..=gone {
            self.counts[Self::index(self.newest.wrapping_add(s))] = C::default();
        }
        self.newest = slot;
    }

    fn total(&self) -> u32 {
        self.counts
            .iter()
            .fold(0u32, |t, c| t.saturating_add(c.get()))
    }

    fn add(&mut self, slot: u32, amount: u32) {
        let c = &mut self.counts[Self::index(slot)];
        *c = C::saturating(c.get().saturating_add(amount));
    }

    /// Milliseconds from `now_ms` until the count falls below `below`.
    fn reset_ms(&self, spec: &WindowSpec, below: u32, now_ms: u64) -> u64 {
        let width = spec.slot_ms();
        let mut total = self.total();
        // Oldest slot first. Slot `s` leaves the window when slot `s + BUCKETS` begins.
        let newest_abs = absolute_slot(now_ms / width, self.newest);
        for k in 1..=BUCKETS as u64 {
            if total < below {
                break;
            }
            let later = newest_abs + k;
            total = total.saturating_sub(self.counts[(later % BUCKETS as u64) as usize].get());
            if total < below {
                return (later * width).saturating_sub(now_ms);
            }
        }
        0
    }
}

/// The absolute slot number whose low 32 bits are `low`, the one nearest to `now` (a key's
/// newest slot is `now`'s or a little before; a little after when requests raced).
fn absolute_slot(now: u64, low: u32) -> u64 {
    let back = (now as u32).wrapping_sub(low);
    if back < 1 << 31 {
        now.saturating_sub(u64::from(back))
    } else {
        now + u64::from(back.wrapping_neg())
    }
}

/// A key as stored: 64 bits of a keyed hash of the 128-bit key (a collision between two of a
/// million keys has odds of about 1 in 30 million), as two `u32` so that an entry packs to
/// 4-byte alignment: 44 bytes with `u16` counts.
type StoredKey = [u32; 2];

// Stored keys are already keyed hashes: the table needs only to spread their bits (the
// shard was chosen by the top ones, which every key of a shard shares), not to hash again.
type Table<C> = HashMap<StoredKey, Slots<C>, Prehashed>;

/// Sharded tables of one count width.
struct Shards<C> {
    shards: Vec<Mutex<Table<C>>>,
    per_shard: usize,
}

impl<C: Count> Shards<C> {
    fn new(max_keys: usize) -> Self {
        let per_shard = (max_keys / SHARDS).max(1);
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::new(Table::default())).collect(),
            per_shard,
        }
    }

    fn lock(&self, hash: u64) -> std::sync::MutexGuard<'_, Table<C>> {
        self.shards[(hash >> (64 - SHARD_BITS)) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn apply(
        &self,
        hash: u64,
        spec: &WindowSpec,
        now_ms: u64,
        enforce: bool,
        amount: u32,
    ) -> WindowState {
        let slot = (now_ms / spec.slot_ms()) as u32;
        let key = stored(hash);
        let mut shard = self.lock(hash);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            self.make_room(&mut shard, slot);
        }
        let slots = shard.entry(key).or_insert_with(|| Slots::new(slot));
        slots.advance(slot);
        let total = slots.total();
        let allowed = !enforce || total < spec.limit;
        if allowed {
            slots.add(slot, amount);
        }
        let count = if allowed {
            total.saturating_add(amount)
        } else {
            total
        };
        let below = if allowed { count } else { spec.limit };
        WindowState {
            allowed,
            count,
            reset_ms: slots.reset_ms(spec, below, now_ms),
        }
    }

    /// Takes `amount` back from the key's newest slots still inside the window (a request
    /// another limit refused, or tokens charged on an estimate above the truth).
    fn take_back(&self, hash: u64, spec: &WindowSpec, now_ms: u64, amount: u32) {
        let slot = (now_ms / spec.slot_ms()) as u32;
        let mut shard = self.lock(hash);
        let Some(slots) = shard.get_mut(&stored(hash)) else {
            return;
        };
        slots.advance(slot);
        let mut left = amount;
        for back in 0..BUCKETS as u32 {
            if left == 0 {
                break;
            }
            let c = &mut slots.counts[Slots::<C>::index(slots.newest.wrapping_sub(back))];
            let taken = c.get().min(left);
            *c = C::saturating(c.get() - taken);
            left -= taken;
        }
    }

    fn make_room(&self, shard: &mut Table<C>, slot: u32) {
        let idle = |s: &Slots<C>| slot.wrapping_sub(s.newest);
        shard.retain(|_, s| idle(s) < BUCKETS as u32);
        if shard.len() < self.per_shard {
            return;
        }
        let mut ages: Vec<(u32, StoredKey)> = shard.iter().map(|(k, s)| (idle(s), *k)).collect();
        let cut = (ages.len() / 32).max(1);
        // The longest idle first.
        ages.select_nth_unstable_by(cut - 1, |a, b| b.0.cmp(&a.0));
        for (_, key) in &ages[..cut] {
            shard.remove(key);
        }
    }

    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

fn stored(hash: u64) -> StoredKey {
    [(hash >> 32) as u32, hash as u32]
}

enum Counters {
    Narrow(Shards<u16>),
    Wide(Shards<u32>),
}

/// The per-instance counters of one limit: sharded tables from key to its slots, bounded.
///
/// An entry is 44 bytes (a 64-bit key hash, the newest slot, sixteen `u16` counts) and the
/// table's control byte; tables sized by powers of two hold it at a load between 44% and
/// 88%, so about 50 to 100 bytes a key (`u32` counts for limits above 65,535, token budgets,
/// add 32). `max_keys` bounds the total. A full shard first forgets keys idle for a whole
/// window, then the 1/32 of keys idle longest (a tenth left shards so far under their share,
/// at a million keys, that the table's cost per key kept went past 100 bytes).
pub struct RateWindow {
    spec: WindowSpec,
    counters: Counters,
    hasher: std::collections::hash_map::RandomState,
}

impl RateWindow {
    pub fn new(spec: WindowSpec, max_keys: usize) -> Self {
        let counters = if spec.limit <= u32::from(u16::MAX) {
            Counters::Narrow(Shards::new(max_keys))
        } else {
            Counters::Wide(Shards::new(max_keys))
        };
        RateWindow {
            spec,
            counters,
            hasher: Default::default(),
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
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

    /// Counts `amount` for `key` if the limit has room at all (a call admitted on its
    /// estimated tokens).
    pub fn admit(&self, key: u128, now_ms: u64, amount: u32) -> WindowState {
        self.apply(key, now_ms, true, amount)
    }

    /// Counts `amount` for `key` whatever the limit says (tokens a response used), or takes
    /// a negative amount back; the state says whether the key is still below its limit.
    pub fn charge(&self, key: u128, now_ms: u64, amount: i64) -> WindowState {
        let amount32 = u32::try_from(amount.unsigned_abs()).unwrap_or(u32::MAX);
        if amount < 0 {
            self.take_back(key, now_ms, amount32);
            return self.peek(key, now_ms);
        }
        let state = self.apply(key, now_ms, false, amount32);
        if state.count >= self.spec.limit {
            // Spent: the state says when the count falls below the limit again.
            return self.peek(key, now_ms);
        }
        state
    }

    /// Counts a request whatever the limit says (a shared store decided already: the local
    /// count is kept so that a fallback starts from what this instance saw).
    pub fn record(&self, key: u128, now_ms: u64) {
        self.apply(key, now_ms, false, 1);
    }

    /// Takes back a request counted at `now_ms` (another limit refused it).
    pub fn undo(&self, key: u128, now_ms: u64) {
        self.take_back(key, now_ms, 1);
    }

    fn take_back(&self, key: u128, now_ms: u64, amount: u32) {
        let hash = self.hasher.hash_one(key);
        match &self.counters {
            Counters::Narrow(c) => c.take_back(hash, &self.spec, now_ms, amount),
            Counters::Wide(c) => c.take_back(hash, &self.spec, now_ms, amount),
        }
    }

    fn apply(&self, key: u128, now_ms: u64, enforce: bool, amount: u32) -> WindowState {
        let hash = self.hasher.hash_one(key);
        match &self.counters {
            Counters::Narrow(c) => c.apply(hash, &self.spec, now_ms, enforce, amount),
            Counters::Wide(c) => c.apply(hash, &self.spec, now_ms, enforce, amount),
        }
    }

    /// Keys held, for tests and the memory figures.
    pub fn keys(&self) -> usize {
        match &self.counters {
            Counters::Narrow(c) => c.keys(),
            Counters::Wide(c) => c.keys(),
        }
    }
}

/// One limit's part of a request, as a shared store sees it.
#[derive(Debug, Clone)]
pub struct SharedHit {
    /// The store key: limit name, definition and request key; never a raw secret.
    pub key: String,
    pub spec: WindowSpec,
    /// What the request counts: 1 for a request limit, tokens for a budget (negative takes
    /// back an estimate that was above the truth).
    pub amount: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

pub type StoreFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<WindowState>, StoreError>> + Send + 'a>>;

/// Counters shared by several instances, one round trip per call.
pub trait SharedWindows: Send + Sync {
    /// Counts each hit's amount against its window if every window is below its limit, and
    /// none otherwise (all or none).
    fn hit<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a>;
    /// Counts each hit's amount whatever the limits say; each state's `allowed` says whether
    /// its window is still below its limit.
    fn charge<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a>;
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

    /// Each key's share of its table: its entry, its control byte and the empty buckets a
    /// power-of-two table keeps, at the default bound of a million keys.
    #[test]
    fn a_million_keys_cost_at_most_100_bytes_each() {
        assert_eq!(std::mem::size_of::<(StoredKey, Slots<u16>)>(), 44);
        let w = RateWindow::new(
            WindowSpec {
                limit: 1000,
                window_ms: 5 * MIN,
            },
            1_000_000,
        );
        for key in 0..1_000_000u128 {
            w.hit(key << 64 | key, MIN);
        }
        let Counters::Narrow(shards) = &w.counters else {
            panic!("a request limit keeps u16 counts");
        };
        let entry = std::mem::size_of::<(StoredKey, Slots<u16>)>() + 1;
        let bytes: usize = shards
            .shards
            .iter()
            .map(|t| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner());
                // A table of 2^n buckets holds up to 7/8 of them.
                (t.capacity() * 8 / 7).next_power_of_two() * entry
            })
            .sum();
        // Shards fill unevenly; a full one forgets 1/32 of its keys to make room.
        let keys = w.keys();
        assert!(keys > 900_000, "{keys} of a million kept");
        assert!(bytes <= 100 * keys, "{} bytes a key", bytes / keys);
    }

    #[test]
    fn token_budgets_above_a_u16_count_exactly() {
        let w = RateWindow::new(
            WindowSpec {
                limit: 100_000,
                window_ms: MIN,
            },
            100,
        );
        assert!(matches!(w.counters, Counters::Wide(_)));
        w.charge(1, 0, 99_999);
        assert!(w.peek(1, 0).allowed);
        w.charge(1, 0, 1);
        let s = w.peek(1, 0);
        assert!(!s.allowed && s.count == 100_000, "{s:?}");
        // A u16 slot saturates at 65,535, which is still over a limit a u16 holds.
        let narrow = window(60_000);
        narrow.charge(1, 0, 70_000);
        assert!(!narrow.peek(1, 0).allowed);
    }

    #[test]
    fn a_charge_says_when_the_limit_is_crossed_and_a_negative_one_takes_back() {
        let w = window(100);
        assert!(
            w.admit(7, 0, 60).allowed,
            "room: admitted with its estimate"
        );
        let s = w.charge(7, 0, 39);
        assert!(s.allowed && s.count == 99, "{s:?}");
        let s = w.charge(7, MIN / 2, 5);
        assert!(!s.allowed && s.count == 104, "crossed: {s:?}");
        assert!(!w.admit(7, MIN / 2, 1).allowed, "no room, nothing counted");
        assert_eq!(w.peek(7, MIN / 2).count, 104);
        // Taking back walks from the newest slot into older ones.
        let s = w.charge(7, MIN / 2, -30);
        assert!(s.allowed && s.count == 74, "{s:?}");
        let s = w.charge(7, MIN / 2, -1_000);
        assert_eq!(s.count, 0, "never below nothing");
    }

    #[test]
    fn the_absolute_slot_is_the_nearest_one() {
        assert_eq!(absolute_slot(1 << 32, 0), 1 << 32);
        assert_eq!(absolute_slot((1 << 32) + 5, u32::MAX), (1 << 32) - 1);
        assert_eq!(
            absolute_slot(10, 12),
            12,
            "a newest slot a little ahead of now"
        );
        assert_eq!(absolute_slot(3, 1), 1);
    }

    #[test]
    fn slot_numbers_wrap_without_losing_the_window() {
        // Near the 2^32nd slot (a 1 ms slot width, 49 days after the epoch), across the wrap.
        let w = RateWindow::new(
            WindowSpec {
                limit: 3,
                window_ms: 15,
            },
            100,
        );
        let edge = (1u64 << 32) - 2;
        for t in edge..edge + 3 {
            assert!(w.hit(9, t).allowed, "{t}");
        }
        let refused = w.hit(9, edge + 3);
        assert!(!refused.allowed);
        assert_eq!(
            refused.reset_ms, 13,
            "the first leaves when slot edge+16 begins"
        );
        assert!(w.hit(9, edge + 16).allowed);
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
