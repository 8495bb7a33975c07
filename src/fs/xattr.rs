//! getxattr and listxattr, from the entry's `SCHILY.xattr.*` records.

use super::{FsError, LayerFs};
use crate::tree::NodeId;

/// One extended attribute: name and value.
type Xattr = (Vec<u8>, Vec<u8>);

/// A reply to an xattr request: the size asked for, or the bytes.
pub(super) enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

pub(super) fn sized(value: Vec<u8>, size: u32) -> Result<XattrReply, FsError> {
    let len = u32::try_from(value.len()).map_err(|_| FsError::Range)?;
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(FsError::Range)
    } else {
        Ok(XattrReply::Data(value))
    }
}

impl LayerFs {
    fn xattrs(&self, id: NodeId) -> Result<&[Xattr], FsError> {
        self.image.tree.node(id).ok_or(FsError::NotFound)?;
        Ok(self.image.entry(id).map_or(&[][..], |e| &e.xattrs[..]))
    }

    pub(super) fn do_getxattr(
        &self,
        id: NodeId,
        name: &[u8],
        size: u32,
    ) -> Result<XattrReply, FsError> {
        let value = self
            .xattrs(id)?
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or(FsError::NoData)?;
        sized(value, size)
    }

    pub(super) fn do_listxattr(&self, id: NodeId, size: u32) -> Result<XattrReply, FsError> {
        let mut names: Vec<&[u8]> = self.xattrs(id)?.iter().map(|(n, _)| &n[..]).collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n);
            out.push(0);
        }
        sized(out, size)
    }
}
