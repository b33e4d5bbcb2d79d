//! The items of a JSON body's top-level arrays that the WAFs judged clean, kept so that a
//! conversation sent again is not judged again.
//!
//! An LLM client sends the whole conversation at every turn: a coding agent's request is
//! its system prompt, its tool definitions and every message so far, and only the last one
//! or two are new. Each item of `messages`, `tools`, `input` or `system` it sends again is
//! byte for byte the item the last request carried, and the rules' verdict on it is the
//! same. So the items (at least [`MIN_ITEM_BYTES`]) of requests a WAF found clean are kept,
//! each with its judges (a WAF under a route's profile, [`Judge`]), and when a later
//! request holds one at the same path, the walk of a judge steps over it instead of reading
//! its fields.
//!
//! What makes that safe:
//! - An item is stepped over only when the request's bytes there equal a kept item's byte
//!   for byte, and a kept item is exactly one complete JSON value (an object, an array or a
//!   string, which end where their bytes say): equal bytes are the same value, read the same
//!   way. A hash only says where to look.
//! - A judge is added to an item only from a request in which no rule of that WAF matched
//!   anything in the body, except rules the route switches off there; so every field it
//!   holds was judged and found nothing ([`Evaluation::body_hits`](super::rules::Evaluation)).
//!   A WAF's rules, paranoia and overrides never change, and a reload's WAFs are new judges.
//! - What a request's fields add up to (its body's length, which a size rule reads) does not
//!   come from the fields, so stepping over some changes nothing there.
//!
//! The process has one store ([`shared`]): the WAFs of a chain judge the same requests, and
//! an item is kept, and looked up, once for all of them. It never grows past its budget. An
//! item is kept the second time it is seen (a one-off prompt is never copied), and each
//! lead (first 128 bytes) leads to at most [`MAX_PER_LEAD`] items, so a flood of
//! look-alikes costs its own reading, as with no store. When the budget is spent, items not
//! asked for since the last sweep make room first (a second chance).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// Items shorter than this are read: looking one up costs about what reading it does. A
/// coding agent's tool calls are about 170 bytes, its tool definitions 400.
pub const MIN_ITEM_BYTES: usize = 128;

/// The bytes an item is looked up by: its first ones, which a request's bytes at an item's
/// start are compared on before its length is known (so no more than the shortest item).
const LEAD_BYTES: usize = MIN_ITEM_BYTES;

/// Items kept per lead: the comparisons a lookup makes. Files that a coding agent reads often
/// start alike (a licence header), so their tool results may share a lead. Each comparison
/// stops at the request's item's end at the latest (a kept item is one JSON value: bytes
/// equal past where the request's item ends would make it end there too), so a request
/// costs at most this many comparisons of its own bytes, whatever items a client had kept.
pub const MAX_PER_LEAD: usize = 16;

/// What keeping an item costs beside its bytes (its record, path and places in the store),
/// counted against the budget.
const ITEM_OVERHEAD: usize = 160;

/// First sightings remembered, by hash, until an item comes again.
const SEEN_ONCE_SLOTS: usize = 16384;

/// Who judged an item clean: one WAF (its rules, paranoia and overrides) on routes read by
/// one profile. An item clean under one is not clean under another that reads more of it.
pub type Judge = u64;

/// Judges an item keeps: a chain's two WAFs, each on a route or two that read it alike.
const MAX_JUDGES: usize = 4;

/// Bytes of items the process keeps ([`shared`]): about thirty 1 MiB agent conversations in
/// flight, each sent again at every turn.
pub const SHARED_BUDGET: usize = 32 << 20;

/// The store every WAF of the process keeps its judged items in: the WAFs of a chain read
/// the same requests, and an item both judged clean is kept once, and looked up once.
pub fn shared() -> &'static JudgedItems {
    static SHARED: LazyLock<JudgedItems> = LazyLock::new(|| JudgedItems::new(SHARED_BUDGET));
    &SHARED
}

