//! The `fuser::Filesystem` implementation: each operation converts its arguments, calls the
//! inner function and replies once. Everything that would modify the image answers EROFS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::xattr::XattrReply;
use super::{FsError, LayerFs, TTL, node_id};

const GENERATION: Generation = Generation(0);

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        super::request_capabilities(config, &[]);
        // Nothing is opened for real and the mount is read-only (MS_RDONLY: the kernel refuses
        // writes itself), so a kernel that can do without open and opendir requests is told
        // so by the first of each (ENOSYS); every later open and close then costs no round
        // trip, and the kernel keeps the page and directory caches as it would have.
        let kernel = config.capabilities();
        self.skip_open = kernel.contains(fuser::InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.skip_opendir = kernel.contains(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match node_id(parent).and_then(|p| self.do_lookup(p, name.as_bytes())) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(FsError::NotFound) => super::reply_negative(reply, &TTL),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match node_id(ino).and_then(|id| self.attr(id)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match node_id(ino).and_then(|id| self.do_readlink(id)) {
            Ok(target) => reply.data(target),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.skip_open {
            return reply.error(Errno::ENOSYS);
        }
        match node_id(ino).and_then(|id| self.do_open(id, flags.0)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match node_id(ino).and_then(|id| self.do_read(id, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.skip_opendir {
            return reply.error(Errno::ENOSYS);
        }
        let dir = node_id(ino).and_then(|id| {
            let node = self.image.tree.node(id).ok_or(FsError::NotFound)?;
            if node.is_dir() {
                Ok(())
            } else {
                Err(FsError::NotDir)
            }
        });
        match dir {
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush in a read-only view; ENOSYS makes the kernel stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match node_id(ino).and_then(|id| self.listing(id, offset)) {
            Ok(l) => l,
            Err(e) => return reply.error(e.errno()),
        };
        for entry in listing {
            let Ok(attr) = self.listed_attr(&entry) else {
                continue;
            };
            if reply.add(
                super::ino(entry.id),
                entry.next,
                attr.kind,
                OsStr::from_bytes(entry.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match node_id(ino).and_then(|id| self.listing(id, offset)) {
            Ok(l) => l,
            Err(e) => return reply.error(e.errno()),
        };
        for entry in listing {
            let Ok(attr) = self.listed_attr(&entry) else {
                continue;
            };
            let name = OsStr::from_bytes(entry.name);
            if reply.add(
                super::ino(entry.id),
                entry.next,
                name,
                &TTL,
                &attr,
                GENERATION,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u32 = 4096;
        let blocks = self.total_bytes.div_ceil(u64::from(BSIZE));
        let files = self.image.tree.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, BSIZE, 255, BSIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match node_id(ino).and_then(|id| self.do_getxattr(id, name.as_bytes(), size)) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match node_id(ino).and_then(|id| self.do_listxattr(id, size)) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Reached only without default_permissions: the mounting user may read everything.
        match node_id(ino).and_then(|id| self.attr(id)) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    // Everything below would change the image.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn inode_numbers_round_trip() {
        use super::super::{ino, node_id};
        use crate::tree::NodeId;
        assert_eq!(node_id(ino(NodeId(0))), Ok(NodeId(0)));
        assert_eq!(u64::from(ino(NodeId::ROOT)), 1);
        assert!(node_id(fuser::INodeNo(0)).is_err());
        assert!(node_id(fuser::INodeNo(u64::MAX)).is_err());
    }
}
