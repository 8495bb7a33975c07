//! open, read, readlink.

use super::{FsError, Image, LayerFs};
use crate::layer::reader::read_entry;
use crate::tree::{Body, NodeId};

/// Largest read served at once (the kernel asks for at most max_read, 128 KiB by default).
pub(super) const MAX_READ: u32 = 1 << 20;

impl LayerFs {
    pub(super) fn do_open(&self, id: NodeId, flags: i32) -> Result<(), FsError> {
        let node = self.image.tree.node(id).ok_or(FsError::NotFound)?;
        let write = flags & libc_o::ACCMODE != libc_o::RDONLY || flags & libc_o::TRUNC != 0;
        if write {
            return Err(FsError::ReadOnly);
        }
        if node.is_dir() {
            return Err(FsError::IsDir);
        }
        Ok(())
    }

    pub(super) fn do_read(&self, id: NodeId, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let node = self.image.tree.node(id).ok_or(FsError::NotFound)?;
        match node.body {
            Body::File => {}
            Body::Dir(_) => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid),
        }
        read_lower(&self.image, id, offset, size)
    }

    pub(super) fn do_readlink(&self, id: NodeId) -> Result<&[u8], FsError> {
        let node = self.image.tree.node(id).ok_or(FsError::NotFound)?;
        if !matches!(node.body, Body::Symlink) {
            return Err(FsError::Invalid);
        }
        Ok(&self.image.entry(id).ok_or(FsError::Io)?.link)
    }
}

/// Up to `size` bytes at `offset` of the lower file `id`.
pub(super) fn read_lower(
    image: &Image,
    id: NodeId,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>, FsError> {
    let node = image.tree.node(id).ok_or(FsError::NotFound)?;
    let source = node.source.ok_or(FsError::Io)?;
    let layer = image.layers.get(source.layer as usize).ok_or(FsError::Io)?;
    let entry = layer
        .entries
        .get(source.entry as usize)
        .ok_or(FsError::Io)?;
    let want = size.min(MAX_READ) as u64;
    let len = want.min(entry.size.saturating_sub(offset)) as usize;
    let mut buf = vec![0u8; len];
    let n = read_entry(layer.stream.as_ref(), entry, offset, &mut buf).map_err(|e| {
        log::error!(
            "reading /{} at {offset}: {e}",
            String::from_utf8_lossy(&image.tree.path(id))
        );
        FsError::Io
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// The open(2) flag bits the read-only filesystem looks at (Linux values).
mod libc_o {
    pub const ACCMODE: i32 = 0o3;
    pub const RDONLY: i32 = 0o0;
    pub const TRUNC: i32 = 0o1000;
}
