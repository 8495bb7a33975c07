//! Layer blobs: recognising their compression and streaming their uncompressed bytes.
//!
//! A layer is a tar stream, plain or compressed with gzip (one or more members) or zstd (one or
//! more frames). The compression is read from the stream's first bytes, not from the media
//! type, because registries and tools get media types wrong. Decompression is a pure stream:
//! callers hand in any reader of the compressed bytes and a sink for the uncompressed ones, so
//! the pull can hash, store and (later) index a layer in one pass.

pub mod index;
pub mod reader;

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
    #[error("the {compression} stream is corrupt: {source}")]
    Corrupt {
        compression: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing the uncompressed layer: {0}")]
    Sink(#[source] io::Error),
}

/// What one pass over a layer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uncompressed {
    pub compression: Compression,
    /// sha256 of the uncompressed tar: the config's `diff_id` for this layer.
    pub diff_id: Digest,
    pub size: u64,
}

/// Decompress `compressed` to its end, feeding the uncompressed bytes to `sink` and hashing
/// them. Every compressed byte is consumed, including any after the end of the compressed
/// stream, so that a hash taken below this reader covers the whole blob.
pub fn decompress<R: Read>(compressed: R, sink: &mut dyn Write) -> Result<Uncompressed, Error> {
    let mut input = BufReader::with_capacity(READ_BUFFER, compressed);
    let compression = Compression::sniff(input.fill_buf().map_err(Error::Read)?);
    let mut hasher = Hasher::new();
    {
        let mut tee = Tee {
            hasher: &mut hasher,
            sink,
        };
        let corrupt = |source| Error::Corrupt {
            compression: compression.name(),
            source,
        };
        match compression {
            Compression::None => copy(&mut input, &mut tee, Error::Read)?,
            Compression::Gzip => {
                let mut d = flate2::bufread::MultiGzDecoder::new(&mut input);
                copy(&mut d, &mut tee, corrupt)?
            }
            Compression::Zstd => {
                let mut d =
                    zstd::stream::read::Decoder::with_buffer(&mut input).map_err(corrupt)?;
                copy(&mut d, &mut tee, corrupt)?
            }
        };
    }
    // Whatever follows the compressed stream still belongs to the blob's digest.
    io::copy(&mut input, &mut io::sink()).map_err(Error::Read)?;
    let size = hasher.len();
    Ok(Uncompressed {
        compression,
        diff_id: hasher.finish(),
        size,
    })
}

/// Copy until EOF; read errors map through `on_read`, write errors are the sink's.
fn copy(
    from: &mut dyn Read,
    to: &mut Tee<'_>,
    on_read: impl Fn(io::Error) -> Error,
) -> Result<(), Error> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(on_read(e)),
        };
        to.write_all(&buf[..n]).map_err(Error::Sink)?;
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

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn all_compressions_give_the_same_diff_id() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = Digest::of(&data);
        let mut two_members = gzip(&data[..1000]);
        two_members.extend(gzip(&data[1000..]));
        let cases = [
            (data.clone(), Compression::None),
            (gzip(&data), Compression::Gzip),
            (two_members, Compression::Gzip),
            (zstd::encode_all(&data[..], 3).unwrap(), Compression::Zstd),
        ];
        for (blob, compression) in cases {
            let mut out = Vec::new();
            let got = decompress(&blob[..], &mut out).unwrap();
            assert_eq!(got.compression, compression);
            assert_eq!(got.diff_id, want);
            assert_eq!(got.size, data.len() as u64);
            assert_eq!(out, data);
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let blob = gzip(&[7u8; 100_000]);
        let cut = &blob[..blob.len() / 2];
        let err = decompress(cut, &mut io::sink()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    compression: "gzip",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_blob_is_an_empty_tar_stream() {
        let got = decompress(&b""[..], &mut io::sink()).unwrap();
        assert_eq!(got.size, 0);
        assert_eq!(got.compression, Compression::None);
    }
}
