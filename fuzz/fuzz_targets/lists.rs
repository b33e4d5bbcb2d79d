//! Rule and list files an operator (or a compromised deploy) hands rampart: IP lists and
//! WAF rule files load or fail with an error naming a line; they never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_plugins::prefix_table::{read_lists, PrefixTable};
use rampart_plugins::waf::RuleSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match read_lists([("fuzz.txt", text)]) {
        Ok(nets) => {
            let table = PrefixTable::new(nets.clone());
            assert!(table.len() <= nets.len());
            for net in &nets {
                assert!(
                    table.contains(net.addr()),
                    "{net} was loaded but is not matched"
                );
            }
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1)),
    }
    let _ = RuleSet::compile(&[("fuzz.toml".to_string(), text.to_string())]);
});
