//! `rules/gateway.toml`: listeners, routes, upstreams, secrets and network settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rampart_plugins::waf::encoding::DecodeLimits;
use rampart_plugins::PluginSpec;
use serde::Deserialize;
use toml::Spanned;

/// The file under the rules directory that describes the gateway.
pub const GATEWAY_FILE: &str = "gateway.toml";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSpec>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// Where `rate_limit` plugins with `shared = true` count (Redis).
    pub rate_limit_store: Option<StoreConfig>,
    /// How secrets with an `aws` source are read.
    #[serde(default)]
    pub secrets_manager: SecretsManagerConfig,
    /// How routes to LLM providers call them.
    #[serde(default)]
    pub llm: LlmConfig,
    /// Process settings, read at start (a reload does not change them).
    #[serde(default)]
    pub server: ServerSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Worker threads per listener; all cores when unset (`--threads` overrides).
    pub threads: Option<usize>,
    /// Whether a listener's idle threads take work queued on busy ones (Pingora's
    /// `work_stealing`). Off by default: each connection then stays on the thread that
    /// accepted it, on a single-threaded Tokio runtime, which costs less CPU per request and
    /// adds less latency (docs/benchmarks.md).
    #[serde(default)]
    pub work_stealing: bool,
    /// How long requests and streams in flight may run on after SIGTERM or SIGQUIT; the
    /// process exits as soon as none is left. Long enough for an LLM stream, like an
    /// ALB's deregistration delay.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// The Unix socket through which a process started with `--upgrade` receives the
    /// listening sockets; its directory must be this user's alone (mode 0700).
    pub upgrade_socket: Option<PathBuf>,
}

fn default_drain_seconds() -> u64 {
    300
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: None,
            work_stealing: false,
            drain_seconds: default_drain_seconds(),
            upgrade_socket: None,
        }
    }
}

/// Provider routes (`models = true` or `provider = "..."`): the model table and how
/// providers are called.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The model table, relative to the rules directory; read only when a route needs it.
    #[serde(default = "default_models_file")]
    pub models: String,
    #[serde(default = "default_llm_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Until the provider's response header; a non-streamed answer is generated whole first.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout_ms: u64,
    /// The longest pause between two chunks of an answer.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Targets tried per request, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// A request body larger than this is refused (413).
    #[serde(default = "default_llm_body")]
    pub max_body_bytes: usize,
    /// Consecutive failures after which a target is skipped for `cooldown_seconds`.
    #[serde(default = "default_cooldown_failures")]
    pub cooldown_after_failures: u32,
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    /// Extra trusted roots (PEM) for provider certificates, beside the public ones.
    pub ca_file: Option<PathBuf>,
    /// Token budgets, checked before a call and charged as its answer streams; counted in
    /// the `[rate_limit_store]` when there is one, so that every instance spends one budget.
    #[serde(default)]
    pub token_limits: Vec<rampart_plugins::token_budget::TokenLimitConfig>,
    /// What token budgets do while the shared store cannot answer: `local` (each instance
    /// counts on its own) or `refuse` (503).
    #[serde(default)]
    pub on_store_error: rampart_plugins::plugins::rate_limit::StoreFallback,
}

fn default_models_file() -> String {
    "models.toml".to_string()
}
fn default_llm_connect_timeout() -> u64 {
    5_000
}
fn default_first_byte_timeout() -> u64 {
    300_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_attempts() -> usize {
    3
}
fn default_llm_body() -> usize {
    8 << 20
}
fn default_cooldown_failures() -> u32 {
    3
}
fn default_cooldown_seconds() -> u64 {
    30
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            models: default_models_file(),
            connect_timeout_ms: default_llm_connect_timeout(),
            first_byte_timeout_ms: default_first_byte_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            max_attempts: default_max_attempts(),
            max_body_bytes: default_llm_body(),
            cooldown_after_failures: default_cooldown_failures(),
            cooldown_seconds: default_cooldown_seconds(),
            ca_file: None,
            token_limits: Vec::new(),
            on_store_error: Default::default(),
        }
    }
}

/// AWS Secrets Manager. Credentials come from the standard chain (environment, profile,
/// ECS task role, instance role); the region too unless set here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerConfig {
    pub region: Option<String>,
    /// Another endpoint than AWS's (a VPC endpoint's DNS name, or a test double).
    pub endpoint_url: Option<String>,
    /// How often each secret is read again.
    #[serde(default = "default_secrets_refresh")]
    pub refresh_seconds: u64,
}

fn default_secrets_refresh() -> u64 {
    300
}

impl Default for SecretsManagerConfig {
    fn default() -> Self {
        SecretsManagerConfig {
            region: None,
            endpoint_url: None,
            refresh_seconds: default_secrets_refresh(),
        }
    }
}

