//! Transformations, applied once per inspected field (never once per rule).
//!
//! Three forms of each value are matched against:
//! - `decoded`: percent-decoding (repeated, with `%uXXXX`), HTML entities, NUL bytes removed;
//! - `norm`: `decoded`, lowercased, runs of white space folded to one space;
//! - `cmdline`: `norm` with the characters shells ignore removed (`\ " ' ^`) and `,` read
//!   as a word separator, so that `c"a"t /etc/pa\sswd` reads `cat /etc/passwd`.

use std::borrow::Cow;

/// Decoding rounds for nested percent-encoding (`%2527` -> `%27` -> `'`).
const PERCENT_ROUNDS: usize = 3;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One round of percent-decoding; `plus_as_space` for form encoding. Invalid escapes stay.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Cow<'_, [u8]> {
    let unchanged = if plus_as_space {
        memchr::memchr2(b'%', b'+', input).is_none()
    } else {
        memchr::memchr(b'%', input).is_none()
    };
    if unchanged {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        // Runs go up to the next `%`; their `+` become spaces in place, which in prose
        // (a `+` between every two words) saves a copy per word.
        let run = memchr::memchr(b'%', &input[i..]).unwrap_or(input.len() - i);
        let start = out.len();
        out.extend_from_slice(&input[i..i + run]);
        if plus_as_space {
            for b in &mut out[start..] {
                if *b == b'+' {
                    *b = b' ';
                }
            }
        }
        i += run;
        let Some(&b) = input.get(i) else {
            break;
        };
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|&c| hex(c)),
                input.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            // %uXXXX (IIS-style Unicode escapes), kept only when it is ASCII.
            if matches!(input.get(i + 1), Some(b'u' | b'U')) && i + 5 < input.len() {
                let digits: Option<Vec<u8>> = input[i + 2..i + 6].iter().map(|&c| hex(c)).collect();
                if let Some(d) = digits {
                    let code = (u32::from(d[0]) << 12)
                        | (u32::from(d[1]) << 8)
                        | (u32::from(d[2]) << 4)
                        | u32::from(d[3]);
                    match char::from_u32(code) {
                        Some(_) if (0xff00..=0xff5e).contains(&code) => {
                            // Full-width forms map onto ASCII, as IIS does.
                            out.push((code - 0xff00 + 0x20) as u8);
                        }
                        Some(c) => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        None => out.extend_from_slice(&input[i..i + 6]),
                    }
                    i += 6;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether one more round of [`percent_decode`] would change anything.
pub fn has_escape(v: &[u8]) -> bool {
    // Only the bytes after each `%` matter; most values have none, found at memchr speed.
    memchr::memchr_iter(b'%', v).any(|at| {
        let rest = &v[at + 1..];
        let hex_at = |i: usize| rest.get(i).is_some_and(|c| hex(*c).is_some());
        (hex_at(0) && hex_at(1))
            || (matches!(rest.first(), Some(b'u' | b'U')) && (1..5).all(hex_at))
    })
}

const NAMED_ENTITIES: &[(&str, &str)] = &[
    ("lt", "<"),
    ("gt", ">"),
    ("amp", "&"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", " "),
    ("colon", ":"),
    ("tab", "\t"),
    ("newline", "\n"),
    ("lpar", "("),
    ("rpar", ")"),
    ("sol", "/"),
    ("bsol", "\\"),
    ("semi", ";"),
    ("comma", ","),
    ("period", "."),
    ("excl", "!"),
    ("num", "#"),
    ("dollar", "$"),
    ("percnt", "%"),
    ("equals", "="),
    ("lsqb", "["),
    ("rsqb", "]"),
    ("lcub", "{"),
    ("rcub", "}"),
    ("grave", "`"),
    ("quest", "?"),
    ("plus", "+"),
    ("ast", "*"),
    ("vert", "|"),
    ("hyphen", "-"),
    ("lowbar", "_"),
    ("lbrace", "{"),
    ("rbrace", "}"),
];

/// HTML/XML character references: `&lt;`, `&#60;`, `&#x3c;`, with or without the `;` for
/// numeric ones (browsers accept both).
pub fn html_entity_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.contains(&b'&') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    'outer: while i < input.len() {
        if input[i] == b'&' {
            let rest = &input[i + 1..];
            if rest.first() == Some(&b'#') {
                let (radix, start) = if matches!(rest.get(1), Some(b'x' | b'X')) {
                    (16, 2)
                } else {
                    (10, 1)
                };
                let digits = rest[start..]
                    .iter()
                    .take_while(|c| {
                        if radix == 16 {
                            c.is_ascii_hexdigit()
                        } else {
                            c.is_ascii_digit()
                        }
                    })
                    .count();
                if digits > 0 {
                    // Leading zeros are padding (`&#0000060;`), never part of the value.
                    let text = std::str::from_utf8(&rest[start..start + digits]).unwrap_or("");
                    let text = text.trim_start_matches('0');
                    let text = if text.is_empty() { "0" } else { text };
                    if let Some(c) = u32::from_str_radix(text, radix)
                        .ok()
                        .and_then(char::from_u32)
                    {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        let mut used = 1 + start + digits;
                        if rest.get(start + digits) == Some(&b';') {
                            used += 1;
                        }
                        i += used;
                        continue;
                    }
                }
            } else {
                for (name, value) in NAMED_ENTITIES {
                    let n = name.len();
                    if rest.len() > n
                        && rest[..n].eq_ignore_ascii_case(name.as_bytes())
                        && rest[n] == b';'
                    {
                        out.extend_from_slice(value.as_bytes());
                        i += n + 2;
                        continue 'outer;
                    }
                }
            }
        }
        out.push(input[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// The fewest base64 characters (padding aside) read: 7 hold 5 bytes, `$(id)`. Shorter
/// values hold nothing an attack needs, and a short word must also mix cases or symbols
/// and decode to text to be read at all.
const BASE64_MIN: usize = 7;
/// The longest value read as base64 (a larger one is a file, not a hidden parameter).
const BASE64_MAX: usize = 64 << 10;

/// `value` decoded, if it is base64 (standard or URL-safe, padded or not) of text: valid
/// UTF-8, almost all of it printable. Attackers encode payloads so that signatures miss them;
/// applications decode such parameters and use the text. Random bytes (keys, nonces, ids,
/// audio) do not decode to text, and are left alone after a look at their first bytes.
pub fn base64_text(value: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let v = value.trim_ascii();
    let body = v
        .strip_suffix(b"==")
        .or_else(|| v.strip_suffix(b"="))
        .unwrap_or(v);
    if !(BASE64_MIN..=BASE64_MAX).contains(&body.len()) || body.len() % 4 == 1 {
        return None;
    }
    let standard = body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'));
    let url_safe = body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    // A word, a number or a hex digest is base64's alphabet but not base64 of anything.
    let mixed = body.iter().any(u8::is_ascii_uppercase) && body.iter().any(u8::is_ascii_lowercase)
        || body.iter().any(|b| !b.is_ascii_alphanumeric());
    if !(standard || url_safe) || !mixed {
        return None;
    }
    let engine = if standard {
        STANDARD_NO_PAD
    } else {
        URL_SAFE_NO_PAD
    };
    let text_like = |bytes: &[u8]| {
        let printable = bytes
            .iter()
            .filter(|&&b| b >= 0x20 && b != 0x7f || matches!(b, b'\t' | b'\r' | b'\n'))
            .count();
        printable * 20 >= bytes.len() * 19
    };
    // The first 64 characters (48 bytes) say whether the rest is worth decoding (a value
    // that short is decoded once, whole).
    let head = &body[..body.len().min(64) / 4 * 4];
    if !head.is_empty()
        && head.len() < body.len()
        && !engine.decode(head).is_ok_and(|h| text_like(&h))
    {
        return None;
    }
    let decoded = engine.decode(body).ok()?;
    (std::str::from_utf8(&decoded).is_ok() && text_like(&decoded)).then_some(decoded)
}

/// Whether [`decoded`] gives `input` back unchanged, found without building it: ASCII with
/// no `%` (percent escapes), `&` (entities), `\\` (JavaScript escapes) or NUL. Most fields
/// (words, ids, numbers, URLs without escapes) are their own decoded form.
pub fn decodes_to_itself(input: &[u8]) -> bool {
    !input
        .iter()
        .any(|&b| b >= 0x80 || matches!(b, b'%' | b'&' | b'\\' | 0))
}

/// Percent-decoding until stable (bounded), then entities, then NUL bytes removed.
pub fn decoded(input: &[u8]) -> Vec<u8> {
    let mut v: Cow<'_, [u8]> = Cow::Borrowed(input);
    for _ in 0..PERCENT_ROUNDS {
        if !has_escape(&v) {
            break;
        }
        v = Cow::Owned(percent_decode(&v, false).into_owned());
    }
    let mut v = html_entity_decode(&v).into_owned();
    // Entities can hide escapes and the reverse; one more round of each catches both.
    if has_escape(&v) {
        v = percent_decode(&v, false).into_owned();
    }
    if memchr::memchr(0, &v).is_some() {
        v.retain(|&b| b != 0);
    }
    fold_fullwidth(fold_lookalikes(js_unescape(v)))
}

/// Over-long UTF-8 encodings of ASCII (`%c0%ae` is `.`, `%c0%af` and `%e0%80%af` are `/`,
/// `%c1%9c` is `\\`), which lenient decoders (old IIS, some Java and PHP stacks) read as the
/// character, and the Unicode slashes that path code can treat as separators (U+2215 DIVISION
/// SLASH, U+2216 SET MINUS) and a dot leader (U+2024): read as the ASCII they stand for.
fn fold_lookalikes(v: Vec<u8>) -> Vec<u8> {
    if !v
        .iter()
        .any(|&b| matches!(b, 0xc0 | 0xc1 | 0xe0 | 0xe2 | 0xf0))
    {
        return v;
    }
    let cont = |b: Option<&u8>| b.is_some_and(|&b| b & 0xc0 == 0x80);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        let (len, code) = match b {
            0xc0 | 0xc1 if cont(v.get(i + 1)) => {
                (2, u32::from(b & 0x1f) << 6 | u32::from(v[i + 1] & 0x3f))
            }
            0xe0 if matches!(v.get(i + 1), Some(0x80..=0x9f)) && cont(v.get(i + 2)) => (
                3,
                u32::from(v[i + 1] & 0x3f) << 6 | u32::from(v[i + 2] & 0x3f),
            ),
            0xf0 if matches!(v.get(i + 1), Some(0x80..=0x8f))
                && cont(v.get(i + 2))
                && cont(v.get(i + 3)) =>
            {
                (
                    4,
                    u32::from(v[i + 1] & 0x0f) << 12
                        | u32::from(v[i + 2] & 0x3f) << 6
                        | u32::from(v[i + 3] & 0x3f),
                )
            }
            0xe2 => match (v.get(i + 1), v.get(i + 2)) {
                (Some(0x88), Some(0x95)) => (3, u32::from(b'/')),
                (Some(0x88), Some(0x96)) => (3, u32::from(b'\\')),
                (Some(0x80), Some(0xa4)) => (3, u32::from(b'.')),
                _ => (0, 0),
            },
            _ => (0, 0),
        };
        if len > 0 && code < 0x80 {
            out.push(code as u8);
            i += len;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// JavaScript and JSON escapes of ASCII characters (`\u006f`, `\x6f`), which browsers and
/// Node.js read as the character itself.
fn js_unescape(v: Vec<u8>) -> Vec<u8> {
    if !memchr::memchr_iter(b'\\', &v).any(|at| matches!(v.get(at + 1), Some(b'u' | b'x'))) {
        return v;
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' {
            let digits = match v.get(i + 1) {
                Some(b'u') => 4,
                Some(b'x') => 2,
                _ => 0,
            };
            if digits > 0 && i + 1 + digits < v.len() {
                let hexes: Option<Vec<u8>> =
                    v[i + 2..i + 2 + digits].iter().map(|&c| hex(c)).collect();
                if let Some(h) = hexes {
                    let code = h.iter().fold(0u32, |acc, d| acc << 4 | u32::from(*d));
                    if code > 0 && code < 0x80 {
                        out.push(code as u8);
                        i += 2 + digits;
                        continue;
                    }
                }
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Full-width forms (U+FF01..U+FF5E, `＜script＞`) read as the ASCII they imitate.
fn fold_fullwidth(v: Vec<u8>) -> Vec<u8> {
    if !memchr::memchr_iter(0xef, &v).any(|at| matches!(v.get(at + 1), Some(0xbc | 0xbd))) {
        return v;
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == 0xef && i + 2 < v.len() {
            let code = match (v[i + 1], v[i + 2]) {
                (0xbc, c @ 0x81..=0xbf) => Some(c - 0x81 + 0x21),
                (0xbd, c @ 0x80..=0x9e) => Some(c - 0x80 + 0x60),
                _ => None,
            };
            if let Some(ascii) = code {
                out.push(ascii);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Whether [`norm`] gives `decoded` back unchanged: no uppercase ASCII, and no white
/// space but single spaces.
pub fn norm_is_itself(decoded: &[u8]) -> bool {
    !decoded
        .iter()
        .any(|&b| b.is_ascii_uppercase() || matches!(b, b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        && memchr::memmem::find(decoded, b"  ").is_none()
}

/// Lowercase and fold white space (including vertical tab and form feed) into one space.
pub fn norm(decoded: &[u8]) -> Vec<u8> {
    let is_space = |b: u8| b.is_ascii_whitespace() || b == 0x0b;
    // Most text has only single spaces: lowercasing the whole of it at once is all it needs,
    // and that is found with vectorised searches.
    let single_spaces = memchr::memchr3(b'\t', b'\n', b'\r', decoded).is_none()
        && memchr::memchr2(0x0b, 0x0c, decoded).is_none()
        && memchr::memmem::find(decoded, b"  ").is_none();
    if single_spaces {
        return decoded.to_ascii_lowercase();
    }
    let mut out = Vec::with_capacity(decoded.len());
    let mut in_space = false;
    for &b in decoded {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    out
}

/// Whether `cmdline` must look at byte `c` (which follows `prev`) rather than copy it: the
/// bytes a shell reads specially, and a space after a space. Plain comparisons rather than a
/// table, so that the compiler can test many bytes at once.
#[inline(always)]
fn cmdline_stops(c: u8, prev: u8) -> bool {
    (c == b'$')
        | (c == b'\\')
        | (c == b'"')
        | (c == b'\'')
        | (c == b'^')
        | (c == b',')
        | (c == b'(')
        | ((c == b' ') & (prev == b' '))
}

/// How many bytes at the start of `s` (which follows `prev`) `cmdline` copies as they are.
fn cmdline_plain_len(s: &[u8], prev: u8) -> usize {
    const LANES: usize = 16;
    match s.first() {
        None => return 0,
        Some(&c) if cmdline_stops(c, prev) => return 0,
        Some(_) => {}
    }
    let mut k = 1;
    while k + LANES <= s.len() {
        let (now, before) = (&s[k..k + LANES], &s[k - 1..k - 1 + LANES]);
        let stop = now
            .iter()
            .zip(before)
            .fold(false, |any, (&c, &p)| any | cmdline_stops(c, p));
        if stop {
            break;
        }
        k += LANES;
    }
    while k < s.len() && !cmdline_stops(s[k], s[k - 1]) {
        k += 1;
    }
    k
}

/// The command line as a shell would read the words: quoting and escapes removed, and
/// variable expansions inside a word (`c${x}url`, `sh$XX`) dropped, as an unset variable is.
/// Whether [`cmdline`] gives `norm` back unchanged: no byte it reads specially.
pub fn cmdline_is_itself(norm: &[u8]) -> bool {
    cmdline_plain_len(norm, 0) == norm.len()
}

pub fn cmdline(norm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(norm.len());
    let mut i = 0;
    while i < norm.len() {
        // Bytes a shell reads as themselves go over in runs.
        let run = cmdline_plain_len(&norm[i..], out.last().copied().unwrap_or(0));
        out.extend_from_slice(&norm[i..i + run]);
        i += run;
        let Some(&b) = norm.get(i) else {
            break;
        };
        i += 1;
        if b == b'$' && i < norm.len() {
            let inside_word = out.last().is_some_and(|c: &u8| c.is_ascii_alphanumeric());
            let var_len = if norm[i] == b'{' {
                norm[i..]
                    .iter()
                    .position(|&c| c == b'}')
                    .filter(|&e| {
                        norm[i + 1..i + e]
                            .iter()
                            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    })
                    .map(|e| e + 1)
            } else {
                let n = norm[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                (n > 0 && !norm[i].is_ascii_digit()).then_some(n)
            };
            if let (true, Some(n)) = (inside_word, var_len) {
                i += n;
                continue;
            }
        }
        match b {
            b'\\' | b'"' | b'\'' | b'^' => {}
            // A comma separates words as a space does (`{cat,/etc/passwd}`).
            b',' | b' ' => {
                if out.last() != Some(&b' ') {
                    out.push(b' ');
                }
            }
            b'(' => {
                // `system (` and `system(` meet.
                if out.last() == Some(&b' ') {
                    out.pop();
                }
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod cmdline_tests {
    use super::*;

    /// `cmdline` as it was first written, a byte at a time: the runs must not change what
    /// it reads.
    fn cmdline_bytewise(norm: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < norm.len() {
            let b = norm[i];
            i += 1;
            if b == b'$' && i < norm.len() && out.last().is_some_and(u8::is_ascii_alphanumeric) {
                let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
                let skip = if norm[i] == b'{' {
                    let close = norm[i..].iter().position(|&c| c == b'}');
                    close
                        .filter(|&e| norm[i + 1..i + e].iter().all(word))
                        .map(|e| e + 1)
                } else {
                    let n = norm[i..].iter().take_while(|c| word(c)).count();
                    (n > 0 && !norm[i].is_ascii_digit()).then_some(n)
                };
                if let Some(n) = skip {
                    i += n;
                    continue;
                }
            }
            match b {
                b'\\' | b'"' | b'\'' | b'^' => {}
                b',' | b' ' if out.last() == Some(&b' ') => {}
                b',' | b' ' => out.push(b' '),
                b'(' => {
                    if out.last() == Some(&b' ') {
                        out.pop();
                    }
                    out.push(b'(');
                }
                _ => out.push(b),
            }
        }
        out
    }

    #[test]
    fn runs_read_like_a_byte_at_a_time() {
        // Inputs of every length up to 80 from an alphabet dense in the bytes that stop a
        // run, so that runs end in every lane of a 16-byte block.
        let alphabet = b"ab1_ ,$'\"\\^({}x  ";
        let mut rng = crate::test_rng::Xorshift(0x9e37_79b9_7f4a_7c15);
        for len in 0..80 {
            for _ in 0..200 {
                let text: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                    .collect();
                assert_eq!(
                    cmdline(&text),
                    cmdline_bytewise(&text),
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
        let prose = b"operators reload rules while traffic flows, and the metrics show why. ";
        let long: Vec<u8> = prose.iter().copied().cycle().take(4096).collect();
        assert_eq!(cmdline(&long), cmdline_bytewise(&long));
    }

    #[test]
    fn forms_said_to_be_unchanged_are() {
        // Short texts from an alphabet holding every byte some transform reads specially,
        // and plain ones: each predicate must agree with the transform it stands for.
        let alphabet = b"aZ9_ -./:%&\\\0\t\n\r\x0b\x0c$'\"^,(u+x#;\xc0\xef\xbc\x81";
        let mut rng = crate::test_rng::Xorshift(0x2545_f491_4f6c_dd1d);
        let mut unchanged = [0; 3];
        for _ in 0..200_000 {
            let len = rng.below(12) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let shown = String::from_utf8_lossy(&text);
            if decodes_to_itself(&text) {
                assert_eq!(decoded(&text), text, "decoded {shown:?}");
                unchanged[0] += 1;
            }
            if norm_is_itself(&text) {
                assert_eq!(norm(&text), text, "norm {shown:?}");
                unchanged[1] += 1;
            }
            if cmdline_is_itself(&text) {
                assert_eq!(cmdline(&text), text, "cmdline {shown:?}");
                unchanged[2] += 1;
            }
        }
        // Each predicate said yes often enough for the check to mean something.
        assert!(unchanged.iter().all(|&n| n > 1000), "{unchanged:?}");
        assert!(!decodes_to_itself(b"%41") && !norm_is_itself(b"A") && !cmdline_is_itself(b"a$b"));
    }

    #[test]
    fn empty_variables_inside_words_are_dropped() {
        assert_eq!(cmdline(&norm(b"c${KK}url x")), b"curl x");
        assert_eq!(cmdline(&norm(b"sh$XX -c id")), b"sh -c id");
        assert_eq!(cmdline(&norm(b"echo $HOME")), b"echo $home");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str, url_safe: bool) -> String {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        if url_safe {
            URL_SAFE_NO_PAD.encode(text)
        } else {
            STANDARD.encode(text)
        }
    }

    #[test]
    fn base64_of_text_is_read_and_everything_else_left_alone() {
        for text in [
            ";cat /etc/passwd",
            "' OR 1=1-- ",
            "<script>alert(1)</script>",
            "while(true);\n",
        ] {
            for url_safe in [false, true] {
                let encoded = b64(text, url_safe);
                assert_eq!(
                    base64_text(encoded.as_bytes()).as_deref(),
                    Some(text.as_bytes()),
                    "{encoded}"
                );
            }
        }
        let random: Vec<u8> = (0u32..48)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let key = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&random)
        };
        for value in [
            key.as_str(),
            "Administrator",
            "550e8400-e29b-41d4-a716-446655440000",
            "d41d8cd98f00b204e9800998ecf8427e",
            "12345678901234567890",
            "aGkh",
            "not base64 at all!",
            &"QUFB".repeat(20_000),
        ] {
            assert!(
                base64_text(value.as_bytes()).is_none(),
                "read {:.40}",
                value
            );
        }
    }

    fn s(v: &[u8]) -> String {
        String::from_utf8_lossy(v).into_owned()
    }

    #[test]
    fn nested_percent_and_unicode_escapes() {
        assert_eq!(s(&decoded(b"%2527%20or%201")), "' or 1");
        assert_eq!(s(&decoded(b"%u003cscript%u003e")), "<script>");
        assert_eq!(s(&decoded(b"%uff1cscript%uff1e")), "<script>");
        // Over-long UTF-8 and Unicode slashes, as lenient path decoders read them.
        assert_eq!(s(&decoded(b"%c0%ae%c0%ae%c0%afetc")), "../etc");
        assert_eq!(
            s(&decoded(b"%e0%80%ae%e0%80%ae%c1%9cboot.ini")),
            "..\\boot.ini"
        );
        assert_eq!(s(&decoded(b"%f0%80%80%ae.%u2215x%u2216y")), "../x\\y");
        assert_eq!(s(&decoded(b"%c0%bcscript%c0%be")), "<script>");
        // Real UTF-8 stays as it is: an e-acute, a curly quote, an em dash.
        assert_eq!(
            s(&decoded("caf\u{e9} \u{201c}x\u{201d} \u{2014}".as_bytes())),
            "caf\u{e9} \u{201c}x\u{201d} \u{2014}"
        );
        assert_eq!(s(&decoded(b"100%")), "100%");
    }

    #[test]
    fn entities_with_and_without_semicolons() {
        assert_eq!(s(&decoded(b"&lt;img src=x&gt;")), "<img src=x>");
        assert_eq!(s(&decoded(b"ja&#x09;vascript&colon;")), "ja\tvascript:");
        assert_eq!(s(&decoded(b"&#60&#62")), "<>");
        assert_eq!(s(&decoded(b"ja%26tab%3Bvascript")), "ja\tvascript");
        assert_eq!(s(&decoded(b"fish & chips")), "fish & chips");
    }

    #[test]
    fn fullwidth_forms_fold_to_ascii() {
        assert_eq!(s(&decoded("＜script＞".as_bytes())), "<script>");
        assert_eq!(s(&decoded(b"%ef%bc%9cscript%ef%bc%9e")), "<script>");
    }

    #[test]
    fn javascript_escapes_of_ascii() {
        assert_eq!(s(&decoded(b"c\\u006fnsole")), "console");
        assert_eq!(s(&decoded(b"\\x3cscript")), "<script");
        assert_eq!(s(&decoded(b"\\xbc kept")), "\\xbc kept");
    }

    #[test]
    fn nul_bytes_are_removed() {
        assert_eq!(s(&decoded(b"a%00b\0c")), "abc");
    }

    #[test]
    fn norm_folds_case_and_space() {
        assert_eq!(s(&norm(b"UNION\t\n  SELECT")), "union select");
        // Single spaces only (the quick path) and a lone other space at either end.
        assert_eq!(s(&norm(b"Hello World FROM x")), "hello world from x");
        assert_eq!(s(&norm(b"A  B")), "a b");
        assert_eq!(s(&norm(b" A\x0bB\t")), " a b ");
        assert_eq!(s(&norm(b"A B ")), "a b ");
        assert_eq!(s(&norm(b"")), "");
    }

    #[test]
    fn cmdline_reads_like_a_shell() {
        assert_eq!(
            s(&cmdline(&norm(b"c\"a\"t /etc/pa\\sswd"))),
            "cat /etc/passwd"
        );
        assert_eq!(s(&cmdline(&norm(b"w'h'o^ami;id"))), "whoami;id");
        assert_eq!(s(&cmdline(&norm(b"system ('id')"))), "system(id)");
        assert_eq!(s(&cmdline(&norm(b";'rmt' --version"))), ";rmt --version");
        // Special bytes at the very start and end, and runs between them.
        assert_eq!(s(&cmdline(b"'cat'")), "cat");
        assert_eq!(s(&cmdline(b"a,b,,c ,d$")), "a b c d$");
        assert_eq!(s(&cmdline(b"ca${x}t  /etc/passwd (")), "cat /etc/passwd(");
        assert_eq!(s(&cmdline(b"plain text")), "plain text");
    }

    #[test]
    fn form_plus_is_space_only_when_asked() {
        assert_eq!(&*percent_decode(b"a+b%21", true), b"a b!");
        // Escapes at either end, invalid ones kept, and plain runs between.
        assert_eq!(&*percent_decode(b"%41bc+%zz+de%4", true), b"Abc %zz de%4");
        assert_eq!(&*percent_decode(b"%41bc+%zz+de%4", false), b"Abc+%zz+de%4");
        assert!(matches!(percent_decode(b"plain", true), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode(b"a+b", false), b"a+b");
        // An escaped plus is a plus, after the spaces of the run before it are made.
        assert_eq!(&*percent_decode(b"a+%2B+b%2b", true), b"a + b+");
    }
}
