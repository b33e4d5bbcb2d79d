//! The rules snapshot: everything under `rules/`, parsed, validated and built into the
//! structures requests use. Immutable once built; a reload builds a new one.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use rampart_plugins::net::NetSet;
use rampart_plugins::path::has_segment_prefix;
use rampart_plugins::plugins::rate_limit::LimitConfig;
use rampart_plugins::rate_window::{RateWindow, SharedWindows, WindowSpec};
use rampart_plugins::registry::{self, BuildContext, BuildError};
use rampart_plugins::waf::RuleSet;
use rampart_plugins::{Chain, SecretValues, SharedSecret};

use crate::aws_secrets::AwsSecrets;
use crate::config::SecretsManagerConfig;
use crate::config::{
    BodyInspection, ClientLimits, ConfigError, GatewayConfig, ListenerConfig, SourceFile,
    StoreConfig, GATEWAY_FILE,
};
use crate::config::{LlmConfig, RouteConfig, SecretSpec};
use crate::config_view::SourceRecord;
use crate::jwks::JwksFetcher;
use crate::llm::cooldown::Cooldowns;
use crate::llm::{AwsCredentials, LlmRules, LlmTarget};
use crate::redis_windows::{RedisWindows, StoreMetrics};
use crate::secrets;
use crate::upstream::UpstreamPool;
use rampart_plugins::jws::{FixedKeys, KeySource};
use rampart_plugins::models::ModelTable;
use rampart_plugins::plugins::jwt::IssuerConfig;
use rampart_plugins::token_budget::{BudgetLimit, TokenBudget};

pub struct RuleSnapshot {
    pub generation: u64,
    pub config: GatewayConfig,
    pub internal: NetSet,
    pub trusted_proxies: NetSet,
    /// By name. Looked up several times per request; names come from the config, so a fast
    /// hash without a random key is safe.
    pub listeners: HashMap<String, ListenerRules, foldhash::fast::FixedState>,
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
    /// The model table and provider settings, when a route goes to providers.
    pub llm: Option<Arc<LlmRules>>,
    /// The files these rules were built from, for `GET /config` and the reload log.
    pub sources: Vec<SourceRecord>,
    /// The secrets the rules use, whose values `GET /config` must never show.
    secrets: Vec<SharedSecret>,
}

pub struct ListenerRules {
    pub chain: Chain,
    pub tls: bool,
    pub client: ClientLimits,
    pub block_log_sample: f64,
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Arc<Route>>,
}

/// Something a reload would take away from what is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Listener(String),
    Route { listener: String, prefix: String },
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removed::Listener(name) => write!(f, "listener {name:?}"),
            Removed::Route { listener, prefix } => {
                write!(f, "route {prefix:?} on listener {listener:?}")
            }
        }
    }
}

pub struct Route {
    pub name: String,
    pub prefix: String,
    pub target: RouteTarget,
    /// How bodies on this route are held and judged (the route's or the listener's).
    pub body: BodyInspection,
}

pub enum RouteTarget {
    /// Proxied by Pingora to a pool of replicas.
    Pool(Arc<UpstreamPool>),
    /// Called by rampart's own client (see [`crate::llm`]).
    Llm(LlmTarget),
}

impl Route {
    /// The upstream pool's name, or `None` for a provider route.
    pub fn pool(&self) -> Option<&Arc<UpstreamPool>> {
        match &self.target {
            RouteTarget::Pool(pool) => Some(pool),
            RouteTarget::Llm(_) => None,
        }
    }
}

impl ListenerRules {
    /// The most specific route for a normalised path.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| has_segment_prefix(path, &r.prefix, false))
    }
}

impl RuleSnapshot {
    /// Reads and validates the rules directory. Upstream pools whose definition did not
    /// change are taken over from `previous`, keeping their health state.
    pub fn load(
        dir: &Path,
        generation: u64,
        previous: Option<&RuleSnapshot>,
        carried: &Carried,
    ) -> Result<RuleSnapshot, ConfigError> {
        let source = SourceFile::read(&dir.join(GATEWAY_FILE))?;
        let config: GatewayConfig = source.parse()?;
        Self::build(&source, config, generation, previous, carried)
    }

