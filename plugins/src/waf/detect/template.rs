//! Server-side template injection: an expression inside one of the delimiters template
//! engines evaluate.
//!
//! Delimiters: `{{ }}` (Jinja, Twig, Handlebars, Go, Angular), `{% %}` (Jinja/Twig
//! statements), `${ }` (Freemarker, Velocity, EL, JS template literals, Mako), `#{ }`
//! (Ruby, JSF EL, Pug), `*{ }` and `@{ }` and `[[ ]]` (Thymeleaf), `<%= %>` (ERB, EJS, JSP),
//! `<#...>` (Freemarker directives), `#set(`/`#foreach(` (Velocity), `{php}` (Smarty).
//!
//! A placeholder is not an attack: "{{name}}" and "${price}" appear in every e-mail template
//! an operator pastes into a form. What counts is an *expression*: arithmetic between
//! operands (`7*7`), a call (`x()`), a Python dunder (`__class__`), a filter (`|attr`), a
//! subscript with a string (`['os']`), an attribute chain reaching into the runtime
//! (`request.application`, `T(java.lang.Runtime)`), or a statement keyword.

use super::Detection;

/// The longest text between delimiters read as an expression.
const MAX_EXPRESSION: usize = 4096;

/// Names that reach the runtime from a template (Python, Java, Ruby, PHP, JS).
const RUNTIME: &[&[u8]] = &[
    b"config",
    b"self",
    b"request",
    b"lipsum",
    b"cycler",
    b"joiner",
    b"namespace",
    b"range",
    b"runtime",
    b"getclass",
    b"forname",
    b"getruntime",
    b"exec",
    b"system",
    b"popen",
    b"eval",
    b"process",
    b"constructor",
    b"require",
    b"import",
    b"class",
    b"classloader",
    b"getmethod",
    b"invoke",
    b"newinstance",
    b"_self",
    b"_context",
    b"env",
    b"applicationscope",
    b"sessionscope",
    b"facescontext",
    b"smarty",
    b"file_get_contents",
    b"include",
];

/// Statement keywords after `{%` (Jinja/Twig) and `<#` (Freemarker).
const STATEMENTS: &[&[u8]] = &[
    b"import",
    b"include",
    b"set",
    b"for",
    b"if",
    b"macro",
    b"raw",
    b"extends",
    b"from",
    b"call",
    b"filter",
    b"with",
    b"assign",
    b"list",
    b"attempt",
    b"local",
    b"global",
    b"function",
    b"foreach",
    b"evaluate",
    b"define",
    b"debug",
    b"block",
];

/// Whether the text between delimiters is an expression rather than a placeholder.
fn expression(inner: &[u8]) -> Option<&'static str> {
    let s = inner.trim_ascii();
    if s.is_empty() || s.len() > MAX_EXPRESSION {
        return None;
    }
    // Arithmetic between two operands, one of them a number: `7*7`, `7 * '7'`, `a-1`.
    let token = |t: &[u8]| -> Vec<u8> {
        t.iter()
            .copied()
            .take_while(|c| !c.is_ascii_whitespace())
            .collect()
    };
    for (k, &b) in s.iter().enumerate() {
        if !matches!(b, b'*' | b'+' | b'/' | b'%' | b'-' | b'^') || k == 0 {
            continue;
        }
        let left: Vec<u8> = {
            let mut t = token(
                &s[..k]
                    .iter()
                    .rev()
                    .copied()
                    .skip_while(u8::is_ascii_whitespace)
                    .collect::<Vec<_>>(),
            );
            t.reverse();
            t
        };
        let right = token(s[k + 1..].trim_ascii_start());
        let operand = |t: &[u8]| {
            t.first().is_some_and(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'\'' | b'"' | b'(' | b')' | b']')
            })
        };
        let numeric = |t: &[u8]| t.iter().any(u8::is_ascii_digit);
        if operand(&left) && operand(&right) && (numeric(&left) || numeric(&right)) {
            return Some("arithmetic inside template delimiters");
        }
    }
    if memchr::memmem::find(s, b"__").is_some_and(|at| {
        s[at + 2..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count()
            > 1
    }) {
        return Some("a Python dunder inside template delimiters");
    }
    let lower = s.to_ascii_lowercase();
    let words: Vec<&[u8]> = lower
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .filter(|w| !w.is_empty())
        .collect();
    let calls = memchr::memchr_iter(b'(', s).any(|at| {
        at > 0 && (s[at - 1].is_ascii_alphanumeric() || s[at - 1] == b'_' || s[at - 1] == b']')
    });
    let runtime = words.iter().any(|w| RUNTIME.contains(w));
    if calls && (runtime || words.len() >= 2) {
        return Some("a call inside template delimiters");
    }
    if runtime && (s.contains(&b'.') || s.contains(&b'[') || s.contains(&b'|')) {
        return Some("an attribute chain into the runtime inside template delimiters");
    }
    if memchr::memchr(b'|', s).is_some_and(|at| {
        let f = s[at + 1..].trim_ascii_start();
        f.starts_with(b"attr")
            || f.starts_with(b"map")
            || f.starts_with(b"join")
            || f.starts_with(b"filter")
    }) {
        return Some("a filter inside template delimiters");
    }
    if s.windows(2)
        .any(|w| w[0] == b'[' && matches!(w[1], b'\'' | b'"'))
    {
        return Some("a string subscript inside template delimiters");
    }
    if memchr::memmem::find(&lower, b"t(")
        .is_some_and(|at| at == 0 || !lower[at - 1].is_ascii_alphanumeric())
        || memchr::memmem::find(&lower, b"new ").is_some()
    {
        return Some("a Java type or constructor inside template delimiters");
    }
    None
}

