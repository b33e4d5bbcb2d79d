//! What the WAF looks at: every part of a request as named fields, each decoded once into
//! the forms rules match against.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use http::HeaderName;

use regex::bytes::Regex;
use serde::Deserialize;

use super::decode;
use super::parse;
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
    /// Argument or header name, or JSON path; lowercase for headers.
    pub name: String,
    raw: Vec<u8>,
    // The transformed forms, computed on first use: many fields are read by no rule that
    // needs them. (`OnceLock`, not `OnceCell`: the chain's future, which holds the request's
    // shared inspections across awaits, must be `Send`.)
    decoded: OnceLock<Vec<u8>>,
    norm: OnceLock<Vec<u8>>,
    cmdline: OnceLock<Vec<u8>>,
}

impl Field {
    pub fn new(target: Target, source: Source, name: impl Into<String>, raw: Vec<u8>) -> Self {
        Field {
            target,
            source,
            name: name.into(),
            raw,
            decoded: OnceLock::new(),
            norm: OnceLock::new(),
            cmdline: OnceLock::new(),
        }
    }

    pub fn form(&self, t: Transform) -> &[u8] {
        match t {
            Transform::Raw => &self.raw,
            Transform::Decoded => self.decoded.get_or_init(|| decode::decoded(&self.raw)),
            Transform::Norm => self
                .norm
                .get_or_init(|| decode::norm(self.form(Transform::Decoded))),
            Transform::Cmdline => self
                .cmdline
                .get_or_init(|| decode::cmdline(self.form(Transform::Norm))),
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
}

impl Profile {
    /// Whether a field (by name or JSON path) is never inspected under this profile.
    pub fn excludes(&self, name: &str) -> bool {
        self.exclude_fields.iter().any(|f| f == name)
    }

    /// A digest of how the profile reads a request (its prose and excluded fields; the rules
    /// it switches off do not change the inspection): profiles that read alike have the same.
    /// Profiles come from the operator's configuration, so no one aims at a collision.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (&self.prose_fields, &self.exclude_fields).hash(&mut h);
        h.finish()
    }
}

/// Whether prose may hold a URL at all: every URL the pattern finds contains `://` or starts
/// `data:`, and a vectorised search for those two rules out most prose without the regex
/// (whose word boundaries cost a pass over the whole text).
fn may_hold_urls(text: &[u8]) -> bool {
    static MARKS: OnceLock<Option<Regex>> = OnceLock::new();
    MARKS
        .get_or_init(|| super::literal_screen(&["://", "data:"], true))
        .as_ref()
        .is_none_or(|marks| marks.is_match(text))
}

fn url_pattern() -> Option<&'static Regex> {
    static URL: OnceLock<Option<Regex>> = OnceLock::new();
    URL.get_or_init(|| {
        Regex::new(r#"(?i)\b(?:[a-z][a-z0-9+.-]{1,15}://|data:[a-z/]*[;,])[^\s"'<>`]*"#).ok()
    })
    .as_ref()
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
    pub fn with<R>(
        &self,
        req: &RequestView<'_>,
        profile: &Profile,
        fingerprint: u64,
        f: impl FnOnce(&Inspection) -> R,
    ) -> R {
        let terms = (
            fingerprint,
            req.identity.and_then(|who| who.verified_header.clone()),
        );
        for slot in &self.slots {
            let (built_for, inspection) =
                slot.get_or_init(|| (terms.clone(), Inspection::new(req, profile)));
            if *built_for == terms {
                return f(inspection);
            }
        }
        f(&Inspection::new(req, profile))
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
}

impl Inspection {
    pub fn new(req: &RequestView<'_>, profile: &Profile) -> Self {
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
            fields.push(Field::new(
                Target::HeaderNames,
                Source::Header,
                hname,
                hname.as_bytes().to_vec(),
            ));
            fields.push(Field::new(
                Target::Headers,
                Source::Header,
                hname,
                value.as_bytes().to_vec(),
            ));
            if matches!(
                hname,
                "x-filename" | "x_filename" | "x.filename" | "x-file-name"
            ) {
                fields.push(Field::new(
                    Target::Filenames,
                    Source::Header,
                    hname,
                    value.as_bytes().to_vec(),
                ));
            }
        }
        let body_len = req.body.map_or(0, <[u8]>::len);
        if let Some(body) = req.body.filter(|b| !b.is_empty()) {
            body_fields(body, content_type, profile, &mut fields);
        }
        Inspection {
            fields,
            query_len,
            cookie_len,
            body_len,
            path_len: req.path.len(),
            chunked: req.headers.contains_key(http::header::TRANSFER_ENCODING),
        }
    }
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
/// (`tools[].function.parameters.properties.*.description`).
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('.');
    let mut f = path.split('.');
    loop {
        match (p.next(), f.next()) {
            (None, None) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn body_fields(body: &[u8], content_type: &[u8], profile: &Profile, fields: &mut Vec<Field>) {
    let ct = content_type.to_ascii_lowercase();
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
    // A body without a type is read as a form too: that is what most servers would do.
    if ct.starts_with(b"application/x-www-form-urlencoded")
        || ct.is_empty() && body.first() != Some(&b'{') && body.contains(&b'=')
    {
        for (name, value) in parse::form_pairs(body) {
            arg(
                fields,
                String::from_utf8_lossy(&name).into_owned(),
                Some(name),
                value,
            );
        }
        return;
    }
    if ct.starts_with(b"multipart/") {
        if let Some(boundary) = parse::multipart_boundary(content_type) {
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
            return;
        }
    }
    if ct.contains(&b'j') && parse::find(&ct, b"json").is_some()
        || (ct.is_empty() && body.first() == Some(&b'{'))
    {
        if let Some(json) = parse::json_fields(body) {
            for f in json {
                if let Some(key) = f.key {
                    if !profile.excludes(&f.path) {
                        fields.push(Field::new(
                            Target::ArgNames,
                            Source::Body,
                            f.path,
                            key.into_bytes(),
                        ));
                    }
                } else if let Some(value) = f.value {
                    if profile
                        .prose_fields
                        .iter()
                        .any(|p| path_matches(p, &f.path))
                    {
                        let urls = url_pattern()
                            .filter(|_| may_hold_urls(value.as_bytes()))
                            .into_iter()
                            .flat_map(|re| re.find_iter(value.as_bytes()));
                        for url in urls {
                            fields.push(Field::new(
                                Target::Urls,
                                Source::Body,
                                f.path.clone(),
                                url.as_bytes().to_vec(),
                            ));
                        }
                    } else {
                        arg(fields, f.path, None, value.into_bytes());
                    }
                }
            }
            return;
        }
    }
    if parse::find(&ct, b"xml").is_some() || body.starts_with(b"<?xml") {
        for (name, value) in parse::xml_values(body) {
            arg(
                fields,
                String::from_utf8_lossy(&name).into_owned(),
                None,
                value,
            );
        }
    }
    fields.push(Field::new(Target::Body, Source::Body, "", body.to_vec()));
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
            identity: None,
            inspections: None,
        };
        Inspection::new(&view, profile)
            .fields
            .iter()
            .map(|f| {
                (
                    f.target,
                    f.name.clone(),
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
            .map(|f| f.name.clone())
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
            ..llm.clone()
        };
        assert_eq!(sized.fingerprint(), llm.fingerprint(), "reads alike");
        let shared = Inspections::default();
        let address = |p: &Profile| {
            shared.with(&view, p, p.fingerprint(), |i| {
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
        let who = crate::Identity {
            client_id: "c".into(),
            team: None,
            scopes: Box::new([]),
            upstream_headers: Vec::new(),
            verified_header: Some(http::header::AUTHORIZATION),
        };
        let verified = RequestView {
            identity: Some(&who),
            ..view
        };
        let headers = |v: &RequestView<'_>| -> Vec<String> {
            shared.with(v, &plain, plain.fingerprint(), |i| {
                i.fields
                    .iter()
                    .filter(|f| f.target == Target::Headers)
                    .map(|f| f.name.clone())
                    .collect()
            })
        };
        assert_eq!(headers(&view), ["authorization", "x-note"]);
        assert_eq!(headers(&verified), ["x-note"]);
    }

    #[test]
    fn the_url_prefilter_never_hides_a_url() {
        let re = url_pattern().expect("compiles");
        for text in [
            "see https://evil.example/x",
            "DATA:text/html;base64,PHNjcmlwdD4=",
            "gopher://127.0.0.1:70/_x",
            "plain prose, no links: a: b // c",
        ] {
            let found = re.is_match(text.as_bytes());
            assert!(!found || may_hold_urls(text.as_bytes()), "{text}");
        }
        assert!(!may_hold_urls(
            b"The gateway sits in front of the platform."
        ));
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
}
