//! A plain directory as a lower layer (overlayfs' `lowerdir=`), so that yesterday's upper
//! directory can be today's lower and layerfs can stand in for fuse-overlayfs.
//!
//! The directory is scanned once at mount time into the same entries a tar index holds, with
//! overlayfs' own markers turned into OCI's: a 0/0 character device, a `.wh.NAME` file or a
//! file with the `overlay.whiteout` xattr is a whiteout of NAME; a directory with
//! `trusted.overlay.opaque=y`, `user.overlay.opaque=y` or `user.fuseoverlayfs.opaque=y`, or
//! holding `.wh..wh..opq`, is opaque; `user.containers.override_stat` gives the owner, mode and
//! type a rootless writer could not set. Everything is opened relative to directory fds, never
//! through a host path, so no path length limit applies and nothing outside the directory is
//! reached.
//!
//! Content is read through a virtual stream: file number `i`'s bytes sit at `i · 2^40`, so the
//! readers written for tar streams ([`super::reader::read_entry`]) serve directory files too.
//! A file over 1 TiB cannot be represented and is refused at scan time.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::index::{Data, Entry, Kind};
use super::reader::ReadAt;

/// Bits of the virtual offset that address a byte inside one file (1 TiB).
const FILE_BITS: u32 = 40;
/// Most files a directory lower can hold (the rest of the 64-bit offset).
const MAX_FILES: usize = 1 << (64 - FILE_BITS);
/// Open files kept for reading: enough for the files being read at once.
const OPEN_FILES: usize = 64;
/// Largest xattr value read.
const MAX_XATTR: usize = 64 << 10;
/// Deepest directory nesting scanned.
const MAX_DEPTH: usize = 4096;

/// A scanned directory lower: its entries and the stream that reads their content.
pub struct DirLayer {
    pub entries: Vec<Entry>,
    pub stream: DirStream,
}

/// Reads the files of a directory lower by virtual offset.
pub struct DirStream {
    root: OwnedFd,
    /// Relative path of file `i`.
    files: Vec<Vec<u8>>,
    open: Mutex<Vec<(usize, std::sync::Arc<std::fs::File>)>>,
}

impl DirStream {
    fn file(&self, i: usize) -> io::Result<std::sync::Arc<std::fs::File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = open.iter().position(|(n, _)| *n == i) {
            let entry = open.remove(pos);
            let f = entry.1.clone();
            open.push(entry);
            return Ok(f);
        }
        let path = self
            .files
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such file"))?;
        let fd = rfs::openat2(
            &self.root,
            path.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rfs::ResolveFlags::IN_ROOT | rfs::ResolveFlags::NO_MAGICLINKS,
        )?;
        let f = std::sync::Arc::new(std::fs::File::from(fd));
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((i, f.clone()));
        Ok(f)
    }
}

impl DirStream {
    /// The open file behind the virtual `offset`, and the offset in it.
    fn locate(&self, offset: u64) -> io::Result<(std::sync::Arc<std::fs::File>, u64)> {
        let i = usize::try_from(offset >> FILE_BITS)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        Ok((self.file(i)?, offset & ((1 << FILE_BITS) - 1)))
    }
}

