//! The layer indexer fed arbitrary bytes: as a plain tar, wrapped in gzip (so the bytes reach
//! the tar parser through the checkpointing inflater), and as a gzip stream itself. Whatever
//! it accepts must round-trip through the index file format.
#![no_main]

use std::io::Write;

use layerfs::digest::Digest;
use layerfs::layer::index::LayerIndex;
use layerfs::layer::index_stream;
use libfuzzer_sys::fuzz_target;

fn check(blob: &[u8]) {
    if let Ok(index) = index_stream(Digest::of(blob), blob) {
        assert_eq!(index.diff_id.to_string().len(), 71);
        let decoded = LayerIndex::decode(&index.encode().expect("windows in memory"))
            .expect("an index decodes");
        assert_eq!(decoded, index);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    check(&gz.finish().unwrap());
});
