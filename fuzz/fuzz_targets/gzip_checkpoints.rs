//! Random reads of a gzip layer through an index that the input corrupts: checkpoints moved,
//! windows cut or garbled, the blob's bytes flipped. Every read must end in data or an error,
//! never a panic, a hang or an allocation beyond the span size. The same bytes are also offered
//! to the index file decoder.
#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use layerfs::layer::gzip::{self, Checkpoint, GzipReader, SpanCache};
use layerfs::layer::index::LayerIndex;
use libfuzzer_sys::fuzz_target;

/// A 256 KiB stream of text and noise, compressed, with a checkpoint every 16 KiB.
struct Layer {
    plain: Vec<u8>,
    blob: Vec<u8>,
    checkpoints: Vec<Checkpoint>,
}

fn layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut plain = Vec::new();
        let mut x: u32 = 1;
        while plain.len() < 256 << 10 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if x % 3 == 0 {
                plain.extend_from_slice(b"the quick brown fox jumps over the lazy dog\n");
            } else {
                plain.extend_from_slice(&x.to_le_bytes());
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let blob = gz.finish().unwrap();
        let mut out = Vec::new();
        let checkpoints =
            gzip::inflate_indexed(&mut &blob[..], &mut out, 16 << 10).expect("a valid stream");
        assert_eq!(out, plain);
        Layer {
            plain,
            blob,
            checkpoints,
        }
    })
}

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, slot) in b.iter_mut().enumerate() {
        *slot = data.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let _ = LayerIndex::decode(data);
    let layer = layer();
    let mut checkpoints = layer.checkpoints.clone();
    let mut blob = layer.blob.clone();
    // Each 8-byte word of the input is one edit, or a read to make once all edits are done.
    let mut reads = Vec::new();
    for i in 0..data.len() / 8 {
        let w = u64_at(data, i);
        let n = checkpoints.len().max(1);
        let c = (w as usize >> 3) % n;
        match w & 7 {
            0 if !checkpoints.is_empty() => checkpoints[c].out = w >> 16,
            1 if !checkpoints.is_empty() => {
                checkpoints[c].input = (w >> 16) % (blob.len() as u64 + 2)
            }
            2 if !checkpoints.is_empty() => checkpoints[c].bits = (w >> 16) as u8,
            3 if !checkpoints.is_empty() => {
                let mut win = checkpoints[c]
                    .window
                    .bytes()
                    .unwrap_or_default()
                    .into_owned();
                let len = win.len();
                win.truncate((w >> 16) as usize % (len + 1));
                checkpoints[c].window = win.into();
            }
            4 if !checkpoints.is_empty() => {
                let mut win = checkpoints[c]
                    .window
                    .bytes()
                    .unwrap_or_default()
                    .into_owned();
                if let Some(b) = win.get_mut((w >> 16) as usize % 32768) {
                    *b ^= (w >> 48) as u8 | 1;
                }
                checkpoints[c].window = win.into();
            }
            5 => {
                let at = (w >> 16) as usize % blob.len();
                blob[at] ^= (w >> 8) as u8 | 1;
            }
            6 if !checkpoints.is_empty() => {
                checkpoints.remove(c);
            }
            _ => reads.push((
                (w >> 16) % (layer.plain.len() as u64 + 4096),
                ((w >> 3) & 0x1fff) as usize,
            )),
        }
    }
    let mut path = std::env::temp_dir();
    path.push(format!("layerfs-fuzz-gzip-{}", std::process::id()));
    std::fs::write(&path, &blob).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let cache = Arc::new(SpanCache::new(1 << 20));
    let size = layer.plain.len() as u64;
    let untouched = blob == layer.blob && checkpoints == layer.checkpoints;
    let Ok(reader) = GzipReader::new(file, checkpoints, size, cache, 1) else {
        return;
    };
    for (offset, len) in reads {
        let mut buf = vec![0u8; len];
        if let Ok(n) = reader.read_at(offset, &mut buf) {
            assert!(n <= len);
            // An untouched blob and index read back exactly.
            if untouched {
                let start = (offset as usize).min(layer.plain.len());
                let end = (start + len).min(layer.plain.len());
                assert_eq!(&buf[..n], &layer.plain[start..end]);
            }
        }
    }
});
