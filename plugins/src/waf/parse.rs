//! Parsers that turn a request's parts into named fields. They never fail on bad input:
//! what does not parse is inspected as it is.

use super::decode::percent_decode;

/// `a=1&b=2` (query strings and `application/x-www-form-urlencoded`), decoded once.
pub fn form_pairs(input: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            (
                percent_decode(name, true).into_owned(),
                percent_decode(value, true).into_owned(),
            )
        })
        .collect()
}

/// `Cookie: a=1; b=2`.
pub fn cookie_pairs(header: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    header
        .split(|&b| b == b';')
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty())
        .map(|c| match c.iter().position(|&b| b == b'=') {
            Some(i) => (c[..i].to_vec(), c[i + 1..].to_vec()),
            None => (c.to_vec(), Vec::new()),
        })
        .collect()
}

/// A JSON document flattened into `(path, key, value)`: every object key is a name
/// (`key`), every scalar a value at its path (`messages[].content`; array indices dropped so
/// that a path names a field whatever its position).
pub struct JsonField<'a> {
    pub path: String,
    pub key: Option<String>,
    pub value: Option<String>,
    /// A string value at a path the caller asked to have as it stands in the document:
    /// between its quotes, escapes and all (see [`json_fields_keeping`]).
    pub escaped: Option<&'a [u8]>,
}

/// Nesting deeper than this is not followed (and is itself suspicious).
const MAX_JSON_DEPTH: usize = 64;

/// Flattens a JSON document. A document cut short (a body inspected on its first bytes) is
/// read up to where it stops; `None` only for something that is not JSON at all.
pub fn json_fields(body: &[u8]) -> Option<Vec<JsonField<'_>>> {
    json_fields_keeping(body, &mut |_| false)
}

/// [`json_fields`], leaving the string values at the paths `keep` chooses escaped: a caller
/// that reads only a little of a large string (the URLs in a prompt) saves decoding it.
pub fn json_fields_keeping<'a>(
    body: &'a [u8],
    keep: &mut dyn FnMut(&str) -> bool,
) -> Option<Vec<JsonField<'a>>> {
    let mut walker = JsonWalker {
        s: body,
        i: 0,
        out: Vec::new(),
        keep,
    };
    walker.skip_ws();
    if !matches!(walker.peek(), Some(b'{' | b'[')) {
        return None;
    }
    match walker.value("", 0) {
        Ok(()) => {
            // Bytes after the document would reach the upstream unjudged.
            walker.skip_ws();
            (walker.i == body.len()).then_some(walker.out)
        }
        Err(JsonStop::Eof) => Some(walker.out),
        Err(JsonStop::Invalid) => None,
    }
}

/// A JSON string's text (between its quotes) with its escapes decoded; `None` for an escape
/// JSON does not have (`\a`, `\:`) or a `\u` that is not four hex digits, which every JSON
/// parser an upstream runs refuses too. An escape cut short by the end is dropped, and bytes
/// that are not UTF-8 are kept as they are (the caller decides what to make of them).
pub fn json_unescape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        // Plain bytes up to the next escape go in one copy.
        let run = memchr::memchr(b'\\', &text[i..]).unwrap_or(text.len() - i);
        out.extend_from_slice(&text[i..i + run]);
        i += run + 1;
        let Some(&e) = text.get(i) else { break };
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'u' => {
                let Some(hex) = text.get(i..i + 4) else { break };
                i += 4;
                let code = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())?;
                let c = char::from_u32(code).unwrap_or('\u{fffd}');
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            b'"' | b'\\' | b'/' => out.push(e),
            _ => return None,
        }
    }
    Some(out)
}

