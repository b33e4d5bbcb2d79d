//! The grammar-aware detectors never panic, finish on any input (libFuzzer's timeout
//! catches a quadratic walk), and place what they find inside the input they were given.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::decode;
use rampart_plugins::waf::detect::{Detector, Kind};

const KINDS: [Kind; 14] = [
    Kind::Sqli,
    Kind::Xss,
    Kind::Shell,
    Kind::Path,
    Kind::Ldap,
    Kind::Nosql,
    Kind::Template,
    Kind::Js,
    Kind::Crlf,
    Kind::CrlfText,
    Kind::Mail,
    Kind::Xxe,
    Kind::Graphql,
    Kind::Ssi,
];

fn detectors() -> Vec<Detector> {
    let lists: HashMap<String, Vec<String>> = [
        ("strong", "whoami uname wget curl nc bash sh powershell cmd"),
        ("bare", "id env ps pwd ls ipconfig"),
        ("weak", "cat echo sleep find more type net ping python"),
        ("prefix", "sudo nohup env timeout"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.split(' ').map(String::from).collect()))
    .collect();
    let words: BTreeMap<String, Vec<String>> =
        lists.keys().map(|k| (k.clone(), vec![k.clone()])).collect();
    KINDS
        .iter()
        .map(|&kind| {
            let w = if kind == Kind::Shell {
                words.clone()
            } else {
                BTreeMap::new()
            };
            Detector::build(kind, &w, &lists).expect("a detector builds")
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static DETECTORS: Vec<Detector> = detectors());
    let forms = [data.to_vec(), decode::decoded(data)];
    DETECTORS.with(|all| {
        for d in all {
            for form in &forms {
                if let Some(found) = d.detect(form) {
                    assert!(
                        found.at + found.len <= form.len(),
                        "{:?} past the input",
                        d.kind()
                    );
                }
                let _ = d.explain(form);
            }
        }
    });
});
