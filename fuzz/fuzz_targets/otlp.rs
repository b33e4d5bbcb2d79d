//! OTLP exports read by their schema: any bytes, as protobuf or as JSON, for traces or logs,
//! end in fields or in `Malformed`, never in a panic; every field's path names where in the
//! schema it was found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::waf::otlp::{json_fields, protobuf_fields, Signal};

const PLACES: &[&str] = &["resource.", "scope.", "span.", "event.", "link.", "log."];

fuzz_target!(|data: &[u8]| {
    for signal in [Signal::Traces, Signal::Logs] {
        for fields in [protobuf_fields(data, signal), json_fields(data, signal)]
            .into_iter()
            .flatten()
        {
            for f in fields {
                assert!(PLACES.iter().any(|p| f.path.starts_with(p)), "{}", f.path);
                if let Some(key) = &f.key {
                    assert!(f.path.ends_with(key.as_str()));
                }
            }
        }
    }
});
