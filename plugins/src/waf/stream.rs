//! Bodies larger than one inspection window, judged a window at a time in bounded memory.
//!
//! A body is read chunk by chunk. Once a window's worth is held, [`BodySegments`] cuts it
//! where its format allows and turns the part before the cut into a document of its own,
//! which the WAF judges like a whole body; the part's bytes may then go on to the upstream.
//! Every byte is judged in the form it means:
//!
//! - JSON is cut between members or elements. The document for a part re-opens the
//!   objects and arrays around it (with their keys) and closes them after it, so a field
//!   keeps its path (`messages[].content`) and its profile. A string longer than a window
//!   is judged in windows that overlap by [`OVERLAP`] bytes, each under its own key.
//! - A form is cut after a `&`; a value longer than a window is judged in overlapping
//!   windows, each under its name.
//! - Other text is judged in overlapping windows.
//! - Formats whose parts only mean something whole (multipart, XML) cannot be cut: past a
//!   window they are refused ([`TooLarge`]).
//!
//! - So do OTLP exports, and protobuf of an unknown schema.
//!
//! A body no larger than a window is handed over as it came, with no copy. A larger one is
//! held in one buffer per window that begins with what re-opens the part: the document is
//! built around the body's bytes where they lie, and they go on from there, so each byte
//! is copied once, from the chunk it came in.

use std::ops::Range;

use bytes::Bytes;

/// Bytes a window carries over from the one before, so that an attack across a cut is
/// whole in one of them. Longer than any signature's reach.
pub const OVERLAP: usize = 4096;
/// Objects and arrays followed; deeper JSON is judged as text.
const MAX_DEPTH: usize = 64;
/// A key longer than this is not kept for re-opening: the document is judged as text.
const MAX_KEY: usize = 1024;
/// How far back a cut inside a string or form value may move to avoid splitting an escape.
const MAX_CUT_BACKOFF: usize = 4096;
/// Room a window's buffer leaves past the window: the chunk that fills it comes whole
/// (Pingora reads a body in chunks of at most 64 KiB), then the closers of the document.
const WINDOW_SLACK: usize = 64 * 1024 + MAX_DEPTH + 8;

use super::inspect::BodyFormat;
use super::json::escaped_at;
use super::judged::{self, KeptItem, LocatedItem};

/// A body that cannot be cut (a multipart, XML or OTLP body past one window, or a string made
/// only of escapes for longer than [`MAX_CUT_BACKOFF`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// A part of a body, ready to be judged: a document, and the body's bytes it covers, which
/// may go on once the document passed.
#[derive(Debug)]
pub struct Segment {
    /// The document is `buf[doc]`; the body's bytes are `buf[body]`, inside it or not.
    buf: Vec<u8>,
    doc: Range<usize>,
    body: Range<usize>,
    /// Where the body's bytes hold a `,` that the cut before left at the part's start: the
    /// document reads it as a space, and it goes on as it came.
    blanked: Option<usize>,
    /// Bytes that go on instead of `buf[body]`: a compressed body's encoded bytes, where
    /// the document was cut from the decoded ones.
    encoded: Option<Vec<u8>>,
    /// Kept items ([`judged`]) the body's reader found in the document, by where they start
    /// in it.
    located: Vec<LocatedItem>,
}

impl Segment {
    /// A part judged as it is.
    pub fn whole(release: Vec<u8>) -> Self {
        Self::prefix(release, usize::MAX)
    }

    /// A part of which the first `judged` bytes are judged.
    pub fn prefix(release: Vec<u8>, judged: usize) -> Self {
        let len = release.len();
        Segment {
            buf: release,
            doc: 0..judged.min(len),
            body: 0..len,
            blanked: None,
            encoded: None,
            located: Vec::new(),
        }
    }

    /// What to judge: a document in the body's own format.
    pub fn doc(&self) -> &[u8] {
        &self.buf[self.doc.clone()]
    }

    /// Kept items in [`Self::doc`], each checked byte for byte where it starts.
    pub fn located(&self) -> &[LocatedItem] {
        &self.located
    }

    /// How many bytes go on once the document passed.
    pub fn release_len(&self) -> usize {
        self.encoded.as_ref().map_or(self.body.len(), Vec::len)
    }

    /// The same document, releasing other bytes once it passed (a compressed body's encoded
    /// bytes, where the document was cut from the decoded ones). Moves, never copies.
    pub fn releasing(mut self, encoded: Vec<u8>) -> Self {
        self.encoded = Some(encoded);
        self
    }

    /// The bytes that go on, as they came.
    pub fn into_release(mut self) -> Bytes {
        if let Some(encoded) = self.encoded {
            return Bytes::from(encoded);
        }
        if let Some(at) = self.blanked {
            self.buf[at] = b',';
        }
        if self.body == (0..self.buf.len()) {
            return Bytes::from(self.buf);
        }
        Bytes::from(self.buf).slice(self.body)
    }

