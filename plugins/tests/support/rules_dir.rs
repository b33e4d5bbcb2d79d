//! A [`BuildContext`] over a rules directory on disk, for tests, examples and benchmarks
//! (the proxy has its own, with secrets and a compile cache). Included with `#[path]`.

use std::path::PathBuf;

use http::{HeaderMap, Method};
use rampart_plugins::net::NetSet;
use rampart_plugins::plugins::owasp::{Waf, WafConfig};
use rampart_plugins::registry::{BuildContext, BuildError};
use rampart_plugins::{RequestView, SecretValues, SharedSecret};

pub struct RulesDir {
    pub dir: PathBuf,
    pub internal: NetSet,
    /// The value every secret has here, if any.
    pub secret: Option<&'static str>,
}

impl RulesDir {
    /// The project's shipped `rules/` directory.
    pub fn shipped() -> Self {
        RulesDir {
            dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules"),
            internal: NetSet::default(),
            secret: None,
        }
    }

    /// The shipped WAF rules, as the `owasp` and `bad_inputs` plugins with `config` (their
    /// TOML settings, such as `routes = { chat = "llm" }`).
    #[allow(dead_code)] // not every file that includes this module builds a WAF
    pub fn wafs(&self, config: &str) -> [Waf; 2] {
        ["owasp", "bad_inputs"].map(|name| self.waf(name, config))
    }

    /// One WAF plugin (`owasp` or `bad_inputs`) with `config`.
    #[allow(dead_code)]
    pub fn waf(&self, plugin: &'static str, config: &str) -> Waf {
        let config: WafConfig = toml::from_str(config).unwrap_or_else(|e| panic!("{e}"));
        Waf::build(plugin, config, self).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A request from an outside client (a documentation address, nobody's VPC) on listener
/// `web`, route `route`: what the WAF's examples, tests and benchmarks judge.
#[allow(dead_code)] // not every file that includes this module judges requests
pub fn outside_request<'a>(
    route: &'a str,
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: Option<&'a [u8]>,
) -> RequestView<'a> {
    let peer = std::net::IpAddr::from([198, 51, 100, 4]);
    RequestView {
        listener: "web",
        route,
        peer,
        client: peer,
        method,
        path,
        query,
        headers,
        consumed: &[],
        body,
        body_items: &[],
        identity: None,
        inspections: None,
    }
}

impl BuildContext for RulesDir {
    fn secret(&self, name: &str) -> Result<SharedSecret, BuildError> {
        match self.secret {
            Some(v) => Ok(SharedSecret::new(
                name,
                SecretValues::new([v.as_bytes().to_vec()]),
            )),
            None => Err(BuildError::UnknownSecret(name.into(), String::new())),
        }
    }

    fn internal_networks(&self) -> &NetSet {
        &self.internal
    }

    fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
        let dir = self.dir.join(path);
        if dir.is_file() {
            let text = std::fs::read_to_string(&dir)
                .map_err(|e| BuildError::invalid("rules", &format!("{}: {e}", dir.display())))?;
            return Ok(vec![(dir.display().to_string(), text)]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| BuildError::invalid("rules", &format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        Ok(files
            .into_iter()
            .filter_map(|f| Some((f.display().to_string(), std::fs::read_to_string(&f).ok()?)))
            .collect())
    }
}
