//! Provider routes through the real binary: the model table sends OpenAI-style requests to
//! OpenAI, Anthropic, Gemini and Azure (a recording fake provider, over TLS for Azure, and
//! llmock), native routes pass the providers' own APIs through, keys are injected, streams
//! pass chunk by chunk, failures fail over, and token budgets hold.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rampart_integration::identity::{
    openai_client, openai_client_for, venv_bin, BedrockFake, JwksServer, Llmock, Moto,
    AWS_TEST_ENV, MOTO_REGION,
};
use rampart_integration::providers::{test_ca, FakeProvider};
use rampart_integration::redis::RedisServer;
use rampart_integration::*;
use rampart_plugins::testing::TestIssuer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEYS: &[(&str, &str)] = &[
    ("TEST_OPENAI_KEY", "sk-test-openai-0001"),
    ("TEST_ANTHROPIC_KEY", "sk-ant-test-0002"),
    ("TEST_GEMINI_KEY", "AIza-test-0003"),
    ("TEST_AZURE_KEY", "azure-test-0004"),
];

/// A gateway with one listener whose routes go to providers; `plugins` and `llm` are
/// extra TOML for the listener's chain and the `[llm]` table.
fn gateway(head: &str, llm: &str, plugins: &str) -> String {
    format!(
        r#"
[network]
internal_cidrs = ["{INTERNAL_PEER}/32"]

[secrets.origin-verify]
env = ["RAMPART_ORIGIN_VERIFY_SECRET"]
[secrets.openai-key]
env = ["TEST_OPENAI_KEY"]
[secrets.anthropic-key]
env = ["TEST_ANTHROPIC_KEY"]
[secrets.gemini-key]
env = ["TEST_GEMINI_KEY"]
[secrets.azure-key]
env = ["TEST_AZURE_KEY"]
[secrets.unset-key]
env = ["TEST_SURELY_UNSET_PROVIDER_KEY"]
{head}

[llm]
{llm}

[[listeners]]
name = "web"
listen = "0.0.0.0:80"

[[listeners.plugins]]
type = "origin_verify"
accept = ["header"]
secret = "origin-verify"
{plugins}

[[listeners.routes]]
prefix = "/v1/"
models = true
"#
    )
}

/// Native pass-through routes, for a model table that has these providers.
const NATIVE_ROUTES: &str = r#"
[[listeners.routes]]
prefix = "/anthropic/"
provider = "anthropic"

[[listeners.routes]]
prefix = "/gemini/"
provider = "gemini"
"#;

