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

pub mod path;
pub mod shell;

/// The detectors a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SQL injection (libinjection).
    Sqli,
    /// HTML/JavaScript injection (libinjection).
    Xss,
    /// Unix shell, Windows cmd and PowerShell commands ([`shell`]).
    Shell,
    /// Path traversal ([`path`]).
    Path,
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
    Sqli,
    Xss,
    Shell(Box<shell::Dictionary>),
    Path,
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
            Kind::Sqli => Detector::Sqli,
            Kind::Xss => Detector::Xss,
            Kind::Path => Detector::Path,
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
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Detector::Sqli => Kind::Sqli,
            Detector::Xss => Kind::Xss,
            Detector::Shell(_) => Kind::Shell,
            Detector::Path => Kind::Path,
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
            Detector::Sqli => libinjectionrs::detect_sqli(input)
                .is_injection()
                .then(|| whole("libinjection reads SQL syntax that leaves a value")),
            Detector::Xss => libinjectionrs::detect_xss(input)
                .is_injection()
                .then(|| whole("libinjection reads HTML or script that runs")),
            Detector::Shell(dict) => shell::detect(input, dict),
            Detector::Path => path::detect(input),
        }
    }

    /// How the detector read `input`: its tokens, for `rampart rules test`.
    pub fn explain(&self, input: &[u8]) -> String {
        match self {
            Detector::Sqli => match libinjectionrs::detect_sqli(input).fingerprint {
                Some(f) => format!("libinjection fingerprint {f}"),
                None => "libinjection: no SQL fingerprint".to_string(),
            },
            Detector::Xss => "libinjection html5 tokens".to_string(),
            Detector::Shell(_) => shell::explain(input),
            Detector::Path => path::explain(input),
        }
    }
}
