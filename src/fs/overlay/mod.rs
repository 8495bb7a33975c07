//! A writable mount: the image's merged tree (the lower view, immutable) under an upper
//! directory that takes every change, in overlayfs' own format, so that kernel overlayfs
//! mounted over the image's layers and the same directory shows the same tree.
//!
//! Invariants:
//! - Lower blobs are never written. A change to a lower entry first copies it up: its parent
//!   directories, then the entry itself (content, mode, owner, times, xattrs). A file's copy is
//!   built unnamed (`O_TMPFILE`) and linked into place once complete, so a crash never leaves
//!   a partial copy in the merged view.
//! - The namespace (the inode table and each loaded directory's entries) sits behind one mutex;
//!   file data is read and written through per-open handles outside it.
//! - A directory's entries are loaded once, on first use, by merging the lower children with
//!   the upper directory's entries (whiteouts delete, an opaque directory hides what is below);
//!   after that every change goes both to disk and to the loaded entries.
//! - Inode numbers are stable for the mount's life: a lower node keeps `NodeId + 1`, also once
//!   copied up; entries created in the mount get numbers above the tree's.
//!
//! Files: `upper.rs` (the upper directory's format and fd-relative primitives), `copyup.rs`,
//! `ns.rs` (create, mkdir, mknod, symlink, link, unlink, rmdir, rename), `file.rs` (open,
//! read, write, setattr, xattrs), `ops.rs` (the `fuser::Filesystem` adapter).

mod copyup;
mod file;
mod ns;
mod ops;
pub mod upper;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};
use rustix::io::Errno;

use super::attr::{BLOCK_SIZE, lower_attr, rdev, time};
use super::{FsError, Image, Options};
use crate::tree::{Body, NodeId};
use upper::{Override, Type, Upper};

/// How long the kernel may cache entries and attributes of a writable mount: every change goes
/// through this daemon, so the kernel's caches stay right; the limit only bounds how long a
/// change made to the upper directory behind the mount's back stays unseen.
const TTL: Duration = Duration::from_secs(1);
/// The root directory's inode number.
const ROOT: u64 = 1;
/// Deepest directory nesting followed when building an upper path.
const MAX_DEPTH: usize = 4096;