async fn post(rampart: &Rampart, path: &str, headers: &[(&str, &str)], body: &str) -> RawResponse {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    send_raw(rampart.addr("web"), EXTERNAL_PEER, raw.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A model table with one OpenAI-kind provider at `addr` (key `key`) serving `models`.
fn one_provider(addr: std::net::SocketAddr, key: &str, models: &str) -> String {
    format!(
        "[providers.openai]\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\nkey = \"{key}\"\n\n[[models]]\nname = \"{models}\"\ntargets = [{{ provider = \"openai\" }}]\n"
    )
}

/// rampart on `gateway_toml` and the model table `models`, with the test's provider keys.
async fn start(gateway_toml: &str, models: &str) -> Rampart {
    Rampart::start_full(
        &[("gateway.toml", gateway_toml), ("models.toml", models)],
        &["web"],
        KEYS,
        &[],
    )
    .await
}

/// A chat completion for `model`, with no header beyond the origin secret.
async fn complete(rampart: &Rampart, model: &str, stream: bool) -> RawResponse {
    post(rampart, "/v1/chat/completions", &[], &chat(model, stream)).await
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "Say hello to the gateway."}]})
    .to_string()
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn text(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Every provider kind gets its own path and key header; the client's credentials and
/// rampart's own headers never reach a provider; Azure is reached over verified TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_gets_its_path_and_its_key_and_nothing_of_the_clients() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = test_ca(dir.path());
    let azure = FakeProvider::start_tls(&cert, &key).await;
    let f = fake.addr;
    let tls_port = azure.addr.port();
    let models = format!(
        r#"
[providers.openai]
kind = "openai"
base_url = "http://{f}/openai/v1"
key = "openai-key"

[providers.anthropic]
kind = "anthropic"
base_url = "http://{f}/anthropic/v1/"
native_url = "http://{f}/anthropic-native"
key = "anthropic-key"

[providers.gemini]
kind = "gemini"
base_url = "http://{f}/v1beta/openai"
native_url = "http://{f}/gemini-native"
key = "gemini-key"

[providers.azure]
kind = "azure"
base_url = "https://localhost:{tls_port}"
key = "azure-key"
api_version = "2024-10-21"

# The same server under a name its certificate does not carry.
[providers.azure-by-ip]
kind = "azure"
base_url = "https://127.0.0.1:{tls_port}"
key = "azure-key"
api_version = "2024-10-21"

[providers.keyless]
kind = "openai"
base_url = "http://{f}/keyless/v1"
key = "unset-key"

[[models]]
name = "gpt-4o"
aliases = ["default"]
targets = [{{ provider = "openai" }}]

[[models]]
name = "fast"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[[models]]
name = "claude-*"
targets = [{{ provider = "anthropic" }}]

[[models]]
name = "gemini-*"
targets = [{{ provider = "gemini" }}]

[[models]]
name = "house-gpt"
targets = [{{ provider = "azure", deployment = "gpt4o-prod" }}]

[[models]]
name = "house-gpt-by-ip"
targets = [{{ provider = "azure-by-ip", deployment = "gpt4o-prod" }}]

[[models]]
name = "orphan"
targets = [{{ provider = "keyless" }}]
"#
    );
    let llm = format!("ca_file = \"{}\"", ca.display());
    let rampart = start(&gateway("", &llm, NATIVE_ROUTES), &models).await;
    let client_creds = [
        ("Authorization", "Bearer client-token-for-rampart"),
        ("X-Api-Key", "client-key"),
        ("X-Rampart-Team", "spoofed"),
        ("Cookie", "session=abc"),
        ("OpenAI-Organization", "org-test"),
    ];

    // OpenAI, not streamed: the answer and its usage come back as the provider sent them.
    let r = post(
        &rampart,
        "/v1/chat/completions",
        &client_creds,
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["usage"]["completion_tokens"], 15);
    let seen = fake.requests();
    let last = seen.last().expect("the provider was called");
    assert_eq!(last.uri, "/openai/v1/chat/completions");
    assert_eq!(
        last.header("authorization"),
        Some("Bearer sk-test-openai-0001")
    );
    for gone in [
        "x-api-key",
        "x-rampart-team",
        "cookie",
        "x-origin-verify",
        "x-forwarded-for",
    ] {
        assert_eq!(last.header(gone), None, "{gone} reached the provider");
    }
    assert_eq!(last.header("openai-organization"), Some("org-test"));
    assert_eq!(body_json(last)["model"], "gpt-4o");

    // An alias, a renamed target, embeddings.
    let r = complete(&rampart, "fast", false).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        body_json(fake.requests().last().expect("call"))["model"],
        "gpt-4o-mini"
    );
    let r = post(
        &rampart,
        "/v1/embeddings",
        &[],
        r#"{"model":"default","input":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        fake.requests().last().expect("call").uri,
        "/openai/v1/embeddings"
    );

    // Anthropic's OpenAI-compatible endpoint, streamed: chunks pass, usage is asked for.
    let r = post(
        &rampart,
        "/v1/chat/completions",
        &client_creds,
        &chat("claude-sonnet-4-5", true),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let sse = text(&r);
    assert_eq!(sse.matches("\"content\"").count(), 3, "{sse}");
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    let last = fake.requests().last().cloned().expect("call");
    assert_eq!(last.uri, "/anthropic/v1/chat/completions");
    assert_eq!(
        last.header("authorization"),
        Some("Bearer sk-ant-test-0002")
    );
    assert_eq!(body_json(&last)["stream_options"]["include_usage"], true);

    // Gemini's OpenAI compatibility.
    let r = complete(&rampart, "gemini-2.5-flash", false).await;
    assert_eq!(r.status, 200);
    let last = fake.requests().last().cloned().expect("call");
    assert_eq!(last.uri, "/v1beta/openai/chat/completions");
    assert_eq!(last.header("authorization"), Some("Bearer AIza-test-0003"));

    // Azure: deployment path, api-version, `api-key`, over TLS verified against ca_file.
    let r = post(
        &rampart,
        "/v1/chat/completions",
        &client_creds,
        &chat("house-gpt", false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let last = azure.requests().last().cloned().expect("azure was called");
    assert_eq!(
        last.uri,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(last.header("api-key"), Some("azure-test-0004"));
    assert_eq!(last.header("authorization"), None);
    assert_eq!(
        last.header("host"),
        Some(format!("localhost:{tls_port}").as_str())
    );
    // The certificate names localhost, not 127.0.0.1: the call is refused, nothing is sent.
    let before = azure.requests().len();
    let r = complete(&rampart, "house-gpt-by-ip", false).await;
    assert_eq!(r.status, 502, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(azure.requests().len(), before);

    // Native pass-through: the provider's own key header; the client's key never travels.
    let r = post(
        &rampart,
        "/anthropic/v1/messages",
        &[("x-api-key", "client-key"), ("anthropic-version", "2023-06-01")],
        r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let last = fake.requests().last().cloned().expect("call");
    assert_eq!(last.uri, "/anthropic-native/v1/messages");
    assert_eq!(last.header("x-api-key"), Some("sk-ant-test-0002"));
    assert_eq!(last.header("anthropic-version"), Some("2023-06-01"));
    let r = post(
        &rampart,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=client-key&alt=json",
        &[],
        r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let last = fake.requests().last().cloned().expect("call");
    assert_eq!(
        last.uri,
        "/gemini-native/v1beta/models/gemini-2.5-flash:generateContent?alt=json"
    );
    assert_eq!(last.header("x-goog-api-key"), Some("AIza-test-0003"));

    // What rampart answers itself, in OpenAI's error shape, without calling anyone.
    let calls = fake.requests().len();
    let r = complete(&rampart, "llama-3-70b", false).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("llama-3-70b"));
    let r = post(&rampart, "/v1/chat/completions", &[], r#"{"messages":[]}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (400, json!("invalid_request_error"))
    );
    let r = post(&rampart, "/v1/chat/completions", &[], "not json").await;
    assert_eq!(r.status, 400);
    let r = complete(&rampart, "orphan", false).await;
    assert_eq!(r.status, 503, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "provider_key_missing");
    assert!(
        text(&r).contains("keyless"),
        "names the provider: {}",
        text(&r)
    );
    assert_eq!(
        fake.requests().len(),
        calls,
        "none of these reached a provider"
    );

    // The model list: every exact name and alias.
    let r = request(
        rampart.addr("web"),
        EXTERNAL_PEER,
        "GET",
        "/v1/models",
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for id in ["gpt-4o", "default", "fast", "house-gpt", "orphan"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    // The chain still runs first: without the origin secret nothing is routed.
    let r = request(rampart.addr("web"), EXTERNAL_PEER, "GET", "/v1/models", &[]).await;
    assert_eq!(r.status, 403);

    let m = rampart.metrics().await;
    let sample = |s: &str| metric_value(&m, s).unwrap_or(0.0);
    assert_eq!(
        sample(
            r#"rampart_llm_tokens_total{kind="prompt",model="gpt-4o",provider="openai",team="none"}"#
        ),
        20.0,
        "chat + embeddings"
    );
    assert_eq!(
        sample(
            r#"rampart_llm_tokens_total{kind="completion",model="claude-*",provider="anthropic",team="none"}"#
        ),
        15.0
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="azure-by-ip",result="tls"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="keyless",result="key_missing"}"#),
        1.0
    );
    assert!(m.contains(
        "rampart_llm_time_to_first_token_seconds_bucket{model=\"claude-*\",provider=\"anthropic\""
    ));
    let log = rampart.stdout_text();
    assert!(log.contains("\"prompt_tokens\":10"), "{log}");
}

/// The official `openai` client gets through rampart what it gets from llmock directly,
/// streamed and not; the first streamed chunk arrives through rampart about as fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_llmocks_answers_and_its_first_chunk_without_delay() {
    let llmock = Llmock::start_with(&["--stream-chunk-delay-ms", "10"]).await;
    let models = format!(
        r#"
[providers.openai]
kind = "openai"
base_url = "http://{}/v1"
key = "openai-key"

[[models]]
name = "gpt-*"
targets = [{{ provider = "openai" }}]
"#,
        llmock.addr
    );
    let rampart = start(&gateway("", "", ""), &models).await;
    let via = format!("http://{}/v1", rampart.addr("web"));
    let direct = format!("http://{}/v1", llmock.addr);
    for stream in [false, true] {
        let through = openai_client(&via, "sk-client-key", ORIGIN_SECRET, stream);
        assert_eq!(through["ok"], true, "{through}");
        let reference = openai_client(&direct, "sk-anything", ORIGIN_SECRET, stream);
        assert_eq!(through["content"], reference["content"], "stream: {stream}");
        assert!(!through["content"].as_str().unwrap_or("").is_empty());
    }
    let m = rampart.metrics().await;
    let prompt = metric_value(
        &m,
        r#"rampart_llm_tokens_total{kind="prompt",model="gpt-*",provider="openai",team="none"}"#,
    );
    assert!(
        prompt.unwrap_or(0.0) > 0.0,
        "usage of the streamed answer was read: {m}"
    );

    // Time to first chunk, alternating direct and through rampart, same client and prompt.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/first_chunk.py");
    let out = std::process::Command::new(venv_bin("python"))
        .args([script, &direct, &via, ORIGIN_SECRET, "40"])
        .output()
        .expect("run first_chunk.py");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|_| panic!("{line} {}", String::from_utf8_lossy(&out.stderr)));
    let (direct_ms, via_ms) = (
        v["direct_p50_ms"].as_f64().unwrap_or(f64::MAX),
        v["via_p50_ms"].as_f64().unwrap_or(f64::MAX),
    );
    println!("first streamed chunk, p50 of 40 each: direct {direct_ms:.2} ms, through rampart {via_ms:.2} ms, added {:.2} ms; {v}", via_ms - direct_ms);
    // llmock paces its chunks (10 ms apart here): a proxy that held the stream back would
    // add the whole answer's time, far above this bound.
    assert!(via_ms - direct_ms < 15.0, "{v}");
}

/// Connect errors, 5xx and a stream that breaks before its first byte move on to the next
/// target; repeated failures rest a target; a 429's Retry-After rests it at once and is
/// passed to the client when no target is left; a stream that breaks later is cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_move_to_the_next_target_and_rest_the_failing_one() {
    let llmock = Llmock::start().await;
    let l = llmock.addr;
    let dead = free_port();
    let models = format!(
        r#"
[providers.first]
kind = "openai"
base_url = "http://{l}/v1"
key = "openai-key"

[providers.second]
kind = "anthropic"
base_url = "http://{l}/v1"
key = "anthropic-key"

[providers.only]
kind = "gemini"
base_url = "http://{l}/v1"
key = "gemini-key"

[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
key = "openai-key"

[[models]]
name = "gpt-4o"
targets = [{{ provider = "first", model = "primary" }}, {{ provider = "second", model = "secondary" }}]

[[models]]
name = "solo"
targets = [{{ provider = "only", model = "solo-up" }}]

[[models]]
name = "gone"
targets = [{{ provider = "dead" }}, {{ provider = "second", model = "secondary" }}]

[providers.staller]
kind = "openai"
base_url = "http://{l}/v1"
key = "openai-key"

[[models]]
name = "stally"
targets = [{{ provider = "staller", model = "stall-up" }}, {{ provider = "second", model = "secondary" }}]
"#
    );
    let llm = "cooldown_after_failures = 2\ncooldown_seconds = 60\nidle_timeout_ms = 1000";
    let rampart = start(&gateway("", llm, ""), &models).await;
    let scenario = |behaviors: Value| async move {
        let body = json!({ "behaviors": behaviors }).to_string();
        let raw = format!(
            "POST /_llmock/scenario HTTP/1.1\r\nHost: l\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = send_raw(l, "127.0.0.1", raw.as_bytes())
            .await
            .expect("scenario");
        assert_eq!(r.status, 201, "{}", text(&r));
    };
    let served = |model: &'static str| async move {
        let raw = "GET /_llmock/requests HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n";
        let r = send_raw(l, "127.0.0.1", raw.as_bytes())
            .await
            .expect("journal");
        r.json()["requests"]
            .as_array()
            .map(|a| a.iter().filter(|q| q["model"] == model).count())
            .unwrap_or(0)
    };

    // The primary target answers 500 twice (no Retry-After): both requests still get 200, from the secondary.
    scenario(json!([{"type": "fail", "status": 500, "times": 2, "match": {"model": "primary"}}]))
        .await;
    for _ in 0..2 {
        let r = complete(&rampart, "gpt-4o", false).await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    // Now it rests: the next request goes straight to the secondary.
    let r = complete(&rampart, "gpt-4o", false).await;
    assert_eq!(r.status, 200);
    let journal = send_raw(
        l,
        "127.0.0.1",
        b"GET /_llmock/requests HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
    )
    .await
    .map(|r| text(&r))
    .unwrap_or_default();
    assert_eq!(
        served("primary").await,
        2,
        "the resting target was not called: {journal}"
    );
    assert_eq!(served("secondary").await, 3);

    // A connect error moves on too.
    let r = complete(&rampart, "gone", true).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("[DONE]"));

    // A 429 with Retry-After, and no other target: the client gets it, Retry-After included.
    scenario(json!([{"type": "fail", "status": 429, "retry_after": 7, "times": 1, "match": {"model": "solo-up"}}])).await;
    let r = complete(&rampart, "solo", false).await;
    assert_eq!(r.status, 429, "{}", text(&r));
    assert_eq!(r.header("retry-after"), Some("7"));

    // A stream that breaks before its first chunk is retried elsewhere, unseen by the client:
    // the primary is resting, so the secondary comes first and the primary (its rest
    // notwithstanding) is the last resort.
    scenario(json!([{"type": "stream_fault", "kind": "disconnect", "after_chunks": 0, "match": {"model": "secondary"}}])).await;
    let r = complete(&rampart, "gpt-4o", true).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).contains("[DONE]"), "a whole stream: {}", text(&r));

    // One that breaks after two chunks reached the client cannot be retried: it is cut short.
    scenario(json!([{"type": "stream_fault", "kind": "disconnect", "after_chunks": 2, "match": {"model": "solo-up"}}])).await;
    let r = complete(&rampart, "solo", true).await;
    assert_eq!(r.status, 200);
    assert!(!text(&r).contains("[DONE]"), "{}", text(&r));

    // A stream that stalls longer than idle_timeout_ms before its first chunk moves on; one
    // that stalls after chunks reached the client is cut.
    let stall = |model: &str, after: u32| json!([{"type": "stream_fault", "kind": "stall", "after_chunks": after, "stall_seconds": 4, "match": {"model": model}}]);
    scenario(stall("stall-up", 0)).await;
    let r = complete(&rampart, "stally", true).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("[DONE]"), "{}", text(&r));
    scenario(stall("stall-up", 2)).await;
    let started = Instant::now();
    let r = complete(&rampart, "stally", true).await;
    assert!(!text(&r).contains("[DONE]"), "{}", text(&r));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after the idle timeout, not the stall"
    );

    let m = rampart.metrics().await;
    let sample = |s: &str| metric_value(&m, s).unwrap_or(0.0);
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="staller",result="timeout"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="staller",result="stream_broken"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="first",result="server_error"}"#),
        2.0,
        "{m}"
    );
    assert_eq!(
        sample(r#"rampart_llm_cooldowns_total{provider="first"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="dead",result="connect"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="only",result="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"rampart_llm_cooldowns_total{provider="only"}"#),
        1.0,
        "Retry-After rests at once"
    );
    assert_eq!(
        sample(r#"rampart_llm_attempts_total{provider="only",result="stream_broken"}"#),
        1.0
    );
    assert!(
        sample(r#"rampart_llm_attempts_total{provider="second",result="upstream"}"#)
            + sample(r#"rampart_llm_attempts_total{provider="second",result="connect"}"#)
            >= 1.0,
        "{m}"
    );
    assert!(sample(r#"rampart_llm_attempts_total{provider="second",result="ok"}"#) >= 4.0);
}

/// A client that goes away mid-stream ends the provider's request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_ends_the_providers_stream() {
    let fake = FakeProvider::start().await;
    let models = one_provider(fake.addr, "openai-key", "*");
    let rampart = start(&gateway("", "", ""), &models).await;
    let body = chat("endless", true);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(rampart.addr("web"))
        .await
        .expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(4).filter(|w| w == b"tick").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("ticks arrive")
            .expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let hung_up = Instant::now();
    drop(stream);
    let ended = eventually(Duration::from_secs(5), || async {
        !fake.hang_ups().is_empty()
    })
    .await;
    assert!(ended, "the provider kept streaming to nobody");
    let after = fake.hang_ups()[0].saturating_duration_since(hung_up);
    println!(
        "provider saw the hang-up {} ms after the client",
        after.as_millis()
    );
    assert!(after < Duration::from_secs(2), "{after:?}");
    // And rampart carries on.
    let r = complete(&rampart, "gpt-4o", false).await;
    assert_eq!(r.status, 200);
    // The hang-up is the client's: no upstream error is counted or logged for it.
    let m = rampart.metrics().await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("rampart_upstream_errors_total{") && !l.ends_with(" 0")),
        "a client hanging up counted as an upstream error: {m}"
    );
    let logged = eventually(Duration::from_secs(2), || async {
        rampart.stdout_text().lines().any(|l| {
            l.contains("\"path\":\"/v1/chat/completions\"") && l.contains("\"status\":200")
        })
    })
    .await;
    assert!(logged, "{}", rampart.stdout_text());
    assert!(
        !rampart
            .stdout_text()
            .contains("\"upstream_error\":\"internal\""),
        "{}",
        rampart.stdout_text()
    );
    // The listing shows the globs too, marked as patterns; an unknown model's error points
    // at this route's own listing.
    let list = post(&rampart, "/v1/models", &[], "").await;
    let data = list.json()["data"].clone();
    assert!(
        data.as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "*" && m["pattern"] == true)),
        "{data}"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Token budgets per team: checked before the call, charged from the answer's usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_token_budget_is_charged_from_usage_and_refuses_once_spent() {
    const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Tokens";
    let issuer = TestIssuer::new(ISS, "tok");
    let jwks = JwksServer::start(&issuer.jwks()).await;
    let fake = FakeProvider::start().await;
    let models = one_provider(fake.addr, "openai-key", "gpt-*");
    let plugins = format!(
        "\n[[listeners.plugins]]\ntype = \"jwt\"\nclients = \"clients.toml\"\nissuers = [{{ issuer = \"{ISS}\", jwks_url = \"{}\" }}]\n",
        jwks.url()
    );
    let clients = "[clients.a1]\nteam = \"alpha\"\n[clients.a2]\nteam = \"alpha\"\n[clients.b1]\nteam = \"beta\"\n";
    // Each answer of the fake provider is 25 tokens: 60 allows three answers.
    let llm = r#"token_limits = [{ name = "TeamTokens", key = "team", tokens = 60, window_seconds = 60 }]"#;
    let rampart = Rampart::start_full(
        &[
            ("gateway.toml", &gateway("", llm, &plugins)),
            ("models.toml", &models),
            ("clients.toml", clients),
        ],
        &["web"],
        KEYS,
        &[],
    )
    .await;
    let token = |client: &str| {
        format!(
            "Bearer {}",
            issuer.sign(
                "RS256",
                &issuer.access_claims(client, "https://gateway.internal/invoke", now())
            )
        )
    };
    let (a1, a2, b1) = (token("a1"), token("a2"), token("b1"));
    let mut statuses = Vec::new();
    for who in [&a1, &a2, &a1, &a1, &a2, &b1] {
        let r = post(
            &rampart,
            "/v1/chat/completions",
            &[("Authorization", who)],
            &chat("gpt-4o", false),
        )
        .await;
        if r.status == 429 {
            assert_eq!(
                r.json()["error"]["code"],
                "rate_limit_exceeded",
                "{}",
                text(&r)
            );
            let wait: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!((1..=65).contains(&wait), "retry-after {wait}");
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 200],
        "alpha spent 75 of 60 after three answers; beta counts apart"
    );
    assert_eq!(
        fake.requests().len(),
        4,
        "refused requests never reached the provider"
    );
    let m = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"rampart_llm_tokens_total{kind="prompt",model="gpt-*",provider="openai",team="alpha"}"#
        ),
        Some(30.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"rampart_llm_tokens_total{kind="completion",model="gpt-*",provider="openai",team="beta"}"#
        ),
        Some(15.0)
    );
    assert!(rampart.stdout_text().contains("token_limit.TeamTokens"));
}

