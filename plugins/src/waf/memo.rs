//! What a rule set found in fields that recur from request to request.
//!
//! API traffic repeats itself: the same few `User-Agent`, `Accept`, `Host` and
//! `Content-Type` values, the same paths. Running every rule over them again is most of what a
//! header-only request costs the WAF, so each WAF remembers, per field, which of its rules
//! matched and where. An LLM conversation repeats itself too: every turn sends the whole
//! conversation again, its roles, types, tool names, call ids and the links in its prompts,
//! with one turn more. So short arguments and URLs (query and body) are remembered as well;
//! cookies are not (they are each caller's own), nor anything long (it rarely recurs whole).
//!
//! The memo is a fixed table of slots, each holding one field: a flood of distinct values
//! costs what no memo would, and it never grows. A keyed hash gives each field two slots
//! it may take (its first and its second): with one, two recurring fields drawn to the same
//! slot would push each other out at every request (a 1 MiB agent request's 730 fields
//! lost about 66 that way in 8,192 slots); with two, both are kept unless all their slots
//! are taken by fields still in use. A field takes a slot only when it comes a second time
//! in a row to one of its slots: fields seen once (a new conversation's call ids, a
//! scanner's junk) neither cost an entry's allocation nor evict the fields that do recur.
//! An entry is used only when its field is byte for byte the one asked about. A memo belongs to one WAF instance, whose rules, paranoia and overrides
//! never change; a reload builds a new one.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::inspect::{Field, Source, Target};

/// Where one rule matched inside one field (`at`, `len`: the excerpt, in the rule's form),
/// and for a detector's match why it counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldHit {
    pub rule: u32,
    pub at: u32,
    pub len: u32,
    pub why: Option<&'static str>,
}

/// The longest field (name and value) worth remembering: longer ones rarely recur.
const MAX_KEY_BYTES: usize = 256;

/// A remembered field: its name and value in one allocation, and what the rules found.
struct Entry {
    target: Target,
    source: Source,
    name_len: usize,
    name_and_raw: Box<[u8]>,
    hits: Box<[FieldHit]>,
}

impl Entry {
    fn is(&self, field: &Field) -> bool {
        self.target == field.target
            && self.source == field.source
            && self.name_and_raw.split_at(self.name_len) == (field.name.as_bytes(), field.raw())
    }
}

pub struct FieldMemo {
    /// Chooses a field's slot. A hash only points at a slot (an entry is used only once
    /// compared byte for byte), so colliding fields cost their rules' run, never a verdict:
    /// a fast hasher, seeded per process, is enough here.
    hasher: foldhash::fast::RandomState,
    /// Per slot, the hash of the field it holds (0 for none), in a small table of their own:
    /// a field that is not remembered (most of a new conversation's) is found out by one
    /// read here, without touching (or locking) the entries. Only a hint: an entry is used
    /// only once compared byte for byte, under its lock.
    tags: Box<[AtomicU64]>,
    /// Per slot, the hash of the last field that came and was not the one held.
    last_miss: Box<[AtomicU64]>,
    /// Per slot, whether its field was asked for since a newcomer last found both its slots
    /// taken: a field no longer asked for makes room, one still asked for keeps its slot
    /// (the newcomer is judged by the rules, as with no memo).
    used: Box<[AtomicBool]>,
    entries: Box<[Mutex<Option<Entry>>]>,
}

