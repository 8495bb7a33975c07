//! The layer index: every entry of a layer's tar with its metadata and where its bytes lie in
//! the uncompressed stream, plus what is needed to start decompressing mid-stream.
//!
//! Built once, in the same pass that verifies the layer, and kept beside the blobs at
//! `STORE/layerfs/indexes/<hex>.idx`. The file is versioned and checksummed; a stale, foreign or
//! corrupt index is rejected on load (and rebuilt by the caller), never trusted.
//!
//! The file, all integers little-endian or LEB128 varints (`v`), `Δ` a difference from the
//! previous element (wrapping, so any values round-trip), `z` a zigzag-encoded signed varint:
//!
//! ```text
//! "LAYERFSIDX\0"                          magic
//! u32 FORMAT_VERSION
//! 64 hex digits                           blob digest (sha256 of the compressed layer)
//! 64 hex digits                           diff_id (sha256 of the uncompressed tar)
//! u8 compression                          0 none, 1 gzip, 2 zstd
//! v uncompressed_size
//! u8 access                               0 plain, 1 gzip checkpoints, 2 zstd frames
//!   gzip: v count, then each: v Δout, v Δinput, u8 bits, packed window
//!   zstd: v count, then each: v Δinput, v Δout
//! packed entries, which unpacked are:
//!   v entry count, then each entry:
//!   v len, path | u8 kind | v mode | v uid | v gid | z Δmtime | v mtime_nsec | v size
//!   v len, link | v dev_major | v dev_minor | v xattr count, then each: v len, name, v len, value
//!   u8 data: 0 none | 1 contiguous, v offset | 2 sparse, v offset, v count, each: v offset, v len
//! 64 hex digits                           sha256 of everything above
//! ```
//!
//! "packed" is `v length, u8 method (0 stored, 1 raw deflate), v stored length, bytes`: gzip
//! windows and entries (paths share long prefixes) are deflated unless that does not help,
//! which keeps an index to a few percent of its compressed layer. Decoding trusts no length:
//! every length and count is checked against the bytes that remain before anything is
//! allocated for it, and a packed length against what deflate can produce from the stored
//! bytes, so a damaged or hostile file costs memory only in proportion to its size.

use std::io::{Read, Write};
use std::sync::Arc;

use super::Compression;
use crate::digest::Digest;

/// What a tar entry is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    File,
    Dir,
    Symlink,
    /// A hard link to an earlier entry of the same layer (`Entry::link` names it).
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// Where an entry's content lies in the uncompressed tar stream.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Data {
    /// No content (directories, links, devices, empty files).
    #[default]
    None,
    /// `Entry::size` bytes starting at `offset`.
    Contiguous { offset: u64 },
    /// A sparse file: the stored segments follow one another from `offset`; `map` gives each
    /// segment's (logical offset, length) in the file. Everything else reads as zeros.
    Sparse { offset: u64, map: Vec<(u64, u64)> },
}

/// One tar entry, after pax, GNU long-name and sparse headers were applied.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// Path as bytes (not necessarily UTF-8), normalised: no leading `/` or `./`, no trailing
    /// `/`, no empty or `.` components. The root directory is the empty path. A path with a
    /// `..` component never gets here (the indexer rejects it).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Logical size of a regular file (sparse files: the size with holes).
    pub size: u64,
    /// Symlink target as stored, or the normalised path of a hard link's target.
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes (`SCHILY.xattr.*` and libarchive's `LIBARCHIVE.xattr.*`), in order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Data,
}

/// Version of the file format; an index of another version is rebuilt, never read.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 11] = b"LAYERFSIDX\0";
/// A sha256 digest as stored: 64 lowercase hex digits.
const DIGEST_HEX: usize = 64;
/// deflate's window: no gzip checkpoint needs more history than this.
const MAX_WINDOW: usize = 32 << 10;
/// deflate's largest compression ratio (a 258-byte match in two bits): a window claiming more
/// bytes than its compressed form can give is corrupt, found before allocating for it.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Deflate level for windows and entries: the fastest, because the index is written in the
/// pull's single pass (level 6 cost a tenth of the pull's CPU) and higher levels shrink
/// windows and entries little.
const PACK_LEVEL: u32 = 1;
/// The fewest bytes each element can take when encoded; a count is accepted only if that many
/// elements could fit in the bytes that remain.
const MIN_ENTRY: usize = 13;
const MIN_CHECKPOINT: usize = 6;
const MIN_FRAME: usize = 2;
const MIN_XATTR: usize = 2;
const MIN_SEGMENT: usize = 2;
/// Longest LEB128 encoding of a u64.
const MAX_VARINT: usize = 10;
const NANOS_PER_SECOND: u32 = 1_000_000_000;