/// Whether the byte at `at` of a JSON string's text is escaped: an odd run of backslashes
/// comes right before it (the `"` of `\"`, the `n` of `\n`; not the `"` after `\\`).
pub fn escaped_at(text: &[u8], at: usize) -> bool {
    text[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

enum JsonStop {
    /// The input ended inside the document: what was read stands.
    Eof,
    Invalid,
}

struct JsonWalker<'a, 'k> {
    s: &'a [u8],
    i: usize,
    out: Vec<JsonField<'a>>,
    /// Paths whose string values are kept escaped.
    keep: &'k mut dyn FnMut(&str) -> bool,
}

impl<'a> JsonWalker<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonStop> {
        self.skip_ws();
        match self.peek() {
            None => Err(JsonStop::Eof),
            Some(c) if c == b => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(JsonStop::Invalid),
        }
    }

    fn value(&mut self, path: &str, depth: usize) -> Result<(), JsonStop> {
        if depth > MAX_JSON_DEPTH {
            return Err(JsonStop::Invalid);
        }
        self.skip_ws();
        match self.peek().ok_or(JsonStop::Eof)? {
            b'{' => {
                self.i += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    let (key, complete) = self.string()?;
                    if !complete {
                        return Err(JsonStop::Eof);
                    }
                    let child = match path {
                        "" => key.clone(),
                        _ => [path, ".", &key].concat(),
                    };
                    self.out.push(JsonField {
                        path: child.clone(),
                        key: Some(key),
                        value: None,
                        escaped: None,
                    });
                    self.expect(b':')?;
                    self.value(&child, depth + 1)?;
                    self.skip_ws();
                    match self.peek().ok_or(JsonStop::Eof)? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(JsonStop::Invalid),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                let item = [path, "[]"].concat();
                loop {
                    self.value(&item, depth + 1)?;
                    self.skip_ws();
                    match self.peek().ok_or(JsonStop::Eof)? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(JsonStop::Invalid),
                    }
                }
            }
            b'"' => {
                let (value, escaped, complete) = if (self.keep)(path) {
                    let (raw, complete) = self.raw_string()?;
                    (None, Some(raw), complete)
                } else {
                    let (v, complete) = self.string()?;
                    (Some(v), None, complete)
                };
                self.out.push(JsonField {
                    path: path.to_string(),
                    key: None,
                    value,
                    escaped,
                });
                if complete {
                    Ok(())
                } else {
                    Err(JsonStop::Eof)
                }
            }
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                let token = &self.s[start..self.i];
                match token {
                    b"true" | b"false" | b"null" => Ok(()),
                    _ if !token.is_empty() && (token[0].is_ascii_digit() || token[0] == b'-') => {
                        self.out.push(JsonField {
                            path: path.to_string(),
                            key: None,
                            value: Some(String::from_utf8_lossy(token).into_owned()),
                            escaped: None,
                        });
                        Ok(())
                    }
                    _ if self.i == self.s.len() => Err(JsonStop::Eof),
                    _ => Err(JsonStop::Invalid),
                }
            }
        }
    }

    /// A string with its escapes decoded, and whether it was complete: a string cut short
    /// by the end of the input is kept as far as it goes.
    fn string(&mut self) -> Result<(String, bool), JsonStop> {
        let (raw, complete) = self.raw_string()?;
        let decoded = json_unescape(raw).ok_or(JsonStop::Invalid)?;
        // A string whose bytes are invalid UTF-8 is kept with replacement characters.
        let text = String::from_utf8(decoded)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((text, complete))
    }

    /// A string as it stands between its quotes, and whether it was complete.
    ///
    /// The end is the first quote after an even run of backslashes: quotes are rarer than
    /// escapes in the text people send (source code has a `\n` every line), so searching
    /// for quotes alone stops least.
    fn raw_string(&mut self) -> Result<(&'a [u8], bool), JsonStop> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            let Some(quote) = memchr::memchr(b'"', &self.s[self.i..]) else {
                self.i = self.s.len();
                return Ok((&self.s[start..], false));
            };
            let at = self.i + quote;
            self.i = at + 1;
            let text = &self.s[start..at];
            if !escaped_at(text, text.len()) {
                return Ok((text, true));
            }
        }
    }
}

/// One part of a `multipart/form-data` body.
pub struct MultipartPart<'a> {
    pub name: Option<Vec<u8>>,
    pub filename: Option<Vec<u8>>,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub content: &'a [u8],
}

