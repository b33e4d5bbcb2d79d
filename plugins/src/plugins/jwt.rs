//! `jwt`: bearer access tokens as Cognito issues them for client_credentials clients.
//!
//! A token is accepted when its signature verifies with a key its issuer publishes, its
//! issuer is configured, its times hold (with a small leeway), it is an access token, its
//! client is onboarded (when clients are listed), and it carries the scope the route needs.
//! A verified token is remembered (by its SHA-256) until it expires, so that a client
//! reusing its token for an hour pays for one signature check.
//!
//! Refusals say only `invalid_token` (401) or `insufficient_scope` (403), as RFC 6750 asks;
//! the precise reason goes to metrics and the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::jws::{Algorithm, KeySource, Token, TokenError};
use crate::path::has_segment_prefix;
use crate::registry::{parse_rule_file, BuildContext, BuildError};
use crate::request::Identity;
use crate::verdict::VerdictFuture;
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Who may issue tokens; a token names its issuer in `iss`.
    pub issuers: Vec<IssuerConfig>,
    /// The scope every request needs unless a rule in `scopes` says otherwise; empty for none.
    #[serde(default = "default_scope")]
    pub required_scope: String,
    /// Scopes for some routes or paths, first match wins:
    /// `{ paths = ["/key/"], scope = "https://gateway.internal/admin" }`.
    #[serde(default)]
    pub scopes: Vec<ScopeRule>,
    /// Paths that need no token (a health check), matched segment-wise.
    #[serde(default)]
    pub exempt_paths: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// A rule file of onboarded clients (team, scopes). When set, only its clients pass.
    pub clients: Option<String>,
    /// Headers that tell the upstream who called; a client's own copies are removed.
    #[serde(default = "default_client_header")]
    pub client_header: String,
    #[serde(default = "default_team_header")]
    pub team_header: String,
    /// How many verified tokens are remembered.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// `https://cognito-idp.<region>.amazonaws.com/<user pool id>`
    pub issuer: String,
    /// Where the issuer's keys are published (Cognito: `<issuer>/.well-known/jwks.json`).
    pub jwks_url: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Cognito marks access tokens `access` and ID tokens `id`; empty accepts any.
    #[serde(default = "default_token_use")]
    pub token_use: String,
    /// How often the keys are fetched again in the background.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_seconds: u64,
    /// A token naming an unknown `kid` makes the keys be fetched again at most this often.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    pub scope: String,
}

fn default_scope() -> String {
    "https://gateway.internal/invoke".to_string()
}

fn default_leeway() -> u64 {
    30
}

fn default_client_header() -> String {
    "x-rampart-client-id".to_string()
}

fn default_team_header() -> String {
    "x-rampart-team".to_string()
}

fn default_cache_entries() -> usize {
    100_000
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256, Algorithm::PS256]
}

fn default_token_use() -> String {
    "access".to_string()
}

fn default_jwks_refresh() -> u64 {
    3600
}

fn default_min_refetch() -> u64 {
    30
}

/// The clients file: `[clients.<client id>]` with an optional `team` and `scopes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    clients: HashMap<String, Client>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Client {
    team: Option<String>,
    /// The scopes this client may use; a token's other scopes are ignored. All when absent.
    scopes: Option<Vec<String>>,
}

struct Issuer {
    iss: String,
    keys: Arc<dyn KeySource>,
    algorithms: Vec<Algorithm>,
    token_use: String,
}

pub struct Jwt {
    issuers: Vec<Issuer>,
    required_scope: Option<String>,
    scope_rules: Vec<ScopeRule>,
    exempt_paths: Vec<String>,
    leeway: u64,
    clients: Option<HashMap<String, Client>>,
    client_header: HeaderName,
    team_header: HeaderName,
    consumed: [HeaderName; 2],
    verified: VerifiedTokens,
}

/// What the claims of a token say, as far as rampart reads them. Unknown claims are
/// ignored; a claim of the wrong type, or repeated, makes the token malformed.
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    token_use: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
}

/// The outcome of looking at a request before any key fetch.
enum Decision {
    Done(Verdict),
    /// The token names a key its issuer (by index) has not published, as far as we know.
    UnknownKid(usize),
}

/// A token whose checks all passed, remembered until it expires.
struct Verified {
    identity: Arc<Identity>,
    issuer: usize,
    kid: String,
    /// Unix seconds after which the token is no longer accepted (`exp` plus the leeway).
    until: u64,
}

