//! Bodies cut into windows for the WAF: whatever the bytes and however they arrive, every
//! byte is released exactly once, in order, and every part of a JSON body that parsed whole
//! is JSON again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::json::json_fields;
use rampart_plugins::waf::stream::BodySegments;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((&chunk, body)) = rest.split_first() else {
        return;
    };
    let content_type: &[u8] = match kind % 4 {
        0 => b"application/json",
        1 => b"application/x-www-form-urlencoded",
        2 => b"text/plain",
        _ => b"",
    };
    let mut segments = BodySegments::new(content_type, "/", 8192);
    // A length announced rightly, wrongly, or not at all only sizes the buffers.
    let len = body.len() as u64;
    segments.announce_length([None, Some(len), Some(len / 2)][usize::from(kind / 4 % 3)]);
    let mut released = Vec::new();
    let mut parts = Vec::new();
    for piece in body.chunks(usize::from(chunk).max(1) * 37) {
        match segments.push(piece) {
            Ok(p) => parts.extend(p),
            Err(_) => return,
        }
    }
    parts.extend(segments.finish());
    if kind % 4 == 0 && json_fields(body).is_some() && serde_json_like(body) {
        for p in &parts {
            assert!(json_fields(p.doc()).is_some());
        }
    }
    for p in parts {
        released.extend_from_slice(&p.into_release());
    }
    assert_eq!(released, body);
});

/// Only a body that is one complete JSON document is cut as JSON throughout.
fn serde_json_like(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii();
    matches!(trimmed.first(), Some(b'{')) && matches!(trimmed.last(), Some(b'}'))
}
