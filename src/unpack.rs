//! Materialise a merged image into a directory, for hosts without FUSE.
//!
//! Every entry is created relative to its parent's directory fd, which this code itself created
//! (`mkdirat`, then `openat` with `O_NOFOLLOW | O_DIRECTORY`), and every create is exclusive
//! (`O_EXCL`, `mkdirat`, `symlinkat` fail on an existing name). Names come from the merged tree,
//! which never holds `..`, `.`, `/` or empty components, and only directories have children,
//! so no path ever passes through a symlink and nothing outside the target is written. Hard
//! links are made with `linkat` between two names that this run created.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use crate::fs::Image;
use crate::layer::index::Entry;
use crate::tree::{Body, Node, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} exists and is not an empty directory; unpack needs a new or empty directory")]
    NotEmpty(PathBuf),
}

/// What an unpack did, and what it had to leave out (unprivileged runs).
#[derive(Debug, Default)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

struct Unpacker<'a> {
    image: &'a Image,
    privileged: bool,
    /// First path created for each node, for hard links.
    made: HashMap<NodeId, Vec<u8>>,
    root: OwnedFd,
    report: Report,
}

fn io_at(path: &[u8]) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

fn errno_at(path: &[u8]) -> impl FnOnce(rustix::io::Errno) -> Error + '_ {
    move |e| io_at(path)(io::Error::from(e))
}

/// Unpack `image` into `target` (created if missing; must be empty otherwise).
pub fn unpack(image: &Image, target: &Path) -> Result<Report, Error> {
    let tpath = target.as_os_str().as_encoded_bytes();
    std::fs::create_dir_all(target).map_err(io_at(tpath))?;
    if std::fs::read_dir(target)
        .map_err(io_at(tpath))?
        .next()
        .is_some()
    {
        return Err(Error::NotEmpty(target.to_owned()));
    }
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_at(tpath))?;
    let mut u = Unpacker {
        image,
        privileged: rustix::process::geteuid().is_root(),
        made: HashMap::new(),
        root,
        report: Report::default(),
    };
    let root_fd = rustix::io::dup(&u.root).map_err(errno_at(tpath))?;
    u.dir_contents(NodeId::ROOT, &root_fd, b"")?;
    u.finish_node(NodeId::ROOT, &root_fd, None, b"")?;
    Ok(u.report)
}

fn entry_of<'i>(image: &'i Image, node: &Node) -> Option<&'i Entry> {
    let s = node.source?;
    image
        .layers
        .get(s.layer as usize)?
        .entries
        .get(s.entry as usize)
}