/// The index of one layer blob: built once, in the pass that verifies the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    /// Digest of the (compressed) blob, as in the manifest.
    pub blob: Digest,
    /// Digest of the uncompressed tar, as in the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    pub compression: Compression,
    pub uncompressed_size: u64,
    /// How to reach an offset of the uncompressed stream.
    pub access: Access,
    /// The tar's entries in stream order.
    pub entries: Vec<Entry>,
}

/// How to read the uncompressed stream from a given offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The blob is the uncompressed stream.
    Plain,
    /// Resume inflating at the nearest checkpoint.
    Gzip(Vec<super::gzip::Checkpoint>),
    /// Start decompressing at the nearest frame.
    Zstd(Vec<super::zstd::Frame>),
}

/// Why an index file was refused; each means "rebuild it".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not a layerfs layer index (bad magic number)")]
    Magic,
    #[error(
        "layer index format version {found}, but this layerfs reads version {expected}; \
         the index must be rebuilt"
    )]
    Version { found: u32, expected: u32 },
    #[error("layer index is truncated")]
    Truncated,
    #[error("layer index checksum mismatch: the file is corrupt and must be rebuilt")]
    Checksum,
    #[error("layer index is malformed: {0}")]
    Malformed(&'static str),
}

impl LayerIndex {
    /// The index as bytes for its file (see the module documentation for the format). Fails
    /// only if a window kept in an index file cannot be read back.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut w = Encoder(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.0.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        w.0.extend_from_slice(self.blob.hex().as_bytes());
        w.0.extend_from_slice(self.diff_id.hex().as_bytes());
        w.u8(match self.compression {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        });
        w.varint(self.uncompressed_size);
        match &self.access {
            Access::Plain => w.u8(0),
            Access::Gzip(checkpoints) => {
                w.u8(1);
                w.len(checkpoints.len());
                let (mut out, mut input) = (0u64, 0u64);
                for c in checkpoints {
                    w.varint(c.out.wrapping_sub(out));
                    w.varint(c.input.wrapping_sub(input));
                    (out, input) = (c.out, c.input);
                    w.u8(c.bits);
                    match c.window.stored()? {
                        // Kept deflated since the index was read: written back as it was.
                        (true, bytes) => {
                            w.len(c.window.len());
                            w.u8(1);
                            w.bytes(&bytes);
                        }
                        (false, raw) => w.packed(&raw),
                    }
                }
            }
            Access::Zstd(frames) => {
                w.u8(2);
                w.len(frames.len());
                let (mut input, mut out) = (0u64, 0u64);
                for f in frames {
                    w.varint(f.input.wrapping_sub(input));
                    w.varint(f.out.wrapping_sub(out));
                    (input, out) = (f.input, f.out);
                }
            }
        }
        w.packed(&encode_entries(&self.entries));
        let checksum = Digest::of(&w.0);
        w.0.extend_from_slice(checksum.hex().as_bytes());
        Ok(w.0)
    }

    /// Read an index file, refusing anything that is not exactly what [`encode`] wrote for
    /// this [`FORMAT_VERSION`].
    ///
    /// [`encode`]: LayerIndex::encode
    pub fn decode(bytes: &[u8]) -> Result<LayerIndex, IndexError> {
        LayerIndex::decode_in(bytes, None)
    }

    /// `decode` of the index file `file`, whose bytes are `bytes`: the gzip windows are not
    /// copied out but read from the file when used.
    pub fn decode_file(bytes: &[u8], file: std::fs::File) -> Result<LayerIndex, IndexError> {
        LayerIndex::decode_in(bytes, Some(Arc::new(file)))
    }

    fn decode_in(bytes: &[u8], file: Option<Arc<std::fs::File>>) -> Result<LayerIndex, IndexError> {
        let (magic, rest) = bytes
            .split_at_checked(MAGIC.len())
            .ok_or(IndexError::Truncated)?;
        if magic != MAGIC {
            return Err(IndexError::Magic);
        }
        let version = rest
            .first_chunk::<4>()
            .map(|v| u32::from_le_bytes(*v))
            .ok_or(IndexError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(IndexError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let split = bytes
            .len()
            .checked_sub(DIGEST_HEX)
            .filter(|&n| n >= MAGIC.len() + 4)
            .ok_or(IndexError::Truncated)?;
        let (covered, checksum) = bytes.split_at_checked(split).ok_or(IndexError::Truncated)?;
        if Digest::of(covered).hex().as_bytes() != checksum {
            return Err(IndexError::Checksum);
        }
        let mut r = Decoder(covered.get(MAGIC.len() + 4..).unwrap_or_default());
        let blob = r.digest()?;
        let diff_id = r.digest()?;
        let compression = match r.u8()? {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Zstd,
            _ => return Err(IndexError::Malformed("unknown compression")),
        };
        let uncompressed_size = r.varint()?;
        let access = match r.u8()? {
            0 => Access::Plain,
            1 => {
                let count = r.count(MIN_CHECKPOINT)?;
                let mut checkpoints = Vec::with_capacity(count);
                let (mut out, mut input) = (0u64, 0u64);
                for _ in 0..count {
                    out = out.wrapping_add(r.varint()?);
                    input = input.wrapping_add(r.varint()?);
                    let bits = r.u8()?;
                    let (len, deflated, stored) = r.window()?;
                    let window = match &file {
                        Some(file) => {
                            let start = stored.as_ptr() as usize - bytes.as_ptr() as usize;
                            super::gzip::Window::in_file(
                                len,
                                deflated,
                                file.clone(),
                                start as u64,
                                stored.len(),
                            )
                        }
                        None if deflated => super::gzip::Window::deflated(len, stored.to_vec()),
                        None => super::gzip::Window::raw(stored.to_vec()),
                    };
                    checkpoints.push(super::gzip::Checkpoint {
                        out,
                        input,
                        bits,
                        window,
                    });
                }
                Access::Gzip(checkpoints)
            }
            2 => {
                let count = r.count(MIN_FRAME)?;
                let mut frames = Vec::with_capacity(count);
                let (mut input, mut out) = (0u64, 0u64);
                for _ in 0..count {
                    input = input.wrapping_add(r.varint()?);
                    out = out.wrapping_add(r.varint()?);
                    frames.push(super::zstd::Frame { input, out });
                }
                Access::Zstd(frames)
            }
            _ => return Err(IndexError::Malformed("unknown access method")),
        };
        let packed = r.packed(usize::MAX)?;
        if !r.0.is_empty() {
            return Err(IndexError::Malformed("bytes after the entries"));
        }
        let entries = decode_entries(&packed)?;
        Ok(LayerIndex {
            blob,
            diff_id,
            compression,
            uncompressed_size,
            access,
            entries,
        })
    }
}

fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut w = Encoder(Vec::new());
    w.len(entries.len());
    let mut mtime = 0i64;
    for e in entries {
        w.bytes(&e.path);
        w.u8(kind_tag(e.kind));
        w.varint(u64::from(e.mode));
        w.varint(e.uid);
        w.varint(e.gid);
        w.varint(zigzag(e.mtime.wrapping_sub(mtime)));
        mtime = e.mtime;
        w.varint(u64::from(e.mtime_nsec));
        w.varint(e.size);
        w.bytes(&e.link);
        w.varint(u64::from(e.dev_major));
        w.varint(u64::from(e.dev_minor));
        w.len(e.xattrs.len());
        for (name, value) in &e.xattrs {
            w.bytes(name);
            w.bytes(value);
        }
        match &e.data {
            Data::None => w.u8(0),
            Data::Contiguous { offset } => {
                w.u8(1);
                w.varint(*offset);
            }
            Data::Sparse { offset, map } => {
                w.u8(2);
                w.varint(*offset);
                w.len(map.len());
                for &(off, len) in map {
                    w.varint(off);
                    w.varint(len);
                }
            }
        }
    }
    w.0
}

