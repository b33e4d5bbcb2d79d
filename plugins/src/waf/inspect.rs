//! What the WAF looks at: every part of a request as named fields, each decoded once into
//! the forms rules match against.

use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use http::HeaderName;

use hashbrown::HashTable;
use serde::Deserialize;

use super::decode;
use super::json::{self, EscapedText, JsonPath, JsonScalar, JsonVisitor};
use super::judged::{Judge, JudgedItems, KeptItem, LocatedItem, MIN_ITEM_BYTES};
use super::otlp::{self, Signal};
use super::parse;
use super::urls;
use crate::RequestView;

/// Which parts of a request a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Method,
    /// The normalised path.
    Path,
    /// The raw query string.
    QueryString,
    ArgNames,
    /// Query and body argument values (form, JSON, multipart, XML).
    Args,
    CookieNames,
    Cookies,
    HeaderNames,
    /// Header values, except `Cookie` (parsed into cookies).
    Headers,
    /// The raw body, when its type is not parsed into arguments.
    Body,
    /// Multipart file names and `X-Filename`-style headers.
    Filenames,
    /// URLs found in prose fields (LLM prompts), inspected on their own.
    Urls,
}

/// Where a field came from, for AWS-style labels (`SQLi_QUERYARGUMENTS`, `SQLi_BODY`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    UriPath,
    Query,
    Body,
    Cookie,
    Header,
    Method,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::UriPath,
        Source::Query,
        Source::Body,
        Source::Cookie,
        Source::Header,
        Source::Method,
    ];

    pub fn aws_suffix(self) -> &'static str {
        match self {
            Source::UriPath => "URIPATH",
            Source::Query => "QUERYARGUMENTS",
            Source::Body => "BODY",
            Source::Cookie => "COOKIE",
            Source::Header => "HEADER",
            Source::Method => "METHOD",
        }
    }
}

/// The transformation a rule matches against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Raw,
    Decoded,
    #[default]
    Norm,
    Cmdline,
}

pub const TRANSFORMS: [Transform; 4] = [
    Transform::Raw,
    Transform::Decoded,
    Transform::Norm,
    Transform::Cmdline,
];

pub struct Field {
    pub target: Target,
    pub source: Source,
    /// Argument or header name, or JSON path; lowercase for headers. Shared: the fields at
    /// one path of a body (a conversation's thousand URLs) hold one copy of it.
    pub name: Arc<str>,
    raw: Vec<u8>,
    /// The transformed forms, made on first use. Most fields are never asked for one (a
    /// field the WAFs' memos know is not read again), so their room is allocated only then:
    /// a field is small to make, move and compare.
    forms: OnceLock<Box<Forms>>,
}

/// A field's transformed forms, each computed on first use: many fields are read by no rule
/// that needs it. `None` when a form is the one it is made from (most short fields are their
/// own decoded form, many their own norm): no copy. (`OnceLock`, not `OnceCell`: the chain's
/// future, which holds the request's shared inspections across awaits, must be `Send`.)
#[derive(Default)]
struct Forms {
    decoded: OnceLock<Option<Vec<u8>>>,
    norm: OnceLock<Option<Vec<u8>>>,
    cmdline: OnceLock<Option<Vec<u8>>>,
}

impl Field {
    pub fn new(target: Target, source: Source, name: impl Into<Arc<str>>, raw: Vec<u8>) -> Self {
        Field {
            target,
            source,
            name: name.into(),
            raw,
            forms: OnceLock::new(),
        }
    }

    pub fn form(&self, t: Transform) -> &[u8] {
        /// `from`'s transform by `make`, or `from` itself when `same` says it is unchanged.
        fn derived<'f>(
            slot: &'f OnceLock<Option<Vec<u8>>>,
            from: &'f [u8],
            same: fn(&[u8]) -> bool,
            make: fn(&[u8]) -> Vec<u8>,
        ) -> &'f [u8] {
            slot.get_or_init(|| (!same(from)).then(|| make(from)))
                .as_deref()
                .unwrap_or(from)
        }
        let forms = || self.forms.get_or_init(Box::default);
        match t {
            Transform::Raw => &self.raw,
            Transform::Decoded => derived(
                &forms().decoded,
                &self.raw,
                decode::decodes_to_itself,
                decode::decoded,
            ),
            Transform::Norm => derived(
                &forms().norm,
                self.form(Transform::Decoded),
                decode::norm_is_itself,
                decode::norm,
            ),
            Transform::Cmdline => derived(
                &forms().cmdline,
                self.form(Transform::Norm),
                decode::cmdline_is_itself,
                decode::cmdline,
            ),
        }
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// How a route's requests are read: which JSON fields are prose (an LLM prompt: text, not
/// code to run) and which are not inspected at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// JSON paths (`messages[].content`) whose strings are prose: only the URLs in them are inspected.
    #[serde(default)]
    pub prose_fields: Vec<String>,
    /// Field names or JSON paths never inspected on this route.
    #[serde(default)]
    pub exclude_fields: Vec<String>,
    /// Rule ids, groups or labels switched off on this route.
    #[serde(default)]
    pub exclude_rules: Vec<String>,
    /// Rule ids, groups or labels that do not judge the URLs found in prose. A URL in a
    /// prompt is only a server-side request forgery if something behind rampart fetches it:
    /// the built-in profiles leave `ssrf` out (see `owasp::llm_profile`).
    #[serde(default)]
    pub prose_exclude_rules: Vec<String>,
}