    fn build(
        source: &SourceFile,
        config: GatewayConfig,
        generation: u64,
        previous: Option<&RuleSnapshot>,
        carried: &Carried,
    ) -> Result<RuleSnapshot, ConfigError> {
        if let Err(e) = config.admin.listen.parse::<SocketAddr>() {
            return Err(source.error(None, format!("admin.listen: {e}")));
        }
        let mut upstreams = BTreeMap::new();
        for (name, spanned) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|pool| pool.config == *spanned.get_ref());
            let pool = match reused {
                Some(pool) => pool.clone(),
                None => Arc::new(
                    UpstreamPool::new(name, spanned.get_ref())
                        .map_err(|e| source.error(Some(spanned.span().start), e))?,
                ),
            };
            upstreams.insert(name.clone(), pool);
        }

        let ctx = SnapshotContext {
            rules_dir: source
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            config: &config,
            carried,
            internal: NetSet::new(config.network.internal_cidrs.iter().copied()),
            resolved: RefCell::new(HashMap::new()),
            sources: RefCell::new(vec![SourceRecord::new(
                GATEWAY_FILE,
                source.text.as_bytes(),
                true,
            )]),
        };
        let routes = config.listeners.iter().flat_map(|l| &l.get_ref().routes);
        let llm = match routes.clone().any(|r| r.models || r.provider.is_some()) {
            true => Some(Arc::new(build_llm(source, &ctx)?)),
            false => None,
        };
        if config.listeners.is_empty() {
            return Err(source.error(
                None,
                "no [[listeners]]: these rules would serve nothing (is the file empty or cut short?)",
            ));
        }
        let mut listeners = HashMap::default();
        let mut addresses = HashSet::new();
        for spanned in &config.listeners {
            let at = Some(spanned.span().start);
            let listener = spanned.get_ref();
            let addr: SocketAddr = listener.listen.parse().map_err(|e| {
                source.error(
                    at,
                    format!(
                        "listener {:?}: listen {:?}: {e}",
                        listener.name, listener.listen
                    ),
                )
            })?;
            if !addresses.insert(addr) {
                return Err(source.error(at, format!("listen address {addr} is used twice")));
            }
            let rules = build_listener(listener, &upstreams, llm.as_deref(), &ctx).map_err(
                |e| match e {
                    ListenerError::RuleFile(e) => e,
                    ListenerError::At(offset, msg) => source.error(offset.or(at), msg),
                },
            )?;
            if listeners.insert(listener.name.clone(), rules).is_some() {
                return Err(source.error(
                    at,
                    format!("listener name {:?} is used twice", listener.name),
                ));
            }
        }
        let mut secrets: Vec<SharedSecret> = ctx.resolved.borrow().values().cloned().collect();
        if let Some(llm) = &llm {
            secrets.extend(llm.keys.values().cloned());
        }
        // A file two plugins read is one source.
        let mut sources = ctx.sources.take();
        let mut seen = HashSet::new();
        sources.retain(|s| seen.insert(s.path.clone()));
        Ok(RuleSnapshot {
            generation,
            sources,
            secrets,
            internal: ctx.internal.clone(),
            trusted_proxies: NetSet::new(config.network.trusted_proxies.iter().copied()),
            listeners,
            upstreams,
            llm,
            config,
        })
    }

    /// The current values of every secret the rules use.
    pub fn secret_values(&self) -> Vec<Vec<u8>> {
        self.secrets
            .iter()
            .flat_map(|s| s.load().iter().map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    /// What `previous` served that this snapshot drops.
    pub fn removed_since(&self, previous: &RuleSnapshot) -> Vec<Removed> {
        let mut removed = Vec::new();
        let mut names: Vec<&String> = previous.listeners.keys().collect();
        names.sort();
        for name in names {
            let Some(now) = self.listeners.get(name) else {
                removed.push(Removed::Listener(name.clone()));
                continue;
            };
            for route in &previous.listeners[name].routes {
                if !now.routes.iter().any(|r| r.prefix == route.prefix) {
                    removed.push(Removed::Route {
                        listener: name.clone(),
                        prefix: route.prefix.clone(),
                    });
                }
            }
        }
        removed
    }

    /// What a reload cannot change: listener names, addresses and TLS need a restart.
    pub fn listener_layout(&self) -> Vec<(String, String, bool)> {
        let mut layout: Vec<_> = self
            .config
            .listeners
            .iter()
            .map(|l| {
                let l = l.get_ref();
                (l.name.clone(), l.listen.clone(), l.tls.is_some())
            })
            .collect();
        layout.sort();
        layout
    }
}

impl ListenerRules {
    /// The routes' prefixes, sorted.
    pub fn route_prefixes(&self) -> Vec<String> {
        let mut prefixes: Vec<String> = self.routes.iter().map(|r| r.prefix.clone()).collect();
        prefixes.sort();
        prefixes
    }
}

/// Where a listener's error is: in gateway.toml (at an offset, if known) or in a rule file.
enum ListenerError {
    At(Option<usize>, String),
    RuleFile(ConfigError),
}

/// The model table, provider keys, budgets and client of provider routes.
fn build_llm(source: &SourceFile, ctx: &SnapshotContext<'_>) -> Result<LlmRules, ConfigError> {
    let settings = ctx.config.llm.clone();
    let path = ctx.rules_dir.join(&settings.models);
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        file: path.clone(),
        line: None,
        message: format!("cannot read the model table (llm.models): {e}"),
    })?;
    ctx.note_source(&path, text.as_bytes(), true);
    let table = ModelTable::parse(&path.display().to_string(), &text).map_err(|e| ConfigError {
        file: e.file.into(),
        line: e.line,
        message: e.message,
    })?;
    let mut keys = HashMap::new();
    for (name, provider) in &table.providers {
        // Bedrock signs with AWS credentials instead.
        let Some(key_name) = &provider.key else {
            continue;
        };
        let key = ctx.provider_key(key_name).map_err(|message| ConfigError {
            file: path.clone(),
            line: table.provider_line(name),
            message: format!("provider {name:?}: {message}"),
        })?;
        keys.insert(name.clone(), key);
    }
    let store = match &ctx.config.rate_limit_store {
        Some(config) => Some(
            ctx.carried
                .store(config)
                .map_err(|e| source.error(None, e))?,
        ),
        None => None,
    };
    let limits = settings
        .token_limits
        .iter()
        .map(|l| {
            let key = format!("tokens:{l:?}");
            BudgetLimit {
                window: ctx.carried.window_by(&key, l.spec(), l.max_keys),
                config: l.clone(),
            }
        })
        .collect();
    let shared = store.clone().map(|s| s as Arc<dyn SharedWindows>);
    let budget = TokenBudget::new(limits, shared, settings.on_store_error);
    let client = ctx
        .carried
        .llm_client(&settings)
        .map_err(|e| source.error(None, e))?;
    Ok(LlmRules {
        settings,
        table,
        keys,
        budget,
        client,
        cooldowns: ctx.carried.cooldowns.clone(),
        aws: ctx.carried.aws_credentials.clone(),
        store,
    })
}

