//! Layer blobs: recognising their compression and streaming their uncompressed bytes.
//!
//! A layer is a tar stream, plain or compressed with gzip (one or more members) or zstd (one or
//! more frames). The compression is read from the stream's first bytes, not from the media
//! type, because registries and tools get media types wrong. Decompression is a pure stream:
//! callers hand in any reader of the compressed bytes and a sink for the uncompressed ones, so
//! the pull can hash, store and (later) index a layer in one pass.

pub mod copy;
pub mod dir;
pub mod gzip;
pub mod index;
pub mod reader;
pub mod tar;
pub mod zstd;

use std::io::{self, BufRead, BufReader, Read, Write};

use crate::digest::{Digest, Hasher};

/// Buffer for the compressed side of decompression.
const READ_BUFFER: usize = 256 << 10;
/// Buffer for the uncompressed side.
const COPY_BUFFER: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognise the compression from the first bytes of a blob.
    pub fn sniff(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("the gzip stream is corrupt: {0}")]
    Gzip(#[source] gzip::Error),
    #[error("the zstd stream is corrupt: {0}")]
    Zstd(#[source] zstd::Error),
    #[error("the layer's tar stream is invalid: {0}")]
    Tar(#[source] tar::Error),
    #[error("opening the layer: {0}")]
    Open(#[source] io::Error),
}

/// Memory for decompressed spans when the caller does not choose (`mount --cache-mib`).
pub const DEFAULT_CACHE_BYTES: u64 = gzip::DEFAULT_CACHE_BYTES;

pub use gzip::SpanCache;
use index::{Access, LayerIndex};

/// Decompress the layer blob `blob` read from `compressed` to its end, hashing the
/// uncompressed tar (its `diff_id`), indexing its entries, and recording where decompression
/// can resume mid-stream, all in one pass. Every compressed byte is consumed, including any
/// padding after the compressed stream, so a hash taken below this reader covers the whole blob.
pub fn index_stream<R: Read>(blob: Digest, compressed: R) -> Result<LayerIndex, Error> {
    let mut input = BufReader::with_capacity(READ_BUFFER, compressed);
    let compression = Compression::sniff(input.fill_buf().map_err(Error::Read)?);
    let mut hasher = Hasher::new();
    let mut indexer = tar::TarIndexer::new();
    let access = {
        let mut tee = Tee {
            hasher: &mut hasher,
            sink: &mut indexer,
        };
        match compression {
            Compression::None => {
                copy(&mut input, &mut tee)?;
                Access::Plain
            }
            Compression::Gzip => Access::Gzip(
                gzip::inflate_indexed(&mut input, &mut tee, gzip::DEFAULT_SPAN)
                    .map_err(|e| tar_error(&e).map_or(Error::Gzip(e), Error::Tar))?,
            ),
            Compression::Zstd => Access::Zstd(
                zstd::decompress_indexed(&mut input, &mut tee)
                    .map_err(|e| tar_error(&e).map_or(Error::Zstd(e), Error::Tar))?,
            ),
        }
    };
    // Whatever follows the compressed stream still belongs to the blob's digest.
    io::copy(&mut input, &mut io::sink()).map_err(Error::Read)?;
    let entries = indexer.finish().map_err(Error::Tar)?;
    let uncompressed_size = hasher.len();
    Ok(LayerIndex {
        blob,
        diff_id: hasher.finish(),
        compression,
        uncompressed_size,
        access,
        entries,
    })
}

/// A tar error that surfaced through the decompressor's sink, if that is what `e` is.
fn tar_error(e: &(dyn std::error::Error + 'static)) -> Option<tar::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<tar::Error>())
        {
            return Some(t.clone());
        }
        source = s.source();
    }
    None
}

/// Positional reads of the uncompressed stream of the layer `index` describes. `id` tells its
/// spans apart from other layers' in `cache`.
pub fn open_stream(
    store: &crate::store::Store,
    index: &LayerIndex,
    id: u64,
    cache: std::sync::Arc<SpanCache>,
) -> Result<Box<dyn reader::ReadAt>, Error> {
    let path = store.blob_path(&index.blob);
    let file = std::fs::File::open(&path).map_err(Error::Open)?;
    Ok(match &index.access {
        Access::Plain => Box::new(reader::Plain(std::sync::Arc::new(file))),
        Access::Gzip(checkpoints) => Box::new(
            gzip::GzipReader::new(
                file,
                checkpoints.clone(),
                index.uncompressed_size,
                cache,
                id,
            )
            .map_err(Error::Gzip)?
            .with_local_copy(store.cache_path(&index.blob)),
        ),
        Access::Zstd(frames) => Box::new(
            zstd::ZstdReader::new(
                file,
                frames.clone(),
                index.uncompressed_size,
                cache,
                id,
                store.cache_path(&index.blob),
            )
            .map_err(Error::Zstd)?,
        ),
    })
}

/// Copy until EOF.
fn copy(from: &mut dyn Read, to: &mut Tee<'_>) -> Result<(), Error> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(|e| match tar_error(&e) {
            Some(t) => Error::Tar(t),
            None => Error::Read(e),
        })?;
    }
}

struct Tee<'a> {
    hasher: &'a mut Hasher,
    sink: &'a mut dyn Write,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = ::tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn all_compressions_give_the_same_index() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let tar = tar_of(&[("a", b"hello".to_vec()), ("dir/big", big.clone())]);
        let want = Digest::of(&tar);
        let mut two_members = gzip(&tar[..1000]);
        two_members.extend(gzip(&tar[1000..]));
        let cases = [
            (tar.clone(), Compression::None),
            (gzip(&tar), Compression::Gzip),
            (two_members, Compression::Gzip),
            (::zstd::encode_all(&tar[..], 3).unwrap(), Compression::Zstd),
        ];
        for (blob, compression) in cases {
            let idx = index_stream(Digest::of(&blob), &blob[..]).unwrap();
            assert_eq!(idx.compression, compression);
            assert_eq!(idx.diff_id, want);
            assert_eq!(idx.uncompressed_size, tar.len() as u64);
            let names: Vec<&[u8]> = idx.entries.iter().map(|e| &e.path[..]).collect();
            assert_eq!(names, vec![&b"a"[..], &b"dir/big"[..]]);
            let index::Data::Contiguous { offset } = idx.entries[1].data.clone() else {
                panic!("no data offset")
            };
            assert_eq!(&tar[offset as usize..offset as usize + big.len()], &big[..]);
            if compression == Compression::Gzip {
                assert!(matches!(&idx.access, Access::Gzip(c) if c.len() >= 2));
            }
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let blob = gzip(&tar_of(&[("f", vec![7u8; 100_000])]));
        let cut = &blob[..blob.len() / 2];
        let err = index_stream(Digest::of(cut), cut).unwrap_err();
        assert!(matches!(err, Error::Gzip(_)), "{err}");
    }

    #[test]
    fn traversal_is_a_tar_error() {
        let mut raw = tar_of(&[("xx/passwd", b"x".to_vec())]);
        raw[..9].copy_from_slice(b"../passwd"); // rename in place, then fix the checksum
        let mut h = ::tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let err = index_stream(Digest::of(&raw), &gzip(&raw)[..]).unwrap_err();
        assert!(matches!(err, Error::Tar(_)), "{err}");
    }
}