impl From<Errno> for FsError {
    fn from(e: Errno) -> FsError {
        FsError::Os(e.raw_os_error())
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> FsError {
        match e.raw_os_error() {
            Some(n) => FsError::Os(n),
            None => FsError::Io,
        }
    }
}

/// One file, directory or link of the merged view.
#[derive(Debug)]
struct Inode {
    /// Parent and name of the first link; for a directory its only one. The upper path is
    /// built from these.
    parent: u64,
    name: Box<[u8]>,
    /// Other links of an upper file with several names.
    more_links: Vec<(u64, Box<[u8]>)>,
    /// The lower node shown while the entry is not in the upper directory; for a directory in
    /// both, the lower directory merged under it (unless opaque).
    lower: Option<NodeId>,
    /// The entry exists in the upper directory at its path.
    upper: bool,
    /// A directory whose lower children are hidden.
    opaque: bool,
    kind: FileType,
    /// A directory's entries, once loaded.
    children: Option<BTreeMap<Box<[u8]>, u64>>,
    /// References the kernel holds (lookups minus forgets).
    lookups: u64,
    /// No name left in the merged view; kept until the kernel forgets it.
    unlinked: bool,
    /// The upper entry is known to have no `security.capability`: the kernel asks before
    /// every first write and every chown, and the answer then costs no system call. Cleared
    /// by every xattr change and copy-up.
    no_caps: bool,
}

impl Inode {
    fn new(parent: u64, name: &[u8], kind: FileType) -> Inode {
        Inode {
            parent,
            name: name.into(),
            more_links: Vec::new(),
            lower: None,
            upper: true,
            opaque: false,
            kind,
            children: None,
            lookups: 0,
            unlinked: false,
            no_caps: false,
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }
}

/// The namespace: every inode the kernel knows or a loaded directory lists.
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Upper files with several links, by their upper inode number.
    by_upper_ino: HashMap<u64, u64>,
}

/// A directory listing taken at opendir: (name, inode, type), `.` and `..` first.
type Listing = Arc<Vec<(Box<[u8]>, u64, FileType)>>;
/// Extended attributes as name and value.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// An open file or directory.
enum Handle {
    /// A lower file (its inode and node), until it is copied up.
    Lower(u64, NodeId),
    /// An upper file and its inode.
    Upper(u64, Arc<std::fs::File>),
    Dir(Listing),
}

/// The writable `fuser::Filesystem`.
pub struct OverlayFs {
    image: Arc<Image>,
    options: Options,
    upper: Upper,
    state: Mutex<State>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Every path of each lower node with several names, found on the first copy-up of one.
    lower_links: std::sync::OnceLock<HashMap<NodeId, Vec<Vec<u8>>>>,
    /// Open upper directories by inode, so that an operation does not resolve its parent's
    /// path again; an fd follows its directory through renames. Dropped when the directory
    /// goes, and all at once when the cache is full.
    dir_fds: Mutex<HashMap<u64, Arc<OwnedFd>>>,
}

/// Upper directories kept open at most (each costs one file descriptor).
const DIR_FDS: usize = 512;

impl OverlayFs {
    /// Serve `image` with `upper` (a directory, empty or from an earlier mount) on top.
    pub fn new(
        image: Arc<Image>,
        options: Options,
        upper: &std::path::Path,
    ) -> std::io::Result<OverlayFs> {
        let upper = Upper::open(upper)?;
        let mut root = Inode::new(ROOT, b"", FileType::Directory);
        root.lower = Some(NodeId::ROOT);
        root.lookups = 1;
        if upper::get_xattr(&upper.dir(b"")?, &upper.overlay_xattr("opaque"))?.as_deref()
            == Some(b"y")
        {
            root.opaque = true;
        }
        let next_ino = image.tree.len() as u64 + 2;
        Ok(OverlayFs {
            image,
            options,
            upper,
            state: Mutex::new(State {
                inodes: HashMap::from([(ROOT, root)]),
                next_ino,
                by_upper_ino: HashMap::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            lower_links: std::sync::OnceLock::new(),
            dir_fds: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the namespace is still consistent
        // enough to keep serving, so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        fh
    }

    fn handle_file(&self, fh: u64) -> Option<Arc<std::fs::File>> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Upper(_, f)) => Some(f.clone()),
            _ => None,
        }
    }

    fn handle_upper(&self, fh: u64) -> Option<(u64, Arc<std::fs::File>)> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Upper(ino, f)) => Some((*ino, f.clone())),
            _ => None,
        }
    }

    /// Any open upper file of `ino`: the only way left to an unlinked file.
    fn open_file_of(&self, ino: u64) -> Option<Arc<std::fs::File>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find_map(|h| match h {
                Handle::Upper(i, f) if *i == ino => Some(f.clone()),
                _ => None,
            })
    }

    fn handle_lower(&self, fh: u64) -> Option<(u64, NodeId)> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Lower(ino, id)) => Some((*ino, *id)),
            _ => None,
        }
    }

    fn drop_handle(&self, fh: u64) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    /// The image id a request's host id stands for (the inverse of `uidmapping=`).
    fn container_uid(&self, host: u32) -> u32 {
        self.options.uid_map.to_container(host)
    }

    fn container_gid(&self, host: u32) -> u32 {
        self.options.gid_map.to_container(host)
    }
}

fn kind_of(body: &Body) -> FileType {
    match body {
        Body::Dir(_) => FileType::Directory,
        Body::File => FileType::RegularFile,
        Body::Symlink => FileType::Symlink,
        Body::Char => FileType::CharDevice,
        Body::Block => FileType::BlockDevice,
        Body::Fifo => FileType::NamedPipe,
    }
}

