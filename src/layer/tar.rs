//! A streaming tar indexer: turns a layer's uncompressed tar stream into index entries, each
//! with the offset of its content in that stream, without keeping any file content.
//!
//! [`TarIndexer`] is push-based ([`std::io::Write`]), so the pull can feed it from the same pass
//! that hashes and stores the layer, in chunks of any size. It keeps only what describes entries:
//! one header block at a time, extended headers (GNU long names, pax records) and sparse maps,
//! each bounded, so its memory does not depend on the size of the files in the layer.
//!
//! Dialects: v7, ustar (prefix + name), GNU (long names and links, old sparse files, base-256
//! numbers) and pax (per-entry and global records, GNU sparse formats 0.0, 0.1 and 1.0).
//! Where tar readers disagree, this one follows Go's `archive/tar`, which the container runtimes
//! that build and extract layers use, so a mounted layer shows what they would extract:
//! - entries of header-only types (links, devices, directories, fifos) have no content,
//!   whatever their size field says;
//! - a pax `size` replaces the header's size, and is exactly the number of content bytes that
//!   follow the header (for sparse files: the stored bytes, not the logical size);
//! - a GNU long name or link wins over a pax `path` or `linkpath`; `GNU.sparse.name` wins over
//!   both;
//! - a lone zero block ends the archive; what follows is ignored.
//!
//! Global pax headers (which Go skips) set `uid`, `gid`, `mtime` and xattrs for the entries
//! after them, as POSIX says; a global `path`, `linkpath`, `size` or sparse map, meaningless for
//! every entry at once, is ignored with a warning. A pax record with an empty value cancels
//! that keyword (except xattrs, whose value may be empty).
//!
//! Invariants of what [`TarIndexer::finish`] returns: every path is normalised (see
//! [`Entry::path`]); no path or hard link target has a `..` component or a NUL byte; no entry is
//! named `.wh.`; a file's `Data` lies inside the stream, and a sparse map is sorted, without
//! overlaps, within the file's size, and its segments add up to the bytes stored.

use std::fmt;
use std::io;
use std::ops::Range;

use base64::Engine as _;

use super::index::{Data, Entry, Kind};

/// Tar works in blocks: headers, extended sparse headers and the padding of every content.
const BLOCK: usize = 512;
const BLOCK_U64: u64 = BLOCK as u64;

/// Largest content of one extended header (GNU long name or link, pax `x` or `g`). Real ones
/// hold a path (Linux: 4 KiB at most) or an xattr (64 KiB at most), so 1 MiB is ample; it is
/// also the limit of Go's `archive/tar`, so nothing it extracts is refused here.
const MAX_EXTENSION: u64 = 1 << 20;
/// Largest total of the extended headers in front of one entry: several may be chained, each
/// within [`MAX_EXTENSION`]; without this a stream of them would grow memory without end.
const MAX_PENDING_EXTENSIONS: u64 = 4 << 20;
/// Largest total of global pax headers in one archive (`git archive` writes one, with a
/// commit id); they are kept for the whole stream.
const MAX_GLOBAL_EXTENSIONS: u64 = 1 << 20;
/// Largest sparse map of one file, in bytes of its encoded form (GNU extended sparse blocks or
/// a pax 1.0 map): about 200,000 segments, far more than real sparse files (VM images,
/// databases) have, while bounding memory for a hostile stream.
const MAX_SPARSE_MAP: u64 = 4 << 20;

/// Where the fields of a header block are (POSIX ustar; GNU reuses the prefix area).
mod field {
    use std::ops::Range;

    pub const NAME: Range<usize> = 0..100;
    pub const MODE: Range<usize> = 100..108;
    pub const UID: Range<usize> = 108..116;
    pub const GID: Range<usize> = 116..124;
    pub const SIZE: Range<usize> = 124..136;
    pub const MTIME: Range<usize> = 136..148;
    pub const CHECKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: Range<usize> = 157..257;
    /// `ustar\0` then version `00` (POSIX), or `ustar  \0` (GNU), or nothing (v7).
    pub const MAGIC: Range<usize> = 257..265;
    pub const DEV_MAJOR: Range<usize> = 329..337;
    pub const DEV_MINOR: Range<usize> = 337..345;
    /// POSIX ustar only: the directory part of a name longer than 100 bytes.
    pub const PREFIX: Range<usize> = 345..500;
    /// GNU old sparse (`S`): four (offset, size) pairs of 12-byte numbers.
    pub const GNU_SPARSE: Range<usize> = 386..482;
    pub const GNU_IS_EXTENDED: usize = 482;
    pub const GNU_REALSIZE: Range<usize> = 483..495;
    /// GNU extended sparse block: 21 pairs, then the "more blocks follow" flag.
    pub const GNU_EXT_SPARSE: Range<usize> = 0..504;
    pub const GNU_EXT_IS_EXTENDED: usize = 504;
}

/// Size of one (offset, size) pair in GNU sparse headers.
const GNU_SPARSE_PAIR: usize = 24;

/// What went wrong with the tar stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("tar header at offset {offset}: {problem}")]
    Header { offset: u64, problem: Problem },
    #[error("tar entry {path:?} (header at offset {offset}): {problem}")]
    Entry {
        offset: u64,
        path: String,
        problem: Problem,
    },
    #[error("the tar stream ends inside {what} (at offset {offset}); the layer is truncated")]
    Truncated { offset: u64, what: &'static str },
}

