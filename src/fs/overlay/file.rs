//! File operations: open, read, write, setattr, fallocate, fsync, readlink, xattrs, statfs.
//!
//! Opening for writing copies a lower file up first. A handle opened on a lower file before its
//! copy-up switches to the upper copy at its next read, as kernel overlayfs does, so every
//! reader sees the file's current content.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::{FileAttr, TimeOrNow};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::ns::Caller;
use super::upper;
use super::{FsError, Handle, OverlayFs, ROOT, State};
use crate::fs::read::read_lower;
use crate::fs::xattr::{XattrReply, sized};

/// open(2) flag bits (Linux values) that matter here.
mod o {
    pub const ACCMODE: i32 = 0o3;
    pub const RDONLY: i32 = 0o0;
    pub const TRUNC: i32 = 0o1000;
}

/// Changes a setattr asks for.
#[derive(Debug, Default)]
pub(super) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

fn stamp(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                let d = e.duration();
                let (secs, nsec) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (
                        -(d.as_secs() as i64) - 1,
                        1_000_000_000 - i64::from(d.subsec_nanos()),
                    )
                };
                Timespec {
                    tv_sec: secs,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// The xattr the kernel reads before it lets a write or chown keep file capabilities.
const CAPABILITY: &str = "security.capability";

impl OverlayFs {
    /// An `O_PATH` fd of `ino`'s upper entry, with its directory and name ("." for the root).
    fn entry_fd(&self, st: &State, ino: u64) -> Result<(Arc<OwnedFd>, Vec<u8>, OwnedFd), FsError> {
        let (dir, name) = self.locate(st, ino)?;
        if ino == ROOT {
            let fd = self.upper.dir(b"")?;
            return Ok((dir, b".".to_vec(), fd));
        }
        let fd = upper::open_path(&dir, &name)?;
        Ok((dir, name.to_vec(), fd))
    }

    fn open_upper(&self, st: &State, ino: u64, flags: OFlags) -> Result<std::fs::File, FsError> {
        let (dir, name) = self.locate(st, ino)?;
        let fd = rfs::openat(
            &dir,
            &name[..],
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(fd.into())
    }

    pub(super) fn do_open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let acc = flags & o::ACCMODE;
        let trunc = flags & o::TRUNC != 0;
        let write = acc != o::RDONLY || trunc;
        let mut st = self.lock();
        let node = st.get(ino)?;
        if node.is_dir() {
            return Err(FsError::IsDir);
        }
        if write {
            self.copy_up(&mut st, ino, !trunc)?;
        }
        let node = st.get(ino)?;
        if !node.upper {
            let id = node.lower.ok_or(FsError::Io)?;
            drop(st);
            return Ok(self.add_handle(Handle::Lower(ino, id)));
        }
        // Write-only opens read too, so that one upper fd serves any request on the handle.
        let mut oflags = match acc {
            o::RDONLY => OFlags::RDONLY,
            _ => OFlags::RDWR,
        };
        if trunc {
            oflags |= OFlags::TRUNC;
        }
        for extra in [OFlags::SYNC, OFlags::DSYNC, OFlags::NOATIME] {
            if flags & extra.bits() as i32 != 0 {
                oflags |= extra;
            }
        }
        let file = match self.open_upper(&st, ino, oflags) {
            // O_NOATIME is refused on files the daemon does not own.
            Err(FsError::Os(n)) if n == Errno::PERM.raw_os_error() => {
                self.open_upper(&st, ino, oflags - OFlags::NOATIME)?
            }
            r => r?,
        };
        drop(st);
        Ok(self.add_handle(Handle::Upper(ino, Arc::new(file))))
    }

    pub(super) fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let file = match self.handle_file(fh) {
            Some(f) => f,
            None => {
                let (ino, id) = self.handle_lower(fh).ok_or(FsError::BadFd)?;
                let st = self.lock();
                if !st.get(ino).is_ok_and(|n| n.upper && !n.unlinked) {
                    drop(st);
                    return read_lower(&self.image, id, offset, size);
                }
                // Copied up since it was opened: read the copy from now on.
                let f = Arc::new(self.open_upper(&st, ino, OFlags::RDONLY)?);
                drop(st);
                self.handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Handle::Upper(ino, f.clone()));
                f
            }
        };
        let mut buf = vec![0u8; size.min(super::super::read::MAX_READ) as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Write `data` at `offset`. `kill_suid`: the kernel asks for set-user-ID and
    /// set-group-ID to go, as a write by a caller without CAP_FSETID does
    /// (FUSE_WRITE_KILL_SUIDGID; see `init`).
    pub(super) fn do_write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suid: bool,
    ) -> Result<u32, FsError> {
        let (ino, file) = self.handle_upper(fh).ok_or(FsError::BadFd)?;
        if kill_suid {
            let over = (!self.upper.privileged)
                .then(|| upper::read_override(file.as_ref()))
                .flatten();
            let mode = match over {
                Some(o) => o.mode,
                None => rfs::fstat(file.as_ref())?.st_mode,
            };
            if mode & 0o4000 != 0 || mode & 0o2010 == 0o2010 {
                let mut st = self.lock();
                self.kill_suid_sgid(&mut st, ino, Some(file.as_ref()))?;
                drop(st);
                // The kernel still caches the old mode, and a write's reply carries none.
                crate::fs::invalidate_attributes(ino);
            }
        }
        file.write_all_at(data, offset)?;
        u32::try_from(data.len()).map_err(|_| FsError::Invalid)
    }

    /// Clear set-user-ID, and set-group-ID where group execute is set, as the VFS does when a
    /// file is written, truncated or chowned.
    /// `open`: the file opened, if the caller has it (saves opening it again).
    fn kill_suid_sgid(
        &self,
        st: &mut State,
        ino: u64,
        open: Option<&std::fs::File>,
    ) -> Result<(), FsError> {
        if ino == ROOT || st.get(ino)?.is_dir() {
            return Ok(());
        }
        let (dir, name) = self.locate(st, ino)?;
        let path_fd;
        let fd = match open {
            Some(f) => f.as_fd(),
            None => {
                path_fd = upper::open_path(&dir, &name)?;
                path_fd.as_fd()
            }
        };
        let mut meta = self.current_meta(fd)?;
        let before = meta.mode;
        meta.mode &= !0o4000;
        if meta.mode & 0o2010 == 0o2010 {
            meta.mode &= !0o2000;
        }
        if meta.mode != before {
            self.set_meta(&dir, &name, fd, meta)?;
        }
        Ok(())
    }

    pub(super) fn do_setattr(
        &self,
        caller: Caller,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
    ) -> Result<FileAttr, FsError> {
        let mut st = self.lock();
        self.copy_up(&mut st, ino, set.size != Some(0))?;
        let handle = fh.and_then(|fh| self.handle_file(fh));
        if let Some(size) = set.size {
            // Through the caller's handle if it may write (ftruncate); an open(O_TRUNC) of a
            // read-only handle truncates too, through a writable fd of our own.
            let done = match &handle {
                Some(f) => match rfs::ftruncate(f.as_ref(), size) {
                    Ok(()) => true,
                    Err(Errno::INVAL | Errno::BADF) => false,
                    Err(e) => return Err(e.into()),
                },
                None => false,
            };
            if !done {
                let f = self.open_upper(&st, ino, OFlags::WRONLY)?;
                rfs::ftruncate(&f, size)?;
            }
        }
        // Any open handle of the file serves for fchown, fchmod and fstat: no path lookups.
        let file = handle.or_else(|| self.open_file_of(ino));
        let (dir, name) = self.locate(&st, ino)?;
        let path_fd;
        let fd = match &file {
            Some(f) if ino != ROOT => f.as_fd(),
            _ => {
                path_fd = if ino == ROOT {
                    self.upper.dir(b"")?
                } else {
                    upper::open_path(&dir, &name)?
                };
                path_fd.as_fd()
            }
        };
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            let mut meta = self.current_meta(fd)?;
            if let Some(m) = set.mode {
                meta.mode = m & 0o7777;
            }
            if let Some(u) = set.uid {
                meta.uid = self.container_uid(u);
            }
            if let Some(g) = set.gid {
                meta.gid = self.container_gid(g);
            }
            self.set_meta(&dir, &name, fd, meta)?;
        }
        // The kernel leaves these to the filesystem (FUSE_HANDLE_KILLPRIV_V2) without saying
        // so in a way fuser passes on: a chown always clears set-user-ID and set-group-ID, a
        // truncation by a caller other than root does, and an explicit mode wins.
        let chown = set.uid.is_some() || set.gid.is_some();
        if set.mode.is_none() && (chown || (set.size.is_some() && caller.uid != 0)) {
            self.kill_suid_sgid(&mut st, ino, file.as_deref())?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: stamp(set.atime),
                last_modification: stamp(set.mtime),
            };
            if ino == ROOT {
                rfs::utimensat(fd, ".", &times, AtFlags::empty())?;
            } else {
                rfs::utimensat(&dir, &name[..], &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        self.attr(&mut st, ino, file.as_deref())
    }

    pub(super) fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, FsError> {
        let file = fh.and_then(|fh| self.handle_file(fh));
        let mut st = self.lock();
        self.attr(&mut st, ino, file.as_deref())
    }

    pub(super) fn do_fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), FsError> {
        let file = self.handle_file(fh).ok_or(FsError::BadFd)?;
        let flags = rfs::FallocateFlags::from_bits_retain(mode as u32);
        rfs::fallocate(file.as_ref(), flags, offset, len)?;
        Ok(())
    }

    pub(super) fn do_fsync(&self, fh: u64, datasync: bool) -> Result<(), FsError> {
        if self.options.volatile {
            return Ok(());
        }
        match self.handle_file(fh) {
            Some(f) if datasync => Ok(rfs::fdatasync(f.as_ref())?),
            Some(f) => Ok(rfs::fsync(f.as_ref())?),
            None => Ok(()),
        }
    }

    pub(super) fn do_fsyncdir(&self, ino: u64) -> Result<(), FsError> {
        if self.options.volatile {
            return Ok(());
        }
        let st = self.lock();
        if !st.get(ino)?.upper {
            return Ok(());
        }
        let fd = self.upper.dir_for_reading(&st.path(ino)?)?;
        drop(st);
        Ok(rfs::fsync(&fd)?)
    }

    pub(super) fn do_readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let st = self.lock();
        let node = st.get(ino)?;
        if node.kind != fuser::FileType::Symlink {
            return Err(FsError::Invalid);
        }
        if node.upper {
            let (dir, name) = self.locate(&st, ino)?;
            let target = rfs::readlinkat(&dir, &name[..], Vec::new())?;
            return Ok(target.into_bytes());
        }
        let id = node.lower.ok_or(FsError::Io)?;
        Ok(self.image.entry(id).ok_or(FsError::Io)?.link.clone())
    }

    fn lower_xattrs(&self, st: &State, ino: u64) -> Result<super::Xattrs, FsError> {
        let node = st.get(ino)?;
        Ok(node
            .lower
            .and_then(|id| self.image.entry(id))
            .map(|e| e.xattrs.clone())
            .unwrap_or_default())
    }

    pub(super) fn do_getxattr(
        &self,
        ino: u64,
        name: &[u8],
        size: u32,
    ) -> Result<XattrReply, FsError> {
        if upper::is_private_xattr(name) {
            return Err(FsError::NoData);
        }
        let mut st = self.lock();
        let node = st.get(ino)?;
        if node.upper {
            let caps = name == CAPABILITY.as_bytes();
            if caps && node.no_caps {
                return Err(FsError::NoData);
            }
            let (_, _, fd) = self.entry_fd(&st, ino)?;
            if !caps {
                // Only the capability answer is remembered, under the lock.
                drop(st);
                let name = std::str::from_utf8(name).map_err(|_| FsError::NoData)?;
                let value = upper::get_xattr(&fd, name)?.ok_or(FsError::NoData)?;
                return sized(value, size);
            }
            let Some(value) = upper::get_xattr(&fd, CAPABILITY)? else {
                st.get_mut(ino)?.no_caps = true;
                return Err(FsError::NoData);
            };
            return sized(value, size);
        }
        let value = self
            .lower_xattrs(&st, ino)?
            .into_iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(FsError::NoData)?;
        sized(value, size)
    }

    pub(super) fn do_listxattr(&self, ino: u64, size: u32) -> Result<XattrReply, FsError> {
        let st = self.lock();
        let mut names: Vec<Vec<u8>> = if st.get(ino)?.upper {
            let (_, _, fd) = self.entry_fd(&st, ino)?;
            upper::list_xattrs(&fd)?
        } else {
            self.lower_xattrs(&st, ino)?
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        names.retain(|n| !upper::is_private_xattr(n));
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        sized(out, size)
    }

    pub(super) fn do_setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        if upper::is_private_xattr(name) {
            return Err(FsError::Perm);
        }
        let mut st = self.lock();
        self.copy_up(&mut st, ino, true)?;
        st.get_mut(ino)?.no_caps = false;
        let (_, _, fd) = self.entry_fd(&st, ino)?;
        upper::set_xattr(&fd, name, value, flags)?;
        Ok(())
    }

    pub(super) fn do_removexattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        if upper::is_private_xattr(name) {
            return Err(FsError::NoData);
        }
        let mut st = self.lock();
        let node = st.get(ino)?;
        if !node.upper && !self.lower_xattrs(&st, ino)?.iter().any(|(n, _)| n == name) {
            return Err(FsError::NoData);
        }
        self.copy_up(&mut st, ino, true)?;
        st.get_mut(ino)?.no_caps = false;
        let (_, _, fd) = self.entry_fd(&st, ino)?;
        upper::remove_xattr(&fd, name)?;
        Ok(())
    }
}
