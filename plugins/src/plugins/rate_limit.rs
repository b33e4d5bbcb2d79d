//! `rate_limit`: sliding-window request limits keyed by client address, header, route...
//!
//! Every limit that applies to a request must allow it; a request refused by one limit is
//! taken back from the others. Counters live outside the rules snapshot (the proxy hands
//! the same [`RateWindow`] to a rebuilt plugin whose limit did not change), and in cluster
//! mode in a store shared by every instance, with the local counters as the fallback.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::net::canonical;
use crate::rate_window::{now_ms, RateWindow, SharedHit, SharedWindows, WindowSpec, WindowState};
use crate::registry::{BuildContext, BuildError};
use crate::verdict::VerdictFuture;
use crate::{Deny, Finding, Plugin, RequestView, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub limits: Vec<LimitConfig>,
    /// Count in the gateway's shared store (`[rate_limit_store]`), so that every instance
    /// enforces one limit together.
    #[serde(default)]
    pub shared: bool,
    /// What to do while the shared store cannot answer.
    #[serde(default)]
    pub on_store_error: StoreFallback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFallback {
    /// Each instance enforces the limit on its own counters.
    #[default]
    Local,
    /// Refuse with 503 (fail closed).
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Rule id on a refusal and in metrics.
    pub name: String,
    pub requests: u32,
    pub window_seconds: u64,
    /// `client_ip` (default), `peer_ip`, `route`, `header:<name>`, or, after a `jwt` plugin
    /// in the chain, `jwt_client_id` or `team`. A request without the key is not counted.
    #[serde(default = "default_key")]
    pub key: String,
    /// Route names the limit applies to; all routes when empty.
    #[serde(default)]
    pub routes: Vec<String>,
    /// IPv6 clients are counted per network of this length: one host usually has a /64.
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// Keys tracked at most on one instance (at most about 100 bytes each; see
    /// [`RateWindow`](crate::rate_window::RateWindow)).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_key() -> String {
    "client_ip".to_string()
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_max_keys() -> usize {
    1_000_000
}

/// What a request is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    ClientIp,
    PeerIp,
    Route,
    Header(HeaderName),
    /// The verified caller's client id (a JWT's `client_id`).
    ClientId,
    /// The verified caller's team, from client onboarding.
    Team,
}

impl KeyKind {
    fn parse(s: &str) -> Option<KeyKind> {
        Some(match s {
            "client_ip" => KeyKind::ClientIp,
            "peer_ip" => KeyKind::PeerIp,
            "route" => KeyKind::Route,
            "jwt_client_id" => KeyKind::ClientId,
            "team" => KeyKind::Team,
            _ => {
                KeyKind::Header(HeaderName::from_bytes(s.strip_prefix("header:")?.as_bytes()).ok()?)
            }
        })
    }
}

struct Limit {
    name: String,
    spec: WindowSpec,
    key: KeyKind,
    routes: Vec<String>,
    v6_mask: u128,
    window: Arc<RateWindow>,
    limit_header: HeaderValue,
}

impl Limit {
    /// The request's key for this limit, or `None` when the limit does not apply.
    fn key(&self, req: &RequestView<'_>) -> Option<u128> {
        if !self.routes.is_empty() && !self.routes.iter().any(|r| r == req.route) {
            return None;
        }
        match &self.key {
            KeyKind::ClientIp => Some(self.ip_key(req.client)),
            KeyKind::PeerIp => Some(self.ip_key(req.peer)),
            KeyKind::Route => Some(fnv128(req.route.as_bytes())),
            KeyKind::Header(h) => req.headers.get(h).map(|v| fnv128(v.as_bytes())),
            KeyKind::ClientId => req.identity.map(|who| fnv128(who.client_id.as_bytes())),
            KeyKind::Team => req
                .identity
                .and_then(|who| who.team.as_deref())
                .map(|team| fnv128(team.as_bytes())),
        }
    }

    fn ip_key(&self, ip: IpAddr) -> u128 {
        match canonical(ip) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6) & self.v6_mask,
        }
    }

    fn shared_key(&self, key: u128) -> String {
        format!(
            "rampart:rl:{}:{}:{}:{key:032x}",
            self.name, self.spec.limit, self.spec.window_ms
        )
    }

    fn refusal(&self, state: &WindowState) -> Deny {
        let seconds = state.reset_ms.div_ceil(1000).max(1);
        Deny::new(429, self.name.clone())
            .with_header(RETRY_AFTER, HeaderValue::from(seconds))
            .with_header(
                HeaderName::from_static("ratelimit-limit"),
                self.limit_header.clone(),
            )
            .with_header(
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(state.remaining(&self.spec)),
            )
            .with_header(
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(seconds),
            )
    }
}

