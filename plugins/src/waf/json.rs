//! JSON bodies read as named fields: every object key a name, every scalar a value at its
//! path (`messages[].content`: object keys from the root, array positions dropped, so that a
//! path names a field wherever it stands).
//!
//! A conversation holds a few dozen distinct paths thousands of times, so the walk names
//! each path once: a path is a number ([`PathId`]) the walk gives out the first time it meets
//! the path, and the caller learns the path's text then, and only then. The strings at the
//! paths a caller asks for are handed over as they stand in the document (escapes and all):
//! one that reads a little of a large string (the URLs in a prompt) does not decode it.

use std::borrow::Cow;
use std::collections::HashMap;

use super::scan::scan_string;

/// A path of the document being walked; the root (`""`) is 0, and each new path the next
/// number.
pub type PathId = u32;

/// A scalar of a JSON document (`true`, `false` and `null` are not handed over).
pub enum JsonScalar<'d, 't> {
    /// A string, its escapes decoded and bytes that are not UTF-8 replaced (U+FFFD).
    Text(&'t [u8]),
    /// A string at a path the visitor keeps as it stands.
    Escaped(EscapedText<'d, 't>),
    /// A number, as written.
    Number(&'d [u8]),
}

/// A string kept as it stands in the document, with what the one pass that found its end
/// learnt of it on the way ([`scan_string`]).
#[derive(Clone, Copy)]
pub struct EscapedText<'d, 't> {
    /// Between its quotes, escapes and all.
    pub text: &'d [u8],
    /// Where the colons in `text` are, in order.
    pub colons: &'t [usize],
    /// Whether `text` holds a `\u` or `\/` escape.
    pub spells: bool,
}

/// A path of the document being walked, by number and text.
#[derive(Clone, Copy)]
pub struct JsonPath<'p> {
    pub id: PathId,
    pub text: &'p str,
}

/// What [`walk`] reports, in document order.
pub trait JsonVisitor<'d> {
    /// A path met for the first time: whether the strings at it are kept as they stand
    /// ([`JsonScalar::Escaped`]).
    fn path(&mut self, path: JsonPath<'_>) -> bool;
    /// An object's key, decoded; `path` is the member's own (`messages[].role` for `role`).
    fn key(&mut self, path: JsonPath<'_>, key: &[u8]);
    /// A scalar at `path`.
    fn scalar(&mut self, path: JsonPath<'_>, value: JsonScalar<'d, '_>);
    /// At an item of an array that is a member of the root object (`messages[]`), starting
    /// at `at` in the document, `rest` being the document from there: the item's length if
    /// the visitor knows it already ([`judged`](super::judged)), and the walk then steps
    /// over it. The visitor answers only for bytes that are one complete JSON value.
    fn known_item(&mut self, _path: JsonPath<'_>, _at: usize, _rest: &'d [u8]) -> Option<usize> {
        None
    }
    /// Such an item read whole: it is `range` of the document.
    fn item_read(&mut self, _path: JsonPath<'_>, _range: std::ops::Range<usize>) {}
}

/// Nesting deeper than this is not followed (and is itself suspicious).
const MAX_DEPTH: usize = 64;

/// Walks a JSON document (an object or an array). A document cut short (a body inspected on
/// its first bytes) is read up to where it stops; `None` only for something that is not
/// JSON at all, bytes after the document included (they would reach the upstream unjudged).
pub fn walk<'d>(body: &'d [u8], visitor: &mut impl JsonVisitor<'d>) -> Option<()> {
    let mut walker = Walker {
        s: body,
        i: 0,
        paths: Vec::new(),
        colons: Vec::new(),
        root_is_object: false,
        visitor,
    };
    walker.skip_ws();
    if !matches!(walker.peek(), Some(b'{' | b'[')) {
        return None;
    }
    walker.root_is_object = walker.peek() == Some(b'{');
    let root = walker.new_path(String::new());
    match walker.value(root, 0) {
        Ok(()) => {
            walker.skip_ws();
            (walker.i == body.len()).then_some(())
        }
        Err(Stop::Eof) => Some(()),
        Err(Stop::Invalid) => None,
    }
}

/// A JSON document flattened into `(path, key, value)`, everything decoded: [`walk`] for
/// callers that want owned fields.
pub struct JsonField {
    pub path: String,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// Every field of a JSON document, or `None` if it is not JSON (as [`walk`] says).
pub fn json_fields(body: &[u8]) -> Option<Vec<JsonField>> {
    struct Collect(Vec<JsonField>);
    impl JsonVisitor<'_> for Collect {
        fn path(&mut self, _: JsonPath<'_>) -> bool {
            false
        }
        fn key(&mut self, path: JsonPath<'_>, key: &[u8]) {
            self.0.push(JsonField {
                path: path.text.to_string(),
                key: Some(String::from_utf8_lossy(key).into_owned()),
                value: None,
            });
        }
        fn scalar(&mut self, path: JsonPath<'_>, value: JsonScalar<'_, '_>) {
            let (JsonScalar::Text(v)
            | JsonScalar::Escaped(EscapedText { text: v, .. })
            | JsonScalar::Number(v)) = value;
            self.0.push(JsonField {
                path: path.text.to_string(),
                key: None,
                value: Some(String::from_utf8_lossy(v).into_owned()),
            });
        }
    }
    let mut collect = Collect(Vec::new());
    walk(body, &mut collect)?;
    Some(collect.0)
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

/// A string's text decoded, as UTF-8 (invalid bytes replaced); borrowed when it has no
/// escapes and is valid already, as most keys and short values are. `None` for a bad escape.
fn decoded(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if memchr::memchr(b'\\', raw).is_none() {
        // Keys and short values are ASCII nearly always: a word-at-a-time check is cheaper
        // than the UTF-8 decoder's.
        if raw.is_ascii() {
            return Some(Cow::Borrowed(raw));
        }
        return Some(match String::from_utf8_lossy(raw) {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        });
    }
    let bytes = json_unescape(raw)?;
    Some(Cow::Owned(match String::from_utf8(bytes) {
        Ok(text) => text.into_bytes(),
        Err(e) => String::from_utf8_lossy(e.as_bytes())
            .into_owned()
            .into_bytes(),
    }))
}

enum Stop {
    /// The input ended inside the document: what was read stands.
    Eof,
    Invalid,
}

/// A path the walk has met: its text, whether its strings are kept escaped, and the paths
/// under it.
struct PathNode {
    text: String,
    keep: bool,
    // Keys are the client's; a collision only costs a comparison: the quick hasher.
    members: HashMap<Box<[u8]>, PathId, foldhash::fast::RandomState>,
    items: Option<PathId>,
}

/// Path `id` as the visitor sees it. (A free function: the walker lends its paths and its
/// visitor at once.)
fn json_path(paths: &[PathNode], id: PathId) -> JsonPath<'_> {
    JsonPath {
        id,
        text: &paths[id as usize].text,
    }
}

struct Walker<'d, 'v, V> {
    s: &'d [u8],
    i: usize,
    paths: Vec<PathNode>,
    /// The colons of the last string kept as it stands, lent to the visitor with it.
    colons: Vec<usize>,
    /// The document is an object: its members' arrays' items are offered to
    /// [`JsonVisitor::known_item`].
    root_is_object: bool,
    visitor: &'v mut V,
}

impl<'d, V: JsonVisitor<'d>> Walker<'d, '_, V> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Stop> {
        self.skip_ws();
        match self.peek() {
            None => Err(Stop::Eof),
            Some(c) if c == b => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(Stop::Invalid),
        }
    }

    /// After a container's opening bracket: whether `close` follows at once (and is read).
    fn closes_at_once(&mut self, close: u8) -> bool {
        self.skip_ws();
        let closes = self.peek() == Some(close);
        if closes {
            self.i += 1;
        }
        closes
    }

    /// After an item of a container: a comma (another item follows) or `close` (the
    /// container ended), either read; whether it ended.
    fn ends_after_item(&mut self, close: u8) -> Result<bool, Stop> {
        self.skip_ws();
        match self.peek().ok_or(Stop::Eof)? {
            b',' => {
                self.i += 1;
                Ok(false)
            }
            c if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Stop::Invalid),
        }
    }

    fn new_path(&mut self, text: String) -> PathId {
        let id = self.paths.len() as PathId;
        let keep = self.visitor.path(JsonPath { id, text: &text });
        self.paths.push(PathNode {
            text,
            keep,
            members: HashMap::default(),
            items: None,
        });
        id
    }

    /// The path of member `key` (decoded) of the object at `parent`.
    fn member(&mut self, parent: PathId, key: &[u8]) -> PathId {
        if let Some(&id) = self.paths[parent as usize].members.get(key) {
            return id;
        }
        let parent_text = &self.paths[parent as usize].text;
        let key_text = String::from_utf8_lossy(key);
        let text = match parent_text.as_str() {
            "" => key_text.into_owned(),
            p => [p, ".", &key_text].concat(),
        };
        let id = self.new_path(text);
        self.paths[parent as usize].members.insert(key.into(), id);
        id
    }

    /// The path of the items of the array at `parent`.
    fn items(&mut self, parent: PathId) -> PathId {
        if let Some(id) = self.paths[parent as usize].items {
            return id;
        }
        let text = [self.paths[parent as usize].text.as_str(), "[]"].concat();
        let id = self.new_path(text);
        self.paths[parent as usize].items = Some(id);
        id
    }

    fn value(&mut self, path: PathId, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        self.skip_ws();
        match self.peek().ok_or(Stop::Eof)? {
            b'{' => {
                self.i += 1;
                if self.closes_at_once(b'}') {
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    let (raw, complete) = self.raw_string()?;
                    if !complete {
                        return Err(Stop::Eof);
                    }
                    let key = decoded(raw).ok_or(Stop::Invalid)?;
                    let child = self.member(path, &key);
                    self.visitor.key(json_path(&self.paths, child), &key);
                    self.expect(b':')?;
                    self.value(child, depth + 1)?;
                    if self.ends_after_item(b'}')? {
                        return Ok(());
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.closes_at_once(b']') {
                    return Ok(());
                }
                let item = self.items(path);
                let offered = depth == 1 && self.root_is_object;
                loop {
                    if offered {
                        self.offered_item(item, depth + 1)?;
                    } else {
                        self.value(item, depth + 1)?;
                    }
                    if self.ends_after_item(b']')? {
                        return Ok(());
                    }
                }
            }
            b'"' if self.paths[path as usize].keep => {
                let (text, complete, spells) = self.kept_string()?;
                let kept = EscapedText {
                    text,
                    colons: &self.colons,
                    spells,
                };
                let at = json_path(&self.paths, path);
                self.visitor.scalar(at, JsonScalar::Escaped(kept));
                if complete {
                    Ok(())
                } else {
                    Err(Stop::Eof)
                }
            }
            b'"' => {
                let (raw, complete) = self.raw_string()?;
                let text = decoded(raw).ok_or(Stop::Invalid)?;
                self.visitor
                    .scalar(json_path(&self.paths, path), JsonScalar::Text(&text));
                if complete {
                    Ok(())
                } else {
                    Err(Stop::Eof)
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
                        let at = json_path(&self.paths, path);
                        self.visitor.scalar(at, JsonScalar::Number(token));
                        Ok(())
                    }
                    _ if self.i == self.s.len() => Err(Stop::Eof),
                    _ => Err(Stop::Invalid),
                }
            }
        }
    }

    /// An item of a top-level array: stepped over if the visitor knows it, else read (and
    /// reported when whole).
    fn offered_item(&mut self, item: PathId, depth: usize) -> Result<(), Stop> {
        self.skip_ws();
        let start = self.i;
        let rest = &self.s[start..];
        let path = json_path(&self.paths, item);
        if let Some(len) = self.visitor.known_item(path, start, rest) {
            self.i = start + len.min(rest.len());
            return Ok(());
        }
        self.value(item, depth)?;
        self.visitor
            .item_read(json_path(&self.paths, item), start..self.i);
        Ok(())
    }

    /// A string as it stands between its quotes, and whether it was complete: a string cut
    /// short by the end of the input is kept as far as it goes.
    ///
    /// The end is the first quote after an even run of backslashes: quotes are rarer than
    /// escapes in the text people send (source code has a `\n` every line), so searching
    /// for quotes alone stops least.
    fn raw_string(&mut self) -> Result<(&'d [u8], bool), Stop> {
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

    /// A string kept as it stands (prose, mostly, and long): its text, whether it was
    /// complete (as [`Self::raw_string`]) and whether it spells, read in one pass that also
    /// notes its colons for the visitor.
    fn kept_string(&mut self) -> Result<(&'d [u8], bool, bool), Stop> {
        self.expect(b'"')?;
        let start = self.i;
        let scanned = scan_string(&self.s[start..], &mut self.colons);
        self.i = start + scanned.len + usize::from(scanned.closed);
        Ok((
            &self.s[start..start + scanned.len],
            scanned.closed,
            scanned.spells,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Records what a walk reports, keeping the strings at paths ending in `.content`.
    #[derive(Default)]
    struct Record {
        paths: Vec<String>,
        events: Vec<String>,
    }

    impl<'d> JsonVisitor<'d> for Record {
        fn path(&mut self, path: JsonPath<'_>) -> bool {
            assert_eq!(path.id as usize, self.paths.len(), "ids count up");
            self.paths.push(path.text.to_string());
            path.text.ends_with(".content")
        }
        fn key(&mut self, path: JsonPath<'_>, key: &[u8]) {
            assert_eq!(self.paths[path.id as usize], path.text);
            let key = String::from_utf8_lossy(key);
            self.events.push(format!("key {} {key}", path.text));
        }
        fn scalar(&mut self, path: JsonPath<'_>, value: JsonScalar<'d, '_>) {
            assert_eq!(self.paths[path.id as usize], path.text);
            let (kind, v) = match value {
                JsonScalar::Text(v) => ("text", v),
                JsonScalar::Escaped(EscapedText { text, .. }) => ("escaped", text),
                JsonScalar::Number(v) => ("number", v),
            };
            let v = String::from_utf8_lossy(v);
            self.events.push(format!("{kind} {} {v}", path.text));
        }
    }

    #[test]
    fn each_path_is_named_once_and_kept_strings_stay_escaped() {
        let doc = br#"{"messages":[{"role":"user","content":"a\nb"},{"role":"tool","content":"c\"d"}],"n":[1,{"r\u00f4le":"\u00e9"}]}"#;
        let mut record = Record::default();
        assert!(walk(doc, &mut record).is_some());
        assert_eq!(
            record.paths,
            [
                "",
                "messages",
                "messages[]",
                "messages[].role",
                "messages[].content",
                "n",
                "n[]",
                "n[].rôle"
            ]
        );
        assert_eq!(
            record.events,
            [
                "key messages messages",
                "key messages[].role role",
                "text messages[].role user",
                "key messages[].content content",
                r"escaped messages[].content a\nb",
                "key messages[].role role",
                "text messages[].role tool",
                "key messages[].content content",
                r#"escaped messages[].content c\"d"#,
                "key n n",
                "number n[] 1",
                "key n[].rôle rôle",
                "text n[].rôle é",
            ]
        );
    }

    #[test]
    fn bad_escapes_and_trailing_bytes_are_not_json() {
        for doc in [
            &br#"{"a":"\q"}"#[..],
            br#"{"a":"\u12zz"}"#,
            br#"{"a":1} {"b":2}"#,
            br#"{"a":1}x"#,
        ] {
            assert!(
                json_fields(doc).is_none(),
                "{:?}",
                String::from_utf8_lossy(doc)
            );
        }
        // Bytes that are not UTF-8 are replaced, not refused.
        let f = json_fields(b"{\"a\":\"\xff\"}").expect("json");
        assert_eq!(f[1].value.as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(json_fields(deep.as_bytes()).is_none());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(json_fields(ok.as_bytes()).is_some());
    }
}
