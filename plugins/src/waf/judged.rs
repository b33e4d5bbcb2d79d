//! The items of a JSON body's top-level arrays that a WAF judged clean, kept so that a
//! conversation sent again is not judged again.
//!
//! An LLM client sends the whole conversation at every turn: a coding agent's request is
//! its system prompt, its tool definitions and every message so far, and only the last one
//! or two are new. Each item of `messages`, `tools`, `input` or `system` it sends again is
//! byte for byte the item the last request carried, and the rules' verdict on it is the
//! same. So a WAF keeps the large items (at least [`MIN_ITEM_BYTES`]) of requests it found
//! clean, and when a later request holds one of them, at the same path and under the same
//! profile, the walk steps over it instead of reading its fields.
//!
//! What makes that safe:
//! - An item is stepped over only when the request's bytes there equal a kept item's byte
//!   for byte, and a kept item is exactly one complete JSON value (an object, an array or a
//!   string, which end where their bytes say): equal bytes are the same value, read the same
//!   way. A hash only says where to look.
//! - An item is kept only from a request in which no rule of this WAF matched anything in
//!   the body, except rules the route switches off there; so every field it holds was judged
//!   and found nothing ([`Evaluation::body_hits`](super::rules::Evaluation)). The verdicts
//!   are this WAF's: its rules, paranoia and overrides never change, and a reload builds a
//!   new WAF with no items kept.
//! - What a request's fields add up to (its body's length, which a size rule reads) does not
//!   come from the fields, so stepping over some changes nothing there.
//!
//! The store is bounded in bytes and never grows past [`JudgedItems::new`]'s budget. An
//! item is kept the second time it is seen (a one-off prompt is never copied), and each
//! first 128 bytes hold at most [`MAX_PER_LEAD`] items, so a flood of look-alikes costs
//! its own reading, as with no store. When the budget is spent, items not asked for since
//! the last sweep make room first (a second chance).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Items shorter than this are read: the fields' memo knows their short fields already, and
/// looking one up would cost about what reading it does.
pub const MIN_ITEM_BYTES: usize = 1024;

/// The bytes an item is looked up by: its first ones, which a request's bytes at an item's
/// start are compared on before its length is known.
const LEAD_BYTES: usize = 128;

/// Items kept per lead (first [`LEAD_BYTES`] bytes): a client sending many items that start
/// alike and differ later cannot make a lookup compare more than this many.
pub const MAX_PER_LEAD: usize = 4;

/// First sightings remembered, by hash, until an item comes again.
const SEEN_ONCE_SLOTS: usize = 4096;

/// How a WAF reads a route's requests: a digest of the route's profile. An item judged clean
/// under one profile is not clean under another that reads more of it.
pub type Reading = u64;

pub struct JudgedItems {
    /// Picks where an item is looked for. Items are compared byte for byte, so a collision
    /// costs a comparison, never a verdict: a fast hasher seeded per process is enough.
    hasher: foldhash::fast::RandomState,
    budget: usize,
    store: RwLock<Store>,
    /// Per slot, the hash of the last item that came and was not kept.
    seen_once: Box<[AtomicU64]>,
    /// Bytes of requests stepped over, ever.
    stepped_over: AtomicU64,
}

#[derive(Default)]
struct Store {
    /// Items by the hash of their reading, path and lead.
    by_lead: HashMap<u64, Vec<Arc<Item>>, foldhash::fast::RandomState>,
    /// Every item, oldest first, for the sweep that makes room.
    order: VecDeque<(u64, Arc<Item>)>,
    bytes: usize,
}

struct Item {
    reading: Reading,
    path: Box<str>,
    bytes: Box<[u8]>,
    /// Asked for since the sweep last passed it.
    used: AtomicBool,
}

