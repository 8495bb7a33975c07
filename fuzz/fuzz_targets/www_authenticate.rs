//! `WWW-Authenticate` headers as a registry may send them.
#![no_main]

use layerfs::registry::auth::parse_challenges;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    for c in parse_challenges(&header) {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
    }
});