    /// What [`Segment::into_release`] gives, copied.
    fn released_copy(&self) -> Vec<u8> {
        if let Some(encoded) = &self.encoded {
            return encoded.clone();
        }
        let mut body = self.buf[self.body.clone()].to_vec();
        if let Some(at) = self.blanked {
            body[at - self.body.start] = b',';
        }
        body
    }
}

impl PartialEq for Segment {
    /// Two parts are equal when they judge the same document and release the same bytes.
    fn eq(&self, other: &Self) -> bool {
        self.doc() == other.doc() && self.released_copy() == other.released_copy()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A body without a type: decided on its first bytes, as the WAF reads it (JSON if it
    /// starts with `{`, a form if it holds `=`, text otherwise).
    Undecided,
    Json,
    Form,
    Text,
    Whole,
}

/// A body's way through the WAF, window by window.
#[derive(Debug)]
pub struct BodySegments {
    mode: Mode,
    window: usize,
    /// What opens the next document (the containers around its start, a form field's
    /// name, the overlap), then the body's bytes received and not yet released.
    pending: Vec<u8>,
    /// Where the body's bytes start in `pending`.
    head: usize,
    /// Body bytes still to come, when the body's length was announced.
    expected: Option<usize>,
    /// Whether a document was emitted yet (if not, the body may go whole as it came).
    cut_before: bool,
    json: JsonLexer,
    /// For a form value cut in windows: the field's name with its `=`.
    form_name: Option<Vec<u8>>,
}

impl BodySegments {
    /// How the body is cut follows how the WAF reads it ([`BodyFormat::of`] its type and
    /// path); `window` is how much is held before a cut.
    pub fn new(content_type: &[u8], path: &str, window: usize) -> Self {
        let mode = match BodyFormat::of(content_type, path) {
            BodyFormat::Form => Mode::Form,
            BodyFormat::Json => Mode::Json,
            BodyFormat::Text => Mode::Text,
            BodyFormat::Sniffed => Mode::Undecided,
            BodyFormat::Multipart
            | BodyFormat::Xml
            | BodyFormat::OtlpProtobuf(_)
            | BodyFormat::OtlpJson(_)
            | BodyFormat::Protobuf => Mode::Whole,
        };
        BodySegments {
            mode,
            window: window.max(2 * OVERLAP),
            pending: Vec::new(),
            head: 0,
            expected: None,
            cut_before: false,
            json: JsonLexer::default(),
            form_name: None,
        }
    }

    /// The body's announced length: a window's buffer is then sized once, not grown (and
    /// copied) as chunks come.
    pub fn announce_length(&mut self, length: Option<u64>) {
        self.expected = length.and_then(|n| usize::try_from(n).ok());
    }

    /// The body's bytes held.
    fn body(&self) -> &[u8] {
        &self.pending[self.head..]
    }

    /// Room for `more` bytes: the rest of the window at once when the body's length is
    /// known.
    fn reserve(&mut self, more: usize) {
        let room = self.pending.capacity() - self.pending.len();
        if room < more {
            let wanted = self.room_past(self.pending.len() - self.head, more);
            self.pending.reserve(wanted);
        }
    }

    /// What a window's buffer asks for past `held` body bytes: what is still to come, up to
    /// the window's end and its slack, when the body's length is known; `more` at least.
    fn room_past(&self, held: usize, more: usize) -> usize {
        match self.expected {
            Some(expected) => expected
                .saturating_sub(held)
                .min(self.window.saturating_sub(held) + WINDOW_SLACK)
                .max(more),
            None => more,
        }
    }

    /// Takes a chunk of the body; returns the parts that are ready to be judged.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Segment>, TooLarge> {
        if self.mode == Mode::Undecided {
            let first = chunk.iter().find(|b| !b.is_ascii_whitespace());
            self.mode = match first {
                Some(b'{' | b'[') => Mode::Json,
                _ if chunk.contains(&b'=') => Mode::Form,
                _ => Mode::Text,
            };
        }
        self.reserve(chunk.len());
        self.pending.extend_from_slice(chunk);
        // The lexer finds where JSON may be cut: a body that fits one window is never cut,
        // so it reads only once a window is full (from where it stopped, so nothing is read
        // twice). A megabyte of JSON read this way cost half a millisecond for nothing.
        if self.mode == Mode::Json && self.body().len() >= self.window {
            self.json.scan(&self.pending[self.head..]);
            if self.json.invalid {
                self.read_as_text();
            }
        }
        let mut out = Vec::new();
        while self.body().len() >= self.window {
            out.push(self.cut()?);
        }
        Ok(out)
    }

    /// The body ended: the last part.
    pub fn finish(&mut self) -> Option<Segment> {
        // Nothing is located before a cut: the lexer reads only once a window is full, and
        // a full window is always cut.
        if !self.cut_before {
            return Some(Segment::whole(std::mem::take(&mut self.pending)));
        }
        let held = self.body().len();
        (held > 0).then(|| self.emit(held, &[], Vec::new()))
    }

    /// JSON that cannot be cut, or is not JSON after all: judged as text from here on.
    fn read_as_text(&mut self) {
        self.mode = Mode::Text;
        self.json.located.clear();
    }

    /// Cuts what is pending where the format allows.
    fn cut(&mut self) -> Result<Segment, TooLarge> {
        match self.mode {
            Mode::Whole => Err(TooLarge),
            // Decided by the first push, before any cut.
            Mode::Text | Mode::Undecided => Ok(self.cut_text()),
            Mode::Form => self.cut_form(),
            Mode::Json => match self.cut_json() {
                Some(segment) => Ok(segment),
                None => {
                    self.read_as_text();
                    Ok(self.cut_text())
                }
            },
        }
    }

    /// The part of the body's first `at` bytes: its document is what re-opened the part,
    /// those bytes, and `closing`. The bytes after them go on in a buffer of their own,
    /// after `opening` (what re-opens the next part).
    fn emit(&mut self, at: usize, closing: &[u8], opening: Vec<u8>) -> Segment {
        let after_cut = self.cut_before;
        let split = self.head + at;
        let rest = self.pending.len() - split;
        if let Some(expected) = self.expected.as_mut() {
            *expected = expected.saturating_sub(at);
        }
        let mut next = opening;
        let head = next.len();
        next.reserve(rest + self.room_past(rest, 0));
        next.extend_from_slice(&self.pending[split..]);
        let mut buf = std::mem::replace(&mut self.pending, next);
        buf.truncate(split);
        let body = self.head..split;
        self.head = head;
        self.cut_before = true;
        let blanked = (after_cut && self.mode == Mode::Json)
            .then(|| separator_at(&buf[body.clone()]))
            .flatten()
            .map(|i| body.start + i);
        if let Some(at) = blanked {
            buf[at] = b' ';
        }
        buf.extend_from_slice(closing);
        Segment {
            doc: 0..buf.len(),
            located: self.json.take_located(at, body.start),
            body,
            blanked,
            encoded: None,
            buf,
        }
    }

    fn cut_text(&mut self) -> Segment {
        let body = self.body();
        let at = utf8_boundary_at_or_before(body, body.len());
        let at = if at == 0 { body.len() } else { at };
        let opening = overlap_of(&body[..at], |_, _| true);
        self.emit(at, &[], opening)
    }

    fn cut_form(&mut self) -> Result<Segment, TooLarge> {
        if let Some(amp) = memchr::memrchr(b'&', self.body()) {
            self.form_name = None;
            return Ok(self.emit(amp + 1, &[], Vec::new()));
        }
        // One value longer than a window: judged in windows under its name.
        // The field's name is at the start of what is pending (the pair began after the last
        // cut, at a `&`), unless an earlier window of this value found it.
        let body = &self.pending[self.head..];
        let name = self.form_name.take().unwrap_or_else(|| {
            let head = &body[..body.len().min(MAX_KEY)];
            memchr::memchr(b'=', head).map_or_else(Vec::new, |eq| head[..=eq].to_vec())
        });
        let at = safe_cut(body, body.len(), form_cut_ok).ok_or(TooLarge)?;
        let mut opening = name.clone();
        opening.extend_from_slice(&overlap_of(&body[..at], form_cut_ok));
        self.form_name = Some(name);
        Ok(self.emit(at, &[], opening))
    }

    /// `None` when the JSON cannot be cut (a key too long): it is judged as text then.
    fn cut_json(&mut self) -> Option<Segment> {
        let lexer = &mut self.json;
        let body = &self.pending[self.head..];
        if let Some(cut) = lexer.cut.take().filter(|c| c.at > 0) {
            let closing = closers(&lexer.stack[..cut.depth]);
            let opening = opening_between(&lexer.stack[..cut.depth]);
            lexer.rebase(cut.at);
            return Some(self.emit(cut.at, &closing, opening));
        }
        let (at, closing, reopen) = match lexer.state {
            // Inside one string longer than a window: cut in it, under its key.
            Lex::Str if !lexer.in_key => {
                let from = lexer.str_start.map_or(0, |s| s + 1);
                let at = string_cut_before(body, from, body.len());
                if at == 0 {
                    return None;
                }
                let mut closing = vec![b'"'];
                closing.extend_from_slice(&closers(&lexer.stack));
                let mut reopen = opening_inside(&lexer.stack);
                reopen.push(b'"');
                (at, closing, reopen)
            }
            // Between two tokens (whitespace padding): cut where the reading stands.
            Lex::Value | Lex::ValueOrClose | Lex::KeyOrClose | Lex::Key | Lex::Colon
                if lexer.scanned == body.len() =>
            {
                let in_object = lexer.stack.last().is_some_and(|f| f.object);
                let (closing, reopen) = match lexer.state {
                    // After `"key":`, the value is still to come.
                    Lex::Value if in_object => (b"null".to_vec(), opening_inside(&lexer.stack)),
                    // After `"key"`, the colon is still to come.
                    Lex::Colon => {
                        let mut reopen = opening_between(&lexer.stack);
                        if let Some(frame) = lexer.stack.last() {
                            reopen.push(b'"');
                            reopen.extend_from_slice(&frame.key);
                            reopen.push(b'"');
                        }
                        (b":null".to_vec(), reopen)
                    }
                    _ => (Vec::new(), opening_between(&lexer.stack)),
                };
                let mut closing = closing;
                closing.extend_from_slice(&closers(&lexer.stack));
                (body.len(), closing, reopen)
            }
            _ => return None,
        };
        let string_from = lexer.str_start.map_or(0, |s| s + 1);
        lexer.rebase(at);
        lexer.str_start = None;
        let mut opening = reopen;
        // A string cut in two: the next window starts with the end of this one.
        if lexer.state == Lex::Str {
            let released = &body[..at];
            let from = string_cut_after(released, string_from, at.saturating_sub(OVERLAP));
            opening.extend_from_slice(&released[from..]);
        }
        Some(self.emit(at, &closing, opening))
    }
}

/// Where a part that starts after a cut holds the separator the cut left behind.
fn separator_at(part: &[u8]) -> Option<usize> {
    let start = part.iter().position(|b| !b.is_ascii_whitespace())?;
    (part[start] == b',').then_some(start)
}

/// The last [`OVERLAP`] bytes of `part`, from a point where a cut is allowed.
fn overlap_of(part: &[u8], ok: impl Fn(&[u8], usize) -> bool) -> Vec<u8> {
    let mut start = part.len().saturating_sub(OVERLAP);
    while start < part.len() && !(ok(part, start) && is_char_start(part, start)) {
        start += 1;
    }
    part[start..].to_vec()
}

/// The latest point at or before `at` where a cut is allowed, not further back than
/// [`MAX_CUT_BACKOFF`].
fn safe_cut(bytes: &[u8], at: usize, ok: impl Fn(&[u8], usize) -> bool) -> Option<usize> {
    let floor = at.saturating_sub(MAX_CUT_BACKOFF);
    (floor..=at)
        .rev()
        .find(|&p| p > 0 && ok(bytes, p) && is_char_start(bytes, p))
}

fn is_char_start(bytes: &[u8], p: usize) -> bool {
    bytes.get(p).is_none_or(|b| b & 0xC0 != 0x80)
}

fn utf8_boundary_at_or_before(bytes: &[u8], at: usize) -> usize {
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&p| is_char_start(bytes, p))
        .unwrap_or(at)
}

