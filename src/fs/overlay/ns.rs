//! Namespace changes: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
//!
//! Each one copies up the directories it touches, changes the upper directory, then the loaded
//! entries. Removing a name that a lower layer also has leaves a whiteout; a directory made
//! where a lower one was deleted is opaque. Where one step could leave a wrong view after a
//! crash, the new entry is built under a temporary name and renamed (or exchanged) into place.
//! A directory that has lower content is renamed by copying its whole subtree up first and
//! making the copy opaque, so that the result needs no `redirect` xattr and reads the same
//! through kernel overlayfs.

use std::os::fd::{AsFd, OwnedFd};

use fuser::FileAttr;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::copyup::Meta;
use super::upper::{self, Type};
use super::{FsError, Handle, Inode, OverlayFs, State};

/// Who asks: the caller's host ids, for the owner of what it creates.
#[derive(Clone, Copy, Debug)]
pub(super) struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What to create.
pub(super) enum New<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    Node(Type),
}

impl OverlayFs {
    /// True if the lower view under `dir` has `name` (so removing it needs a whiteout).
    fn lower_has(&self, st: &State, dir: u64, name: &[u8]) -> bool {
        st.inodes
            .get(&dir)
            .filter(|d| !d.opaque)
            .and_then(|d| d.lower)
            .is_some_and(|l| self.image.tree.lookup(l, name).is_some())
    }

    /// The upper directory `dir` (copied up first), opened.
    fn upper_dir(&self, st: &mut State, dir: u64) -> Result<std::sync::Arc<OwnedFd>, FsError> {
        self.copy_up(st, dir, true)?;
        self.dir_fd(st, dir)
    }

    fn set_opaque(&self, dir: &OwnedFd, name: &[u8]) -> Result<(), FsError> {
        let fd = upper::open_path(dir, name)?;
        upper::set_xattr(&fd, self.upper.overlay_xattr("opaque").as_bytes(), b"y", 0)?;
        Ok(())
    }