/// A judge no other WAF of the process has: a new one for each WAF built (a reload's WAFs
/// judge anew) and each way it reads a route (`reading`, the profile's digest).
pub fn new_judge(waf: u64, reading: u64) -> Judge {
    let mut h = std::hash::DefaultHasher::new();
    h.write_u64(waf);
    h.write_u64(reading);
    // Never 0, which marks a free judge slot.
    h.finish() | 1
}

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
    /// Items by the hash of their path and lead.
    by_lead: HashMap<u64, Vec<Arc<Item>>, foldhash::fast::RandomState>,
    /// Every item, oldest first, for the sweep that makes room.
    order: VecDeque<(u64, Arc<Item>)>,
    bytes: usize,
}

struct Item {
    path: Box<str>,
    bytes: Box<[u8]>,
    /// Who judged it clean (0: a free slot).
    judges: [AtomicU64; MAX_JUDGES],
    /// Asked for since the sweep last passed it.
    used: AtomicBool,
}

impl Item {
    fn judged_by(&self, judge: Judge) -> bool {
        self.judges
            .iter()
            .any(|j| j.load(Ordering::Relaxed) == judge)
    }

    /// Adds `judge`, in a free slot or, with none, in place of another (which then reads
    /// the item again, and judges it again).
    fn add_judge(&self, judge: Judge) {
        if self.judged_by(judge) {
            return;
        }
        let free = self.judges.iter().any(|j| {
            j.compare_exchange(0, judge, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        if !free {
            self.judges[judge as usize % MAX_JUDGES].store(judge, Ordering::Relaxed);
        }
    }
}

/// An item of a request that a judge had judged clean: what the walk stepped over.
#[derive(Clone)]
pub struct KeptItem(Arc<Item>);

impl KeptItem {
    /// Whether `judge` judged it clean too.
    pub fn judged_by(&self, judge: Judge) -> bool {
        self.0.judged_by(judge)
    }

    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }
}

/// A kept item found in a document by a reader that compared it byte for byte: where it
/// starts.
#[derive(Debug, Clone)]
pub struct LocatedItem {
    pub at: usize,
    pub item: KeptItem,
}

impl std::fmt::Debug for KeptItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeptItem({} at {})", self.0.bytes.len(), self.0.path)
    }
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