/// The escapes (`\"`, `\u00e9`) of the JSON string text that starts at `from` (a point
/// outside any escape), as `(start, end)`, up to `until`.
fn escapes(s: &[u8], from: usize, until: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = from;
    std::iter::from_fn(move || {
        let b = i + memchr::memchr(b'\\', s.get(i..until)?)?;
        let len = if s.get(b + 1) == Some(&b'u') { 6 } else { 2 };
        i = b + len;
        Some((b, b + len))
    })
}

/// The latest point at or before `at` in JSON string text starting at `from` that splits
/// neither an escape nor a character.
fn string_cut_before(s: &[u8], from: usize, at: usize) -> usize {
    let mut cut = at;
    for (start, end) in escapes(s, from, at) {
        if end > at {
            cut = start;
        }
    }
    while cut > from && !is_char_start(s, cut) {
        cut -= 1;
    }
    cut
}

/// The first point at or after `at` in JSON string text starting at `from` that splits
/// neither an escape nor a character.
fn string_cut_after(s: &[u8], from: usize, at: usize) -> usize {
    let mut cut = at.max(from);
    for (start, end) in escapes(s, from, cut + 1) {
        if start < cut && cut < end {
            cut = end;
        }
    }
    while cut < s.len() && !is_char_start(s, cut) {
        cut += 1;
    }
    cut.min(s.len())
}

