//! registries.conf files, and the names they produce for a few references.
#![no_main]

use std::path::Path;

use layerfs::reference::Reference;
use layerfs::registry::conf::RegistriesConf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(conf) = RegistriesConf::parse(text, Path::new("fuzz.conf")) else {
        return;
    };
    for name in [
        "debian",
        "library/alpine:3",
        "quay.io/org/app:1",
        "127.0.0.1:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        if let Ok(candidates) = conf.candidates(name) {
            for c in candidates {
                let _ = conf.sources(&c);
                let _ = conf.insecure(&c);
            }
        }
        if let Ok(r) = name.parse::<Reference>() {
            let _ = conf.sources(&r);
        }
    }
});
