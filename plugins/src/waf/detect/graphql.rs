//! GraphQL abuse: schema introspection, alias batching and nesting past any client's need.
//!
//! The value is read as a GraphQL document (a selection set in braces, optionally after
//! `query`/`mutation`/`subscription` and a name): its tokens are names, punctuation and
//! strings (skipped, so that text inside arguments never counts). Counted: a selection of
//! `__schema` or `__type` (introspection; `__typename`, which clients add to every query,
//! is not), more than [`MAX_ALIASES`] aliased selections of one field (`a1: login(...)
//! a2: login(...)`, one request guessing a hundred passwords), and selection sets nested
//! deeper than [`MAX_DEPTH`].

use std::collections::HashMap;

use super::Detection;

/// Aliases of one field in one document beyond which it is batching.
pub const MAX_ALIASES: usize = 10;
/// Selection-set depth beyond which a query is a denial of service.
pub const MAX_DEPTH: usize = 15;

fn document_start(s: &[u8]) -> bool {
    let t = s.trim_ascii_start();
    t.starts_with(b"{")
        || [&b"query"[..], b"mutation", b"subscription", b"fragment"]
            .iter()
            .any(|k| {
                t.starts_with(k)
                    && t.get(k.len())
                        .is_some_and(|b| b.is_ascii_whitespace() || matches!(b, b'{' | b'('))
            })
}

/// Finds introspection, alias batching or deep nesting in `input` (a GraphQL document).
pub fn detect(input: &[u8]) -> Option<Detection> {
    if !document_start(input) || !input.contains(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut aliases: HashMap<&[u8], usize> = HashMap::new();
    let mut i = 0;
    let mut previous_name: Option<(usize, usize)> = None;
    while i < input.len() {
        let b = input[i];
        match b {
            b'"' => {
                // A string (or block string): skipped whole.
                let block = input[i..].starts_with(b"\"\"\"");
                let close: &[u8] = if block { b"\"\"\"" } else { b"\"" };
                let from = i + close.len();
                let mut j = from;
                loop {
                    match memchr::memmem::find(&input[j..], close) {
                        Some(p) if !block && p > 0 && input[j + p - 1] == b'\\' => j += p + 1,
                        Some(p) => {
                            j += p + close.len();
                            break;
                        }
                        None => return None,
                    }
                }
                i = j;
                previous_name = None;
                continue;
            }
            b'#' => {
                i += input[i..]
                    .iter()
                    .position(|c| *c == b'\n')
                    .unwrap_or(input.len() - i);
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(Detection {
                        at: i,
                        len: 1,
                        why: "GraphQL selections nested past any client's need",
                    });
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            // `alias: field`: count the field.
            b':' if previous_name.is_some() => {
                let mut j = i + 1;
                while input.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
                    j += 1;
                }
                let len = input[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                if len > 0 && depth > 0 {
                    let n = aliases.entry(&input[j..j + len]).or_default();
                    *n += 1;
                    if *n > MAX_ALIASES {
                        return Some(Detection {
                            at: j,
                            len,
                            why: "one GraphQL field requested under many aliases (batching)",
                        });
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let len = input[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let name = &input[i..i + len];
                if depth > 0 && (name == b"__schema" || name == b"__type") {
                    return Some(Detection {
                        at: i,
                        len,
                        why: "a GraphQL introspection query",
                    });
                }
                previous_name = Some((i, len));
                i += len;
                continue;
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            previous_name = None;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introspection_batching_and_depth_are_found() {
        let batch: String = (0..11)
            .map(|k| format!("a{k}: login(user: \"admin\", password: \"p{k}\") {{ token }} "))
            .collect();
        let deep = format!("{{{}}}", "a { ".repeat(16) + &"}".repeat(16));
        for attack in [
            "{__schema{types{name}}}".to_string(),
            "query IntrospectionQuery { __schema { queryType { name } } }".to_string(),
            "{ __type(name: \"User\") { fields { name } } }".to_string(),
            format!("mutation {{ {batch} }}"),
            deep,
        ] {
            assert!(detect(attack.as_bytes()).is_some(), "missed {attack:?}");
        }
    }

    #[test]
    fn ordinary_queries_and_text_are_left_alone() {
        let aliases: String = (0..10)
            .map(|k| format!("u{k}: user(id: {k}) {{ name }} "))
            .collect();
        for text in [
            "{ user(id: 1) { name __typename } }".to_string(),
            "query { search(text: \"__schema is a word\") { id } }".to_string(),
            format!("{{ {aliases} }}"),
            "the __schema field".to_string(),
            "{\"query\": 1}".to_string(),
            "query about my order".to_string(),
        ] {
            assert!(detect(text.as_bytes()).is_none(), "refused {text:?}");
        }
    }

    #[test]
    fn hostile_input_is_bounded() {
        for s in [
            "{".repeat(100_000),
            format!("{{{}", "a: b ".repeat(30_000)),
            "{\"".repeat(50_000),
        ] {
            let _ = detect(s.as_bytes());
        }
    }
}
