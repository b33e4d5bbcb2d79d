//! The URLs in prose: all the WAF inspects of an LLM prompt.
//!
//! A URL here is what a browser, a fetcher or a model's tool could act on: a scheme and
//! `://` (`https://…`, `gopher://…`, `javascript://…`), or a `data:` URL with its media
//! type (`data:text/html;base64,…`). It runs to the next whitespace, quote, angle bracket or
//! backtick.
//!
//! Prompts are large (a coding agent sends a megabyte of source files) and always hold some
//! URLs, so the finder starts from the two marks every URL has, `://` and `data:`, found
//! from the colons a vectorised search turns up, and reads outwards from each by hand. A
//! regex over the whole text paid for its word boundaries at every byte, and its prefilter
//! never skipped agent prose.
//! The grammar is ASCII, so the reading is too: a scheme is the ASCII letters, digits, `+`,
//! `.` and `-` before `://` (at most 16, starting with a letter), with no word boundary asked
//! for, so `xhttp://` is inspected as `http://` rather than passed over.

use super::json::{escaped_at, json_unescape, EscapedText};
use super::scan::scan_string;

/// The longest scheme read back from `://` (`[a-z][a-z0-9+.-]{1,15}`).
const MAX_SCHEME: usize = 16;

/// Calls `each` with every URL in `text`, in order, none overlapping another.
pub fn each_url(text: &[u8], mut each: impl FnMut(&[u8])) {
    let colons = memchr::memchr_iter(b':', text);
    find(text, Text::Plain, colons, |start, end| {
        each(&text[start..end])
    });
}

/// A JSON string's text (between its quotes, escapes and all) that does not decode: an
/// escape JSON does not have, or a `\u` that is not four hex digits.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEscape;

/// [`each_url`] over a JSON string as it stands in the document, each URL decoded.
///
/// Only the URLs are decoded, not the text around them, unless the text has escapes that
/// could spell a URL's marks or scheme (`\u0068ttp:\/\/`): then it is decoded whole first.
/// The other escapes JSON has (`\n`, `\"`, `\\`, `\t`, `\r`, `\b`, `\f`) cannot, so the
/// marks stand in the text as they are, and the reading only has to stop where an escape
/// decodes to a stop byte. (An escape JSON does not have, `\a`, is not looked for here: no
/// JSON parser behind rampart reads a document holding one.)
pub fn each_url_in_json(text: &[u8], each: impl FnMut(&[u8])) -> Result<(), BadEscape> {
    let mut colons = Vec::new();
    let scanned = scan_string(text, &mut colons);
    if scanned.closed {
        // A quote no escape takes: not a string's text as it stands. Read decoded whole,
        // as a text that spells is, so nothing after the quote is passed over.
        return each_url_in_escaped(text, true, std::iter::empty(), each);
    }
    each_url_in_escaped(text, scanned.spells, colons.into_iter(), each)
}

/// [`each_url_in_json`] over a string the JSON walk kept as it stands: its colons and
/// whether it spells were found by the pass that found its end.
pub fn each_url_in_kept(
    kept: &EscapedText<'_, '_>,
    each: impl FnMut(&[u8]),
) -> Result<(), BadEscape> {
    each_url_in_escaped(kept.text, kept.spells, kept.colons.iter().copied(), each)
}

/// The URLs of a JSON string's `text` whose colons are `colons`; `spells` if it holds a
/// `\u` or `\/` escape.
fn each_url_in_escaped(
    text: &[u8],
    spells: bool,
    colons: impl Iterator<Item = usize>,
    mut each: impl FnMut(&[u8]),
) -> Result<(), BadEscape> {
    let unescape = |t: &[u8]| json_unescape(t).ok_or(BadEscape);
    if spells {
        each_url(&unescape(text)?, each);
        return Ok(());
    }
    let mut result = Ok(());
    find(text, Text::JsonEscaped, colons, |start, end| {
        let url = &text[start..end];
        if memchr::memchr(b'\\', url).is_none() {
            return each(url);
        }
        match unescape(url) {
            Ok(url) => each(&url),
            Err(e) => result = Err(e),
        }
    });
    result
}

/// How the text being searched is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    Plain,
    /// A JSON string's text with no `\u` or `\/` escapes in it.
    JsonEscaped,
}

