//! The WAF's transformations never panic and never grow a value without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::decode;

fuzz_target!(|data: &[u8]| {
    let d = decode::decoded(data);
    // Decoding only ever shrinks or keeps (entities and escapes are longer than what they mean).
    assert!(d.len() <= data.len() + 3 * data.len() / 2 + 4);
    let n = decode::norm(&d);
    assert!(n.len() <= d.len());
    let c = decode::cmdline(&n);
    assert!(c.len() <= n.len() + 1);
    let _ = decode::html_entity_decode(data);
    let _ = decode::percent_decode(data, true);
});