fn build_listener(
    listener: &ListenerConfig,
    upstreams: &BTreeMap<String, Arc<UpstreamPool>>,
    llm: Option<&LlmRules>,
    ctx: &SnapshotContext<'_>,
) -> Result<ListenerRules, ListenerError> {
    let name = &listener.name;
    let mut entries = Vec::with_capacity(listener.plugins.len());
    for spec in &listener.plugins {
        let entry = registry::build(spec.get_ref(), ctx).map_err(|e| match e {
            BuildError::RuleFile {
                file,
                line,
                message,
            } => ListenerError::RuleFile(ConfigError {
                file: file.into(),
                line,
                message,
            }),
            e => ListenerError::At(Some(spec.span().start), format!("listener {name:?}: {e}")),
        })?;
        entries.push(entry);
    }
    let mut routes = Vec::with_capacity(listener.routes.len());
    for r in &listener.routes {
        if !r.prefix.starts_with('/') {
            return Err(ListenerError::At(
                None,
                format!(
                    "listener {name:?}: route prefix {:?} must start with '/'",
                    r.prefix
                ),
            ));
        }
        let problem = |what: String| {
            ListenerError::At(
                None,
                format!("listener {name:?}: route {:?} {what}", r.prefix),
            )
        };
        let target = match (&r.upstream, r.models, &r.provider) {
            (Some(upstream), false, None) => {
                let pool = upstreams
                    .get(upstream)
                    .ok_or_else(|| problem(format!("names unknown upstream {upstream:?}")))?;
                RouteTarget::Pool(pool.clone())
            }
            (None, true, None) => RouteTarget::Llm(LlmTarget::ByModel),
            (None, false, Some(provider)) => {
                let known = llm.is_some_and(|l| l.table.providers.contains_key(provider));
                if !known {
                    return Err(problem(format!(
                        "names provider {provider:?}, which the model table does not define"
                    )));
                }
                RouteTarget::Llm(LlmTarget::Native(provider.clone()))
            }
            _ => {
                return Err(problem(
                    "needs exactly one of `upstream`, `models = true` and `provider`".into(),
                ))
            }
        };
        routes.push(Arc::new(Route {
            name: r.name.clone().unwrap_or_else(|| default_route_name(r)),
            prefix: r.prefix.clone(),
            target,
            body: r.body_inspection.unwrap_or(listener.body_inspection),
        }));
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.trim_end_matches('/').len()));
    // Route names plugins refer to must be this listener's: a typo would change nothing.
    for (spec, entry) in listener.plugins.iter().zip(&entries) {
        for route in entry.plugin.route_names() {
            if !routes.iter().any(|r| r.name == route) {
                let message = rampart_plugins::names::unknown(
                    "route",
                    route,
                    routes.iter().map(|r| r.name.as_str()),
                );
                return Err(ListenerError::At(
                    Some(spec.span().start),
                    format!(
                        "listener {name:?}: plugin {:?}: {message}",
                        spec.get_ref().kind
                    ),
                ));
            }
        }
    }
    Ok(ListenerRules {
        chain: Chain::new(entries),
        tls: listener.tls.is_some(),
        client: listener.client_limits,
        block_log_sample: listener.block_log_sample.clamp(0.0, 1.0),
        routes,
    })
}