impl Jwt {
    pub fn build(config: JwtConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        if config.issuers.is_empty() {
            return Err(BuildError::invalid("jwt", "`issuers` is empty"));
        }
        let mut issuers = Vec::new();
        for spec in &config.issuers {
            if spec.algorithms.is_empty() {
                return Err(BuildError::invalid(
                    "jwt",
                    &format!("issuer {:?} allows no algorithm", spec.issuer),
                ));
            }
            issuers.push(Issuer {
                iss: spec.issuer.clone(),
                keys: ctx.jwks(spec)?,
                algorithms: spec.algorithms.clone(),
                token_use: spec.token_use.clone(),
            });
        }
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                BuildError::invalid("jwt", &format!("{name:?} is not a valid header name"))
            })
        };
        let (client_header, team_header) =
            (header(&config.client_header)?, header(&config.team_header)?);
        for p in config
            .exempt_paths
            .iter()
            .chain(config.scopes.iter().flat_map(|r| &r.paths))
        {
            if !p.starts_with('/') {
                return Err(BuildError::invalid(
                    "jwt",
                    &format!("path {p:?} does not start with '/'"),
                ));
            }
        }
        let clients = match &config.clients {
            None => None,
            Some(path) => Some(read_clients(ctx.rule_files(path)?)?),
        };
        Ok(Jwt {
            issuers,
            required_scope: Some(config.required_scope).filter(|s| !s.is_empty()),
            scope_rules: config.scopes,
            exempt_paths: config.exempt_paths,
            leeway: config.leeway_seconds,
            clients,
            consumed: [client_header.clone(), team_header.clone()],
            client_header,
            team_header,
            verified: VerifiedTokens::new(config.cache_entries),
        })
    }

    /// Everything but fetching keys, at time `now` (Unix seconds).
    fn decide(&self, req: &RequestView<'_>, now: u64) -> Decision {
        if self
            .exempt_paths
            .iter()
            .any(|p| has_segment_prefix(req.path, p, true))
        {
            return Decision::Done(Verdict::Continue);
        }
        let token = match bearer_token(req.headers) {
            Ok(t) => t,
            Err(Missing) => {
                return Decision::Done(Verdict::Deny(
                    Deny::new(401, "jwt.missing")
                        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
                ))
            }
        };
        let Some(token) = token else {
            return Decision::Done(invalid("jwt.malformed"));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let Ok(key) = <[u8; 32]>::try_from(digest.as_ref()) else {
            return Decision::Done(invalid("jwt.malformed"));
        };
        if let Some(v) = self.verified.get(&key, now) {
            // A key the issuer no longer publishes takes its tokens with it.
            if self.issuers[v.issuer].keys.keys().contains(&v.kid) {
                return Decision::Done(self.authorize(v.identity.clone(), req));
            }
        }
        match self.verify(token, now) {
            Ok(v) => {
                let identity = v.identity.clone();
                self.verified.insert(key, v, now);
                Decision::Done(self.authorize(identity, req))
            }
            Err(Rejected::UnknownKid(issuer)) => Decision::UnknownKid(issuer),
            Err(Rejected::Because(reason)) => Decision::Done(invalid(reason)),
        }
    }

    /// All the checks a token passes once, whatever the route.
    fn verify(&self, text: &str, now: u64) -> Result<Verified, Rejected> {
        let token = Token::parse(text).map_err(Rejected::token)?;
        let claims: Claims = serde_json::from_slice(&token.payload)
            .map_err(|_| Rejected::Because("jwt.malformed"))?;
        // The issuer is read before the signature is checked only to pick whose keys
        // check it; nothing else in the claims is believed until then.
        let iss = claims.iss.as_deref().unwrap_or_default();
        let issuer_index = self
            .issuers
            .iter()
            .position(|i| i.iss == iss)
            .ok_or(Rejected::Because("jwt.issuer"))?;
        let issuer = &self.issuers[issuer_index];
        if !issuer.algorithms.contains(&token.alg) {
            return Err(Rejected::Because("jwt.algorithm"));
        }
        match issuer.keys.keys().verify(&token) {
            Ok(()) => {}
            Err(TokenError::UnknownKid) => return Err(Rejected::UnknownKid(issuer_index)),
            Err(e) => return Err(Rejected::token(e)),
        }
        let leeway = self.leeway as f64;
        let now_f = now as f64;
        let exp = claims.exp.ok_or(Rejected::Because("jwt.claims"))?;
        if now_f > exp + leeway {
            return Err(Rejected::Because("jwt.expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_f + leeway) {
            return Err(Rejected::Because("jwt.not_yet_valid"));
        }
        if claims.iat.is_some_and(|iat| iat > now_f + leeway) {
            return Err(Rejected::Because("jwt.issued_in_future"));
        }
        if !issuer.token_use.is_empty() && claims.token_use.as_deref() != Some(&issuer.token_use) {
            return Err(Rejected::Because("jwt.token_use"));
        }
        let client_id = claims.client_id.ok_or(Rejected::Because("jwt.claims"))?;
        let client = match &self.clients {
            None => None,
            Some(list) => Some(
                list.get(&client_id)
                    .ok_or(Rejected::Because("jwt.client"))?,
            ),
        };
        let scopes: Box<[Box<str>]> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .filter(|s| {
                client
                    .and_then(|c| c.scopes.as_ref())
                    .is_none_or(|allowed| allowed.iter().any(|a| a == s))
            })
            .map(Box::from)
            .collect();
        let team = client.and_then(|c| c.team.as_deref());
        let mut upstream_headers = Vec::with_capacity(2);
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| Rejected::Because("jwt.claims"));
        upstream_headers.push((self.client_header.clone(), value(&client_id)?));
        if let Some(team) = team {
            upstream_headers.push((self.team_header.clone(), value(team)?));
        }
        Ok(Verified {
            identity: Arc::new(Identity {
                client_id: client_id.into(),
                team: team.map(Box::from),
                scopes,
                upstream_headers,
                verified_header: Some(http::header::AUTHORIZATION),
            }),
            issuer: issuer_index,
            kid: token.kid,
            until: (exp + leeway).max(0.0) as u64,
        })
    }

    /// The route's scope check, made on every request (a token is verified once, but may
    /// be used on routes that need different scopes).
    fn authorize(&self, identity: Arc<Identity>, req: &RequestView<'_>) -> Verdict {
        let needed = self
            .scope_rules
            .iter()
            .find(|r| {
                r.routes.iter().any(|route| route == req.route)
                    || r.paths
                        .iter()
                        .any(|p| has_segment_prefix(req.path, p, true))
            })
            .map(|r| r.scope.as_str())
            .or(self.required_scope.as_deref());
        match needed {
            Some(scope) if !identity.has_scope(scope) => {
                Verdict::Deny(Deny::new(403, "jwt.insufficient_scope").with_header(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                ))
            }
            _ => Verdict::Authenticated(identity),
        }
    }
}

fn invalid(reason: &'static str) -> Verdict {
    Verdict::Deny(
        Deny::new(401, "jwt.invalid_token")
            .with_detail(reason)
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            ),
    )
}