/// Calls `each` with the byte range of every URL in `text`, given the offsets of its colons
/// (`colons`, in order).
///
/// Both marks hold a colon (`://`, `data:`), so one pass over the colons finds them both;
/// in agent prose (source code, logs) a colon comes every hundred bytes or so, which costs
/// less than a search for each mark (a case-blind `data:` is 32 literals). The colons come
/// from the caller: a memchr pass over plain text, the scan that found a JSON string's end.
fn find(
    text: &[u8],
    form: Text,
    colons: impl Iterator<Item = usize>,
    mut each: impl FnMut(usize, usize),
) {
    // Where the last URL ended: a mark inside it is part of it.
    let mut done = 0;
    for colon in colons {
        if colon < done {
            continue;
        }
        // Most colons in prose are neither mark's (`::`, `key: value`, `10:30`): a `://`
        // has a slash after its colon, a `data:` an `a` before it. One look at each side
        // passes them over before either mark is read in full.
        let slash_after = text.get(colon + 1) == Some(&b'/');
        let a_before = colon > 0 && (text[colon - 1] | 0x20) == b'a';
        if !(slash_after || a_before) {
            continue;
        }
        let scheme = scheme_url(text, form, colon, done);
        let data = data_url(text, colon, done);
        // At one colon, the URL that starts first (a scheme begins before its mark, so
        // `httpdata://` is one URL, not the `data:` inside it).
        let (start, body) = match (scheme, data) {
            (Some(s), Some(d)) if d.0 < s.0 => d,
            (Some(s), _) => s,
            (None, Some(d)) => d,
            (None, None) => continue,
        };
        let end = url_end(text, form, body);
        each(start, end);
        done = end;
    }
}

/// The URL whose scheme ends at `colon` (followed by `//`): its first byte and where its
/// body (what runs to a stop byte) begins; `None` if there is no `//` or no scheme, or the
/// scheme would reach into the URL before (which ended at `done`).
fn scheme_url(text: &[u8], form: Text, colon: usize, done: usize) -> Option<(usize, usize)> {
    if !text[colon + 1..].starts_with(b"//") {
        return None;
    }
    let reach = colon.saturating_sub(MAX_SCHEME).max(done);
    let mut start = colon;
    while start > reach && is_scheme_byte(text[start - 1]) {
        start -= 1;
    }
    // A backslash is no scheme byte, so of the run only its first byte can be escaped (the
    // `n` of `\nhttps`): asked once, not at every byte.
    if form == Text::JsonEscaped && start < colon && escaped_at(text, start) {
        start += 1;
    }
    // A scheme begins with a letter.
    while start < colon && !text[start].is_ascii_alphabetic() {
        start += 1;
    }
    (start < colon).then_some((start, colon + 3))
}

/// The `data:` URL (any case) whose colon is at `colon`: `data:` and a media type
/// (`[a-z/]*`) closed by `;` or `,`. `None` if there is none, or its `d` lies inside the URL
/// before (which ended at `done`).
fn data_url(text: &[u8], colon: usize, done: usize) -> Option<(usize, usize)> {
    let at = colon.checked_sub(4).filter(|&d| d >= done)?;
    if !text[at..colon].eq_ignore_ascii_case(b"data") {
        return None;
    }
    let after = colon + 1;
    let kind = text[after..]
        .iter()
        .position(|&b| !(b.is_ascii_alphabetic() || b == b'/'))?;
    matches!(text[after + kind], b';' | b',').then_some((at, after + kind + 1))
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-')
}

/// The end of a URL whose body begins at `from`: the next whitespace (Unicode's, as UTF-8),
/// quote, angle bracket or backtick, or the end of the text.
fn url_end(text: &[u8], form: Text, from: usize) -> usize {
    let mut i = from;
    loop {
        // Most of a URL is bytes that are plainly in it: skipped by one table lookup each.
        i += text[i..]
            .iter()
            .position(|&b| MAY_END_URL[usize::from(b)])
            .unwrap_or(text.len() - i);
        let Some(&b) = text.get(i) else {
            return i;
        };
        match b {
            b'\\' if form == Text::JsonEscaped => match text.get(i + 1) {
                // An escape: whitespace and quotes end the URL, `\\` and `\b` are in it.
                Some(b'n' | b't' | b'r' | b'f' | b'"') | None => return i,
                Some(_) => i += 2,
            },
            b'\\' => i += 1,
            0xc2 | 0xe1 | 0xe2 | 0xe3 if !unicode_space(&text[i..]) => i += 1,
            _ => return i,
        }
    }
}

