//! zstd layers: one pass that decompresses and records where each frame starts, then positional
//! reads.
//!
//! A zstd stream is a sequence of frames, each decodable on its own. The pull's single pass
//! ([`decompress_indexed`]) records every data frame's compressed and uncompressed start as a
//! [`Frame`]; skippable frames (metadata some tools add) are passed over and not recorded, and
//! zero bytes after the last frame (padding) are consumed.
//!
//! A [`ZstdReader`] then serves reads in one of two ways, chosen when it is opened:
//!
//! - **By frame**, when every frame is small enough to cache (layers written in many frames,
//!   such as zstd:chunked): a read decodes the frame holding its offset, from that frame's start,
//!   and keeps it whole in the shared [`SpanCache`] (keyed by layer and frame number), exactly as
//!   gzip spans are kept. The decoder must find the frame's end exactly where the index puts
//!   the next frame (and its checksum right, if it has one), so damage shows as an error.
//! - **From a local copy**, when some frame is too large to cache (the usual single-frame layer,
//!   or a few huge frames): the first read decompresses the whole layer once into a cache file
//!   the caller names (e.g. `STORE/layerfs/cache/<hex>.tar`), and every read is a `pread` of
//!   it (see `LocalCopy`: written under a temporary name, checked to be exactly the stream's
//!   length, synced and renamed into place; an existing file of the right length is reused).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

use super::gzip::{LocalCopy, Pread, SpanCache, SpanKey};

/// Output handed to the sink per write in the indexing pass: large, so the sink's per-call
/// costs (hashing, tar parsing, file writes) are amortised.
const OUT_CHUNK: usize = 1 << 20;
/// Compressed bytes read per `pread` when decoding a frame.
const READ_CHUNK: usize = 128 << 10;
/// Scratch buffer for output that is decoded only to be skipped.
const SKIP_CHUNK: usize = 256 << 10;
/// Buffer for reading the blob and writing the local copy when materialising it.
const COPY_BUFFER: usize = 1 << 20;
/// First bytes of skippable frames' magic numbers (0x184D2A50 to 0x184D2A5F, little-endian).
const SKIPPABLE_MAGIC0: std::ops::RangeInclusive<u8> = 0x50..=0x5f;

/// Where one data frame starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset of the frame in the compressed blob.
    pub input: u64,
    /// Offset of its first byte in the uncompressed stream.
    pub out: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the zstd stream: {0}")]
    Read(#[source] io::Error),
    #[error("writing the uncompressed stream: {0}")]
    Sink(#[source] io::Error),
    #[error(
        "the zstd stream is corrupt near compressed byte {offset}: {message}; the blob is \
         damaged: pull the image again"
    )]
    Corrupt { offset: u64, message: &'static str },
    #[error(
        "the zstd stream ends early, after {offset} compressed bytes: the blob is truncated; \
         pull the image again"
    )]
    Truncated { offset: u64 },
    #[error(
        "unexpected data at compressed byte {offset}, after the last zstd frame: the blob is \
         damaged or not a zstd stream"
    )]
    TrailingGarbage { offset: u64 },
    #[error("the zstd frame list is inconsistent ({0}); rebuild the layer index")]
    BadIndex(&'static str),
    #[error("cannot create a zstd decoder (out of memory?)")]
    Decoder,
}

/// Decompress the whole zstd stream `input` (one or more frames) into `sink`, and return where
/// each data frame starts. Every byte of `input` is consumed, including zero padding after the
/// last frame; anything else after it, a truncated stream or invalid data is an error.
pub fn decompress_indexed(
    input: &mut dyn BufRead,
    sink: &mut dyn Write,
) -> Result<Vec<Frame>, Error> {
    let mut dctx = DCtx::try_create().ok_or(Error::Decoder)?;
    let mut out = vec![0u8; OUT_CHUNK];
    let mut filled = 0usize;
    let mut frames = Vec::new();
    let mut total_in = 0u64;
    let mut total_out = 0u64;
    let mut in_frame = false;

    if input.fill_buf().map_err(Error::Read)?.is_empty() {
        return Err(Error::Truncated { offset: 0 });
    }
    loop {
        if filled == out.len() {
            sink.write_all(&out).map_err(Error::Sink)?;
            filled = 0;
        }
        let chunk = input.fill_buf().map_err(Error::Read)?;
        if !in_frame {
            match chunk.first() {
                None => break,
                Some(0) if total_in > 0 => {
                    skip_zeros(input, &mut total_in)?;
                    break;
                }
                Some(b) if SKIPPABLE_MAGIC0.contains(b) => {}
                // Anything else is for the decoder to accept or reject.
                Some(_) => frames.push(Frame {
                    input: total_in,
                    out: total_out,
                }),
            }
            in_frame = true;
        }
        let at_eof = chunk.is_empty();
        let mut src = InBuffer::around(chunk);
        let mut dst = OutBuffer::around(out.get_mut(filled..).unwrap_or_default());
        let hint = dctx
            .decompress_stream(&mut dst, &mut src)
            .map_err(|code| Error::Corrupt {
                offset: total_in,
                message: zstd_safe::get_error_name(code),
            })?;
        let (consumed, produced) = (src.pos(), dst.pos());
        input.consume(consumed);
        total_in += consumed as u64;
        total_out += produced as u64;
        filled += produced;
        if hint == 0 {
            in_frame = false;
        } else if at_eof && produced == 0 {
            return Err(Error::Truncated { offset: total_in });
        }
    }
    sink.write_all(out.get(..filled).unwrap_or_default())
        .map_err(Error::Sink)?;
    Ok(frames)
}