/// A route's metrics and log name when it has none: its upstream, `llm` for the model
/// table, or its provider.
fn default_route_name(r: &RouteConfig) -> String {
    match (&r.upstream, &r.provider) {
        (Some(upstream), _) => upstream.clone(),
        (None, Some(provider)) => provider.clone(),
        (None, None) => "llm".to_string(),
    }
}

/// A listener's chain built for `rampart rules test`: each plugin, or why it could not be
/// built here (a secret that is not available, say), and the listener's routes.
pub struct ExplainChain {
    pub plugins: Vec<(String, Result<rampart_plugins::ChainEntry, String>)>,
    /// (prefix, route name), most specific first.
    pub routes: Vec<(String, String)>,
}

/// Builds one listener's chain from a rules directory, plugin by plugin, without upstreams.
pub fn explain_chain(dir: &Path, listener: &str) -> Result<ExplainChain, ConfigError> {
    let source = SourceFile::read(&dir.join(GATEWAY_FILE))?;
    let config: GatewayConfig = source.parse()?;
    let carried = Carried::default();
    let ctx = SnapshotContext {
        rules_dir: dir.to_path_buf(),
        config: &config,
        carried: &carried,
        internal: NetSet::new(config.network.internal_cidrs.iter().copied()),
        resolved: RefCell::new(HashMap::new()),
        sources: RefCell::default(),
    };
    let spec = config
        .listeners
        .iter()
        .map(|l| l.get_ref())
        .find(|l| l.name == listener)
        .ok_or_else(|| source.error(None, format!("no listener named {listener:?}")))?;
    let plugins = spec
        .plugins
        .iter()
        .map(|p| {
            let p = p.get_ref();
            (
                p.kind.clone(),
                registry::build(p, &ctx).map_err(|e| e.to_string()),
            )
        })
        .collect();
    let mut routes: Vec<(String, String)> = spec
        .routes
        .iter()
        .map(|r| {
            (
                r.prefix.clone(),
                r.name.clone().unwrap_or_else(|| default_route_name(r)),
            )
        })
        .collect();
    routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.trim_end_matches('/').len()));
    Ok(ExplainChain { plugins, routes })
}