    fn lead_hash(&self, path: &str, lead: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
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

    /// The kept item of the array at `path` whose lead hashes to `lead` and that `rest`
    /// starts with, whoever judged it.
    fn find(&self, path: &str, lead: u64, rest: &[u8]) -> Option<Arc<Item>> {
        let store = self.store.read().ok()?;
        let item = store
            .by_lead
            .get(&lead)?
            .iter()
            .find(|item| *item.path == *path && rest.starts_with(&item.bytes))?;
        Some(Arc::clone(item))
    }

    /// The kept item that `rest` (a body from an item of the array at `path` on) starts
    /// with, if there is one, whoever judged it.
    fn kept(&self, path: &str, rest: &[u8]) -> Option<Arc<Item>> {
        if !Self::keepable(rest) {
            return None;
        }
        self.find(path, self.lead_hash(path, &rest[..LEAD_BYTES]), rest)
    }

    /// The kept item that `rest` (a body from an item of the array at `path` on) starts
    /// with, if `judge` judged it clean: the walk steps over it.
    pub fn step_over(&self, judge: Judge, path: &str, rest: &[u8]) -> Option<KeptItem> {
        let item = self.kept(path, rest).filter(|i| i.judged_by(judge))?;
        Some(self.stepped(item))
    }

    /// The kept item `rest` (a body from an item of the array at `path` on) starts with,
    /// whoever judged it: a kept item is one complete JSON value, which a reader of the
    /// body's structure may step over as one ([`stream`](super::stream)).
    pub fn kept_at(&self, path: &str, rest: &[u8]) -> Option<KeptItem> {
        self.kept(path, rest).map(KeptItem)
    }

    /// [`Self::step_over`] for an item a reader of the body found where `rest` starts
    /// (a [`LocatedItem`]), having compared every byte: only its path and judge are asked,
    /// and its first and last bytes compared again, so that a document whose places went
    /// wrong reads the item rather than trusts it.
    pub fn step_over_located(
        &self,
        judge: Judge,
        path: &str,
        rest: &[u8],
        located: &KeptItem,
    ) -> Option<KeptItem> {
        let item = &located.0;
        let n = item.bytes.len();
        let ends = LEAD_BYTES.min(n);
        let same_ends = rest.len() >= n
            && rest[..ends] == item.bytes[..ends]
            && rest[n - ends..n] == item.bytes[n - ends..];
        if *item.path != *path || !same_ends || !item.judged_by(judge) {
            return None;
        }
        Some(self.stepped(Arc::clone(item)))
    }

    fn stepped(&self, item: Arc<Item>) -> KeptItem {
        if !item.used.load(Ordering::Relaxed) {
            item.used.store(true, Ordering::Relaxed);
        }
        self.stepped_over
            .fetch_add(item.bytes.len() as u64, Ordering::Relaxed);
        KeptItem(item)
    }

    /// Whether `judge` judged `item`, an item of the array at `path`, clean. (The walk asks
    /// [`Self::step_over`]; this is for tests, and counts nothing as stepped over.)
    #[cfg(test)]
    fn holds(&self, judge: Judge, path: &str, item: &[u8]) -> bool {
        self.kept(path, item)
            .is_some_and(|kept| kept.bytes.len() == item.len() && kept.judged_by(judge))
    }

    /// Bytes of requests whose reading was saved, since the store was made.
    pub fn stepped_over(&self) -> u64 {
        self.stepped_over.load(Ordering::Relaxed)
    }

    /// Notes that `judge` found `item`, an item of the array at `path`, in a request it
    /// found clean: kept if it was noted last time too (and there is room for it).
    pub fn judged_clean(&self, judge: Judge, path: &str, item: &[u8]) {
        if !Self::keepable(item) || item.len() > self.budget / 8 {
            return;
        }
        let lead = self.lead_hash(path, &item[..LEAD_BYTES]);
        if let Some(kept) = self.find(path, lead, item) {
            if kept.bytes.len() == item.len() {
                return kept.add_judge(judge);
            }
        }
        // An item is known again by its lead and length: hashing all of it would cost every
        // new item a read of its bytes, and an item taken for another only costs a copy.
        // Two slots, from the sighting's two halves, both noting it: with one, two items
        // drawn to the same slot would overwrite each other's note at every request and
        // neither be kept (a conversation of 137 large items lost two that way in 4,096).
        let sighting = lead ^ (item.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slots = [sighting as usize, (sighting >> 32) as usize].map(|s| s % SEEN_ONCE_SLOTS);
        let seen_before = slots
            .map(|s| self.seen_once[s].swap(sighting, Ordering::Relaxed) == sighting)
            .contains(&true);
        if !seen_before {
            return;
        }
        let Ok(mut store) = self.store.write() else {
            return;
        };
        let alike = store
            .by_lead
            .get(&lead)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Another thread may have kept it meanwhile.
        if let Some(kept) = alike.iter().find(|k| *k.path == *path && *k.bytes == *item) {
            return kept.add_judge(judge);
        }
        if alike.len() >= MAX_PER_LEAD {
            return;
        }
        let cost = item.len() + ITEM_OVERHEAD;
        store.make_room(self.budget.saturating_sub(cost));
        let kept = Arc::new(Item {
            path: path.into(),
            bytes: item.into(),
            judges: std::array::from_fn(|i| AtomicU64::new(if i == 0 { judge } else { 0 })),
            used: AtomicBool::new(false),
        });
        store.bytes += cost;
        store.order.push_back((lead, Arc::clone(&kept)));
        store.by_lead.entry(lead).or_default().push(kept);
    }

    /// Bytes of items kept, with what keeping each costs beside.
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
            self.bytes -= item.bytes.len() + ITEM_OVERHEAD;
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

    fn known(judged: &JudgedItems, judge: Judge, path: &str, rest: &[u8]) -> Option<usize> {
        judged.step_over(judge, path, rest).map(|kept| kept.len())
    }

    #[test]
    fn an_item_is_kept_the_second_time_it_is_judged_clean() {
        let judged = JudgedItems::new(1 << 20);
        let m = message("fn main() {} ", 4000);
        assert_eq!(known(&judged, 1, PATH, &m), None);
        judged.judged_clean(1, PATH, &m);
        assert!(judged.is_empty(), "seen once: not copied");
        judged.judged_clean(1, PATH, &m);
        assert_eq!(judged.len(), 1);
        assert_eq!(judged.bytes(), m.len() + ITEM_OVERHEAD);
        // Followed by the rest of the body, as in a request.
        let mut body = m.clone();
        body.extend_from_slice(br#",{"role":"user","content":"next"}]}"#);
        assert_eq!(known(&judged, 1, PATH, &body), Some(m.len()));
        assert!(judged.holds(1, PATH, &m));
        judged.judged_clean(1, PATH, &m);
        assert_eq!(judged.len(), 1, "kept once");
    }

    #[test]
    fn only_the_same_bytes_at_the_same_path_judged_by_the_same_judge_are_known() {
        let judged = JudgedItems::new(1 << 20);
        let m = message("let x = 1; ", 3000);
        for _ in 0..2 {
            judged.judged_clean(7, PATH, &m);
        }
        assert_eq!(known(&judged, 7, PATH, &m), Some(m.len()));
        assert_eq!(known(&judged, 8, PATH, &m), None, "another judge");
        // Another judge's clean verdict on a kept item is added to it at once.
        judged.judged_clean(8, PATH, &m);
        assert_eq!(known(&judged, 8, PATH, &m), Some(m.len()));
        assert_eq!(judged.len(), 1);
        assert_eq!(known(&judged, 7, "tools[]", &m), None, "another array");
        // One byte changed anywhere, the first, the last, or past the lead.
        for at in [0, 1, LEAD_BYTES, m.len() / 2, m.len() - 3, m.len() - 1] {
            let mut other = m.clone();
            other[at] ^= 0x20;
            assert_eq!(known(&judged, 7, PATH, &other), None, "byte {at} changed");
        }
        // Cut short (a body's window ends inside it), or one byte longer inside.
        assert_eq!(known(&judged, 7, PATH, &m[..m.len() - 1]), None);
        let mut longer = m[..m.len() - 2].to_vec();
        longer.extend_from_slice(br#"x"}"#);
        assert_eq!(known(&judged, 7, PATH, &longer), None);
    }

    #[test]
    fn a_conversations_items_are_all_kept_though_noted_in_turn() {
        // A request's items are all noted before the next request notes them again: with
        // one slot each, items drawn to the same slot overwrite each other's note (about
        // ten of 200 in 4,096 slots) and are never kept.
        let judged = JudgedItems::new(64 << 20);
        let items: Vec<Vec<u8>> = (0..200)
            .map(|i| message(&format!("file {i} "), 1500))
            .collect();
        for _ in 0..2 {
            for m in &items {
                judged.judged_clean(1, PATH, m);
            }
        }
        let kept = items.iter().filter(|m| judged.holds(1, PATH, m)).count();
        assert!(kept >= 198, "{kept} of 200 kept");
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
        assert_eq!(known(&judged, 1, PATH, &number), None);
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
        let budget = 10 * (item + ITEM_OVERHEAD);
        let judged = JudgedItems::new(budget);
        let items: Vec<Vec<u8>> = (0..30)
            .map(|i| message(&format!("item {i} "), item))
            .collect();
        // The first stays in use, read at every step.
        let first = &items[0];
        for m in &items {
            judged.judged_clean(1, PATH, m);
            judged.judged_clean(1, PATH, m);
            assert!(judged.bytes() <= budget);
            let _ = known(&judged, 1, PATH, first);
        }
        assert_eq!(judged.len(), 10);
        assert!(judged.holds(1, PATH, first), "in use: kept");
        assert!(judged.holds(1, PATH, &items[29]), "the newest is kept");
        assert!(!judged.holds(1, PATH, &items[5]), "old and unused: gone");
        // An item larger than an eighth of the budget is never kept.
        let big = message("big ", budget / 8 + 1);
        judged.judged_clean(1, PATH, &big);
        judged.judged_clean(1, PATH, &big);
        assert!(!judged.holds(1, PATH, &big));
    }
}
