//! The `jwt` plugin deciding on one RS256 access token: cached (a client reusing its token,
//! the usual case) and uncached (the first request with a token: parse, RSA-2048 signature,
//! claims). `cargo bench -p rampart-benches --bench jwt`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use rampart_plugins::jws::{FixedKeys, JwkSet, KeySource};
use rampart_plugins::net::NetSet;
use rampart_plugins::plugins::jwt::{IssuerConfig, Jwt, JwtConfig};
use rampart_plugins::testing::TestIssuer;
use rampart_plugins::{BuildContext, BuildError, Plugin, RequestView, SharedSecret, Verdict};

const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Bench";

struct Keys {
    keys: Arc<JwkSet>,
    internal: NetSet,
}

impl BuildContext for Keys {
    fn secret(&self, name: &str) -> Result<SharedSecret, BuildError> {
        Err(BuildError::UnknownSecret(name.to_string(), String::new()))
    }

    fn internal_networks(&self) -> &NetSet {
        &self.internal
    }

    fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
        Err(BuildError::invalid(
            "bench",
            &format!("no rule file {path}"),
        ))
    }

    fn jwks(&self, _issuer: &IssuerConfig) -> Result<Arc<dyn KeySource>, BuildError> {
        Ok(Arc::new(FixedKeys(self.keys.clone())))
    }
}

fn plugin(issuer: &TestIssuer, cache_entries: usize) -> Jwt {
    let config: JwtConfig = toml::from_str(&format!(
        "cache_entries = {cache_entries}\nissuers = [{{ issuer = \"{ISS}\", jwks_url = \"http://unused\" }}]"
    ))
    .expect("config");
    let ctx = Keys {
        keys: Arc::new(JwkSet::parse(issuer.jwks().as_bytes()).expect("jwks")),
        internal: NetSet::new([]),
    };
    Jwt::build(config, &ctx).expect("builds")
}

fn bench(c: &mut Criterion) {
    let issuer = TestIssuer::new(ISS, "bench");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = issuer.sign(
        "RS256",
        &issuer.access_claims("bench-client", "https://gateway.internal/invoke", now),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let method = Method::POST;
    let peer = std::net::IpAddr::from([203, 0, 113, 7]);
    let view = RequestView {
        listener: "web",
        route: "litellm",
        peer,
        client: peer,
        method: &method,
        path: "/v1/chat/completions",
        query: None,
        headers: &headers,
        consumed: &[],
        body: None,
        body_items: &[],
        identity: None,
        inspections: None,
    };
    let cached = plugin(&issuer, 100_000);
    // No cache: every decision verifies the signature again.
    let uncached = plugin(&issuer, 0);
    for p in [&cached, &uncached] {
        assert!(matches!(p.check(&view), Verdict::Authenticated(_)));
    }
    let mut group = c.benchmark_group("jwt");
    group.bench_function("rs256_cached", |b| {
        b.iter(|| black_box(cached.check(black_box(&view))))
    });
    group.bench_function("rs256_uncached", |b| {
        b.iter(|| black_box(uncached.check(black_box(&view))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