enum Rejected {
    Because(&'static str),
    UnknownKid(usize),
}

impl Rejected {
    fn token(e: TokenError) -> Self {
        Rejected::Because(match e {
            TokenError::Malformed => "jwt.malformed",
            TokenError::Algorithm => "jwt.algorithm",
            TokenError::NoKid => "jwt.no_kid",
            TokenError::UnknownKid => "jwt.unknown_kid",
            TokenError::KeyMismatch => "jwt.key_mismatch",
            TokenError::Signature => "jwt.signature",
        })
    }
}

struct Missing;

/// The token of the one `Authorization: Bearer` header: `Err` when there is none,
/// `Ok(None)` when what is there cannot be a token (another scheme, several headers).
fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, Missing> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(AUTHORIZATION) {
            Ok(None)
        } else {
            Err(Missing)
        };
    };
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    let token = token.trim_matches(' ');
    Ok((scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token))
}

fn read_clients(files: Vec<(String, String)>) -> Result<HashMap<String, Client>, BuildError> {
    let mut clients = HashMap::new();
    for (file, text) in files {
        let parsed: ClientsFile = parse_rule_file(&file, &text)?;
        clients.extend(parsed.clients);
    }
    Ok(clients)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Plugin for Jwt {
    fn route_names(&self) -> Vec<&str> {
        self.scope_rules
            .iter()
            .flat_map(|r| r.routes.iter().map(String::as_str))
            .collect()
    }

    fn name(&self) -> &'static str {
        "jwt"
    }

    /// Decides without fetching keys: a token naming an unknown key is refused.
    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        _report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        match self.decide(req, unix_now()) {
            Decision::Done(v) => v,
            Decision::UnknownKid(_) => invalid("jwt.unknown_kid"),
        }
    }

    /// As [`Jwt::check`], but a token naming an unknown key waits for the issuer's keys to be
    /// fetched again (a key rotation), when a fetch is allowed now.
    fn check_shared<'a>(&'a self, req: &'a RequestView<'_>) -> Option<VerdictFuture<'a>> {
        let issuer = match self.decide(req, unix_now()) {
            Decision::Done(v) => return Some(Box::pin(std::future::ready(v))),
            Decision::UnknownKid(issuer) => issuer,
        };
        let Some(fetched) = self.issuers[issuer].keys.refetch() else {
            return Some(Box::pin(std::future::ready(invalid("jwt.unknown_kid"))));
        };
        Some(Box::pin(async move {
            fetched.await;
            self.check(req)
        }))
    }

    fn consumed_headers(&self) -> &[HeaderName] {
        &self.consumed
    }

    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        match self.check(req) {
            Verdict::Continue => vec!["no token needed on this path".to_string()],
            Verdict::Authenticated(who) => vec![format!(
                "token of client {:?}{} accepted",
                who.client_id,
                who.team
                    .as_deref()
                    .map(|t| format!(" (team {t:?})"))
                    .unwrap_or_default()
            )],
            Verdict::Deny(d) => vec![format!("refuses with {} ({})", d.status, d.reason())],
        }
    }
}

