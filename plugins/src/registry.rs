//! Builds plugins from their config: the one place that knows plugins by name.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use thiserror::Error;

use crate::net::NetSet;
use crate::plugins::rate_limit::LimitConfig;
use crate::plugins::{
    admin_secret, bot_control, geo, ip_reputation, jwt, origin_verify, owasp, rate_limit,
};
use crate::rate_window::{RateWindow, SharedWindows, WindowSpec};
use crate::{Action, ChainEntry, Plugin, SharedSecret};

/// One entry of a listener's `plugins` list, as written in config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PluginSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub action: Action,
    /// Peers in `[network] internal_cidrs` skip this plugin: the platform's services calling
    /// each other inside the VPC, which seed 003 routes around the WAF.
    #[serde(default)]
    pub exempt_internal: bool,
    /// The plugin's own settings; each plugin rejects fields it does not know.
    #[serde(flatten)]
    pub config: toml::Table,
}

/// What a plugin may ask of the proxy while it is built.
pub trait BuildContext {
    /// A secret declared under `[secrets]`.
    fn secret(&self, name: &str) -> Result<SharedSecret, BuildError>;
    /// The networks whose socket peers count as internal.
    fn internal_networks(&self) -> &NetSet;
    /// The rule files at `path` (a file, or a directory's `*.toml` in name order), relative
    /// to the rules directory, as `(file name, text)`.
    fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError>;

    /// A binary rule file (a geolocation database) at `path`, relative to the rules
    /// directory, as `(file name, bytes)`.
    fn rule_bytes(&self, path: &str) -> Result<(String, Vec<u8>), BuildError> {
        Err(BuildError::RuleFile {
            file: path.to_string(),
            line: None,
            message: "binary rule files cannot be read here".into(),
        })
    }

    /// Compiles rule files. Compiling is the slow part of a reload: the proxy overrides
    /// this to reuse a rule set whose files did not change.
    fn rule_set(
        &self,
        files: &[(String, String)],
    ) -> Result<std::sync::Arc<crate::waf::RuleSet>, BuildError> {
        Ok(std::sync::Arc::new(crate::waf::RuleSet::compile(files)?))
    }

    /// The networks in IP list files (see [`crate::prefix_table::read_lists`]), relative to
    /// the rules directory.
    fn ip_lists(&self, files: &[String]) -> Result<Vec<ipnet::IpNet>, BuildError> {
        let mut texts = Vec::new();
        for f in files {
            texts.extend(self.rule_files(f)?);
        }
        Ok(crate::prefix_table::read_lists(
            texts.iter().map(|(f, t)| (f.as_str(), t.as_str())),
        )?)
    }

    /// The counters of a rate limit. The proxy overrides this to hand a rebuilt plugin the
    /// counters of an unchanged limit, so that a reload forgets nothing.
    fn rate_window(&self, limit: &LimitConfig, spec: WindowSpec) -> std::sync::Arc<RateWindow> {
        std::sync::Arc::new(RateWindow::new(spec, limit.max_keys))
    }

    /// The keys of a token issuer. The proxy fetches them and keeps them fresh; fetchers are
    /// kept across reloads, so that an unchanged issuer is not fetched again.
    fn jwks(
        &self,
        issuer: &jwt::IssuerConfig,
    ) -> Result<std::sync::Arc<dyn crate::jws::KeySource>, BuildError> {
        Err(BuildError::invalid(
            "jwt",
            &format!("cannot fetch the keys of {:?} here", issuer.issuer),
        ))
    }

    /// The store shared with other instances (`[rate_limit_store]`), if one is configured.
    fn shared_windows(&self) -> Result<Option<std::sync::Arc<dyn SharedWindows>>, BuildError> {
        Ok(None)
    }
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("unknown plugin type {0:?}; known types: {known}", known = KNOWN.join(", "))]
    UnknownPlugin(String),
    #[error("plugin {plugin}: {source}")]
    Config {
        plugin: &'static str,
        source: toml::de::Error,
    },
    #[error("plugin {plugin}: {reason}")]
    Invalid {
        plugin: &'static str,
        reason: String,
    },
    /// A secret no `[secrets]` table declares: its name, and the nearest declared ones.
    #[error("secret {0:?} is not declared under [secrets]{1}")]
    UnknownSecret(String, String),
    #[error("secret {0:?} has no usable value (unset, empty or a placeholder)")]
    EmptySecret(String),
    /// A secret whose source could not be read; the message names the source, never a value.
    #[error("{0}")]
    SecretUnavailable(String),
    /// A rule file that does not parse or validate; reported with its own file and line.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    RuleFile {
        file: String,
        line: Option<usize>,
        message: String,
    },
}

