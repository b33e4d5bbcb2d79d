//! Offline detection figures on the CRS regression corpus, straight through the WAF engine
//! (no proxy): `cargo run --release -p rampart-plugins --example corpus [-- --misses FAMILY]`.
//! The proxy-level figure comes from the integration test `waf_corpus`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rampart_plugins::path;
use rampart_plugins::plugins::owasp::Waf;
use rules_dir::{outside_request, RulesDir};

#[path = "../tests/support/rules_dir.rs"]
mod rules_dir;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let misses_for = args
        .iter()
        .position(|a| a == "--misses")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let explain = args
        .iter()
        .position(|a| a == "--explain")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wafs = RulesDir::shipped().wafs("paranoia = 1\nthreshold = 5");
    let corpus = root.join("../shared/waf-corpus/crs-dev.jsonl");
    let text =
        std::fs::read_to_string(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display()));

    let mut per_family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut allow = (0, 0);
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let expect_block = case["expect"] == "block";
        let selected =
            expect_block && case["rule_pl"] == 1 && case["blocks_alone_at_threshold5"] == true;
        if !selected && expect_block {
            continue;
        }
        let (blocked, why) = judge(&wafs, &case);
        if explain.as_deref() == case["id"].as_str() {
            println!("EXPLAIN {} blocked={blocked} matched=[{why}]", case["id"]);
        }
        let family = case["rule_family"].as_str().unwrap_or("?").to_string();
        if selected {
            let e = per_family.entry(family.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(blocked);
            if !blocked && misses_for.as_deref().is_some_and(|f| family.starts_with(f)) {
                println!("MISS {} {} {}", case["id"], case["method"], short(&case));
            }
        } else {
            allow.0 += 1;
            allow.1 += usize::from(blocked);
            if blocked && misses_for.as_deref() == Some("allow") {
                println!("BLOCKED-ALLOW {} {why} {}", case["id"], short(&case));
            }
        }
    }
    let (mut total, mut caught) = (0, 0);
    for (family, (n, c)) in &per_family {
        println!("{family}: {c}/{n} = {:.1}%", 100.0 * *c as f64 / *n as f64);
        total += n;
        caught += c;
    }
    println!(
        "overall: {caught}/{total} = {:.1}%",
        100.0 * caught as f64 / total as f64
    );
    println!("allow cases blocked: {}/{}", allow.1, allow.0);
}

/// The parts of a case that differ from an ordinary request.
fn short(case: &serde_json::Value) -> String {
    const USUAL: &[&str] = &[
        "host",
        "accept",
        "accept-encoding",
        "accept-language",
        "keep-alive",
        "proxy-connection",
        "connection",
        "content-type",
        "content-length",
    ];
    let mut s = case["uri"].as_str().unwrap_or("").to_string();
    if let Some(h) = case["headers"].as_object() {
        for (k, v) in h {
            let v = v.as_str().unwrap_or("");
            if !USUAL.contains(&k.to_ascii_lowercase().as_str()) && v != "OWASP CRS test agent" {
                s.push_str(&format!(" H[{k}]={v}"));
            }
        }
    }
    if let Some(b) = case["body"].as_str() {
        s.push_str(&format!(" B={b}"));
    }
    s.chars().take(220).collect()
}

/// Whether the request would be refused (by the WAF, or as malformed by the proxy).
fn judge(wafs: &[Waf], case: &serde_json::Value) -> (bool, String) {
    let uri = case["uri"].as_str().unwrap_or("/");
    let (raw_path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let Ok(normalised) = path::normalize(if raw_path.is_empty() { "/" } else { raw_path }) else {
        return (true, "path".into());
    };
    let Ok(method) = Method::from_bytes(case["method"].as_str().unwrap_or("GET").as_bytes()) else {
        return (true, "method".into());
    };
    let mut headers = HeaderMap::new();
    if let Some(h) = case["headers"].as_object() {
        for (k, v) in h {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v.as_str().unwrap_or("").as_bytes()),
            ) else {
                return (true, "header".into());
            };
            headers.append(name, value);
        }
    }
    headers.insert("host", HeaderValue::from_static("gateway.test"));
    // The CRS test runner completes headers the way a client would.
    if case["autocomplete_headers"] == true
        && !headers.contains_key("content-type")
        && (case["body"].is_string() || case["body_b64"].is_string())
    {
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    let body: Option<Vec<u8>> = match (&case["body"], &case["body_b64"]) {
        (serde_json::Value::String(s), _) => Some(s.as_bytes().to_vec()),
        (_, serde_json::Value::String(b)) => {
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        }
        _ => None,
    };
    let view = outside_request(
        "default",
        &method,
        &normalised,
        query,
        &headers,
        body.as_deref(),
    );
    let mut why = Vec::new();
    let mut blocked = false;
    for waf in wafs {
        let a = waf.assess(&view);
        why.extend(
            a.matches
                .iter()
                .map(|(m, _)| waf.rules().rules[m.rule].id.clone()),
        );
        blocked |= a.score >= 5;
    }
    (blocked, why.join(","))
}