fn skip_zeros(input: &mut dyn BufRead, total_in: &mut u64) -> Result<(), Error> {
    loop {
        let buf = input.fill_buf().map_err(Error::Read)?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(at) = buf.iter().position(|&b| b != 0) {
            return Err(Error::TrailingGarbage {
                offset: *total_in + at as u64,
            });
        }
        let n = buf.len();
        input.consume(n);
        *total_in += n as u64;
    }
}

/// Positional reads of a zstd layer's uncompressed stream (see the module documentation).
/// Shared by many threads: every read uses `pread`.
pub struct ZstdReader {
    blob: File,
    frames: Arc<[Frame]>,
    size: u64,
    cache: Arc<SpanCache>,
    layer: u64,
    /// Set when frames are too large to cache: reads go to a local decompressed copy.
    local: Option<LocalCopy>,
}

impl ZstdReader {
    /// A reader of the zstd blob `blob`, whose uncompressed stream is `size` bytes long and
    /// whose frames are `frames`. `layer` tells this layer's frames apart from other layers' in
    /// `cache`; `cache_file` is where a local decompressed copy goes if one is needed (nothing
    /// is written there until the first read that needs it).
    pub fn new(
        blob: File,
        frames: impl Into<Arc<[Frame]>>,
        size: u64,
        cache: Arc<SpanCache>,
        layer: u64,
        cache_file: PathBuf,
    ) -> Result<ZstdReader, Error> {
        let frames = frames.into();
        validate(&frames, size)?;
        let largest = frames
            .iter()
            .zip(frames.iter().skip(1).map(|f| f.out).chain([size]))
            .map(|(f, end)| end - f.out)
            .max()
            .unwrap_or(0);
        let local = (largest > cache.max_entry()).then(|| LocalCopy::new(cache_file, size));
        Ok(ZstdReader {
            blob,
            frames,
            size,
            cache,
            layer,
            local,
        })
    }

    /// Length of the uncompressed stream.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether reads go through a local decompressed copy rather than frame by frame.
    pub fn uses_local_copy(&self) -> bool {
        self.local.is_some()
    }