/// What a reload carries over from one snapshot to the next: compiled WAF rule sets (keyed
/// by the files they came from, so listeners sharing files share one and an untouched file
/// is not recompiled), rate-limit counters (keyed by the limit's definition, so an unchanged
/// limit forgets nothing) and the shared counter store. Entries die with the last snapshot
/// that uses them.
#[derive(Default)]
pub struct Carried {
    rule_sets: Mutex<HashMap<u64, Weak<RuleSet>>>,
    windows: Mutex<HashMap<String, Weak<RateWindow>>>,
    store: Mutex<Option<Arc<RedisWindows>>>,
    /// Token issuers' key fetchers, by issuer settings.
    jwks: Mutex<HashMap<String, Weak<JwksFetcher>>>,
    /// The Secrets Manager client and the secrets it keeps fresh.
    aws: Mutex<Option<Arc<AwsSecrets>>>,
    /// The providers' HTTP client (its pooled connections), by the settings it was built with.
    llm_client: Mutex<Option<(ClientSettings, reqwest::Client)>>,
    /// Which provider targets rest; a reload must not send traffic back to one that is down.
    cooldowns: Arc<Cooldowns>,
    /// AWS credentials for Bedrock targets (the chain and what it last gave).
    aws_credentials: Arc<AwsCredentials>,
    /// Set for a running gateway: the store and key fetchers then connect and report in
    /// the metrics.
    running: Option<Running>,
    /// Every secret stands in with a placeholder value, read from no source (`rampart check
    /// --placeholder-secrets`, for CI pipelines that hold no secrets).
    placeholder_secrets: bool,
}

/// What the providers' client is built from.
#[derive(PartialEq, Eq)]
struct ClientSettings {
    ca_file: Option<PathBuf>,
    connect_timeout_ms: u64,
}

/// The metrics that what a running gateway connects to reports in.
#[derive(Clone)]
pub struct Running {
    pub store: StoreMetrics,
    pub jwks_fetches: prometheus::IntCounterVec,
    pub secret_refreshes: prometheus::IntCounterVec,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Carried {
    /// For a running gateway, whose shared store and key fetchers connect and report in
    /// the metrics (`Carried::default()` builds rules without connecting anywhere, for
    /// `rampart check`).
    pub fn connected(running: Running) -> Self {
        Carried {
            running: Some(running),
            ..Carried::default()
        }
    }

    /// For `rampart check --placeholder-secrets`: rules built without connecting anywhere,
    /// every secret a placeholder (its sources are still checked for form).
    pub fn with_placeholder_secrets() -> Self {
        Carried {
            placeholder_secrets: true,
            ..Carried::default()
        }
    }

    /// The Secrets Manager client for `config`, kept while its settings do not change.
    fn aws(&self, config: &SecretsManagerConfig) -> Result<Arc<AwsSecrets>, String> {
        let mut aws = lock(&self.aws);
        if let Some(a) = aws.as_ref().filter(|a| a.config == *config) {
            return Ok(a.clone());
        }
        let refreshes = self.running.as_ref().map(|r| r.secret_refreshes.clone());
        let a = Arc::new(AwsSecrets::new(config.clone(), refreshes)?);
        *aws = Some(a.clone());
        Ok(a)
    }

    /// The key fetcher of `issuer`, kept while its settings do not change; without a
    /// running gateway, no keys (nothing is fetched by `rampart check`).
    fn jwks(&self, issuer: &IssuerConfig) -> Result<Arc<dyn KeySource>, String> {
        let Some(running) = &self.running else {
            return Ok(Arc::new(FixedKeys(Arc::default())));
        };
        let key = format!("{issuer:?}");
        let mut fetchers = lock(&self.jwks);
        if let Some(f) = fetchers.get(&key).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let f = JwksFetcher::start(issuer.clone(), Some(running.jwks_fetches.clone()))?;
        fetchers.retain(|_, weak| weak.strong_count() > 0);
        fetchers.insert(key, Arc::downgrade(&f));
        Ok(f)
    }

    fn rule_set(&self, files: &[(String, String)]) -> Result<Arc<RuleSet>, BuildError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        files.hash(&mut h);
        let key = h.finish();
        let mut cache = lock(&self.rule_sets);
        if let Some(set) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(set);
        }
        let set = Arc::new(RuleSet::compile(files)?);
        cache.retain(|_, weak| weak.strong_count() > 0);
        cache.insert(key, Arc::downgrade(&set));
        Ok(set)
    }

    fn window(&self, limit: &LimitConfig, spec: WindowSpec) -> Arc<RateWindow> {
        self.window_by(&format!("{limit:?}"), spec, limit.max_keys)
    }

    /// The counters of the limit defined by `key`, kept while some snapshot uses them.
    fn window_by(&self, key: &str, spec: WindowSpec, max_keys: usize) -> Arc<RateWindow> {
        let mut windows = lock(&self.windows);
        if let Some(w) = windows.get(key).and_then(Weak::upgrade) {
            return w;
        }
        let w = Arc::new(RateWindow::new(spec, max_keys));
        windows.retain(|_, weak| weak.strong_count() > 0);
        windows.insert(key.to_string(), Arc::downgrade(&w));
        w
    }

    fn llm_client(&self, settings: &LlmConfig) -> Result<reqwest::Client, String> {
        let key = ClientSettings {
            ca_file: settings.ca_file.clone(),
            connect_timeout_ms: settings.connect_timeout_ms,
        };
        let mut kept = lock(&self.llm_client);
        if let Some((_, client)) = kept.as_ref().filter(|(k, _)| *k == key) {
            return Ok(client.clone());
        }
        let client = crate::llm::http_client(settings)?;
        *kept = Some((key, client.clone()));
        Ok(client)
    }

    /// The store for `config`, kept while its settings do not change.
    fn store(&self, config: &StoreConfig) -> Result<Arc<RedisWindows>, String> {
        let mut store = lock(&self.store);
        if let Some(s) = store.as_ref().filter(|s| s.config == *config) {
            return Ok(s.clone());
        }
        let metrics = self.running.as_ref().map(|r| r.store.clone());
        let connect = metrics.is_some();
        let s = RedisWindows::new(config.clone(), metrics, connect)?;
        *store = Some(s.clone());
        Ok(s)
    }
}

