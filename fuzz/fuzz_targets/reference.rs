//! Image references: parsing, normalising and printing never panic, and what prints parses
//! back to the same reference.
#![no_main]

use layerfs::reference::{self, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = reference::is_short_name(text);
    let (name, suffix) = reference::split_short_name(text);
    assert_eq!(format!("{name}{suffix}"), text);
    let _ = reference::is_loopback_host(text);
    if let Ok(r) = text.parse::<Reference>() {
        let printed = r.to_string();
        let again: Reference = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again, r, "{text:?}");
        let _ = (r.api_host(), r.manifest_reference(), r.is_loopback());
    }
});
