//! Server-side includes: an SSI directive, which Apache's `mod_include` and nginx's `ssi`
//! run when a value is written into a page they process.
//!
//! The grammar is `<!--#directive param="value" ... -->`: the comment opener directly
//! followed by `#`, a directive the servers know, then parameters or the end of the
//! comment. An HTML comment that starts with `#` in prose ("<!--# TODO -->") names no
//! directive.

use super::Detection;

const DIRECTIVES: &[&[u8]] = &[
    b"exec",
    b"include",
    b"echo",
    b"config",
    b"flastmod",
    b"fsize",
    b"printenv",
    b"set",
    b"if",
    b"elif",
    b"else",
    b"endif",
    b"block",
    b"func",
];

/// Finds an SSI directive in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    for at in memchr::memmem::find_iter(input, b"<!--") {
        let mut p = at + 4;
        while input.get(p).is_some_and(|b| b.is_ascii_whitespace()) {
            p += 1;
        }
        if input.get(p) != Some(&b'#') {
            continue;
        }
        p += 1;
        while input.get(p).is_some_and(|b| b.is_ascii_whitespace()) {
            p += 1;
        }
        let len = input[p..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let directive = input[p..p + len].to_ascii_lowercase();
        if !DIRECTIVES.contains(&directive.as_slice()) {
            continue;
        }
        // A parameter (`name=`), or the directive ends the comment or the value.
        let after = &input[p + len..];
        let rest = after.trim_ascii_start();
        let param = rest
            .iter()
            .position(|b| !b.is_ascii_alphanumeric() && *b != b'_')
            .is_some_and(|e| e > 0 && rest[e] == b'=');
        let ends = rest.is_empty() || rest.starts_with(b"-->");
        if (param || ends) && (after.first().is_none_or(|b| !b.is_ascii_alphanumeric())) {
            return Some(Detection {
                at,
                len: p + len - at,
                why: "a server-side include directive",
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
    fn directives_are_found() {
        expect::finds(
            detect,
            &[
                "<!--#exec cmd=\"id\" -->",
                "<!--#include virtual=\"/etc/passwd\"-->",
                "x<!-- #echo var=DOCUMENT_ROOT -->",
                "<!--#printenv -->",
                "<!--#config errmsg='x'-->",
                "<!--#EXEC CGI=/cgi-bin/x.cgi-->",
                "<!--#printenv",
            ],
        );
    }

    #[test]
    fn comments_are_left_alone() {
        expect::passes(
            detect,
            &[
                "<!-- # TODO: fix -->",
                "<!--#1 best seller-->",
                "<!-- include the header -->",
                "<!--#executive summary -->",
                "<!--#set of notes about things-->",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(detect, &["<!--#".repeat(30_000), "<!--".repeat(30_000)]);
    }
}