/// The boundary parameter of a multipart content type.
pub fn multipart_boundary(content_type: &[u8]) -> Option<&[u8]> {
    let lower = content_type.to_ascii_lowercase();
    let at = find(&lower, b"boundary=")?;
    let raw = &content_type[at + 9..];
    let raw = raw.split(|&b| b == b';').next()?.trim_ascii();
    let raw = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    (!raw.is_empty()).then_some(raw)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn multipart_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<MultipartPart<'a>> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut rest = body;
    let Some(first) = find(rest, &delim) else {
        return parts;
    };
    rest = &rest[first + delim.len()..];
    while !rest.starts_with(b"--") {
        let rest_after_crlf = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .unwrap_or(rest);
        let end = find(rest_after_crlf, &delim).unwrap_or(rest_after_crlf.len());
        let chunk = &rest_after_crlf[..end];
        let (head, content) = match find(chunk, b"\r\n\r\n") {
            Some(i) => (&chunk[..i], &chunk[i + 4..]),
            None => match find(chunk, b"\n\n") {
                Some(i) => (&chunk[..i], &chunk[i + 2..]),
                None => (chunk, &b""[..]),
            },
        };
        let content = content
            .strip_suffix(b"\r\n")
            .or_else(|| content.strip_suffix(b"\n"))
            .unwrap_or(content);
        let mut part = MultipartPart {
            name: None,
            filename: None,
            headers: Vec::new(),
            content,
        };
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (hname, hvalue) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
            if hname.eq_ignore_ascii_case(b"content-disposition") {
                part.name = disposition_param(hvalue, b"name");
                part.filename = disposition_param(hvalue, b"filename");
            }
            part.headers.push((hname, hvalue));
        }
        parts.push(part);
        if end >= rest_after_crlf.len() {
            break;
        }
        rest = &rest_after_crlf[end + delim.len()..];
    }
    parts
}

fn disposition_param(value: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    for param in split_unquoted(value, b';').into_iter().skip(1) {
        let param = param.trim_ascii();
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            continue;
        };
        if param[..eq].trim_ascii().eq_ignore_ascii_case(key) {
            let v = param[eq + 1..].trim_ascii();
            let v = v
                .strip_prefix(b"\"")
                .map(|v| v.strip_suffix(b"\"").unwrap_or(v))
                .unwrap_or(v);
            return Some(v.to_vec());
        }
    }
    None
}