/// In a form value, a cut must not split a `%XX` escape.
fn form_cut_ok(bytes: &[u8], p: usize) -> bool {
    !bytes[p.saturating_sub(2)..p].contains(&b'%')
}

/// What re-opens the containers `stack` at a point between two of the innermost one's
/// members: `{"messages":[{`.
fn opening_between(stack: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, frame) in stack.iter().enumerate() {
        out.push(if frame.object { b'{' } else { b'[' });
        if i + 1 < stack.len() && frame.object {
            push_key(&mut out, &frame.key);
        }
    }
    out
}

/// What re-opens the containers `stack` inside the innermost one's current member:
/// `{"messages":[{"content":`.
fn opening_inside(stack: &[Frame]) -> Vec<u8> {
    let mut out = opening_between(stack);
    if let Some(frame) = stack.last().filter(|f| f.object) {
        push_key(&mut out, &frame.key);
    }
    out
}

fn push_key(out: &mut Vec<u8>, key: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(key);
    out.extend_from_slice(b"\":");
}

fn closers(stack: &[Frame]) -> Vec<u8> {
    stack
        .iter()
        .rev()
        .map(|f| if f.object { b'}' } else { b']' })
        .collect()
}

#[derive(Debug, Clone, Default)]
struct Frame {
    object: bool,
    /// The key of the member being read, as written (escapes kept).
    key: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Lex {
    #[default]
    Value,
    ValueOrClose,
    KeyOrClose,
    Key,
    Colon,
    AfterValue,
    Str,
    Scalar,
}

/// Where a document can end: after a value, between members of the container at `depth`.
#[derive(Debug, Clone, Copy)]
struct Cut {
    at: usize,
    depth: usize,
}

/// A JSON reader that keeps only what re-opening a cut needs: the open containers with
/// their current keys, and the last place a cut can go.
#[derive(Debug, Default)]
struct JsonLexer {
    state: Lex,
    stack: Vec<Frame>,
    in_key: bool,
    /// Where the current string's opening quote is, in `pending`.
    str_start: Option<usize>,
    /// How far `pending` was read.
    scanned: usize,
    cut: Option<Cut>,
    invalid: bool,
    /// The path of the items of the array being read (`messages[]`), made anew for each.
    item_path: String,
    /// Kept items stepped over and not yet released, by where they start.
    located: Vec<LocatedItem>,
}

impl JsonLexer {
    /// Positions move back by `by` when the bytes before them are released.
    fn rebase(&mut self, by: usize) {
        self.scanned -= by;
        self.str_start = self.str_start.and_then(|s| s.checked_sub(by));
    }