/// Verified tokens by SHA-256, bounded. Only the digest is kept, never a token.
struct VerifiedTokens {
    shards: Box<[Mutex<TokenShard>]>,
    per_shard: usize,
}

const TOKEN_SHARDS: usize = 16;

type TokenShard = HashMap<[u8; 32], Arc<Verified>>;

impl VerifiedTokens {
    fn new(capacity: usize) -> Self {
        VerifiedTokens {
            shards: (0..TOKEN_SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(TOKEN_SHARDS),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<TokenShard> {
        &self.shards[usize::from(key[0]) % TOKEN_SHARDS]
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<Verified>> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(key).filter(|v| now <= v.until).cloned()
    }

    fn insert(&self, key: [u8; 32], verified: Verified, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard {
            shard.retain(|_, v| now <= v.until);
        }
        if shard.len() >= self.per_shard {
            // Still full of live tokens: forget a quarter. Digests are uniformly spread, so
            // which ones is as good as random; a forgotten token is verified again.
            let drop = (self.per_shard / 4).max(1);
            let victims: Vec<[u8; 32]> = shard.keys().take(drop).copied().collect();
            for k in victims {
                shard.remove(&k);
            }
        }
        shard.insert(key, Arc::new(verified));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use arc_swap::ArcSwap;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::{json, Value};

    use super::*;
    use crate::jws::{FixedKeys, JwkSet, RefetchFuture};
    use crate::plugins::testing::TestRequest;
    use crate::registry::tests::TestContext;
    use crate::testing::TestIssuer;
    use crate::{now_or_never, Chain};

    const ISS: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Test";
    const URL: &str = "http://keys.test/jwks.json";
    const INVOKE: &str = "https://gateway.internal/invoke";
    const ADMIN: &str = "https://gateway.internal/admin";

    fn issuer() -> &'static TestIssuer {
        static ISSUER: OnceLock<TestIssuer> = OnceLock::new();
        ISSUER.get_or_init(|| TestIssuer::new(ISS, "k1"))
    }

    /// A second set of keys of the same issuer: what it rotates to.
    fn rotated() -> &'static TestIssuer {
        static ISSUER: OnceLock<TestIssuer> = OnceLock::new();
        ISSUER.get_or_init(|| TestIssuer::new(ISS, "k2"))
    }

    fn keys(issuer: &TestIssuer) -> Arc<JwkSet> {
        Arc::new(JwkSet::parse(issuer.jwks().as_bytes()).expect("test JWKS parses"))
    }

    fn now() -> u64 {
        unix_now()
    }

    /// Keys that a refetch replaces with `next`, counting the fetches.
    struct RotatingKeys {
        current: ArcSwap<JwkSet>,
        next: Arc<JwkSet>,
        fetches: AtomicUsize,
        /// Fetches allowed before the interval "has not passed" yet.
        allowed: usize,
    }

    impl KeySource for RotatingKeys {
        fn keys(&self) -> Arc<JwkSet> {
            self.current.load_full()
        }

        fn refetch(&self) -> Option<RefetchFuture> {
            if self.fetches.fetch_add(1, Ordering::SeqCst) >= self.allowed {
                self.fetches.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            self.current.store(self.next.clone());
            Some(Box::pin(std::future::ready(())))
        }
    }

    fn config(extra: &str) -> JwtConfig {
        toml::from_str(&format!(
            "issuers = [{{ issuer = \"{ISS}\", jwks_url = \"{URL}\" }}]\n{extra}"
        ))
        .expect("config parses")
    }

    fn plugin_with(extra: &str, source: Arc<dyn KeySource>, ctx: TestContext) -> Jwt {
        Jwt::build(config(extra), &ctx.with_keys(URL, source)).expect("builds")
    }

    fn plugin(extra: &str) -> Jwt {
        plugin_with(
            extra,
            Arc::new(FixedKeys(keys(issuer()))),
            TestContext::new(),
        )
    }

    fn token(claims: &Value) -> String {
        issuer().sign("RS256", claims)
    }

    fn claims() -> Value {
        issuer().access_claims("client-a", &format!("{INVOKE} {ADMIN}"), now())
    }

    fn with(mut claims: Value, field: &str, value: Value) -> Value {
        claims[field] = value;
        claims
    }

    fn request(path: &str, token: &str) -> TestRequest {
        TestRequest::new("203.0.113.9", path).header("authorization", &format!("Bearer {token}"))
    }

    /// The reason a request is refused for, or `ok` with the client id.
    fn outcome(p: &Jwt, req: &TestRequest) -> String {
        match p.check(&req.view()) {
            Verdict::Authenticated(who) => format!("ok {}", who.client_id),
            Verdict::Continue => "continue".to_string(),
            Verdict::Deny(d) => format!("{} {}", d.status, d.reason()),
        }
    }

    #[test]
    fn cognito_access_tokens_pass_with_each_algorithm() {
        let p = plugin("");
        for alg in ["RS256", "PS256", "ES256"] {
            let t = issuer().sign(alg, &claims());
            assert_eq!(
                outcome(&p, &request("/v1/models", &t)),
                "ok client-a",
                "{alg}"
            );
        }
    }

    #[test]
    fn identity_reaches_upstream_headers() {
        let p = plugin("");
        let req = request("/v1/models", &token(&claims()));
        let Verdict::Authenticated(who) = p.check(&req.view()) else {
            panic!("accepted")
        };
        assert_eq!(
            who.upstream_headers,
            vec![(
                HeaderName::from_static("x-rampart-client-id"),
                HeaderValue::from_static("client-a")
            )]
        );
        assert!(p
            .consumed_headers()
            .contains(&HeaderName::from_static("x-rampart-team")));
    }

    #[test]
    fn missing_and_non_bearer_credentials_are_refused() {
        let p = plugin("");
        let none = TestRequest::new("203.0.113.9", "/v1/models");
        assert_eq!(outcome(&p, &none), "401 jwt.missing");
        let basic = none.header("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l");
        assert_eq!(outcome(&p, &basic), "401 jwt.malformed");
        let t = token(&claims());
        let twice = request("/v1/models", &t).header("authorization", &format!("Bearer {t}"));
        assert_eq!(outcome(&p, &twice), "401 jwt.malformed", "ambiguous");
    }

    #[test]
    fn refusals_tell_the_client_nothing_more_than_invalid_token() {
        let p = plugin("");
        let t = token(&with(claims(), "exp", json!(now() - 7200)));
        let Verdict::Deny(d) = p.check(&request("/v1/models", &t).view()) else {
            panic!("refused")
        };
        assert_eq!((d.status, &*d.rule), (401, "jwt.invalid_token"));
        assert_eq!(d.detail, Some("jwt.expired"));
        assert_eq!(
            d.headers,
            vec![(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\"")
            )]
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let p = plugin("");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1-rsa"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        for t in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let got = outcome(&p, &request("/", &t));
            assert!(got.starts_with("401 jwt."), "{got}");
        }
        let t = format!("{header}.{body}.");
        assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.algorithm");
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let p = plugin("");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k1-rsa","typ":"JWT"}"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims().to_string()));
        // The classic confusion: the verifier's own public key (here the JWKS document, and
        // the modulus) used as an HMAC secret.
        for secret in [issuer().jwks().into_bytes(), b"k1-rsa".to_vec()] {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let tag = ring::hmac::sign(&key, signed.as_bytes());
            let t = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
            assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.algorithm");
        }
    }