/// A secret in AWS Secrets Manager.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSecretSpec {
    /// Name or ARN (`stargate-sandbox/origin-verify-secret`).
    pub secret_id: String,
    /// Also accept the `AWSPREVIOUS` version, so that a rotation locks no one out.
    #[serde(default = "default_true")]
    pub previous: bool,
    /// The secret is a JSON object; its value is this field.
    pub json_key: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The Redis that instances share rate-limit counters through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port[/db]`
    pub redis: String,
    /// A call slower than this fails, and the plugin decides locally (or refuses).
    #[serde(default = "default_store_timeout")]
    pub timeout_ms: u64,
    /// After a failure, the store is left alone this long before it is asked again.
    #[serde(default = "default_store_retry")]
    pub retry_ms: u64,
}

fn default_store_timeout() -> u64 {
    50
}

fn default_store_retry() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Socket peers in these networks are internal (the seed's VPC CIDR).
    #[serde(default = "default_internal")]
    pub internal_cidrs: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

fn default_internal() -> Vec<IpNet> {
    vec![IpNet::V4(
        ipnet::Ipv4Net::new([10, 20, 0, 0].into(), 16).unwrap_or_default(),
    )]
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            internal_cidrs: default_internal(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".to_string()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

/// Where a secret's values come from. Every source listed contributes values, so a
/// rotation can run with the old and the new value valid at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Environment variables, one value each.
    #[serde(default)]
    pub env: Vec<String>,
    /// A file with one value a line (`#` comments and blank lines ignored).
    pub file: Option<PathBuf>,
    /// AWS Secrets Manager; when set, the only source of this secret.
    pub aws: Option<AwsSecretSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of each replica; names are resolved when the rules load.
    pub addrs: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name when `tls`; defaults to the first address's host.
    pub sni: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Longest silence allowed while reading the response; LLM streams pause between tokens.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// A kept-alive connection to the upstream unused for this long is closed by rampart,
    /// before the upstream closes it: a request sent just as the upstream closes is reset,
    /// and a POST whose body was not kept cannot be sent again (502). Below the upstream's
    /// own keep-alive timeout: uvicorn's (LiteLLM) and Node's (Langfuse) are 5 s.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout_ms: u64,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
}

fn default_connect_timeout() -> u64 {
    2_000
}

fn default_read_timeout() -> u64 {
    120_000
}

fn default_pool_idle_timeout() -> u64 {
    4_000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// An HTTP path to GET (a 2xx answer is healthy); without it, a TCP connect is the check.
    pub path: Option<String>,
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
}

fn default_health_interval() -> u64 {
    5_000
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: None,
            interval_ms: default_health_interval(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: String,
    pub tls: Option<TlsConfig>,
    /// How request bodies are read for plugins that inspect them.
    #[serde(default)]
    pub body_inspection: BodyInspection,
    /// Deadlines and caps for client connections.
    #[serde(default)]
    pub client_limits: ClientLimits,
    /// Fraction (0 to 1) of refused requests logged with the rule and what it matched.
    #[serde(default = "default_block_log_sample")]
    pub block_log_sample: f64,
    /// The plugin chain, in order.
    #[serde(default)]
    pub plugins: Vec<Spanned<PluginSpec>>,
    pub routes: Vec<RouteConfig>,
}

/// Request bodies are held back from the upstream until judged, `limit_bytes` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyInspection {
    #[serde(default = "default_body_limit")]
    pub limit_bytes: usize,
    /// What happens to a body larger than the limit.
    #[serde(default)]
    pub oversize: Oversize,
    /// A compressed body (`Content-Encoding: gzip` or `deflate`) is judged decoded, up to
    /// this many decoded bytes (413 `body.decompression_limit` past it).
    #[serde(default = "default_decoded_limit")]
    pub decoded_limit_bytes: u64,
    /// ... and at most this many decoded bytes per encoded byte past the first MiB: a
    /// decompression bomb meets this first.
    #[serde(default = "default_decoded_ratio")]
    pub decoded_max_ratio: u64,
}

impl BodyInspection {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_bytes: self.decoded_limit_bytes,
            max_ratio: self.decoded_max_ratio,
            ..DecodeLimits::default()
        }
    }
}

fn default_decoded_limit() -> u64 {
    DecodeLimits::default().max_bytes
}

fn default_decoded_ratio() -> u64 {
    DecodeLimits::default().max_ratio
}

fn default_block_log_sample() -> f64 {
    1.0
}

fn default_body_limit() -> usize {
    1 << 20
}

impl Default for BodyInspection {
    fn default() -> Self {
        BodyInspection {
            limit_bytes: default_body_limit(),
            oversize: Oversize::default(),
            decoded_limit_bytes: default_decoded_limit(),
            decoded_max_ratio: default_decoded_ratio(),
        }
    }
}

