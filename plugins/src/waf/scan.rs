//! One pass over a long JSON string: where it ends, where its colons are, and whether an
//! escape in it could spell a URL.
//!
//! Prose (a prompt, a tool's result holding source code) is most of an agent's request, and
//! of it the WAF wants only the URLs. Found one search at a time, that took four passes,
//! each stopping often: for the closing quote (source code has an escaped `\"` every few
//! lines, each a stop), for the colons a URL's mark holds, and for `\u` and `\/`, the two
//! escapes that can spell a mark. Here each 64-byte block is compared with the bytes that
//! matter (quotes, backslashes, colons, and the `u` and `/` an escape spells with) at once,
//! and the answers come as bit masks (bit `i` for the block's byte `i`): a block costs the
//! same few dozen instructions whatever it holds, and a colon found costs a bit's clearing,
//! not a search's restart.

/// What [`scan_string`] found in a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedString {
    /// The length of the string's text: up to its closing quote, or to the end of the input
    /// if it has none.
    pub len: usize,
    /// Whether the closing quote was found.
    pub closed: bool,
    /// Whether the text holds a `\u` or `\/` escape: only these spell a URL's marks (`\/\/`,
    /// `\u003a`), so only a text holding one must be decoded before it is searched.
    pub spells: bool,
}

const BLOCK: usize = 64;

/// Reads the JSON string whose text begins `s` (just past its opening quote) up to its
/// closing quote, the first one no escape takes. `colons` gets the offset of every colon
/// in the text, in order.
pub fn scan_string(s: &[u8], colons: &mut Vec<usize>) -> ScannedString {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2, as just asked.
        return unsafe { scan_avx2(s, colons) };
    }
    scan(s, colons, Marks::of)
}

/// [`scan`] with AVX2's 32-byte compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(s: &[u8], colons: &mut Vec<usize>) -> ScannedString {
    scan(s, colons, |block| Marks::of_avx2(block))
}

/// [`scan_string`], with `marks_of` to find a block's marks.
#[inline(always)]
fn scan(
    s: &[u8],
    colons: &mut Vec<usize>,
    marks_of: impl Fn(&[u8; BLOCK]) -> Marks,
) -> ScannedString {
    colons.clear();
    // Whether the first byte of the next block is taken by an escape begun in this one.
    let mut carried = false;
    let mut spells = false;
    let mut pad = [0u8; BLOCK];
    let mut at = 0;
    while at < s.len() {
        let block = block_at(s, at, &mut pad);
        let marks = marks_of(block);
        let escaped = escaped_bytes(marks.backslashes, &mut carried);
        let quotes = marks.quotes & !escaped;
        // The block's bytes that are in the text: those before the closing quote, if the
        // block has it. (Padding past the input's end holds none of the marks.)
        let within = match quotes {
            0 => u64::MAX,
            q => (1u64 << q.trailing_zeros()) - 1,
        };
        let mut found = marks.colons & within;
        while found != 0 {
            colons.push(at + found.trailing_zeros() as usize);
            found &= found - 1;
        }
        spells |= (escaped & within & marks.spellers) != 0;
        if quotes != 0 {
            return ScannedString {
                len: at + quotes.trailing_zeros() as usize,
                closed: true,
                spells,
            };
        }
        at += BLOCK;
    }
    ScannedString {
        len: s.len(),
        closed: false,
        spells,
    }
}

/// The 64 bytes of `s` from `at`, or what is left of them followed by zeros.
fn block_at<'a>(s: &'a [u8], at: usize, pad: &'a mut [u8; BLOCK]) -> &'a [u8; BLOCK] {
    if let Some(Ok(block)) = s.get(at..at + BLOCK).map(<&[u8; BLOCK]>::try_from) {
        return block;
    }
    let rest = &s[at.min(s.len())..];
    pad.fill(0);
    pad[..rest.len()].copy_from_slice(rest);
    pad
}

