//! The model table: which provider targets serve a model named in an OpenAI-style request.
//!
//! Pure data and matching, read from a rule file (`rules/models.toml`); the proxy resolves
//! the providers' keys and connects. Every provider but Bedrock is reached through its
//! OpenAI-compatible surface, so a request body travels unchanged; only the path and the key
//! header differ. Bedrock has no such surface: requests are translated to its Converse API
//! ([`crate::bedrock`]) and signed with AWS credentials instead of carrying a key.
//!
//! ```toml
//! [providers.openai]
//! kind = "openai"                   # base_url defaults to https://api.openai.com/v1
//! key = "openai-api-key"            # a [secrets] entry
//!
//! [[models]]
//! name = "gpt-4o"                   # exact, or a glob: "gpt-*"
//! aliases = ["gpt4"]
//! targets = [{ provider = "openai" }, { provider = "azure", deployment = "gpt-4o-prod" }]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::registry::line_at;

/// How a provider's OpenAI-compatible API is addressed and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// `https://api.openai.com/v1/...`, `Authorization: Bearer`.
    Openai,
    /// Anthropic's OpenAI SDK compatibility layer, `https://api.anthropic.com/v1/...`.
    Anthropic,
    /// Gemini's OpenAI compatibility, `https://generativelanguage.googleapis.com/v1beta/openai/...`.
    Gemini,
    /// Azure OpenAI deployments, `/openai/deployments/{deployment}/...?api-version=`, `api-key`.
    Azure,
    /// AWS Bedrock's Converse API, `https://bedrock-runtime.{region}.amazonaws.com`, requests
    /// signed with SigV4 (no key).
    Bedrock,
}

/// The OpenAI endpoints rampart routes by model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The endpoint a client path names below the route (`/chat/completions`), if any.
    pub fn of_path(path: &str) -> Option<Self> {
        match path.trim_end_matches('/') {
            "/chat/completions" => Some(Endpoint::ChatCompletions),
            "/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

impl ProviderKind {
    /// The header that carries the key on the OpenAI-compatible surface, and its form.
    pub fn key_header(self) -> (&'static str, KeyFormat) {
        match self {
            ProviderKind::Azure => ("api-key", KeyFormat::Plain),
            _ => ("authorization", KeyFormat::Bearer),
        }
    }

    /// The header that carries the key on the provider's own API.
    pub fn native_key_header(self) -> (&'static str, KeyFormat) {
        match self {
            ProviderKind::Anthropic => ("x-api-key", KeyFormat::Plain),
            ProviderKind::Gemini => ("x-goog-api-key", KeyFormat::Plain),
            other => other.key_header(),
        }
    }

    /// Where the OpenAI-compatible surface lives (what the OpenAI SDK's `base_url` would be).
    fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta/openai"),
            ProviderKind::Azure | ProviderKind::Bedrock => None,
        }
    }

    /// The root of the provider's own API, for native pass-through routes.
    fn default_native_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::Azure | ProviderKind::Bedrock => None,
        }
    }
}

impl Provider {
    /// The URL of `endpoint` for `target` at this provider.
    pub fn url(&self, endpoint: Endpoint, target: &Target) -> String {
        let base = self.base_url();
        let suffix = endpoint.suffix();
        match self.kind {
            ProviderKind::Azure => format!(
                "{base}/openai/deployments/{}/{suffix}?api-version={}",
                target.deployment.as_deref().unwrap_or_default(),
                self.api_version.as_deref().unwrap_or_default()
            ),
            _ => format!("{base}/{suffix}"),
        }
    }

    /// The region requests are signed for: a Bedrock provider's, no other's (they carry keys).
    pub fn signing_region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .filter(|_| self.kind == ProviderKind::Bedrock)
    }

    /// The Converse URL of Bedrock model `model_id` (`converse-stream` for a stream).
    pub fn bedrock_url(&self, model_id: &str, stream: bool) -> String {
        let action = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        format!(
            "{}/model/{}/{action}",
            self.bedrock_root(),
            path_segment(model_id)
        )
    }

    /// Bedrock's runtime endpoint: `base_url`, or the region's.
    fn bedrock_root(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "https://bedrock-runtime.{}.amazonaws.com",
                self.region.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The URL of a native API call: `rest` is the path and query below the route's prefix.
    pub fn native_url(&self, rest: &str) -> String {
        if self.kind == ProviderKind::Bedrock && self.native_url.is_none() {
            return format!("{}/{}", self.bedrock_root(), rest.trim_start_matches('/'));
        }
        let root = self
            .native_url
            .as_deref()
            .or(self.kind.default_native_url())
            .unwrap_or_else(|| self.base_url());
        format!(
            "{}/{}",
            root.trim_end_matches('/'),
            rest.trim_start_matches('/')
        )
    }

    /// The OpenAI-compatible API root, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.base_url
            .as_deref()
            .or(self.kind.default_base_url())
            .unwrap_or_default()
            .trim_end_matches('/')
    }
}