impl Profile {
    /// Whether a field (by name or JSON path) is never inspected under this profile.
    pub fn excludes(&self, name: &str) -> bool {
        self.exclude_fields.iter().any(|f| f == name)
    }

    /// Whether the field at `path` is prose under this profile.
    pub fn is_prose(&self, path: &str) -> bool {
        self.prose_fields.iter().any(|p| path_matches(p, path))
    }

    /// A digest of how the profile reads a request (its prose and excluded fields; the rules
    /// it switches off do not change the inspection): profiles that read alike have the same.
    /// Profiles come from the operator's configuration, so no one aims at a collision.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (&self.prose_fields, &self.exclude_fields).hash(&mut h);
        h.finish()
    }

    /// A digest of everything the profile says, the rules it switches off included: what
    /// a verdict under it depends on.
    pub fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (
            &self.prose_fields,
            &self.exclude_fields,
            &self.exclude_rules,
            &self.prose_exclude_rules,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// The inspections of one request that the WAF plugins of a chain share: the second WAF
/// (`bad_inputs` after `owasp`) reads the fields, and their decoded forms, the first built.
///
/// An inspection depends on the profile and on which header a plugin earlier in the chain
/// verified; one built under other terms is not reused.
#[derive(Default)]
pub struct Inspections {
    slots: [OnceLock<(InspectionTerms, Inspection)>; 2],
}

type InspectionTerms = (u64, Option<HeaderName>);

impl std::fmt::Debug for Inspections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.slots.iter().filter(|s| s.get().is_some()).count();
        write!(f, "Inspections({built} built)")
    }
}

impl Inspections {
    /// Runs `f` over the request's inspection under `profile` (whose
    /// [fingerprint](Profile::fingerprint) is `fingerprint`), building it if no plugin did.
    /// An inspection built by another WAF is used only if every item it stepped over is one
    /// this WAF `known` judged clean too.
    pub fn with<R>(
        &self,
        req: &RequestView<'_>,
        profile: &Profile,
        fingerprint: u64,
        known: Option<KnownItems<'_>>,
        f: impl FnOnce(&Inspection) -> R,
    ) -> R {
        let terms = (
            fingerprint,
            req.identity.and_then(|who| who.verified_header.clone()),
        );
        let build = || Inspection::knowing(req, profile, known);
        for slot in &self.slots {
            let (built_for, inspection) = slot.get_or_init(|| (terms.clone(), build()));
            if *built_for == terms && inspection.items.all_judged_by(known) {
                return f(inspection);
            }
        }
        f(&build())
    }
}

/// The items a WAF on a route (`judge`) judged clean before ([`JudgedItems`]): those an
/// inspection's walk may step over.
#[derive(Clone, Copy)]
pub struct KnownItems<'a> {
    pub judged: &'a JudgedItems,
    pub judge: Judge,
    /// Kept items the body's reader found in it, by where they start
    /// ([`RequestView::body_items`]).
    pub located: &'a [LocatedItem],
}

/// An item of a top-level array of a JSON body: its array's path and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpan {
    pub path: Arc<str>,
    pub range: std::ops::Range<usize>,
}

/// The large items of a JSON body's top-level arrays, when an inspection was built knowing
/// some ([`Inspection::knowing`]).
#[derive(Debug, Default)]
pub struct ItemSpans {
    /// Stepped over: judged clean before. None of their fields are among the inspection's.
    pub skipped: Vec<KeptItem>,
    /// Read whole, and long enough to be kept if the request is judged clean.
    pub read: Vec<ItemSpan>,
}

impl ItemSpans {
    /// Whether the judge of `known` judged clean every item stepped over.
    fn all_judged_by(&self, known: Option<KnownItems<'_>>) -> bool {
        self.skipped
            .iter()
            .all(|item| known.is_some_and(|k| item.judged_by(k.judge)))
    }
}

/// Every field of a request, built once.
pub struct Inspection {
    pub fields: Vec<Field>,
    pub query_len: usize,
    pub cookie_len: usize,
    pub body_len: usize,
    pub path_len: usize,
    /// The request announced a chunked body (its length is not known up front).
    pub chunked: bool,
    /// The body could not be read as its declared type.
    pub body_problem: Option<BodyProblem>,
    /// The large items of a JSON body's top-level arrays, stepped over or read.
    pub items: ItemSpans,
}

impl Inspection {
    /// Every field of the request.
    pub fn new(req: &RequestView<'_>, profile: &Profile) -> Self {
        Self::knowing(req, profile, None)
    }