fn kind_of_type(t: Type) -> FileType {
    match t {
        Type::File => FileType::RegularFile,
        Type::Dir => FileType::Directory,
        Type::Symlink => FileType::Symlink,
        Type::Fifo => FileType::NamedPipe,
        Type::Socket => FileType::Socket,
        Type::Char(..) => FileType::CharDevice,
        Type::Block(..) => FileType::BlockDevice,
    }
}

impl State {
    fn get(&self, ino: u64) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode, FsError> {
        self.inodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn fresh_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// The upper path of `ino`'s first link, relative to the upper root ("" for the root).
    fn path(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.get(cur)?;
            if node.unlinked {
                return Err(FsError::NotFound);
            }
            parts.push(&node.name[..]);
            cur = node.parent;
            if parts.len() > MAX_DEPTH {
                return Err(FsError::Os(Errno::NAMETOOLONG.raw_os_error()));
            }
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(p);
        }
        Ok(out)
    }

    fn child(&self, dir: u64, name: &[u8]) -> Option<u64> {
        self.inodes.get(&dir)?.children.as_ref()?.get(name).copied()
    }

    /// Remove `name` from `dir`'s loaded entries; the inode loses that link.
    fn unlink_entry(&mut self, dir: u64, name: &[u8]) {
        let Some(ino) = self
            .inodes
            .get_mut(&dir)
            .and_then(|d| d.children.as_mut())
            .and_then(|c| c.remove(name))
        else {
            return;
        };
        if self.drop_link(ino, dir, name) {
            self.forget_inode(ino);
        }
    }

    /// `dir/name` no longer names `ino` (found while loading `dir`): drop the link, and the
    /// inode with it if that was its only one.
    fn detach(&mut self, ino: u64, dir: u64, name: &[u8]) {
        if self.drop_link(ino, dir, name) {
            self.inodes.remove(&ino);
        }
    }

    /// Take the link `dir/name` from `ino`; a link that was its last marks it unlinked. True if
    /// nothing references the inode any more.
    fn drop_link(&mut self, ino: u64, dir: u64, name: &[u8]) -> bool {
        let Some(node) = self.inodes.get_mut(&ino) else {
            return false;
        };
        if node.parent == dir && *node.name == *name {
            if node.more_links.is_empty() {
                node.unlinked = true;
            } else {
                let (p, n) = node.more_links.remove(0);
                node.parent = p;
                node.name = n;
            }
        } else {
            node.more_links
                .retain(|(p, n)| !(*p == dir && **n == *name));
        }
        node.unlinked && node.lookups == 0
    }

    /// Drop an inode nobody references, and the entries of a directory that goes with it.
    fn forget_inode(&mut self, ino: u64) {
        if let Some(node) = self.inodes.remove(&ino) {
            self.by_upper_ino.retain(|_, v| *v != ino);
            for child in node.children.into_iter().flat_map(|c| c.into_values()) {
                if let Some(c) = self.inodes.get_mut(&child)
                    && c.parent == ino
                {
                    c.unlinked = true;
                    if c.lookups == 0 {
                        self.forget_inode(child);
                    }
                }
            }
        }
    }

    /// Add `name` → `ino` to `dir`'s loaded entries.
    fn link_entry(&mut self, dir: u64, name: &[u8], ino: u64) {
        if let Some(c) = self.inodes.get_mut(&dir).and_then(|d| d.children.as_mut()) {
            c.insert(name.into(), ino);
        }
    }
}

