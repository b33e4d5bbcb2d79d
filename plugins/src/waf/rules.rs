//! Signature rules: the TOML format operators edit, and its compiled form.
//!
//! One file holds one group:
//!
//! ```toml
//! [group]
//! id = "sqli"
//! aws = "SQLi"            # labels become SQLi_QUERYARGUMENTS, SQLi_BODY, SQLi_COOKIE...
//!
//! [[rule]]
//! id = "sqli-tautology"
//! description = "boolean tautology"
//! paranoia = 1
//! severity = "critical"
//! targets = ["args", "arg_names", "cookies"]
//! transform = "norm"
//! regex = '''\bor\s+\d+\s*=\s*\d+'''
//! ```
//!
//! A rule has exactly one matcher: `regex`, `phrases` (with `boundary`), `detector`
//! (`sqli`, `xss`), `max_bytes` (a size limit), `missing` (the targets' headers are absent) or
//! `methods`.

use std::collections::{BTreeMap, HashMap};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::{Regex, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use thiserror::Error;

use super::detect::{self, Detector};
use super::inspect::{Field, Inspection, Source, Target, Transform, TRANSFORMS};
use super::literal_screen;
use super::memo::{FieldHit, FieldMemo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// CRS anomaly scores.
    pub fn score(self) -> u32 {
        match self {
            Severity::Critical => 5,
            Severity::Error => 4,
            Severity::Warning => 3,
            Severity::Notice => 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    group: GroupSpec,
    /// Word lists a regex can use as `{{name}}` (an alternation of the escaped words).
    #[serde(default)]
    lists: HashMap<String, Vec<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    id: String,
    /// Prefix of the AWS-style label; the matched part is appended.
    aws: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default = "one")]
    paranoia: u8,
    severity: Severity,
    targets: Vec<Target>,
    /// Limits `headers` and `header_names` targets to these headers (lowercase).
    #[serde(default)]
    header_names: Vec<String>,
    #[serde(default)]
    transform: Transform,
    /// A fixed label instead of `<group aws>_<PART>`.
    label: Option<String>,
    regex: Option<String>,
    phrases: Option<Vec<String>>,
    /// With `phrases`: the phrase must not touch a letter, digit or `_` on either side.
    #[serde(default)]
    boundary: bool,
    detector: Option<detect::Kind>,
    /// With `detector`: the detector's word classes, each a list of `lists` names
    /// (`words = { strong = ["unix_strong"], weak = ["unix_weak"] }`).
    #[serde(default)]
    words: BTreeMap<String, Vec<String>>,
    max_bytes: Option<usize>,
    #[serde(default)]
    missing: bool,
    methods: Option<Vec<String>>,
    /// With `regex`: the rule matches a field the regex does NOT match (an allow-list).
    #[serde(default)]
    negate: bool,
    /// With `missing` or `methods`: only when the request has a body.
    #[serde(default)]
    body: bool,
}

fn one() -> u8 {
    1
}

#[derive(Debug, Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RuleError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

enum Matcher {
    Pattern,
    /// A field the regex does not match.
    NotPattern(regex::bytes::Regex),
    Detector(Detector),
    MaxBytes(usize),
    Missing {
        with_body: bool,
    },
    Methods {
        methods: Vec<String>,
        with_body: bool,
    },
}

pub struct Rule {
    pub id: String,
    pub group: String,
    pub description: String,
    pub paranoia: u8,
    pub severity: Severity,
    targets: Vec<Target>,
    header_names: Vec<String>,
    transform: Transform,
    label: Option<String>,
    aws: Option<String>,
    matcher: Matcher,
}

impl Rule {
    fn reads(&self, field: &Field) -> bool {
        self.targets.contains(&field.target)
            && (self.header_names.is_empty()
                || !matches!(field.target, Target::Headers | Target::HeaderNames)
                || self.header_names.iter().any(|h| *h == *field.name))
    }

    /// Every name `overrides` and `exclude_rules` may give this rule by: its id, its group
    /// and its labels (an AWS-style rule has one per source).
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.id.clone(), self.group.clone()];
        match (&self.label, &self.aws) {
            (Some(l), _) => names.push(l.clone()),
            (None, Some(prefix)) => names.extend(
                Source::ALL
                    .iter()
                    .map(|s| format!("{prefix}_{}", s.aws_suffix())),
            ),
            (None, None) => {}
        }
        names
    }

    /// The AWS-style label for a match in `source`.
    pub fn label(&self, source: Source) -> String {
        match (&self.label, &self.aws) {
            (Some(l), _) => l.clone(),
            (None, Some(prefix)) => format!("{prefix}_{}", source.aws_suffix()),
            (None, None) => self.id.clone(),
        }
    }
}