/// The bytes of a block that an escape takes (the quote of `\"`, the `u` of `\u`; of the
/// backslashes an escape takes, only a first byte taken from the block before is marked).
/// `carried` says whether an escape begun in the block before takes this block's first
/// byte, and is set to whether one begun here takes the next block's first.
///
/// A run of backslashes is read in pairs from its start: `\\` is a backslash, and only a
/// run of odd length escapes the byte after it. Its length is odd when its start and end
/// (the byte after it) differ in parity. So the runs are split by the parity of their start,
/// and adding each run's start bit to the mask of backslashes carries it through the run
/// to the run's end: one addition finds every run's end, whatever the runs' lengths.
fn escaped_bytes(backslashes: u64, carried: &mut bool) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    // A first byte taken by the escape before is no run's start, even if a backslash.
    let taken = u64::from(*carried);
    let backslashes = backslashes & !taken;
    let starts = backslashes & !(backslashes << 1);
    let (from_even, _) = backslashes.overflowing_add(starts & EVEN);
    let (from_odd, past_block) = backslashes.overflowing_add(starts & !EVEN);
    // A run that runs off the block's end ends at 64, an even offset: from an odd start it
    // takes the next block's first byte, from an even one it does not.
    *carried = past_block;
    let ends_even_start = from_even & !backslashes & !EVEN;
    let ends_odd_start = from_odd & !backslashes & EVEN;
    taken | ends_even_start | ends_odd_start
}

/// Where a block's quotes, backslashes and colons are, and its `u`s and slashes (which
/// spell when escaped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Marks {
    quotes: u64,
    backslashes: u64,
    colons: u64,
    spellers: u64,
}