    #[test]
    fn kid_tricks_find_no_key() {
        let p = plugin("");
        for kid in [
            "../../../../dev/null",
            "/etc/passwd",
            "k1-rsa' OR '1'='1",
            "",
        ] {
            let t = issuer().sign_with_header(&json!({ "alg": "RS256", "kid": kid }), &claims());
            assert_eq!(
                outcome(&p, &request("/", &t)),
                "401 jwt.unknown_kid",
                "{kid}"
            );
        }
        let no_kid = issuer().sign_with_header(&json!({ "alg": "RS256" }), &claims());
        assert_eq!(outcome(&p, &request("/", &no_kid)), "401 jwt.no_kid");
    }

    #[test]
    fn an_algorithm_must_fit_its_key() {
        let p = plugin("");
        // ES256 naming the RSA key, RS256 naming the EC key (whose JWK says ES256).
        let t = issuer().sign_with_header(&json!({ "alg": "ES256", "kid": "k1-rsa" }), &claims());
        assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.key_mismatch");
        let t = issuer().sign_with_header(&json!({ "alg": "RS256", "kid": "k1-ec" }), &claims());
        assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.key_mismatch");
        // An issuer may narrow its algorithms.
        let narrow: JwtConfig = toml::from_str(&format!(
            "issuers = [{{ issuer = \"{ISS}\", jwks_url = \"{URL}\", algorithms = [\"RS256\"] }}]"
        ))
        .expect("config");
        let ctx = TestContext::new().with_keys(URL, Arc::new(FixedKeys(keys(issuer()))));
        let narrow = Jwt::build(narrow, &ctx).expect("builds");
        let es = issuer().sign("ES256", &claims());
        assert_eq!(outcome(&narrow, &request("/", &es)), "401 jwt.algorithm");
    }