/// A phrase's owner: the rule, and whether the phrase must stand on word boundaries.
type PhraseOwner = (usize, bool);

/// Which of a rule set's rules are run, by index (see [`RuleSet::active`]).
#[derive(Debug)]
pub struct ActiveRules(Vec<bool>);

impl ActiveRules {
    fn contains(&self, rule: usize) -> bool {
        self.0.get(rule).copied().unwrap_or(false)
    }
}

/// What a rule set found in a request.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Every rule that matched, once each (see [`RuleSet::evaluate`]).
    pub matches: Vec<RuleMatch>,
    /// Every rule that matched a field of the body, wherever else it matched first: once
    /// for the URLs found in prose, once for the other fields. Whether the body holds
    /// nothing a route counts ([`judged`](super::judged) keeps only such bodies' items).
    pub body_hits: Vec<BodyHit>,
}

/// A rule that matched a field of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHit {
    pub rule: usize,
    /// In a URL found in prose (which a route may not count).
    pub in_url: bool,
}

/// The places a rule matches, as bits: in a URL found in prose, or elsewhere.
const IN_URL: u8 = 1;
const ELSEWHERE: u8 = 2;

fn place_of(field: &Field) -> u8 {
    if field.target == Target::Urls {
        IN_URL
    } else {
        ELSEWHERE
    }
}

/// The first of `fields`, with the place of every field of the body among them noted in
/// `places`.
fn note_body<'f>(places: &mut u8, fields: impl Iterator<Item = &'f Field>) -> Option<&'f Field> {
    let mut first = None;
    for f in fields {
        first = first.or(Some(f));
        if f.source == Source::Body {
            *places |= place_of(f);
        }
        if *places == IN_URL | ELSEWHERE {
            break;
        }
    }
    first
}

/// Which fields some rule of a compiled set reads: a set no rule of which reads a field is
/// not run over it (nor is the field's form for that set computed).
#[derive(Default)]
struct Readers {
    /// The targets some rule of the set reads whatever the field's name, one bit each.
    targets: u16,
    /// Rules that read headers by name, one per distinct (targets, names).
    by_name: Vec<usize>,
}

impl Readers {
    fn any_reads(&self, rules: &[Rule], field: &Field) -> bool {
        self.targets & target_bit(field.target) != 0
            || self.by_name.iter().any(|&i| rules[i].reads(field))
    }
}

fn target_bit(t: Target) -> u16 {
    1 << t as u16
}

/// Rules compiled so that one pass over a field tests all of them.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    regexes: Vec<PatternSet>,
    /// Every transform's regexes in one set, for fields where several transforms leave the
    /// same bytes (plain text is its own decoded form; lowercase words their own norm): one
    /// pass over those bytes then stands for several. `None` with fewer than two transforms.
    union: Option<UnionSet>,
    phrases: Vec<PhraseSet>,
    detectors: Vec<usize>,
    others: Vec<usize>,
    /// Tokens without which libinjection cannot find SQL injection: the detector (slow)
    /// runs only on fields that contain one.
    sqli_prefilter: Option<Regex>,
    xss_prefilter: Option<Regex>,
}

/// Quotes, comments, operators and SQL words: every libinjection SQLi fingerprint has one.
const SQLI_TOKENS: &[&str] = &[
    "'",
    "\"",
    "`",
    ";",
    "--",
    "#",
    "/*",
    "=",
    "(",
    "<",
    ">",
    "|",
    "&",
    "!",
    "@",
    "+",
    "*",
    " or ",
    " and ",
    " xor ",
    " div ",
    " mod ",
    "union",
    "select",
    "insert",
    "update",
    "delete",
    "drop",
    "exec",
    "sleep",
    "benchmark",
    "having",
    "order by",
    "group by",
    " like ",
    "rlike",
    "regexp",
    "between",
    " case ",
    " when ",
    " null",
    " true",
    " false",
    " not ",
    " is ",
    "waitfor",
    "declare",
    "procedure",
    "into ",
    "from ",
    "where ",
    "limit ",
    "offset ",
    "sound",
];
/// Markup characters and script words: libinjection's XSS detector needs one of them.
const XSS_TOKENS: &[&str] = &[
    "<",
    ">",
    "=",
    "\"",
    "'",
    "`",
    "javascript",
    "vbscript",
    "data:",
    "expression",
];