    /// Every field of the request, except those of the items of its JSON body's top-level
    /// arrays that `known` judged clean already.
    pub fn knowing(
        req: &RequestView<'_>,
        profile: &Profile,
        known: Option<KnownItems<'_>>,
    ) -> Self {
        let mut fields = Vec::new();
        fields.push(Field::new(
            Target::Method,
            Source::Method,
            "",
            req.method.as_str().as_bytes().to_vec(),
        ));
        fields.push(Field::new(
            Target::Path,
            Source::UriPath,
            "",
            req.path.as_bytes().to_vec(),
        ));
        let mut query_len = 0;
        if let Some(q) = req.query {
            query_len = q.len();
            fields.push(Field::new(
                Target::QueryString,
                Source::Query,
                "",
                q.as_bytes().to_vec(),
            ));
            let pairs = parse::form_pairs(q.as_bytes());
            push_pairs(
                &mut fields,
                pairs,
                (Target::ArgNames, Target::Args),
                Source::Query,
                profile,
            );
        }
        let mut cookie_len = 0;
        let mut content_type: &[u8] = b"";
        for (name, value) in req.headers {
            let hname = name.as_str();
            if hname == "cookie" {
                cookie_len += value.len();
                let pairs = parse::cookie_pairs(value.as_bytes());
                push_pairs(
                    &mut fields,
                    pairs,
                    (Target::CookieNames, Target::Cookies),
                    Source::Cookie,
                    profile,
                );
                continue;
            }
            if hname == "content-type" {
                content_type = value.as_bytes();
            }
            let verified = req
                .identity
                .is_some_and(|who| who.verified_header.as_ref() == Some(name));
            if profile.excludes(hname) || req.consumed.contains(name) || verified {
                continue;
            }
            // One copy of the name for the fields of this header.
            let shared_name: Arc<str> = Arc::from(hname);
            fields.push(Field::new(
                Target::HeaderNames,
                Source::Header,
                shared_name.clone(),
                hname.as_bytes().to_vec(),
            ));
            fields.push(Field::new(
                Target::Headers,
                Source::Header,
                shared_name.clone(),
                value.as_bytes().to_vec(),
            ));
            if matches!(
                hname,
                "x-filename" | "x_filename" | "x.filename" | "x-file-name"
            ) {
                fields.push(Field::new(
                    Target::Filenames,
                    Source::Header,
                    shared_name,
                    value.as_bytes().to_vec(),
                ));
            }
        }
        // Two Content-Type headers leave the body's type to whichever the upstream reads:
        // judged as one value that no allow-list admits ("a, b").
        let types = req.headers.get_all(http::header::CONTENT_TYPE);
        if types.iter().nth(1).is_some() {
            let joined: Vec<&[u8]> = types.iter().map(|v| v.as_bytes()).collect();
            fields.push(Field::new(
                Target::Headers,
                Source::Header,
                "content-type",
                joined.join(&b", "[..]),
            ));
        }
        let body_len = req.body.map_or(0, <[u8]>::len);
        let mut body_problem = None;
        let mut items = ItemSpans::default();
        if let Some(body) = req.body.filter(|b| !b.is_empty()) {
            let reader = BodyReader {
                profile,
                known,
                fields: &mut fields,
                items: &mut items,
            };
            body_problem = body_fields(body, content_type, req.path, reader);
        }
        push_base64_forms(&mut fields);
        Inspection {
            fields,
            query_len,
            cookie_len,
            body_len,
            path_len: req.path.len(),
            chunked: req.headers.contains_key(http::header::TRANSFER_ENCODING),
            body_problem,
            items,
        }
    }
}

/// Each argument, cookie or header value that is base64 of text, decoded once more as a
/// field of its own (`name(base64)`): an attack hidden that way is judged like one sent
/// plainly. A token already verified (`Identity::verified_header`) is not among the fields.
fn push_base64_forms(fields: &mut Vec<Field>) {
    let decoded: Vec<Field> = fields
        .iter()
        .filter(|f| matches!(f.target, Target::Args | Target::Cookies | Target::Headers))
        .filter_map(|f| {
            let text = decode::base64_text(&f.raw)?;
            Some(Field::new(
                f.target,
                f.source,
                format!("{}(base64)", f.name),
                text,
            ))
        })
        .collect();
    fields.extend(decoded);
}

/// Name/value pairs (query arguments, cookies) as a name field and a value field each,
/// except those the profile excludes.
fn push_pairs(
    fields: &mut Vec<Field>,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    (names, values): (Target, Target),
    source: Source,
    profile: &Profile,
) {
    for (name, value) in pairs {
        let label = String::from_utf8_lossy(&name).into_owned();
        if profile.excludes(&label) {
            continue;
        }
        fields.push(Field::new(names, source, label.clone(), name));
        fields.push(Field::new(values, source, label, value));
    }
}

/// A profile's JSON path against a field's: `*` stands for any one segment
/// (`tools[].function.parameters.properties.*.description`); a final `**` for the field
/// itself and everything under it, whatever its shape (`batch[].body.input.**` covers
/// `batch[].body.input`, `batch[].body.input[]` and `batch[].body.input.args[].code`).
///
/// Every path of a body is asked against every pattern of its profile (dozens for an LLM
/// route), so this walks both once, segment by segment, and stops at the first that differs.
fn path_matches(pattern: &str, path: &str) -> bool {
    // A first segment that is a name starts the path's first: most patterns differ from
    // most paths at their first byte.
    if let Some(&lead) = pattern.as_bytes().first() {
        if lead != b'*' && lead != b'.' && path.as_bytes().first() != Some(&lead) {
            return false;
        }
    }
    let (base, subtree) = match pattern.strip_suffix(".**") {
        Some(base) => (base, true),
        None => (pattern, false),
    };
    let mut rest = Some(path.as_bytes());
    for seg in base.as_bytes().split(|&b| b == b'.') {
        let Some(left) = rest else {
            return false;
        };
        let (field, after) = match memchr::memchr(b'.', left) {
            Some(dot) => (&left[..dot], Some(&left[dot + 1..])),
            None => (left, None),
        };
        let same = seg == b"*"
            || match field.strip_prefix(seg) {
                // Under `**`, a segment stands for the array it names too (`input[]`).
                Some(tail) if subtree => tail.iter().all(|&b| b == b'[' || b == b']'),
                Some(tail) => tail.is_empty(),
                None => false,
            };
        if !same {
            return false;
        }
        rest = after;
    }
    subtree || rest.is_none()
}