/// The 1-based line of byte `offset` in `text`, for errors that name a file and line.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A TOML rule file read as `T`; a mistake is reported with the file and line.
pub fn parse_rule_file<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, BuildError> {
    toml::from_str(text).map_err(|e| BuildError::RuleFile {
        file: file.to_string(),
        line: e.span().map(|s| line_at(text, s.start)),
        message: e.message().to_string(),
    })
}

impl From<crate::prefix_table::ListError> for BuildError {
    fn from(e: crate::prefix_table::ListError) -> Self {
        BuildError::RuleFile {
            file: e.file,
            line: Some(e.line),
            message: e.message,
        }
    }
}

impl From<crate::waf::RuleError> for BuildError {
    fn from(e: crate::waf::RuleError) -> Self {
        BuildError::RuleFile {
            file: e.file,
            line: e.line,
            message: e.message,
        }
    }
}

impl BuildError {
    pub fn invalid(plugin: &'static str, reason: &str) -> Self {
        BuildError::Invalid {
            plugin,
            reason: reason.to_string(),
        }
    }
}

type Builder = fn(toml::Table, &dyn BuildContext) -> Result<Box<dyn Plugin>, BuildError>;

const REGISTRY: &[(&str, Builder)] = &[
    ("ip_reputation", |t, ctx| {
        let config = parse("ip_reputation", t)?;
        Ok(Box::new(ip_reputation::IpReputation::build(config, ctx)?))
    }),
    ("origin_verify", |t, ctx| {
        let config = parse("origin_verify", t)?;
        Ok(Box::new(origin_verify::OriginVerify::build(config, ctx)?))
    }),
    ("admin_secret", |t, ctx| {
        let config = parse("admin_secret", t)?;
        Ok(Box::new(admin_secret::AdminSecret::build(config, ctx)?))
    }),
    ("rate_limit", |t, ctx| {
        let config = parse("rate_limit", t)?;
        Ok(Box::new(rate_limit::RateLimit::build(config, ctx)?))
    }),
    ("owasp", |t, ctx| {
        let config = parse("owasp", t)?;
        Ok(Box::new(owasp::Waf::build("owasp", config, ctx)?))
    }),
    ("bad_inputs", |t, ctx| {
        let config = parse("bad_inputs", t)?;
        Ok(Box::new(owasp::Waf::build("bad_inputs", config, ctx)?))
    }),
    ("bot_control", |t, ctx| {
        let config = parse("bot_control", t)?;
        Ok(Box::new(bot_control::BotControl::build(config, ctx)?))
    }),
    ("jwt", |t, ctx| {
        let config = parse("jwt", t)?;
        Ok(Box::new(jwt::Jwt::build(config, ctx)?))
    }),
    ("geo", |t, ctx| {
        let config = parse("geo", t)?;
        Ok(Box::new(geo::Geo::build(config, ctx)?))
    }),
];

/// Plugin type names, in registry order.
pub const KNOWN: &[&str] = &[
    "ip_reputation",
    "origin_verify",
    "admin_secret",
    "rate_limit",
    "owasp",
    "bad_inputs",
    "bot_control",
    "jwt",
    "geo",
];

fn parse<T: DeserializeOwned>(plugin: &'static str, table: toml::Table) -> Result<T, BuildError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|source| BuildError::Config { plugin, source })
}

