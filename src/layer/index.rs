//! The layer index: every entry of a layer's tar with its metadata and where its bytes lie in
//! the uncompressed stream, plus what is needed to start decompressing mid-stream.
//!
//! Built once, in the same pass that verifies the layer, and kept beside the blobs at
//! `STORE/layerfs/indexes/<hex>.idx`. The file is versioned and checksummed; a stale, foreign or
//! corrupt index is rejected on load (and rebuilt by the caller), never trusted.

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