/// How a body is read, decided by its declared type (and, for OTLP, by its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Form,
    Multipart,
    Json,
    Xml,
    /// An OTLP/HTTP export in protobuf.
    OtlpProtobuf(Signal),
    /// An OTLP/HTTP export in JSON.
    OtlpJson(Signal),
    /// Protobuf of a schema the WAF does not know: it cannot be read.
    Protobuf,
    /// `text/*`.
    Text,
    /// No type, or a type with no parser here: read as what its first bytes say it is (JSON
    /// if it starts with `{` or `[`, a form if it holds `=`, text otherwise), as the
    /// upstream may well read it whatever the header says.
    Sniffed,
}

impl BodyFormat {
    pub fn of(content_type: &[u8], path: &str) -> BodyFormat {
        let ct = content_type.to_ascii_lowercase();
        let essence = ct
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let has = |needle: &[u8]| parse::find(essence, needle).is_some();
        let signal = Signal::of_path(path);
        if essence == b"application/x-www-form-urlencoded" {
            BodyFormat::Form
        } else if essence.starts_with(b"multipart/") {
            BodyFormat::Multipart
        } else if has(b"protobuf") {
            signal.map_or(BodyFormat::Protobuf, BodyFormat::OtlpProtobuf)
        } else if has(b"json") {
            signal.map_or(BodyFormat::Json, BodyFormat::OtlpJson)
        } else if has(b"xml") {
            BodyFormat::Xml
        } else if essence.starts_with(b"text/") {
            BodyFormat::Text
        } else {
            BodyFormat::Sniffed
        }
    }
}

/// Why a body could not be read as its declared type. It is never judged as the raw bytes
/// of another format instead: the WAF refuses it (400, or 415 for a schema it lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not valid as its declared type (JSON that does not parse, a multipart body without
    /// a boundary, a protobuf export that does not decode).
    Malformed,
    /// Protobuf that is not an OTLP export: without its schema it cannot be read.
    UnknownSchema,
}

impl BodyProblem {
    pub fn refusal(self) -> (u16, &'static str) {
        match self {
            BodyProblem::Malformed => (400, "body.malformed"),
            BodyProblem::UnknownSchema => (415, "body.unknown_schema"),
        }
    }
}

