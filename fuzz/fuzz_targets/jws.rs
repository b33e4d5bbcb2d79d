//! Tokens and key sets from the network: parsing never panics, a parsed token's parts are
//! bounded by its text, and no token verifies against a key set built from other bytes
//! unless its signature is genuinely checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::jws::{JwkSet, Token};

fuzz_target!(|data: &[u8]| {
    // The first half as a key set, the rest as a token.
    let split = data.len() / 2;
    let (keys, token) = data.split_at(split);
    let set = JwkSet::parse(keys);
    if let Ok(text) = std::str::from_utf8(token) {
        if let Ok(t) = Token::parse(text) {
            assert!(t.signed.len() <= text.len());
            assert!(t.payload.len() <= text.len());
            if let Ok(set) = &set {
                // Random bytes never carry a valid signature by a key of the set.
                assert!(set.verify(&t).is_err());
            }
        }
    }
    if let Ok(set) = set {
        assert!(!set.is_empty(), "a usable set has a key");
    }
});