    /// Create `name` in `parent`; returns its attributes and, for a file, an open handle.
    pub(super) fn do_create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        what: New<'_>,
        mode: u32,
    ) -> Result<(FileAttr, Option<u64>), FsError> {
        check_name(name)?;
        let mut st = self.lock();
        self.load(&mut st, parent)?;
        if st.child(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        let dir = self.upper_dir(&mut st, parent)?;
        let over_whiteout = match upper::stat(&dir, name) {
            Ok(s) if upper::is_whiteout(&s) => true,
            Ok(_) => return Err(FsError::Exists),
            Err(Errno::NOENT) => false,
            Err(e) => return Err(e.into()),
        };
        let parent_meta = self.current_meta(dir.as_fd())?;
        let setgid = parent_meta.mode & 0o2000 != 0;
        let kind = match what {
            New::File => Type::File,
            New::Dir => Type::Dir,
            New::Symlink(_) => Type::Symlink,
            New::Node(t) => t,
        };
        let mut perm = mode & 0o7777;
        if kind == Type::Dir && setgid {
            perm |= 0o2000;
        }
        if kind == Type::Symlink {
            perm = 0o777;
        }
        let meta = Meta {
            uid: self.container_uid(caller.uid),
            gid: if setgid {
                parent_meta.gid
            } else {
                self.container_gid(caller.gid)
            },
            mode: perm,
            kind,
        };
        let ino = st.fresh_ino();
        let build_name = if over_whiteout {
            upper::temp_name(&dir, ino)
        } else {
            name.to_vec()
        };
        let mut file = None;
        match what {
            New::File => {
                let fd = rfs::openat(
                    &dir,
                    build_name.as_slice(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                file = Some(std::fs::File::from(fd));
            }
            New::Dir => rfs::mkdirat(&dir, build_name.as_slice(), Mode::from_raw_mode(0o700))?,
            New::Symlink(target) => rfs::symlinkat(target, &dir, build_name.as_slice())?,
            New::Node(_) => self.make_node(&dir, &build_name, meta)?,
        }
        // A new file is set up through its open fd; other kinds through an O_PATH one.
        let path_fd;
        let built = match &file {
            Some(f) => f.as_fd(),
            None => {
                path_fd = upper::open_path(&dir, &build_name)?;
                path_fd.as_fd()
            }
        };
        let result = self
            .set_meta(&dir, &build_name, built, meta)
            .and_then(|()| {
                if over_whiteout && kind == Type::Dir {
                    // The directory stands where a lower one was deleted: nothing below shows.
                    self.set_opaque(&dir, &build_name)?;
                }
                if !over_whiteout {
                    return Ok(());
                }
                if kind == Type::Dir {
                    // A directory cannot replace the whiteout; they swap, then the whiteout goes.
                    rfs::renameat_with(
                        &dir,
                        build_name.as_slice(),
                        &dir,
                        name,
                        RenameFlags::EXCHANGE,
                    )?;
                    rfs::unlinkat(&dir, build_name.as_slice(), AtFlags::empty())?;
                } else {
                    rfs::renameat(&dir, build_name.as_slice(), &dir, name)?;
                }
                Ok(())
            });
        if let Err(e) = result {
            let flags = if kind == Type::Dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let _ = rfs::unlinkat(&dir, build_name.as_slice(), flags);
            return Err(e);
        }
        let mut inode = Inode::new(parent, name, super::kind_of_type(kind));
        inode.opaque = kind == Type::Dir && over_whiteout;
        // Nothing sets security.capability on a new entry but a later setxattr.
        inode.no_caps = true;
        if kind == Type::Dir {
            inode.children = Some(Default::default());
        }
        st.inodes.insert(ino, inode);
        st.link_entry(parent, name, ino);
        let attr = self.attr(&mut st, ino, file.as_ref())?;
        st.get_mut(ino)?.lookups += 1;
        drop(st);
        let fh = file.map(|f| self.add_handle(Handle::Upper(ino, std::sync::Arc::new(f))));
        Ok((attr, fh))
    }

    pub(super) fn do_link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<FileAttr, FsError> {
        check_name(name)?;
        let mut st = self.lock();
        if st.get(ino)?.is_dir() {
            return Err(FsError::Perm);
        }
        self.load(&mut st, parent)?;
        if st.child(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        self.copy_up(&mut st, ino, true)?;
        let dir = self.upper_dir(&mut st, parent)?;
        let (src_dir, src_name) = self.locate(&st, ino)?;
        let over_whiteout = upper::stat(&dir, name).is_ok_and(|s| upper::is_whiteout(&s));
        if over_whiteout {
            upper::link_replacing(&src_dir, &src_name, &dir, name, ino)?;
        } else {
            rfs::linkat(&src_dir, &src_name[..], &dir, name, AtFlags::empty())?;
        }
        if let Ok(s) = upper::stat(&dir, name) {
            st.by_upper_ino.insert(s.st_ino, ino);
        }
        st.get_mut(ino)?.more_links.push((parent, name.into()));
        st.link_entry(parent, name, ino);
        let attr = self.attr(&mut st, ino, None)?;
        st.get_mut(ino)?.lookups += 1;
        Ok(attr)
    }

    /// Replace the upper entry `name` in `dir` by a whiteout, atomically.
    fn whiteout_over(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        is_dir: bool,
        hint: u64,
    ) -> Result<(), FsError> {
        let tmp = upper::temp_name(dir, hint);
        upper::make_whiteout(dir, &tmp)?;
        let swapped = if is_dir {
            rfs::renameat_with(dir, tmp.as_slice(), dir, name, RenameFlags::EXCHANGE)
                .and_then(|()| rfs::unlinkat(dir, tmp.as_slice(), AtFlags::REMOVEDIR))
        } else {
            rfs::renameat(dir, tmp.as_slice(), dir, name)
        };
        if let Err(e) = swapped {
            let _ = rfs::unlinkat(dir, tmp.as_slice(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(())
    }

    pub(super) fn do_unlink(
        &self,
        parent: u64,
        name: &[u8],
        want_dir: bool,
    ) -> Result<(), FsError> {
        let mut st = self.lock();
        self.load(&mut st, parent)?;
        let ino = st.child(parent, name).ok_or(FsError::NotFound)?;
        let (is_dir, is_upper) = {
            let n = st.get(ino)?;
            (n.is_dir(), n.upper)
        };
        match (want_dir, is_dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        if is_dir {
            self.load(&mut st, ino)?;
            if st
                .get(ino)?
                .children
                .as_ref()
                .is_some_and(|c| !c.is_empty())
            {
                return Err(FsError::NotEmpty);
            }
        }
        let whiteout = self.lower_has(&st, parent, name);
        if !whiteout && !is_upper {
            // Only possible for an entry of an opaque directory's lower: nothing to do.
            st.unlink_entry(parent, name);
            return Ok(());
        }
        let dir = self.upper_dir(&mut st, parent)?;
        if is_upper {
            if is_dir {
                // Whatever is left inside are whiteouts of lower entries.
                upper::clear_dir(&self.upper, &st.path(ino)?)?;
            }
            if whiteout {
                self.whiteout_over(&dir, name, is_dir, ino)?;
            } else {
                let flags = if is_dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rfs::unlinkat(&dir, name, flags)?;
            }
        } else {
            upper::make_whiteout(&dir, name)?;
        }
        if is_dir {
            self.drop_dir_fd(ino);
        }
        st.unlink_entry(parent, name);
        Ok(())
    }

    /// Copy `ino` up with everything below it, so that it can move: a directory with lower
    /// content becomes opaque, as its copy is now complete.
    fn deep_copy_up(&self, st: &mut State, ino: u64) -> Result<(), FsError> {
        self.copy_up(st, ino, true)?;
        if !st.get(ino)?.is_dir() {
            return Ok(());
        }
        let mut stack = vec![ino];
        while let Some(dir) = stack.pop() {
            self.load(st, dir)?;
            let children: Vec<u64> = st
                .get(dir)?
                .children
                .iter()
                .flat_map(|c| c.values().copied())
                .collect();
            for child in children {
                self.copy_up(st, child, true)?;
                if st.get(child)?.is_dir() {
                    stack.push(child);
                }
            }
        }
        let node = st.get(ino)?;
        if node.lower.is_some() && !node.opaque {
            let (dir, name) = self.locate(st, ino)?;
            self.set_opaque(&dir, &name)?;
            st.get_mut(ino)?.opaque = true;
        }
        Ok(())
    }

    /// Move the loaded entry `from/from_name` (inode `ino`) to `to/to_name`.
    fn move_entry(
        &self,
        st: &mut State,
        from: u64,
        from_name: &[u8],
        to: u64,
        to_name: &[u8],
        ino: u64,
    ) {
        if let Some(c) = st.inodes.get_mut(&from).and_then(|d| d.children.as_mut()) {
            c.remove(from_name);
        }
        st.link_entry(to, to_name, ino);
        if let Some(n) = st.inodes.get_mut(&ino) {
            if n.parent == from && *n.name == *from_name {
                n.parent = to;
                n.name = to_name.into();
            } else if let Some(l) = n
                .more_links
                .iter_mut()
                .find(|(p, nm)| *p == from && **nm == *from_name)
            {
                *l = (to, to_name.into());
            }
        }
    }

    pub(super) fn do_rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: fuser::RenameFlags,
    ) -> Result<(), FsError> {
        check_name(new_name)?;
        let exchange = flags.contains(fuser::RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(fuser::RenameFlags::RENAME_NOREPLACE);
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT) || (exchange && noreplace) {
            return Err(FsError::Invalid);
        }
        let mut st = self.lock();
        self.load(&mut st, parent)?;
        self.load(&mut st, new_parent)?;
        let src = st.child(parent, name).ok_or(FsError::NotFound)?;
        let dst = st.child(new_parent, new_name);
        if noreplace && dst.is_some() {
            return Err(FsError::Exists);
        }
        if exchange && dst.is_none() {
            return Err(FsError::NotFound);
        }
        if dst == Some(src) {
            return Ok(());
        }
        let src_dir = st.get(src)?.is_dir();
        let has_lower = |st: &State, ino: u64| {
            st.get(ino)
                .is_ok_and(|n| n.is_dir() && n.lower.is_some() && !n.opaque)
        };
        if self.options.no_dir_rename
            && (has_lower(&st, src) || (exchange && dst.is_some_and(|d| has_lower(&st, d))))
        {
            return Err(FsError::Os(Errno::XDEV.raw_os_error()));
        }
        if let Some(d) = dst.filter(|_| !exchange) {
            let d_dir = st.get(d)?.is_dir();
            if src_dir && !d_dir {
                return Err(FsError::NotDir);
            }
            if !src_dir && d_dir {
                return Err(FsError::IsDir);
            }
            if d_dir {
                self.load(&mut st, d)?;
                if st.get(d)?.children.as_ref().is_some_and(|c| !c.is_empty()) {
                    return Err(FsError::NotEmpty);
                }
            }
        }
        let from = self.upper_dir(&mut st, parent)?;
        let to = self.upper_dir(&mut st, new_parent)?;
        self.deep_copy_up(&mut st, src)?;
        if exchange && let Some(d) = dst {
            self.deep_copy_up(&mut st, d)?;
        }
        if exchange {
            let d = dst.ok_or(FsError::NotFound)?;
            rfs::renameat_with(&from, name, &to, new_name, RenameFlags::EXCHANGE)?;
            if src_dir && self.lower_has(&st, new_parent, new_name) {
                self.set_opaque(&to, new_name)?;
            }
            if st.get(d)?.is_dir() && self.lower_has(&st, parent, name) {
                self.set_opaque(&from, name)?;
            }
            self.move_entry(&mut st, parent, name, new_parent, new_name, src);
            st.link_entry(parent, name, d);
            if let Some(n) = st.inodes.get_mut(&d) {
                if n.parent == new_parent && *n.name == *new_name {
                    n.parent = parent;
                    n.name = name.into();
                } else if let Some(l) = n
                    .more_links
                    .iter_mut()
                    .find(|(p, nm)| *p == new_parent && **nm == *new_name)
                {
                    *l = (parent, name.into());
                }
            }
            return Ok(());
        }
        let whiteout = self.lower_has(&st, parent, name);
        if let Some(d) = dst
            && st.get(d)?.is_dir()
            && st.get(d)?.upper
        {
            // The target is empty in the merged view; what it holds are whiteouts.
            upper::clear_dir(&self.upper, &st.path(d)?)?;
        }
        let whiteout_at_target =
            dst.is_none() && upper::stat(&to, new_name).is_ok_and(|s| upper::is_whiteout(&s));
        if src_dir && whiteout_at_target {
            // A directory cannot replace a whiteout: swap them, and the whiteout lands at the
            // old name, where it is needed or removed.
            rfs::renameat_with(&from, name, &to, new_name, RenameFlags::EXCHANGE)?;
            if !whiteout {
                rfs::unlinkat(&from, name, AtFlags::empty())?;
            }
        } else if whiteout {
            match rfs::renameat_with(&from, name, &to, new_name, RenameFlags::WHITEOUT) {
                Ok(()) => {}
                Err(Errno::INVAL | Errno::PERM | Errno::NOSYS) => {
                    rfs::renameat(&from, name, &to, new_name)?;
                    upper::make_whiteout(&from, name)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            rfs::renameat(&from, name, &to, new_name)?;
        }
        if src_dir && self.lower_has(&st, new_parent, new_name) && !st.get(src)?.opaque {
            self.set_opaque(&to, new_name)?;
            st.get_mut(src)?.opaque = true;
        }
        if let Some(d) = dst {
            self.drop_dir_fd(d);
            st.unlink_entry(new_parent, new_name);
        }
        self.move_entry(&mut st, parent, name, new_parent, new_name, src);
        Ok(())
    }
}

/// Names the mount refuses to create: the temporary names it builds entries under.
fn check_name(name: &[u8]) -> Result<(), FsError> {
    crate::fs::check_name_len(name)?;
    if name.starts_with(b".layerfs-tmp-") {
        return Err(FsError::Invalid);
    }
    Ok(())
}