/// Splits on `sep` outside double quotes (`name=";x"; filename="a"` is two parameters).
fn split_unquoted(value: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, &b) in value.iter().enumerate() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Text content and attribute values of an XML document, with the name of the element or
/// attribute each came from. A tolerant scanner: it never fails, it only finds less.
pub fn xml_values(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut element: Vec<u8> = Vec::new();
    while i < body.len() {
        if body[i] == b'<' {
            let end = body[i..]
                .iter()
                .position(|&b| b == b'>')
                .map_or(body.len(), |e| i + e);
            let tag = &body[i + 1..end];
            if !tag.starts_with(b"/") && !tag.starts_with(b"?") && !tag.starts_with(b"!") {
                let name_len = tag
                    .iter()
                    .position(|b| b.is_ascii_whitespace() || *b == b'/')
                    .unwrap_or(tag.len());
                element = tag[..name_len].to_vec();
                // attr="value" / attr='value'
                let mut rest = &tag[name_len..];
                while let Some(eq) = rest.iter().position(|&b| b == b'=') {
                    let attr = rest[..eq].trim_ascii().to_vec();
                    let after = rest[eq + 1..].trim_ascii_start();
                    let Some(&quote) = after.first().filter(|q| **q == b'"' || **q == b'\'') else {
                        break;
                    };
                    // An unclosed quote runs to the end of the tag.
                    let close = after[1..]
                        .iter()
                        .position(|&b| b == quote)
                        .map_or(after.len(), |c| c + 1);
                    out.push((attr, after[1..close].to_vec()));
                    rest = after.get(close + 1..).unwrap_or_default();
                }
            }
            i = end + 1;
        } else {
            let end = body[i..]
                .iter()
                .position(|&b| b == b'<')
                .map_or(body.len(), |e| i + e);
            let text = body[i..end].trim_ascii();
            if !text.is_empty() {
                out.push((element.clone(), text.to_vec()));
            }
            i = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap_or("<bin>")
    }

    #[test]
    fn forms_decode_once_with_plus() {
        let p = form_pairs(b"a=1+2&b=%2527&flag&=x");
        let shown: Vec<(&str, &str)> = p.iter().map(|(n, v)| (s(n), s(v))).collect();
        assert_eq!(
            shown,
            vec![("a", "1 2"), ("b", "%27"), ("flag", ""), ("", "x")]
        );
    }

    #[test]
    fn cookies() {
        let p = cookie_pairs(b"a=1; b = x=y ;c");
        let shown: Vec<(&str, &str)> = p.iter().map(|(n, v)| (s(n), s(v))).collect();
        assert_eq!(shown, vec![("a", "1"), ("b ", " x=y"), ("c", "")]);
    }

    #[test]
    fn json_is_flattened_with_paths() {
        let f =
            json_fields(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":2}"#)
                .expect("json");
        let values: Vec<(String, String)> = f
            .iter()
            .filter_map(|f| Some((f.path.clone(), f.value.clone()?)))
            .collect();
        assert!(values.contains(&("messages[].content".into(), "hi".into())));
        assert!(values.contains(&("n".into(), "2".into())));
        assert!(f.iter().any(|f| f.key.as_deref() == Some("role")));
        assert!(json_fields(b"{not json").is_none());
        assert!(json_fields(b"hello=1").is_none());
    }

    #[test]
    fn json_cut_short_is_read_as_far_as_it_goes() {
        let full = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"a long prompt that goes on"}],"user":"x"}"#;
        let cut = &full[..60];
        let f = json_fields(cut).expect("a prefix of JSON is JSON enough");
        let values: Vec<(String, String)> = f
            .iter()
            .filter_map(|f| Some((f.path.clone(), f.value.clone()?)))
            .collect();
        assert!(
            values.contains(&("model".into(), "gpt-4o".into())),
            "{values:?}"
        );
        assert!(
            values
                .iter()
                .any(|(p, v)| p == "messages[].content" && v == "a lo"),
            "{values:?}"
        );
    }

    #[test]
    fn json_escapes_are_decoded() {
        let f = json_fields(br#"{"a":"\u0024{jndi:x}\n"}"#).expect("json");
        assert_eq!(
            f.iter().find_map(|f| f.value.clone()),
            Some("${jndi:x}\n".to_string())
        );
    }

    #[test]
    fn multipart_parts_and_filenames() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue a\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php ?>\r\n--XyZ--\r\n";
        let b = multipart_boundary(b"multipart/form-data; boundary=XyZ").expect("boundary");
        let parts = multipart_parts(body, b);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name.as_deref(), Some(&b"a"[..]));
        assert_eq!(s(parts[0].content), "value a");
        assert_eq!(parts[1].filename.as_deref(), Some(&b"../x.php"[..]));
        assert_eq!(s(parts[1].content), "<?php ?>");
    }

    #[test]
    fn quoted_separators_stay_in_multipart_names() {
        let body = b"--B\r\nContent-Disposition: form-data; name=\";zz\"; filename=\"t\"\r\n\r\nx\r\n--B--";
        let parts = multipart_parts(body, b"B");
        assert_eq!(parts[0].name.as_deref(), Some(&b";zz"[..]));
        assert_eq!(parts[0].filename.as_deref(), Some(&b"t"[..]));
    }

    #[test]
    fn xml_with_an_unclosed_quote_at_the_end() {
        // Found by the `parse` fuzz target: this used to slice out of bounds.
        let v = xml_values(b"<a b=\"");
        assert_eq!(v, vec![(b"b".to_vec(), Vec::new())]);
        let v = xml_values(b"<a b='x y");
        assert_eq!(v, vec![(b"b".to_vec(), b"x y".to_vec())]);
    }

    #[test]
    fn xml_text_and_attributes() {
        let v =
            xml_values(br#"<?xml version="1.0"?><r><a probe="x y">text here</a><b k='v'/></r>"#);
        let shown: Vec<(&str, &str)> = v.iter().map(|(n, v)| (s(n), s(v))).collect();
        assert_eq!(
            shown,
            vec![("probe", "x y"), ("a", "text here"), ("k", "v")]
        );
    }
}

#[cfg(test)]
mod lf_tests {
    use super::*;

    #[test]
    fn lf_only_multipart_with_long_boundary() {
        let ct = b"multipart/form-data; boundary=---------------------------265001916915724";
        let body = b"-----------------------------265001916915724\nContent-Disposition: form-data; name=\";zzzz\"; filename=\"test\"\nContent-Type: application/octet-stream\n\nhelloworld\n-----------------------------265001916915724--\n";
        let b = multipart_boundary(ct).expect("boundary");
        assert_eq!(b, &b"---------------------------265001916915724"[..]);
        let parts = multipart_parts(body, b);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name.as_deref(), Some(&b";zzzz"[..]));
        assert_eq!(parts[0].content, b"helloworld");
    }
}