    /// The kept items found before `at`, now released, placed at `base` on; those after
    /// it move back by `at`.
    fn take_located(&mut self, at: usize, base: usize) -> Vec<LocatedItem> {
        let before = self.located.partition_point(|l| l.at < at);
        let mut taken: Vec<LocatedItem> = self.located.drain(..before).collect();
        for l in &mut taken {
            l.at += base;
        }
        for l in &mut self.located {
            l.at -= at;
        }
        taken
    }

    fn value_ended(&mut self, at: usize) {
        self.state = Lex::AfterValue;
        self.cut = Some(Cut {
            at,
            depth: self.stack.len(),
        });
    }

    /// At an item of an array that is a member of the root object (`messages[]`): the kept
    /// item it is, if the WAFs judged and kept it ([`judged`](super::judged)). A kept item
    /// is one complete JSON value, so it is stepped over as one: an agent's request past a
    /// window is mostly its conversation sent again, and reading its structure byte by byte
    /// cost more than judging what it stepped over did. Where it lies goes with the part, so
    /// the WAF's walk need not compare its bytes again.
    fn known_item(&mut self, rest: &[u8]) -> Option<KeptItem> {
        let [root, array] = self.stack.as_slice() else {
            return None;
        };
        // The walk names a path by its keys decoded: a key as written is the same only
        // when it holds no escape.
        if !root.object || array.object || !root.key.is_ascii() || root.key.contains(&b'\\') {
            return None;
        }
        let path = &mut self.item_path;
        path.clear();
        path.push_str(std::str::from_utf8(&root.key).ok()?);
        path.push_str("[]");
        judged::shared().kept_at(path, rest)
    }