/// A path segment percent-encoded as AWS encodes it: all but `A-Z a-z 0-9 - _ . ~`
/// (`anthropic.claude-sonnet-4-5-20250929-v1:0` keeps its dots, its colon becomes `%3A`).
fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// `Bearer <key>`
    Bearer,
    /// The key as is.
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub kind: ProviderKind,
    /// The OpenAI-compatible API root, as the OpenAI SDK's `base_url` would be; each kind
    /// but Azure has a default. Configurable so that tests use loopback.
    pub base_url: Option<String>,
    /// The root of the provider's own API, for native routes (`/anthropic/...`).
    pub native_url: Option<String>,
    /// The `[secrets]` entry holding the key; every kind but Bedrock needs one.
    pub key: Option<String>,
    /// Azure's `api-version` query parameter.
    pub api_version: Option<String>,
    /// Bedrock's AWS region (`us-east-1`), which names its endpoint and signs its requests.
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub provider: String,
    /// The model name the provider knows, when it is not the requested one.
    pub model: Option<String>,
    /// Azure's deployment name.
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// An exact name, or a glob with `*` (`claude-*`).
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Tried in order (failover).
    pub targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    providers: BTreeMap<String, toml::Spanned<Provider>>,
    #[serde(default)]
    models: Vec<toml::Spanned<ModelEntry>>,
}

/// A models file that does not parse or does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ModelsError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct ModelTable {
    pub providers: BTreeMap<String, Provider>,
    /// The line each provider's table starts on, for errors found later (its key).
    provider_lines: BTreeMap<String, usize>,
    /// Exact names and aliases, to the entry's index.
    exact: BTreeMap<String, usize>,
    /// Globs in file order.
    globs: Vec<usize>,
    entries: Vec<ModelEntry>,
}

