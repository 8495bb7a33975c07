//! Copy-up: bringing a lower entry into the upper directory before its first change.
//!
//! A directory is created and given the lower metadata. A file's content is copied in chunks
//! into an unnamed file (`O_TMPFILE`) in the target directory, which gets the metadata and is
//! then linked under its name, so the merged view sees the old file or the whole copy, never a
//! part. The copy itself (`layer::copy`) leaves plain bytes to the kernel, decompresses on
//! several threads, and keeps sparse files sparse. The parent's times are
//! put back afterwards, as kernel overlayfs does: a copy-up is not a change of the directory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::upper::{self, Override, Type};
use super::{FsError, OverlayFs, State};
use crate::layer::copy::copy_entry;
use crate::tree::{Body, NodeId};

/// What an upper entry should end up as: the ownership and mode the merged view shows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub kind: Type,
}

fn timespec(secs: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nsec.min(999_999_999)),
    }
}

impl OverlayFs {
    /// Make sure `ino` and its ancestors exist in the upper directory. `content`: copy a
    /// file's data (false when the caller truncates it to zero anyway).
    pub(super) fn copy_up(&self, st: &mut State, ino: u64, content: bool) -> Result<(), FsError> {
        // Ancestors first, top down.
        let mut chain = Vec::new();
        let mut cur = ino;
        loop {
            let node = st.get(cur)?;
            if node.upper {
                break;
            }
            chain.push(cur);
            if cur == super::ROOT {
                break;
            }
            cur = node.parent;
        }
        for &i in chain.iter().rev() {
            self.copy_up_one(st, i, content || i != ino)?;
        }
        Ok(())
    }

