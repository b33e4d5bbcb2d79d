//! LDAP filter injection (RFC 4515): a value that closes the application's filter item and
//! opens filter syntax of its own.
//!
//! A filter is `(attr op value)` with `op` one of `=`, `~=`, `>=`, `<=`, or a combination
//! `(&...)`, `(|...)`, `(!...)`. Inside the application's `(uid=<value>)`, an injection
//! closes the item with `)` and then opens a component: `*)(uid=*))(|(uid=*`,
//! `admin)(&(objectClass=*)`, `x)(!(cn=x))`. A value that is itself a whole filter with a
//! combination (`(|(uid=*)(cn=*))`) counts too. Parentheses in prose are followed by words,
//! not by `attr=`.

use super::Detection;

/// The length of a filter component starting at `s[0] == b'('`: a combination or an item
/// (`attr[;options] op`), if it is one.
fn component(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while s.get(i).is_some_and(|b| *b == b' ') {
        i += 1;
    }
    match s.get(i)? {
        b'&' | b'|' | b'!' => {
            let mut j = i + 1;
            while s.get(j).is_some_and(|b| *b == b' ') {
                j += 1;
            }
            // `(|(uid=*)`, or the malformed `(|uid=*)` that lenient servers accept.
            if s.get(j) == Some(&b'(') {
                Some(j + 1)
            } else if !s.get(j)?.is_ascii_alphanumeric() {
                None
            } else {
                component(&s[j - 1..]).map(|len| j - 1 + len)
            }
        }
        first if first.is_ascii_alphabetic() || first.is_ascii_digit() => {
            let name = s[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b';'))
                .count();
            let rest = &s[i + name..];
            let op = match rest {
                [b'=', ..] => 1,
                [b'~' | b'>' | b'<', b'=', ..] => 2,
                _ => return None,
            };
            // `attr=` needs a value or the end of the filter: `*`, text, or `)`.
            Some(i + name + op)
        }
        _ => None,
    }
}

/// Finds a break out of an LDAP filter value in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    if !input.contains(&b'(') {
        return None;
    }
    for close in memchr::memchr_iter(b')', input) {
        let mut open = close + 1;
        // `*))(|(`: several closings may come before the opening.
        while input.get(open).is_some_and(|b| matches!(b, b')' | b' ')) {
            open += 1;
        }
        if input.get(open) != Some(&b'(') {
            continue;
        }
        // `)((|`: a malformed double opening still opens the component after it.
        while input.get(open + 1) == Some(&b'(') {
            open += 1;
        }
        if let Some(len) = component(&input[open..]) {
            return Some(Detection {
                at: close,
                len: open + len - close,
                why: "a value that closes an LDAP filter item and opens another",
            });
        }
    }
    let start = input.iter().position(|b| !b.is_ascii_whitespace())?;
    if input[start] == b'(' && matches!(input.get(start + 1), Some(b'&' | b'|' | b'!')) {
        if let Some(len) = component(&input[start..]) {
            return Some(Detection {
                at: start,
                len,
                why: "a value that is a whole LDAP filter combination",
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn filter_breakouts_are_found() {
        expect::finds(
            detect,
            &[
                "*)(uid=*))(|(uid=*",
                "admin)(&(objectClass=*)",
                "x)(!(cn=x))",
                "*)(|(mail=*)",
                "a*)(userPassword>=a",
                "x) (cn~=adm",
                "(|(uid=*)(cn=*))",
                "*))%00(uid=*",
                "admin*)((|userPassword=*)",
            ],
        );
    }

    #[test]
    fn parentheses_in_prose_and_math_are_left_alone() {
        expect::passes(
            detect,
            &[
                "(see above)(and below)",
                "f(x)(y)",
                "(a)(b) = c",
                "call me (maybe) (later)",
                "(x=1)",
                "smile :) (really)",
                "(&)",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &[
                "(|".repeat(50_000),
                ")(".repeat(50_000),
                "(".repeat(100_000),
            ],
        );
    }
}