/// What one streamed answer delivered: its `tok ` chunks, whether it ended with the
/// budget's error event, and whether its framing was whole.
struct Delivered {
    status: u16,
    tokens: u64,
    cut: bool,
}

fn delivered(r: &RawResponse) -> Delivered {
    let body = text(r);
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    let tokens = events.iter().filter(|e| e.contains("\"tok \"")).count() as u64;
    let cut = events
        .last()
        .is_some_and(|e| e.contains("rate_limit_exceeded") && e.contains("TeamTokens"));
    Delivered {
        status: r.status,
        tokens,
        cut,
    }
}

/// Three instances, one Redis: a team's token budget is spent once across them, charged as
/// the streams run, and the stream that crosses it ends at an event boundary with an error
/// event the official `openai` client raises; a provider one instance rests, all rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_spend_one_token_budget_and_rest_a_failing_provider_together() {
    const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Cluster";
    const BUDGET: u64 = 1000;
    // Each answer: 10 prompt + 100 completion tokens, a chunk every 3 ms.
    const ANSWER: u64 = 110;
    let redis = RedisServer::start(free_port()).await;
    let issuer = TestIssuer::new(ISS, "cl");
    let jwks = JwksServer::start(&issuer.jwks()).await;
    let fake = FakeProvider::start().await;
    let dead = free_port();
    let models = format!(
        r#"
[providers.openai]
kind = "openai"
base_url = "http://{}/v1"
key = "openai-key"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
key = "openai-key"

[[models]]
name = "count-*"
targets = [{{ provider = "openai" }}]

[[models]]
name = "gpt-4o"
targets = [{{ provider = "down" }}, {{ provider = "openai" }}]
"#,
        fake.addr
    );
    let plugins = format!(
        "\n[[listeners.plugins]]\ntype = \"jwt\"\nclients = \"clients.toml\"\nissuers = [{{ issuer = \"{ISS}\", jwks_url = \"{}\" }}]\n",
        jwks.url()
    );
    let clients = "[clients.a1]\nteam = \"alpha\"\n[clients.a2]\nteam = \"alpha\"\n[clients.b1]\nteam = \"beta\"\n[clients.ops]\nteam = \"ops\"\n";
    let head = format!(
        "[rate_limit_store]\nredis = \"redis://127.0.0.1:{}\"\ntimeout_ms = 200\nretry_ms = 500",
        redis.port
    );
    let llm = format!(
        "cooldown_after_failures = 1\ncooldown_seconds = 60\ntoken_limits = [{{ name = \"TeamTokens\", key = \"team\", tokens = {BUDGET}, window_seconds = 300 }}]"
    );
    let gateway_toml = gateway(&head, &llm, &plugins);
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            Rampart::start_full(
                &[
                    ("gateway.toml", &gateway_toml),
                    ("models.toml", &models),
                    ("clients.toml", clients),
                ],
                &["web"],
                KEYS,
                &[],
            )
            .await,
        );
    }
    let token = |client: &str| {
        format!(
            "Bearer {}",
            issuer.sign(
                "RS256",
                &issuer.access_claims(client, "https://gateway.internal/invoke", now())
            )
        )
    };
    // An uncounted call (listing the models) uses the store once it is connected.
    let ops = token("ops");
    for instance in &instances {
        let connected = eventually(Duration::from_secs(10), || async {
            post(instance, "/v1/models", &[("Authorization", &ops)], "").await;
            metric_value(&instance.metrics().await, "rampart_rate_limit_store_up") == Some(1.0)
        })
        .await;
        assert!(connected, "an instance never reached Redis");
    }

    // Team alpha streams through all three at once, a stream per instance, until refused.
    let stream_until_refused = |i: usize| {
        let who = token(if i.is_multiple_of(2) { "a1" } else { "a2" });
        let instance = &instances[i];
        async move {
            let mut got = Vec::new();
            for _ in 0..40 {
                let r = post(
                    instance,
                    "/v1/chat/completions",
                    &[("Authorization", &who)],
                    &chat("count-100", true),
                )
                .await;
                let d = delivered(&r);
                let refused = d.status == 429;
                got.push(d);
                if refused {
                    break;
                }
            }
            got
        }
    };
    let (one, two, three) = tokio::join!(
        stream_until_refused(0),
        stream_until_refused(1),
        stream_until_refused(2)
    );
    let all: Vec<Delivered> = one.into_iter().chain(two).chain(three).collect();
    let answered: Vec<&Delivered> = all.iter().filter(|d| d.status == 200).collect();
    let refused = all.iter().filter(|d| d.status == 429).count();
    let cut = answered.iter().filter(|d| d.cut).count();
    // Every answered stream was charged its 10 prompt tokens and the chunks it delivered.
    let spent: u64 = answered.iter().map(|d| 10 + d.tokens).sum();
    eprintln!(
        "budget {BUDGET}: {} streams answered ({cut} cut), {refused} refused, {spent} tokens delivered",
        answered.len()
    );
    assert_eq!(refused, 3, "each instance ends refused: {}", all.len());
    let reached = fake
        .requests()
        .iter()
        .filter(|r| body_json(r)["model"] == "count-100")
        .count();
    assert_eq!(
        reached,
        answered.len(),
        "refused calls never reached the provider"
    );
    assert!(cut >= 1, "the streams that crossed the budget were cut");
    assert!(
        spent <= BUDGET + ANSWER,
        "{spent} tokens delivered across three instances: more than one stream past {BUDGET}"
    );
    assert!(
        spent >= BUDGET - ANSWER,
        "{spent}: refused before the budget was spent"
    );
    for d in &answered {
        assert!(d.tokens <= 100);
        if !d.cut {
            assert_eq!(d.tokens, 100, "an uncut stream is whole");
        }
    }
    let keys = redis
        .cli(&["--scan", "--pattern", "rampart:tokens:TeamTokens:*"])
        .unwrap_or_default();
    assert_eq!(
        keys.lines().count(),
        1,
        "one shared key for team alpha: {keys}"
    );
    let cuts: f64 = {
        let mut n = 0.0;
        for instance in &instances {
            n += metric_value(
                &instance.metrics().await,
                r#"rampart_llm_budget_cuts_total{limit="TeamTokens"}"#,
            )
            .unwrap_or(0.0);
        }
        n
    };
    assert_eq!(cuts as usize, cut, "each cut is counted");

    // Team beta, through the official client: the answer it cannot afford is cut, and the
    // client raises the budget's error after what it received.
    let base = format!("http://{}/v1", instances[1].addr("web"));
    let bearer = token("b1");
    let jwt = bearer.trim_start_matches("Bearer ");
    let out = openai_client_for("count-2000", &base, jwt, ORIGIN_SECRET, true);
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"], "APIError", "{out}");
    let message = out["message"].as_str().unwrap_or("");
    assert!(
        message.contains("Token budget TeamTokens is spent"),
        "{out}"
    );
    let received = out["content"]
        .as_str()
        .unwrap_or("")
        .matches("tok ")
        .count() as u64;
    assert!(
        (BUDGET - ANSWER..=BUDGET + 64).contains(&received),
        "{received} of 2000 tokens before the cut, budget {BUDGET}"
    );

    // The provider `down` fails once on the first instance and rests there; the others take
    // its rest from Redis (read at most once a second) and never try it.
    let attempts = |m: &str, provider: &str, result: &str| {
        metric_value(
            m,
            &format!(r#"rampart_llm_attempts_total{{provider="{provider}",result="{result}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let ask = chat("gpt-4o", false);
    let auth = [("Authorization", ops.as_str())];
    let r = post(&instances[0], "/v1/chat/completions", &auth, &ask).await;
    assert_eq!(r.status, 200, "the next target answered: {}", text(&r));
    let first = instances[0].metrics().await;
    assert_eq!(attempts(&first, "down", "connect"), 1.0);
    let ttl = redis
        .cli(&["PTTL", "rampart:cooldown:down/gpt-4o"])
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(-1);
    assert!(
        (50_000..=60_000).contains(&ttl),
        "the rest is published: PTTL {ttl}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for instance in &instances[1..] {
        let r = post(instance, "/v1/chat/completions", &auth, &ask).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        let m = instance.metrics().await;
        assert_eq!(attempts(&m, "down", "connect"), 0.0, "the rest was shared");
    }
}

/// Bedrock as a provider kind: the official `openai` client's requests are translated to
/// Converse and signed with credentials from the AWS SDK's chain (here the ECS container
/// endpoint, as an ECS task gets them, fetched again as they near expiry); the fake checks
/// every signature with botocore. Whole and streamed answers come back in OpenAI's shape, a
/// throttled call in OpenAI's error shape, and a native route passes Bedrock's API through,
/// signed. Without credentials nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_targets_are_signed_translated_and_streamed() {
    const MODEL_ID: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
    let fake = BedrockFake::start("us-east-1").await;
    let models = format!(
        r#"
[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "http://{}"

[[models]]
name = "claude-sonnet"
targets = [{{ provider = "bedrock", model = "{MODEL_ID}" }}]

[[models]]
name = "claude-busy"
targets = [{{ provider = "bedrock", model = "anthropic.throttle-v1:0" }}]
"#,
        fake.addr
    );
    let routes = "\n[[listeners.routes]]\nprefix = \"/bedrock/\"\nprovider = \"bedrock\"\n";
    let gateway_toml = gateway("", "", "") + routes;
    let creds_uri = format!("http://{}/creds", fake.addr);
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds_uri.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let rampart = Rampart::start_full(
        &[("gateway.toml", &gateway_toml), ("models.toml", &models)],
        &["web"],
        &env,
        &[],
    )
    .await;
    let base = format!("http://{}/v1", rampart.addr("web"));

    let whole = openai_client_for("claude-sonnet", &base, "sk-client", ORIGIN_SECRET, false);
    assert_eq!(whole["ok"], true, "{whole}");
    assert_eq!(whole["content"], format!("Hello from {MODEL_ID}"));
    let streamed = openai_client_for("claude-sonnet", &base, "sk-client", ORIGIN_SECRET, true);
    assert_eq!(streamed["ok"], true, "{streamed}");
    assert_eq!(streamed["content"], format!("Hello from {MODEL_ID}"));

    let journal = fake.journal().await;
    assert_eq!(journal.len(), 2, "{journal:?}");
    for (entry, action) in journal.iter().zip(["converse", "converse-stream"]) {
        assert_eq!(
            entry["refused"],
            Value::Null,
            "the signature holds: {entry}"
        );
        assert_eq!(
            entry["path"],
            format!("/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/{action}")
        );
        assert_eq!(
            entry["body"]["messages"],
            json!([{ "role": "user", "content": [{ "text": "Say hello to the gateway." }] }])
        );
        assert!(
            entry["body"].get("model").is_none(),
            "a Converse body: {entry}"
        );
        let headers = entry["headers"].to_string();
        for leaked in ["sk-client", ORIGIN_SECRET, "x-origin-verify"] {
            assert!(
                !headers.contains(leaked),
                "{leaked} reached Bedrock: {headers}"
            );
        }
    }
    let m = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"rampart_llm_tokens_total{kind="prompt",model="claude-sonnet",provider="bedrock",team="none"}"#
        ),
        Some(18.0),
        "usage read from both translated answers"
    );

    // Throttled: 429 in OpenAI's error shape, Retry-After-less as Bedrock sends it.
    let busy = complete(&rampart, "claude-busy", false).await;
    assert_eq!(busy.status, 429, "{}", text(&busy));
    assert_eq!(busy.json()["error"]["code"], "ThrottlingException");
    assert_eq!(busy.json()["error"]["type"], "rate_limit_error");

    // Unsupported content is refused before anything is sent.
    let with_tools = json!({"model": "claude-sonnet", "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let refused = post(&rampart, "/v1/chat/completions", &[], &with_tools).await;
    assert_eq!(refused.status, 400, "{}", text(&refused));
    assert_eq!(refused.json()["error"]["code"], "unsupported_for_bedrock");

    // The native route: Bedrock's own API, signed on the way.
    let converse =
        json!({"messages": [{"role": "user", "content": [{"text": "native"}]}]}).to_string();
    let native = post(
        &rampart,
        &format!("/bedrock/model/{MODEL_ID}/converse"),
        &[],
        &converse,
    )
    .await;
    assert_eq!(native.status, 200, "{}", text(&native));
    assert_eq!(
        native.json()["output"]["message"]["content"][0]["text"],
        format!("Hello from {MODEL_ID}")
    );

    // Credentials valid for 301 s are fetched again once within five minutes of expiring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = complete(&rampart, "claude-sonnet", false).await;
    assert_eq!(again.status, 200, "{}", text(&again));
    let journal = fake.journal().await;
    let keys: Vec<&str> = journal
        .iter()
        .filter_map(|e| e["access_key"].as_str())
        .collect();
    assert!(
        journal.iter().all(|e| e["refused"].is_null()),
        "{journal:?}"
    );
    assert_ne!(
        keys.first(),
        keys.last(),
        "the credentials were refreshed: {keys:?}"
    );

    // The fake refuses what is not signed right: a signed request replayed with another body.
    let last = journal.last().cloned().unwrap_or_default();
    let h = |name: &str| last["headers"][name].as_str().unwrap_or("").to_string();
    let tampered = r#"{"messages":[{"role":"user","content":[{"text":"tampered"}]}]}"#;
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Amz-Date: {}\r\n\
         X-Amz-Security-Token: {}\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{tampered}",
        last["path"].as_str().unwrap_or("/"),
        h("host"),
        h("x-amz-date"),
        h("x-amz-security-token"),
        h("authorization"),
        tampered.len()
    );
    let replay = send_raw(fake.addr, "127.0.0.1", raw.as_bytes())
        .await
        .expect("replay");
    assert_eq!(replay.status, 403, "{}", text(&replay));
    assert!(text(&replay).contains("signature mismatch"));

    // No credentials anywhere in the chain: 503, and Bedrock hears nothing.
    let before = fake.journal().await.len();
    let unsigned = Rampart::start_full(
        &[("gateway.toml", &gateway_toml), ("models.toml", &models)],
        &["web"],
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ],
        &[],
    )
    .await;
    let r = complete(&unsigned, "claude-sonnet", false).await;
    assert_eq!(r.status, 503, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "provider_credentials_missing");
    assert_eq!(
        fake.journal().await.len(),
        before,
        "nothing unsigned was sent"
    );
}

