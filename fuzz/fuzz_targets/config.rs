//! `config::from_str` on arbitrary UTF-8. Property: no panic (every problem is an error with a
//! position, never a crash), and an accepted config's routes all hold normalized prefixes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match portcullis::config::from_str(text, Arc::from("fuzz.yaml")) {
        Ok(loaded) => {
            for route in loaded.config.routes.iter() {
                let prefix = &*route.prefix;
                assert_eq!(portcullis::route::normalize(prefix).as_deref(), Ok(prefix));
                assert!(loaded.config.routes.find(prefix).is_some());
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error with no problem in it");
            let _ = errors.to_string();
        }
    }
});
