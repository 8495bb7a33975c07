//! The FUSE filesystem: the merged tree of an image, served read-only straight from the
//! layer blobs.
//!
//! Everything a request needs is immutable after the mount starts ([`Image`] behind an
//! `Arc`), so the multi-threaded session serves requests without locks, and the kernel may
//! cache entries, attributes and pages for as long as it likes. Each FUSE operation is a thin
//! adapter in `ops.rs` over an inner function returning `Result<_, FsError>`; the adapter
//! replies exactly once, with data or a precise errno.
//!
//! Files: `attr.rs` (lookup, getattr, ownership mapping), `read.rs` (open, read, readlink),
//! `dir.rs` (readdir, readdirplus), `xattr.rs` (getxattr, listxattr), `ops.rs` (the trait).

mod attr;
mod dir;
mod ops;
pub mod overlay;
mod read;
mod xattr;

use std::sync::Arc;
use std::time::Duration;

pub use attr::IdMap;
pub use overlay::OverlayFs;

use crate::layer::index::Entry;
use crate::layer::reader::ReadAt;
use crate::tree::{NodeId, Tree};

/// How long the kernel may cache entries and attributes: the lower view never changes while
/// mounted, so the only limit is memory the kernel chooses to reclaim.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// An image ready to serve: its merged tree and, per layer, its entries and content stream.
pub struct Image {
    pub tree: Tree,
    pub layers: Vec<Layer>,
}

/// One layer's entries (indexed by `tree::Source::entry`) and its uncompressed stream.
pub struct Layer {
    pub entries: Vec<Entry>,
    pub stream: Box<dyn ReadAt>,
}

impl Image {
    fn entry(&self, id: NodeId) -> Option<&Entry> {
        let source = self.tree.node(id)?.source?;
        self.layers
            .get(source.layer as usize)?
            .entries
            .get(source.entry as usize)
    }
}

/// Mount-time choices that change what requests see.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    /// Show every entry as owned by this uid (fuse-overlayfs' `squash_to_uid`).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// Report a link count of 1 for directories (fuse-overlayfs' `static_nlink`).
    pub static_nlink: bool,
    /// Answer EXDEV to renaming a directory that has lower content, as kernel overlayfs does
    /// with `redirect_dir=off` (programs such as `mv` then copy it), instead of copying it up.
    pub no_dir_rename: bool,
    /// Skip every sync of the upper directory (overlayfs' `volatile`, fuse-overlayfs'
    /// `fsync=0`): faster, and a crash may lose what was written since the last writeback.
    pub volatile: bool,
}

impl Options {
    /// The uid shown for image uid `id`.
    pub fn show_uid(&self, id: u64) -> u32 {
        self.squash_uid.unwrap_or_else(|| self.uid_map.to_host(id))
    }

    pub fn show_gid(&self, id: u64) -> u32 {
        self.squash_gid.unwrap_or_else(|| self.gid_map.to_host(id))
    }
}

/// The `fuser::Filesystem`.
pub struct LayerFs {
    image: Arc<Image>,
    options: Options,
    /// Totals for statfs.
    total_bytes: u64,
    /// The kernel opens files and directories without asking (see `init`).
    skip_open: bool,
    skip_opendir: bool,
}

impl LayerFs {
    pub fn new(image: Arc<Image>, options: Options) -> LayerFs {
        let total_bytes = image
            .layers
            .iter()
            .flat_map(|l| l.entries.iter())
            .map(|e| e.size)
            .sum();
        LayerFs {
            image,
            options,
            total_bytes,
            skip_open: false,
            skip_opendir: false,
        }
    }
}

/// What an operation can fail with; each maps to one errno.
#[derive(Debug, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    NotDir,
    IsDir,
    ReadOnly,
    NoData,
    Range,
    Invalid,
    Io,
    Exists,
    NotEmpty,
    Perm,
    BadFd,
    /// An error of the upper directory's filesystem, passed on as it is (ENOSPC, EDQUOT...).
    Os(i32),
}