/// A string of a structured body: an object's key, or a value (decoded, or as it stands
/// in a JSON document when it is prose).
enum Named<'a> {
    Name(&'a [u8]),
    Value(&'a [u8]),
    Escaped(EscapedText<'a, 'a>),
}

/// The fields a structured body yields, each judged once: a conversation repeats its keys
/// (`role`, `content`, `tool_call_id`) and many values (`assistant`, `function`, and the
/// links a coding agent's tool results share) thousands of times, and a rule's verdict on
/// one is its verdict on all (a rule counts once per request, wherever it matched first).
struct Distinct {
    /// The fields kept so far, by a hash of (target, path, value). A field is a repeat only
    /// when it equals a kept one byte for byte, so a collision costs a comparison, never a
    /// field left unjudged: a fast hasher is enough, seeded per process against floods.
    seen: HashTable<Kept>,
    hasher: foldhash::fast::RandomState,
}

/// A field [`Distinct`] kept: where it is among the fields, and its path's number.
struct Kept {
    hash: u64,
    path: u32,
    index: usize,
}

impl Distinct {
    fn new() -> Self {
        Distinct {
            seen: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Adds (target, path, value) to `fields` unless it is there already; `id` is the
    /// number the body's reader gave the path, `path` its text.
    fn keep(
        &mut self,
        fields: &mut Vec<Field>,
        target: Target,
        id: u32,
        path: &Arc<str>,
        value: &[u8],
    ) {
        let mut h = self.hasher.build_hasher();
        h.write_u64((target as u64) << 32 | u64::from(id));
        h.write(value);
        let hash = h.finish();
        let same = |k: &Kept| {
            k.hash == hash
                && k.path == id
                && fields[k.index].target == target
                && fields[k.index].raw() == value
        };
        if self.seen.find(hash, same).is_some() {
            return;
        }
        self.seen.insert_unique(
            hash,
            Kept {
                hash,
                path: id,
                index: fields.len(),
            },
            |k| k.hash,
        );
        fields.push(Field::new(
            target,
            Source::Body,
            Arc::clone(path),
            value.to_vec(),
        ));
    }
}

/// How a profile reads the fields at one path of a structured body.
#[derive(Clone, Copy)]
struct PathReading {
    prose: bool,
    excluded: bool,
}

impl PathReading {
    fn of(profile: &Profile, path: &str) -> Self {
        PathReading {
            prose: profile.is_prose(path),
            excluded: profile.excludes(path),
        }
    }
}

/// The fields of a structured body (JSON, OTLP), as they are found.
struct StructuredFields<'f> {
    fields: &'f mut Vec<Field>,
    distinct: Distinct,
    /// A prose string whose escapes do not decode: the body is malformed.
    bad_escape: bool,
}

impl<'f> StructuredFields<'f> {
    fn new(fields: &'f mut Vec<Field>) -> Self {
        StructuredFields {
            fields,
            distinct: Distinct::new(),
            bad_escape: false,
        }
    }

    /// A key or a value at a path (`id` names it for [`Distinct`], `path` is its text). Of
    /// prose, only the URLs are inspected, and its keys are plain (`gen_ai.prompt`, `args`);
    /// elsewhere both are judged; at an excluded path, nothing.
    fn push(&mut self, reading: PathReading, id: u32, path: &Arc<str>, named: Named<'_>) {
        if reading.excluded {
            return;
        }
        let (fields, distinct) = (&mut *self.fields, &mut self.distinct);
        let url = |url: &[u8]| distinct.keep(fields, Target::Urls, id, path, url);
        match named {
            Named::Value(value) if reading.prose => urls::each_url(value, url),
            Named::Escaped(kept) => {
                if urls::each_url_in_kept(&kept, url).is_err() {
                    self.bad_escape = true;
                }
            }
            Named::Name(_) if reading.prose => {}
            Named::Name(key) => distinct.keep(fields, Target::ArgNames, id, path, key),
            Named::Value(value) => distinct.keep(fields, Target::Args, id, path, value),
        }
    }
}

/// A JSON body's fields, read as the profile says: prose and excluded strings are kept as
/// they stand (a prompt is not decoded, only its URLs).
struct JsonBody<'p, 'f, 'k> {
    profile: &'p Profile,
    /// By path id.
    paths: Vec<JsonPathState>,
    out: StructuredFields<'f>,
    /// Items the WAF judged clean already, which the walk steps over.
    known: Option<KnownItems<'k>>,
    items: ItemSpans,
}

/// What the reader knows of one path of a JSON body.
struct JsonPathState {
    reading: PathReading,
    /// Whether the key that names the path was handed on. A path is reached from its parent
    /// by one key only, so its key is judged the first time and is a repeat ever after: no
    /// need to hash it again at each of a conversation's thousand messages.
    key_seen: bool,
    /// The path's text, which its fields share.
    name: Arc<str>,
}

impl<'d> JsonVisitor<'d> for JsonBody<'_, '_, '_> {
    fn path(&mut self, path: JsonPath<'_>) -> bool {
        let reading = PathReading::of(self.profile, path.text);
        self.paths.push(JsonPathState {
            reading,
            key_seen: false,
            name: path.text.into(),
        });
        reading.prose || reading.excluded
    }

    fn key(&mut self, path: JsonPath<'_>, key: &[u8]) {
        let state = &mut self.paths[path.id as usize];
        if std::mem::replace(&mut state.key_seen, true) {
            return;
        }
        self.out
            .push(state.reading, path.id, &state.name, Named::Name(key));
    }

    fn scalar(&mut self, path: JsonPath<'_>, value: JsonScalar<'d, '_>) {
        let named = match value {
            JsonScalar::Text(v) | JsonScalar::Number(v) => Named::Value(v),
            JsonScalar::Escaped(kept) => Named::Escaped(kept),
        };
        let state = &self.paths[path.id as usize];
        self.out.push(state.reading, path.id, &state.name, named);
    }

    fn known_item(&mut self, path: JsonPath<'_>, at: usize, rest: &'d [u8]) -> Option<usize> {
        let known = self.known?;
        let name = &self.paths[path.id as usize].name;
        // An item the body's reader found here was compared already.
        let located = known
            .located
            .binary_search_by_key(&at, |l| l.at)
            .ok()
            .and_then(|i| {
                let item = &known.located[i].item;
                known
                    .judged
                    .step_over_located(known.judge, name, rest, item)
            });
        let kept = match located {
            Some(kept) => kept,
            None => known.judged.step_over(known.judge, name, rest)?,
        };
        let len = kept.len();
        self.items.skipped.push(kept);
        Some(len)
    }

    fn item_read(&mut self, path: JsonPath<'_>, range: std::ops::Range<usize>) {
        if self.known.is_some() && range.len() >= MIN_ITEM_BYTES {
            let name = &self.paths[path.id as usize].name;
            self.items.read.push(ItemSpan {
                path: Arc::clone(name),
                range,
            });
        }
    }
}

/// Reads a JSON body into `fields`: `None` if it is not JSON (nothing is added then), else
/// whether it is malformed (a prose string with a bad escape).
fn json_body(
    body: &[u8],
    profile: &Profile,
    fields: &mut Vec<Field>,
    known: Option<KnownItems<'_>>,
    items: &mut ItemSpans,
) -> Option<bool> {
    let before = fields.len();
    let mut visitor = JsonBody {
        profile,
        paths: Vec::new(),
        out: StructuredFields::new(fields),
        known,
        items: ItemSpans::default(),
    };
    match json::walk(body, &mut visitor) {
        Some(()) => {
            *items = visitor.items;
            Some(visitor.out.bad_escape)
        }
        None => {
            fields.truncate(before);
            None
        }
    }
}

/// What reading a body needs: how the route reads it, what the WAF judged clean already,
/// and where its fields and its large items go.
struct BodyReader<'r, 'k> {
    profile: &'r Profile,
    known: Option<KnownItems<'k>>,
    fields: &'r mut Vec<Field>,
    items: &'r mut ItemSpans,
}