    fn copy_up_one(&self, st: &mut State, ino: u64, content: bool) -> Result<(), FsError> {
        let node = st.get(ino)?;
        let id = node.lower.ok_or(FsError::Io)?;
        let (dir, name) = self.locate(st, ino)?;
        let tree_node = self.image.tree.node(id).ok_or(FsError::Io)?;
        let entry = self.image.entry(id);
        let meta = Meta {
            uid: u32::try_from(tree_node.uid).unwrap_or(super::super::attr::OVERFLOW_ID),
            gid: u32::try_from(tree_node.gid).unwrap_or(super::super::attr::OVERFLOW_ID),
            mode: tree_node.mode & 0o7777,
            kind: match tree_node.body {
                Body::Dir(_) => Type::Dir,
                Body::File => Type::File,
                Body::Symlink => Type::Symlink,
                Body::Fifo => Type::Fifo,
                Body::Char => Type::Char(tree_node.dev_major, tree_node.dev_minor),
                Body::Block => Type::Block(tree_node.dev_major, tree_node.dev_minor),
            },
        };
        let times = timespec(tree_node.mtime, tree_node.mtime_nsec);
        let xattrs = entry.map(|e| e.xattrs.clone()).unwrap_or_default();
        let parent_times = upper::stat(&dir, b"").ok();

        match meta.kind {
            Type::Dir => {
                match rfs::mkdirat(&dir, &name[..], Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    // Left by an earlier copy-up that stopped half way: a directory is fine.
                    Err(Errno::EXIST)
                        if upper::stat(&dir, &name)
                            .is_ok_and(|s| s.st_mode & 0o170000 == 0o040000) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = upper::open_path(&dir, &name)?;
                self.finish_entry(&dir, &name, fd.as_fd(), meta, &xattrs)?;
                set_times(&dir, &name, times)?;
            }
            Type::File => {
                let (file, tmp_name) = self.unnamed_file(&dir, ino)?;
                if content {
                    self.copy_content(id, &file)?;
                }
                let pfd: OwnedFd = file.into();
                self.finish_entry(&dir, b"", pfd.as_fd(), meta, &xattrs)?;
                rfs::futimens(
                    &pfd,
                    &Timestamps {
                        last_access: times,
                        last_modification: times,
                    },
                )?;
                match tmp_name {
                    None => rfs::linkat(
                        rfs::CWD,
                        upper::proc_path(&pfd),
                        &dir,
                        &name[..],
                        AtFlags::SYMLINK_FOLLOW,
                    )?,
                    Some(tmp) => rfs::renameat(&dir, tmp.as_slice(), &dir, &name[..])?,
                }
            }
            Type::Symlink => {
                let target = entry.map(|e| e.link.clone()).unwrap_or_default();
                rfs::symlinkat(target.as_slice(), &dir, &name[..])?;
                let fd = upper::open_path(&dir, &name)?;
                self.finish_entry(&dir, &name, fd.as_fd(), meta, &xattrs)?;
                set_times(&dir, &name, times)?;
            }
            Type::Fifo | Type::Socket | Type::Char(..) | Type::Block(..) => {
                self.make_node(&dir, &name, meta)?;
                let fd = upper::open_path(&dir, &name)?;
                self.finish_entry(&dir, &name, fd.as_fd(), meta, &xattrs)?;
                set_times(&dir, &name, times)?;
            }
        }
        if let Some(p) = parent_times {
            let _ = rfs::utimensat(
                &dir,
                ".",
                &Timestamps {
                    last_access: timespec(p.st_atime, p.st_atime_nsec as u32),
                    last_modification: timespec(p.st_mtime, p.st_mtime_nsec as u32),
                },
                AtFlags::empty(),
            );
        }
        let copied = st.get_mut(ino)?;
        copied.upper = true;
        copied.no_caps = false;
        if meta.kind == Type::File && tree_node.nlink > 1 {
            self.copy_up_links(st, ino, id)?;
        }
        Ok(())
    }

    /// A lower hard link was copied up under one name: link its copy under every other name
    /// it still has in the merged view, so that the names stay one file, here and for kernel
    /// overlayfs over the same upper directory.
    fn copy_up_links(&self, st: &mut State, ino: u64, id: NodeId) -> Result<(), FsError> {
        for path in self.lower_link_paths(id) {
            // Loading the directories on the way records the names that still lead here.
            let _ = self.resolve(st, &path);
        }
        let links = st.get(ino)?.more_links.clone();
        let (src_dir, src_name) = self.locate(st, ino)?;
        for (parent, name) in links {
            self.copy_up(st, parent, true)?;
            let dir = self.dir_fd(st, parent)?;
            match rfs::linkat(&src_dir, &src_name[..], &dir, &name[..], AtFlags::empty()) {
                Ok(()) => {}
                // A whiteout or an older copy under that name: replace it.
                Err(Errno::EXIST) => upper::link_replacing(&src_dir, &src_name, &dir, &name, ino)?,
                Err(e) => return Err(e.into()),
            }
        }
        if let Ok(s) = upper::stat(&src_dir, &src_name) {
            st.by_upper_ino.insert(s.st_ino, ino);
        }
        Ok(())
    }

    /// An unnamed file in `dir` to build a copy in, or, where the filesystem has no
    /// `O_TMPFILE`, a file under a temporary name (returned) to rename into place.
    fn unnamed_file(
        &self,
        dir: &OwnedFd,
        hint: u64,
    ) -> Result<(std::fs::File, Option<Vec<u8>>), FsError> {
        match rfs::openat(
            dir,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Ok((fd.into(), None)),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let tmp = upper::temp_name(dir, hint);
                let fd = rfs::openat(
                    dir,
                    tmp.as_slice(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                Ok((fd.into(), Some(tmp)))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn copy_content(&self, id: NodeId, file: &std::fs::File) -> Result<(), FsError> {
        let node = self.image.tree.node(id).ok_or(FsError::Io)?;
        let source = node.source.ok_or(FsError::Io)?;
        let layer = self
            .image
            .layers
            .get(source.layer as usize)
            .ok_or(FsError::Io)?;
        let entry = layer
            .entries
            .get(source.entry as usize)
            .ok_or(FsError::Io)?;
        copy_entry(layer.stream.as_ref(), entry, file).map_err(|e| {
            // A system error (a full upper, say) is the caller's to hear about; a layer that
            // does not decompress is logged and reported as EIO.
            if e.raw_os_error().is_none() {
                let path = self.image.tree.path(id);
                log::error!("copy-up of /{}: {e}", String::from_utf8_lossy(&path));
            }
            FsError::from(e)
        })?;
        Ok(())
    }

    /// Make a device, fifo or socket node; a rootless daemon that may not make a device keeps
    /// an empty file whose override says what it is.
    pub(super) fn make_node(&self, dir: &OwnedFd, name: &[u8], meta: Meta) -> Result<(), FsError> {
        let (ft, dev) = match meta.kind {
            Type::Fifo => (rfs::FileType::Fifo, 0),
            Type::Socket => (rfs::FileType::Socket, 0),
            Type::Char(a, b) => (rfs::FileType::CharacterDevice, rfs::makedev(a, b)),
            Type::Block(a, b) => (rfs::FileType::BlockDevice, rfs::makedev(a, b)),
            _ => return Err(FsError::Invalid),
        };
        match rfs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), dev) {
            Ok(()) => Ok(()),
            Err(Errno::PERM) if !self.upper.privileged => {
                let fd = rfs::openat(
                    dir,
                    name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                drop(fd);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Give a new upper entry its ownership, mode and xattrs. `fd` is the entry (`O_PATH` or
    /// open); `name` its name in `dir`, or empty when only `fd` reaches it.
    pub(super) fn finish_entry(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        fd: BorrowedFd<'_>,
        meta: Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), FsError> {
        for (k, v) in xattrs {
            if upper::is_private_xattr(k) {
                continue;
            }
            if let Err(e) = upper::set_xattr(fd, k, v, 0) {
                // A rootless daemon may not set trusted.* or security.*; the entry is still
                // right in every other way.
                log::debug!("xattr {} not kept: {e}", String::from_utf8_lossy(k));
            }
        }
        self.set_meta(dir, name, fd, meta)
    }

    /// Apply `meta` to an upper entry: for real where the host allows it, in the override
    /// xattr where it does not.
    pub(super) fn set_meta(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        fd: BorrowedFd<'_>,
        meta: Meta,
    ) -> Result<(), FsError> {
        let is_link = meta.kind == Type::Symlink;
        let owner = (
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        );
        let chown = if name.is_empty() {
            // fchown does not take O_PATH fds (the upper root's is one); chown through /proc
            // does.
            rfs::chown(upper::proc_path(fd), owner.0, owner.1)
        } else {
            rfs::chownat(dir, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
        };
        if self.upper.privileged {
            chown?;
            if !is_link {
                chmod(fd, meta.mode)?;
            }
            return Ok(());
        }
        // Rootless: the daemon must keep reading and writing what it owns, so the real mode
        // always lets the owner in; what the host refuses goes in the override.
        let host_type = rfs::fstat(fd)
            .map(|s| Type::from_mode(s.st_mode, s.st_rdev))
            .unwrap_or(meta.kind);
        let access = if meta.kind == Type::Dir { 0o700 } else { 0o600 };
        let real_mode = meta.mode | access;
        if !is_link {
            chmod(fd, real_mode)?;
        }
        let exact = chown.is_ok() && real_mode == meta.mode && host_type == meta.kind;
        if is_link {
            // user.* xattrs are not allowed on symlinks: their owner stays the host's.
            return Ok(());
        }
        if exact {
            match upper::remove_xattr(fd, upper::OVERRIDE_STAT.as_bytes()) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let over = Override {
                uid: meta.uid,
                gid: meta.gid,
                mode: meta.mode,
                kind: Some(meta.kind),
            };
            upper::set_xattr(
                fd,
                upper::OVERRIDE_STAT.as_bytes(),
                over.encode().as_bytes(),
                0,
            )?;
        }
        Ok(())
    }

    /// The metadata the upper entry `fd` (`O_PATH` or open) shows now: its override, or the
    /// host's view.
    pub(super) fn current_meta(&self, fd: BorrowedFd<'_>) -> Result<Meta, FsError> {
        let s = rfs::fstat(fd)?;
        let over = if self.upper.privileged {
            None
        } else {
            upper::read_override(fd)
        };
        Ok(meta_from(&s, over))
    }
}

fn chmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    let mode = Mode::from_raw_mode(mode);
    match rfs::fchmod(fd, mode) {
        // fchmod does not take O_PATH fds; chmod through /proc does.
        Err(Errno::BADF) => rfs::chmod(upper::proc_path(fd), mode),
        other => other,
    }
}

fn set_times(dir: &OwnedFd, name: &[u8], t: Timespec) -> Result<(), Errno> {
    rfs::utimensat(
        dir.as_fd(),
        name,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// What an entry is, from its host stat and its override (if any).
fn meta_from(s: &rfs::Stat, over: Option<Override>) -> Meta {
    let host = Type::from_mode(s.st_mode, s.st_rdev);
    match over {
        Some(o) => Meta {
            uid: o.uid,
            gid: o.gid,
            mode: o.mode,
            kind: o.kind.unwrap_or(host),
        },
        None => Meta {
            uid: s.st_uid,
            gid: s.st_gid,
            mode: s.st_mode & 0o7777,
            kind: host,
        },
    }
}