/// Pairs of opening and closing delimiters whose inside is an expression.
const PAIRS: &[(&[u8], &[u8])] = &[
    (b"{{", b"}}"),
    (b"${", b"}"),
    (b"#{", b"}"),
    (b"*{", b"}"),
    (b"@{", b"}"),
    (b"[[", b"]]"),
    (b"<%=", b"%>"),
    (b"<%", b"%>"),
    (b"{=", b"}"),
];

/// Finds a template expression in `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    if !input.iter().any(|b| matches!(b, b'{' | b'%' | b'[' | b'#')) {
        return None;
    }
    for (open, close) in PAIRS {
        let mut from = 0;
        while let Some(at) = memchr::memmem::find(&input[from..], open).map(|p| p + from) {
            let body = at + open.len();
            let window = &input[body..input.len().min(body + MAX_EXPRESSION)];
            let Some(end) = memchr::memmem::find(window, close).map(|p| p + body) else {
                from = body;
                continue;
            };
            if let Some(why) = expression(&input[body..end]) {
                return Some(Detection {
                    at,
                    len: end + close.len() - at,
                    why,
                });
            }
            from = end + close.len();
        }
    }
    // Statements: `{% import os %}`, `<#assign ...>`, `#set($x = ...)`, `{php}`.
    let lower = input.to_ascii_lowercase();
    for (open, need_close) in [
        (&b"{%"[..], &b"%}"[..]),
        (b"<#", b">"),
        (b"#", b"("),
        (b"{", b"}"),
    ] {
        for at in memchr::memmem::find_iter(&lower, open) {
            let rest = lower[at + open.len()..].trim_ascii_start();
            let word_len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            let word = &rest[..word_len];
            let after = &rest[word_len..];
            let statement = match open {
                b"#" => {
                    matches!(
                        word,
                        b"set" | b"foreach" | b"evaluate" | b"define" | b"include" | b"parse"
                    ) && after.first() == Some(&b'(')
                }
                b"{" => matches!(word, b"php") && after.first() == Some(&b'}'),
                _ => {
                    STATEMENTS.contains(&word)
                        && (after.first().is_some_and(|b| b.is_ascii_whitespace())
                            || after.starts_with(need_close))
                        && memchr::memmem::find(
                            &after[..after.len().min(MAX_EXPRESSION)],
                            need_close,
                        )
                        .is_some()
                }
            };
            if statement {
                return Some(Detection {
                    at,
                    len: open.len() + word_len,
                    why: "a template statement",
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn expressions_in_every_engine_are_found() {
        expect::finds(
            detect,
            &[
                "{{7*7}}",
                "{{ 7 * '7' }}",
                "{{''.__class__.__mro__[1].__subclasses__()}}",
                "{{config.items()}}",
                "{{request.application.__globals__}}",
                "{{self._TemplateReference__context.cycler}}",
                "{{ lipsum|attr('__globals__') }}",
                "${7*7}",
                "${T(java.lang.Runtime).getRuntime().exec('id')}",
                "#{7*7}",
                "*{T(java.lang.Runtime)}",
                "<%= 7*7 %>",
                "<%= system('id') %>",
                "{% import os %}",
                "{% for x in ().__class__.__base__.__subclasses__() %}",
                "<#assign ex=\"freemarker.template.utility.Execute\"?new()>${ex(\"id\")}",
                "#set($x = 7*7)$x",
                "{php}echo `id`;{/php}",
                "${{7*7}}",
                "[[${7*7}]]",
                "{{constructor.constructor('alert(1)')()}}",
                "${request.getClass()}",
            ],
        );
    }

    #[test]
    fn placeholders_and_prose_are_left_alone() {
        expect::passes(
            detect,
            &[
                "Hello {{name}}, your order {{order_id}} has shipped",
                "Total: ${price}",
                "{{ user.first_name }}",
                "#{count} items",
                "[[wiki link]]",
                "{% endif %}",
                "use {} for formatting",
                "50% off {today}",
                "#1 (best) seller",
                "<% if %>",
                "${HOME}/bin",
                "{{> partial}}",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &[
                "{{".repeat(50_000) + "}}",
                "{% if ".repeat(20_000),
                "${".repeat(50_000) + "}",
                "<#assign ".repeat(10_000),
            ],
        );
    }
}