impl JudgedItems {
    /// A store of at most `budget` bytes of items.
    pub fn new(budget: usize) -> Self {
        JudgedItems {
            hasher: foldhash::fast::RandomState::default(),
            budget,
            store: RwLock::default(),
            seen_once: (0..SEEN_ONCE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            stepped_over: AtomicU64::new(0),
        }
    }

    fn lead_hash(&self, reading: Reading, path: &str, lead: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(reading);
        h.write(path.as_bytes());
        h.write_u8(0xff);
        h.write(lead);
        h.finish()
    }

    /// Whether `item` (the bytes of one array item, from its first byte) could be kept: long
    /// enough, and a value whose bytes say where it ends (a number's do not: `12` is the
    /// start of `123`).
    fn keepable(item: &[u8]) -> bool {
        item.len() >= MIN_ITEM_BYTES && matches!(item.first(), Some(b'{' | b'[' | b'"'))
    }

    /// The length of the kept item that `rest` (a body from an item of the array at `path`
    /// on) starts with, if there is one.
    pub fn known(&self, reading: Reading, path: &str, rest: &[u8]) -> Option<usize> {
        if !Self::keepable(rest) {
            return None;
        }
        let lead = self.lead_hash(reading, path, &rest[..LEAD_BYTES]);
        let store = self.store.read().ok()?;
        let item = store.by_lead.get(&lead)?.iter().find(|item| {
            item.reading == reading && *item.path == *path && rest.starts_with(&item.bytes)
        })?;
        if !item.used.load(Ordering::Relaxed) {
            item.used.store(true, Ordering::Relaxed);
        }
        Some(item.bytes.len())
    }

    /// The length of the kept item `rest` starts with, as [`Self::known`], counted as
    /// stepped over.
    pub fn step_over(&self, reading: Reading, path: &str, rest: &[u8]) -> Option<usize> {
        let len = self.known(reading, path, rest)?;
        self.stepped_over.fetch_add(len as u64, Ordering::Relaxed);
        Some(len)
    }

    /// Whether `item` is one of the kept items of the array at `path`.
    pub fn holds(&self, reading: Reading, path: &str, item: &[u8]) -> bool {
        self.known(reading, path, item) == Some(item.len())
    }

    /// Bytes of requests whose reading was saved, since the store was made.
    pub fn stepped_over(&self) -> u64 {
        self.stepped_over.load(Ordering::Relaxed)
    }

    /// Notes `item`, an item of the array at `path` of a request found clean: kept if it was
    /// noted last time too (and there is room for it).
    pub fn judged_clean(&self, reading: Reading, path: &str, item: &[u8]) {
        if !Self::keepable(item) || item.len() > self.budget / 8 {
            return;
        }
        let mut h = self.hasher.build_hasher();
        h.write_u64(reading);
        h.write(path.as_bytes());
        h.write_u8(0xff);
        h.write(item);
        let whole = h.finish();
        let slot = &self.seen_once[whole as usize % SEEN_ONCE_SLOTS];
        if slot.swap(whole, Ordering::Relaxed) != whole {
            return;
        }
        let lead = self.lead_hash(reading, path, &item[..LEAD_BYTES]);
        let Ok(mut store) = self.store.write() else {
            return;
        };
        let alike = store.by_lead.get(&lead).map_or(0, Vec::len);
        if alike >= MAX_PER_LEAD
            || store.by_lead.get(&lead).is_some_and(|kept| {
                kept.iter()
                    .any(|k| k.reading == reading && *k.path == *path && *k.bytes == *item)
            })
        {
            return;
        }
        store.make_room(self.budget - item.len());
        let kept = Arc::new(Item {
            reading,
            path: path.into(),
            bytes: item.into(),
            used: AtomicBool::new(false),
        });
        store.bytes += item.len();
        store.order.push_back((lead, Arc::clone(&kept)));
        store.by_lead.entry(lead).or_default().push(kept);
    }

    /// Bytes of items kept.
    pub fn bytes(&self) -> usize {
        self.store.read().map_or(0, |s| s.bytes)
    }

    /// Items kept.
    pub fn len(&self) -> usize {
        self.store.read().map_or(0, |s| s.order.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    /// Drops items, oldest first, until at most `keep` bytes are kept; an item asked for
    /// since the last sweep is passed over once (its mark cleared) and goes to the back.
    fn make_room(&mut self, keep: usize) {
        // Each item is passed over at most once: twice the items' number of steps ends it.
        let mut steps = 2 * self.order.len();
        while self.bytes > keep && steps > 0 {
            steps -= 1;
            let Some((lead, item)) = self.order.pop_front() else {
                break;
            };
            if item.used.swap(false, Ordering::Relaxed) {
                self.order.push_back((lead, item));
                continue;
            }
            self.bytes -= item.bytes.len();
            if let Some(alike) = self.by_lead.get_mut(&lead) {
                alike.retain(|k| !Arc::ptr_eq(k, &item));
                if alike.is_empty() {
                    self.by_lead.remove(&lead);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `len` bytes (a JSON object) whose text is `fill` repeated.
    fn message(fill: &str, len: usize) -> Vec<u8> {
        let head = br#"{"role":"tool","content":""#;
        let mut m = head.to_vec();
        while m.len() + 2 < len {
            m.extend_from_slice(fill.as_bytes());
        }
        m.truncate(len - 2);
        m.extend_from_slice(br#""}"#);
        m
    }

    const PATH: &str = "messages[]";

    #[test]
    fn an_item_is_kept_the_second_time_it_is_judged_clean() {
        let judged = JudgedItems::new(1 << 20);
        let m = message("fn main() {} ", 4000);
        assert_eq!(judged.known(1, PATH, &m), None);
        judged.judged_clean(1, PATH, &m);
        assert!(judged.is_empty(), "seen once: not copied");
        judged.judged_clean(1, PATH, &m);
        assert_eq!(judged.len(), 1);
        assert_eq!(judged.bytes(), m.len());
        // Followed by the rest of the body, as in a request.
        let mut body = m.clone();
        body.extend_from_slice(br#",{"role":"user","content":"next"}]}"#);
        assert_eq!(judged.known(1, PATH, &body), Some(m.len()));
        assert!(judged.holds(1, PATH, &m));
        judged.judged_clean(1, PATH, &m);
        assert_eq!(judged.len(), 1, "kept once");
    }

    #[test]
    fn only_the_same_bytes_at_the_same_path_under_the_same_reading_are_known() {
        let judged = JudgedItems::new(1 << 20);
        let m = message("let x = 1; ", 3000);
        for _ in 0..2 {
            judged.judged_clean(7, PATH, &m);
        }
        assert_eq!(judged.known(7, PATH, &m), Some(m.len()));
        assert_eq!(judged.known(8, PATH, &m), None, "another profile");
        assert_eq!(judged.known(7, "tools[]", &m), None, "another array");
        // One byte changed anywhere, the first, the last, or past the lead.
        for at in [0, 1, LEAD_BYTES, m.len() / 2, m.len() - 3, m.len() - 1] {
            let mut other = m.clone();
            other[at] ^= 0x20;
            assert_eq!(judged.known(7, PATH, &other), None, "byte {at} changed");
        }
        // Cut short (a body's window ends inside it), or one byte longer inside.
        assert_eq!(judged.known(7, PATH, &m[..m.len() - 1]), None);
        let mut longer = m[..m.len() - 2].to_vec();
        longer.extend_from_slice(br#"x"}"#);
        assert_eq!(judged.known(7, PATH, &longer), None);
    }

    #[test]
    fn short_items_and_numbers_are_never_kept() {
        let judged = JudgedItems::new(1 << 20);
        let short = message("a", MIN_ITEM_BYTES - 1);
        let number = vec![b'7'; 2000];
        for _ in 0..3 {
            judged.judged_clean(1, PATH, &short);
            judged.judged_clean(1, PATH, &number);
        }
        assert!(judged.is_empty());
        assert_eq!(judged.known(1, PATH, &number), None);
    }

    #[test]
    fn look_alikes_past_the_cap_are_not_kept() {
        let judged = JudgedItems::new(1 << 20);
        let base = message("same lead for all of them ", 2000);
        let alike: Vec<Vec<u8>> = (0..MAX_PER_LEAD + 3)
            .map(|i| {
                let mut m = base.clone();
                m[1500] = b'a' + i as u8;
                m
            })
            .collect();
        for m in &alike {
            judged.judged_clean(1, PATH, m);
            judged.judged_clean(1, PATH, m);
        }
        assert_eq!(judged.len(), MAX_PER_LEAD);
        let known = alike.iter().filter(|m| judged.holds(1, PATH, m)).count();
        assert_eq!(known, MAX_PER_LEAD);
    }

    #[test]
    fn the_budget_holds_and_items_in_use_stay() {
        let item = 2000;
        let judged = JudgedItems::new(10 * item);
        let items: Vec<Vec<u8>> = (0..30)
            .map(|i| message(&format!("item {i} "), item))
            .collect();
        // The first stays in use, read at every step.
        let first = &items[0];
        for m in &items {
            judged.judged_clean(1, PATH, m);
            judged.judged_clean(1, PATH, m);
            assert!(judged.bytes() <= 10 * item);
            let _ = judged.known(1, PATH, first);
        }
        assert_eq!(judged.len(), 10);
        assert!(judged.holds(1, PATH, first), "in use: kept");
        assert!(judged.holds(1, PATH, &items[29]), "the newest is kept");
        assert!(!judged.holds(1, PATH, &items[5]), "old and unused: gone");
        // An item larger than an eighth of the budget is never kept.
        let big = message("big ", 10 * item / 8 + 1);
        judged.judged_clean(1, PATH, &big);
        judged.judged_clean(1, PATH, &big);
        assert!(!judged.holds(1, PATH, &big));
    }
}