impl FieldMemo {
    /// A memo of `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(1).next_power_of_two();
        FieldMemo {
            hasher: foldhash::fast::RandomState::default(),
            tags: (0..n).map(|_| AtomicU64::new(0)).collect(),
            last_miss: (0..n).map(|_| AtomicU64::new(0)).collect(),
            used: (0..n).map(|_| AtomicBool::new(false)).collect(),
            entries: (0..n).map(|_| Mutex::default()).collect(),
        }
    }

    /// Whether `field` is one the memo keeps.
    pub fn remembers(field: &Field) -> bool {
        let recurs = match field.source {
            Source::Method | Source::UriPath | Source::Header => true,
            Source::Query | Source::Body => {
                matches!(field.target, Target::Args | Target::ArgNames | Target::Urls)
            }
            Source::Cookie => false,
        };
        recurs && field.name.len() + field.raw().len() <= MAX_KEY_BYTES
    }

    /// Appends `field`'s hits to `out`: remembered ones if the memo holds this field, else
    /// what `find` appends, which is remembered if the field came to one of its slots last time
    /// too.
    ///
    /// `find` must append every hit of every active rule, whatever earlier fields matched,
    /// since the entry will stand for this field in later requests.
    pub fn hits(
        &self,
        field: &Field,
        out: &mut Vec<FieldHit>,
        find: impl FnOnce(&mut Vec<FieldHit>),
    ) {
        if !Self::remembers(field) {
            return find(out);
        }
        let mut h = self.hasher.build_hasher();
        (field.target, field.source).hash(&mut h);
        h.write(field.name.as_bytes());
        h.write_u8(0xff);
        h.write(field.raw());
        let full = h.finish();
        // The two slots come from the hash's two halves. (They are chosen before the low bit
        // is set, or only every other slot would be used.)
        let mask = self.entries.len() - 1;
        let (first, second) = (full as usize & mask, (full >> 32) as usize & mask);
        // The tag is never 0, which marks an empty slot.
        let hash = full | 1;
        for at in [first, second] {
            if self.tags[at].load(Ordering::Relaxed) != hash {
                continue;
            }
            // A slot another thread holds is not waited for: the rules run without it.
            if let Ok(entry) = self.entries[at].try_lock() {
                if let Some(e) = entry.as_ref().filter(|e| e.is(field)) {
                    out.extend_from_slice(&e.hits);
                    if !self.used[at].load(Ordering::Relaxed) {
                        self.used[at].store(true, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
        let start = out.len();
        find(out);
        // Both slots note the miss: two fields drawn to one slot would otherwise overwrite
        // each other's note there at every request and neither be taken.
        let noted_first = self.last_miss[first].swap(hash, Ordering::Relaxed) == hash;
        let noted_second =
            second != first && self.last_miss[second].swap(hash, Ordering::Relaxed) == hash;
        if !(noted_first || noted_second) {
            return;
        }
        // An empty slot of the two, else one whose field was not asked for since the last
        // look (each look clears the mark: a second chance), else none.
        let slots = [first, second];
        let Some(at) = slots
            .into_iter()
            .find(|&at| self.tags[at].load(Ordering::Relaxed) == 0)
            .or_else(|| {
                slots
                    .into_iter()
                    .find(|&at| !self.used[at].swap(false, Ordering::Relaxed))
            })
        else {
            return;
        };
        let Ok(mut entry) = self.entries[at].try_lock() else {
            return;
        };
        *entry = Some(Entry {
            target: field.target,
            source: field.source,
            name_len: field.name.len(),
            name_and_raw: [field.name.as_bytes(), field.raw()].concat().into(),
            hits: out[start..].into(),
        });
        self.tags[at].store(hash, Ordering::Relaxed);
        self.used[at].store(true, Ordering::Relaxed);
    }

    /// How many slots hold a field.
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.try_lock().is_ok_and(|e| e.is_some()))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Field {
        Field::new(
            Target::Headers,
            Source::Header,
            name,
            value.as_bytes().to_vec(),
        )
    }

    fn lookup(memo: &FieldMemo, field: &Field, found: &[FieldHit]) -> (Vec<FieldHit>, bool) {
        let mut out = Vec::new();
        let mut ran = false;
        memo.hits(field, &mut out, |out| {
            ran = true;
            out.extend_from_slice(found);
        });
        (out, ran)
    }

    const HIT: FieldHit = FieldHit {
        rule: 3,
        at: 1,
        len: 4,
        why: None,
    };

    #[test]
    fn a_recurring_field_is_answered_from_the_memo() {
        let memo = FieldMemo::new(64);
        let ua = header("user-agent", "sqlmap/1.7");
        assert_eq!(lookup(&memo, &ua, &[HIT]), (vec![HIT], true));
        assert!(memo.is_empty(), "a field seen once is not remembered");
        assert_eq!(lookup(&memo, &ua, &[HIT]), (vec![HIT], true));
        assert_eq!(lookup(&memo, &ua, &[]), (vec![HIT], false), "remembered");
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn one_slot_never_answers_for_another_field() {
        // A single slot: every field lands in it, so each lookup must compare the field.
        let memo = FieldMemo::new(1);
        let bad = header("user-agent", "sqlmap/1.7");
        let good = header("user-agent", "curl/8.5.0");
        let renamed = header("x-user-agent", "sqlmap/1.7");
        let as_arg = Field::new(
            Target::Args,
            Source::Header,
            "user-agent",
            b"sqlmap/1.7".to_vec(),
        );
        // Name and value are told apart where they meet, not only by their bytes together.
        let shifted = header("user-agentsqlmap", "/1.7");
        for _ in 0..2 {
            assert_eq!(lookup(&memo, &bad, &[HIT]), (vec![HIT], true));
        }
        for other in [&good, &renamed, &as_arg, &shifted] {
            for _ in 0..2 {
                assert_eq!(lookup(&memo, other, &[]), (vec![], true));
            }
            assert_eq!(lookup(&memo, other, &[HIT]), (vec![], false), "remembered");
        }
        assert_eq!(
            lookup(&memo, &bad, &[HIT]),
            (vec![HIT], true),
            "evicted, found again"
        );
    }

    #[test]
    fn every_slot_is_used() {
        let memo = FieldMemo::new(64);
        for i in 0..4096 {
            let field = header("x-n", &i.to_string());
            for _ in 0..2 {
                lookup(&memo, &field, &[]);
            }
        }
        assert_eq!(
            memo.len(),
            64,
            "4,096 fields, each seen twice, fill all 64 slots"
        );
    }

    #[test]
    fn recurring_fields_drawn_to_one_slot_are_all_kept() {
        // A 1 MiB agent request's 730 short fields in 8,192 slots: about 32 pairs of them
        // share their first slot. Each request sends them all; from the third on, a field
        // is answered from the memo unless both its slots went to others (about 0.8%).
        let (mut missed, memos) = (0, 20);
        for _ in 0..memos {
            let memo = FieldMemo::new(8192);
            let fields: Vec<Field> = (0..730)
                .map(|i| header("x-n", &format!("value-{i}")))
                .collect();
            for request in 0..4 {
                for field in &fields {
                    let ran = lookup(&memo, field, &[]).1;
                    missed += usize::from(request == 3 && ran);
                }
            }
        }
        // With one slot a field, about 66 a memo were missed at every request.
        assert!(
            missed <= memos * 20,
            "{missed} fields missed in {memos} memos' fourth request"
        );
    }

    #[test]
    fn fields_seen_once_do_not_evict_one_that_recurs() {
        let memo = FieldMemo::new(1);
        let ua = header("user-agent", "curl/8.5.0");
        for _ in 0..2 {
            lookup(&memo, &ua, &[]);
        }
        for i in 0..100 {
            let junk = header("user-agent", &format!("scanner-{i}"));
            assert!(lookup(&memo, &junk, &[]).1);
        }
        assert_eq!(
            lookup(&memo, &ua, &[HIT]),
            (vec![], false),
            "still remembered"
        );
    }

    #[test]
    fn short_arguments_and_urls_are_remembered() {
        let memo = FieldMemo::new(64);
        let role = Field::new(
            Target::Args,
            Source::Body,
            "messages[].role",
            b"tool".to_vec(),
        );
        let url = Field::new(
            Target::Urls,
            Source::Body,
            "messages[].content",
            b"https://docs.rs/tokio".to_vec(),
        );
        let q = Field::new(Target::ArgNames, Source::Query, "limit", b"limit".to_vec());
        for field in [&role, &url, &q] {
            for _ in 0..2 {
                assert_eq!(lookup(&memo, field, &[HIT]), (vec![HIT], true));
            }
            assert_eq!(lookup(&memo, field, &[]), (vec![HIT], false));
        }
    }

    #[test]
    fn cookies_bodies_and_long_values_are_not_remembered() {
        let memo = FieldMemo::new(64);
        let cookie = Field::new(Target::Cookies, Source::Cookie, "s", b"x".to_vec());
        let body = Field::new(Target::Body, Source::Body, "", b"x".to_vec());
        let long = header("x-long", &"a".repeat(MAX_KEY_BYTES));
        let long_arg = Field::new(
            Target::Args,
            Source::Body,
            "q",
            "a".repeat(MAX_KEY_BYTES).into_bytes(),
        );
        for field in [&cookie, &body, &long, &long_arg] {
            for _ in 0..3 {
                assert!(lookup(&memo, field, &[]).1, "{:?}", field.target);
            }
        }
        assert!(memo.is_empty());
    }
}