fn body_fields(
    body: &[u8],
    content_type: &[u8],
    path: &str,
    reader: BodyReader<'_, '_>,
) -> Option<BodyProblem> {
    let BodyReader {
        profile,
        known,
        fields,
        items,
    } = reader;
    let arg = |fields: &mut Vec<Field>, name: String, raw_name: Option<Vec<u8>>, value: Vec<u8>| {
        if profile.excludes(&name) {
            return;
        }
        if let Some(raw_name) = raw_name {
            fields.push(Field::new(
                Target::ArgNames,
                Source::Body,
                name.clone(),
                raw_name,
            ));
        }
        fields.push(Field::new(Target::Args, Source::Body, name, value));
    };
    let malformed = |bad: bool| bad.then_some(BodyProblem::Malformed);
    let mut format = BodyFormat::of(content_type, path);
    if format == BodyFormat::Sniffed {
        // A sniffed body is JSON only if it parses: its fields are kept, not read twice.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if matches!(first, Some(b'{' | b'[')) {
            if let Some(bad) = json_body(body, profile, fields, known, items) {
                return malformed(bad);
            }
        }
        format = if body.contains(&b'=') {
            BodyFormat::Form
        } else {
            BodyFormat::Text
        };
    }
    match format {
        BodyFormat::Form => {
            for (name, value) in parse::form_pairs(body) {
                let label = String::from_utf8_lossy(&name).into_owned();
                arg(fields, label, Some(name), value);
            }
        }
        BodyFormat::Multipart => {
            let Some(boundary) = parse::multipart_boundary(content_type) else {
                return Some(BodyProblem::Malformed);
            };
            for part in parse::multipart_parts(body, boundary) {
                let name =
                    String::from_utf8_lossy(part.name.as_deref().unwrap_or_default()).into_owned();
                if let Some(filename) = part.filename {
                    fields.push(Field::new(
                        Target::Filenames,
                        Source::Body,
                        name.clone(),
                        filename,
                    ));
                    // The field name of a file part is checked like a file name.
                    if let Some(n) = &part.name {
                        fields.push(Field::new(
                            Target::Filenames,
                            Source::Body,
                            name.clone(),
                            n.clone(),
                        ));
                    }
                }
                for (hname, hvalue) in &part.headers {
                    fields.push(Field::new(
                        Target::Headers,
                        Source::Body,
                        String::from_utf8_lossy(hname).to_lowercase(),
                        hvalue.to_vec(),
                    ));
                }
                arg(fields, name, part.name.clone(), part.content.to_vec());
            }
        }
        BodyFormat::Json => {
            if let Some(bad) = json_body(body, profile, fields, known, items) {
                return malformed(bad);
            }
            // A lone scalar (`"text"`, `42`) is one value at the root.
            let Some(text) = json_scalar(body) else {
                return Some(BodyProblem::Malformed);
            };
            let mut out = StructuredFields::new(fields);
            out.push(
                PathReading::of(profile, ""),
                0,
                &Arc::from(""),
                Named::Value(text.as_bytes()),
            );
        }
        BodyFormat::OtlpProtobuf(signal) | BodyFormat::OtlpJson(signal) => {
            let decoded = match format {
                BodyFormat::OtlpProtobuf(_) => otlp::protobuf_fields(body, signal),
                _ => otlp::json_fields(body, signal),
            };
            let Ok(otlp) = decoded else {
                return Some(BodyProblem::Malformed);
            };
            let mut out = StructuredFields::new(fields);
            // Each path numbered and read once. Paths are the client's, but a collision only
            // costs a comparison: the quick hasher.
            // The key is the text the path's fields share.
            let mut paths: HashMap<Arc<str>, (u32, PathReading), foldhash::fast::RandomState> =
                HashMap::default();
            for f in otlp {
                let (name, (id, reading)) = match paths.get_key_value(f.path.as_str()) {
                    Some((name, &known)) => (Arc::clone(name), known),
                    None => {
                        let name = Arc::<str>::from(f.path.as_str());
                        let known = (paths.len() as u32, PathReading::of(profile, &f.path));
                        paths.insert(Arc::clone(&name), known);
                        (name, known)
                    }
                };
                let named = match f.key {
                    Some(_) => Named::Name(&f.value),
                    None => Named::Value(&f.value),
                };
                out.push(reading, id, &name, named);
            }
        }
        BodyFormat::Protobuf => return Some(BodyProblem::UnknownSchema),
        BodyFormat::Xml => {
            for (name, value) in parse::xml_values(body) {
                let label = String::from_utf8_lossy(&name).into_owned();
                arg(fields, label, None, value);
            }
            fields.push(Field::new(Target::Body, Source::Body, "", body.to_vec()));
        }
        BodyFormat::Text | BodyFormat::Sniffed => {
            fields.push(Field::new(Target::Body, Source::Body, "", body.to_vec()));
        }
    }
    None
}

