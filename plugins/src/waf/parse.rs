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
