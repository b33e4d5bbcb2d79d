//! Path normalisation, so that every path rule meets one canonical form.
//!
//! `/KEY/x`, `//key/x`, `/%6bey/x`, `/v1/../key/x` and `/key\x` must all meet the rule
//! written for `/key/`. Decoding repeats (up to [`MAX_DECODE_ROUNDS`]) because some
//! upstreams decode twice; judging the most-decoded form is the conservative choice.

use std::borrow::Cow;

use thiserror::Error;

use crate::waf::decode::{has_escape, percent_decode};

/// Double and triple encoding are seen in attacks; more rounds than this is refused.
pub const MAX_DECODE_ROUNDS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path decodes to bytes that are not UTF-8")]
    NotUtf8,
    #[error("path contains a control character")]
    ControlCharacter,
    #[error("path is still percent-encoded after {MAX_DECODE_ROUNDS} rounds of decoding")]
    TooManyEncodings,
}

/// Normalises a request path (without its query). Case is preserved; compare with
/// [`has_segment_prefix`] where case must not matter.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut bytes = raw.as_bytes().to_vec();
    let mut rounds = 0;
    while has_escape(&bytes) {
        if rounds == MAX_DECODE_ROUNDS {
            return Err(PathError::TooManyEncodings);
        }
        bytes = percent_decode(&bytes, false).into_owned();
        rounds += 1;
    }
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(PathError::ControlCharacter);
    }
    let decoded = String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// True when `path` is `prefix` or lies below it, segment-wise: `/key/` and `/key` both
/// cover `/key` and `/key/x`, never `/keyring`.
pub fn has_segment_prefix(path: &str, prefix: &str, ignore_case: bool) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The fast path: nothing to decode, no separators to fold, no dot segments.
fn is_canonical(p: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                let rest = &p[i..];
                if rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                {
                    return false;
                }
            }
            _ if b.is_ascii_control() => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

/// Folds `\` into `/`, drops empty and `.` segments, resolves `..` (never above the root).
fn resolve_segments(decoded: &str) -> String {
    let unified = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in unified.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = unified.ends_with('/') || unified.ends_with("/.") || unified.ends_with("/..");
    let mut out = String::with_capacity(unified.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p)
            .map(|c| c.into_owned())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        assert!(matches!(
            normalize("/v1/chat/completions"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn bypass_forms_meet_the_same_path() {
        for p in [
            "//key/x",
            "/%6bey/x",
            "/v1/../key/x",
            "/./key/x",
            "/key//x",
            "/%256bey/x",
            "/\\key\\x",
            "/v1/%2e%2e/key/x",
        ] {
            assert_eq!(n(p), "/key/x", "{p}");
        }
        assert_eq!(n("/KEY/x"), "/KEY/x", "case is preserved");
    }

    #[test]
    fn dot_segments_never_climb_above_root() {
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn malformed_paths_are_errors() {
        assert_eq!(normalize("key"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/a%0d%0ab"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/%ff"), Err(PathError::NotUtf8));
        assert_eq!(normalize("/%2525252525"), Err(PathError::TooManyEncodings));
    }

    #[test]
    fn stray_percent_stays_literal() {
        assert_eq!(n("/100%/x"), "/100%/x");
        assert_eq!(n("/a%zz"), "/a%zz");
        assert_eq!(n("/a%4"), "/a%4");
    }

    #[test]
    fn segment_prefix() {
        assert!(has_segment_prefix("/key/x", "/key/", false));
        assert!(has_segment_prefix("/key", "/key/", false));
        assert!(!has_segment_prefix("/keyring", "/key/", false));
        assert!(!has_segment_prefix("/KEY/x", "/key/", false));
        assert!(has_segment_prefix("/KEY/x", "/key/", true));
        assert!(has_segment_prefix("/anything", "/", false));
        assert!(!has_segment_prefix("/k", "/key", true));
        assert!(!has_segment_prefix("/ké", "/key", true));
    }
}