    /// Read up to `buf.len()` bytes at `offset` of the uncompressed stream; fewer only at its
    /// end (0 at or past it). Corrupt compressed data is an `InvalidData` error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(local) = &self.local {
            return local.read_at(offset, buf, &|out| self.decompress_all(out));
        }
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let avail = usize::try_from(self.size - offset).map_or(buf.len(), |n| n.min(buf.len()));
        let buf = buf.get_mut(..avail).unwrap_or_default();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (i, start, end) = self.frame_of(pos)?;
            let rest = buf.get_mut(done..).unwrap_or_default();
            let want = usize::try_from(end - pos).map_or(rest.len(), |n| n.min(rest.len()));
            let dst = rest.get_mut(..want).unwrap_or_default();
            let within = pos - start;
            if end - start <= self.cache.max_entry() {
                let key = SpanKey {
                    layer: self.layer,
                    span: i as u64,
                };
                let len = end - start;
                let frame = self.cache.get_or_load(key, || self.decode_frame(i, len))?;
                let src = usize::try_from(within)
                    .ok()
                    .and_then(|w| frame.get(w..w.checked_add(want)?))
                    .ok_or_else(|| invalid(format!("frame {i} of the zstd layer is short")))?;
                dst.copy_from_slice(src);
            } else {
                let mut d = FrameDecoder::at(&self.blob, self.frame(i)?.input)?;
                d.skip(within)?;
                d.fill_exact(dst)?;
            }
            done += want;
        }
        Ok(done)
    }

    /// The frame holding `pos` (< size): its index, first and end offsets.
    fn frame_of(&self, pos: u64) -> io::Result<(usize, u64, u64)> {
        let next = self.frames.partition_point(|f| f.out <= pos);
        let i = next
            .checked_sub(1)
            .ok_or_else(|| invalid("no zstd frame before the offset".to_owned()))?;
        let start = self.frame(i)?.out;
        let end = self.frames.get(next).map_or(self.size, |f| f.out);
        Ok((i, start, end))
    }

    fn frame(&self, i: usize) -> io::Result<&Frame> {
        self.frames
            .get(i)
            .ok_or_else(|| invalid(format!("zstd frame {i} is missing")))
    }

    /// Decode frame `i`, `len` bytes, whole, and check that the frame ends exactly there
    /// (which also checks its content checksum, if it has one).
    fn decode_frame(&self, i: usize, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| invalid(format!("frame {i} of the zstd layer is too large")))?;
        let mut out = vec![0u8; len];
        let mut decoder = FrameDecoder::at(&self.blob, self.frame(i)?.input)?;
        decoder.fill_exact(&mut out)?;
        decoder.expect_frame_end()?;
        Ok(out)
    }

    fn decompress_all(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut input = BufReader::with_capacity(COPY_BUFFER, Pread::new(&self.blob));
        decompress_indexed(&mut input, out)
            .map(drop)
            .map_err(|e| invalid(e.to_string()))
    }
}

impl super::reader::ReadAt for ZstdReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        ZstdReader::read_at(self, offset, buf)
    }
}