/// Resolves secrets on first use, once per snapshot, so every plugin naming a secret
/// shares one handle and an unused secret is never read.
struct SnapshotContext<'a> {
    rules_dir: PathBuf,
    config: &'a GatewayConfig,
    carried: &'a Carried,
    internal: NetSet,
    resolved: RefCell<HashMap<String, SharedSecret>>,
    /// Every file read, in order.
    sources: RefCell<Vec<SourceRecord>>,
}

impl SnapshotContext<'_> {
    /// Notes a file read, by its path below the rules directory.
    fn note_source(&self, path: &Path, bytes: &[u8], shown: bool) {
        let shown_path = path.strip_prefix(&self.rules_dir).unwrap_or(path);
        self.sources.borrow_mut().push(SourceRecord::new(
            &shown_path.display().to_string(),
            bytes,
            shown,
        ));
    }
}

impl SnapshotContext<'_> {
    /// A provider's key. Unlike a plugin's secret it may have no value yet: the provider's
    /// requests are then refused (503) while everything else is served.
    fn provider_key(&self, name: &str) -> Result<SharedSecret, String> {
        let spec = self.config.secrets.get(name).ok_or_else(|| {
            let known = rampart_plugins::names::unknown(
                "secret",
                name,
                self.config.secrets.keys().map(String::as_str),
            );
            format!("key: {known} (a [secrets] entry of gateway.toml)")
        })?;
        self.read_secret(name, spec, false)
            .map_err(|e| e.to_string())
    }

    /// A secret's values from its sources. A `required` secret must have a usable value now;
    /// another may start without one (its users refuse until a refresh finds one).
    fn read_secret(
        &self,
        name: &str,
        spec: &SecretSpec,
        required: bool,
    ) -> Result<SharedSecret, BuildError> {
        if self.carried.placeholder_secrets {
            if spec.aws.is_some() && (!spec.env.is_empty() || spec.file.is_some()) {
                return Err(BuildError::SecretUnavailable(format!(
                    "secret {name:?}: `aws` is its only source; remove `env` and `file`"
                )));
            }
            let value = format!("placeholder-for-{name}-0123456789abcdef").into_bytes();
            return Ok(SharedSecret::new(name, SecretValues::new(vec![value])));
        }
        match &spec.aws {
            Some(_) if !spec.env.is_empty() || spec.file.is_some() => {
                Err(BuildError::SecretUnavailable(format!(
                    "secret {name:?}: `aws` is its only source; remove `env` and `file`"
                )))
            }
            Some(aws) => self
                .carried
                .aws(&self.config.secrets_manager)
                .and_then(|client| client.secret(name, aws, required))
                .map_err(BuildError::SecretUnavailable),
            None => {
                let values = secrets::resolve(name, spec)
                    .map_err(|e| BuildError::SecretUnavailable(e.to_string()))?;
                if values.is_empty() {
                    if required {
                        return Err(BuildError::EmptySecret(name.to_string()));
                    }
                    log::warn!(
                        "secret {name:?} has no usable value; its provider's requests get 503"
                    );
                }
                Ok(SharedSecret::new(name, values))
            }
        }
    }
}