    fn scan(&mut self, s: &[u8]) {
        let mut i = self.scanned;
        while i < s.len() && !self.invalid {
            let b = s[i];
            match self.state {
                Lex::Str => {
                    // The closing quote is the first one after an even run of backslashes:
                    // searching for quotes alone stops least (source code has a `\n` on
                    // every line). A cut inside a string never splits an escape, so the run
                    // before a quote is all in `s`, after the string's start.
                    let Some(off) = memchr::memchr(b'"', &s[i..]) else {
                        i = s.len();
                        break;
                    };
                    i += off;
                    let text_start = self.str_start.map_or(0, |q| q + 1);
                    if escaped_at(&s[text_start..], i - text_start) {
                        i += 1;
                        continue;
                    }
                    // The closing quote.
                    if self.in_key {
                        let start = self.str_start.map_or(i, |s| s + 1);
                        if i - start > MAX_KEY || self.str_start.is_none() {
                            self.invalid = true;
                            break;
                        }
                        if let Some(frame) = self.stack.last_mut() {
                            frame.key = s[start..i].to_vec();
                        }
                        self.in_key = false;
                        self.state = Lex::Colon;
                    } else {
                        self.value_ended(i + 1);
                    }
                    self.str_start = None;
                    i += 1;
                    continue;
                }
                Lex::Scalar => {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        i += 1;
                    } else {
                        self.value_ended(i);
                    }
                    continue;
                }
                _ => {}
            }
            if b.is_ascii_whitespace() {
                i += 1;
                continue;
            }
            if matches!(self.state, Lex::Value | Lex::ValueOrClose)
                && matches!(b, b'{' | b'[' | b'"')
            {
                if let Some(item) = self.known_item(&s[i..]) {
                    let at = i;
                    i += item.len();
                    self.located.push(LocatedItem { at, item });
                    self.value_ended(i);
                    continue;
                }
            }
            match (self.state, b) {
                (Lex::Value | Lex::ValueOrClose, b'{' | b'[') => {
                    if self.stack.len() >= MAX_DEPTH {
                        self.invalid = true;
                        break;
                    }
                    let object = b == b'{';
                    self.stack.push(Frame {
                        object,
                        key: Vec::new(),
                    });
                    self.state = if object {
                        Lex::KeyOrClose
                    } else {
                        Lex::ValueOrClose
                    };
                }
                (Lex::Value | Lex::ValueOrClose, b'"') => {
                    self.state = Lex::Str;
                    self.in_key = false;
                    self.str_start = Some(i);
                }
                (Lex::Value | Lex::ValueOrClose, b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                    self.state = Lex::Scalar;
                }
                (Lex::KeyOrClose | Lex::Key, b'"') => {
                    self.state = Lex::Str;
                    self.in_key = true;
                    self.str_start = Some(i);
                }
                (Lex::Colon, b':') => self.state = Lex::Value,
                (Lex::AfterValue, b',') if !self.stack.is_empty() => {
                    self.state = match self.stack.last() {
                        Some(f) if f.object => Lex::Key,
                        _ => Lex::Value,
                    };
                }
                (Lex::KeyOrClose | Lex::AfterValue, b'}')
                    if self.stack.last().is_some_and(|f| f.object) =>
                {
                    self.stack.pop();
                    self.value_ended(i + 1);
                }
                (Lex::ValueOrClose | Lex::AfterValue, b']')
                    if self.stack.last().is_some_and(|f| !f.object) =>
                {
                    self.stack.pop();
                    self.value_ended(i + 1);
                }
                _ => {
                    self.invalid = true;
                    break;
                }
            }
            i += 1;
        }
        self.scanned = i.min(s.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::json::json_fields;

    /// Every part of `body` fed in `chunk`-sized pieces with a small window.
    fn segments(ct: &[u8], body: &[u8], window: usize, chunk: usize) -> Vec<Segment> {
        announced(ct, body, window, chunk, None)
    }

    /// The same, the body's length announced as `length` (rightly or not).
    fn announced(
        ct: &[u8],
        body: &[u8],
        window: usize,
        chunk: usize,
        length: Option<u64>,
    ) -> Vec<Segment> {
        let mut s = BodySegments::new(ct, "/", window);
        s.window = window;
        s.announce_length(length);
        let mut out = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            out.extend(s.push(piece).expect("cuttable"));
        }
        out.extend(s.finish());
        out
    }

    fn released(parts: &[Segment]) -> Vec<u8> {
        parts.iter().flat_map(Segment::released_copy).collect()
    }

    /// (path, value) of every scalar in the documents, long values as they were judged.
    fn values(docs: &[Segment]) -> Vec<(String, String)> {
        docs.iter()
            .flat_map(|d| {
                json_fields(d.doc())
                    .unwrap_or_else(|| panic!("not JSON: {:?}", String::from_utf8_lossy(d.doc())))
            })
            .filter_map(|f| Some((f.path, f.value?)))
            .collect()
    }

    #[test]
    fn kept_items_are_stepped_over_as_the_values_they_are() {
        // Items (a conversation's messages) with escapes, nesting and brackets in strings,
        // in a body over several windows; once the judged store keeps them, the lexer steps
        // over them, and every part is what reading them gave.
        let messages: Vec<String> = (0..120)
            .map(|i| {
                let text = format!(
                    "line {i}: {{\"a\": [1, 2]}} \\\" ]}} {}",
                    "x = f(y);\n".repeat(20 + i % 7)
                );
                serde_json::json!({"role": "tool", "tool_call_id": format!("call_{i}"),
                    "content": [{"type": "text", "text": text}]})
                .to_string()
            })
            .collect();
        let body = format!(
            r#"{{"messages":[{}],"model":"m","tools":[{{"name":"a"}}]}}"#,
            messages.join(",")
        );
        let window = 2 * OVERLAP;
        let read = segments(b"application/json", body.as_bytes(), window, 700);
        assert!(read.len() > 2, "cut in several parts");
        assert!(
            read.iter().all(|p| p.doc().ends_with(b"]}")),
            "cut between items"
        );
        // Kept as a WAF keeps them: judged clean twice, under a judge no WAF has.
        let store = judged::shared();
        let judge = judged::new_judge(u64::MAX, 0x5eed);
        for _ in 0..2 {
            for m in &messages {
                store.judged_clean(judge, "messages[]", m.as_bytes());
            }
        }
        let at = body.find(&messages[5]).expect("in the body");
        assert_eq!(
            store
                .kept_at("messages[]", &body.as_bytes()[at..])
                .map(|k| k.len()),
            Some(messages[5].len())
        );
        let stepped = segments(b"application/json", body.as_bytes(), window, 700);
        assert_eq!(stepped, read);
        // Each part names the kept items in it, where they lie in its document.
        assert!(read.iter().all(|p| p.located().is_empty()));
        let mut located = 0;
        for part in &stepped {
            for l in part.located() {
                let there = &part.doc()[l.at..l.at + l.item.len()];
                assert!(messages.iter().any(|m| m.as_bytes() == there));
                located += 1;
            }
        }
        assert!(located > 60, "{located} items located");
        // Under another array, or not from an item's first byte, nothing is stepped over.
        assert!(store.kept_at("tools[]", &body.as_bytes()[at..]).is_none());
        assert!(store
            .kept_at("messages[]", &body.as_bytes()[at + 1..])
            .is_none());
    }

