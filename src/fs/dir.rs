//! readdir and readdirplus. Offsets are positions in the fixed listing `.`, `..`, then the
//! children in name order, so a listing resumed at any offset is consistent.

use fuser::FileAttr;

use super::{FsError, LayerFs};
use crate::tree::NodeId;

/// One directory entry as listed.
pub(super) struct Listed<'a> {
    pub id: NodeId,
    pub name: &'a [u8],
    /// Offset of the entry after this one.
    pub next: u64,
}

impl LayerFs {
    /// Entries of `dir` from `offset` on.
    pub(super) fn listing(&self, dir: NodeId, offset: u64) -> Result<Vec<Listed<'_>>, FsError> {
        let node = self.image.tree.node(dir).ok_or(FsError::NotFound)?;
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        let dots = [(dir, &b"."[..]), (node.parent, &b".."[..])];
        let all = dots
            .into_iter()
            .chain(self.image.tree.children(dir).map(|(n, id)| (id, n)));
        Ok(all
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (id, name))| Listed {
                id,
                name,
                next: i as u64 + 1,
            })
            .collect())
    }

    pub(super) fn listed_attr(&self, entry: &Listed<'_>) -> Result<FileAttr, FsError> {
        self.attr(entry.id)
    }
}