fn validate(frames: &[Frame], size: u64) -> Result<(), Error> {
    let Some(first) = frames.first() else {
        return if size == 0 {
            Ok(())
        } else {
            Err(Error::BadIndex("no frame for a non-empty stream"))
        };
    };
    if first.out != 0 {
        return Err(Error::BadIndex("the first frame is not at offset 0"));
    }
    for pair in frames.windows(2) {
        if let [a, b] = pair
            && (b.out < a.out || b.input <= a.input)
        {
            return Err(Error::BadIndex("frames out of order"));
        }
    }
    if frames.iter().any(|f| f.out > size) {
        return Err(Error::BadIndex("a frame starts past the end of the stream"));
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Decoding from the start of a frame, reading the blob with `pread`; carries on into the
/// following frames if asked for more.
struct FrameDecoder<'a> {
    dctx: DCtx<'static>,
    blob: &'a File,
    /// Next blob offset to read.
    pos: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// The last call finished a frame (zstd returned 0).
    frame_done: bool,
}

impl<'a> FrameDecoder<'a> {
    fn at(blob: &'a File, input: u64) -> io::Result<FrameDecoder<'a>> {
        let dctx = DCtx::try_create()
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "no zstd decoder"))?;
        Ok(FrameDecoder {
            dctx,
            blob,
            pos: input,
            buf: vec![0u8; READ_CHUNK],
            start: 0,
            end: 0,
            eof: false,
            frame_done: false,
        })
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut scratch = vec![0u8; usize::try_from(n).map_or(SKIP_CHUNK, |n| n.min(SKIP_CHUNK))];
        while n > 0 {
            let len = usize::try_from(n).map_or(scratch.len(), |n| n.min(scratch.len()));
            self.fill_exact(scratch.get_mut(..len).unwrap_or_default())?;
            n -= len as u64;
        }
        Ok(())
    }

    fn fill_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut filled = 0usize;
        while filled < out.len() {
            let (consumed, produced) = self.step(out.get_mut(filled..).unwrap_or_default())?;
            filled += produced;
            if consumed == 0 && produced == 0 && self.eof {
                return Err(invalid(format!(
                    "the zstd layer ends early, at compressed byte {}",
                    self.pos
                )));
            }
        }
        Ok(())
    }

    /// After a frame's output: check that the frame ends here, with no more output.
    fn expect_frame_end(&mut self) -> io::Result<()> {
        while !self.frame_done {
            let (consumed, _) = self.step(&mut [])?;
            if consumed == 0 && !self.frame_done {
                return Err(invalid(format!(
                    "the zstd layer does not match its index: a frame should end near \
                     compressed byte {} but it does not; the blob is damaged or the index is \
                     stale",
                    self.pos - (self.end - self.start) as u64
                )));
            }
        }
        Ok(())
    }

    /// One call to zstd with whatever input is buffered (read more first if none); returns the
    /// bytes consumed and produced.
    fn step(&mut self, out: &mut [u8]) -> io::Result<(usize, usize)> {
        if self.start == self.end && !self.eof {
            self.refill()?;
        }
        let at = self.pos - (self.end - self.start) as u64;
        let mut src = InBuffer::around(self.buf.get(self.start..self.end).unwrap_or_default());
        let mut dst = OutBuffer::around(out);
        let hint = self
            .dctx
            .decompress_stream(&mut dst, &mut src)
            .map_err(|code| {
                invalid(format!(
                    "the zstd layer is corrupt near compressed byte {at}: {}",
                    zstd_safe::get_error_name(code)
                ))
            })?;
        let (consumed, produced) = (src.pos(), dst.pos());
        self.start += consumed;
        self.frame_done = hint == 0;
        Ok((consumed, produced))
    }

    fn refill(&mut self) -> io::Result<()> {
        loop {
            match self.blob.read_at(&mut self.buf, self.pos) {
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    self.pos += n as u64;
                    self.eof = n == 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::gzip::tests::{XorShift, random, semi};
    use std::fs;
    use std::process::Command;

    fn zst(data: &[u8], level: i32) -> Vec<u8> {
        zstd::encode_all(data, level).unwrap()
    }

    fn index(blob: &[u8]) -> Result<(Vec<u8>, Vec<Frame>), Error> {
        let mut out = Vec::new();
        let mut input = BufReader::with_capacity(64 << 10, blob);
        let frames = decompress_indexed(&mut input, &mut out)?;
        Ok((out, frames))
    }

    fn blob_file(blob: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(blob).unwrap();
        f
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        cache_file: PathBuf,
        reader: ZstdReader,
    }

    fn open(blob: &[u8], frames: Vec<Frame>, size: u64, budget: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache_file = dir.path().join("cache").join("layer.tar");
        let cache = Arc::new(SpanCache::new(budget));
        let reader =
            ZstdReader::new(blob_file(blob), frames, size, cache, 3, cache_file.clone()).unwrap();
        Fixture {
            _dir: dir,
            cache_file,
            reader,
        }
    }

    fn check_reads(r: &ZstdReader, data: &[u8], max_read: u64) {
        let len = data.len() as u64;
        let mut rng = XorShift(len ^ 0x51_7cc1_b727_220a);
        for _ in 0..300 {
            let off = rng.below(len + 64);
            let n = rng.below(max_read) as usize;
            let mut buf = vec![0xaau8; n];
            let got = r.read_at(off, &mut buf).unwrap();
            let want = data
                .get(off as usize..)
                .map_or(&[][..], |d| &d[..n.min(d.len())]);
            assert_eq!(got, want.len(), "read of {n} at {off}");
            assert!(&buf[..got] == want, "read of {n} at {off} differs");
            assert!(r.cache.used() <= r.cache.budget());
        }
        let mut back = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = r.read_at(back.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(back == data, "sequential read differs");
        assert_eq!(r.read_at(len, &mut buf).unwrap(), 0);
        assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
    }

    /// Independently compressed chunks, concatenated: a multi-frame stream, and its frames.
    fn multi_frame(data: &[u8], chunk: usize) -> (Vec<u8>, Vec<Frame>) {
        let mut blob = Vec::new();
        let mut frames = Vec::new();
        for (i, part) in data.chunks(chunk).enumerate() {
            frames.push(Frame {
                input: blob.len() as u64,
                out: (i * chunk) as u64,
            });
            blob.extend(zst(part, 3));
        }
        (blob, frames)
    }

    #[test]
    fn single_frame_goes_through_a_local_copy() {
        let data = semi(3 << 20, 21);
        let blob = zst(&data, 3);
        let (out, frames) = index(&blob).unwrap();
        assert!(out == data);
        assert_eq!(frames, vec![Frame { input: 0, out: 0 }]);
        let f = open(&blob, frames.clone(), data.len() as u64, 4 << 20);
        assert!(f.reader.uses_local_copy());
        assert!(!f.cache_file.exists());
        check_reads(&f.reader, &data, 300_000);
        assert_eq!(fs::read(&f.cache_file).unwrap().len(), data.len());
        // No temporary files are left beside it.
        let names: Vec<_> = fs::read_dir(f.cache_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("layer.tar")]);

        // A second reader reuses the copy, even with the blob gone bad.
        let cache = Arc::new(SpanCache::new(4 << 20));
        let r = ZstdReader::new(
            blob_file(b"garbage"),
            frames,
            data.len() as u64,
            cache,
            4,
            f.cache_file.clone(),
        )
        .unwrap();
        check_reads(&r, &data, 100_000);
    }

    #[test]
    fn a_small_single_frame_is_cached_in_memory() {
        let data = semi(500_000, 22);
        let blob = zst(&data, 19);
        let (_, frames) = index(&blob).unwrap();
        let f = open(&blob, frames, data.len() as u64, 4 << 20);
        assert!(!f.reader.uses_local_copy());
        check_reads(&f.reader, &data, 100_000);
        assert!(!f.cache_file.exists());
        assert_eq!(f.reader.cache.used(), data.len() as u64);
    }

    #[test]
    fn multi_frame_is_read_by_frame() {
        let data = semi(4 << 20, 23);
        let (blob, want) = multi_frame(&data, 300_000);
        let (out, frames) = index(&blob).unwrap();
        assert!(out == data);
        assert_eq!(frames, want);
        let f = open(&blob, frames, data.len() as u64, 2 << 20);
        assert!(!f.reader.uses_local_copy());
        check_reads(&f.reader, &data, 700_000);
        assert!(!f.cache_file.exists());
    }

    #[test]
    fn incompressible_and_zero_frames() {
        let mut data = random(1 << 20, 24);
        data.extend(vec![0u8; 3 << 20]);
        let (blob, want) = multi_frame(&data, 1 << 20);
        let (out, frames) = index(&blob).unwrap();
        assert!(out == data);
        assert_eq!(frames, want);
        let f = open(&blob, frames.clone(), data.len() as u64, 8 << 20);
        assert!(!f.reader.uses_local_copy());
        check_reads(&f.reader, &data, 300_000);
        // The same frames with a cache too small for them: a local copy.
        let f = open(&blob, frames, data.len() as u64, 2 << 20);
        assert!(f.reader.uses_local_copy());
        check_reads(&f.reader, &data, 300_000);
    }

    #[test]
    fn skippable_frames_and_zero_padding_are_passed_over() {
        let data = semi(200_000, 25);
        let skippable = |n: u32| {
            let mut f = vec![0x5a, 0x2a, 0x4d, 0x18];
            f.extend(n.to_le_bytes());
            f.extend(vec![7u8; n as usize]);
            f
        };
        let mut blob = skippable(10);
        let first = blob.len() as u64;
        blob.extend(zst(&data[..50_000], 3));
        blob.extend(skippable(0));
        let second = blob.len() as u64;
        blob.extend(zst(&data[50_000..], 3));
        blob.extend(skippable(100));
        blob.extend(vec![0u8; 5000]);
        let mut input = BufReader::with_capacity(4096, &blob[..]);
        let mut out = Vec::new();
        let frames = decompress_indexed(&mut input, &mut out).unwrap();
        assert!(input.fill_buf().unwrap().is_empty());
        assert!(out == data);
        assert_eq!(
            frames,
            vec![
                Frame {
                    input: first,
                    out: 0
                },
                Frame {
                    input: second,
                    out: 50_000
                }
            ]
        );
        let f = open(&blob, frames, data.len() as u64, 1 << 20);
        check_reads(&f.reader, &data, 100_000);

        blob.push(9);
        let err = index(&blob).unwrap_err();
        assert!(
            matches!(err, Error::TrailingGarbage { offset } if offset == blob.len() as u64 - 1),
            "{err}"
        );
    }

    #[test]
    fn tiny_and_empty_streams() {
        for data in [&b""[..], b"x", b"hello, world"] {
            let blob = zst(data, 3);
            let (out, frames) = index(&blob).unwrap();
            assert_eq!(out, data);
            assert_eq!(frames, vec![Frame { input: 0, out: 0 }]);
            let f = open(&blob, frames, data.len() as u64, 1 << 20);
            check_reads(&f.reader, data, 20);
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() {
        let data = semi(300_000, 26);
        let (blob, _) = multi_frame(&data, 100_000);
        assert!(matches!(
            index(b"").unwrap_err(),
            Error::Truncated { offset: 0 }
        ));
        assert!(matches!(
            index(b"not zstd").unwrap_err(),
            Error::Corrupt { .. }
        ));
        let mut rng = XorShift(27);
        for _ in 0..40 {
            let cut = 1 + rng.below(blob.len() as u64 - 1) as usize;
            let err = index(&blob[..cut]).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::Corrupt { .. }),
                "cut at {cut}: {err}"
            );
        }
        // zstd frames carry no checksum by default, so a flip may go unseen; it must never
        // panic, and a flip in a frame header is an error.
        for _ in 0..200 {
            let mut bad = blob.clone();
            let at = rng.below(blob.len() as u64) as usize;
            bad[at] ^= 1 << rng.below(8);
            let _ = index(&bad);
        }
        let mut bad = blob.clone();
        bad[0] ^= 0xff;
        assert!(index(&bad).is_err());
    }

    #[test]
    fn reads_of_a_damaged_blob_are_errors() {
        let data = semi(1 << 20, 28);
        let (blob, frames) = multi_frame(&data, 200_000);
        let mut buf = vec![0u8; 1000];
        // Truncated on disk after indexing, read by frame.
        let f = open(
            &blob[..blob.len() - 100],
            frames.clone(),
            data.len() as u64,
            4 << 20,
        );
        let err = f
            .reader
            .read_at(data.len() as u64 - 10, &mut buf)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // Read through a local copy: the copy fails and is not left behind.
        let f = open(
            &blob[..blob.len() - 100],
            frames.clone(),
            data.len() as u64,
            100_000,
        );
        assert!(f.reader.uses_local_copy());
        let err = f.reader.read_at(0, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(!f.cache_file.exists());
        // Garbage in a frame.
        let mut bad = blob.clone();
        let at = frames[2].input as usize + 20;
        for b in &mut bad[at..at + 200] {
            *b = 0xff;
        }
        let f = open(&bad, frames.clone(), data.len() as u64, 4 << 20);
        let err = f.reader.read_at(frames[2].out + 10, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // A frame list that makes no sense is refused.
        let cache = Arc::new(SpanCache::new(1 << 20));
        let mut reordered = frames.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            ZstdReader::new(
                blob_file(&blob),
                reordered,
                data.len() as u64,
                cache,
                0,
                "x".into()
            ),
            Err(Error::BadIndex(_))
        ));
    }

    #[test]
    fn a_local_copy_of_the_wrong_length_is_replaced() {
        let data = semi(2 << 20, 29);
        let blob = zst(&data, 3);
        let (_, frames) = index(&blob).unwrap();
        let f = open(&blob, frames, data.len() as u64, 1 << 20);
        fs::create_dir_all(f.cache_file.parent().unwrap()).unwrap();
        fs::write(&f.cache_file, b"stale").unwrap();
        check_reads(&f.reader, &data, 100_000);
        assert_eq!(
            fs::metadata(&f.cache_file).unwrap().len(),
            data.len() as u64
        );
    }

    #[test]
    fn concurrent_first_reads_share_one_local_copy() {
        let data = semi(3 << 20, 30);
        let blob = zst(&data, 3);
        let (_, frames) = index(&blob).unwrap();
        let f = open(&blob, frames, data.len() as u64, 1 << 20);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (r, data) = (&f.reader, &data);
                s.spawn(move || {
                    let mut rng = XorShift(t + 1);
                    let mut buf = vec![0u8; 50_000];
                    for _ in 0..50 {
                        let off = rng.below(data.len() as u64);
                        let n = r.read_at(off, &mut buf).unwrap();
                        assert!(buf[..n] == data[off as usize..off as usize + n]);
                    }
                });
            }
        });
    }

    #[test]
    fn output_of_the_zstd_tool() {
        let data = semi(3 << 20, 31);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::write(&path, &data).unwrap();
        let out = match Command::new("zstd")
            .args(["-c", "-q", "-3"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipping: cannot run zstd: {e}");
                return;
            }
        };
        assert!(out.status.success());
        let (back, frames) = index(&out.stdout).unwrap();
        assert!(back == data);
        assert_eq!(frames.len(), 1);
        let f = open(&out.stdout, frames, data.len() as u64, 1 << 20);
        check_reads(&f.reader, &data, 300_000);
        // The tool's multi-file output is several frames: compress two files to one stream.
        let path2 = dir.path().join("data2");
        fs::write(&path2, &data[..100_000]).unwrap();
        let out = Command::new("zstd")
            .args(["-c", "-q", "--no-check"])
            .arg(&path)
            .arg(&path2)
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut both = data.clone();
        both.extend_from_slice(&data[..100_000]);
        let (back, frames) = index(&out.stdout).unwrap();
        assert!(back == both);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].out, data.len() as u64);
    }
}
