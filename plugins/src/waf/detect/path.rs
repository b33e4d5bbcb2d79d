//! Path traversal, read the way a file system path is read, whatever spelled it.
//!
//! The `decoded` form has resolved percent-escapes (nested), `%u`, HTML entities, full-width
//! forms and the over-long UTF-8 that decoders accept. What is left is lexed into path atoms:
//! a *dot* (`.`, `0x2e`, a broken UTF-8 sequence whose last byte says `.`), a *separator* (`/`,
//! `\`, `0x2f`, `0x5c`, and the broken sequences that say one), *junk* (bytes no decoder
//! agrees on: invalid UTF-8, an escape with no hex digits, private-use characters) and
//! everything else.
//!
//! A traversal step is a run of two or more dots (junk, `?` and `;` parameters may sit
//! among them, as filters and lenient servers let them) that stands as a whole path segment:
//! it starts the value or follows a separator, junk or a delimiter (`=`, `:`, a quote, white
//! space), and a separator, junk or the end follows it. One step is enough: `..` is never
//! a file name.

use super::Detection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Dot,
    Sep,
    Junk,
    /// `?` and `;`: what lenient servers let stand inside a dot run (`.?./`, `..;/`).
    Filler,
    /// A character that may come before a path: `=`, `:`, a quote, white space, `(`.
    Delimiter,
    Other,
}

/// The atom at `s[i..]` and its length.
fn atom(s: &[u8], i: usize) -> (Atom, usize) {
    let b = s[i];
    let rest = &s[i..];
    if rest.len() >= 4 && rest[0] == b'0' && rest[1] | 0x20 == b'x' {
        match (rest[2], rest[3] | 0x20) {
            (b'2', b'e') => return (Atom::Dot, 4),
            (b'2', b'f') | (b'5', b'c') => return (Atom::Sep, 4),
            _ => {}
        }
    }
    match b {
        b'.' => (Atom::Dot, 1),
        b'/' | b'\\' => (Atom::Sep, 1),
        b'?' | b';' => (Atom::Filler, 1),
        b'=' | b':' | b'\'' | b'"' | b'(' | b'|' | b',' | b'&' | b'<' | b'>' | b'@' => {
            (Atom::Delimiter, 1)
        }
        _ if b.is_ascii_whitespace() => (Atom::Delimiter, 1),
        b'%' => {
            // An escape the decoder left: it has no two hex digits (`%c1%pc`, `%bg%qf`).
            let bad = rest.get(1..3).map_or(rest.len() - 1, |_| 2);
            (Atom::Junk, 1 + bad)
        }
        0x80..=0xff => non_ascii(rest),
        _ => (Atom::Other, 1),
    }
}

/// A non-ASCII sequence: a letter of some script is `Other`; a private-use character or a
/// sequence that is not UTF-8 is junk, unless its last byte names a dot or a separator the
/// way a lenient decoder reads over-long forms (the low six bits).
fn non_ascii(rest: &[u8]) -> (Atom, usize) {
    let len = rest
        .iter()
        .skip(1)
        .take(5)
        .take_while(|b| **b & 0xc0 == 0x80)
        .count()
        + 1;
    let seq = &rest[..len];
    if let Ok(text) = std::str::from_utf8(seq) {
        let private = text
            .chars()
            .next()
            .is_some_and(|c| ('\u{e000}'..='\u{f8ff}').contains(&c));
        return (if private { Atom::Junk } else { Atom::Other }, len);
    }
    // Not UTF-8: only the first `valid_up_to` bytes (none, here) could be read.
    let last = seq[len - 1];
    let atom = if len > 1 {
        match last & 0x3f {
            0x2e => Atom::Dot,
            0x2f | 0x1c => Atom::Sep,
            _ => Atom::Junk,
        }
    } else {
        Atom::Junk
    };
    (atom, len)
}

fn lex(s: &[u8]) -> Vec<(Atom, usize, usize)> {
    let mut atoms = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let (a, len) = atom(s, i);
        atoms.push((a, i, len));
        i += len;
    }
    atoms
}

