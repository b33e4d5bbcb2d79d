//! The WAF on its own: the shipped rules (`rules/waf`) over a typical GET, a 4 KB form post,
//! a 16 KB chat request and coding-agent requests of 256 KiB and 1 MiB (LLM profile, OpenAI
//! and Anthropic shapes), beside the same requests through the access plugins alone.
//! `cargo bench -p rampart-benches --bench waf`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use rampart_benches::agent::{self, Shape};
use rampart_plugins::net::NetSet;
use rampart_plugins::registry::{self, PluginSpec};
use rampart_plugins::Chain;
use rules_dir::{outside_request, RulesDir};

#[path = "../../plugins/tests/support/rules_dir.rs"]
mod rules_dir;

fn chain(specs: &[&str]) -> Chain {
    let ctx = RulesDir {
        internal: NetSet::new(["10.20.0.0/16".parse().expect("cidr")]),
        secret: Some("origin-0123456789abcdef"),
        ..RulesDir::shipped()
    };
    Chain::new(
        specs
            .iter()
            .map(|s| {
                let spec: PluginSpec = toml::from_str(s).expect("spec");
                registry::build(&spec, &ctx).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect(),
    )
}

const ACCESS: &str =
    "type = \"origin_verify\"\naccept = [\"header\", \"internal\"]\nsecret = \"origin\"";
const BAD_INPUTS: &str = "type = \"bad_inputs\"\nroutes = { litellm = \"llm\" }";
const OWASP: &str = "type = \"owasp\"\nroutes = { litellm = \"llm\" }";

fn headers(content_type: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "gateway.example.com"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        (
            "authorization",
            "Bearer sk-0123456789abcdef0123456789abcdef",
        ),
        ("x-origin-verify", "origin-0123456789abcdef"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if let Some(ct) = content_type {
        h.insert("content-type", HeaderValue::from_static(ct));
    }
    h
}

fn form_4k() -> Vec<u8> {
    let mut body = String::new();
    let mut i = 0;
    while body.len() < 4096 {
        body.push_str(&format!(
            "field{i}=Some+ordinary+text+value+number+{i}+with+words&"
        ));
        i += 1;
    }
    body.into_bytes()
}

fn chat_16k() -> Vec<u8> {
    let code = "def handler(event):\n    rows = db.execute('SELECT id, name FROM users WHERE id = %s', (event['id'],))\n    return {'statusCode': 200, 'body': json.dumps(rows)}\n";
    let text = code.repeat(16 * 1024 / code.len());
    serde_json::json!({ "model": "gpt-4o", "temperature": 0.2, "messages": [
        { "role": "system", "content": "You are a careful reviewer." },
        { "role": "user", "content": text } ] })
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let access = chain(&[ACCESS]);
    let waf = chain(&[ACCESS, BAD_INPUTS, OWASP]);
    let (get, post) = (Method::GET, Method::POST);
    let (h_get, h_form, h_json) = (
        headers(None),
        headers(Some("application/x-www-form-urlencoded")),
        headers(Some("application/json")),
    );
    let (form, chat) = (form_4k(), chat_16k());
    let agent_256k = agent::request(Shape::OpenAi, 256 * 1024);
    let agent_1m = agent::request(Shape::OpenAi, 1024 * 1024);
    let agent_1m_anthropic = agent::request(Shape::Anthropic, 1024 * 1024);
    struct Case<'a> {
        name: &'a str,
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        body: Option<&'a [u8]>,
    }
    let cases = [
        Case {
            name: "get",
            method: &get,
            path: "/v1/models",
            query: Some("limit=20&order=desc"),
            headers: &h_get,
            body: None,
        },
        Case {
            name: "form_4k",
            method: &post,
            path: "/grafana/api/search",
            query: None,
            headers: &h_form,
            body: Some(&form),
        },
        Case {
            name: "chat_16k",
            method: &post,
            path: "/v1/chat/completions",
            query: None,
            headers: &h_json,
            body: Some(&chat),
        },
        Case {
            name: "agent_256k",
            method: &post,
            path: "/v1/chat/completions",
            query: None,
            headers: &h_json,
            body: Some(&agent_256k),
        },
        Case {
            name: "agent_1m",
            method: &post,
            path: "/v1/chat/completions",
            query: None,
            headers: &h_json,
            body: Some(&agent_1m),
        },
        Case {
            name: "agent_1m_anthropic",
            method: &post,
            path: "/v1/messages",
            query: None,
            headers: &h_json,
            body: Some(&agent_1m_anthropic),
        },
    ];
    for Case {
        name,
        method,
        path,
        query,
        headers,
        body,
    } in cases
    {
        let route = if path.starts_with("/grafana") {
            "grafana"
        } else {
            "litellm"
        };
        let view = outside_request(route, method, path, query, headers, body);
        let verdict = rampart_benches::evaluate_now(&waf, &view);
        assert!(
            verdict == Some(None),
            "{name} must pass the WAF: {verdict:?}"
        );
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(
            (path.len() + query.map_or(0, str::len) + body.map_or(0, <[u8]>::len)) as u64,
        ));
        group.bench_function("access_only", |b| {
            b.iter(|| black_box(rampart_benches::evaluate_now(&access, black_box(&view))))
        });
        group.bench_function("access_and_waf", |b| {
            b.iter(|| black_box(rampart_benches::evaluate_now(&waf, black_box(&view))))
        });
        group.finish();
    }

    // The cases above send one request again and again, and the WAFs know every item of
    // its conversation. An agent's next request adds a turn: its tool call and the file it
    // read, which no request held before, after a conversation the WAFs judged already.
    let mut group = c.benchmark_group("agent_1m_next_turn");
    group.throughput(Throughput::Bytes(agent_1m.len() as u64));
    let mut turn = 0;
    group.bench_function("access_and_waf", |b| {
        b.iter_batched(
            || {
                turn += 1;
                agent::next_turn(&agent_1m, turn).expect("an OpenAI-shaped request")
            },
            |body| {
                let path = "/v1/chat/completions";
                let view = outside_request("litellm", &post, path, None, &h_json, Some(&body));
                black_box(rampart_benches::evaluate_now(&waf, black_box(&view)))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();

    // The first cases send one request again and again, as a coding agent resends its
    // conversation every turn: the WAFs know its items and short fields. Here 48 conversations
    // take turns: 48 MiB of items, past what the process keeps of judged items (32 MiB, so in
    // turn each is gone before it comes again), and about 33,000 distinct short fields against
    // the memos' 8,192 slots each: what a request costs when its conversation is new.
    let conversations: Vec<Vec<u8>> = (1..=48)
        .map(|seed| agent::conversation(Shape::OpenAi, 1024 * 1024, seed))
        .collect();
    let views: Vec<_> = conversations
        .iter()
        .map(|body| {
            let path = "/v1/chat/completions";
            outside_request("litellm", &post, path, None, &h_json, Some(body))
        })
        .collect();
    let mut group = c.benchmark_group("agent_1m_new_conversations");
    group.throughput(Throughput::Bytes(conversations[0].len() as u64));
    group.bench_function("access_and_waf", |b| {
        let mut next = views.iter().cycle();
        b.iter(|| {
            let view = next.next().expect("a cycle never ends");
            black_box(rampart_benches::evaluate_now(&waf, black_box(view)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
