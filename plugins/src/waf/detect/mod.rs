//! Detectors: each reads a field as one injection language would, and says whether the
//! field breaks out of a value into that language's syntax.
//!
//! Signature rules match spellings; a detector follows a grammar (libinjection's tokenizers
//! for SQL and HTML, this module's for the others), so that spellings no test showed are
//! found and prose that merely uses the language's words is not. A rule names its detector
//! (`detector = "shell"`), and carries the severity and label like any rule: detectors and
//! regexes add to one anomaly score.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

pub mod crlf;
pub mod graphql;
pub mod js;
pub mod ldap;
pub mod mail;
pub mod nosql;
pub mod path;
pub mod shell;
pub mod ssi;
pub mod template;
pub mod xxe;

/// The lines after line breaks in `input`: for each run of CR and LF, where the run starts
/// and where the next line's text starts (after the run and any spaces or tabs, which some
/// parsers fold away). A run is one break, so a value of a million newlines is read once.
fn new_lines(input: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    memchr::memchr2_iter(b'\r', b'\n', input)
        .filter(move |&brk| brk == 0 || !matches!(input[brk - 1], b'\r' | b'\n'))
        .map(move |brk| {
            let mut line = brk + 1;
            while input.get(line).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                line += 1;
            }
            while input.get(line).is_some_and(|b| matches!(b, b' ' | b'\t')) {
                line += 1;
            }
            (brk, line)
        })
}

/// The detectors a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SQL injection (libinjection).
    Sqli,
    /// HTML/JavaScript injection (libinjection).
    Xss,
    /// Unix shell, Windows cmd and PowerShell commands ([`shell`]).
    Shell,
    /// Path traversal ([`path`]).
    Path,
    /// LDAP filter injection ([`ldap`]).
    Ldap,
    /// NoSQL query operators in key position ([`nosql`]).
    Nosql,
    /// Server-side template expressions ([`template`]).
    Template,
    /// JavaScript sinks called without a tag ([`js`]).
    Js,
    /// Any header line after a line break ([`crlf`], where no line break belongs).
    Crlf,
    /// A redirecting, state-setting or recipient header line after a line break ([`crlf`],
    /// in text that may hold line breaks).
    CrlfText,
    /// IMAP and SMTP command lines ([`mail`]).
    Mail,
    /// XML external entities and entity expansion ([`xxe`]).
    Xxe,
    /// GraphQL introspection, alias batching and deep nesting ([`graphql`]).
    Graphql,
    /// Server-side include directives ([`ssi`]).
    Ssi,
}

/// Where a detector found its language, and why it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub at: usize,
    pub len: usize,
    pub why: &'static str,
}

/// A detector ready to run, with what its rule gave it.
pub enum Detector {
    Shell(Box<shell::Dictionary>),
    /// A detector that needs nothing from its rule.
    Plain(Kind),
}

impl Detector {
    /// Builds `kind` for a rule whose `words` table maps the detector's word classes to
    /// names of the rule file's `lists`.
    pub fn build(
        kind: Kind,
        words: &BTreeMap<String, Vec<String>>,
        lists: &HashMap<String, Vec<String>>,
    ) -> Result<Detector, String> {
        if kind != Kind::Shell && !words.is_empty() {
            return Err(format!("detector {kind:?} takes no words"));
        }
        Ok(match kind {
            Kind::Shell => {
                let mut dict = shell::Dictionary::default();
                for (class, names) in words {
                    for name in names {
                        let list = lists
                            .get(name)
                            .ok_or_else(|| format!("words.{class}: unknown list {name:?}"))?;
                        dict.add(class, list)?;
                    }
                }
                if words.is_empty() {
                    return Err(format!(
                        "detector shell needs `words`, a table of {} -> list names",
                        shell::CLASSES.join(", ")
                    ));
                }
                Detector::Shell(Box::new(dict))
            }
            kind => Detector::Plain(kind),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Detector::Shell(_) => Kind::Shell,
            Detector::Plain(kind) => *kind,
        }
    }

    /// Runs the detector over `input` (the form its rule's transform gives).
    pub fn detect(&self, input: &[u8]) -> Option<Detection> {
        let whole = |why| Detection {
            at: 0,
            len: input.len(),
            why,
        };
        match self {
            Detector::Shell(dict) => shell::detect(input, dict),
            Detector::Plain(kind) => match kind {
                Kind::Sqli => libinjectionrs::detect_sqli(input)
                    .is_injection()
                    .then(|| whole("libinjection reads SQL syntax that leaves a value")),
                Kind::Xss => libinjectionrs::detect_xss(input)
                    .is_injection()
                    .then(|| whole("libinjection reads HTML or script that runs")),
                Kind::Shell => None,
                Kind::Path => path::detect(input),
                Kind::Ldap => ldap::detect(input),
                Kind::Nosql => nosql::detect(input),
                Kind::Template => template::detect(input),
                Kind::Js => js::detect(input),
                Kind::Crlf => crlf::detect(input, crlf::Scope::AnyHeader),
                Kind::CrlfText => crlf::detect(input, crlf::Scope::Names),
                Kind::Mail => mail::detect(input),
                Kind::Xxe => xxe::detect(input),
                Kind::Graphql => graphql::detect(input),
                Kind::Ssi => ssi::detect(input),
            },
        }
    }

    /// How the detector read `input`: its tokens, for `rampart rules test`.
    pub fn explain(&self, input: &[u8]) -> String {
        match self {
            Detector::Shell(_) => shell::explain(input),
            Detector::Plain(Kind::Sqli) => match libinjectionrs::detect_sqli(input).fingerprint {
                Some(f) => format!("libinjection fingerprint {f}"),
                None => "libinjection: no SQL fingerprint".to_string(),
            },
            Detector::Plain(Kind::Path) => path::explain(input),
            // The others match one construct: the excerpt is their reading.
            Detector::Plain(_) => String::from_utf8_lossy(input).into_owned(),
        }
    }
}

/// Assertions the detectors' tests share: every attack found, every benign text left
/// alone, hostile input read in bounded time (each in the `decoded` form rules give them).
#[cfg(test)]
pub(crate) mod expect {
    use super::Detection;
    use crate::waf::decode::decoded;

    pub fn finds(detect: impl Fn(&[u8]) -> Option<Detection>, attacks: &[&str]) {
        for attack in attacks {
            let form = decoded(attack.as_bytes());
            assert!(detect(&form).is_some(), "missed {attack:?}");
        }
    }

    pub fn passes(detect: impl Fn(&[u8]) -> Option<Detection>, texts: &[&str]) {
        for text in texts {
            let form = decoded(text.as_bytes());
            assert!(detect(&form).is_none(), "refused {text:?}");
        }
    }

    /// Runs `detect` over each input (large, repetitive): it must return, whatever it says.
    pub fn bounded(detect: impl Fn(&[u8]) -> Option<Detection>, inputs: &[String]) {
        for input in inputs {
            let _ = detect(input.as_bytes());
        }
    }
}