impl Unpacker<'_> {
    /// Create the children of directory `id` inside `dir`, depth first.
    fn dir_contents(&mut self, id: NodeId, dir: &OwnedFd, path: &[u8]) -> Result<(), Error> {
        let image = self.image;
        for (name, child) in image.tree.children(id) {
            let mut child_path = path.to_vec();
            if !child_path.is_empty() {
                child_path.push(b'/');
            }
            child_path.extend_from_slice(name);
            self.create(child, dir, name, &child_path)?;
        }
        Ok(())
    }

    fn create(&mut self, id: NodeId, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), Error> {
        let Some(node) = self.image.tree.node(id) else {
            return Ok(());
        };
        let cname = std::ffi::OsStr::from_encoded_bytes_unchecked_safe(name);
        self.report.entries += 1;
        if let Some(first) = self.made.get(&id) {
            rustix::fs::linkat(&self.root, first.as_slice(), dir, cname, AtFlags::empty())
                .map_err(errno_at(path))?;
            return Ok(());
        }
        let private = Mode::from_raw_mode(0o700);
        match &node.body {
            Body::Dir(_) => {
                rustix::fs::mkdirat(dir, cname, private).map_err(errno_at(path))?;
                let fd = rustix::fs::openat(
                    dir,
                    cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_at(path))?;
                self.dir_contents(id, &fd, path)?;
                self.finish_node(id, &fd, None, path)?;
                return Ok(());
            }
            Body::File => {
                let fd = rustix::fs::openat(
                    dir,
                    cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    private,
                )
                .map_err(errno_at(path))?;
                let file = File::from(fd);
                self.copy_content(node, &file, path)?;
                self.finish_node(id, &OwnedFd::from(file), None, path)?;
            }
            Body::Symlink => {
                let target = entry_of(self.image, node)
                    .map(|e| e.link.clone())
                    .unwrap_or_default();
                let target = std::ffi::OsStr::from_encoded_bytes_unchecked_safe(&target);
                rustix::fs::symlinkat(target, dir, cname).map_err(errno_at(path))?;
                self.finish_node(id, dir, Some(cname), path)?;
            }
            Body::Char | Body::Block | Body::Fifo => {
                let (kind, dev) = match node.body {
                    Body::Char => (rustix::fs::FileType::CharacterDevice, true),
                    Body::Block => (rustix::fs::FileType::BlockDevice, true),
                    _ => (rustix::fs::FileType::Fifo, false),
                };
                if dev && !self.privileged {
                    self.report.skipped.push(format!(
                        "{} (device node; needs root)",
                        String::from_utf8_lossy(path)
                    ));
                    return Ok(());
                }
                let rdev = rustix::fs::makedev(node.dev_major, node.dev_minor);
                rustix::fs::mknodat(dir, cname, kind, private, rdev).map_err(errno_at(path))?;
                self.finish_node(id, dir, Some(cname), path)?;
            }
        }
        self.made.insert(id, path.to_vec());
        Ok(())
    }

    fn copy_content(&mut self, node: &Node, file: &File, path: &[u8]) -> Result<(), Error> {
        let Some(source) = node.source else {
            return Ok(());
        };
        let Some(layer) = self.image.layers.get(source.layer as usize) else {
            return Ok(());
        };
        let Some(entry) = layer.entries.get(source.entry as usize) else {
            return Ok(());
        };
        self.report.bytes += crate::layer::copy::copy_entry(layer.stream.as_ref(), entry, file)
            .map_err(io_at(path))?;
        Ok(())
    }

    /// Ownership, mode, xattrs and times, in that order (chown clears setuid bits). With
    /// `name`, `fd` is the parent directory and the node is not followed if a symlink.
    fn finish_node(
        &mut self,
        id: NodeId,
        fd: &OwnedFd,
        name: Option<&std::ffi::OsStr>,
        path: &[u8],
    ) -> Result<(), Error> {
        let Some(node) = self.image.tree.node(id) else {
            return Ok(());
        };
        let is_link = matches!(node.body, Body::Symlink);
        if self.privileged {
            let uid = u32::try_from(node.uid).ok().map(rustix::fs::Uid::from_raw);
            let gid = u32::try_from(node.gid).ok().map(rustix::fs::Gid::from_raw);
            match name {
                Some(n) => rustix::fs::chownat(fd, n, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
                None => rustix::fs::fchown(fd, uid, gid),
            }
            .map_err(errno_at(path))?;
        }
        if !is_link {
            let mode = Mode::from_raw_mode(node.mode & 0o7777);
            match name {
                Some(n) => rustix::fs::chmodat(fd, n, mode, AtFlags::empty()),
                None => rustix::fs::fchmod(fd, mode),
            }
            .map_err(errno_at(path))?;
        }
        if let Some(entry) = entry_of(self.image, node) {
            for (k, v) in &entry.xattrs {
                let key = std::ffi::OsStr::from_encoded_bytes_unchecked_safe(k);
                let result = match name {
                    None => rustix::fs::fsetxattr(fd, key, v, rustix::fs::XattrFlags::empty())
                        .map_err(|e| e.to_string()),
                    // Symlinks, devices and fifos: no fd to set them through.
                    Some(_) => Err("not kept on special files".to_owned()),
                };
                if let Err(e) = result {
                    self.report.skipped.push(format!(
                        "{} xattr {} ({e})",
                        String::from_utf8_lossy(path),
                        String::from_utf8_lossy(k)
                    ));
                }
            }
        }
        let t = Timespec {
            tv_sec: node.mtime,
            tv_nsec: i64::from(node.mtime_nsec.min(999_999_999)),
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        match name {
            Some(n) => rustix::fs::utimensat(fd, n, &times, AtFlags::SYMLINK_NOFOLLOW),
            None => rustix::fs::futimens(fd, &times),
        }
        .map_err(errno_at(path))?;
        Ok(())
    }
}

/// `OsStr` from bytes without `unsafe`: Unix `OsStr`s are arbitrary bytes.
trait FromBytes {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytes for std::ffi::OsStr {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}
