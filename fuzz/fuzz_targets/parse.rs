//! The request parsers accept any bytes: they never panic, and what they return is bounded
//! by what they were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::{json, parse, scan, urls};

fuzz_target!(|data: &[u8]| {
    for (n, v) in parse::form_pairs(data) {
        assert!(n.len() + v.len() <= data.len());
    }
    let _ = parse::cookie_pairs(data);
    if let Some(fields) = json::json_fields(data) {
        let total: usize = fields
            .iter()
            .map(|f| f.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        // Escapes only shrink text; an invalid UTF-8 byte becomes U+FFFD (3 bytes), so three
        // times the input is the most the values can take.
        assert!(total <= 3 * data.len());
    }
    // A JSON string read in one pass: its end is an unescaped quote, its colons are colons.
    let mut colons = Vec::new();
    let scanned = scan::scan_string(data, &mut colons);
    assert!(scanned.len <= data.len());
    assert_eq!(scanned.closed, data.get(scanned.len) == Some(&b'"'));
    assert!(colons.iter().all(|&c| c < scanned.len && data[c] == b':'));
    let _ = urls::each_url_in_json(&data[..scanned.len], |url| assert!(!url.is_empty()));
    let _ = parse::xml_values(data);
    if let Some(boundary) = parse::multipart_boundary(data) {
        let _ = parse::multipart_parts(data, boundary);
    }
    let _ = parse::multipart_parts(data, b"--x");
});