    #[test]
    fn times_are_checked_with_leeway() {
        let p = plugin("leeway_seconds = 30");
        let n = now();
        let cases = [
            (with(claims(), "exp", json!(n - 3600)), "401 jwt.expired"),
            (with(claims(), "exp", json!(n - 10)), "ok client-a"),
            (
                with(claims(), "nbf", json!(n + 600)),
                "401 jwt.not_yet_valid",
            ),
            (
                with(claims(), "iat", json!(n + 600)),
                "401 jwt.issued_in_future",
            ),
            (with(claims(), "iat", json!(n + 10)), "ok client-a"),
            (with(claims(), "exp", json!("never")), "401 jwt.malformed"),
            (with(claims(), "exp", Value::Null), "401 jwt.claims"),
        ];
        for (c, want) in cases {
            assert_eq!(outcome(&p, &request("/", &token(&c))), want, "{c}");
        }
    }

    #[test]
    fn issuer_token_use_and_client_id_are_checked() {
        let p = plugin("");
        let cases = [
            (
                with(claims(), "iss", json!("https://evil.example")),
                "401 jwt.issuer",
            ),
            (with(claims(), "iss", Value::Null), "401 jwt.issuer"),
            (
                with(claims(), "token_use", json!("id")),
                "401 jwt.token_use",
            ),
            (with(claims(), "client_id", Value::Null), "401 jwt.claims"),
        ];
        for (c, want) in cases {
            assert_eq!(outcome(&p, &request("/", &token(&c))), want, "{c}");
        }
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        // Same issuer name, same kid, a key the issuer never published.
        let forger = TestIssuer::new(ISS, "k1");
        let p = plugin("");
        let t = forger.sign("ES256", &claims());
        assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.signature");
    }