impl FsError {
    fn errno(&self) -> fuser::Errno {
        use fuser::Errno;
        match self {
            FsError::NotFound => Errno::ENOENT,
            FsError::NotDir => Errno::ENOTDIR,
            FsError::IsDir => Errno::EISDIR,
            FsError::ReadOnly => Errno::EROFS,
            FsError::NoData => Errno::ENODATA,
            FsError::Range => Errno::ERANGE,
            FsError::Invalid => Errno::EINVAL,
            FsError::Io => Errno::EIO,
            FsError::Exists => Errno::EEXIST,
            FsError::NotEmpty => Errno::ENOTEMPTY,
            FsError::Perm => Errno::EPERM,
            FsError::BadFd => Errno::EBADF,
            FsError::Os(n) => Errno::from_i32(*n),
        }
    }
}

/// A negative entry: "no such name", which the kernel may cache for `ttl` like a positive one
/// (node id 0), sparing a round trip for every later lookup of a missing name (PATH searches,
/// shared-library probes, the lookup before every create).
fn reply_negative(reply: fuser::ReplyEntry, ttl: &Duration) {
    let t = std::time::UNIX_EPOCH;
    let attr = fuser::FileAttr {
        ino: fuser::INodeNo(0),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    };
    reply.entry(ttl, &attr, fuser::Generation(0));
}

/// Ask the kernel for the capabilities every layerfs mount wants, plus `extra`.
fn request_capabilities(config: &mut fuser::KernelConfig, extra: &[fuser::InitFlags]) {
    use fuser::InitFlags as F;
    let common = [
        F::FUSE_DO_READDIRPLUS,
        F::FUSE_READDIRPLUS_AUTO,
        F::FUSE_PARALLEL_DIROPS,
        F::FUSE_CACHE_SYMLINKS,
        F::FUSE_ASYNC_READ,
    ];
    for cap in common.iter().chain(extra) {
        if config.add_capabilities(*cap).is_err() {
            log::debug!("kernel lacks FUSE capability {cap:?}");
        }
    }
    let _ = config.set_max_readahead(MAX_READAHEAD);
}

/// Kernel readahead for sequential reads: large, because every request costs a round trip.
const MAX_READAHEAD: u32 = 1 << 20;

/// Longest name a directory entry may have (Linux NAME_MAX); a longer one is ENAMETOOLONG,
/// not merely absent.
pub(crate) const NAME_MAX: usize = 255;

/// The session's channel for telling the kernel to drop cached attributes; set once the
/// session exists (a process serves one mount).
static NOTIFIER: std::sync::OnceLock<fuser::Notifier> = std::sync::OnceLock::new();

/// Called by the mount code once the session exists.
pub fn set_notifier(notifier: fuser::Notifier) {
    let _ = NOTIFIER.set(notifier);
}

/// Make the kernel fetch `ino`'s attributes again (only them: no page is dropped, so this is
/// safe from inside a request on the same inode).
pub(crate) fn invalidate_attributes(ino: u64) {
    if let Some(n) = NOTIFIER.get()
        && let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0)
    {
        log::debug!("cannot invalidate the attributes of inode {ino}: {e}");
    }
}

fn check_name_len(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        Err(FsError::Os(rustix::io::Errno::NAMETOOLONG.raw_os_error()))
    } else {
        Ok(())
    }
}

/// The node behind an inode number.
fn node_id(ino: fuser::INodeNo) -> Result<NodeId, FsError> {
    u64::from(ino)
        .checked_sub(1)
        .and_then(|i| u32::try_from(i).ok())
        .map(NodeId)
        .ok_or(FsError::NotFound)
}

fn ino(id: NodeId) -> fuser::INodeNo {
    fuser::INodeNo(u64::from(id.0) + 1)
}