impl Marks {
    /// Sixteen bytes compared at a time (SSE2, which every x86-64 has).
    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; BLOCK]) -> Marks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut marks = Marks::default();
        for (k, lane) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of every x86-64 target, so these instructions exist; the
            // load reads `lane`'s 16 bytes, all of them in `block`, and needs no alignment.
            let [quotes, backslashes, colons, us, slashes] = unsafe {
                let bytes = _mm_loadu_si128(lane.as_ptr().cast::<__m128i>());
                [b'"', b'\\', b':', b'u', b'/']
                    .map(|mark| _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(mark as i8))))
            };
            // One bit a byte, in the low 16 bits of each.
            let bits = |hits: i32| u64::from(hits as u16) << (16 * k);
            marks.quotes |= bits(quotes);
            marks.backslashes |= bits(backslashes);
            marks.colons |= bits(colons);
            marks.spellers |= bits(us | slashes);
        }
        marks
    }

    /// Thirty-two bytes compared at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn of_avx2(block: &[u8; BLOCK]) -> Marks {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
        };
        let mut marks = Marks::default();
        for (k, lane) in block.chunks_exact(32).enumerate() {
            // SAFETY: the load reads `lane`'s 32 bytes, all of them in `block`, and needs
            // no alignment.
            let bytes = unsafe { _mm256_loadu_si256(lane.as_ptr().cast::<__m256i>()) };
            let bits = |mark: u8| {
                let hits =
                    _mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(mark as i8)));
                // One bit a byte.
                u64::from(hits as u32) << (32 * k)
            };
            marks.quotes |= bits(b'"');
            marks.backslashes |= bits(b'\\');
            marks.colons |= bits(b':');
            marks.spellers |= bits(b'u') | bits(b'/');
        }
        marks
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; BLOCK]) -> Marks {
        Marks::byte_by_byte(block)
    }

    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn byte_by_byte(block: &[u8; BLOCK]) -> Marks {
        let mut marks = Marks::default();
        for (i, &b) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match b {
                b'"' => marks.quotes |= bit,
                b'\\' => marks.backslashes |= bit,
                b':' => marks.colons |= bit,
                b'u' | b'/' => marks.spellers |= bit,
                _ => {}
            }
        }
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Scanner = fn(&[u8], &mut Vec<usize>) -> ScannedString;

    /// The same reading, one byte at a time, as JSON's grammar says it.
    fn byte_by_byte(s: &[u8]) -> (ScannedString, Vec<usize>) {
        let (mut colons, mut spells, mut i) = (Vec::new(), false, 0);
        while i < s.len() {
            match s[i] {
                b'"' => {
                    let scanned = ScannedString {
                        len: i,
                        closed: true,
                        spells,
                    };
                    return (scanned, colons);
                }
                b'\\' => {
                    spells |= matches!(s.get(i + 1), Some(b'u' | b'/'));
                    // The escaped byte is never a colon in JSON (`\:` is no escape), but
                    // the scan is held to report every colon in the text.
                    if s.get(i + 1) == Some(&b':') {
                        colons.push(i + 1);
                    }
                    i += 2;
                    continue;
                }
                b':' => colons.push(i),
                _ => {}
            }
            i += 1;
        }
        let scanned = ScannedString {
            len: s.len(),
            closed: false,
            spells,
        };
        (scanned, colons)
    }

    #[test]
    fn agrees_with_a_byte_by_byte_reading_on_drawn_strings() {
        // Few bytes, most of them marks, so that runs of backslashes, escaped quotes and
        // escapes across a block's edge all come often; lengths across several blocks.
        const BYTES: &[u8] = b"\"\\\\\\::u/ax\n";
        let mut rng = crate::test_rng::Xorshift(0x51ab_c0de_77e1_0f3b);
        let mut colons = Vec::new();
        let (mut closed, mut spelled) = (0, 0);
        for _ in 0..20_000 {
            let len = rng.below(300) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| BYTES[rng.below(BYTES.len() as u64) as usize])
                .collect();
            // Also read from a little way in, so that blocks fall elsewhere.
            let from = rng.below(3) as usize;
            let s = &s[from.min(s.len())..];
            let (want, want_colons) = byte_by_byte(s);
            // The CPU's best, and the marks every CPU of its kind has.
            let scanners: [Scanner; 2] = [scan_string, |s, colons| scan(s, colons, Marks::of)];
            for scanner in scanners {
                let scanned = scanner(s, &mut colons);
                assert_eq!(scanned, want, "{:?}", String::from_utf8_lossy(s));
                assert_eq!(colons, want_colons, "{:?}", String::from_utf8_lossy(s));
            }
            closed += usize::from(want.closed);
            spelled += usize::from(want.spells);
        }
        assert!(closed > 1_000 && spelled > 1_000, "{closed} {spelled}");
    }

    #[test]
    fn long_runs_of_plain_text_and_escapes_across_blocks() {
        let mut colons = Vec::new();
        // A backslash ending a block escapes the quote that begins the next (at 128): the
        // quote at 130 closes.
        let mut s = vec![b'a'; 127];
        s.extend_from_slice(b"\\\"x\"");
        let scanned = scan_string(&s, &mut colons);
        assert_eq!((scanned.len, scanned.closed), (130, true));
        // An even run of backslashes ending a block leaves the next block's quote free.
        let mut s = vec![b'a'; 62];
        s.extend_from_slice(b"\\\\\"");
        assert_eq!(scan_string(&s, &mut colons).len, 64);
        // A `\u` past the closing quote is not the string's.
        let scanned = scan_string(b"http://x\" \\u0041", &mut colons);
        assert_eq!((scanned.len, scanned.spells), (8, false));
        assert_eq!(colons, [4]);
        // A text that never closes is read to the end.
        let scanned = scan_string(&[b'x'; 200], &mut colons);
        assert_eq!((scanned.len, scanned.closed), (200, false));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_marks_match_byte_marks() {
        let mut rng = crate::test_rng::Xorshift(0x0ddb_a11c_afe5_eed5);
        for _ in 0..10_000 {
            let mut block = [0u8; BLOCK];
            for b in block.iter_mut() {
                *b = match rng.below(5) {
                    0 => b'"',
                    1 => b'\\',
                    2 => b':',
                    _ => rng.below(256) as u8,
                };
            }
            let want = Marks::byte_by_byte(&block);
            assert_eq!(Marks::of(&block), want);
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: this CPU has AVX2, as just asked.
                assert_eq!(unsafe { Marks::of_avx2(&block) }, want);
            }
        }
    }
}
