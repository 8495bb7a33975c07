//! Attributes: what `stat` shows for a node, with ownership optionally mapped the way
//! fuse-overlayfs' `uidmapping=`/`gidmapping=` options do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use super::{FsError, LayerFs, ino};
use crate::tree::{Body, Node, NodeId};

/// The id shown for an image id that the mapping does not cover (the kernel's overflow id).
pub(super) const OVERFLOW_ID: u32 = 65534;
/// Block size reported by stat: a good unit for reads through FUSE.
pub(super) const BLOCK_SIZE: u32 = 4096;
/// Size shown for directories (tar records none): one block, as local filesystems and kernel
/// overlayfs over them show.
const DIR_SIZE: u64 = 4096;

/// `CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE…]` ranges: image id `CONTAINER+i` shows as
/// `HOST+i`. Empty means ids are shown as the image has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap(Vec<(u64, u64, u64)>);

impl std::str::FromStr for IdMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nums: Result<Vec<u64>, _> = s.split(':').map(str::parse::<u64>).collect();
        let nums = nums.map_err(|_| format!("{s:?} is not a list of numbers"))?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(format!(
                "{s:?} must be CONTAINER:HOST:SIZE triples separated by ':'"
            ));
        }
        Ok(IdMap(nums.chunks(3).map(|c| (c[0], c[1], c[2])).collect()))
    }
}

impl IdMap {
    /// The image id that host id `host` stands for: the inverse of [`IdMap::to_host`]; an id
    /// outside every range stays as it is.
    pub fn to_container(&self, host: u32) -> u32 {
        let host = u64::from(host);
        self.0
            .iter()
            .find(|(_, h, n)| host >= *h && host - h < *n)
            .and_then(|(c, h, _)| u32::try_from(c + (host - h)).ok())
            .unwrap_or(host as u32)
    }

    /// The id to show for image id `id`.
    pub fn to_host(&self, id: u64) -> u32 {
        if self.0.is_empty() {
            return u32::try_from(id).unwrap_or(OVERFLOW_ID);
        }
        self.0
            .iter()
            .find(|(c, _, n)| id >= *c && id - c < *n)
            .and_then(|(c, h, _)| u32::try_from(h + (id - c)).ok())
            .unwrap_or(OVERFLOW_ID)
    }
}

pub(super) fn time(secs: i64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsec
    }
}

fn kind(node: &Node) -> FileType {
    match node.body {
        Body::Dir(_) => FileType::Directory,
        Body::File => FileType::RegularFile,
        Body::Symlink => FileType::Symlink,
        Body::Char => FileType::CharDevice,
        Body::Block => FileType::BlockDevice,
        Body::Fifo => FileType::NamedPipe,
    }
}

/// A device number as FUSE carries it: 32 bits in the kernel's `new_encode_dev` layout
/// (minor's low byte, then 12 bits of major, then the rest of minor).
pub(super) fn rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// What `stat` shows for a lower node, as inode `ino`.
pub(super) fn lower_attr(node: &Node, options: &super::Options, ino: fuser::INodeNo) -> FileAttr {
    let t = time(node.mtime, node.mtime_nsec);
    let (size, stored) = if node.is_dir() {
        (DIR_SIZE, DIR_SIZE)
    } else {
        (node.size, node.stored)
    };
    FileAttr {
        ino,
        size,
        blocks: stored.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind(node),
        perm: (node.mode & 0o7777) as u16,
        nlink: if node.is_dir() && options.static_nlink {
            1
        } else {
            node.nlink
        },
        uid: options.show_uid(node.uid),
        gid: options.show_gid(node.gid),
        rdev: rdev(node.dev_major, node.dev_minor),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

impl LayerFs {
    pub(super) fn attr(&self, id: NodeId) -> Result<FileAttr, FsError> {
        let node = self.image.tree.node(id).ok_or(FsError::NotFound)?;
        Ok(lower_attr(node, &self.options, ino(id)))
    }

    pub(super) fn do_lookup(&self, parent: NodeId, name: &[u8]) -> Result<FileAttr, FsError> {
        super::check_name_len(name)?;
        let dir = self.image.tree.node(parent).ok_or(FsError::NotFound)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let id = self
            .image
            .tree
            .lookup(parent, name)
            .ok_or(FsError::NotFound)?;
        self.attr(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps() {
        let m: IdMap = "0:1000:1:1:100000:65536".parse().unwrap();
        assert_eq!(m.to_host(0), 1000);
        assert_eq!(m.to_host(1), 100000);
        assert_eq!(m.to_host(65536), 165535);
        assert_eq!(m.to_host(65537), OVERFLOW_ID);
        assert_eq!(IdMap::default().to_host(5), 5);
        assert_eq!(IdMap::default().to_host(1 << 40), OVERFLOW_ID);
        assert!("1:2".parse::<IdMap>().is_err());
        assert!("a:b:c".parse::<IdMap>().is_err());
    }

    #[test]
    fn device_numbers() {
        // Values as stat(2) shows them after the kernel's new_decode_dev.
        assert_eq!(rdev(1, 3), 0x103);
        assert_eq!(rdev(5, 1), 0x501);
        assert_eq!(rdev(259, 0x12345), 0x12310345);
    }

    #[test]
    fn times_before_1970() {
        assert_eq!(time(-1, 0), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(time(5, 7), UNIX_EPOCH + Duration::from_nanos(5_000_000_007));
    }
}
