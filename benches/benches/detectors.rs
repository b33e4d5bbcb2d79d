//! Each grammar-aware detector on its own, over what most fields are (a 4 KB form text of
//! ordinary prose with the punctuation detectors look at) and over an attack it finds.
//! `cargo bench -p rampart-benches --bench detectors`.
//!
//! The shell detector gets the shipped dictionary and word classes (`rules/waf/owasp/rce.toml`),
//! so that its cost is the one a request pays.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rampart_plugins::waf::decode;
use rampart_plugins::waf::detect::{Detector, Kind};

/// A TOML table of string arrays (`[lists]`, a rule's `words`) as a map.
fn string_lists<M: FromIterator<(String, Vec<String>)>>(table: &toml::Value) -> M {
    table
        .as_table()
        .expect("a table")
        .iter()
        .map(|(k, v)| {
            let strings = v.as_array().expect("a list");
            let strings = strings.iter().filter_map(|s| s.as_str()).map(String::from);
            (k.clone(), strings.collect())
        })
        .collect()
}

fn shipped_shell() -> Detector {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/waf/owasp/rce.toml");
    let text = std::fs::read_to_string(path).expect("rce.toml");
    let file: toml::Table = toml::from_str(&text).expect("rce.toml parses");
    let lists: HashMap<String, Vec<String>> = string_lists(&file["lists"]);
    // The word classes as the shipped `detector = "shell"` rule gives them.
    let rule = file["rule"]
        .as_array()
        .expect("[[rule]]")
        .iter()
        .find(|r| r.get("detector").and_then(|d| d.as_str()) == Some("shell"))
        .expect("the shell rule");
    let words: BTreeMap<String, Vec<String>> = string_lists(&rule["words"]);
    Detector::build(Kind::Shell, &words, &lists).expect("shell detector")
}

/// About 4 KB of support-desk prose: sentences with `;`, `&`, parentheses, quotes, dots,
/// line breaks and command words used as English.
fn prose_4k() -> Vec<u8> {
    let sentence = "Find my order (from last week); it says \"shipped\" but the cat & dog \
                    toys are missing... Please check: sleep well, and thanks!\nBest, Ana. ";
    sentence.repeat(4096 / sentence.len() + 1).into_bytes()[..4096].to_vec()
}

fn bench(c: &mut Criterion) {
    let prose = decode::decoded(&prose_4k());
    let cases: [(Kind, &str); 13] = [
        (Kind::Shell, "127.0.0.1;cat${IFS}/etc/passwd"),
        (Kind::Path, "..%c0%af..%c0%afetc/passwd"),
        (Kind::Ldap, "*)(uid=*))(|(uid=*"),
        (Kind::Nosql, "{\"$ne\": null}"),
        (Kind::Template, "{{''.__class__.__mro__[1]}}"),
        (Kind::Js, "\"-alert(document.domain)-\""),
        (Kind::Crlf, "x\r\nSet-Cookie: a=b"),
        (Kind::CrlfText, "x\r\nLocation: https://evil.example"),
        (Kind::Mail, "INBOX\r\na1 CREATE evil"),
        (
            Kind::Xxe,
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>",
        ),
        (Kind::Graphql, "{ __schema { types { name } } }"),
        (Kind::Ssi, "<!--#exec cmd=\"id\"-->"),
        (Kind::Sqli, "1' OR '1'='1"),
    ];
    let mut group = c.benchmark_group("detector_4k_prose");
    group.throughput(Throughput::Bytes(prose.len() as u64));
    for (kind, attack) in cases {
        let detector = if kind == Kind::Shell {
            shipped_shell()
        } else {
            Detector::build(kind, &BTreeMap::new(), &HashMap::new()).expect("detector")
        };
        let attack = decode::decoded(attack.as_bytes());
        assert!(
            detector.detect(&attack).is_some(),
            "{kind:?} finds its attack"
        );
        assert!(
            detector.detect(&prose).is_none(),
            "{kind:?} leaves prose alone"
        );
        group.bench_function(format!("{kind:?}"), |b| {
            b.iter(|| detector.detect(black_box(&prose)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