/// A broken model table names its file and line, and the rules in force keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_table_is_refused_and_the_old_one_keeps_serving() {
    let fake = FakeProvider::start().await;
    let good = one_provider(fake.addr, "openai-key", "gpt-4o");
    let rampart = start(&gateway("", "", ""), &good).await;
    let broken =
        format!("{good}\n[[models]]\nname = \"x\"\ntargets = [{{ provider = \"nope\" }}]\n");
    rampart.write_rule_file("models.toml", &broken);
    let r = rampart.admin_post("/reload").await;
    assert_ne!(r.status, 200);
    let said = text(&r) + &rampart.stderr_text();
    assert!(
        said.contains("models.toml:10") && said.contains("nope"),
        "{said}"
    );
    let r = complete(&rampart, "gpt-4o", false).await;
    assert_eq!(r.status, 200);
}

/// A provider key in Secrets Manager may start as the seed's `REPLACE_ME`: that provider's
/// requests get 503 until a value is set; then the current value is sent, and rotations follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_key_from_secrets_manager_is_picked_up_when_set_and_rotated() {
    let moto = Moto::start().await;
    let id = "ai-gateway/openai-api-key";
    moto.secrets(
        "CreateSecret",
        json!({ "Name": id, "SecretString": "REPLACE_ME" }),
    )
    .await;
    let fake = FakeProvider::start().await;
    let head = format!(
        "[secrets_manager]\nregion = \"{MOTO_REGION}\"\nendpoint_url = \"{}\"\nrefresh_seconds = 1\n\n[secrets.aws-openai-key]\naws = {{ secret_id = \"{id}\" }}\n",
        moto.url()
    );
    let models = one_provider(fake.addr, "aws-openai-key", "gpt-*");
    let rampart = Rampart::start_full(
        &[
            ("gateway.toml", &gateway(&head, "", "")),
            ("models.toml", &models),
        ],
        &["web"],
        &[KEYS, AWS_TEST_ENV].concat(),
        &[],
    )
    .await;
    let r = complete(&rampart, "gpt-4o", false).await;
    assert_eq!(r.status, 503, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "provider_key_missing");
    assert!(fake.requests().is_empty(), "nothing is sent without a key");

    let sent_key = || {
        fake.requests()
            .last()
            .and_then(|r| r.header("authorization").map(String::from))
    };
    for value in ["sk-from-secrets-manager-1", "sk-from-secrets-manager-2"] {
        moto.secrets(
            "PutSecretValue",
            json!({ "SecretId": id, "SecretString": value }),
        )
        .await;
        let expected = format!("Bearer {value}");
        let picked_up = eventually(Duration::from_secs(10), || async {
            let r = complete(&rampart, "gpt-4o", false).await;
            r.status == 200 && sent_key().as_deref() == Some(expected.as_str())
        })
        .await;
        assert!(
            picked_up,
            "{value} was not picked up; last sent {:?}",
            sent_key()
        );
    }
}