/// The defect in one header or entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("checksum mismatch (stored {stored}, computed {computed}); the layer is corrupt")]
    Checksum { stored: u64, computed: u64 },
    #[error("the {field} field is not a valid number")]
    Number { field: &'static str },
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("malformed pax record: {0}")]
    PaxRecord(&'static str),
    #[error("pax record {key:?} has an invalid value")]
    PaxValue { key: String },
    #[error("malformed sparse file map: {0}")]
    Sparse(&'static str),
    #[error("the path has a `..` component, which would escape the layer's root")]
    PathTraversal,
    #[error("`.wh.` names neither a whiteout nor a file (OCI whiteouts are `.wh.NAME`)")]
    BareWhiteout,
    #[error("the name contains a NUL byte")]
    Nul,
    #[error("a {kind} cannot be the layer's root directory")]
    Root { kind: &'static str },
    #[error("hard link target {target:?}: {problem}")]
    LinkTarget {
        target: String,
        problem: Box<Problem>,
    },
    #[error("an extended header is not followed by the entry it describes")]
    DanglingExtension,
}

/// Indexes a tar stream written into it; see the module documentation.
pub struct TarIndexer {
    /// Bytes of the stream consumed so far.
    offset: u64,
    state: State,
    /// The bytes gathered so far of the header, extension or sparse block being read.
    buf: Vec<u8>,
    /// Extended headers read for the next entry.
    ext: Extensions,
    /// Global pax records in force.
    global: Pax,
    global_bytes: u64,
    entries: Vec<Entry>,
    /// The first error; every later write, and `finish`, return it.
    error: Option<Error>,
    /// Whether non-zero bytes after the end of the archive were reported.
    warned_trailing: bool,
}

enum State {
    /// Reading a header block.
    Header,
    /// Reading the content of a GNU long name or link, or of a pax header, padded to blocks.
    Extension {
        kind: ExtKind,
        size: usize,
        header: u64,
    },
    /// Reading the extended sparse blocks after an old GNU sparse header.
    GnuSparse(Box<Pending>),
    /// Reading the map at the start of a pax 1.0 sparse file's content, block by block.
    SparseMap(Box<Pending>, MapParser),
    /// Passing over content and padding.
    Skip(u64),
    /// After the end-of-archive marker: everything is ignored.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtKind {
    LongName,
    LongLink,
    Pax,
    GlobalPax,
}

/// A sparse file whose map is still being read.
struct Pending {
    entry: Entry,
    /// Offset of its header, for errors.
    header: u64,
    /// Content bytes that follow the header (for pax 1.0, the map included).
    stored: u64,
    /// (logical offset, size) pairs as read so far.
    map: Vec<(u64, u64)>,
    /// Bytes of extended sparse blocks or pax map read so far.
    map_bytes: u64,
}

impl Default for TarIndexer {
    fn default() -> Self {
        TarIndexer::new()
    }
}

impl TarIndexer {
    pub fn new() -> TarIndexer {
        TarIndexer {
            offset: 0,
            state: State::Header,
            buf: Vec::with_capacity(BLOCK),
            ext: Extensions::default(),
            global: Pax::default(),
            global_bytes: 0,
            entries: Vec::new(),
            error: None,
            warned_trailing: false,
        }
    }

    /// Bytes of the stream written so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// The entries of the archive, in stream order, once the whole stream was written.
    ///
    /// A stream that ends on a header boundary without the end-of-archive blocks is complete
    /// (Docker writes such layers); one that ends inside a header, an extended header or an
    /// entry's content is [`Error::Truncated`].
    pub fn finish(self) -> Result<Vec<Entry>, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let what = match &self.state {
            State::End => None,
            State::Header if self.buf.iter().any(|&b| b != 0) => Some("a header"),
            State::Header if !self.ext.is_empty() => Some("the entry of an extended header"),
            State::Header => None,
            State::Extension { .. } => Some("an extended header"),
            State::GnuSparse(_) => Some("a GNU sparse header"),
            State::SparseMap(..) => Some("a sparse file map"),
            State::Skip(_) => Some("an entry's content"),
        };
        match what {
            Some(what) => Err(Error::Truncated {
                offset: self.offset,
                what,
            }),
            None => Ok(self.entries),
        }
    }

    /// Consume `input`, in whatever state the previous write left off.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), Error> {
        while !input.is_empty() {
            match &mut self.state {
                State::Skip(remaining) => {
                    let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    self.offset += n as u64;
                    input = input.get(n..).unwrap_or_default();
                }
                State::End => {
                    if !self.warned_trailing && input.iter().any(|&b| b != 0) {
                        log::warn!(
                            "ignoring data after the end of the tar archive (offset {})",
                            self.offset
                        );
                        self.warned_trailing = true;
                    }
                    self.offset += input.len() as u64;
                    input = &[];
                }
                _ => {
                    let need = self.need();
                    let take = need.saturating_sub(self.buf.len()).min(input.len());
                    let (head, rest) = input.split_at_checked(take).unwrap_or((input, &[]));
                    self.buf.extend_from_slice(head);
                    self.offset += take as u64;
                    input = rest;
                    if self.buf.len() >= need {
                        let block = std::mem::take(&mut self.buf);
                        let result = self.complete(&block);
                        self.buf = block;
                        self.buf.clear();
                        result?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes the current reading state gathers before it can be processed.
    fn need(&self) -> usize {
        match &self.state {
            State::Extension { size, .. } => size.next_multiple_of(BLOCK),
            _ => BLOCK,
        }
    }

    /// Process a gathered header, extension or sparse block.
    fn complete(&mut self, gathered: &[u8]) -> Result<(), Error> {
        match std::mem::replace(&mut self.state, State::Header) {
            State::Header => self.header(gathered),
            State::Extension { kind, size, header } => {
                self.extension(kind, gathered.get(..size).unwrap_or(gathered), header)
            }
            State::GnuSparse(pending) => self.gnu_sparse_block(pending, gathered),
            State::SparseMap(pending, parser) => self.sparse_map_block(pending, parser, gathered),
            state @ (State::Skip(_) | State::End) => {
                self.state = state;
                Ok(())
            }
        }
    }

    fn header(&mut self, block: &[u8]) -> Result<(), Error> {
        let at = self.offset - BLOCK_U64;
        let header_error = |problem| Error::Header {
            offset: at,
            problem,
        };
        if block.iter().all(|&b| b == 0) {
            if !self.ext.is_empty() {
                return Err(header_error(Problem::DanglingExtension));
            }
            self.state = State::End;
            return Ok(());
        }
        let raw = parse_header(block).map_err(header_error)?;
        let kind = match raw.typeflag {
            b'L' => ExtKind::LongName,
            b'K' => ExtKind::LongLink,
            b'x' => ExtKind::Pax,
            b'g' => ExtKind::GlobalPax,
            _ => return self.entry(raw, at),
        };
        let too_large = |what, size, limit| header_error(Problem::TooLarge { what, size, limit });
        if raw.size > MAX_EXTENSION {
            return Err(too_large("an extended header", raw.size, MAX_EXTENSION));
        }
        if kind == ExtKind::GlobalPax {
            let total = self.global_bytes + raw.size;
            if total > MAX_GLOBAL_EXTENSIONS {
                return Err(too_large(
                    "global pax headers",
                    total,
                    MAX_GLOBAL_EXTENSIONS,
                ));
            }
            self.global_bytes = total;
        } else {
            let total = self.ext.bytes + raw.size;
            if total > MAX_PENDING_EXTENSIONS {
                return Err(too_large(
                    "the extended headers of one entry",
                    total,
                    MAX_PENDING_EXTENSIONS,
                ));
            }
            self.ext.bytes = total;
        }
        // Within MAX_EXTENSION, so it fits.
        let size = usize::try_from(raw.size).unwrap_or(usize::MAX);
        if size == 0 {
            return self.extension(kind, &[], at);
        }
        self.state = State::Extension {
            kind,
            size,
            header: at,
        };
        Ok(())
    }

    fn extension(&mut self, kind: ExtKind, content: &[u8], at: u64) -> Result<(), Error> {
        let header_error = |problem| Error::Header {
            offset: at,
            problem,
        };
        match kind {
            // An empty long name or link leaves the header's own in force.
            ExtKind::LongName => self.ext.long_name = non_empty(cstr(content)),
            ExtKind::LongLink => self.ext.long_link = non_empty(cstr(content)),
            ExtKind::Pax => {
                for (key, value) in parse_pax(content).map_err(header_error)? {
                    self.ext.pax.apply(key, value).map_err(header_error)?;
                }
            }
            ExtKind::GlobalPax => {
                for (key, value) in parse_pax(content).map_err(header_error)? {
                    self.global.apply(key, value).map_err(header_error)?;
                }
                if self.global.clear_per_entry_keys() {
                    log::warn!(
                        "tar global header at offset {at}: ignoring path, size or sparse \
                         records, which cannot apply to every entry"
                    );
                }
            }
        }
        Ok(())
    }

    /// A header that is an entry (not an extension): apply the extensions read before it,
    /// record it, and pass over its content.
    fn entry(&mut self, raw: RawHeader, at: u64) -> Result<(), Error> {
        let ext = std::mem::take(&mut self.ext);
        let pax = &ext.pax;
        let global = &self.global;
        let sparse_name = pax.sparse.name.as_deref().filter(|n| !n.is_empty());
        let raw_path: &[u8] = sparse_name
            .or(ext.long_name.as_deref())
            .or(pax.path.as_deref())
            .unwrap_or(&raw.name);
        let entry_error = |problem| Error::Entry {
            offset: at,
            path: String::from_utf8_lossy(raw_path).into_owned(),
            problem,
        };
        // Bytes of content that follow the header, for every type that has content.
        let content = pax.size.unwrap_or(raw.size);
        let kind = match raw.typeflag {
            b'0' | b'7' | b'S' => Kind::File,
            // Pre-POSIX archives mark directories with a trailing slash only.
            0 if raw_path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => {
                log::warn!(
                    "skipping tar entry {:?} of unknown type {:?} (header at offset {at})",
                    String::from_utf8_lossy(raw_path),
                    char::from(other)
                );
                return self.skip(content, at);
            }
        };
        let path = normalise(raw_path).map_err(entry_error)?;
        if path.is_empty() && kind != Kind::Dir {
            return Err(entry_error(Problem::Root {
                kind: kind_name(kind),
            }));
        }
        let raw_link: &[u8] = ext
            .long_link
            .as_deref()
            .or(pax.linkpath.as_deref())
            .unwrap_or(&raw.linkname);
        let link = match kind {
            Kind::Symlink if raw_link.contains(&0) => return Err(entry_error(Problem::Nul)),
            Kind::Symlink => raw_link.to_vec(),
            Kind::Hardlink => {
                let link_error = |problem| {
                    entry_error(Problem::LinkTarget {
                        target: String::from_utf8_lossy(raw_link).into_owned(),
                        problem: Box::new(problem),
                    })
                };
                let target = normalise(raw_link).map_err(link_error)?;
                if target.is_empty() {
                    return Err(link_error(Problem::Root { kind: "hard link" }));
                }
                target
            }
            _ => Vec::new(),
        };
        let (dev_major, dev_minor) = match kind {
            Kind::Char | Kind::Block => (
                pax.dev_major.unwrap_or(raw.dev_major),
                pax.dev_minor.unwrap_or(raw.dev_minor),
            ),
            _ => (0, 0),
        };
        let (mtime, mtime_nsec) = pax.mtime.or(global.mtime).unwrap_or((raw.mtime, 0));
        let mut xattrs = global.xattrs.clone();
        for (name, value) in &pax.xattrs {
            set_xattr(&mut xattrs, name, value);
        }
        let mut entry = Entry {
            path,
            kind,
            mode: raw.mode,
            uid: pax.uid.or(global.uid).unwrap_or(raw.uid),
            gid: pax.gid.or(global.gid).unwrap_or(raw.gid),
            mtime,
            mtime_nsec,
            size: 0,
            link,
            dev_major,
            dev_minor,
            xattrs,
            data: Data::None,
        };
        if kind != Kind::File {
            if raw.gnu_sparse.is_some() || !pax.sparse.is_empty() {
                return Err(entry_error(Problem::Sparse(
                    "only regular files can be sparse",
                )));
            }
            self.entries.push(entry);
            return Ok(());
        }

        if let Some(gnu) = raw.gnu_sparse {
            entry.size = gnu.realsize;
            let pending = Box::new(Pending {
                entry,
                header: at,
                stored: content,
                map: gnu.map,
                map_bytes: 0,
            });
            if gnu.extended {
                self.state = State::GnuSparse(pending);
                return Ok(());
            }
            return self.finish_sparse(*pending);
        }
        match pax.sparse.version().map_err(entry_error)? {
            None => {
                entry.size = content;
                if content > 0 {
                    entry.data = Data::Contiguous {
                        offset: self.offset,
                    };
                }
                self.entries.push(entry);
                self.skip(content, at)
            }
            Some(SparseVersion::V0) => {
                entry.size = pax.sparse.realsize.unwrap_or(content);
                let map = pax.sparse.map_v0().map_err(entry_error)?;
                self.finish_sparse(Pending {
                    entry,
                    header: at,
                    stored: content,
                    map,
                    map_bytes: 0,
                })
            }
            Some(SparseVersion::V1) => {
                entry.size = pax.sparse.realsize.unwrap_or(content);
                let pending = Box::new(Pending {
                    entry,
                    header: at,
                    stored: content,
                    map: Vec::new(),
                    map_bytes: 0,
                });
                if content == 0 {
                    return self.finish_sparse_map(*pending, MapParser::default());
                }
                self.state = State::SparseMap(pending, MapParser::default());
                Ok(())
            }
        }
    }

    /// Pass over `content` bytes and their padding.
    fn skip(&mut self, content: u64, at: u64) -> Result<(), Error> {
        let padded = content
            .checked_next_multiple_of(BLOCK_U64)
            .ok_or(Error::Header {
                offset: at,
                problem: Problem::Number { field: "size" },
            })?;
        self.state = if padded == 0 {
            State::Header
        } else {
            State::Skip(padded)
        };
        Ok(())
    }

    fn gnu_sparse_block(&mut self, mut pending: Box<Pending>, block: &[u8]) -> Result<(), Error> {
        pending.map_bytes += BLOCK_U64;
        let error = |problem| Error::Header {
            offset: pending.header,
            problem,
        };
        if pending.map_bytes > MAX_SPARSE_MAP {
            return Err(error(Problem::TooLarge {
                what: "a GNU sparse map",
                size: pending.map_bytes,
                limit: MAX_SPARSE_MAP,
            }));
        }
        let pairs = block.get(field::GNU_EXT_SPARSE).unwrap_or_default();
        parse_gnu_sparse_pairs(pairs, &mut pending.map).map_err(error)?;
        if block
            .get(field::GNU_EXT_IS_EXTENDED)
            .is_some_and(|&b| b != 0)
        {
            self.state = State::GnuSparse(pending);
            return Ok(());
        }
        self.finish_sparse(*pending)
    }

    fn sparse_map_block(
        &mut self,
        mut pending: Box<Pending>,
        mut parser: MapParser,
        block: &[u8],
    ) -> Result<(), Error> {
        pending.map_bytes += BLOCK_U64;
        let error = |problem| Error::Header {
            offset: pending.header,
            problem,
        };
        if pending.map_bytes > pending.stored {
            return Err(error(Problem::Sparse(
                "the map is longer than the entry's content",
            )));
        }
        if pending.map_bytes > MAX_SPARSE_MAP {
            return Err(error(Problem::TooLarge {
                what: "a pax sparse map",
                size: pending.map_bytes,
                limit: MAX_SPARSE_MAP,
            }));
        }
        if parser.block(block).map_err(error)? {
            self.finish_sparse_map(*pending, parser)
        } else {
            self.state = State::SparseMap(pending, parser);
            Ok(())
        }
    }

    fn finish_sparse_map(&mut self, mut pending: Pending, parser: MapParser) -> Result<(), Error> {
        if !parser.done() {
            return Err(Error::Header {
                offset: pending.header,
                problem: Problem::Sparse("the map ends early"),
            });
        }
        pending.map = parser.pairs();
        pending.stored -= pending.map_bytes;
        self.finish_sparse(pending)
    }

    /// The map is known and the stream is at the first stored byte: record the entry.
    fn finish_sparse(&mut self, pending: Pending) -> Result<(), Error> {
        let Pending {
            mut entry,
            header,
            stored,
            map,
            ..
        } = pending;
        let map = check_sparse(map, entry.size, stored).map_err(|problem| Error::Entry {
            offset: header,
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            problem,
        })?;
        if !map.is_empty() {
            entry.data = Data::Sparse {
                offset: self.offset,
                map,
            };
        }
        self.entries.push(entry);
        self.skip(stored, header)
    }
}

impl io::Write for TarIndexer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        match self.feed(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.error = Some(e.clone());
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for TarIndexer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TarIndexer")
            .field("offset", &self.offset)
            .field("entries", &self.entries.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "regular file",
        Kind::Dir => "directory",
        Kind::Symlink => "symbolic link",
        Kind::Hardlink => "hard link",
        Kind::Char => "character device",
        Kind::Block => "block device",
        Kind::Fifo => "fifo",
    }
}

// ---- header blocks ----

/// The fields of one header block, decoded but not yet combined with extended headers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawHeader {
    /// The name as stored (ustar: prefix and name joined).
    name: Vec<u8>,
    /// `mode & 0o7777`.
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: Vec<u8>,
    dev_major: u32,
    dev_minor: u32,
    /// The map of an old GNU sparse file (type `S`).
    gnu_sparse: Option<GnuSparse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct GnuSparse {
    map: Vec<(u64, u64)>,
    /// Extended sparse blocks follow the header.
    extended: bool,
    realsize: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Gnu,
}

fn bytes(block: &[u8], range: Range<usize>) -> &[u8] {
    block.get(range).unwrap_or_default()
}

fn non_empty(bytes: &[u8]) -> Option<Vec<u8>> {
    (!bytes.is_empty()).then(|| bytes.to_vec())
}

/// A NUL-terminated field: the bytes before the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or_default()
}

/// Decode a (non-zero) header block; its checksum is verified first.
fn parse_header(block: &[u8]) -> Result<RawHeader, Problem> {
    verify_checksum(block)?;
    let magic = bytes(block, field::MAGIC);
    let format = if magic == b"ustar  \0" {
        Format::Gnu
    } else if magic.starts_with(b"ustar\0") {
        Format::Ustar
    } else {
        Format::V7
    };
    let typeflag = block.get(field::TYPEFLAG).copied().unwrap_or(0);
    let mut name = cstr(bytes(block, field::NAME)).to_vec();
    let prefix = cstr(bytes(block, field::PREFIX));
    if format == Format::Ustar && !prefix.is_empty() {
        let mut joined = prefix.to_vec();
        joined.push(b'/');
        joined.extend_from_slice(&name);
        name = joined;
    }
    let number = |range, field| unsigned(bytes(block, range), field);
    let (dev_major, dev_minor) = if format != Format::V7 && matches!(typeflag, b'3' | b'4') {
        (
            small(number(field::DEV_MAJOR, "devmajor")?, "devmajor")?,
            small(number(field::DEV_MINOR, "devminor")?, "devminor")?,
        )
    } else {
        (0, 0)
    };
    let gnu_sparse = if typeflag == b'S' {
        let mut map = Vec::new();
        parse_gnu_sparse_pairs(bytes(block, field::GNU_SPARSE), &mut map)?;
        Some(GnuSparse {
            map,
            extended: block.get(field::GNU_IS_EXTENDED).is_some_and(|&b| b != 0),
            realsize: number(field::GNU_REALSIZE, "realsize")?,
        })
    } else {
        None
    };
    let mtime = parse_numeric(bytes(block, field::MTIME))
        .and_then(|v| i64::try_from(v).ok())
        .ok_or(Problem::Number { field: "mtime" })?;
    Ok(RawHeader {
        name,
        // Some writers put the file type bits in the mode too; only permissions matter here.
        mode: (number(field::MODE, "mode")? & 0o7777) as u32,
        uid: number(field::UID, "uid")?,
        gid: number(field::GID, "gid")?,
        size: number(field::SIZE, "size")?,
        mtime,
        typeflag,
        linkname: cstr(bytes(block, field::LINKNAME)).to_vec(),
        dev_major,
        dev_minor,
        gnu_sparse,
    })
}

/// Accept a header whose checksum matches, counting its bytes either unsigned (POSIX) or
/// signed (some historic writers).
fn verify_checksum(block: &[u8]) -> Result<(), Problem> {
    let stored = unsigned(bytes(block, field::CHECKSUM), "checksum")?;
    let mut unsigned_sum: u64 = 0;
    let mut signed_sum: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        // The checksum field itself counts as spaces.
        let b = if field::CHECKSUM.contains(&i) {
            b' '
        } else {
            b
        };
        unsigned_sum += u64::from(b);
        signed_sum += i64::from(b as i8);
    }
    if stored == unsigned_sum || i64::try_from(stored) == Ok(signed_sum) {
        Ok(())
    } else {
        Err(Problem::Checksum {
            stored,
            computed: unsigned_sum,
        })
    }
}

/// A numeric header field: octal text, or GNU base-256 (two's complement, big-endian, marked by
/// the high bit of the first byte). `None` if it is neither.
fn parse_numeric(field: &[u8]) -> Option<i128> {
    let Some((&first, rest)) = field.split_first() else {
        return Some(0);
    };
    if first & 0x80 != 0 {
        // The remaining 7 bits of the first byte are the top of a two's complement number.
        let mut value = i128::from(first & 0x7f);
        if first & 0x40 != 0 {
            value -= 0x80;
        }
        for &b in rest {
            value = value.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return Some(value);
    }
    // Octal, padded on either side with spaces or NULs.
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !is_pad(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    let mut value: i128 = 0;
    for &b in field.get(start..end).unwrap_or_default() {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(value)
}

fn unsigned(field: &[u8], name: &'static str) -> Result<u64, Problem> {
    parse_numeric(field)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or(Problem::Number { field: name })
}

fn small(value: u64, name: &'static str) -> Result<u32, Problem> {
    u32::try_from(value).map_err(|_| Problem::Number { field: name })
}

/// Append the (offset, size) pairs of a GNU sparse area to `map`, up to the first empty pair.
fn parse_gnu_sparse_pairs(area: &[u8], map: &mut Vec<(u64, u64)>) -> Result<(), Problem> {
    for pair in area.chunks_exact(GNU_SPARSE_PAIR) {
        let (offset, size) = pair.split_at(GNU_SPARSE_PAIR / 2);
        if offset.first() == Some(&0) && size.first() == Some(&0) {
            break;
        }
        map.push((
            unsigned(offset, "sparse offset")?,
            unsigned(size, "sparse size")?,
        ));
    }
    Ok(())
}

/// Check a sparse map against the file's logical size and the bytes stored for it; return it
/// without its empty segments.
fn check_sparse(
    map: Vec<(u64, u64)>,
    realsize: u64,
    stored: u64,
) -> Result<Vec<(u64, u64)>, Problem> {
    let mut end_of_previous = 0u64;
    let mut total = 0u64;
    let mut kept = Vec::with_capacity(map.len());
    for (offset, size) in map {
        let end = offset
            .checked_add(size)
            .ok_or(Problem::Sparse("a segment ends beyond 2^64"))?;
        if offset < end_of_previous {
            return Err(Problem::Sparse("segments overlap or are out of order"));
        }
        if end > realsize {
            return Err(Problem::Sparse("a segment ends beyond the file's size"));
        }
        end_of_previous = end;
        total += size; // cannot overflow: segments are disjoint below realsize
        if size > 0 {
            kept.push((offset, size));
        }
    }
    if total != stored {
        return Err(Problem::Sparse(
            "the segments do not add up to the bytes stored",
        ));
    }
    Ok(kept)
}

// ---- paths ----

/// Normalise a tar path: no leading `/` or `./`, no empty or `.` components, no trailing `/`;
/// the root is the empty path. Reject `..` components, NUL bytes and the bare name `.wh.`.
fn normalise(path: &[u8]) -> Result<Vec<u8>, Problem> {
    if path.contains(&0) {
        return Err(Problem::Nul);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut last: &[u8] = &[];
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(Problem::PathTraversal),
            name => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
                last = name;
            }
        }
    }
    if last == b".wh." {
        return Err(Problem::BareWhiteout);
    }
    Ok(out)
}

// ---- pax ----

/// Extended headers read for the next entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Pax,
    /// Total size of these extended headers.
    bytes: u64,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        self.bytes == 0 && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// The pax records that matter here, from one or more headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    /// `SCHILY.devmajor` and `SCHILY.devminor` (star writes them for large device numbers).
    dev_major: Option<u32>,
    dev_minor: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: SparseRecords,
}

/// The `GNU.sparse.*` records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SparseRecords {
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.x) or `GNU.sparse.realsize` (1.0).
    realsize: Option<u64>,
    numblocks: Option<u64>,
    /// 0.0: `GNU.sparse.offset` and `GNU.sparse.numbytes`, alternating, in stream order.
    pairs: Vec<u64>,
    /// 0.1: `GNU.sparse.map`.
    map: Option<Vec<u64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SparseVersion {
    /// 0.0 and 0.1: the map is in pax records, the content holds the segments only.
    V0,
    /// 1.0: the map is at the start of the content.
    V1,
}

impl SparseRecords {
    fn is_empty(&self) -> bool {
        *self == SparseRecords::default()
    }

    /// Which GNU sparse format the records describe, if any.
    fn version(&self) -> Result<Option<SparseVersion>, Problem> {
        if self.is_empty() {
            return Ok(None);
        }
        match (self.major, self.minor) {
            (Some(1), Some(0)) => Ok(Some(SparseVersion::V1)),
            (None, None) | (Some(0), Some(0) | Some(1)) => Ok(Some(SparseVersion::V0)),
            _ => Err(Problem::Sparse("unsupported GNU sparse format version")),
        }
    }

    /// The map of a 0.0 or 0.1 sparse file.
    fn map_v0(&self) -> Result<Vec<(u64, u64)>, Problem> {
        let flat = match &self.map {
            Some(map) => map,
            None if !self.pairs.is_empty() || self.numblocks == Some(0) => &self.pairs,
            None => return Err(Problem::Sparse("GNU sparse records without a map")),
        };
        if flat.len() % 2 != 0 {
            return Err(Problem::Sparse("an offset without a size"));
        }
        let pairs = pairs_of(flat);
        if self
            .numblocks
            .is_some_and(|n| u64::try_from(pairs.len()) != Ok(n))
        {
            return Err(Problem::Sparse(
                "GNU.sparse.numblocks does not match the map",
            ));
        }
        Ok(pairs)
    }
}

impl Pax {
    /// Apply one record. An empty value cancels the keyword (xattrs excepted).
    fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), Problem> {
        let invalid = || Problem::PaxValue {
            key: String::from_utf8_lossy(key).into_owned(),
        };
        let number = |v: &[u8]| decimal(v).ok_or_else(invalid);
        let optional = |v: &[u8]| -> Result<Option<u64>, Problem> {
            if v.is_empty() {
                Ok(None)
            } else {
                number(v).map(Some)
            }
        };
        let text = non_empty;
        match key {
            b"path" => self.path = text(value),
            b"linkpath" => self.linkpath = text(value),
            b"size" => self.size = optional(value)?,
            b"uid" => self.uid = optional(value)?,
            b"gid" => self.gid = optional(value)?,
            b"mtime" => {
                self.mtime = if value.is_empty() {
                    None
                } else {
                    Some(pax_time(value).ok_or_else(invalid)?)
                }
            }
            b"SCHILY.devmajor" => {
                self.dev_major = optional(value)?
                    .map(|v| u32::try_from(v).map_err(|_| invalid()))
                    .transpose()?
            }
            b"SCHILY.devminor" => {
                self.dev_minor = optional(value)?
                    .map(|v| u32::try_from(v).map_err(|_| invalid()))
                    .transpose()?
            }
            b"GNU.sparse.major" => self.sparse.major = optional(value)?,
            b"GNU.sparse.minor" => self.sparse.minor = optional(value)?,
            b"GNU.sparse.name" => self.sparse.name = text(value),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => self.sparse.realsize = optional(value)?,
            b"GNU.sparse.numblocks" => self.sparse.numblocks = optional(value)?,
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                // 0.0 repeats these two records, in this order, once per segment.
                let want_offset = self.sparse.pairs.len().is_multiple_of(2);
                if want_offset != (key == b"GNU.sparse.offset") {
                    return Err(Problem::Sparse("offset and numbytes records out of order"));
                }
                self.sparse.pairs.push(number(value)?);
            }
            b"GNU.sparse.map" => {
                self.sparse.map = if value.is_empty() {
                    Some(Vec::new())
                } else {
                    let numbers: Option<Vec<u64>> =
                        value.split(|&b| b == b',').map(decimal).collect();
                    Some(numbers.ok_or_else(invalid)?)
                }
            }
            b"RHT.security.selinux" => set_xattr(&mut self.xattrs, b"security.selinux", value),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    set_xattr(&mut self.xattrs, name, value);
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    let value = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
                        .decode(value)
                        .map_err(|_| invalid())?;
                    set_xattr(&mut self.xattrs, &percent_decode(name), &value);
                } else {
                    // uname, gname, atime, ctime, comment, charset, ACLs, …: not kept.
                    log::trace!("ignoring pax record {:?}", String::from_utf8_lossy(key));
                }
            }
        }
        Ok(())
    }

    /// Drop the records a global header cannot meaningfully set; true if there were any.
    fn clear_per_entry_keys(&mut self) -> bool {
        let had = self.path.is_some()
            || self.linkpath.is_some()
            || self.size.is_some()
            || !self.sparse.is_empty();
        self.path = None;
        self.linkpath = None;
        self.size = None;
        self.sparse = SparseRecords::default();
        had
    }
}