    #[test]
    fn tampered_and_truncated_tokens_are_refused() {
        let p = plugin("");
        let good = token(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(with(claims(), "client_id", json!("admin")).to_string());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(outcome(&p, &request("/", &tampered)), "401 jwt.signature");
        let cut_signature = &good[..good.len() - 10];
        assert_eq!(
            outcome(&p, &request("/", cut_signature)),
            "401 jwt.signature"
        );
        let two_parts = format!("{}.{}", parts[0], parts[1]);
        assert_eq!(outcome(&p, &request("/", &two_parts)), "401 jwt.malformed");
        let cut_header = &good[5..];
        assert!(outcome(&p, &request("/", cut_header)).starts_with("401 jwt."));
        let huge = format!("{}.{}.{}", parts[0], "A".repeat(10_000), parts[2]);
        assert_eq!(outcome(&p, &request("/", &huge)), "401 jwt.malformed");
    }

    #[test]
    fn scopes_are_required_per_route_and_path() {
        let p = plugin(&format!(
            "scopes = [{{ paths = [\"/key/\", \"/spend/\"], scope = \"{ADMIN}\" }}]"
        ));
        let invoke_only = token(&issuer().access_claims("client-b", INVOKE, now()));
        assert_eq!(
            outcome(&p, &request("/v1/chat/completions", &invoke_only)),
            "ok client-b"
        );
        let Verdict::Deny(d) = p.check(&request("/KEY/generate", &invoke_only).view()) else {
            panic!("admin path needs the admin scope")
        };
        assert_eq!((d.status, &*d.rule), (403, "jwt.insufficient_scope"));
        let admin = token(&claims());
        assert_eq!(
            outcome(&p, &request("/key/generate", &admin)),
            "ok client-a"
        );
        let no_scope = token(&issuer().access_claims("client-c", "openid", now()));
        assert_eq!(
            outcome(&p, &request("/v1/models", &no_scope)),
            "403 jwt.insufficient_scope"
        );
        let none_needed = plugin("required_scope = \"\"\nexempt_paths = [\"/health\"]");
        assert_eq!(
            outcome(&none_needed, &request("/v1/models", &no_scope)),
            "ok client-c"
        );
        let anonymous = TestRequest::new("203.0.113.9", "/health/liveliness");
        assert_eq!(outcome(&none_needed, &anonymous), "continue");
    }

    #[test]
    fn onboarded_clients_get_their_team_and_only_their_scopes() {
        let clients = format!(
            "[clients.client-a]\nteam = \"search\"\nscopes = [\"{INVOKE}\"]\n\n[clients.client-b]\n"
        );
        let ctx = TestContext::new().with_file("clients.toml", &clients);
        let p = plugin_with(
            &format!("clients = \"clients.toml\"\nscopes = [{{ paths = [\"/key/\"], scope = \"{ADMIN}\" }}]"),
            Arc::new(FixedKeys(keys(issuer()))),
            ctx,
        );
        let a = token(&claims());
        let Verdict::Authenticated(who) = p.check(&request("/v1/models", &a).view()) else {
            panic!("client-a is onboarded")
        };
        assert_eq!(who.team.as_deref(), Some("search"));
        assert!(who.upstream_headers.contains(&(
            HeaderName::from_static("x-rampart-team"),
            HeaderValue::from_static("search")
        )));
        // Its token carries the admin scope, but the client was onboarded for invoke only.
        assert_eq!(
            outcome(&p, &request("/key/new", &a)),
            "403 jwt.insufficient_scope"
        );
        let b = token(&issuer().access_claims("client-b", INVOKE, now()));
        assert_eq!(outcome(&p, &request("/v1/models", &b)), "ok client-b");
        let stranger = token(&issuer().access_claims("client-z", INVOKE, now()));
        assert_eq!(
            outcome(&p, &request("/v1/models", &stranger)),
            "401 jwt.client"
        );
    }

    #[test]
    fn a_broken_clients_file_names_its_line() {
        let ctx = TestContext::new()
            .with_file("clients.toml", "[clients.a]\nteam = \"x\"\nteams = 1\n")
            .with_keys(URL, Arc::new(FixedKeys(keys(issuer()))));
        let e = Jwt::build(config("clients = \"clients.toml\""), &ctx)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("clients.toml:3:") && e.contains("teams"),
            "{e}"
        );
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let p = plugin("leeway_seconds = 0");
        let n = now();
        let t = token(&with(claims(), "exp", json!(n + 5)));
        let req = request("/v1/models", &t);
        for _ in 0..3 {
            assert!(matches!(
                p.decide(&req.view(), n),
                Decision::Done(Verdict::Authenticated(_))
            ));
        }
        assert_eq!(p.verified.len(), 1, "verified once, remembered once");
        // The remembered entry is not used past the token's expiry.
        let Decision::Done(Verdict::Deny(d)) = p.decide(&req.view(), n + 6) else {
            panic!("expired")
        };
        assert_eq!(d.detail, Some("jwt.expired"));
    }

    #[test]
    fn a_key_withdrawn_by_the_issuer_takes_its_remembered_tokens_with_it() {
        let only_ec = Arc::new(JwkSet::parse(
            json!({ "keys": [ serde_json::from_str::<Value>(&issuer().jwks()).expect("json")["keys"][1] ] })
                .to_string()
                .as_bytes(),
        ).expect("parses"));
        let source = Arc::new(RotatingKeys {
            current: ArcSwap::new(keys(issuer())),
            next: only_ec,
            fetches: AtomicUsize::new(0),
            allowed: 1,
        });
        let p = plugin_with("", source.clone(), TestContext::new());
        let t = token(&claims());
        assert_eq!(outcome(&p, &request("/", &t)), "ok client-a");
        source.refetch();
        assert_eq!(outcome(&p, &request("/", &t)), "401 jwt.unknown_kid");
    }

    #[test]
    fn the_cache_is_bounded() {
        let p = plugin("cache_entries = 32");
        for i in 0..200 {
            let t = token(&issuer().access_claims(&format!("c{i}"), INVOKE, now()));
            assert!(outcome(&p, &request("/", &t)).starts_with("ok"));
        }
        assert!(p.verified.len() <= 32, "{}", p.verified.len());
        assert!(p.verified.len() >= 8, "{}", p.verified.len());
    }

