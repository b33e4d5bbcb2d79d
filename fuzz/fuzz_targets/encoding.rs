//! Compressed request bodies: any bytes, in any chunking, decode or fail with a reason,
//! never panic, and never produce more than the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::encoding::{ContentDecoder, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&how, body)) = data.split_first() else {
        return;
    };
    let header: &[u8] = if how & 1 == 0 { b"gzip" } else { b"deflate" };
    let limits = DecodeLimits {
        max_bytes: 1 << 20,
        max_ratio: 50,
        ratio_grace: 64 << 10,
    };
    let Ok(Some(mut decoder)) = ContentDecoder::for_header(Some(header), limits) else {
        return;
    };
    let mut out = 0usize;
    for chunk in body.chunks(usize::from(how >> 1).max(1)) {
        match decoder.push(chunk) {
            Ok(decoded) => out += decoded.len(),
            Err(_) => return,
        }
        assert!(out as u64 <= limits.max_bytes);
        assert!(out as u64 <= limits.ratio_grace.max(body.len() as u64 * limits.max_ratio));
    }
    if let Ok(last) = decoder.finish() {
        out += last.len();
        assert!(out as u64 <= limits.max_bytes);
    }
});
