//! The request parsers accept any bytes: they never panic, and what they return is bounded
//! by what they were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::{json, parse};

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
    let _ = parse::xml_values(data);
    if let Some(boundary) = parse::multipart_boundary(data) {
        let _ = parse::multipart_parts(data, boundary);
    }
    let _ = parse::multipart_parts(data, b"--x");
});