/// The bytes that end a URL (ASCII whitespace, quotes, angle brackets, backtick) or may
/// (a backslash in JSON text; the first byte of a Unicode space).
const MAY_END_URL: [bool; 256] = {
    let mut table = [false; 256];
    let ends = b"\t\n\x0b\x0c\r \"'<>`\\\xc2\xe1\xe2\xe3";
    let mut k = 0;
    while k < ends.len() {
        table[ends[k] as usize] = true;
        k += 1;
    }
    table
};

/// Whether `at` begins with a Unicode `White_Space` character other than ASCII's: U+0085,
/// U+00A0, U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
fn unicode_space(at: &[u8]) -> bool {
    matches!(
        at,
        [0xc2, 0x85 | 0xa0, ..]
            | [0xe1, 0x9a, 0x80, ..]
            | [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..]
            | [0xe2, 0x81, 0x9f, ..]
            | [0xe3, 0x80, 0x80, ..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20,000 texts of twelve `pieces` each, drawn by a fixed xorshift from `seed`.
    fn texts(pieces: &'static [&'static str], seed: u64) -> impl Iterator<Item = String> {
        let mut rng = crate::test_rng::Xorshift(seed);
        (0..20_000).map(move |_| {
            (0..12)
                .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                .collect()
        })
    }

    fn urls(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        each_url(text.as_bytes(), |u| {
            out.push(String::from_utf8_lossy(u).into_owned())
        });
        out
    }

    #[test]
    fn finds_schemes_and_data_urls_in_prose() {
        assert_eq!(
            urls("see https://example.com/a?b=c, then gopher://127.0.0.1:70/_x."),
            ["https://example.com/a?b=c,", "gopher://127.0.0.1:70/_x."]
        );
        assert_eq!(
            urls("<img src=\"DATA:text/html;base64,PHNjcmlwdD4=\">"),
            ["DATA:text/html;base64,PHNjcmlwdD4="]
        );
        assert_eq!(urls("data:,hello world"), ["data:,hello"]);
        // One URL holding another is one URL.
        assert_eq!(
            urls("http://a.example/?next=https://b.example/x data:x"),
            ["http://a.example/?next=https://b.example/x"]
        );
        // A scheme glued to a word or a digit is still read.
        assert_eq!(urls("xhttp://a 9ftp://b"), ["xhttp://a", "ftp://b"]);
        // The scheme is at most 16 bytes back; a longer run is read from its last 16.
        assert_eq!(
            urls("abcdefghijklmnopqrstuvwxyz://h"),
            ["klmnopqrstuvwxyz://h"]
        );
        // Unicode spaces end a URL.
        assert_eq!(
            urls("http://a\u{a0}b http://c\u{3000}d"),
            ["http://a", "http://c"]
        );
    }

    #[test]
    fn prose_without_urls_has_none() {
        for text in [
            "plain prose: a: b // c, data is data; metadata: none",
            " ://nothing 1://x",
            "data:",
            "",
            "://",
        ] {
            assert!(urls(text).is_empty(), "{text}: {:?}", urls(text));
        }
    }

    /// The URLs of the strings at path `p` of a JSON document, kept as they stand by the
    /// walk (`q` is read decoded, as any other path).
    fn urls_kept_in(document: &str) -> Result<Vec<Vec<u8>>, BadEscape> {
        use crate::waf::json::{walk, JsonPath, JsonScalar, JsonVisitor};
        struct Kept(Result<Vec<Vec<u8>>, BadEscape>);
        impl JsonVisitor<'_> for Kept {
            fn path(&mut self, path: JsonPath<'_>) -> bool {
                path.text == "p"
            }
            fn key(&mut self, _: JsonPath<'_>, _: &[u8]) {}
            fn scalar(&mut self, path: JsonPath<'_>, value: JsonScalar<'_, '_>) {
                let JsonScalar::Escaped(kept) = value else {
                    assert_ne!(path.text, "p", "a kept string is handed over as it stands");
                    return;
                };
                if let Ok(found) = self.0.as_mut() {
                    let read = each_url_in_kept(&kept, |u| found.push(u.to_vec()));
                    if let Err(e) = read {
                        self.0 = Err(e);
                    }
                }
            }
        }
        let mut kept = Kept(Ok(Vec::new()));
        assert!(walk(document.as_bytes(), &mut kept).is_some(), "{document}");
        kept.0
    }

    /// A JSON string read as it stands finds exactly the URLs of its decoded text, whichever
    /// escapes its encoder chose (serde's; slashes escaped, as PHP does; every non-ASCII
    /// character as `\u`, as Python's default does).
    #[test]
    fn json_text_as_it_stands_finds_what_its_decoded_text_holds() {
        let pieces: &[&str] = &[
            "http",
            "://",
            "data:",
            "text/html",
            ";",
            ",",
            " ",
            "\n",
            "\t",
            "\"",
            "\\",
            "x",
            "n",
            "\u{8}",
            "é",
            "\u{a0}",
            "<",
            "'",
            "a+b",
            "javascript:",
            "/",
            "\\n",
        ];
        for text in texts(pieces, 0x2545_f491_4f6c_dd1d_u64) {
            let quoted = serde_json::Value::from(text.as_str()).to_string();
            let serde = &quoted[1..quoted.len() - 1];
            let slashes = serde.replace('/', "\\/");
            let ascii: String = serde
                .chars()
                .map(|c| match c.is_ascii() {
                    true => c.to_string(),
                    false => format!("\\u{:04x}", c as u32),
                })
                .collect();
            let mut want = Vec::new();
            each_url(text.as_bytes(), |u| want.push(u.to_vec()));
            for escaped in [serde, &slashes, &ascii] {
                let mut found = Vec::new();
                let read = each_url_in_json(escaped.as_bytes(), |u| found.push(u.to_vec()));
                assert_eq!(read, Ok(()), "{escaped}");
                assert_eq!(found, want, "{text:?} as {escaped}");
                // The same string in a document, found by the walk's one pass.
                let document = format!(r#"{{"p":"{escaped}","q":"{escaped}"}}"#);
                assert_eq!(urls_kept_in(&document), Ok(want.clone()), "{document}");
            }
        }
        assert_eq!(
            each_url_in_json(br"see \u00zz http://x", |_| {}),
            Err(BadEscape)
        );
        // An escape JSON does not have is not looked for outside `\u` text: the document
        // is one no JSON parser behind rampart reads.
        let mut found = 0;
        assert_eq!(each_url_in_json(br"d\ata:,x", |_| found += 1), Ok(()));
        assert_eq!(found, 0);
    }

    /// Every URL the regex this finder replaced found lies inside one the finder finds:
    /// over texts assembled from the pieces URLs and their look-alikes are made of.
    #[test]
    fn never_misses_what_the_regex_found() {
        let re = regex::bytes::Regex::new(
            r#"(?i)\b(?:[a-z][a-z0-9+.-]{1,15}://|data:[a-z/]*[;,])[^\s"'<>`]*"#,
        )
        .expect("compiles");
        let pieces: &[&str] = &[
            "http",
            "://",
            "data:",
            "DaTa:",
            "text/html",
            ";",
            ",",
            " ",
            "\n",
            "\"",
            "x",
            "-",
            ".",
            "/",
            "é",
            "\u{a0}",
            "\u{2028}",
            "a+b",
            "1",
            "<",
            "`",
            "javascript:",
            ":",
            "abcdefghijklmnop",
        ];
        for text in texts(pieces, 0x9e37_79b9_7f4a_7c15_u64) {
            let mut spans = Vec::new();
            let base = text.as_ptr() as usize;
            each_url(text.as_bytes(), |u| {
                let at = u.as_ptr() as usize - base;
                spans.push(at..at + u.len());
            });
            for m in re.find_iter(text.as_bytes()) {
                assert!(
                    spans
                        .iter()
                        .any(|s| s.start <= m.start() && m.end() <= s.end),
                    "{text:?}: the regex found {:?}, the finder {spans:?}",
                    m.range()
                );
            }
        }
    }
}
