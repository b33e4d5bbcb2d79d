//! The access-policy chain of the `web` listener, and path normalisation, on their own.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use rampart_plugins::net::NetSet;
use rampart_plugins::registry::{self, BuildContext, BuildError, PluginSpec};
use rampart_plugins::{path, Chain, RequestView, SecretValues, SharedSecret};

struct Ctx(NetSet);

impl BuildContext for Ctx {
    fn secret(&self, name: &str) -> Result<SharedSecret, BuildError> {
        Ok(SharedSecret::new(
            name,
            SecretValues::new([format!("{name}-0123456789abcdef0123456789abcdef").into_bytes()]),
        ))
    }
    fn internal_networks(&self) -> &NetSet {
        &self.0
    }
    fn rule_files(&self, path: &str) -> Result<Vec<(String, String)>, BuildError> {
        Err(BuildError::invalid(
            "bench",
            &format!("no rule files ({path})"),
        ))
    }
}

fn web_chain() -> Chain {
    let ctx = Ctx(NetSet::new(["10.20.0.0/16".parse().expect("cidr")]));
    let specs = [
        "type = \"origin_verify\"\naccept = [\"header\", \"internal\"]\nsecret = \"origin\"",
        "type = \"admin_secret\"\nsecret = \"admin\"",
    ];
    let entries = specs
        .iter()
        .map(|s| {
            let spec: PluginSpec = toml::from_str(s).expect("spec");
            registry::build(&spec, &ctx).expect("build")
        })
        .collect();
    Chain::new(entries)
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "gateway.example.com"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-0123456789"),
        ("accept", "application/json"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.insert(
        "x-origin-verify",
        HeaderValue::from_static("origin-0123456789abcdef0123456789abcdef"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let chain = web_chain();
    let headers = headers();
    let peer: IpAddr = "203.0.113.9".parse().expect("ip");
    let method = Method::POST;
    let view = |path: &'static str| RequestView {
        listener: "web",
        route: "litellm",
        peer,
        client: peer,
        method: &method,
        path,
        query: None,
        headers: &headers,
        consumed: &[],
        body: None,
        body_items: &[],
        identity: None,
        inspections: None,
    };
    let chat = view("/v1/chat/completions");
    c.bench_function("chain/web/chat_completion_allowed", |b| {
        b.iter(|| black_box(rampart_benches::evaluate_now(&chain, black_box(&chat))))
    });
    let admin = view("/key/generate");
    c.bench_function("chain/web/admin_path_refused", |b| {
        b.iter(|| black_box(rampart_benches::evaluate_now(&chain, black_box(&admin))))
    });
    c.bench_function("path/normalize/canonical", |b| {
        b.iter(|| black_box(path::normalize(black_box("/v1/chat/completions")).map(|p| p.len())))
    });
    c.bench_function("path/normalize/encoded_traversal", |b| {
        b.iter(|| {
            black_box(path::normalize(black_box("/v1/%2e%2e//%6bey/generate")).map(|p| p.len()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