/// One transform's regexes: the set that tests them all in one pass, the rule each pattern
/// belongs to, and one rule per distinct way of choosing fields (to decide quickly whether
/// the set applies).
struct PatternSet {
    transform: Transform,
    set: RegexSet,
    owners: Vec<usize>,
    readers: Readers,
}

/// The regexes of every transform in one set; a match counts only for the rules whose
/// transform gave the bytes searched.
struct UnionSet {
    set: RegexSet,
    owners: Vec<usize>,
}

/// One transform's phrases: the automaton that finds them all (overlapping, for the word
/// boundary checks), and for each phrase its rule and boundary flag.
struct PhraseSet {
    transform: Transform,
    automaton: AhoCorasick,
    owners: Vec<PhraseOwner>,
    readers: Readers,
    /// Most fields hold no phrase; this finds that out without walking the automaton.
    screen: Option<Regex>,
}

/// One rule that matched, with where.
#[derive(Debug, Clone)]
pub struct RuleMatch {
    pub rule: usize,
    pub source: Source,
    pub target: Target,
    pub field: String,
    /// A short excerpt of what matched (decoded form), for the explain output and logs.
    pub excerpt: String,
    /// For a detector's match: why it counts, and how the detector read the excerpt.
    pub why: Option<String>,
}

/// The most of a detector's token stream an explanation shows.
const EXPLAIN_CHARS: usize = 400;

const EXCERPT: usize = 80;