impl ModelTable {
    pub fn parse(file: &str, text: &str) -> Result<Self, ModelsError> {
        let error = |offset: Option<usize>, message: String| ModelsError {
            file: file.to_string(),
            line: offset.map(|o| line_at(text, o)),
            message,
        };
        let parsed: ModelsFile = toml::from_str(text)
            .map_err(|e| error(e.span().map(|s| s.start), e.message().to_string()))?;
        for (name, p) in &parsed.providers {
            let (at, provider) = (Some(p.span().start), p.get_ref());
            let bedrock = provider.kind == ProviderKind::Bedrock;
            if bedrock && provider.region.is_none() {
                let message =
                    format!("provider {name:?}: Bedrock needs `region` (it signs every request)");
                return Err(error(at, message));
            }
            if bedrock && provider.key.is_some() {
                let message = format!(
                    "provider {name:?}: Bedrock takes no `key`: requests are signed with the AWS credentials of the process (environment, profile, ECS task role, instance role)"
                );
                return Err(error(at, message));
            }
            if !bedrock && provider.key.is_none() {
                let message = format!("provider {name:?}: `key` (a [secrets] entry) is missing");
                return Err(error(at, message));
            }
            if provider.kind == ProviderKind::Azure {
                if provider.api_version.is_none() {
                    let message = format!("provider {name:?}: Azure needs `api_version`");
                    return Err(error(at, message));
                }
                if provider.base_url.is_none() {
                    let message = format!(
                        "provider {name:?}: Azure needs `base_url` (https://RESOURCE.openai.azure.com)"
                    );
                    return Err(error(at, message));
                }
            }
            for url in [&provider.base_url, &provider.native_url]
                .into_iter()
                .flatten()
            {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    let message =
                        format!("provider {name:?}: {url:?} is not an http:// or https:// URL");
                    return Err(error(at, message));
                }
            }
        }
        let provider_lines = parsed
            .providers
            .iter()
            .map(|(name, p)| (name.clone(), line_at(text, p.span().start)))
            .collect();
        let mut table = ModelTable {
            provider_lines,
            providers: parsed
                .providers
                .into_iter()
                .map(|(name, p)| (name, p.into_inner()))
                .collect(),
            ..ModelTable::default()
        };
        for (i, spanned) in parsed.models.iter().enumerate() {
            let (entry, here) = (spanned.get_ref(), Some(spanned.span().start));
            if entry.targets.is_empty() {
                return Err(error(
                    here,
                    format!("model {:?} has no targets", entry.name),
                ));
            }
            for t in &entry.targets {
                let Some(p) = table.providers.get(&t.provider) else {
                    let unknown = crate::names::unknown(
                        "provider",
                        &t.provider,
                        table.providers.keys().map(String::as_str),
                    );
                    return Err(error(here, format!("model {:?}: {unknown}", entry.name)));
                };
                if p.kind == ProviderKind::Azure && t.deployment.is_none() {
                    return Err(error(
                        here,
                        format!("model {:?}: Azure target needs `deployment`", entry.name),
                    ));
                }
            }
            if entry.name.contains('*') {
                table.globs.push(i);
            }
            let names = std::iter::once(&entry.name).filter(|n| !n.contains('*'));
            for name in names.chain(&entry.aliases) {
                if table.exact.insert(name.clone(), i).is_some() {
                    return Err(error(here, format!("model name {name:?} appears twice")));
                }
            }
        }
        table.entries = parsed
            .models
            .into_iter()
            .map(toml::Spanned::into_inner)
            .collect();
        Ok(table)
    }

    /// The names a client may ask for by name (exact names and aliases), for `/v1/models`.
    pub fn model_ids(&self) -> impl Iterator<Item = (&str, &ModelEntry)> {
        self.exact
            .iter()
            .filter_map(|(name, &i)| Some((name.as_str(), self.entries.get(i)?)))
    }

    /// The line provider `name`'s table starts on.
    pub fn provider_line(&self, name: &str) -> Option<usize> {
        self.provider_lines.get(name).copied()
    }

    /// The entries named by a glob (`claude-*`), in file order.
    pub fn glob_entries(&self) -> impl Iterator<Item = &ModelEntry> {
        self.globs.iter().filter_map(|&i| self.entries.get(i))
    }

    /// The entry serving `model`: an exact name or alias first, then the first glob.
    pub fn resolve(&self, model: &str) -> Option<&ModelEntry> {
        let index = self.exact.get(model).copied().or_else(|| {
            self.globs
                .iter()
                .copied()
                .find(|&i| glob(&self.entries[i].name, model))
        })?;
        self.entries.get(index)
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for middle in parts {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[providers.openai]
kind = "openai"
key = "openai-api-key"

[providers.anthropic]
kind = "anthropic"
key = "anthropic-api-key"

[providers.gemini]
kind = "gemini"
key = "google-api-key"
native_url = "http://127.0.0.1:9/gemini/"

[providers.azure]
kind = "azure"
base_url = "https://example.openai.azure.com"
key = "azure-api-key"
api_version = "2024-10-21"

[[models]]
name = "gpt-4o"
aliases = ["gpt4", "default"]
targets = [{ provider = "openai" }, { provider = "azure", deployment = "gpt-4o-prod" }]

[[models]]
name = "gpt-*"
targets = [{ provider = "openai" }]

[[models]]
name = "claude-*"
targets = [{ provider = "anthropic" }]

[[models]]
name = "gemini-*-flash*"
targets = [{ provider = "gemini" }]
"#;

    fn table() -> ModelTable {
        ModelTable::parse("models.toml", FILE).expect("parses")
    }

    fn providers_of(t: &ModelTable, model: &str) -> Vec<String> {
        t.resolve(model)
            .map(|e| e.targets.iter().map(|t| t.provider.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn exact_names_and_aliases_beat_globs() {
        let t = table();
        assert_eq!(providers_of(&t, "gpt-4o"), ["openai", "azure"]);
        assert_eq!(providers_of(&t, "gpt4"), ["openai", "azure"]);
        assert_eq!(providers_of(&t, "gpt-4.1-mini"), ["openai"]);
        assert_eq!(providers_of(&t, "claude-sonnet-4-5"), ["anthropic"]);
        assert_eq!(providers_of(&t, "gemini-2.5-flash-lite"), ["gemini"]);
        assert!(t.resolve("gemini-2.5-pro").is_none());
        assert!(t.resolve("llama-3").is_none());
        assert!(t.resolve("").is_none());
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("gpt-*", "gpt-"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy") && !glob("gpt-*", "xgpt-4"));
        assert!(glob("*", "anything") && glob("*-mini", "o4-mini"));
        assert!(!glob("ab*ba", "aba"), "the ends may not overlap");
    }

    #[test]
    fn each_provider_has_its_url_and_key_header() {
        let t = table();
        let urls = |model: &str, endpoint| {
            let entry = t.resolve(model).expect("known");
            entry
                .targets
                .iter()
                .map(|target| {
                    let p = &t.providers[&target.provider];
                    (p.url(endpoint, target), p.kind.key_header().0)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            urls("gpt-4o", Endpoint::ChatCompletions),
            [
                ("https://api.openai.com/v1/chat/completions".to_string(), "authorization"),
                (
                    "https://example.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
                        .to_string(),
                    "api-key"
                )
            ]
        );
        assert_eq!(
            urls("gemini-2.0-flash", Endpoint::Embeddings)[0].0,
            "https://generativelanguage.googleapis.com/v1beta/openai/embeddings"
        );
        assert_eq!(
            urls("claude-x", Endpoint::ChatCompletions)[0].0,
            "https://api.anthropic.com/v1/chat/completions"
        );
        let native = |p: &str, rest| t.providers[p].native_url(rest);
        assert_eq!(
            native("anthropic", "/v1/messages"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            native("gemini", "/v1beta/models/g:generateContent?alt=sse"),
            "http://127.0.0.1:9/gemini/v1beta/models/g:generateContent?alt=sse"
        );
        assert_eq!(ProviderKind::Anthropic.native_key_header().0, "x-api-key");
        assert_eq!(ProviderKind::Gemini.native_key_header().0, "x-goog-api-key");
        assert_eq!(
            Endpoint::of_path("/chat/completions/"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(Endpoint::of_path("/models"), None);
        let ids: Vec<&str> = t.model_ids().map(|(id, _)| id).collect();
        assert_eq!(ids, ["default", "gpt-4o", "gpt4"]);
    }

    #[test]
    fn bedrock_is_addressed_by_region_and_model_id() {
        let t = ModelTable::parse(
            "models.toml",
            "[providers.b]\nkind = \"bedrock\"\nregion = \"us-east-1\"\n\
             [providers.local]\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"http://127.0.0.1:9/\"\n",
        )
        .expect("parses");
        assert_eq!(
            t.providers["b"].bedrock_url("anthropic.claude-sonnet-4-5-20250929-v1:0", false),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        );
        assert_eq!(
            t.providers["local"].bedrock_url("m/x y", true),
            "http://127.0.0.1:9/model/m%2Fx%20y/converse-stream"
        );
        assert_eq!(
            t.providers["b"].native_url("/model/m/invoke"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke"
        );
    }

    #[test]
    fn mistakes_name_the_file_and_line() {
        let cases = [
            // An entry's errors point at its `[[models]]` line.
            ("[[models]]\nname = \"x\"\ntargets = [{ provider = \"nope\" }]\n", 1, "unknown provider"),
            (
                "[providers.openai]\nkind = \"openai\"\nkey = \"k\"\n[[models]]\nname = \"x\"\ntargets = [{ provider = \"opnai\" }]\n",
                4,
                "did you mean openai",
            ),
            ("\n[[models]]\nname = \"x\"\ntargets = []\n", 2, "no targets"),
            ("[providers.a]\nkind = \"azure\"\nbase_url = \"https://a\"\nkey = \"k\"\n", 1, "api_version"),
            ("[providers.a]\nkind = \"azure\"\napi_version = \"1\"\nkey = \"k\"\n", 1, "base_url"),
            ("[providers.a]\nkind = \"openai\"\nbase_url = \"api.openai.com\"\nkey = \"k\"\n", 1, "not an http"),
            ("[providers.a]\nkind = \"bedrock\"\n", 1, "Bedrock needs `region`"),
            ("[providers.a]\nkind = \"bedrock\"\nregion = \"eu-west-1\"\nkey = \"k\"\n", 1, "takes no `key`"),
            ("[providers.a]\nkind = \"openai\"\n", 1, "`key`"),
            ("[providers.a]\nkind = \"claude\"\nkey = \"k\"\n", 2, "bedrock"),
            (
                "[providers.o]\nkind = \"openai\"\nkey = \"k\"\n[[models]]\nname = \"a\"\ntargets = [{ provider = \"o\" }]\n[[models]]\nname = \"b\"\naliases = [\"a\"]\ntargets = [{ provider = \"o\" }]\n",
                7,
                "twice",
            ),
        ];
        for (text, line, words) in cases {
            let e = ModelTable::parse("models.toml", text).expect_err(text);
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.to_string().contains(words), "{e}");
            assert!(
                e.to_string().starts_with(&format!("models.toml:{line}:")),
                "{e}"
            );
        }
    }
}