/// FNV-1a, 128 bits: the same on every instance, so that shared keys agree.
pub(crate) fn fnv128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

pub struct RateLimit {
    limits: Vec<Limit>,
    shared: Option<Arc<dyn SharedWindows>>,
    fallback: StoreFallback,
}

impl RateLimit {
    pub fn build(config: RateLimitConfig, ctx: &dyn BuildContext) -> Result<Self, BuildError> {
        let invalid = |m: String| BuildError::invalid("rate_limit", &m);
        if config.limits.is_empty() {
            return Err(invalid("`limits` is empty".into()));
        }
        let mut limits = Vec::with_capacity(config.limits.len());
        for l in config.limits {
            if l.requests == 0 || l.window_seconds == 0 {
                return Err(invalid(format!(
                    "limit {:?}: `requests` and `window_seconds` must be above 0",
                    l.name
                )));
            }
            if l.ipv6_prefix > 128 {
                return Err(invalid(format!(
                    "limit {:?}: `ipv6_prefix` above 128",
                    l.name
                )));
            }
            if limits.iter().any(|k: &Limit| k.name == l.name) {
                return Err(invalid(format!("limit {:?} is defined twice", l.name)));
            }
            let key = KeyKind::parse(&l.key).ok_or_else(|| {
                invalid(format!(
                    "limit {:?}: key {:?} is not client_ip, peer_ip, route or header:<name>",
                    l.name, l.key
                ))
            })?;
            let spec = WindowSpec {
                limit: l.requests,
                window_ms: l.window_seconds * 1000,
            };
            limits.push(Limit {
                window: ctx.rate_window(&l, spec),
                name: l.name,
                spec,
                key,
                routes: l.routes,
                v6_mask: u128::MAX
                    .checked_shl(128 - u32::from(l.ipv6_prefix))
                    .unwrap_or(0),
                limit_header: HeaderValue::from(l.requests),
            });
        }
        let shared = if config.shared {
            Some(ctx.shared_windows()?.ok_or_else(|| {
                invalid("`shared = true` needs a [rate_limit_store] in gateway.toml".into())
            })?)
        } else {
            None
        };
        Ok(RateLimit {
            limits,
            shared,
            fallback: config.on_store_error,
        })
    }

    /// Counts the request locally against every limit that applies, all or none.
    fn check_local(&self, req: &RequestView<'_>, now: u64) -> Verdict {
        let mut counted: Vec<(&Limit, u128)> = Vec::with_capacity(self.limits.len());
        for limit in &self.limits {
            let Some(key) = limit.key(req) else { continue };
            let state = limit.window.hit(key, now);
            if !state.allowed {
                for (l, k) in counted {
                    l.window.undo(k, now);
                }
                return Verdict::Deny(limit.refusal(&state));
            }
            counted.push((limit, key));
        }
        Verdict::Continue
    }

    async fn check_in_store(&self, store: &dyn SharedWindows, req: &RequestView<'_>) -> Verdict {
        let now = now_ms();
        let applying: Vec<(&Limit, u128)> = self
            .limits
            .iter()
            .filter_map(|l| l.key(req).map(|k| (l, k)))
            .collect();
        if applying.is_empty() {
            return Verdict::Continue;
        }
        let hits: Vec<SharedHit> = applying
            .iter()
            .map(|(l, k)| SharedHit {
                key: l.shared_key(*k),
                spec: l.spec,
                amount: 1,
            })
            .collect();
        match store.hit(&hits).await {
            Ok(states) if states.len() == applying.len() => {
                if states.iter().all(|s| s.allowed) {
                    for (l, k) in &applying {
                        l.window.record(*k, now);
                    }
                    return Verdict::Continue;
                }
                // All or none: the refusing limit is the one at its limit.
                let mut pairs = applying.iter().map(|(l, _)| *l).zip(&states);
                let first = pairs.clone().next();
                match pairs.find(|(l, s)| s.count >= l.spec.limit).or(first) {
                    Some((l, s)) => Verdict::Deny(l.refusal(s)),
                    None => Verdict::Continue,
                }
            }
            _ => match self.fallback {
                StoreFallback::Local => self.check_local(req, now),
                StoreFallback::Refuse => {
                    Verdict::Deny(Deny::new(503, "rate_limit.store_unavailable"))
                }
            },
        }
    }
}

