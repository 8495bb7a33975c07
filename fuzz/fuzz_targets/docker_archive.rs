//! `docker save` archives whose manifest.json is the input, beside a valid config and layer
//! that a well-formed manifest.json can name (`config.json`, `layer.tar`): loading into an
//! empty store ends in images or an error, and a failed load publishes no ref.
#![no_main]

use std::sync::OnceLock;

use layerfs::digest::Digest;
use layerfs::store::Store;
use libfuzzer_sys::fuzz_target;

/// A one-file layer tar and a config whose diff_ids name it.
fn members() -> &'static (Vec<u8>, Vec<u8>) {
    static MEMBERS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    MEMBERS.get_or_init(|| {
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(6);
        header.set_mode(0o644);
        header.set_cksum();
        layer.append_data(&mut header, "etc/motd", &b"hello\n"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            Digest::of(&layer)
        );
        (layer, config.into_bytes())
    })
}

fn archive(manifest: &[u8]) -> Vec<u8> {
    let (layer, config) = members();
    let mut out = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("manifest.json", manifest),
        ("config.json", &config[..]),
        ("layer.tar", &layer[..]),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, bytes).unwrap();
    }
    out.into_inner().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, archive(data)).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    match layerfs::archive::load(&store, &path, None) {
        Ok(loaded) => assert!(!loaded.is_empty() || store.refs().unwrap().is_empty()),
        Err(_) => assert!(store.refs().unwrap().is_empty(), "a failed load left a ref"),
    }
    // The raw input as a whole archive too (docker save or OCI).
    std::fs::write(&path, data).unwrap();
    let _ = layerfs::archive::load(&store, &path, None);
});