/// Finds a traversal step in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    // Every step has two dots, each a `.`, a `0x2e` or a broken non-ASCII sequence: most
    // values have no two `.` and nothing else that could be one.
    let plain_dots = memchr::memchr_iter(b'.', input).take(2).count();
    if plain_dots < 2
        && !input.iter().any(|&b| b >= 0x80)
        && !input
            .windows(4)
            .any(|w| w[0] == b'0' && w[1] | 0x20 == b'x' && w[2] == b'2' && w[3] | 0x20 == b'e')
    {
        return None;
    }
    let atoms = lex(input);
    let mut k = 0;
    while k < atoms.len() {
        if atoms[k].0 != Atom::Dot {
            k += 1;
            continue;
        }
        // The run of dots (and what may stand among them) starting at k.
        let mut end = k;
        let mut dots = 0;
        while let Some(&(a, _, _)) = atoms.get(end) {
            match a {
                Atom::Dot => dots += 1,
                Atom::Junk | Atom::Filler => {}
                _ => break,
            }
            end += 1;
        }
        let before = k.checked_sub(1).map(|p| atoms[p].0);
        let opens = matches!(
            before,
            None | Some(Atom::Sep | Atom::Junk | Atom::Delimiter | Atom::Filler)
        );
        // The run's last atom is junk or filler: it stands for the separator itself.
        let ends_in_junk = matches!(atoms[end - 1].0, Atom::Junk | Atom::Filler)
            && atoms.get(end).is_some_and(|a| a.0 == Atom::Other);
        let closes = match atoms.get(end) {
            None => matches!(before, Some(Atom::Sep)),
            Some(&(Atom::Sep, _, _)) => true,
            _ => ends_in_junk,
        };
        if opens && closes && dots >= 2 {
            let start = atoms[k].1;
            let stop = atoms.get(end).map_or(input.len(), |a| a.1 + a.2);
            return Some(Detection {
                at: start,
                len: stop - start,
                why: "a path segment of dots that climbs a directory",
            });
        }
        k = end.max(k + 1);
    }
    None
}

/// The atoms of `input`, for `rampart rules test`.
pub fn explain(input: &[u8]) -> String {
    lex(input)
        .iter()
        .map(|&(a, at, len)| match a {
            Atom::Other | Atom::Delimiter => {
                String::from_utf8_lossy(&input[at..at + len]).into_owned()
            }
            a => format!("[{a:?}]"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::decode::decoded;

    fn hit(raw: &str) -> bool {
        detect(&decoded(raw.as_bytes())).is_some()
    }

    #[test]
    fn traversal_in_every_spelling_is_found() {
        for attack in [
            "../../etc/passwd",
            "..\\..\\boot.ini",
            "/..",
            "images/../../../etc/hosts",
            "%2e%2e%2fetc%2fpasswd",
            "%252e%252e%252fetc",
            "..%c0%af..%c0%afetc",
            "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            "%uff0e%uff0e%u2215etc",
            "..%u2216..%u2216windows",
            "....//....//etc/passwd",
            "..;/..;/WEB-INF/web.xml",
            "0x2e0x2e0x2fetc",
            "..0x5c..0x5cboot.ini",
            "%%32%65%%32%65/etc/passwd",
            "%c0.%c0./%c0.%c0./etc/passwd",
            "..%c1%pc..%c1%pcetc",
            "..%bg%qf..%bg%qfetc",
            "%f8%80%80%80%ae%f8%80%80%80%ae/etc",
            "..%uEFC8..%uEFC8etc",
            ".?./.?./etc/passwd",
            "file=../config",
            "C:..\\..\\windows\\win.ini",
            "&#46;&#46;&#47;etc",
            "\\../\\../etc/passwd",
            "..%00/..%00/etc/passwd",
        ] {
            assert!(
                hit(attack),
                "missed {attack:?}: {}",
                explain(&decoded(attack.as_bytes()))
            );
        }
    }

    #[test]
    fn dots_in_prose_and_data_are_left_alone() {
        for text in [
            "wait... what?",
            "1..10",
            "see the docs...",
            "[...items]",
            "v1.2..v1.5",
            "hmm.../ okay",
            "and so on.. / or not",
            "…",
            "Ends with two dots..",
            "price 0x2e is hex",
            "emoji 😀..",
            "a.b.c",
        ] {
            assert!(
                !hit(text),
                "refused {text:?}: {}",
                explain(&decoded(text.as_bytes()))
            );
        }
    }

    #[test]
    fn hostile_input_is_bounded() {
        for s in [
            "..".repeat(20_000),
            "\u{c0}".repeat(20_000),
            "%".repeat(20_000),
            ".?".repeat(20_000),
        ] {
            let _ = detect(s.as_bytes());
        }
        let _ = detect(&[0xff; 30_000]);
    }
}
