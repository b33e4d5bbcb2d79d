//! Conformance: the OWASP CRS regression corpus (`../shared/waf-corpus/crs-dev.jsonl`)
//! replayed through the running proxy. A case counts as blocked when the upstream never
//! received it. The bar (issue 3): at least 90% of the paranoia-level-1 attacks that block
//! alone at threshold 5, overall and in every rule family.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use rampart_integration::*;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/waf-corpus/crs-dev.jsonl"
);

/// The raw request a case describes, completed as the CRS test runner completes it, with
/// Host replaced (the corpus sends `localhost` everywhere) and the CDN's header added.
fn raw_request(case: &serde_json::Value) -> Vec<u8> {
    let method = case["method"].as_str().unwrap_or("GET");
    let uri = case["uri"].as_str().unwrap_or("/");
    let version = case["version"].as_str().unwrap_or("HTTP/1.1");
    let body: Option<Vec<u8>> = match (&case["body"], &case["body_b64"]) {
        (serde_json::Value::String(s), _) => Some(s.as_bytes().to_vec()),
        (_, serde_json::Value::String(b)) => {
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        }
        _ => None,
    };
    let mut head = if version.is_empty() {
        format!("{method} {uri}\r\n")
    } else {
        format!("{method} {uri} {version}\r\n")
    };
    let headers = case["headers"].as_object().cloned().unwrap_or_default();
    let has = |name: &str| headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    for (k, v) in &headers {
        let v = v.as_str().unwrap_or("");
        let v = if k.eq_ignore_ascii_case("host") && v == "localhost" {
            "gateway.test"
        } else {
            v
        };
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if case["autocomplete_headers"] == true {
        if let Some(b) = &body {
            if !has("content-type") && method != "GET" {
                head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            }
            if !has("content-length") && !has("transfer-encoding") {
                head.push_str(&format!("Content-Length: {}\r\n", b.len()));
            }
        }
        if !has("connection") {
            head.push_str("Connection: close\r\n");
        }
    }
    head.push_str(&format!("X-Origin-Verify: {ORIGIN_SECRET}\r\n\r\n"));
    let mut raw = head.into_bytes();
    if let Some(b) = body {
        raw.extend_from_slice(&b);
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crs_corpus_detection_is_at_least_90_percent_in_every_family() {
    if !Path::new(CORPUS).exists() {
        eprintln!("skipped: {CORPUS} is not here (the corpus lives beside the project, not in it)");
        return;
    }
    let text = std::fs::read_to_string(CORPUS).expect("read corpus");
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let web = rampart.addr("web");

    let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut allow = (0usize, 0usize);
    let mut missed = Vec::new();
    for line in text.lines() {
        let Ok(case) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let attack = case["expect"] == "block";
        let selected = attack && case["rule_pl"] == 1 && case["blocks_alone_at_threshold5"] == true;
        if attack && !selected {
            continue;
        }
        let before = up.total_requests();
        // The answer itself does not matter (some requests are not HTTP rampart will answer):
        // what matters is whether the upstream got the request.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            send_raw(web, EXTERNAL_PEER, &raw_request(&case)),
        )
        .await;
        let blocked = up.total_requests() == before;
        let family = case["rule_family"].as_str().unwrap_or("?").to_string();
        if selected {
            let e = families.entry(family).or_default();
            e.0 += 1;
            e.1 += usize::from(blocked);
            if !blocked {
                missed.push(case["id"].as_str().unwrap_or("?").to_string());
            }
        } else {
            allow.0 += 1;
            allow.1 += usize::from(blocked);
        }
    }
    let (total, caught) = families
        .values()
        .fold((0, 0), |(t, c), (n, b)| (t + n, c + b));
    println!("CRS corpus through rampart (paranoia 1, threshold 5):");
    println!("| family | caught | cases | detection |\n|---|---|---|---|");
    for (family, (n, c)) in &families {
        println!(
            "| {family} | {c} | {n} | {:.1}% |",
            100.0 * *c as f64 / *n as f64
        );
    }
    println!(
        "| overall | {caught} | {total} | {:.1}% |",
        100.0 * caught as f64 / total as f64
    );
    println!(
        "`allow` cases refused (the named CRS rule must not fire; not all are benign): {}/{}",
        allow.1, allow.0
    );
    println!("missed: {missed:?}");
    assert!(total > 1000, "the corpus has {total} selected cases");
    assert!(
        caught * 10 >= total * 9,
        "overall detection {caught}/{total} is under 90%"
    );
    for (family, (n, c)) in &families {
        assert!(c * 10 >= n * 9, "family {family}: {c}/{n} is under 90%");
    }
}