    #[test]
    fn a_body_within_one_window_goes_whole() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let parts = segments(b"application/json", body, 1 << 20, 7);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].doc(), body);
        assert_eq!(released(&parts), body);
    }

    #[test]
    fn json_is_cut_between_members_and_keeps_every_path() {
        let pad = "x".repeat(3000);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{pad}"}},{{"role":"user","content":"{pad}","name":"n"}}],"tools":[{{"function":{{"name":"f","description":"{pad}"}}}}],"user":"' OR 1=1--"}}"#
        );
        let whole = values(&[Segment::whole(body.clone().into_bytes())]);
        for chunk in [1, 7, 100, 5000] {
            let parts = segments(b"application/json", body.as_bytes(), 2 * OVERLAP, chunk);
            // Read in small pieces, the body is cut before its end (in one piece past the
            // window, it ends at the root's close: one part).
            assert!(
                chunk > 100 || parts.len() > 1,
                "chunk {chunk}: {} parts",
                parts.len()
            );
            assert_eq!(
                released(&parts),
                body.as_bytes(),
                "every byte released once"
            );
            let mut got = values(&parts);
            got.sort();
            let mut want = whole.clone();
            want.sort();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_string_longer_than_a_window_is_judged_in_overlapping_windows_under_its_path() {
        let attack = "' UNION SELECT password FROM users--";
        for offset in [100, 8190, 8192, 8200, 20_000, 33_000] {
            let mut prompt = "a".repeat(40_000);
            prompt.replace_range(offset..offset + attack.len(), attack);
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"{prompt}\n\u00e9\"q\""}}],"user":"u"}}"#
            );
            let parts = segments(b"application/json", body.as_bytes(), 2 * OVERLAP, 1000);
            assert!(parts.len() >= 4);
            assert_eq!(released(&parts), body.as_bytes());
            let got = values(&parts);
            assert!(
                got.iter()
                    .any(|(p, v)| p == "messages[].content" && v.contains(attack)),
                "the attack at {offset} is whole in one window under its path"
            );
            assert!(got
                .iter()
                .all(|(p, _)| p == "messages[].content" || p == "messages[].role" || p == "user"));
            assert!(got.contains(&("user".to_string(), "u".to_string())));
        }
    }

    #[test]
    fn cuts_never_split_an_escape_or_a_character() {
        // Escapes and multi-byte characters everywhere: each window must stay valid JSON.
        let unit = r#"é\"\\\u00e9\n"#;
        let body = format!(r#"{{"a":"{}"}}"#, unit.repeat(3000));
        let parts = segments(b"application/json", body.as_bytes(), 2 * OVERLAP, 333);
        assert!(parts.len() > 2);
        for p in &parts {
            assert!(std::str::from_utf8(p.doc()).is_ok());
        }
        assert!(values(&parts).iter().all(|(p, _)| p == "a"));
        assert_eq!(released(&parts), body.as_bytes());
    }

    #[test]
    fn a_form_is_cut_after_an_ampersand_and_a_long_value_under_its_name() {
        let pad = "p".repeat(20_000);
        let body = format!("pad={pad}&q=%27%20OR%201%3D1--&note=hello");
        let parts = segments(
            b"application/x-www-form-urlencoded",
            body.as_bytes(),
            2 * OVERLAP,
            999,
        );
        assert_eq!(released(&parts), body.as_bytes());
        let docs: Vec<String> = parts
            .iter()
            .map(|p| String::from_utf8_lossy(p.doc()).into_owned())
            .collect();
        assert!(
            docs.iter().skip(1).any(|d| d.starts_with("pad=")),
            "{docs:?}"
        );
        assert!(docs.iter().any(|d| d.contains("q=%27%20OR%201%3D1--")));
        for d in &docs {
            // No window ends inside a %XX escape.
            let tail = &d.as_bytes()[d.len().saturating_sub(2)..];
            assert!(!tail.contains(&b'%'), "{d:?}");
        }
    }

    #[test]
    fn text_windows_overlap_and_unsplittable_formats_are_refused() {
        let body = "a".repeat(30_000) + "<script>alert(1)</script>";
        let parts = segments(b"text/plain", body.as_bytes(), 2 * OVERLAP, 4096);
        assert_eq!(released(&parts), body.as_bytes());
        assert!(parts
            .iter()
            .any(|p| String::from_utf8_lossy(p.doc()).contains("<script>alert(1)</script>")));
        let mut multipart = BodySegments::new(b"multipart/form-data; boundary=x", "/", 2 * OVERLAP);
        assert_eq!(multipart.push(&vec![b'a'; 3 * OVERLAP]), Err(TooLarge));
        let mut small = BodySegments::new(b"multipart/form-data; boundary=x", "/", 2 * OVERLAP);
        assert_eq!(small.push(b"--x\r\n").map(|v| v.len()), Ok(0));
        assert!(small.finish().is_some());
    }

    #[test]
    fn invalid_json_is_judged_as_text_and_a_typeless_body_is_read_as_the_waf_reads_it() {
        let body = format!("{{\"a\": {} ]]] {}", "1".repeat(10), "z".repeat(20_000));
        let parts = segments(b"application/json", body.as_bytes(), 2 * OVERLAP, 100);
        assert_eq!(released(&parts), body.as_bytes());
        let form = format!("a={}&b=c", "x".repeat(20_000));
        let parts = segments(b"", form.as_bytes(), 2 * OVERLAP, 100);
        assert!(parts.iter().skip(1).any(|p| p.doc().starts_with(b"a=")));
    }

    /// A small generator of JSON documents: nested objects and arrays, long and short
    /// strings with escapes, numbers, literals, and whitespace padding.
    struct Gen(crate::test_rng::Xorshift);

    impl Gen {
        fn next(&mut self, n: u64) -> u64 {
            self.0.below(n)
        }

        fn json(&mut self, depth: usize, out: &mut String) {
            match (depth, self.next(6)) {
                (d, 0 | 1) if d < 5 => {
                    out.push('{');
                    for i in 0..self.next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        let pad = self.next(3) * self.next(2) * 3000;
                        out.push_str(&" ".repeat(pad as usize));
                        let key = self.next(50);
                        out.push_str(&format!("\"k{key}\":"));
                        self.json(depth + 1, out);
                    }
                    out.push('}');
                }
                (d, 2) if d < 5 => {
                    out.push('[');
                    for i in 0..self.next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.json(depth + 1, out);
                    }
                    out.push(']');
                }
                (_, 3) => {
                    let n = self.next(1000);
                    out.push_str(&format!("-{n}.5e3"));
                }
                (_, 4) => out.push_str(["true", "false", "null"][self.next(3) as usize]),
                _ => {
                    let unit = ["ab", "é", "\\\"", "\\u00e9", "\\\\", "\\n", " "];
                    out.push('"');
                    for _ in 0..self.next(3) * self.next(3000) {
                        out.push_str(unit[self.next(unit.len() as u64) as usize]);
                    }
                    out.push('"');
                }
            }
        }
    }

    #[test]
    fn every_part_of_generated_json_is_json_and_every_byte_is_released_once() {
        let mut gen = Gen(crate::test_rng::Xorshift(0x2545_f491_4f6c_dd1d));
        let mut cut_rounds = 0;
        for round in 0..600 {
            let mut body = String::from("{\"root\":");
            gen.json(0, &mut body);
            body.push('}');
            let chunk = 1 + gen.next(5000) as usize;
            // How a window's buffer is sized never changes what is cut: the length may be
            // announced, wrongly too.
            let len = body.len() as u64;
            let length = [None, Some(len), Some(len / 2), Some(len * 3)][round % 4];
            let parts = announced(
                b"application/json",
                body.as_bytes(),
                2 * OVERLAP,
                chunk,
                length,
            );
            assert_eq!(released(&parts), body.as_bytes(), "round {round}");
            cut_rounds += usize::from(parts.len() > 1);
            for p in &parts {
                assert!(
                    json_fields(p.doc()).is_some(),
                    "round {round}: part is not JSON: {:?}",
                    String::from_utf8_lossy(&p.doc()[..p.doc().len().min(300)])
                );
                assert!(
                    p.doc().len() <= 2 * OVERLAP + 8 * 1024 + 5000 + 2000,
                    "bounded"
                );
            }
            // Every path of the whole document is judged in some part.
            let whole = json_fields(body.as_bytes()).expect("generated JSON");
            let seen: std::collections::HashSet<String> = parts
                .iter()
                .flat_map(|p| json_fields(p.doc()).unwrap_or_default())
                .map(|f| f.path)
                .collect();
            for f in whole {
                assert!(
                    seen.contains(&f.path),
                    "round {round}: {} not judged",
                    f.path
                );
            }
        }
        assert!(
            cut_rounds > 80,
            "only {cut_rounds} documents were long enough to cut"
        );
    }
}