/// Builds one chain entry from its spec.
pub fn build(spec: &PluginSpec, ctx: &dyn BuildContext) -> Result<ChainEntry, BuildError> {
    let (_, builder) = REGISTRY
        .iter()
        .find(|(name, _)| *name == spec.kind)
        .ok_or_else(|| BuildError::UnknownPlugin(spec.kind.clone()))?;
    Ok(ChainEntry {
        plugin: builder(spec.config.clone(), ctx)?,
        action: spec.action,
        exempt: spec
            .exempt_internal
            .then(|| ctx.internal_networks().clone()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::SecretValues;

    pub struct TestContext {
        internal: NetSet,
        files: Vec<(String, String)>,
        keys: Vec<(String, std::sync::Arc<dyn crate::jws::KeySource>)>,
    }

    impl TestContext {
        pub fn new() -> Self {
            TestContext {
                internal: NetSet::new(["10.20.0.0/16".parse().expect("cidr")]),
                files: Vec::new(),
                keys: Vec::new(),
            }
        }

        /// Keys served for a JWKS URL.
        pub fn with_keys(
            mut self,
            jwks_url: &str,
            keys: std::sync::Arc<dyn crate::jws::KeySource>,
        ) -> Self {
            self.keys.push((jwks_url.to_string(), keys));
            self
        }

        /// A rule file `name` holding `text`.
        pub fn with_file(mut self, name: &str, text: &str) -> Self {
            self.files.push((name.to_string(), text.to_string()));
            self
        }
    }

    impl BuildContext for TestContext {
        fn secret(&self, name: &str) -> Result<SharedSecret, BuildError> {
            let value = match name {
                "origin" => "s3cret-origin",
                "admin" => "s3cret-admin",
                other => return Err(BuildError::UnknownSecret(other.to_string(), String::new())),
            };
            Ok(SharedSecret::new(
                name,
                SecretValues::new([value.as_bytes().to_vec()]),
            ))
        }

        fn internal_networks(&self) -> &NetSet {
            &self.internal
        }

        fn jwks(
            &self,
            issuer: &jwt::IssuerConfig,
        ) -> Result<std::sync::Arc<dyn crate::jws::KeySource>, BuildError> {
            self.keys
                .iter()
                .find(|(url, _)| *url == issuer.jwks_url)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| BuildError::invalid("jwt", "no keys for this URL"))
        }

        fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
            let found: Vec<_> = self
                .files
                .iter()
                .filter(|(n, _)| n == path)
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(BuildError::invalid("test", &format!("no rule file {path}")));
            }
            Ok(found)
        }

        fn rule_bytes(&self, path: &str) -> Result<(String, Vec<u8>), BuildError> {
            let (name, text) = self.rule_files(path)?.swap_remove(0);
            Ok((name, text.into_bytes()))
        }
    }

    fn spec(src: &str) -> PluginSpec {
        toml::from_str(src).expect("spec parses")
    }

    #[test]
    fn line_at_counts_from_one_at_any_offset() {
        let text = "a = 1\nb = 2\n";
        assert_eq!(line_at(text, 0), 1);
        assert_eq!(line_at(text, 5), 1, "the newline ends line 1");
        assert_eq!(line_at(text, 6), 2, "the first byte of line 2");
        assert_eq!(line_at(text, 99), 3, "past the end");
    }

    #[test]
    fn registry_and_known_list_agree() {
        let names: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, KNOWN);
    }

    #[test]
    fn internal_peers_skip_an_exempt_plugin_and_nobody_else_does() {
        use crate::plugins::testing::TestRequest;
        let limit =
            "type = \"rate_limit\"\n[[limits]]\nname = \"x\"\nrequests = 1\nwindow_seconds = 60";
        let chain = |exempt: bool| {
            let src = format!("exempt_internal = {exempt}\n{limit}");
            crate::Chain::new(vec![
                build(&spec(&src), &TestContext::new()).expect("builds")
            ])
        };
        let refused = |chain: &crate::Chain, req: &TestRequest| {
            let judged =
                crate::now_or_never(chain.evaluate(&req.view(), crate::Stage::All, |_| {}));
            judged.expect("ready").denied.is_some()
        };
        let internal = TestRequest::new("10.20.1.1", "/");
        let external = TestRequest::new("192.0.2.1", "/");
        let exempt = chain(true);
        assert!(
            (0..5).all(|_| !refused(&exempt, &internal)),
            "the VPC is not limited"
        );
        assert!(!refused(&exempt, &external));
        assert!(refused(&exempt, &external), "outside is");
        let judged = chain(false);
        assert!(!refused(&judged, &internal));
        assert!(
            refused(&judged, &internal),
            "without the flag the VPC is limited too"
        );
        assert!(!exempt.inspects_body("10.20.1.1".parse().expect("ip")));
    }

    #[test]
    fn builds_from_toml_with_action() {
        let entry = build(
            &spec("type = \"admin_secret\"\nsecret = \"admin\"\naction = \"count\""),
            &TestContext::new(),
        )
        .expect("builds");
        assert_eq!(entry.plugin.name(), "admin_secret");
        assert_eq!(entry.action, Action::Count);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let ctx = TestContext::new();
        let e = build(
            &spec("type = \"admin_secret\"\nsecret = \"admin\"\nsecrte = 1"),
            &ctx,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("secrte"), "{e}");
        let e = build(&spec("type = \"nope\""), &ctx)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nope") && e.contains("origin_verify"), "{e}");
    }
}