impl OverlayFs {
    /// Load `dir`'s entries if not yet loaded.
    fn load(&self, st: &mut State, dir: u64) -> Result<(), FsError> {
        let node = st.get(dir)?;
        if node.children.is_some() {
            return Ok(());
        }
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        let (lower, opaque, is_upper) = (node.lower, node.opaque, node.upper);
        let mut children: BTreeMap<Box<[u8]>, u64> = BTreeMap::new();
        if let Some(lower) = lower.filter(|_| !opaque) {
            for (name, id) in self.image.tree.children(lower) {
                let child = self.image.tree.node(id).ok_or(FsError::Io)?;
                let mut ino = u64::from(id.0) + 1;
                if let Some(shared) = st.inodes.get_mut(&ino) {
                    if child.nlink > 1 && !child.is_dir() && shared.lower == Some(id) {
                        // Another name of a lower hard link: the same inode, as the kernel's
                        // overlayfs shows it.
                        shared.more_links.push((dir, Box::from(name)));
                        children.insert(Box::from(name), ino);
                        continue;
                    }
                    ino = st.fresh_ino();
                }
                let mut inode = Inode::new(dir, name, kind_of(&child.body));
                inode.upper = false;
                inode.lower = Some(id);
                st.inodes.insert(ino, inode);
                children.insert(Box::from(name), ino);
            }
        }
        if is_upper {
            let path = st.path(dir)?;
            let fd = self.upper.dir_for_reading(&path)?;
            let mut names = Vec::new();
            let mut reader = rustix::fs::Dir::read_from(&fd)?;
            while let Some(entry) = reader.read() {
                let name = entry?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.push(name);
                }
            }
            for name in names {
                let Ok(s) = upper::stat(&fd, &name) else {
                    continue;
                };
                let below = children.get(&name[..]).copied();
                if upper::is_whiteout(&s) {
                    if let Some(ino) = below {
                        children.remove(&name[..]);
                        st.detach(ino, dir, &name);
                    }
                    continue;
                }
                let mut t = Type::from_mode(s.st_mode, s.st_rdev);
                if !self.upper.privileged
                    && t == Type::File
                    && let Ok(pfd) = upper::open_path(&fd, &name)
                    && let Some(k) = upper::read_override(&pfd).and_then(|o| o.kind)
                {
                    t = k;
                }
                let kind = kind_of_type(t);
                let dir_opaque = kind == FileType::Directory && {
                    let pfd = upper::open_path(&fd, &name)?;
                    upper::get_xattr(&pfd, &self.upper.overlay_xattr("opaque"))?.as_deref()
                        == Some(b"y")
                };
                // Several upper links to one file are one inode.
                if kind != FileType::Directory
                    && s.st_nlink > 1
                    && let Some(&ino) = st.by_upper_ino.get(&s.st_ino)
                    && st.inodes.contains_key(&ino)
                {
                    if below != Some(ino) {
                        if let Some(b) = below {
                            st.detach(b, dir, &name);
                        }
                        if let Some(n) = st.inodes.get_mut(&ino) {
                            n.more_links.push((dir, name.clone().into()));
                        }
                    }
                    children.insert(name.into(), ino);
                    continue;
                }
                let shared = below.is_some_and(|b| {
                    st.inodes.get(&b).is_some_and(|n| {
                        !n.more_links.is_empty() || n.parent != dir || *n.name != *name
                    })
                });
                let below = match below {
                    // A lower hard link copied up keeps its links in the upper directory;
                    // a name that now holds a file of its own leaves the others.
                    Some(b) if shared && (kind == FileType::Directory || s.st_nlink < 2) => {
                        st.detach(b, dir, &name);
                        children.remove(&name[..]);
                        None
                    }
                    Some(b) if shared => {
                        let n = st.get_mut(b)?;
                        if n.parent != dir || *n.name != *name {
                            let old = (
                                n.parent,
                                std::mem::replace(&mut n.name, name.clone().into()),
                            );
                            n.more_links.retain(|(p, m)| !(*p == dir && **m == *name));
                            n.more_links.push(old);
                            n.parent = dir;
                        }
                        Some(b)
                    }
                    other => other,
                };
                let ino = match below {
                    Some(ino) => {
                        let n = st.get_mut(ino)?;
                        let merge = kind == FileType::Directory && n.is_dir() && !dir_opaque;
                        if !merge {
                            n.lower = None;
                        }
                        n.upper = true;
                        n.kind = kind;
                        n.opaque = dir_opaque;
                        ino
                    }
                    None => {
                        let ino = st.fresh_ino();
                        let mut n = Inode::new(dir, &name, kind);
                        n.opaque = dir_opaque;
                        st.inodes.insert(ino, n);
                        children.insert(name.clone().into(), ino);
                        ino
                    }
                };
                if kind != FileType::Directory && s.st_nlink > 1 {
                    st.by_upper_ino.insert(s.st_ino, ino);
                }
            }
        }
        st.get_mut(dir)?.children = Some(children);
        Ok(())
    }

    /// The lower paths of the hard-linked lower node `id`.
    fn lower_link_paths(&self, id: NodeId) -> Vec<Vec<u8>> {
        let all = self.lower_links.get_or_init(|| {
            let mut map: HashMap<NodeId, Vec<Vec<u8>>> = HashMap::new();
            for (path, node) in self.image.tree.walk() {
                if self
                    .image
                    .tree
                    .node(node)
                    .is_some_and(|n| n.nlink > 1 && !n.is_dir())
                {
                    map.entry(node).or_default().push(path);
                }
            }
            map
        });
        all.get(&id).cloned().unwrap_or_default()
    }

    /// The inode at `path` in the merged view, loading directories on the way.
    fn resolve(&self, st: &mut State, path: &[u8]) -> Option<u64> {
        let mut cur = ROOT;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            self.load(st, cur).ok()?;
            cur = st.child(cur, c)?;
        }
        Some(cur)
    }

    /// The upper directory of inode `dir`, opened (from the cache when it can be).
    fn dir_fd(&self, st: &State, dir: u64) -> Result<Arc<OwnedFd>, FsError> {
        let mut cache = self.dir_fds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = cache.get(&dir) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.upper.dir(&st.path(dir)?)?);
        if cache.len() >= DIR_FDS {
            cache.clear();
        }
        cache.insert(dir, fd.clone());
        Ok(fd)
    }

    /// Forget the open upper directory of `dir` (removed or replaced).
    fn drop_dir_fd(&self, dir: u64) {
        self.dir_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&dir);
    }

    /// The upper directory that holds `ino`'s first link, opened, and the link's name.
    fn locate(&self, st: &State, ino: u64) -> Result<(Arc<OwnedFd>, Box<[u8]>), FsError> {
        let node = st.get(ino)?;
        if ino == ROOT {
            return Ok((self.dir_fd(st, ROOT)?, Box::from(&b""[..])));
        }
        Ok((self.dir_fd(st, node.parent)?, node.name.clone()))
    }

    /// What `stat` shows for `ino`; `file` is an open upper handle to use if there is one.
    fn attr(
        &self,
        st: &mut State,
        ino: u64,
        file: Option<&std::fs::File>,
    ) -> Result<FileAttr, FsError> {
        let node = st.get(ino)?;
        let is_dir = node.is_dir();
        let mut attr = if node.upper {
            let kept = match file {
                None if node.unlinked => Some(self.open_file_of(ino).ok_or(FsError::NotFound)?),
                _ => None,
            };
            let open = file.or(kept.as_deref());
            let s = match open {
                Some(f) => rustix::fs::fstat(f)?,
                None => {
                    let (dir, name) = self.locate(st, ino)?;
                    upper::stat(&dir, &name)?
                }
            };
            let over = if self.upper.privileged {
                None
            } else if let Some(f) = open {
                upper::read_override(f)
            } else {
                let (dir, name) = self.locate(st, ino)?;
                if name.is_empty() {
                    upper::read_override(&dir)
                } else {
                    upper::open_path(&dir, &name)
                        .ok()
                        .and_then(|fd| upper::read_override(&fd))
                }
            };
            self.upper_attr(ino, &s, over.as_ref())
        } else {
            let id = node.lower.ok_or(FsError::Io)?;
            let tree_node = self.image.tree.node(id).ok_or(FsError::Io)?;
            lower_attr(tree_node, &self.options, INodeNo(ino))
        };
        if is_dir {
            self.load(st, ino)?;
            let subdirs = st
                .get(ino)?
                .children
                .iter()
                .flat_map(|c| c.values())
                .filter(|c| st.inodes.get(c).is_some_and(Inode::is_dir))
                .count();
            attr.nlink = if self.options.static_nlink {
                1
            } else {
                2u32.saturating_add(u32::try_from(subdirs).unwrap_or(u32::MAX))
            };
        }
        Ok(attr)
    }

    fn upper_attr(&self, ino: u64, s: &rustix::fs::Stat, over: Option<&Override>) -> FileAttr {
        let mut t = Type::from_mode(s.st_mode, s.st_rdev);
        let mut perm = s.st_mode & 0o7777;
        let (mut uid, mut gid) = (s.st_uid, s.st_gid);
        if let Some(o) = over {
            uid = o.uid;
            gid = o.gid;
            perm = o.mode;
            if let Some(k) = o.kind {
                t = k;
            }
        }
        let (major, minor) = match t {
            Type::Char(a, b) | Type::Block(a, b) => (a, b),
            _ => (0, 0),
        };
        let size = if t == Type::File || t == Type::Dir || t == Type::Symlink {
            s.st_size as u64
        } else {
            0
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: s.st_blocks as u64,
            atime: time(s.st_atime, s.st_atime_nsec as u32),
            mtime: time(s.st_mtime, s.st_mtime_nsec as u32),
            ctime: time(s.st_ctime, s.st_ctime_nsec as u32),
            crtime: time(s.st_mtime, s.st_mtime_nsec as u32),
            kind: kind_of_type(t),
            perm: perm as u16,
            nlink: u32::try_from(s.st_nlink).unwrap_or(u32::MAX),
            uid: self.options.show_uid(u64::from(uid)),
            gid: self.options.show_gid(u64::from(gid)),
            rdev: rdev(major, minor),
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// Look `name` up in `parent` and count the reference the kernel now holds.
    fn do_lookup(&self, parent: u64, name: &[u8]) -> Result<FileAttr, FsError> {
        super::check_name_len(name)?;
        let mut st = self.lock();
        self.load(&mut st, parent)?;
        let ino = st.child(parent, name).ok_or(FsError::NotFound)?;
        let attr = self.attr(&mut st, ino, None)?;
        st.get_mut(ino)?.lookups += 1;
        Ok(attr)
    }

    fn do_forget(&self, ino: u64, n: u64) {
        let mut st = self.lock();
        if let Some(node) = st.inodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && node.unlinked {
                st.forget_inode(ino);
                self.drop_dir_fd(ino);
            }
        }
    }

    /// A snapshot of `dir`'s entries for readdir.
    fn do_opendir(&self, dir: u64) -> Result<u64, FsError> {
        let mut st = self.lock();
        self.load(&mut st, dir)?;
        let node = st.get(dir)?;
        let mut list = vec![
            (Box::from(&b"."[..]), dir, FileType::Directory),
            (Box::from(&b".."[..]), node.parent, FileType::Directory),
        ];
        for (name, ino) in node.children.iter().flatten() {
            let kind = st.inodes.get(ino).map_or(FileType::RegularFile, |n| n.kind);
            list.push((name.clone(), *ino, kind));
        }
        Ok(self.add_handle(Handle::Dir(Arc::new(list))))
    }

    fn listing(&self, fh: u64) -> Option<Listing> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Dir(l)) => Some(l.clone()),
            _ => None,
        }
    }

    /// Attributes of a listed entry for readdirplus, which counts as a lookup.
    fn listed_attr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let mut st = self.lock();
        let attr = self.attr(&mut st, ino, None)?;
        st.get_mut(ino)?.lookups += 1;
        Ok(attr)
    }
}
