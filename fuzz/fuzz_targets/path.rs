//! Path normalisation never panics, and what it returns is canonical: normalising it again
//! changes nothing, and no dot segment or doubled slash survives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = normalize(s) {
        assert!(p.starts_with('/'));
        assert!(!p.contains("//"), "{p:?}");
        assert!(!p.contains("/../") && !p.ends_with("/.."), "{p:?}");
        if !p.contains('%') {
            assert_eq!(
                normalize(&p).map(|q| q.into_owned()),
                Ok(p.clone().into_owned())
            );
        }
    }
});
