//! CRLF injection: a line break followed by a header line of HTTP or mail, so that a value
//! echoed into a response header (`Location`, `Set-Cookie`) or a mail header (`Subject`,
//! `To`) ends that header and writes others — response splitting, cookie injection, added
//! recipients.
//!
//! After CR or LF (any mix), the grammar of a header field is a token, `:` and a value
//! (RFC 9110 and RFC 5322); of a status line, `HTTP/1.x NNN`. A line break in a form's text
//! followed by "Note: ..." is prose, so only the header names that redirect, set state or
//! add recipients count there ([`Scope::Names`]); in the query, the path, cookies and
//! headers — where no line break belongs — any header line counts ([`Scope::AnyHeader`]).

use super::{new_lines, Detection};

/// Which header lines count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AnyHeader,
    Names,
}

/// Header names whose injection redirects, sets state, changes framing or adds recipients.
const NAMES: &[&[u8]] = &[
    b"location",
    b"refresh",
    b"set-cookie",
    b"set-cookie2",
    b"cookie",
    b"content-type",
    b"content-length",
    b"content-disposition",
    b"content-security-policy",
    b"transfer-encoding",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-xss-protection",
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
    b"link",
    b"via",
    b"bcc",
    b"cc",
    b"to",
    b"reply-to",
    b"x-mailer",
];

/// Finds a header line after a line break in `input` (the `decoded` form).
pub fn detect(input: &[u8], scope: Scope) -> Option<Detection> {
    // Folded whitespace before the name is how some parsers are fooled (`\r\n Set-Cookie`).
    for (brk, name_at) in new_lines(input) {
        let rest = &input[name_at..];
        if rest.len() > 8 && rest[..5].eq_ignore_ascii_case(b"http/") && rest[5].is_ascii_digit() {
            return Some(Detection {
                at: brk,
                len: 6 + name_at - brk,
                why: "a line break followed by an HTTP status line",
            });
        }
        let name_len = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .count();
        if name_len == 0 || rest.get(name_len) != Some(&b':') {
            continue;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        let counts = match scope {
            Scope::AnyHeader => true,
            Scope::Names => NAMES.contains(&name.as_slice()),
        };
        if counts {
            return Some(Detection {
                at: brk,
                len: name_at + name_len + 1 - brk,
                why: "a line break followed by a header line",
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_after_a_break_are_found() {
        for attack in [
            "/\r\nSet-Cookie: session=evil",
            "x\nLocation: https://evil.example",
            "en\r\n\r\nHTTP/1.1 200 OK",
            "a%0d%0aX-Injected: 1",
            "me@example.com\nBcc: victim@example.com",
            "x\r\n Set-Cookie: a=b",
            "x\rContent-Length: 0",
        ] {
            let decoded = crate::waf::decode::decoded(attack.as_bytes());
            assert!(
                detect(&decoded, Scope::AnyHeader).is_some(),
                "missed {attack:?}"
            );
        }
        assert!(detect(b"hi\nLocation: x", Scope::Names).is_some());
        assert!(detect(b"hi\nBcc: a@b.c", Scope::Names).is_some());
    }

    #[test]
    fn line_breaks_in_text_are_left_alone() {
        for text in [
            "Dear team,\nNote: my order is late",
            "line one\nline two",
            "Regards,\r\nTom",
            "Q: how?\nA: like this",
            "time\n12:30",
        ] {
            assert!(
                detect(text.as_bytes(), Scope::Names).is_none(),
                "refused {text:?}"
            );
        }
        assert!(detect(b"no break: here", Scope::AnyHeader).is_none());
        assert!(detect(b"a\n:b", Scope::AnyHeader).is_none());
    }

    #[test]
    fn hostile_input_is_bounded() {
        for s in [
            "\n".repeat(100_000),
            "\n ".repeat(50_000),
            "\na1 ".repeat(30_000),
        ] {
            let _ = detect(s.as_bytes(), Scope::AnyHeader);
        }
    }
}