fn decode_entries(unpacked: &[u8]) -> Result<Vec<Entry>, IndexError> {
    let mut r = Decoder(unpacked);
    let count = r.count(MIN_ENTRY)?;
    let mut entries = Vec::with_capacity(count);
    let mut mtime = 0i64;
    for _ in 0..count {
        let path = r.bytes()?.to_vec();
        let kind = kind_of(r.u8()?)?;
        let mode = r.u32()?;
        let uid = r.varint()?;
        let gid = r.varint()?;
        mtime = mtime.wrapping_add(unzigzag(r.varint()?));
        let mtime_nsec = r.u32()?;
        if mtime_nsec >= NANOS_PER_SECOND {
            return Err(IndexError::Malformed("nanoseconds out of range"));
        }
        let size = r.varint()?;
        let link = r.bytes()?.to_vec();
        let dev_major = r.u32()?;
        let dev_minor = r.u32()?;
        let xattr_count = r.count(MIN_XATTR)?;
        let mut xattrs = Vec::with_capacity(xattr_count);
        for _ in 0..xattr_count {
            let name = r.bytes()?.to_vec();
            xattrs.push((name, r.bytes()?.to_vec()));
        }
        let data = match r.u8()? {
            0 => Data::None,
            1 => Data::Contiguous {
                offset: r.varint()?,
            },
            2 => {
                let offset = r.varint()?;
                let segments = r.count(MIN_SEGMENT)?;
                let mut map = Vec::with_capacity(segments);
                for _ in 0..segments {
                    map.push((r.varint()?, r.varint()?));
                }
                Data::Sparse { offset, map }
            }
            _ => return Err(IndexError::Malformed("unknown data kind")),
        };
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            size,
            link,
            dev_major,
            dev_minor,
            xattrs,
            data,
        });
    }
    if !r.0.is_empty() {
        return Err(IndexError::Malformed("bytes after the last entry"));
    }
    Ok(entries)
}