/// What a client connection may cost the gateway: how long it may take to send a request,
/// how long it may sit idle, how much header it may send, and how many connections one
/// address and the whole listener may hold. A client past a deadline or a cap is answered
/// (408, 431, 503) where it can still read, and closed; each close is counted in
/// `rampart_client_closes_total`. Changes apply to connections accepted after a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// The whole request head (request line and headers) must arrive within this time of
    /// its first byte, or of the accept for a new connection. A trickle does not extend it.
    pub header_timeout_ms: u64,
    /// A keep-alive connection waiting for its next request is closed after this long.
    pub idle_timeout_ms: u64,
    /// The body must arrive within this time of the head, extended by one second for every
    /// `min_body_rate` bytes received: a slow client gets a deadline that grows only as
    /// fast as it sends.
    pub body_timeout_ms: u64,
    /// Bytes per second that extend the body deadline (see `body_timeout_ms`).
    pub min_body_rate: u64,
    /// A write to a client that stopped reading fails after this long, so a stalled stream
    /// does not pin its buffers.
    pub write_timeout_ms: u64,
    /// Request line and headers together, in bytes.
    pub max_header_bytes: usize,
    /// One header line (name and value), or the request line, in bytes.
    pub max_header_line_bytes: usize,
    /// Open connections on the listener; the next one is answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one peer address. Internal peers and trusted proxies (a CDN or
    /// load balancer in front, which carry many clients each) are not capped.
    pub max_connections_per_address: usize,
    /// HTTP/2 (TLS listeners): streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: streams a client may open and reset before the server has accepted them; past
    /// it the connection is closed (the "rapid reset" attack, CVE-2023-44487).
    pub h2_max_pending_resets: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 20_000,
            min_body_rate: 1024,
            write_timeout_ms: 60_000,
            max_header_bytes: 64 << 10,
            max_header_line_bytes: 16 << 10,
            max_connections: 8192,
            max_connections_per_address: 256,
            h2_max_concurrent_streams: 100,
            h2_max_pending_resets: 20,
        }
    }
}

/// What happens to a body larger than `limit_bytes` (see [`crate::held_body`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Judge every byte, `limit_bytes` at a time, each part going on once judged.
    #[default]
    InspectAll,
    /// Judge the first `limit_bytes`, then let the rest through unjudged: only for routes
    /// whose bodies cannot be inspected, by explicit choice.
    InspectPrefix,
    /// Answer 413.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Offer HTTP/2 (ALPN `h2`) besides HTTP/1.1, as browsers expect of an edge.
    #[serde(default = "offer_http2")]
    pub http2: bool,
}

fn offer_http2() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Metrics and log name; defaults to the upstream's name.
    pub name: Option<String>,
    /// Path prefix, matched segment-wise on the normalised path; the longest match wins.
    pub prefix: String,
    /// Where the route goes: exactly one of an upstream pool, the model table (OpenAI-style
    /// endpoints routed by the body's `model`), or one provider's native API.
    pub upstream: Option<String>,
    #[serde(default)]
    pub models: bool,
    pub provider: Option<String>,
    /// This route's own `body_inspection`, in place of the listener's: say, a route of
    /// binary uploads that cannot be inspected (`oversize = "inspect_prefix"`).
    pub body_inspection: Option<BodyInspection>,
}

/// A rules error that names the file and, where known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A file's text, kept to turn byte offsets into line numbers.
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(SourceFile {
            path: path.to_path_buf(),
            text,
        })
    }

    pub fn line_of(&self, offset: usize) -> usize {
        rampart_plugins::registry::line_at(&self.text, offset)
    }

    /// An error at a byte offset of this file (or at no particular line).
    pub fn error(&self, offset: Option<usize>, message: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: offset.map(|o| self.line_of(o)),
            message: message.to_string(),
        }
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().to_string();
            self.error(e.span().map(|s| s.start), message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceFile {
        SourceFile {
            path: PathBuf::from("rules/gateway.toml"),
            text: text.to_string(),
        }
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = source("[admin]\nlisten = \"x\"\n\n[[listeners]]\nname = \n")
            .parse::<GatewayConfig>()
            .expect_err("broken");
        assert_eq!(err.line, Some(5), "{err}");
        assert!(
            err.to_string().starts_with("rules/gateway.toml:5: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_its_line() {
        let err = source("[network]\ninternal_cidrs = []\ntrusted = []\n")
            .parse::<GatewayConfig>()
            .expect_err("unknown field");
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.contains("trusted"), "{err}");
    }

    #[test]
    fn defaults_follow_the_seed() {
        let cfg: GatewayConfig = source("").parse().expect("empty is valid");
        assert_eq!(
            cfg.network.internal_cidrs,
            vec!["10.20.0.0/16".parse::<IpNet>().expect("cidr")]
        );
        assert_eq!(cfg.admin.listen, "127.0.0.1:9901");
    }
}