fn excerpt(bytes: &[u8], at: usize, len: usize) -> String {
    let start = at.saturating_sub(10);
    let end = (at + len + 10).min(bytes.len()).min(start + EXCERPT);
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

impl RuleSet {
    /// Parses and compiles rule files (`(file name, text)`), in order.
    pub fn compile(files: &[(String, String)]) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::new();
        let mut patterns: HashMap<Transform, (Vec<String>, Vec<usize>)> = HashMap::new();
        let mut phrase_lists: HashMap<Transform, (Vec<String>, Vec<PhraseOwner>)> = HashMap::new();
        let (mut detectors, mut others) = (Vec::new(), Vec::new());
        let mut ids = HashMap::new();
        for (file, text) in files {
            let err = |offset: Option<usize>, message: String| RuleError {
                file: file.clone(),
                line: offset.map(|o| crate::registry::line_at(text, o)),
                message,
            };
            let parsed: RuleFile = toml::from_str(text)
                .map_err(|e| err(e.span().map(|s| s.start), e.message().to_string()))?;
            for spanned in parsed.rules {
                let at = Some(spanned.span().start);
                let spec = spanned.into_inner();
                let index = rules.len();
                if let Some(previous) = ids.insert(spec.id.clone(), file.clone()) {
                    return Err(err(
                        at,
                        format!("rule id {:?} is also defined in {previous}", spec.id),
                    ));
                }
                if !(1..=4).contains(&spec.paranoia) {
                    return Err(err(
                        at,
                        format!("rule {}: paranoia must be 1 to 4", spec.id),
                    ));
                }
                if spec.targets.is_empty() {
                    return Err(err(at, format!("rule {}: no targets", spec.id)));
                }
                let kinds = [
                    spec.regex.is_some(),
                    spec.phrases.is_some(),
                    spec.detector.is_some(),
                    spec.max_bytes.is_some(),
                    spec.missing,
                    spec.methods.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    return Err(err(at, format!("rule {}: needs exactly one of regex, phrases, detector, max_bytes, missing, methods", spec.id)));
                }
                let matcher = if let Some(re) = &spec.regex {
                    let re = &expand_lists(re, &parsed.lists)
                        .map_err(|m| err(at, format!("rule {}: {m}", spec.id)))?;
                    let compiled = regex::bytes::Regex::new(re)
                        .map_err(|e| err(at, format!("rule {}: bad regex: {e}", spec.id)))?;
                    if spec.negate {
                        others.push(index);
                        Matcher::NotPattern(compiled)
                    } else {
                        let entry = patterns.entry(spec.transform).or_default();
                        entry.0.push(re.clone());
                        entry.1.push(index);
                        Matcher::Pattern
                    }
                } else if let Some(list) = &spec.phrases {
                    if list.iter().any(String::is_empty) {
                        return Err(err(at, format!("rule {}: empty phrase", spec.id)));
                    }
                    let entry = phrase_lists.entry(spec.transform).or_default();
                    for p in list {
                        // The normalised forms are lowercase: so are their phrases.
                        let p = if matches!(spec.transform, Transform::Norm | Transform::Cmdline) {
                            p.to_lowercase()
                        } else {
                            p.clone()
                        };
                        entry.0.push(p);
                        entry.1.push((index, spec.boundary));
                    }
                    Matcher::Pattern
                } else if let Some(kind) = spec.detector {
                    let d = Detector::build(kind, &spec.words, &parsed.lists)
                        .map_err(|m| err(at, format!("rule {}: {m}", spec.id)))?;
                    detectors.push(index);
                    Matcher::Detector(d)
                } else if let Some(n) = spec.max_bytes {
                    others.push(index);
                    Matcher::MaxBytes(n)
                } else if spec.missing {
                    others.push(index);
                    Matcher::Missing {
                        with_body: spec.body,
                    }
                } else {
                    others.push(index);
                    Matcher::Methods {
                        methods: spec
                            .methods
                            .unwrap_or_default()
                            .iter()
                            .map(|m| m.to_ascii_uppercase())
                            .collect(),
                        with_body: spec.body,
                    }
                };
                rules.push(Rule {
                    id: spec.id,
                    group: parsed.group.id.clone(),
                    description: spec.description,
                    paranoia: spec.paranoia,
                    severity: spec.severity,
                    targets: spec.targets,
                    header_names: spec
                        .header_names
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    transform: spec.transform,
                    label: spec.label,
                    aws: parsed.group.aws.clone(),
                    matcher,
                });
            }
        }
        let mut regexes = Vec::new();
        let (mut all_patterns, mut all_owners) = (Vec::new(), Vec::new());
        for t in TRANSFORMS {
            if let Some((pats, owners)) = patterns.remove(&t) {
                let set = regex_set(&pats)?;
                all_patterns.extend_from_slice(&pats);
                all_owners.extend_from_slice(&owners);
                let readers = readers_of(&rules, owners.iter().copied());
                regexes.push(PatternSet {
                    transform: t,
                    set,
                    owners,
                    readers,
                });
            }
        }
        let union = if regexes.len() > 1 {
            Some(UnionSet {
                set: regex_set(&all_patterns)?,
                owners: all_owners,
            })
        } else {
            None
        };
        let mut phrases = Vec::new();
        for t in TRANSFORMS {
            if let Some((list, owners)) = phrase_lists.remove(&t) {
                let ac = AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .ascii_case_insensitive(matches!(t, Transform::Raw | Transform::Decoded))
                    .build(&list)
                    .map_err(|e| RuleError {
                        file: "rules".into(),
                        line: None,
                        message: format!("compiling phrases: {e}"),
                    })?;
                let readers = readers_of(&rules, owners.iter().map(|(i, _)| *i));
                let screen =
                    literal_screen(&list, matches!(t, Transform::Raw | Transform::Decoded));
                phrases.push(PhraseSet {
                    transform: t,
                    automaton: ac,
                    owners,
                    readers,
                    screen,
                });
            }
        }
        Ok(RuleSet {
            rules,
            regexes,
            union,
            phrases,
            detectors,
            others,
            sqli_prefilter: literal_screen(SQLI_TOKENS, false),
            xss_prefilter: literal_screen(XSS_TOKENS, false),
        })
    }

    /// The rules a WAF runs: those at or below `paranoia` that `off` does not switch off.
    /// Fixed by the WAF's configuration, so worked out once when it is built, not per request.
    pub fn active(&self, paranoia: u8, off: impl Fn(&Rule) -> bool) -> ActiveRules {
        ActiveRules(
            self.rules
                .iter()
                .map(|r| r.paranoia <= paranoia && !off(r))
                .collect(),
        )
    }

    /// Every `active` rule that matches, once each; a rule that matched a URL found in prose
    /// may come a second time, for where it matched first outside prose. A route may switch
    /// a rule off for prose's URLs alone (a link in a prompt is not fetched): its hit there
    /// must not stand for, and hide, a hit in a field the route does judge.
    pub fn evaluate(
        &self,
        insp: &Inspection,
        active: &ActiveRules,
        memo: Option<&FieldMemo>,
    ) -> Evaluation {
        // Per rule, the places it matched already (reported once each); and the same for
        // the body's fields alone, every place counted.
        let mut hit = vec![0u8; self.rules.len()];
        let mut in_body = vec![0u8; self.rules.len()];
        let mut out = Vec::new();
        let mut found = Vec::new();
        for field in &insp.fields {
            found.clear();
            match memo {
                Some(memo) => memo.hits(field, &mut found, |found| {
                    self.field_hits(field, active, found)
                }),
                None => self.field_hits(field, active, &mut found),
            }
            let place = place_of(field);
            for h in &found {
                let i = h.rule as usize;
                if field.source == Source::Body {
                    in_body[i] |= place;
                }
                if hit[i] & place == 0 {
                    hit[i] |= place;
                    let form = field.form(self.rules[i].transform);
                    out.push(RuleMatch {
                        rule: i,
                        source: field.source,
                        target: field.target,
                        field: field.name.to_string(),
                        excerpt: excerpt(form, h.at as usize, h.len as usize),
                        why: self.why(i, form, h),
                    });
                }
            }
        }
        for &i in &self.others {
            if hit[i] != 0 || !active.contains(i) {
                continue;
            }
            let rule = &self.rules[i];
            let has_body = insp.body_len > 0 || insp.chunked;
            let matched: Option<(Source, Target, String)> = match &rule.matcher {
                // Every target is read, not only up to the first that matches: a body
                // field over the limit must be noted even when an aggregate matched first.
                Matcher::MaxBytes(limit) => rule
                    .targets
                    .iter()
                    .map(|t| {
                        let aggregate = match t {
                            Target::QueryString => Some((insp.query_len, Source::Query)),
                            Target::Cookies => Some((insp.cookie_len, Source::Cookie)),
                            Target::Body => Some((insp.body_len, Source::Body)),
                            Target::Path => Some((insp.path_len, Source::UriPath)),
                            _ => None,
                        };
                        match aggregate {
                            Some((len, source)) => (len > *limit)
                                .then(|| (source, *t, format!("{len} bytes > {limit}"))),
                            // Names, values and headers: each one on its own.
                            None => note_body(
                                &mut in_body[i],
                                insp.fields.iter().filter(|f| {
                                    f.target == *t && rule.reads(f) && f.raw().len() > *limit
                                }),
                            )
                            .map(|f| {
                                (
                                    f.source,
                                    *t,
                                    format!("{}: {} bytes > {limit}", f.name, f.raw().len()),
                                )
                            }),
                        }
                    })
                    .fold(None, |first, found| first.or(found)),
                Matcher::NotPattern(re) => note_body(
                    &mut in_body[i],
                    insp.fields
                        .iter()
                        .filter(|f| rule.reads(f) && !re.is_match(f.form(rule.transform))),
                )
                .map(|f| {
                    (
                        f.source,
                        f.target,
                        excerpt(f.form(rule.transform), 0, EXCERPT),
                    )
                }),
                Matcher::Missing { with_body } => rule
                    .header_names
                    .iter()
                    .filter(|_| !with_body || has_body)
                    .find(|h| {
                        !insp
                            .fields
                            .iter()
                            .any(|f| f.target == Target::Headers && *f.name == **h)
                    })
                    .map(|h| (Source::Header, Target::Headers, format!("no {h} header"))),
                Matcher::Methods { methods, with_body } => insp
                    .fields
                    .iter()
                    .filter(|_| !with_body || has_body)
                    .find(|f| {
                        f.target == Target::Method
                            && methods.iter().any(|m| m.as_bytes() == f.raw())
                    })
                    .map(|f| {
                        (
                            Source::Method,
                            Target::Method,
                            String::from_utf8_lossy(f.raw()).into_owned(),
                        )
                    }),
                _ => None,
            };
            if let Some((source, target, excerpt)) = matched {
                hit[i] = ELSEWHERE;
                out.push(RuleMatch {
                    rule: i,
                    source,
                    target,
                    field: String::new(),
                    excerpt,
                    why: None,
                });
            }
        }
        // Most requests' bodies hit nothing (a GET has none): one pass over the bytes.
        let body_hits = in_body
            .iter()
            .enumerate()
            .filter(|(_, &places)| places != 0)
            .flat_map(|(rule, &places)| {
                [(IN_URL, true), (ELSEWHERE, false)]
                    .into_iter()
                    .filter(move |(place, _)| places & place != 0)
                    .map(move |(_, in_url)| BodyHit { rule, in_url })
            })
            .collect();
        Evaluation {
            matches: out,
            body_hits,
        }
    }

    /// For a detector rule's hit: why the detector counted it (found with the hit), and its
    /// reading of the part of `form` around the hit (bounded: a refused request costs no
    /// more than a few hundred bytes' tokenising more).
    fn why(&self, rule: usize, form: &[u8], hit: &FieldHit) -> Option<String> {
        let Matcher::Detector(d) = &self.rules[rule].matcher else {
            return None;
        };
        let reason = hit.why.unwrap_or("");
        let at = (hit.at as usize).min(form.len());
        let end = (at + (hit.len as usize).max(1))
            .min(form.len())
            .min(at + 200);
        let mut tokens = d.explain(&form[at..end]);
        if tokens.len() > EXPLAIN_CHARS {
            let cut = (0..=EXPLAIN_CHARS)
                .rev()
                .find(|&c| tokens.is_char_boundary(c))
                .unwrap_or(0);
            tokens.truncate(cut);
            tokens.push('…');
        }
        Some(format!("{reason}; read as: {tokens}"))
    }

    /// Every active rule that matches `field` on its own, once each, in the order the
    /// matchers find them.
    fn field_hits(&self, field: &Field, active: &ActiveRules, out: &mut Vec<FieldHit>) {
        let start = out.len();
        let push = |out: &mut Vec<FieldHit>, i: usize, at: usize, len: usize, why| {
            if !out[start..].iter().any(|h| h.rule as usize == i) {
                out.push(FieldHit {
                    rule: i as u32,
                    at: at as u32,
                    len: len as u32,
                    why,
                });
            }
        };
        // The regex sets that apply (by index), in transform order, each with the form it
        // reads; then runs of them that read the same bytes, each searched once. There is one
        // set per transform at most: room for all of them without an allocation per field.
        let mut searches: [(usize, &[u8]); TRANSFORMS.len()] = [(0, &[]); TRANSFORMS.len()];
        let mut n = 0;
        for (g, group) in self.regexes.iter().enumerate() {
            if group.readers.any_reads(&self.rules, field) {
                searches[n] = (g, field.form(group.transform));
                n += 1;
            }
        }
        let mut rest = &searches[..n];
        while let Some(((g, input), _)) = rest.split_first() {
            let same = rest.iter().take_while(|(_, other)| other == input).count();
            let (run, after) = rest.split_at(same);
            rest = after;
            let union = self.union.as_ref().filter(|_| same > 1);
            let group = &self.regexes[*g];
            let (set, owners) = match union {
                Some(u) => (&u.set, u.owners.as_slice()),
                None => (&group.set, group.owners.as_slice()),
            };
            // Most fields match nothing; finding that out needs no overlapping search,
            // which costs about twice as much.
            if !set.is_match(input) {
                continue;
            }
            for m in set.matches(input).iter() {
                let i = owners[m];
                let rule = &self.rules[i];
                let searched = union.is_none()
                    || run
                        .iter()
                        .any(|(g, _)| self.regexes[*g].transform == rule.transform);
                if searched && active.contains(i) && rule.reads(field) {
                    push(out, i, 0, input.len().min(EXCERPT), None);
                }
            }
        }
        for set in &self.phrases {
            if !set.readers.any_reads(&self.rules, field) {
                continue;
            }
            let input = field.form(set.transform);
            if set.screen.as_ref().is_some_and(|s| !s.is_match(input)) {
                continue;
            }
            for m in set.automaton.find_overlapping_iter(input) {
                let (i, boundary) = set.owners[m.pattern().as_usize()];
                if !active.contains(i) || !self.rules[i].reads(field) {
                    continue;
                }
                if boundary && !at_boundary(input, m.start(), m.end()) {
                    continue;
                }
                push(out, i, m.start(), m.end() - m.start(), None);
            }
        }
        for &i in &self.detectors {
            if !active.contains(i) || !self.rules[i].reads(field) {
                continue;
            }
            let input = field.form(self.rules[i].transform);
            let worth = |filter: &Option<Regex>| {
                filter
                    .as_ref()
                    .is_none_or(|f| f.is_match(field.form(Transform::Norm)))
            };
            let Matcher::Detector(detector) = &self.rules[i].matcher else {
                continue;
            };
            let screened = match detector.kind() {
                detect::Kind::Sqli => worth(&self.sqli_prefilter),
                detect::Kind::Xss => worth(&self.xss_prefilter),
                _ => true,
            };
            if let Some(d) = screened.then(|| detector.detect(input)).flatten() {
                push(out, i, d.at, d.len, Some(d.why));
            }
        }
    }
}