impl BuildContext for SnapshotContext<'_> {
    fn secret(&self, name: &str) -> Result<SharedSecret, BuildError> {
        if let Some(s) = self.resolved.borrow().get(name) {
            return Ok(s.clone());
        }
        let spec = self.config.secrets.get(name).ok_or_else(|| {
            let near = rampart_plugins::names::nearest(
                name,
                self.config.secrets.keys().map(String::as_str),
            );
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!("; did you mean {}?", near.join(", "))
            };
            BuildError::UnknownSecret(name.to_string(), hint)
        })?;
        let shared = self.read_secret(name, spec, true)?;
        self.resolved
            .borrow_mut()
            .insert(name.to_string(), shared.clone());
        Ok(shared)
    }

    fn internal_networks(&self) -> &NetSet {
        &self.internal
    }

    fn rule_set(&self, files: &[(String, String)]) -> Result<Arc<RuleSet>, BuildError> {
        self.carried.rule_set(files)
    }

    fn rate_window(&self, limit: &LimitConfig, spec: WindowSpec) -> Arc<RateWindow> {
        self.carried.window(limit, spec)
    }

    fn shared_windows(&self) -> Result<Option<Arc<dyn SharedWindows>>, BuildError> {
        let Some(config) = &self.config.rate_limit_store else {
            return Ok(None);
        };
        match self.carried.store(config) {
            Ok(store) => Ok(Some(store)),
            Err(reason) => Err(BuildError::Invalid {
                plugin: "rate_limit",
                reason,
            }),
        }
    }

    fn jwks(&self, issuer: &IssuerConfig) -> Result<Arc<dyn KeySource>, BuildError> {
        self.carried
            .jwks(issuer)
            .map_err(|reason| BuildError::Invalid {
                plugin: "jwt",
                reason,
            })
    }

    fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
        let target = self.rules_dir.join(path);
        let files = if target.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&target)
                .map_err(|e| unreadable(&target, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            files
        } else {
            vec![target]
        };
        files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f).map_err(|e| unreadable(&f, e))?;
                self.note_source(&f, text.as_bytes(), false);
                Ok((f.display().to_string(), text))
            })
            .collect()
    }

    fn rule_bytes(&self, path: &str) -> Result<(String, Vec<u8>), BuildError> {
        let file = self.rules_dir.join(path);
        let bytes = std::fs::read(&file).map_err(|e| unreadable(&file, e))?;
        self.note_source(&file, &bytes, false);
        Ok((file.display().to_string(), bytes))
    }
}

/// A rule file that could not be read, named.
fn unreadable(file: &Path, e: std::io::Error) -> BuildError {
    BuildError::RuleFile {
        file: file.display().to_string(),
        line: None,
        message: format!("cannot read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model table naming a key that is no `[secrets]` entry: the error names the model
    /// table's line and the nearest secret.
    #[test]
    fn a_provider_key_that_is_no_secret_is_refused_at_its_line_with_the_nearest_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let gateway = "[secrets.openai-api-key]\nenv = [\"RAMPART_TEST_UNSET_KEY\"]\n\n\
            [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
            [[listeners.routes]]\nprefix = \"/v1/\"\nmodels = true\n";
        let models =
            "# a comment\n\n[providers.openai]\nkind = \"openai\"\nkey = \"openai-api-kee\"\n\n\
            [[models]]\nname = \"gpt-*\"\ntargets = [{ provider = \"openai\" }]\n";
        std::fs::write(dir.path().join("gateway.toml"), gateway).expect("write");
        std::fs::write(dir.path().join("models.toml"), models).expect("write");
        let e = match RuleSnapshot::load(dir.path(), 1, None, &Carried::default()) {
            Ok(_) => panic!("a key that is no secret loads"),
            Err(e) => e,
        };
        assert!(e.file.ends_with("models.toml"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("did you mean openai-api-key"), "{e}");
    }
}
