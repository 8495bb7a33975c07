//! Manifests, indexes and configs: the first byte picks the content type the registry claims,
//! the rest is the body.
#![no_main]

use layerfs::image::{Config, ManifestKind, Platform};
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 7] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[usize::from(kind) % TYPES.len()];
    match ManifestKind::parse("fuzzed manifest", content_type, body) {
        Ok(ManifestKind::Image(m)) => {
            let _ = m.to_oci();
        }
        Ok(ManifestKind::Index(index)) => {
            for wanted in ["linux/amd64", "linux/arm64/v8", "windows/amd64"] {
                let _ = index.select(&wanted.parse::<Platform>().unwrap());
            }
        }
        Err(_) => {}
    }
    let _ = Config::parse("fuzzed config", body);
});