/// One set of `patterns`, with room for the large automata of the shipped rules.
fn regex_set(patterns: &[String]) -> Result<RegexSet, RuleError> {
    RegexSetBuilder::new(patterns)
        .size_limit(256 << 20)
        .dfa_size_limit(64 << 20)
        .build()
        .map_err(|e| RuleError {
            file: "rules".into(),
            line: None,
            message: format!("compiling regexes: {e}"),
        })
}

/// What the rules among `owners` read (see [`Readers`]).
fn readers_of(rules: &[Rule], owners: impl Iterator<Item = usize>) -> Readers {
    let named = |t: &Target| matches!(t, Target::Headers | Target::HeaderNames);
    let mut readers = Readers::default();
    let mut seen: Vec<(&[Target], &[String])> = Vec::new();
    for i in owners {
        let rule = &rules[i];
        let by_name = !rule.header_names.is_empty();
        for t in &rule.targets {
            if !(by_name && named(t)) {
                readers.targets |= target_bit(*t);
            }
        }
        let key = (rule.targets.as_slice(), rule.header_names.as_slice());
        if by_name && rule.targets.iter().any(named) && !seen.contains(&key) {
            seen.push(key);
            readers.by_name.push(i);
        }
    }
    readers
}

/// Replaces each `{{name}}` with `(?:w1|w2|...)`, the list's words escaped, longest first
/// (so that `python3` is tried before `python`).
fn expand_lists(re: &str, lists: &HashMap<String, Vec<String>>) -> Result<String, String> {
    let mut out = String::with_capacity(re.len());
    let mut rest = re;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{ in regex")?;
        let name = &after[..end];
        let words = lists
            .get(name)
            .ok_or_else(|| format!("unknown list {name:?}"))?;
        let mut words: Vec<&String> = words.iter().collect();
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        out.push_str("(?:");
        out.push_str(
            &words
                .iter()
                .map(|w| regex::escape(w))
                .collect::<Vec<_>>()
                .join("|"),
        );
        out.push(')');
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn at_boundary(input: &[u8], start: usize, end: usize) -> bool {
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let before = start.checked_sub(1).and_then(|i| input.get(i));
    !word(before) && !word(input.get(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of the rules `rules` finds in the query argument `q=<value>`.
    fn found_in_query(rules: &RuleSet, value: &str) -> Vec<String> {
        found_in_query_by(rules, &rules.active(1, |_| false), value)
    }

    /// The same, with only the `active` rules run.
    fn found_in_query_by(rules: &RuleSet, active: &ActiveRules, value: &str) -> Vec<String> {
        let req = crate::plugins::testing::TestRequest::new("127.0.0.1", "/");
        let query = format!("q={value}");
        let view = crate::request::RequestView {
            query: Some(&query),
            ..req.view()
        };
        let insp = Inspection::new(&view, &Default::default());
        let mut ids: Vec<String> = rules
            .evaluate(&insp, active, None)
            .matches
            .into_iter()
            .map(|m| rules.rules[m.rule].id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn only_active_rules_run_whatever_their_matcher() {
        // A regex, a phrase and a length rule each, at paranoia 1 and 2; one of each kind
        // is switched off by its id.
        let mut text = String::from("[group]\nid = \"t\"\n");
        for (kind, matcher) in [
            ("regex", "regex = 'attack'"),
            ("phrase", "phrases = [\"attack\"]"),
            ("length", "max_bytes = 4"),
        ] {
            for (level, paranoia) in [("p1", 1), ("p2", 2), ("off", 1)] {
                text += &format!(
                    "[[rule]]\nid = \"{kind}-{level}\"\nseverity = \"critical\"\n\
                     targets = [\"args\"]\nparanoia = {paranoia}\n{matcher}\n"
                );
            }
        }
        let rules = RuleSet::compile(&[("t.toml".into(), text)]).expect("compiles");
        let everything = rules.active(4, |_| false);
        assert_eq!(
            found_in_query_by(&rules, &everything, "attack").len(),
            9,
            "every rule matches when all run"
        );
        let configured = rules.active(1, |r| r.id.ends_with("-off"));
        assert_eq!(
            found_in_query_by(&rules, &configured, "attack"),
            ["length-p1", "phrase-p1", "regex-p1"]
        );
        assert!(found_in_query_by(&rules, &rules.active(1, |_| true), "attack").is_empty());
    }

    #[test]
    fn one_search_of_shared_bytes_counts_only_for_their_transforms() {
        // `Hello` as a norm rule can never match (norm is lowercase), and `hello` as a raw
        // rule only lowercase text: searched once for several transforms, neither may fire
        // on the other's bytes.
        let text = r#"
            [group]
            id = "t"
            [[rule]]
            id = "raw"
            severity = "critical"
            targets = ["args"]
            transform = "raw"
            regex = 'hello'
            [[rule]]
            id = "decoded"
            severity = "critical"
            targets = ["args"]
            transform = "decoded"
            regex = 'zz'
            [[rule]]
            id = "norm"
            severity = "critical"
            targets = ["args"]
            transform = "norm"
            regex = 'Hello'
            [[rule]]
            id = "cmdline"
            severity = "critical"
            targets = ["args"]
            transform = "cmdline"
            regex = 'world'
        "#;
        let rules = RuleSet::compile(&[("t.toml".into(), text.into())]).expect("compiles");
        // raw = decoded and norm = cmdline: two searches, each for two transforms.
        assert_eq!(found_in_query(&rules, "Hello%20world"), ["cmdline"]);
        // raw = decoded = norm, and cmdline (the comma gone) on its own.
        assert_eq!(found_in_query(&rules, "hello,%20world"), ["cmdline", "raw"]);
        assert_eq!(found_in_query(&rules, "HELLO%20zz"), ["decoded"]);
    }

    #[test]
    fn a_literal_screen_never_misses_a_word() {
        let words = ["java.lang.", "@ognl", "'", " and ", "data:"];
        let exact = literal_screen(&words, false).expect("builds");
        let folded = literal_screen(&words, true).expect("builds");
        for w in words {
            let text = format!("some prose around{w}it, then more");
            assert!(exact.is_match(text.as_bytes()), "{w:?}");
            let upper = text.to_ascii_uppercase();
            assert!(folded.is_match(upper.as_bytes()), "{w:?} in capitals");
        }
        // Escaped: `.` is a dot, not any byte.
        assert!(!exact.is_match(b"javaxlangx"));
        assert!(!exact.is_match(b"The gateway sits in front of the platform."));
        assert!(
            !exact.is_match(b"JAVA.LANG."),
            "case-sensitive unless asked"
        );
    }

    #[test]
    fn detector_screens_hold_every_token() {
        for (tokens, name) in [(SQLI_TOKENS, "sqli"), (XSS_TOKENS, "xss")] {
            let screen = literal_screen(tokens, false).expect("builds");
            for t in tokens {
                assert!(
                    screen.is_match(format!("x{t}y").as_bytes()),
                    "{name}: {t:?}"
                );
            }
            assert!(!screen.is_match(b"plain words only"), "{name}");
        }
    }
}