impl Plugin for RateLimit {
    fn route_names(&self) -> Vec<&str> {
        self.limits
            .iter()
            .flat_map(|l| l.routes.iter().map(String::as_str))
            .collect()
    }

    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn check_reporting(
        &self,
        req: &RequestView<'_>,
        _report: &mut dyn FnMut(&Finding<'_>),
    ) -> Verdict {
        self.check_local(req, now_ms())
    }

    fn check_shared<'a>(&'a self, req: &'a RequestView<'_>) -> Option<VerdictFuture<'a>> {
        let store = self.shared.as_deref()?;
        if !store.available() {
            return match self.fallback {
                StoreFallback::Local => None,
                StoreFallback::Refuse => Some(Box::pin(async {
                    Verdict::Deny(Deny::new(503, "rate_limit.store_unavailable"))
                })),
            };
        }
        Some(Box::pin(self.check_in_store(store, req)))
    }

    fn explain(&self, req: &RequestView<'_>) -> Vec<String> {
        self.limits
            .iter()
            .filter(|l| l.key(req).is_some())
            .map(|l| {
                format!(
                    "counted by limit {} ({} per {} s{})",
                    l.name,
                    l.spec.limit,
                    l.spec.window_ms / 1000,
                    if self.shared.is_some() {
                        ", shared"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::plugins::testing::TestRequest;
    use crate::rate_window::{StoreError, StoreFuture};
    use crate::registry::tests::TestContext;

    fn plugin(config: &str) -> RateLimit {
        let config: RateLimitConfig = toml::from_str(config).expect("config parses");
        RateLimit::build(config, &TestContext::new()).expect("builds")
    }

    fn status(p: &RateLimit, req: &TestRequest) -> u16 {
        match p.check(&req.view()) {
            Verdict::Continue | Verdict::Authenticated(_) => 200,
            Verdict::Deny(d) => d.status,
        }
    }

    #[test]
    fn exactly_the_limit_passes_then_429_with_headers() {
        let p = plugin("[[limits]]\nname = \"edge\"\nrequests = 1000\nwindow_seconds = 300");
        let req = TestRequest::new("203.0.113.7", "/v1/models");
        let passed = (0..1200).filter(|_| status(&p, &req) == 200).count();
        assert_eq!(passed, 1000);
        let Verdict::Deny(d) = p.check(&req.view()) else {
            panic!("refused")
        };
        assert_eq!((d.status, d.rule.as_ref()), (429, "edge"));
        let header = |n: &str| {
            d.headers
                .iter()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("ratelimit-limit").as_deref(), Some("1000"));
        assert_eq!(header("ratelimit-remaining").as_deref(), Some("0"));
        let retry: u64 = header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((300..=321).contains(&retry), "{retry}");
        assert_eq!(header("ratelimit-reset"), header("retry-after"));
        assert_eq!(status(&p, &TestRequest::new("203.0.113.8", "/")), 200);
    }

    #[test]
    fn every_limit_must_allow_and_a_refusal_is_taken_back() {
        let p = plugin(
            "[[limits]]\nname = \"per_ip\"\nrequests = 5\nwindow_seconds = 60\n\
             [[limits]]\nname = \"per_key\"\nrequests = 3\nwindow_seconds = 60\nkey = \"header:x-api-key\"",
        );
        let keyed = TestRequest::new("198.51.100.1", "/").header("X-Api-Key", "k1");
        let results: Vec<u16> = (0..3).map(|_| status(&p, &keyed)).collect();
        assert_eq!(results, [200, 200, 200]);
        let Verdict::Deny(d) = p.check(&keyed.view()) else {
            panic!("refused by per_key")
        };
        assert_eq!(d.rule, "per_key");
        // The per-key refusal did not use the address's quota: two left of five.
        let bare = TestRequest::new("198.51.100.1", "/");
        assert_eq!(status(&p, &bare), 200);
        assert_eq!(status(&p, &bare), 200);
        assert_eq!(status(&p, &bare), 429);
    }

    #[test]
    fn ipv6_hosts_of_one_network_share_a_count_and_routes_scope_limits() {
        let p = plugin(
            "[[limits]]\nname = \"v6\"\nrequests = 2\nwindow_seconds = 60\n\
             [[limits]]\nname = \"admin_route\"\nrequests = 1\nwindow_seconds = 60\nkey = \"route\"\nroutes = [\"admin\"]",
        );
        assert_eq!(status(&p, &TestRequest::new("2001:db8:1:2::1", "/")), 200);
        assert_eq!(
            status(&p, &TestRequest::new("2001:db8:1:2::ffff", "/")),
            200
        );
        assert_eq!(
            status(&p, &TestRequest::new("2001:db8:1:2:abcd::9", "/")),
            429
        );
        assert_eq!(status(&p, &TestRequest::new("2001:db8:1:3::1", "/")), 200);
        // `TestRequest` routes are named "test": the admin route's limit does not apply.
        for _ in 0..2 {
            assert_eq!(status(&p, &TestRequest::new("192.0.2.1", "/")), 200);
        }
    }

    #[test]
    fn bad_limits_are_refused_with_reasons() {
        for (bad, why) in [
            ("requests = 0\nwindow_seconds = 1", "above 0"),
            (
                "requests = 1\nwindow_seconds = 1\nkey = \"cookie\"",
                "cookie",
            ),
            (
                "requests = 1\nwindow_seconds = 1\nipv6_prefix = 129",
                "ipv6_prefix",
            ),
        ] {
            let config: RateLimitConfig =
                toml::from_str(&format!("[[limits]]\nname = \"x\"\n{bad}")).expect("parses");
            let e = RateLimit::build(config, &TestContext::new())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why), "{e}");
        }
        let config: RateLimitConfig = toml::from_str(
            "shared = true\n[[limits]]\nname = \"x\"\nrequests = 1\nwindow_seconds = 1",
        )
        .expect("parses");
        assert!(
            RateLimit::build(config, &TestContext::new()).is_err(),
            "no store"
        );
    }

    /// A store that fails on demand, standing in for Redis in these unit tests (the
    /// integration tests use a real Redis).
    struct FlakyStore {
        up: Mutex<bool>,
        windows: Mutex<std::collections::HashMap<String, RateWindow>>,
    }

    impl SharedWindows for FlakyStore {
        fn hit<'a>(&'a self, hits: &'a [SharedHit]) -> StoreFuture<'a> {
            Box::pin(async move {
                if !*self.up.lock().expect("lock") {
                    return Err(StoreError("down".into()));
                }
                let mut windows = self.windows.lock().expect("lock");
                Ok(hits
                    .iter()
                    .map(|h| {
                        windows
                            .entry(h.key.clone())
                            .or_insert_with(|| RateWindow::new(h.spec, 10))
                            .hit(0, now_ms())
                    })
                    .collect())
            })
        }

        fn charge<'a>(&'a self, _: &'a [SharedHit]) -> StoreFuture<'a> {
            Box::pin(async { Err(StoreError("request limits never charge".into())) })
        }

        fn available(&self) -> bool {
            true
        }
    }

    struct StoreContext(Arc<FlakyStore>);

    impl BuildContext for StoreContext {
        fn secret(&self, name: &str) -> Result<crate::SharedSecret, BuildError> {
            TestContext::new().secret(name)
        }
        fn internal_networks(&self) -> &crate::net::NetSet {
            unreachable!("not asked by rate_limit")
        }
        fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
            TestContext::new().rule_files(path)
        }
        fn shared_windows(&self) -> Result<Option<Arc<dyn SharedWindows>>, BuildError> {
            Ok(Some(self.0.clone()))
        }
    }

    fn shared_status(p: &RateLimit, req: &TestRequest) -> u16 {
        let view = req.view();
        let verdict = match p.check_shared(&view) {
            Some(f) => crate::now_or_never(f).expect("the test store never waits"),
            None => p.check(&view),
        };
        match verdict {
            Verdict::Continue | Verdict::Authenticated(_) => 200,
            Verdict::Deny(d) => d.status,
        }
    }

    #[test]
    fn a_failing_store_falls_back_to_local_counts_or_refuses() {
        let store = Arc::new(FlakyStore {
            up: Mutex::new(true),
            windows: Default::default(),
        });
        let build = |fallback: &str| {
            let config: RateLimitConfig = toml::from_str(&format!(
                "shared = true\non_store_error = \"{fallback}\"\n\
                 [[limits]]\nname = \"x\"\nrequests = 4\nwindow_seconds = 60"
            ))
            .expect("parses");
            RateLimit::build(config, &StoreContext(store.clone())).expect("builds")
        };
        let p = build("local");
        let req = TestRequest::new("192.0.2.9", "/");
        assert_eq!(shared_status(&p, &req), 200);
        assert_eq!(shared_status(&p, &req), 200);
        *store.up.lock().expect("lock") = false;
        // The local counters saw the two requests the store counted: two more pass.
        let local: Vec<u16> = (0..3).map(|_| shared_status(&p, &req)).collect();
        assert_eq!(local, [200, 200, 429]);
        let strict = build("refuse");
        assert_eq!(shared_status(&strict, &req), 503);
        *store.up.lock().expect("lock") = true;
        assert_eq!(shared_status(&strict, &req), 200, "the store answers again");
    }
}