impl ReadAt for DirStream {
    fn verbatim(&self, offset: u64) -> Option<io::Result<(std::sync::Arc<std::fs::File>, u64)>> {
        Some(self.locate(offset))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (file, pos) = self.locate(offset)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Why a directory could not serve as a lower layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: files of 1 TiB or more cannot be served from a directory lower")]
    TooLarge(String),
    #[error("the directory holds more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("{0}: directories nested deeper than {MAX_DEPTH}")]
    TooDeep(String),
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn err(path: &[u8]) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| Error::Io {
        path: show(path),
        source: e.into(),
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn xattrs(fd: &OwnedFd) -> Vec<(Vec<u8>, Vec<u8>)> {
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    let mut names = vec![0u8; MAX_XATTR];
    let n = rfs::listxattr(&proc, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; MAX_XATTR];
        if let Ok(len) = rfs::getxattr(&proc, name, &mut value[..]) {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out
}

fn is_marker_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
        || name == b"user.containers.override_stat"
}

fn has(x: &[(Vec<u8>, Vec<u8>)], names: &[&[u8]], value: &[u8]) -> bool {
    x.iter()
        .any(|(n, v)| names.contains(&n.as_slice()) && v.as_slice() == value)
}

/// Scan the directory `root` into a layer.
pub fn scan(root: &std::path::Path) -> Result<DirLayer, Error> {
    let shown = root.as_os_str().as_encoded_bytes().to_vec();
    let root_fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err(&shown))?;
    let mut entries = Vec::new();
    let mut files = Vec::new();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let root_x = xattrs(&root_fd);
    if has(
        &root_x,
        &[
            b"trusted.overlay.opaque",
            b"user.overlay.opaque",
            b"user.fuseoverlayfs.opaque",
        ],
        b"y",
    ) {
        entries.push(marker(b".wh..wh..opq"));
    }
    let dup = rfs::openat(
        &root_fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err(&shown))?;
    let mut stack: Vec<(OwnedFd, Vec<u8>, usize)> = vec![(dup, Vec::new(), 0)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep(show(&prefix)));
        }
        let mut names = Vec::new();
        let mut reader = rfs::Dir::read_from(&dir).map_err(err(&prefix))?;
        while let Some(e) = reader.read() {
            let name = e.map_err(err(&prefix))?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = join(&prefix, &name);
            let st = rfs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(err(&path))?;
            let fmt = st.st_mode & 0o170000;
            if fmt == 0o020000 && st.st_rdev == 0 {
                entries.push(marker(&join(&prefix, &[b".wh.", &name[..]].concat())));
                continue;
            }
            let pfd = rfs::openat(
                &dir,
                name.as_slice(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(err(&path))?;
            let x = if fmt == 0o120000 {
                Vec::new()
            } else {
                xattrs(&pfd)
            };
            if fmt == 0o100000
                && st.st_size == 0
                && x.iter()
                    .any(|(n, _)| n == b"trusted.overlay.whiteout" || n == b"user.overlay.whiteout")
            {
                entries.push(marker(&join(&prefix, &[b".wh.", &name[..]].concat())));
                continue;
            }
            let over = x
                .iter()
                .find(|(n, _)| n == b"user.containers.override_stat")
                .and_then(|(_, v)| crate::fs::overlay::upper::Override::parse(v));
            let mut e = Entry {
                path: path.clone(),
                mode: st.st_mode & 0o7777,
                uid: u64::from(st.st_uid),
                gid: u64::from(st.st_gid),
                mtime: st.st_mtime,
                mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
                xattrs: x
                    .iter()
                    .filter(|(n, _)| !is_marker_xattr(n))
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            let (major, minor) = (rfs::major(st.st_rdev), rfs::minor(st.st_rdev));
            e.kind = match fmt {
                0o040000 => Kind::Dir,
                0o120000 => Kind::Symlink,
                0o010000 | 0o140000 => Kind::Fifo,
                0o020000 => Kind::Char,
                0o060000 => Kind::Block,
                _ => Kind::File,
            };
            e.dev_major = major;
            e.dev_minor = minor;
            if let Some(o) = over {
                e.uid = u64::from(o.uid);
                e.gid = u64::from(o.gid);
                e.mode = o.mode;
                match o.kind {
                    Some(crate::fs::overlay::upper::Type::Char(a, b)) => {
                        (e.kind, e.dev_major, e.dev_minor) = (Kind::Char, a, b)
                    }
                    Some(crate::fs::overlay::upper::Type::Block(a, b)) => {
                        (e.kind, e.dev_major, e.dev_minor) = (Kind::Block, a, b)
                    }
                    Some(crate::fs::overlay::upper::Type::Fifo) => e.kind = Kind::Fifo,
                    _ => {}
                }
            }
            match e.kind {
                Kind::Dir => {
                    let opaque = has(
                        &x,
                        &[
                            b"trusted.overlay.opaque",
                            b"user.overlay.opaque",
                            b"user.fuseoverlayfs.opaque",
                        ],
                        b"y",
                    );
                    entries.push(e);
                    if opaque {
                        entries.push(marker(&join(&path, b".wh..wh..opq")));
                    }
                    let sub = rfs::openat(
                        &dir,
                        name.as_slice(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(err(&path))?;
                    stack.push((sub, path, depth + 1));
                    continue;
                }
                Kind::Symlink => {
                    e.link = rfs::readlinkat(&dir, name.as_slice(), Vec::new())
                        .map_err(err(&path))?
                        .into_bytes();
                }
                Kind::File if fmt == 0o100000 => {
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1
                        && let Some(first) = links.get(&key)
                    {
                        e.kind = Kind::Hardlink;
                        e.link = first.clone();
                    } else {
                        if st.st_nlink > 1 {
                            links.insert(key, path.clone());
                        }
                        let size = st.st_size as u64;
                        if size >= 1 << FILE_BITS {
                            return Err(Error::TooLarge(show(&path)));
                        }
                        if files.len() >= MAX_FILES {
                            return Err(Error::TooManyFiles);
                        }
                        e.size = size;
                        e.data = Data::Contiguous {
                            offset: (files.len() as u64) << FILE_BITS,
                        };
                        files.push(path.clone());
                    }
                }
                _ => {}
            }
            entries.push(e);
        }
    }
    // `.wh.NAME` files (fuse-overlayfs' whiteouts where it could not make devices) are OCI
    // whiteouts already; `.wh..wh..opq` likewise.
    Ok(DirLayer {
        entries,
        stream: DirStream {
            root: root_fd,
            files,
            open: Mutex::new(Vec::new()),
        },
    })
}

fn marker(path: &[u8]) -> Entry {
    Entry {
        path: path.to_vec(),
        kind: Kind::File,
        mode: 0o644,
        ..Default::default()
    }
}