fn kind_tag(kind: Kind) -> u8 {
    match kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Hardlink => 3,
        Kind::Char => 4,
        Kind::Block => 5,
        Kind::Fifo => 6,
    }
}

fn kind_of(tag: u8) -> Result<Kind, IndexError> {
    Ok(match tag {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Hardlink,
        4 => Kind::Char,
        5 => Kind::Block,
        6 => Kind::Fifo,
        _ => return Err(IndexError::Malformed("unknown entry kind")),
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    /// Bytes deflated, or stored when deflating does not make them smaller.
    fn packed(&mut self, raw: &[u8]) {
        self.len(raw.len());
        let deflated = (!raw.is_empty())
            .then(|| {
                let level = flate2::Compression::new(PACK_LEVEL);
                let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
                e.write_all(raw).and_then(|()| e.finish()).ok()
            })
            .flatten()
            .filter(|d| d.len() < raw.len());
        match deflated {
            Some(d) => {
                self.u8(1);
                self.bytes(&d);
            }
            None => {
                self.u8(0);
                self.bytes(raw);
            }
        }
    }
}

/// Reads fields off the front of the remaining bytes.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(IndexError::Malformed("a field runs past the end"))?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, IndexError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(IndexError::Malformed("a field runs past the end"))?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, IndexError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may only hold the top bit of a u64.
            if i == MAX_VARINT - 1 && bits > 1 {
                return Err(IndexError::Malformed("a number is out of range"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(IndexError::Malformed("a number is out of range"))
    }

    fn u32(&mut self) -> Result<u32, IndexError> {
        u32::try_from(self.varint()?).map_err(|_| IndexError::Malformed("a number is out of range"))
    }

    /// A length that must fit in what remains.
    fn len(&mut self) -> Result<usize, IndexError> {
        self.count(1)
    }

    /// A count of elements that take at least `min` bytes each.
    fn count(&mut self, min: usize) -> Result<usize, IndexError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| n.checked_mul(min).is_some_and(|need| need <= self.0.len()))
            .ok_or(IndexError::Malformed("a length or count exceeds the data"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], IndexError> {
        let n = self.len()?;
        self.take(n)
    }

    fn digest(&mut self) -> Result<Digest, IndexError> {
        let hex = self.take(DIGEST_HEX)?;
        std::str::from_utf8(hex)
            .ok()
            .and_then(|hex| format!("sha256:{hex}").parse().ok())
            .ok_or(IndexError::Malformed("invalid digest"))
    }

    /// A packed field as stored: its raw length (at most `max`), whether it is deflated, and
    /// its bytes. A deflated field claiming more than deflate can produce from its bytes is
    /// refused here, before anything is allocated for it.
    fn packed_parts(&mut self, max: usize) -> Result<(usize, bool, &'a [u8]), IndexError> {
        let raw_len = self.varint()?;
        let method = self.u8()?;
        let stored = self.bytes()?;
        let too_large = IndexError::Malformed("a packed field is too large");
        let raw = usize::try_from(raw_len)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(too_large.clone())?;
        match method {
            0 if stored.len() == raw => Ok((raw, false, stored)),
            0 => Err(IndexError::Malformed("a stored field has the wrong length")),
            1 if raw_len > (stored.len() as u64).saturating_mul(MAX_DEFLATE_RATIO) => {
                Err(too_large)
            }
            1 => Ok((raw, true, stored)),
            _ => Err(IndexError::Malformed("unknown packing method")),
        }
    }

    /// A packed gzip window, left deflated until used (see `gzip::Window`).
    fn window(&mut self) -> Result<(usize, bool, &'a [u8]), IndexError> {
        self.packed_parts(MAX_WINDOW)
    }

    /// Packed bytes (see the module documentation), at most `max` of them.
    fn packed(&mut self, max: usize) -> Result<Vec<u8>, IndexError> {
        let (raw, deflated, stored) = self.packed_parts(max)?;
        if !deflated {
            return Ok(stored.to_vec());
        }
        let mut out = Vec::with_capacity(raw);
        flate2::read::DeflateDecoder::new(stored)
            .take(raw as u64 + 1)
            .read_to_end(&mut out)
            .ok()
            .filter(|_| out.len() == raw)
            .ok_or(IndexError::Malformed("a packed field does not inflate"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::gzip::Checkpoint;
    use super::super::zstd::Frame;
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// Text-like bytes, compressible as real layer content is.
        fn words(&mut self, n: usize) -> Vec<u8> {
            const WORDS: &[&str] = &[
                "the", "layer", "index", "static", "const", "return", "import", "function",
                "value", "error", "self", "struct", "/usr/lib", "{\n", "}\n", "    ", "=",
                "license", "python3", "package", "0x1f", "true", "false", "null", "\n",
            ];
            let mut out = Vec::with_capacity(n + 16);
            while out.len() < n {
                let word = WORDS[(self.next() % WORDS.len() as u64) as usize];
                out.extend_from_slice(word.as_bytes());
                out.push(b' ');
            }
            out.truncate(n);
            out
        }
    }

    fn digest(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn rich_entries() -> Vec<Entry> {
        vec![
            Entry {
                kind: Kind::Dir,
                mode: 0o755,
                ..Default::default()
            },
            Entry {
                path: b"usr/bin/caf\xe9".to_vec(),
                mode: 0o4755,
                uid: u64::MAX,
                gid: 1 << 40,
                mtime: i64::MIN,
                mtime_nsec: 999_999_999,
                size: 12345,
                xattrs: vec![
                    (
                        b"security.capability".to_vec(),
                        vec![1, 0, 0, 2, 0x20, 0, 0, 0],
                    ),
                    (b"user.empty".to_vec(), vec![]),
                    (b"user.bin".to_vec(), b"a\0b\xff".to_vec()),
                ],
                data: Data::Contiguous { offset: 1024 },
                ..Default::default()
            },
            Entry {
                path: b"var/sparse".to_vec(),
                mtime: i64::MAX,
                size: u64::MAX,
                data: Data::Sparse {
                    offset: 1 << 50,
                    map: vec![(0, 1), (1 << 40, 4096), (u64::MAX - 1, 1)],
                },
                ..Default::default()
            },
            Entry {
                path: b"link".to_vec(),
                kind: Kind::Symlink,
                mtime: -1,
                link: b"../x/\xff".to_vec(),
                ..Default::default()
            },
            Entry {
                path: b"hard".to_vec(),
                kind: Kind::Hardlink,
                link: b"usr/bin/caf\xe9".to_vec(),
                ..Default::default()
            },
            Entry {
                path: b"dev/null".to_vec(),
                kind: Kind::Char,
                mode: 0o666,
                dev_major: 1,
                dev_minor: 3,
                ..Default::default()
            },
            Entry {
                path: b"dev/sda".to_vec(),
                kind: Kind::Block,
                dev_major: u32::MAX,
                dev_minor: u32::MAX,
                ..Default::default()
            },
            Entry {
                path: b"fifo".to_vec(),
                kind: Kind::Fifo,
                ..Default::default()
            },
        ]
    }

    fn rich_index(access: Access) -> LayerIndex {
        LayerIndex {
            blob: digest("blob"),
            diff_id: digest("diff"),
            compression: match access {
                Access::Plain => Compression::None,
                Access::Gzip(_) => Compression::Gzip,
                Access::Zstd(_) => Compression::Zstd,
            },
            uncompressed_size: 3 << 30,
            access,
            entries: rich_entries(),
        }
    }

    /// Checkpoints with empty, compressible and incompressible windows.
    fn checkpoints(window: usize) -> Vec<Checkpoint> {
        let mut rng = Rng(7);
        vec![
            Checkpoint {
                out: 0,
                input: 10,
                bits: 0,
                window: vec![].into(),
            },
            Checkpoint {
                out: 1 << 20,
                input: 300_000,
                bits: 3,
                window: rng.words(window).into(),
            },
            Checkpoint {
                out: 2 << 20,
                input: 600_000,
                bits: 7,
                window: rng.bytes(window).into(),
            },
            Checkpoint {
                out: u64::MAX,
                input: 5,
                bits: 255,
                window: vec![0; window].into(),
            },
        ]
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame { input: 0, out: 0 },
            Frame {
                input: 100_000,
                out: 1 << 22,
            },
            Frame {
                input: 50,
                out: u64::MAX,
            },
        ]
    }

    /// Replace the checksum after editing the bytes it covers.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - DIGEST_HEX;
        let sum = Digest::of(&bytes[..body]);
        bytes[body..].copy_from_slice(sum.hex().as_bytes());
        bytes
    }

    #[test]
    fn round_trips() {
        let cases = [
            rich_index(Access::Plain),
            rich_index(Access::Gzip(checkpoints(MAX_WINDOW))),
            rich_index(Access::Gzip(vec![])),
            rich_index(Access::Zstd(frames())),
            LayerIndex {
                entries: vec![],
                ..rich_index(Access::Plain)
            },
        ];
        for index in cases {
            let bytes = index.encode().unwrap();
            // Windows read from the index file when used, and written back the same.
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&bytes).unwrap();
            let from_file = LayerIndex::decode_file(&bytes, file).unwrap();
            assert_eq!(from_file, index);
            assert!(from_file.encode().unwrap() == bytes);
            assert_eq!(LayerIndex::decode(&bytes), Ok(index));
        }
    }

    #[test]
    fn windows_are_compressed_when_that_helps() {
        let index = rich_index(Access::Gzip(checkpoints(MAX_WINDOW)));
        let raw: usize = checkpoints(MAX_WINDOW).iter().map(|c| c.window.len()).sum();
        let encoded = index.encode().unwrap().len();
        // The random window is stored as it is; the others shrink a lot.
        assert!(
            encoded < raw / 2,
            "{encoded} bytes for {raw} bytes of windows"
        );
        assert!(encoded > MAX_WINDOW, "{encoded}");
    }

    #[test]
    fn every_corruption_and_truncation_is_rejected() {
        let bytes = rich_index(Access::Gzip(checkpoints(600))).encode().unwrap();
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                let err = LayerIndex::decode(&bad).unwrap_err();
                let want = if i < MAGIC.len() {
                    IndexError::Magic
                } else if i < MAGIC.len() + 4 {
                    IndexError::Version {
                        found: u32::from_le_bytes(bad[11..15].try_into().unwrap()),
                        expected: FORMAT_VERSION,
                    }
                } else {
                    IndexError::Checksum
                };
                assert_eq!(err, want, "byte {i} ^ {flip:#x}");
            }
        }
        for len in 0..bytes.len() {
            assert!(LayerIndex::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LayerIndex::decode(&longer).is_err());
    }

    #[test]
    fn other_versions_are_reported() {
        let mut bytes = rich_index(Access::Plain).encode().unwrap();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        let want = IndexError::Version {
            found: 2,
            expected: FORMAT_VERSION,
        };
        assert_eq!(LayerIndex::decode(&bytes), Err(want.clone()));
        assert_eq!(LayerIndex::decode(&reseal(bytes)), Err(want));
        assert_eq!(
            LayerIndex::decode(b"LAYERFSIDX\0"),
            Err(IndexError::Truncated)
        );
        assert_eq!(
            LayerIndex::decode(b"PK\x03\x04 not an index"),
            Err(IndexError::Magic)
        );
    }

    /// Damage behind a valid checksum (a hostile file, or a bug): the parser itself must
    /// refuse it without panicking or allocating more than the input justifies.
    #[test]
    fn damage_behind_a_valid_checksum_is_refused_safely() {
        let good = rich_index(Access::Gzip(checkpoints(300))).encode().unwrap();
        let header = MAGIC.len() + 4;
        let mut rng = Rng(99);
        for round in 0..3000 {
            let mut bad = good.clone();
            let body = header..bad.len() - DIGEST_HEX;
            for _ in 0..1 + round % 4 {
                let i = body.start + (rng.next() as usize) % body.len();
                bad[i] = rng.next() as u8;
            }
            if round % 5 == 0 {
                let cut = body.start + (rng.next() as usize) % body.len();
                bad.drain(cut..body.end);
            }
            // Whatever it decodes to, it must not panic.
            let _ = LayerIndex::decode(&reseal(bad));
        }
        // The entries' parser, behind the packing.
        let entries = encode_entries(&rich_entries());
        for round in 0..3000 {
            let mut bad = entries.clone();
            for _ in 0..1 + round % 4 {
                let i = (rng.next() as usize) % bad.len();
                bad[i] = rng.next() as u8;
            }
            if round % 5 == 0 {
                bad.truncate((rng.next() as usize) % bad.len());
            }
            let _ = decode_entries(&bad);
        }
        // Pure noise after a valid header.
        for len in 0..400 {
            let mut bytes = MAGIC.to_vec();
            bytes.extend(FORMAT_VERSION.to_le_bytes());
            bytes.extend(rng.bytes(len));
            bytes.extend([0; DIGEST_HEX]);
            assert!(LayerIndex::decode(&reseal(bytes)).is_err());
        }
    }

    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = vec![];
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }

    /// `raw` packed as stored bytes.
    fn stored(raw: &[u8]) -> Vec<u8> {
        [
            varint(raw.len() as u64),
            vec![0],
            varint(raw.len() as u64),
            raw.to_vec(),
        ]
        .concat()
    }

    /// Bytes of a valid index up to (not including) its packed entries, for hand-made tails.
    fn prefix() -> Vec<u8> {
        let bytes = LayerIndex {
            entries: vec![],
            ..rich_index(Access::Plain)
        }
        .encode()
        .unwrap();
        // No entries: a count of 0, stored.
        let tail = stored(&[0]);
        assert!(bytes[..bytes.len() - DIGEST_HEX].ends_with(&tail));
        bytes[..bytes.len() - DIGEST_HEX - tail.len()].to_vec()
    }

    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        body.extend([0; DIGEST_HEX]);
        reseal(body)
    }

    #[test]
    fn huge_counts_and_lengths_are_refused() {
        let malformed = |entries: &[u8]| {
            let mut body = prefix();
            body.extend(stored(entries));
            LayerIndex::decode(&sealed(body))
        };
        let max_varint = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(
            malformed(&max_varint),
            Err(IndexError::Malformed("a length or count exceeds the data"))
        );
        assert_eq!(
            malformed(&[0xff; 11]),
            Err(IndexError::Malformed("a number is out of range"))
        );
        // One entry whose path claims more bytes than there are.
        assert_eq!(
            malformed(&[1, 100, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(IndexError::Malformed("a length or count exceeds the data"))
        );
        // A count that fits a usize but not the input, times the element size.
        assert_eq!(
            malformed(&varint((usize::MAX / 2) as u64)),
            Err(IndexError::Malformed("a length or count exceeds the data"))
        );
        assert_eq!(
            malformed(&[0, 0]),
            Err(IndexError::Malformed("bytes after the last entry"))
        );
        assert_eq!(malformed(&[0]).map(|i| i.entries), Ok(vec![]));
        // Entries claiming a gigabyte from a few deflated bytes.
        let mut body = prefix();
        body.extend([varint(1 << 30), vec![1, 3, 0x63, 0, 0]].concat());
        assert_eq!(
            LayerIndex::decode(&sealed(body)),
            Err(IndexError::Malformed("a packed field is too large"))
        );
    }

    #[test]
    fn window_bombs_are_refused() {
        let with_window = |window: &[u8]| {
            let mut body = MAGIC.to_vec();
            body.extend(FORMAT_VERSION.to_le_bytes());
            body.extend(digest("a").hex().as_bytes());
            body.extend(digest("b").hex().as_bytes());
            body.extend([1, 0, 1, 1, 0, 0, 0]); // gzip, size 0, gzip access, 1 checkpoint at 0/0/0
            body.extend(window);
            body.extend(stored(&[0])); // no entries
            LayerIndex::decode(&sealed(body))
        };
        // 32 KiB claimed from 3 deflated bytes: more than deflate can produce.
        assert_eq!(
            with_window(&[0x80, 0x80, 0x02, 1, 3, 0x63, 0, 0]),
            Err(IndexError::Malformed("a packed field is too large"))
        );
        // More than a deflate window.
        assert_eq!(
            with_window(&[0x81, 0x80, 0x02, 0, 0]),
            Err(IndexError::Malformed("a packed field is too large"))
        );
        // Deflated bytes that inflate to less than claimed: windows stay deflated until a
        // read resumes at their checkpoint, and that read is refused.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[5; 100]).unwrap();
        let d = e.finish().unwrap();
        let mut w = vec![101, 1, d.len() as u8];
        w.extend(&d);
        let window_of = |index: LayerIndex| match index.access {
            Access::Gzip(c) => c[0].window.clone(),
            _ => unreachable!(),
        };
        let short = window_of(with_window(&w).unwrap());
        assert_eq!(
            short.bytes().unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        w[0] = 100;
        assert_eq!(
            &*window_of(with_window(&w).unwrap()).bytes().unwrap(),
            &[5; 100]
        );
    }

    /// A layer like real ones (many files of text-like content, gzip-compressed):
    /// its index, windows every MiB included, stays well under 10% of the compressed layer.
    #[test]
    fn index_is_small_for_a_typical_layer() {
        let mut rng = Rng(3);
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..600 {
            let size = (rng.next() % 10_000) as usize;
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            let path = format!("usr/lib/python3/dist-packages/pkg{}/module_{i}.py", i % 40);
            builder
                .append_data(&mut h, path, rng.words(size).as_slice())
                .unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let compressed = gz.finish().unwrap().len();

        let mut ix = super::super::tar::TarIndexer::new();
        ix.write_all(&tar).unwrap();
        let entries = ix.finish().unwrap();
        let checkpoints = (0..tar.len())
            .step_by(1 << 20)
            .map(|out| Checkpoint {
                out: out as u64,
                input: out as u64 / 3,
                bits: 0,
                window: tar[out.saturating_sub(MAX_WINDOW)..out].to_vec().into(),
            })
            .collect();
        let index = LayerIndex {
            blob: digest("blob"),
            diff_id: Digest::of(&tar),
            compression: Compression::Gzip,
            uncompressed_size: tar.len() as u64,
            access: Access::Gzip(checkpoints),
            entries,
        };
        let bytes = index.encode().unwrap();
        eprintln!(
            "index: {} bytes, layer: {compressed} bytes gzip",
            bytes.len()
        );
        assert!(
            bytes.len() * 10 <= compressed,
            "index {} bytes for a {compressed}-byte layer",
            bytes.len()
        );
        assert_eq!(LayerIndex::decode(&bytes), Ok(index));
    }
}