/// Set an xattr, replacing an earlier value of the same name (libarchive writes each xattr
/// twice, as `LIBARCHIVE.xattr` and `SCHILY.xattr`). A nameless one or a name with a NUL byte
/// cannot exist on any filesystem and is dropped.
fn set_xattr(xattrs: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &[u8], value: &[u8]) {
    if name.is_empty() || name.contains(&0) {
        log::warn!(
            "ignoring xattr with invalid name {:?}",
            String::from_utf8_lossy(name)
        );
        return;
    }
    match xattrs.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = value.to_vec(),
        None => xattrs.push((name.to_vec(), value.to_vec())),
    }
}

/// Undo libarchive's `%XX` escaping of xattr names; a `%` not followed by two hex digits is
/// kept as it is.
fn percent_decode(name: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while let Some(&b) = name.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (
                name.get(i + 1).and_then(|&c| hex(c)),
                name.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            // Two hex digits: below 256.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// A pax record: keyword and value.
type Record<'a> = (&'a [u8], &'a [u8]);

/// Split pax content into (keyword, value) records: `LEN KEY=VALUE\n`, where LEN counts the
/// whole record in bytes, itself included. Values are raw bytes and may hold anything.
fn parse_pax(mut data: &[u8]) -> Result<Vec<Record<'_>>, Problem> {
    let mut records = Vec::new();
    while !data.is_empty() {
        // The length has at most as many digits as a u64, then a space.
        let space = data
            .iter()
            .take(U64_DIGITS + 1)
            .position(|&b| b == b' ')
            .ok_or(Problem::PaxRecord("no length"))?;
        let len = data
            .get(..space)
            .and_then(decimal)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(Problem::PaxRecord("the length is not a decimal number"))?;
        if len <= space + 1 || len > data.len() {
            return Err(Problem::PaxRecord(
                "the length does not match the header's content",
            ));
        }
        let (record, rest) = data.split_at_checked(len).unwrap_or((data, &[]));
        let Some((b'\n', body)) = record.split_last().map(|(l, b)| (*l, b)) else {
            return Err(Problem::PaxRecord("the record does not end with a newline"));
        };
        let body = body.get(space + 1..).unwrap_or_default();
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or(Problem::PaxRecord("no `=` after the keyword"))?;
        let (key, value) = (
            body.get(..eq).unwrap_or_default(),
            body.get(eq + 1..).unwrap_or_default(),
        );
        if key.is_empty() {
            return Err(Problem::PaxRecord("empty keyword"));
        }
        records.push((key, value));
        data = rest;
    }
    Ok(records)
}

/// (offset, size) pairs from a flat list of numbers; an odd last one is dropped.
fn pairs_of(flat: &[u64]) -> Vec<(u64, u64)> {
    flat.chunks_exact(2)
        .filter_map(|p| match p {
            &[offset, size] => Some((offset, size)),
            _ => None,
        })
        .collect()
}

/// Decimal digits of u64::MAX.
const U64_DIGITS: usize = 20;

/// A non-empty string of ASCII digits that fits in a u64.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Nanosecond digits in a pax time; further digits are dropped.
const NANOS_DIGITS: usize = 9;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// A pax time, `[-]SECONDS[.FRACTION]`, as (seconds, nanoseconds) with the nanoseconds in
/// `0..1e9`: -1.5 is (-2, 500000000).
fn pax_time(text: &[u8]) -> Option<(i64, u32)> {
    let (negative, text) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut parts = text.splitn(2, |&b| b == b'.');
    let seconds = i128::from(decimal(parts.next()?)?);
    let mut nanos: i128 = 0;
    let fraction = parts.next().unwrap_or_default();
    if !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    for i in 0..NANOS_DIGITS {
        nanos = nanos * 10 + fraction.get(i).map_or(0, |&d| i128::from(d - b'0'));
    }
    let mut total = seconds * NANOS_PER_SECOND + nanos;
    if negative {
        total = -total;
    }
    let seconds = i64::try_from(total.div_euclid(NANOS_PER_SECOND)).ok()?;
    let nanos = u32::try_from(total.rem_euclid(NANOS_PER_SECOND)).ok()?;
    Some((seconds, nanos))
}

// ---- pax 1.0 sparse maps ----

/// Reads the map at the start of a pax 1.0 sparse file's content: decimal numbers, one a line:
/// the number of segments, then each segment's offset and size; then padding to a block.
#[derive(Debug, Default)]
struct MapParser {
    count: Option<u64>,
    numbers: Vec<u64>,
    /// The number being read, if any digit was seen since the last newline.
    current: Option<u64>,
}

impl MapParser {
    fn done(&self) -> bool {
        self.count
            .is_some_and(|n| u64::try_from(self.numbers.len()).ok() == n.checked_mul(2))
    }

    /// Read one block; true once the map is complete (the rest of that block is padding).
    fn block(&mut self, block: &[u8]) -> Result<bool, Problem> {
        for &b in block {
            match b {
                b'0'..=b'9' => {
                    let n = self.current.unwrap_or(0);
                    self.current = Some(
                        n.checked_mul(10)
                            .and_then(|n| n.checked_add(u64::from(b - b'0')))
                            .ok_or(Problem::Sparse("a number is too large"))?,
                    );
                }
                b'\n' => {
                    let n = self
                        .current
                        .take()
                        .ok_or(Problem::Sparse("an empty line in the map"))?;
                    if self.count.is_none() {
                        self.count = Some(n);
                    } else {
                        self.numbers.push(n);
                    }
                    if self.done() {
                        return Ok(true);
                    }
                }
                _ => return Err(Problem::Sparse("unexpected byte in the map")),
            }
        }
        Ok(false)
    }

    fn pairs(&self) -> Vec<(u64, u64)> {
        pairs_of(&self.numbers)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::process::Command;

    use super::*;

    // ---- helpers ----

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Index `stream` written in chunks of the sizes `chunk` gives.
    fn index_chunked(stream: &[u8], mut chunk: impl FnMut() -> usize) -> Result<Vec<Entry>, Error> {
        let mut ix = TarIndexer::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let (head, tail) = rest.split_at(chunk().clamp(1, rest.len()));
            if ix.write_all(head).is_err() {
                break;
            }
            rest = tail;
        }
        ix.finish()
    }

    /// Index `stream` in one write, one byte at a time and in random chunks; all must agree.
    fn index(stream: &[u8]) -> Result<Vec<Entry>, Error> {
        let whole = index_chunked(stream, || usize::MAX);
        assert_eq!(index_chunked(stream, || 1), whole, "1-byte writes differ");
        let mut rng = Rng(stream.len() as u64 | 1);
        let random = index_chunked(stream, || match rng.below(4) {
            0 => 1 + rng.below(3) as usize,
            1 => 511 + rng.below(3) as usize,
            _ => 1 + rng.below(70_000) as usize,
        });
        assert_eq!(random, whole, "random chunks differ");
        whole
    }

    /// The bytes of `entry` as the index says they lie in `stream`.
    fn content(stream: &[u8], entry: &Entry) -> Vec<u8> {
        let size = entry.size as usize;
        match &entry.data {
            Data::None => vec![0; size],
            Data::Contiguous { offset } => stream[*offset as usize..][..size].to_vec(),
            Data::Sparse { offset, map } => {
                let mut out = vec![0; size];
                let mut at = *offset as usize;
                for &(off, len) in map {
                    let (off, len) = (off as usize, len as usize);
                    out[off..off + len].copy_from_slice(&stream[at..at + len]);
                    at += len;
                }
                out
            }
        }
    }

    fn padded(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
        bytes
    }

    /// A header block built with the tar crate, then adjusted by `edit` on its raw bytes.
    fn block(
        mut header: tar::Header,
        typeflag: u8,
        name: &[u8],
        size: u64,
        edit: impl FnOnce(&mut [u8; 512]),
    ) -> Vec<u8> {
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        let raw = header.as_mut_bytes();
        raw[field::TYPEFLAG] = typeflag;
        raw[field::NAME].fill(0);
        put(raw, 0, name);
        edit(raw);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    fn put(raw: &mut [u8; 512], at: usize, bytes: &[u8]) {
        raw[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A GNU header and its padded content.
    fn member(typeflag: u8, name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = block(
            tar::Header::new_gnu(),
            typeflag,
            name,
            data.len() as u64,
            |_| {},
        );
        out.extend(padded(data.to_vec()));
        out
    }

    fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        member(b'0', name, data)
    }

    /// A pax header (`x` or `g`) holding `records`.
    fn pax(typeflag: u8, records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3; // space, '=', newline
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend(format!("{len} ").as_bytes());
            body.extend(*key);
            body.push(b'=');
            body.extend(*value);
            body.push(b'\n');
        }
        let mut out = block(
            tar::Header::new_ustar(),
            typeflag,
            b"PaxHeaders/x",
            body.len() as u64,
            |_| {},
        );
        out.extend(padded(body));
        out
    }

    fn end() -> Vec<u8> {
        vec![0; 2 * BLOCK]
    }

    fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// Big-endian two's complement with the base-256 marker bit, `len` bytes.
    fn base256(value: i64, len: usize) -> Vec<u8> {
        let mut out = vec![if value < 0 { 0xff } else { 0 }; len - 8];
        out.extend(value.to_be_bytes());
        out[0] |= 0x80;
        out
    }

    fn entry_problem(result: Result<Vec<Entry>, Error>) -> Problem {
        match result {
            Err(Error::Entry { problem, .. } | Error::Header { problem, .. }) => problem,
            other => panic!("expected an entry or header error, got {other:?}"),
        }
    }

    fn gnu_tar(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("tar")
            .args(args)
            .args(["--numeric-owner", "-cf", "-", "-C"])
            .arg(dir)
            .arg(".")
            .output()
            .expect("GNU tar is needed for these tests (the `tar` command)");
        assert!(
            out.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn by_path<'e>(entries: &'e [Entry], path: &[u8]) -> &'e Entry {
        entries
            .iter()
            .rfind(|e| e.path == path)
            .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(path)))
    }

    // ---- pure functions ----

    #[test]
    fn numeric_fields() {
        let cases: &[(&[u8], Option<i128>)] = &[
            (b"0000644\0", Some(0o644)),
            (b"  644 \0", Some(0o644)),
            (b"644", Some(0o644)),
            (b"\0\0\0\0\0\0\0\0", Some(0)),
            (b"        ", Some(0)),
            (b"", Some(0)),
            (b"77777777777\0", Some(0o77777777777)),
            (b"12 34\0", None),
            (b"0000648\0", None),
            (b"-000001\0", None),
            (&[0x80, 0, 0, 0, 0, 0, 1, 0], Some(256)),
            (&[0xff; 8], Some(-1)),
            (&[0xff; 12], Some(-1)),
            (&[0xc0, 0, 0, 0, 0, 0, 0, 0], Some(-(1 << 62))),
            (
                &[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Some((1 << 56) - 1),
            ),
        ];
        for (field, want) in cases {
            assert_eq!(parse_numeric(field), *want, "{field:?}");
        }
        assert_eq!(parse_numeric(&base256(-500, 12)), Some(-500));
        assert_eq!(
            parse_numeric(&base256(i64::MIN, 12)),
            Some(i128::from(i64::MIN))
        );
        assert_eq!(parse_numeric(&base256(1 << 40, 8)), Some(1 << 40));
        let mut huge = vec![0x80];
        huge.extend([0xff; 11]);
        assert_eq!(parse_numeric(&huge), Some((1 << 88) - 1));
        assert_eq!(
            unsigned(&huge, "size"),
            Err(Problem::Number { field: "size" })
        );
        assert_eq!(
            unsigned(&[0xff; 8], "uid"),
            Err(Problem::Number { field: "uid" })
        );
    }

    #[test]
    fn checksums_signed_and_unsigned() {
        let good = block(tar::Header::new_gnu(), b'0', "café".as_bytes(), 0, |_| {});
        assert_eq!(verify_checksum(&good), Ok(()));

        // The same header with its checksum computed over signed bytes, as some old tars did.
        let mut signed = good.clone();
        let sum: i64 = signed
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if field::CHECKSUM.contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        signed[field::CHECKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_ne!(signed, good);
        assert_eq!(verify_checksum(&signed), Ok(()));

        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            verify_checksum(&bad),
            Err(Problem::Checksum { .. })
        ));
        let mut garbage = good;
        garbage[field::CHECKSUM].copy_from_slice(b"checksum");
        assert_eq!(
            verify_checksum(&garbage),
            Err(Problem::Number { field: "checksum" })
        );
    }

    #[test]
    fn pax_records() {
        type Records<'a> = Result<Vec<(&'a [u8], &'a [u8])>, Problem>;
        let cases: &[(&[u8], Records)] = &[
            (b"", Ok(vec![])),
            (b"9 path=a\n", Ok(vec![(b"path", b"a")])),
            (
                b"13 path=a=b\n\n6 k=\n\n",
                Ok(vec![(b"path", b"a=b\n"), (b"k", b"\n")]),
            ),
            (b"8 k=\0\xff\n\n", Ok(vec![(b"k", b"\0\xff\n")])),
            (b"010 path=\n", Ok(vec![(b"path", b"")])),
            (
                b"11 path=a\n",
                Err(Problem::PaxRecord(
                    "the length does not match the header's content",
                )),
            ),
            (
                b"8 path=a\n",
                Err(Problem::PaxRecord("the record does not end with a newline")),
            ),
            (b"9 path=a\nx", Err(Problem::PaxRecord("no length"))),
            (
                b"x path=a\n",
                Err(Problem::PaxRecord("the length is not a decimal number")),
            ),
            (
                b"2 \n",
                Err(Problem::PaxRecord(
                    "the length does not match the header's content",
                )),
            ),
            (
                b"7 path\n",
                Err(Problem::PaxRecord("no `=` after the keyword")),
            ),
            (b"5 =a\n", Err(Problem::PaxRecord("empty keyword"))),
            (
                b"99999999999999999999999 k=v\n",
                Err(Problem::PaxRecord("no length")),
            ),
            (
                b"18446744073709551616 k=v\n",
                Err(Problem::PaxRecord("the length is not a decimal number")),
            ),
            (b"\0\0\0\0", Err(Problem::PaxRecord("no length"))),
        ];
        for (data, want) in cases {
            assert_eq!(
                &parse_pax(data),
                want,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn pax_times() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("0", Some((0, 0))),
            ("1700000000", Some((1_700_000_000, 0))),
            ("1.5", Some((1, 500_000_000))),
            ("1.", Some((1, 0))),
            ("1.000000001", Some((1, 1))),
            ("1.1234567899", Some((1, 123_456_789))),
            ("-1", Some((-1, 0))),
            ("-1.5", Some((-2, 500_000_000))),
            ("-0.25", Some((-1, 750_000_000))),
            ("-9223372036854775808", Some((i64::MIN, 0))),
            (
                "9223372036854775807.999999999",
                Some((i64::MAX, 999_999_999)),
            ),
            ("-9223372036854775808.5", None),
            ("9223372036854775808", None),
            ("", None),
            ("-", None),
            (".5", None),
            ("1.5.", None),
            ("1.a", None),
            ("+1", None),
            (" 1", None),
        ];
        for (text, want) in cases {
            assert_eq!(pax_time(text.as_bytes()), *want, "{text:?}");
        }
    }

    #[test]
    fn paths_are_normalised() {
        type Case = (&'static [u8], Result<&'static [u8], Problem>);
        let cases: &[Case] = &[
            (b"a/b", Ok(b"a/b")),
            (b"./a/b/", Ok(b"a/b")),
            (b"/a//b/./c", Ok(b"a/b/c")),
            (b"./", Ok(b"")),
            (b".", Ok(b"")),
            (b"/", Ok(b"")),
            (b"", Ok(b"")),
            (b"..a/b..", Ok(b"..a/b..")),
            (b"a/.wh.b", Ok(b"a/.wh.b")),
            (b".wh..wh..opq", Ok(b".wh..wh..opq")),
            (b"caf\xe9", Ok(b"caf\xe9")),
            (b"..", Err(Problem::PathTraversal)),
            (b"a/../b", Err(Problem::PathTraversal)),
            (b"/../etc/passwd", Err(Problem::PathTraversal)),
            (b"a/..", Err(Problem::PathTraversal)),
            (b".wh.", Err(Problem::BareWhiteout)),
            (b"a/.wh./", Err(Problem::BareWhiteout)),
            (b"a\0b", Err(Problem::Nul)),
        ];
        for (path, want) in cases {
            assert_eq!(
                normalise(path),
                want.clone().map(<[u8]>::to_vec),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn libarchive_names_are_percent_decoded() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"user.plain", b"user.plain"),
            (b"user.%3D%25x", b"user.=%x"),
            (b"user.%e9", b"user.\xe9"),
            (b"user.%zz%4", b"user.%zz%4"),
        ];
        for (name, want) in cases {
            assert_eq!(percent_decode(name), *want);
        }
    }

    #[test]
    fn sparse_maps_are_checked() {
        type Map = &'static [(u64, u64)];
        let cases: &[(Map, u64, u64, Result<Map, Problem>)] = &[
            (
                &[(0, 10), (20, 5), (100, 0)],
                100,
                15,
                Ok(&[(0, 10), (20, 5)]),
            ),
            (&[], 50, 0, Ok(&[])),
            (
                &[(0, 10)],
                5,
                10,
                Err(Problem::Sparse("a segment ends beyond the file's size")),
            ),
            (
                &[(10, 10), (0, 5)],
                100,
                15,
                Err(Problem::Sparse("segments overlap or are out of order")),
            ),
            (
                &[(0, 10), (5, 10)],
                100,
                20,
                Err(Problem::Sparse("segments overlap or are out of order")),
            ),
            (
                &[(0, 10)],
                100,
                11,
                Err(Problem::Sparse(
                    "the segments do not add up to the bytes stored",
                )),
            ),
            (
                &[(u64::MAX, 2)],
                u64::MAX,
                2,
                Err(Problem::Sparse("a segment ends beyond 2^64")),
            ),
        ];
        for (map, realsize, stored, want) in cases {
            assert_eq!(
                check_sparse(map.to_vec(), *realsize, *stored),
                want.clone().map(<[_]>::to_vec),
                "{map:?}"
            );
        }
    }

    #[test]
    fn pax_sparse_map_spans_blocks() {
        // A number split across the block boundary (leading zeros are still decimal).
        let mut map = b"3\n".to_vec();
        map.extend(std::iter::repeat_n(b'0', BLOCK - 3));
        map.extend(b"7\n1000\n3000\n20000\n30000\n0\n");
        let mut parser = MapParser::default();
        assert_eq!(parser.block(&map[..BLOCK]), Ok(false));
        assert!(!parser.done());
        assert_eq!(parser.block(&padded(map[BLOCK..].to_vec())), Ok(true));
        assert_eq!(parser.pairs(), vec![(7, 1000), (3000, 20000), (30000, 0)]);

        let mut empty = MapParser::default();
        assert_eq!(empty.block(b"0\n\0\0"), Ok(true));
        assert_eq!(empty.pairs(), vec![]);
        let cases: &[(&[u8], Problem)] = &[
            (b"1\n\n", Problem::Sparse("an empty line in the map")),
            (b"1\n2 3\n", Problem::Sparse("unexpected byte in the map")),
            (b"1\n2\0", Problem::Sparse("unexpected byte in the map")),
            (
                b"99999999999999999999999\n",
                Problem::Sparse("a number is too large"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(MapParser::default().block(text), Err(want.clone()));
        }
    }

    // ---- archives built here ----

    #[test]
    fn offsets_point_at_content() {
        let stream = concat(&[
            file(b"./a", b"hello"),
            file(b"empty", b""),
            member(b'5', b"dir/", b""),
            file(b"/dir/exact", &[7; 1024]),
            end(),
        ]);
        let entries = index(&stream).unwrap();
        let paths: Vec<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, [&b"a"[..], b"empty", b"dir", b"dir/exact"]);
        assert_eq!(entries[0].data, Data::Contiguous { offset: 512 });
        assert_eq!(entries[0].size, 5);
        assert_eq!(content(&stream, &entries[0]), b"hello");
        assert_eq!(entries[1].data, Data::None);
        assert_eq!(entries[1].size, 0);
        assert_eq!(entries[2].kind, Kind::Dir);
        assert_eq!(entries[2].data, Data::None);
        assert_eq!(entries[3].data, Data::Contiguous { offset: 5 * 512 });
        assert_eq!(content(&stream, &entries[3]), [7; 1024]);
        assert_eq!(entries[0].mode, 0o644);
        assert_eq!(entries[0].mtime, 1_700_000_000);
    }

    #[test]
    fn end_of_archive_variants() {
        let body = concat(&[file(b"a", b"x"), file(b"b", b"yy")]);
        let want = index(&concat(&[body.clone(), end()])).unwrap();
        assert_eq!(want.len(), 2);
        // Docker leaves out the end blocks; one zero block also ends the archive, and
        // anything after the end is ignored, zeros or not.
        let ends = [
            body.clone(),
            concat(&[body.clone(), vec![0; 512]]),
            concat(&[body.clone(), vec![0; 700]]),
            concat(&[body.clone(), end(), vec![0; 10240]]),
            concat(&[body.clone(), end(), b"trailing garbage".to_vec()]),
            concat(&[body.clone(), vec![0; 512], file(b"hidden", b"z")]),
        ];
        for stream in ends {
            assert_eq!(index(&stream).unwrap(), want);
        }
        assert_eq!(index(&[]).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_is_detected() {
        let members = [
            pax(b'x', &[(b"path", b"long/name"), (b"mtime", b"1.5")]),
            file(b"a", &[1; 600]),
            member(b'L', b"././@LongLink", &[b'n'; 150]),
            file(b"b", b"x"),
        ];
        let stream = concat(&members);
        // Entries are complete only where a header would start.
        let complete = [0, members[0].len() + members[1].len(), stream.len()];
        for cut in 0..=stream.len() {
            let got = index_chunked(&stream[..cut], || 100);
            if complete.contains(&cut) {
                assert!(got.is_ok(), "cut at {cut}: {got:?}");
            } else {
                assert!(
                    matches!(got, Err(Error::Truncated { offset, .. }) if offset == cut as u64),
                    "cut at {cut}: {got:?}"
                );
            }
        }
        // An extended header whose entry never comes.
        let dangling = concat(&[pax(b'x', &[(b"path", b"a")]), end()]);
        assert_eq!(entry_problem(index(&dangling)), Problem::DanglingExtension);
    }

    #[test]
    fn errors_are_kept_and_clear() {
        let mut stream = concat(&[file(b"a", b"x"), file(b"b", b"y"), end()]);
        stream[1024 + 10] ^= 0x20; // inside b's header
        let mut ix = TarIndexer::new();
        let err = ix.write_all(&stream).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(err.to_string().contains("offset 1024"), "{err}");
        assert!(ix.write(b"more").is_err());
        assert!(matches!(
            ix.finish(),
            Err(Error::Header {
                offset: 1024,
                problem: Problem::Checksum { .. }
            })
        ));
    }

    #[test]
    fn rejects_escapes_and_bare_whiteouts() {
        let cases: Vec<(Vec<u8>, Problem)> = vec![
            (file(b"../etc/passwd", b"x"), Problem::PathTraversal),
            (file(b"a/../../b", b"x"), Problem::PathTraversal),
            (
                concat(&[pax(b'x', &[(b"path", b"a/b/../../..")]), file(b"ok", b"x")]),
                Problem::PathTraversal,
            ),
            (
                concat(&[member(b'L', b"././@LongLink", b"../x\0"), file(b"ok", b"")]),
                Problem::PathTraversal,
            ),
            (file(b"dir/.wh.", b""), Problem::BareWhiteout),
            (
                concat(&[pax(b'x', &[(b"path", b"a\0b")]), file(b"ok", b"")]),
                Problem::Nul,
            ),
            (
                file(b"/", b"x"),
                Problem::Root {
                    kind: "regular file",
                },
            ),
            (
                block(tar::Header::new_gnu(), b'1', b"link", 0, |h| {
                    put(h, 157, b"../../x")
                }),
                Problem::LinkTarget {
                    target: "../../x".into(),
                    problem: Box::new(Problem::PathTraversal),
                },
            ),
            (
                concat(&[pax(b'x', &[(b"linkpath", b"./")]), member(b'1', b"l", b"")]),
                Problem::LinkTarget {
                    target: "./".into(),
                    problem: Box::new(Problem::Root { kind: "hard link" }),
                },
            ),
        ];
        for (stream, want) in cases {
            assert_eq!(entry_problem(index(&concat(&[stream, end()]))), want);
        }
        // Whiteouts proper and names that only look like `..` are fine.
        let fine = concat(&[
            file(b"a/.wh.b", b""),
            file(b".wh..wh..opq", b""),
            file(b"...", b""),
            end(),
        ]);
        assert_eq!(index(&fine).unwrap().len(), 3);
    }

    #[test]
    fn link_and_device_entries() {
        let stream = concat(&[
            file(b"target", b"data"),
            block(tar::Header::new_gnu(), b'1', b"hard", 0, |h| {
                put(h, 157, b"./target/")
            }),
            block(tar::Header::new_gnu(), b'2', b"sym", 0, |h| {
                put(h, 157, b"../x/\xff/./y/")
            }),
            block(tar::Header::new_ustar(), b'3', b"null", 0, |h| {
                h[field::DEV_MAJOR].copy_from_slice(b"0000001\0");
                h[field::DEV_MINOR].copy_from_slice(b"0000003\0");
            }),
            block(tar::Header::new_gnu(), b'4', b"sda", 0, |h| {
                h[field::DEV_MAJOR].copy_from_slice(&base256(259, 8));
                h[field::DEV_MINOR].copy_from_slice(b"   12 \0\0");
            }),
            block(tar::Header::new_gnu(), b'6', b"fifo", 0, |_| {}),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(
            (e[1].kind, e[1].link.as_slice()),
            (Kind::Hardlink, &b"target"[..])
        );
        assert_eq!((e[1].size, &e[1].data), (0, &Data::None));
        assert_eq!(
            (e[2].kind, e[2].link.as_slice()),
            (Kind::Symlink, &b"../x/\xff/./y/"[..])
        );
        assert_eq!(
            (e[3].kind, e[3].dev_major, e[3].dev_minor),
            (Kind::Char, 1, 3)
        );
        assert_eq!(
            (e[4].kind, e[4].dev_major, e[4].dev_minor),
            (Kind::Block, 259, 10)
        );
        assert_eq!(e[5].kind, Kind::Fifo);
    }

    #[test]
    fn header_only_types_have_no_content_and_pax_size_wins() {
        // A symlink, a directory and a hard link claim content in their size field (or in a
        // pax size); like Go's archive/tar, the next header follows at once.
        let stream = concat(&[
            block(tar::Header::new_gnu(), b'2', b"sym", 5, |h| h[157] = b't'),
            block(tar::Header::new_gnu(), b'5', b"dir", 4096, |_| {}),
            pax(b'x', &[(b"size", b"1000")]),
            block(tar::Header::new_gnu(), b'1', b"hard", 0, |h| h[157] = b't'),
            // A file whose header says 0 bytes but whose pax size says 5.
            pax(b'x', &[(b"size", b"5")]),
            block(tar::Header::new_gnu(), b'0', b"file", 0, |_| {}),
            padded(b"12345".to_vec()),
            // A pax size of 0 for a header that says 700.
            pax(b'x', &[(b"size", b"0")]),
            block(tar::Header::new_gnu(), b'0', b"empty", 700, |_| {}),
            file(b"last", b"z"),
            end(),
        ]);
        let e = index(&stream).unwrap();
        let names: Vec<&[u8]> = e.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(
            names,
            [&b"sym"[..], b"dir", b"hard", b"file", b"empty", b"last"]
        );
        assert_eq!(e[2].size, 0);
        assert_eq!(e[3].size, 5);
        assert_eq!(content(&stream, &e[3]), b"12345");
        assert_eq!((e[4].size, &e[4].data), (0, &Data::None));
        assert_eq!(content(&stream, &e[5]), b"z");
    }

    #[test]
    fn unknown_types_are_skipped() {
        let stream = concat(&[
            member(b'V', b"volume label", b""),
            member(b'Z', b"vendor", &[9; 700]),
            member(b'D', b"dumpdir", b"Yfile\0\0"),
            file(b"after", b"ok"),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, b"after");
        assert_eq!(content(&stream, &e[0]), b"ok");
    }

    #[test]
    fn v7_and_ustar_headers() {
        let long_dir = "d".repeat(120);
        let stream = concat(&[
            // v7: no magic; a regular file type with a trailing slash is a directory.
            block(tar::Header::new_old(), 0, b"olddir/", 0, |_| {}),
            block(tar::Header::new_old(), 0, b"oldfile", 3, |_| {}),
            padded(b"abc".to_vec()),
            // ustar: the name continues the prefix.
            block(tar::Header::new_ustar(), b'0', b"name", 0, |h| {
                put(h, field::PREFIX.start, long_dir.as_bytes())
            }),
            // GNU: the same area is not a prefix.
            block(tar::Header::new_gnu(), b'0', b"gnuname", 0, |h| {
                put(h, 345, b"junk!")
            }),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(
            (e[0].path.as_slice(), e[0].kind),
            (&b"olddir"[..], Kind::Dir)
        );
        assert_eq!(
            (e[1].path.as_slice(), e[1].kind),
            (&b"oldfile"[..], Kind::File)
        );
        assert_eq!(content(&stream, &e[1]), b"abc");
        assert_eq!(e[2].path, format!("{long_dir}/name").as_bytes());
        assert_eq!(e[3].path, b"gnuname");
    }

    #[test]
    fn long_names_from_the_tar_crate() {
        let long_file = format!("{}/{}", "p".repeat(90), "f".repeat(60)); // prefix + name
        let longer = format!(
            "{}/{}/{}",
            "a".repeat(100),
            "b".repeat(100),
            "c".repeat(100)
        );
        let target = format!("{}/target", "t".repeat(150));
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        h.set_mode(0o640);
        builder
            .append_data(&mut h, &long_file, &b"abc"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        builder.append_data(&mut h, &longer, &b"de"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        builder.append_link(&mut h, "sym", &target).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        builder.append_link(&mut h, "hard", &longer).unwrap();
        let stream = builder.into_inner().unwrap();
        assert_eq!(stream[156], b'0', "the first name fits a ustar prefix");

        let e = index(&stream).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            (e[0].path.as_slice(), e[0].mode),
            (long_file.as_bytes(), 0o640)
        );
        assert_eq!(content(&stream, &e[0]), b"abc");
        assert_eq!(e[1].path, longer.as_bytes());
        assert_eq!(content(&stream, &e[1]), b"de");
        assert_eq!(
            (e[2].kind, e[2].link.as_slice()),
            (Kind::Symlink, target.as_bytes())
        );
        assert_eq!(
            (e[3].kind, e[3].link.as_slice()),
            (Kind::Hardlink, longer.as_bytes())
        );
    }

    #[test]
    fn gnu_long_name_wins_over_pax_path() {
        let stream = concat(&[
            pax(
                b'x',
                &[(b"path", b"from-pax"), (b"linkpath", b"pax-target")],
            ),
            member(b'L', b"././@LongLink", b"from-gnu\0"),
            member(b'K', b"././@LongLink", b"gnu-target\0"),
            block(tar::Header::new_gnu(), b'2', b"from-header", 0, |_| {}),
            pax(b'x', &[(b"path", b"pax-only")]),
            member(b'L', b"././@LongLink", b"\0"),
            file(b"header", b""),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(
            (e[0].path.as_slice(), e[0].link.as_slice()),
            (&b"from-gnu"[..], &b"gnu-target"[..])
        );
        assert_eq!(e[1].path, b"pax-only");
    }

    #[test]
    fn pax_records_apply() {
        let cap = [
            1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let stream = concat(&[
            pax(
                b'x',
                &[
                    (b"path", b"dir/\xc3\xbcn\xc3\xafcode/\xff-not-utf8"),
                    (b"uid", b"4294967296"),
                    (b"gid", b"18446744073709551615"),
                    (b"uname", b"someone"),
                    (b"gname", b"\xff"),
                    (b"mtime", b"-1.25"),
                    (b"atime", b"garbage is ignored"),
                    (b"SCHILY.xattr.security.capability", &cap),
                    (b"SCHILY.xattr.user.bytes", b"a\0b=c\nd"),
                    (b"SCHILY.xattr.user.empty", b""),
                    (b"LIBARCHIVE.xattr.user.%41b", b"eHl6"),
                    (b"LIBARCHIVE.xattr.user.bytes", b"YQBiPWMKZA=="),
                    (b"RHT.security.selinux", b"system_u:object_r:bin_t:s0"),
                ],
            ),
            file(b"short", b"data"),
            // Two chained pax headers, the later one winning; an empty value cancels.
            pax(b'x', &[(b"mtime", b"5"), (b"uid", b"9")]),
            pax(b'x', &[(b"mtime", b"1700000000.123456789"), (b"uid", b"")]),
            file(b"second", b""),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(e[0].path, b"dir/\xc3\xbcn\xc3\xafcode/\xff-not-utf8");
        assert_eq!((e[0].uid, e[0].gid), (1 << 32, u64::MAX));
        assert_eq!((e[0].mtime, e[0].mtime_nsec), (-2, 750_000_000));
        let xattrs: Vec<(&[u8], &[u8])> = e[0]
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            xattrs,
            [
                (&b"security.capability"[..], &cap[..]),
                (b"user.bytes", b"a\0b=c\nd"),
                (b"user.empty", b""),
                (b"user.Ab", b"xyz"),
                (b"security.selinux", b"system_u:object_r:bin_t:s0"),
            ]
        );
        assert_eq!(content(&stream, &e[0]), b"data");
        assert_eq!(
            (e[1].mtime, e[1].mtime_nsec, e[1].uid),
            (1_700_000_000, 123_456_789, 0)
        );

        let bad: &[(&[u8], &[u8])] = &[
            (b"size", b"-1"),
            (b"uid", b"12a"),
            (b"mtime", b"1e9"),
            (b"LIBARCHIVE.xattr.user.x", b"not base64!"),
            (b"SCHILY.devmajor", b"4294967296"),
        ];
        for &(key, value) in bad {
            let stream = concat(&[pax(b'x', &[(key, value)]), file(b"f", b""), end()]);
            assert_eq!(
                entry_problem(index(&stream)),
                Problem::PaxValue {
                    key: String::from_utf8_lossy(key).into_owned()
                }
            );
        }
    }

    #[test]
    fn pax_extensions_from_the_tar_crate() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([
                ("SCHILY.xattr.security.capability", &b"\x01\0\0\x02"[..]),
                ("mtime", b"-86400.5"),
            ])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        builder
            .append_data(&mut h, "bin/ping", &b"ELF!"[..])
            .unwrap();
        let stream = builder.into_inner().unwrap();
        let e = index(&stream).unwrap();
        assert_eq!(
            e[0].xattrs,
            [(b"security.capability".to_vec(), b"\x01\0\0\x02".to_vec())]
        );
        assert_eq!((e[0].mtime, e[0].mtime_nsec), (-86401, 500_000_000));
        assert_eq!(content(&stream, &e[0]), b"ELF!");
    }

    #[test]
    fn global_pax_headers() {
        let stream = concat(&[
            pax(
                b'g',
                &[
                    (b"comment", b"9f0c1a commit id"),
                    (b"uid", b"7"),
                    (b"mtime", b"100"),
                    (b"SCHILY.xattr.user.g", b"global"),
                    (b"path", b"ignored-for-every-entry"),
                ],
            ),
            file(b"a", b""),
            pax(b'x', &[(b"uid", b"8"), (b"SCHILY.xattr.user.g", b"local")]),
            file(b"b", b""),
            pax(b'g', &[(b"uid", b"")]),
            file(b"c", b""),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(
            (e[0].path.as_slice(), e[0].uid, e[0].mtime),
            (&b"a"[..], 7, 100)
        );
        assert_eq!(e[0].xattrs, [(b"user.g".to_vec(), b"global".to_vec())]);
        assert_eq!((e[1].uid, e[1].mtime), (8, 100));
        assert_eq!(e[1].xattrs, [(b"user.g".to_vec(), b"local".to_vec())]);
        assert_eq!((e[2].uid, e[2].mtime), (0, 100));
    }

    #[test]
    fn extension_limits() {
        let too_big = block(
            tar::Header::new_ustar(),
            b'x',
            b"PaxHeaders/x",
            MAX_EXTENSION + 1,
            |_| {},
        );
        assert!(matches!(
            entry_problem(index(&too_big)),
            Problem::TooLarge { size, .. } if size == MAX_EXTENSION + 1
        ));
        // Many headers each within the limit, for one entry.
        let value = vec![b'v'; 900_000];
        let one = pax(b'x', &[(b"SCHILY.xattr.user.big", &value)]);
        let stream = concat(&vec![one.clone(); 5]);
        assert!(matches!(
            entry_problem(index_chunked(&stream, || 1 << 20)),
            Problem::TooLarge { limit, .. } if limit == MAX_PENDING_EXTENSIONS
        ));
        // Within the limit: accepted.
        let ok = concat(&[one, file(b"f", b""), end()]);
        assert_eq!(index_chunked(&ok, || 4096).unwrap()[0].xattrs[0].1, value);
    }

    #[test]
    fn numbers_beyond_octal() {
        let stream = concat(&[
            block(tar::Header::new_gnu(), b'0', b"negative", 0, |h| {
                h[field::MTIME].copy_from_slice(&base256(-1_000_000, 12));
                h[field::UID].copy_from_slice(&base256(1 << 40, 8));
                h[field::GID].copy_from_slice(&base256(3_000_000, 8));
            }),
            block(tar::Header::new_gnu(), b'0', b"huge", 0, |h| {
                h[field::MTIME].copy_from_slice(&base256(i64::MAX, 12));
                h[field::MODE].copy_from_slice(b"0104755\0");
            }),
            block(tar::Header::new_gnu(), b'0', b"oldest", 0, |h| {
                h[field::MTIME].copy_from_slice(&base256(i64::MIN, 12));
            }),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(
            (e[0].mtime, e[0].uid, e[0].gid),
            (-1_000_000, 1 << 40, 3_000_000)
        );
        assert_eq!((e[1].mtime, e[1].mode), (i64::MAX, 0o4755));
        assert_eq!(e[2].mtime, i64::MIN);

        // The tar crate switches to base-256 itself for large ids in GNU headers.
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(1 << 40);
        h.set_gid(u64::MAX >> 8);
        h.set_mtime(1 << 40);
        h.set_size(0);
        builder.append_data(&mut h, "ids", &b""[..]).unwrap();
        let e = index(&builder.into_inner().unwrap()).unwrap();
        assert_eq!(
            (e[0].uid, e[0].gid, e[0].mtime),
            (1 << 40, u64::MAX >> 8, 1 << 40)
        );

        let overflow = block(tar::Header::new_gnu(), b'0', b"x", 0, |h| {
            h[field::MTIME].fill(0xff);
            h[field::MTIME][0] = 0x80;
        });
        assert_eq!(
            entry_problem(index(&overflow)),
            Problem::Number { field: "mtime" }
        );
    }

    /// An old GNU sparse header, with extension blocks when the map has more than 4 segments.
    fn old_gnu_sparse(name: &[u8], realsize: u64, map: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
        let number = |n: u64| {
            if n < 1 << 33 {
                format!("{n:011o}\0").into_bytes()
            } else {
                base256(n as i64, 12)
            }
        };
        let pair = |(off, len): (u64, u64)| [number(off), number(len)].concat();
        let head = map.len().min(4);
        let mut out = block(tar::Header::new_gnu(), b'S', name, data.len() as u64, |h| {
            for (i, &seg) in map[..head].iter().enumerate() {
                h[386 + 24 * i..][..24].copy_from_slice(&pair(seg));
            }
            h[field::GNU_IS_EXTENDED] = u8::from(map.len() > 4);
            h[field::GNU_REALSIZE].copy_from_slice(&base256(realsize as i64, 12));
        });
        let rest: Vec<_> = map[head..].chunks(21).collect();
        for (n, chunk) in rest.iter().enumerate() {
            let mut ext = vec![0u8; BLOCK];
            for (i, &seg) in chunk.iter().enumerate() {
                ext[24 * i..][..24].copy_from_slice(&pair(seg));
            }
            ext[504] = u8::from(n + 1 < rest.len());
            out.extend(ext);
        }
        out.extend(padded(data.to_vec()));
        out
    }

    #[test]
    fn old_gnu_sparse_built_here() {
        let map: Vec<(u64, u64)> = (0..30).map(|i| (i * 10_000, 3)).collect();
        let data: Vec<u8> = (0..90).collect();
        let stream = concat(&[
            old_gnu_sparse(b"sparse", 400_000, &map, &data),
            old_gnu_sparse(b"holes", 1 << 40, &[(1 << 40, 0)], b""),
            file(b"after", b"x"),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!(e[0].size, 400_000);
        // Header, then two extension blocks (26 more pairs), then the data.
        assert_eq!(
            e[0].data,
            Data::Sparse {
                offset: 3 * 512,
                map
            }
        );
        let got = content(&stream, &e[0]);
        assert_eq!(&got[10_000..10_003], &data[3..6]);
        assert_eq!((e[1].size, &e[1].data), (1 << 40, &Data::None));
        assert_eq!(content(&stream, &e[2]), b"x");

        let bad = old_gnu_sparse(b"bad", 10, &[(0, 20)], &[0; 20]);
        assert_eq!(
            entry_problem(index(&bad)),
            Problem::Sparse("a segment ends beyond the file's size")
        );
    }

    #[test]
    fn pax_sparse_built_here() {
        // 1.0: the map is the first block of the content.
        let mut map = b"2\n0\n3\n100\n2\n".to_vec();
        map = padded(map);
        let stream = concat(&[
            pax(
                b'x',
                &[
                    (b"GNU.sparse.major", b"1"),
                    (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", b"real/name"),
                    (b"GNU.sparse.realsize", b"200"),
                ],
            ),
            block(
                tar::Header::new_ustar(),
                b'0',
                b"GNUSparseFile.1/name",
                517,
                |_| {},
            ),
            map,
            padded(b"abcde".to_vec()),
            // 0.1 and 0.0
            pax(
                b'x',
                &[
                    (b"GNU.sparse.size", b"50"),
                    (b"GNU.sparse.map", b"10,2,40,1"),
                ],
            ),
            file(b"zero-one", b"fgh"),
            pax(
                b'x',
                &[
                    (b"GNU.sparse.size", b"50"),
                    (b"GNU.sparse.numblocks", b"2"),
                    (b"GNU.sparse.offset", b"0"),
                    (b"GNU.sparse.numbytes", b"1"),
                    (b"GNU.sparse.offset", b"49"),
                    (b"GNU.sparse.numbytes", b"1"),
                ],
            ),
            file(b"zero-zero", b"ij"),
            end(),
        ]);
        let e = index(&stream).unwrap();
        assert_eq!((e[0].path.as_slice(), e[0].size), (&b"real/name"[..], 200));
        assert_eq!(
            e[0].data,
            Data::Sparse {
                offset: 4 * 512,
                map: vec![(0, 3), (100, 2)]
            }
        );
        let got = content(&stream, &e[0]);
        assert_eq!((&got[..3], &got[100..102]), (&b"abc"[..], &b"de"[..]));
        assert_eq!(e[1].size, 50);
        assert_eq!(&content(&stream, &e[1])[10..12], b"fg");
        assert_eq!(
            e[2].data,
            Data::Sparse {
                offset: 12 * 512,
                map: vec![(0, 1), (49, 1)]
            }
        );

        let bad: &[&[(&[u8], &[u8])]] = &[
            &[(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0")],
            &[(b"GNU.sparse.size", b"50")],
            &[(b"GNU.sparse.map", b"1,2,3")],
            &[(b"GNU.sparse.numbytes", b"1")],
            &[(b"GNU.sparse.numblocks", b"2"), (b"GNU.sparse.map", b"0,1")],
            &[(b"GNU.sparse.size", b"10"), (b"GNU.sparse.map", b"0,5")],
        ];
        for records in bad {
            let stream = concat(&[pax(b'x', records), file(b"f", b"x"), end()]);
            assert!(
                matches!(entry_problem(index(&stream)), Problem::Sparse(_)),
                "{records:?}"
            );
        }
    }

    // ---- archives built by GNU tar ----

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Compare every entry of an archive of `root` with the files under `root`.
    fn check_against_tree(root: &Path, stream: &[u8], entries: &[Entry], nanoseconds: bool) {
        assert!(!entries.is_empty());
        for e in entries {
            let path = root.join(OsStr::from_bytes(&e.path));
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let what = String::from_utf8_lossy(&e.path);
            assert_eq!(e.mode, meta.mode() & 0o7777, "{what}");
            assert_eq!(e.mtime, meta.mtime(), "{what}");
            if nanoseconds {
                assert_eq!(e.mtime_nsec as i64, meta.mtime_nsec(), "{what}");
            }
            assert_eq!(
                (e.uid, e.gid),
                (u64::from(meta.uid()), u64::from(meta.gid()))
            );
            match e.kind {
                Kind::File => {
                    assert!(ft.is_file(), "{what}");
                    assert_eq!(content(stream, e), std::fs::read(&path).unwrap(), "{what}");
                }
                Kind::Hardlink => {
                    let target = std::fs::metadata(root.join(OsStr::from_bytes(&e.link))).unwrap();
                    assert_eq!(target.ino(), meta.ino(), "{what}");
                }
                Kind::Symlink => assert_eq!(
                    e.link,
                    std::fs::read_link(&path).unwrap().as_os_str().as_bytes(),
                    "{what}"
                ),
                Kind::Dir => assert!(ft.is_dir(), "{what}"),
                Kind::Fifo => assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft)),
                Kind::Char | Kind::Block => {
                    let rdev = meta.rdev();
                    assert_eq!(
                        (e.dev_major, e.dev_minor),
                        (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
                        "{what}"
                    );
                }
            }
        }
    }

    /// A tree with most kinds of entries; names longer than ustar allows when `long`.
    fn sample_tree(root: &Path, long: bool) {
        write(&root.join("etc/hostname"), b"layerfs\n");
        write(&root.join("empty"), b"");
        write(
            &root.join(OsStr::from_bytes(b"caf\xe9/na\xefve")),
            &[0xaa; 1536],
        );
        let mid = format!("{}/{}", "m".repeat(90), "n".repeat(90));
        write(&root.join(&mid).join("file"), &[1; 513]);
        if long {
            let deep = format!("{mid}/{}/{}/deep", "x".repeat(120), "y".repeat(130));
            write(&root.join(deep), b"deep");
            std::os::unix::fs::symlink("z".repeat(200), root.join("longlink")).unwrap();
        }
        std::os::unix::fs::symlink("../etc/./hostname", root.join("sym")).unwrap();
        std::fs::hard_link(root.join("etc/hostname"), root.join("hard")).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("fifo"), 0o600.into()).unwrap();
        let setuid = root.join("setuid");
        write(&setuid, b"#!/bin/sh\n");
        std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let null = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null"),
            rustix::fs::FileType::CharacterDevice,
            0o666.into(),
            rustix::fs::makedev(1, 3),
        );
        if null.is_err() {
            eprintln!("not root: no device node in the sample tree");
        }
    }

    #[test]
    fn gnu_tar_formats() {
        for (format, long) in [
            ("gnu", true),
            ("oldgnu", true),
            ("pax", true),
            ("ustar", false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            sample_tree(dir.path(), long);
            let stream = gnu_tar(dir.path(), &[&format!("--format={format}")]);
            let entries = index(&stream).unwrap();
            check_against_tree(dir.path(), &stream, &entries, format == "pax");
            assert_eq!(by_path(&entries, b"").kind, Kind::Dir, "{format}");
            assert_eq!(by_path(&entries, b"sym").link, b"../etc/./hostname");
            let hard = (
                by_path(&entries, b"hard"),
                by_path(&entries, b"etc/hostname"),
            );
            let link = if hard.0.kind == Kind::Hardlink {
                hard.0
            } else {
                hard.1
            };
            assert_eq!(link.kind, Kind::Hardlink, "{format}");
            assert_eq!(by_path(&entries, b"caf\xe9/na\xefve").size, 1536);
            assert_eq!(by_path(&entries, b"setuid").mode, 0o4755);
            if long {
                let deep = entries.iter().find(|e| e.path.ends_with(b"/deep")).unwrap();
                assert!(deep.path.len() > 255, "{format}");
                assert_eq!(
                    by_path(&entries, b"longlink").link,
                    "z".repeat(200).as_bytes()
                );
            }
        }
    }

    #[test]
    fn gnu_tar_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ping");
        write(&path, b"binary");
        let cap = [
            1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut want = vec![];
        for (name, value) in [("user.plain", &b"v"[..]), ("security.capability", &cap[..])] {
            match rustix::fs::setxattr(&path, name, value, rustix::fs::XattrFlags::empty()) {
                Ok(()) => want.push((name.as_bytes().to_vec(), value.to_vec())),
                Err(e) => eprintln!("cannot set {name} here ({e}); not tested"),
            }
        }
        let stream = gnu_tar(
            dir.path(),
            &["--format=pax", "--xattrs", "--xattrs-include=*"],
        );
        let entries = index(&stream).unwrap();
        let mut got = by_path(&entries, b"ping").xattrs.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        check_against_tree(dir.path(), &stream, &entries, true);
    }

    /// A sparse file of `size` bytes with data at each of `at` (which GNU tar finds as
    /// segments, the filesystem having holes elsewhere).
    fn sparse_file(path: &Path, size: u64, at: &[(u64, &[u8])]) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        for &(offset, data) in at {
            std::os::unix::fs::FileExt::write_all_at(&f, data, offset).unwrap();
        }
    }

    #[test]
    fn gnu_tar_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1 << 20;
        sparse_file(
            &dir.path().join("holes-around"),
            5 * mib,
            &[(mib, b"first"), (3 * mib + 4000, &[7; 9000])],
        );
        sparse_file(
            &dir.path().join("data-at-ends"),
            2 * mib + 10,
            &[(0, b"start"), (2 * mib, b"0123456789")],
        );
        sparse_file(&dir.path().join("all-hole"), 3 * mib, &[]);
        // More segments than an old GNU header holds, and more than one extension block.
        let many: Vec<(u64, &[u8])> = (0..60).map(|i| (i * 256 * 1024, &b"seg"[..])).collect();
        sparse_file(&dir.path().join("many"), 60 * 256 * 1024, &many);
        let variants: &[&[&str]] = &[
            &["--format=gnu", "--sparse"],
            &["--format=pax", "--sparse", "--sparse-version=0.0"],
            &["--format=pax", "--sparse", "--sparse-version=0.1"],
            &["--format=pax", "--sparse", "--sparse-version=1.0"],
        ];
        for args in variants {
            let stream = gnu_tar(dir.path(), args);
            let entries = index(&stream).unwrap();
            check_against_tree(dir.path(), &stream, &entries, false);
            let many = by_path(&entries, b"many");
            match &many.data {
                Data::Sparse { map, .. } => assert_eq!(map.len(), 60, "{args:?}"),
                other => panic!("{args:?}: many is not sparse: {other:?}"),
            }
            assert_eq!(by_path(&entries, b"all-hole").size, 3 * mib, "{args:?}");
            assert!(
                entries.iter().all(|e| e.path.iter().all(|&b| b != b'%')),
                "{args:?}: a GNUSparseFile name leaked"
            );
        }
    }

    // ---- random trees ----

    /// Random trees of files, directories and links built with the tar crate: every file's
    /// content read back from the recorded offsets equals what was written.
    #[test]
    fn random_trees_read_back() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut builder = tar::Builder::new(Vec::new());
            let mut files: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
            for i in 0..rng.below(60) + 1 {
                let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
                // Names: random bytes (not `/` or NUL), sometimes long, unique by a counter.
                let mut name = format!("{i}-").into_bytes();
                let len = if rng.below(8) == 0 {
                    100 + rng.below(60)
                } else {
                    rng.below(12)
                };
                name.extend((0..len).map(|_| match rng.below(4) {
                    0 => 0x80 + rng.below(0x80) as u8,
                    _ => b'a' + rng.below(26) as u8,
                }));
                let path = if parent.is_empty() {
                    name
                } else {
                    [parent.as_slice(), b"/", &name].concat()
                };
                let mut h = if rng.below(2) == 0 {
                    tar::Header::new_gnu()
                } else {
                    tar::Header::new_ustar()
                };
                h.set_mtime(rng.below(1 << 33));
                h.set_mode(rng.below(0o10000) as u32);
                let os_path = Path::new(OsStr::from_bytes(&path));
                match rng.below(6) {
                    0 => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_size(0);
                        builder.append_data(&mut h, os_path, &b""[..]).unwrap();
                        dirs.push(path);
                    }
                    1 if !files.is_empty() => {
                        let target = files[rng.below(files.len() as u64) as usize].0.clone();
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        let target = Path::new(OsStr::from_bytes(&target));
                        builder.append_link(&mut h, os_path, target).unwrap();
                    }
                    _ => {
                        let size = match rng.below(5) {
                            0 => 0,
                            1 => rng.below(512),
                            2 => 512 * rng.below(4),
                            _ => rng.below(70_000),
                        };
                        let data = rng.bytes(size as usize);
                        h.set_size(size);
                        builder
                            .append_data(&mut h, os_path, data.as_slice())
                            .unwrap();
                        files.push((path, data));
                    }
                }
            }
            let stream = builder.into_inner().unwrap();
            let entries = index(&stream).unwrap();
            for (path, data) in &files {
                let e = by_path(&entries, path);
                assert_eq!(e.kind, Kind::File);
                assert_eq!(e.size, data.len() as u64);
                assert_eq!(&content(&stream, e), data, "seed {seed}");
                assert_eq!(e.data == Data::None, data.is_empty());
            }
            for e in &entries {
                if e.kind == Kind::Hardlink {
                    assert!(files.iter().any(|(p, _)| *p == e.link), "seed {seed}");
                }
            }
        }
    }
}