    #[test]
    fn an_unknown_kid_fetches_keys_once_then_waits_its_turn() {
        let source = Arc::new(RotatingKeys {
            current: ArcSwap::new(keys(issuer())),
            next: keys(rotated()),
            fetches: AtomicUsize::new(0),
            allowed: 1,
        });
        let p = plugin_with("", source.clone(), TestContext::new());
        let judge = |t: &str| {
            let req = request("/", t);
            let view = req.view();
            let fut = p
                .check_shared(&view)
                .expect("jwt always answers through check_shared");
            match now_or_never(fut) {
                Some(Verdict::Authenticated(who)) => format!("ok {}", who.client_id),
                Some(Verdict::Deny(d)) => format!("{} {}", d.status, d.reason()),
                other => format!("{other:?}"),
            }
        };
        // The issuer rotated: a token from its new key makes rampart fetch the keys.
        let new_key = rotated().sign("RS256", &claims());
        assert_eq!(judge(&new_key), "ok client-a");
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Forged kids cannot make it fetch again before the interval is over.
        for i in 0..50 {
            let t = issuer().sign_with_header(
                &json!({ "alg": "RS256", "kid": format!("forged-{i}") }),
                &claims(),
            );
            assert_eq!(judge(&t), "401 jwt.unknown_kid");
        }
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn several_issuers_each_with_their_own_keys() {
        let other_iss = "https://cognito-idp.us-west-2.amazonaws.com/us-west-2_Other";
        let other = TestIssuer::new(other_iss, "o1");
        let other_url = "http://keys.other/jwks.json";
        let config: JwtConfig = toml::from_str(&format!(
            "issuers = [{{ issuer = \"{ISS}\", jwks_url = \"{URL}\" }}, {{ issuer = \"{other_iss}\", jwks_url = \"{other_url}\" }}]"
        ))
        .expect("config");
        let ctx = TestContext::new()
            .with_keys(URL, Arc::new(FixedKeys(keys(issuer()))))
            .with_keys(other_url, Arc::new(FixedKeys(keys(&other))));
        let p = Jwt::build(config, &ctx).expect("builds");
        assert_eq!(outcome(&p, &request("/", &token(&claims()))), "ok client-a");
        let theirs = other.sign("RS256", &other.access_claims("west", INVOKE, now()));
        assert_eq!(outcome(&p, &request("/", &theirs)), "ok west");
        // One issuer's key cannot vouch for the other's name, even with a kid they share.
        let crossed = other.sign_with_header(
            &json!({ "alg": "RS256", "kid": "k1-rsa" }),
            &with(
                other.access_claims("west", INVOKE, now()),
                "iss",
                json!(ISS),
            ),
        );
        assert_eq!(outcome(&p, &request("/", &crossed)), "401 jwt.signature");
    }

    #[test]
    fn later_plugins_see_the_identity() {
        let clients = "[clients.client-a]\nteam = \"search\"\n[clients.client-b]\nteam = \"search\"\n[clients.client-c]\nteam = \"ads\"\n";
        let ctx = crate::plugins::bot_control::tests::ctx()
            .with_file("clients.toml", clients)
            .with_keys(URL, Arc::new(FixedKeys(keys(issuer()))));
        let chain = |exempt: bool| {
            let specs = [
                format!("type = \"jwt\"\nclients = \"clients.toml\"\nissuers = [{{ issuer = \"{ISS}\", jwks_url = \"{URL}\" }}]"),
                "type = \"rate_limit\"\nlimits = [{ name = \"PerTeam\", requests = 3, window_seconds = 60, key = \"team\" }]".to_string(),
                format!("type = \"bot_control\"\nexempt_authenticated = {exempt}\noverrides = {{ CategoryHttpLibrary = \"block\" }}"),
            ];
            Chain::new(
                specs
                    .iter()
                    .map(|src| {
                        crate::registry::build(&toml::from_str(src).expect("spec"), &ctx)
                            .expect("builds")
                    })
                    .collect(),
            )
        };
        let run = |chain: &Chain, client: &str| {
            let t = token(&issuer().access_claims(client, INVOKE, now()));
            let req = request("/v1/models", &t).header("user-agent", "curl/8.5.0");
            let j = now_or_never(chain.evaluate(&req.view(), crate::Stage::All, |_| {}))
                .expect("ready");
            match j.denied {
                None => format!(
                    "ok {}",
                    j.identity
                        .map(|i| i.client_id.to_string())
                        .unwrap_or_default()
                ),
                Some((plugin, d)) => format!("{plugin} {}", d.status),
            }
        };
        // curl is a bot that this catalogue blocks, unless the caller is authenticated.
        assert_eq!(run(&chain(false), "client-a"), "bot_control 403");
        let exempt = chain(true);
        assert_eq!(run(&exempt, "client-a"), "ok client-a");
        assert_eq!(run(&exempt, "client-b"), "ok client-b");
        assert_eq!(run(&exempt, "client-a"), "ok client-a");
        assert_eq!(
            run(&exempt, "client-b"),
            "rate_limit 429",
            "team search has used its 3"
        );
        assert_eq!(
            run(&exempt, "client-c"),
            "ok client-c",
            "team ads counts apart"
        );
    }
}