/// A JSON document that is a lone scalar (`"text"`, `42`): its text; `None` when the body
/// is not JSON at all (it is malformed).
fn json_scalar(body: &[u8]) -> Option<String> {
    match serde_json::from_slice(body).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    /// (target, name, raw value) of every field of a POST with this body.
    fn fields_of(
        profile: &Profile,
        content_type: &str,
        body: &[u8],
    ) -> Vec<(Target, String, String)> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_str(content_type).expect("ct"),
        );
        let method = Method::POST;
        let view = RequestView {
            listener: "l",
            route: "r",
            peer: [127, 0, 0, 1].into(),
            client: [127, 0, 0, 1].into(),
            method: &method,
            path: "/",
            query: None,
            headers: &headers,
            consumed: &[],
            body: Some(body),
            body_items: &[],
            identity: None,
            inspections: None,
        };
        Inspection::new(&view, profile)
            .fields
            .iter()
            .map(|f| {
                (
                    f.target,
                    f.name.to_string(),
                    String::from_utf8_lossy(f.raw()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn headers_the_chain_consumes_are_not_inspected() {
        let req = crate::plugins::testing::TestRequest::new("127.0.0.1", "/")
            .header("authorization", "Bearer ${jndi:ldap://x}")
            .header("x-note", "${jndi:ldap://y}");
        let consumed = [http::header::AUTHORIZATION];
        let view = RequestView {
            consumed: &consumed,
            ..req.view()
        };
        let names: Vec<String> = Inspection::new(&view, &Profile::default())
            .fields
            .iter()
            .filter(|f| f.target == Target::Headers)
            .map(|f| f.name.to_string())
            .collect();
        assert_eq!(
            names,
            ["x-note"],
            "removed before the upstream, so not inspected"
        );
    }

    #[test]
    fn plugins_reading_alike_share_one_inspection() {
        let req = crate::plugins::testing::TestRequest::new("127.0.0.1", "/")
            .header("authorization", "Bearer abc")
            .header("x-note", "hello");
        let view = req.view();
        let plain = Profile::default();
        let llm = Profile {
            prose_fields: vec!["messages[].content".into()],
            ..Profile::default()
        };
        assert_ne!(plain.fingerprint(), llm.fingerprint());
        let sized = Profile {
            exclude_rules: vec!["SizeRestrictions_BODY".into()],
            prose_exclude_rules: vec!["ssrf".into()],
            ..llm.clone()
        };
        assert_eq!(sized.fingerprint(), llm.fingerprint(), "reads alike");
        let shared = Inspections::default();
        let address = |p: &Profile| {
            shared.with(&view, p, p.fingerprint(), None, |i| {
                i as *const Inspection as usize
            })
        };
        assert_eq!(address(&plain), address(&plain), "built once, read twice");
        assert_ne!(
            address(&plain),
            address(&llm),
            "another profile, another inspection"
        );
        assert_eq!(format!("{shared:?}"), "Inspections(2 built)");

        // After a plugin verified the token, its header is no longer inspected: an
        // inspection built before cannot stand for that.
        let who = verified_by_authorization();
        let verified = RequestView {
            identity: Some(&who),
            ..view
        };
        let headers = |v: &RequestView<'_>| -> Vec<String> {
            shared.with(v, &plain, plain.fingerprint(), None, |i| {
                i.fields
                    .iter()
                    .filter(|f| f.target == Target::Headers)
                    .map(|f| f.name.to_string())
                    .collect()
            })
        };
        assert_eq!(headers(&view), ["authorization", "x-note"]);
        assert_eq!(headers(&verified), ["x-note"]);
    }

    /// A client whose token in `Authorization` a plugin verified.
    fn verified_by_authorization() -> crate::Identity {
        crate::Identity {
            client_id: "c".into(),
            team: None,
            scopes: Box::new([]),
            upstream_headers: Vec::new(),
            verified_header: Some(http::header::AUTHORIZATION),
        }
    }

    #[test]
    fn base64_of_text_is_inspected_decoded_and_a_verified_token_is_not() {
        // `;cat /etc/passwd` and `' OR 1=1-- `, base64 (standard and URL-safe).
        let req = crate::plugins::testing::TestRequest::new("127.0.0.1", "/")
            .query("d=O2NhdCAvZXRjL3Bhc3N3ZA==")
            .header("cookie", "s=JyBPUiAxPTEtLSA")
            .header("authorization", "O2NhdCAvZXRjL3Bhc3N3ZA==")
            .header("x-id", "550e8400-e29b-41d4-a716-446655440000");
        let decoded = |view: &RequestView<'_>| -> Vec<(String, String)> {
            Inspection::new(view, &Profile::default())
                .fields
                .iter()
                .filter(|f| f.name.ends_with("(base64)"))
                .map(|f| {
                    (
                        f.name.to_string(),
                        String::from_utf8_lossy(&f.raw).into_owned(),
                    )
                })
                .collect()
        };
        let view = req.view();
        assert_eq!(
            decoded(&view),
            [
                ("d(base64)".to_string(), ";cat /etc/passwd".to_string()),
                ("s(base64)".to_string(), "' OR 1=1-- ".to_string()),
                (
                    "authorization(base64)".to_string(),
                    ";cat /etc/passwd".to_string()
                ),
            ]
        );
        let who = verified_by_authorization();
        let verified = RequestView {
            identity: Some(&who),
            ..view
        };
        assert_eq!(
            decoded(&verified).len(),
            2,
            "a verified token is not decoded"
        );
    }

    /// The matcher as first written (split iterators): the oracle the walking one is held to.
    fn path_matches_by_splitting(pattern: &str, path: &str) -> bool {
        if let Some(base) = pattern.strip_suffix(".**") {
            let mut f = path.split('.');
            return base.split('.').all(|seg| {
                f.next().is_some_and(|field| {
                    seg == "*"
                        || field
                            .strip_prefix(seg)
                            .is_some_and(|rest| rest.bytes().all(|b| b == b'[' || b == b']'))
                })
            });
        }
        let (mut p, mut f) = (pattern.split('.'), path.split('.'));
        loop {
            match (p.next(), f.next()) {
                (None, None) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    #[test]
    fn path_matching_agrees_with_splitting_on_drawn_paths() {
        // Small alphabets, so that patterns and paths often share segments, differ by an
        // `[]`, an empty segment or one segment more or less.
        const SEGMENTS: &[&str] = &["a", "a[]", "ab", "b", "", "[]", "a[][]"];
        const PATTERN_SEGMENTS: &[&str] = &["a", "a[]", "ab", "b", "", "*", "[]"];
        let mut rng = crate::test_rng::Xorshift(0x9a7b_5e1d);
        let draw = |from: &[&str], rng: &mut crate::test_rng::Xorshift| {
            let n = 1 + rng.below(4) as usize;
            (0..n)
                .map(|_| from[rng.below(from.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(".")
        };
        let (mut matched, mut tried) = (0, 0);
        for _ in 0..50_000 {
            let mut pattern = draw(PATTERN_SEGMENTS, &mut rng);
            if rng.below(2) == 0 {
                pattern.push_str(".**");
            }
            let path = draw(SEGMENTS, &mut rng);
            let expected = path_matches_by_splitting(&pattern, &path);
            assert_eq!(
                path_matches(&pattern, &path),
                expected,
                "{pattern} against {path}"
            );
            matched += usize::from(expected);
            tried += 1;
        }
        // Both answers were drawn often enough to mean something.
        assert!(
            matched > tried / 20 && matched < tried / 2,
            "{matched} of {tried}"
        );
    }

    #[test]
    fn profile_paths_with_wildcards() {
        assert!(path_matches("messages[].content", "messages[].content"));
        assert!(path_matches(
            "tools[].function.parameters.properties.*.description",
            "tools[].function.parameters.properties.query.description"
        ));
        assert!(!path_matches(
            "messages[].content",
            "messages[].content[].text"
        ));
        assert!(!path_matches("a.*", "a"));
        // `**`: the field and its whole subtree, whatever its shape.
        for under in [
            "batch[].body.input",
            "batch[].body.input[]",
            "batch[].body.input.args[]",
            "batch[].body.input.kwargs.code.lines[]",
        ] {
            assert!(path_matches("batch[].body.input.**", under), "{under}");
        }
        for beside in [
            "batch[].body.inputs",
            "batch[].body",
            "batch[].body.output.input",
        ] {
            assert!(!path_matches("batch[].body.input.**", beside), "{beside}");
        }
        assert!(path_matches(
            "*.attributes.langfuse.observation.input.**",
            "span.attributes.langfuse.observation.input"
        ));
        assert!(!path_matches(
            "*.attributes.langfuse.observation.input.**",
            "span.attributes.langfuse.observation.inputs"
        ));
    }

    #[test]
    fn multipart_file_parts_expose_names_and_filenames() {
        let body = b"--XX\nContent-Disposition: form-data; name=\";zzzz\"; filename=\"test\"\n\nhello\n--XX--\n";
        let f = fields_of(
            &Profile::default(),
            "multipart/form-data; boundary=XX",
            body,
        );
        assert!(
            f.contains(&(Target::Filenames, ";zzzz".into(), "test".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&(Target::Filenames, ";zzzz".into(), ";zzzz".into())),
            "{f:?}"
        );
    }

    #[test]
    fn llm_prose_is_not_an_argument_but_its_urls_are_inspected() {
        let profile = Profile {
            prose_fields: vec!["messages[].content".into()],
            ..Profile::default()
        };
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"run `rm -rf /` then fetch http://169.254.169.254/latest"}]}"#;
        let fields = fields_of(&profile, "application/json", body);
        let of = |t: Target| -> Vec<String> {
            fields
                .iter()
                .filter(|f| f.0 == t)
                .map(|f| f.2.clone())
                .collect()
        };
        let args = of(Target::Args);
        assert_eq!(args.len(), 2, "{args:?}");
        assert!(args.contains(&"gpt-4o".to_string()) && args.contains(&"user".to_string()));
        assert_eq!(
            of(Target::Urls),
            vec!["http://169.254.169.254/latest".to_string()]
        );
        assert!(
            of(Target::Body).is_empty(),
            "the raw JSON body is not inspected as text"
        );
    }

    /// A field that repeats (same target, path and bytes) is kept once; the same bytes as a
    /// key and as a value, at another path, or differing in one byte are fields of their own.
    #[test]
    fn repeated_fields_are_kept_once_and_only_exact_repeats() {
        let profile = Profile {
            prose_fields: vec!["m[].text".into()],
            ..Profile::default()
        };
        let body =
            br#"{"m":[{"role":"user","text":"see http://a.example/x and http://a.example/x"},
            {"role":"user","text":"again http://a.example/x, then http://a.example/y"},
            {"role":"users","user":"role"}],"role":"user"}"#;
        let fields = fields_of(&profile, "application/json", body);
        let count = |t: Target, name: &str, raw: &str| {
            fields
                .iter()
                .filter(|f| f.0 == t && f.1 == name && f.2 == raw)
                .count()
        };
        assert_eq!(count(Target::Args, "m[].role", "user"), 1, "{fields:?}");
        assert_eq!(count(Target::Args, "m[].role", "users"), 1);
        assert_eq!(count(Target::Args, "role", "user"), 1, "another path");
        assert_eq!(count(Target::Args, "m[].user", "role"), 1);
        assert_eq!(count(Target::ArgNames, "m[].role", "role"), 1);
        assert_eq!(
            count(Target::ArgNames, "role", "role"),
            1,
            "the same key at another path"
        );
        assert_eq!(
            count(Target::ArgNames, "m[].user", "user"),
            1,
            "a key, not the value"
        );
        assert_eq!(count(Target::Urls, "m[].text", "http://a.example/x"), 1);
        assert_eq!(count(Target::Urls, "m[].text", "http://a.example/y"), 1);
    }
}
