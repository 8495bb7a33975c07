//! The upper directory: every path is opened beneath its root fd with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so nothing a request names can reach outside it,
//! and the few overlayfs conventions the directory must follow live here:
//!
//! - a whiteout is a 0/0 character device (Linux lets unprivileged users make those since 5.8);
//! - an opaque directory carries `trusted.overlay.opaque=y`, or `user.overlay.opaque=y` when the
//!   daemon is not root (what kernel overlayfs reads with `-o userxattr`);
//! - ownership and modes the host refuses a rootless daemon are kept in
//!   `user.containers.override_stat` as `UID:GID:MODE[:TYPE]` (mode in octal; type `file`, `dir`,
//!   `symlink`, `pipe`, `socket`, `char-MAJ-MIN` or `block-MAJ-MIN`), as containers-storage and
//!   fuse-overlayfs keep them.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Name of the xattr that keeps the ownership and mode a rootless daemon cannot set.
pub const OVERRIDE_STAT: &str = "user.containers.override_stat";
/// Longest xattr value read back (the kernel's own limit).
const MAX_XATTR: usize = 64 << 10;
/// First buffer tried for an xattr value.
const SMALL_XATTR: usize = 256;

/// The upper directory and who the daemon is.
pub struct Upper {
    root: OwnedFd,
    /// Root may chown, make devices and write `trusted.*` xattrs; others get overrides.
    pub privileged: bool,
}

/// A file type, as stored in the upper directory or in an override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
}

impl Type {
    pub fn from_mode(mode: u32, rdev: u64) -> Type {
        let (major, minor) = (rfs::major(rdev), rfs::minor(rdev));
        match mode & 0o170000 {
            0o040000 => Type::Dir,
            0o120000 => Type::Symlink,
            0o010000 => Type::Fifo,
            0o140000 => Type::Socket,
            0o020000 => Type::Char(major, minor),
            0o060000 => Type::Block(major, minor),
            _ => Type::File,
        }
    }

    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            Type::File => 0o100000,
            Type::Dir => 0o040000,
            Type::Symlink => 0o120000,
            Type::Fifo => 0o010000,
            Type::Socket => 0o140000,
            Type::Char(..) => 0o020000,
            Type::Block(..) => 0o060000,
        }
    }

    fn word(self) -> String {
        match self {
            Type::File => "file".into(),
            Type::Dir => "dir".into(),
            Type::Symlink => "symlink".into(),
            Type::Fifo => "pipe".into(),
            Type::Socket => "socket".into(),
            Type::Char(a, b) => format!("char-{a}-{b}"),
            Type::Block(a, b) => format!("block-{a}-{b}"),
        }
    }

    fn parse_word(s: &str) -> Option<Type> {
        let dev = |rest: &str| -> Option<(u32, u32)> {
            let (a, b) = rest.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        Some(match s {
            "file" => Type::File,
            "dir" => Type::Dir,
            "symlink" => Type::Symlink,
            "pipe" => Type::Fifo,
            "socket" => Type::Socket,
            _ => {
                if let Some(r) = s.strip_prefix("char-") {
                    let (a, b) = dev(r)?;
                    Type::Char(a, b)
                } else if let Some(r) = s.strip_prefix("block-") {
                    let (a, b) = dev(r)?;
                    Type::Block(a, b)
                } else {
                    return None;
                }
            }
        })
    }
}

/// Ownership, permission bits and (for a device kept as a plain file) the type an upper
/// entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub kind: Option<Type>,
}

impl Override {
    pub fn parse(value: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(value).ok()?.trim_end_matches('\0');
        let mut parts = s.split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let full = u32::from_str_radix(parts.next()?, 8).ok()?;
        let kind = match parts.next() {
            Some(w) => Some(Type::parse_word(w)?),
            // Older writers put the type in the mode's S_IFMT bits.
            None if full & 0o170000 != 0 => Some(Type::from_mode(full, 0)),
            None => None,
        };
        Some(Override {
            uid,
            gid,
            mode: full & 0o7777,
            kind,
        })
    }

    pub fn encode(&self) -> String {
        match self.kind {
            Some(k) => format!("{}:{}:{:04o}:{}", self.uid, self.gid, self.mode, k.word()),
            None => format!("{}:{}:{:04o}", self.uid, self.gid, self.mode),
        }
    }
}

/// `/proc/self/fd/N` for `fd`: how xattrs of an entry opened with `O_PATH` are reached
/// without building a path through the upper directory.
pub fn proc_path(fd: impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

impl Upper {
    pub fn open(path: &Path) -> std::io::Result<Upper> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Upper {
            root,
            privileged: rustix::process::geteuid().is_root(),
        })
    }

    /// `trusted.overlay.` for root, `user.overlay.` otherwise.
    pub fn overlay_xattr(&self, name: &str) -> String {
        if self.privileged {
            format!("trusted.overlay.{name}")
        } else {
            format!("user.overlay.{name}")
        }
    }

    fn beneath(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        rfs::openat2(
            &self.root,
            path,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory at `rel` (empty: the root), opened for `*at` calls.
    pub fn dir(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        self.beneath(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The directory at `rel`, opened for reading its entries or syncing.
    pub fn dir_for_reading(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        self.beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The statfs of the upper directory's filesystem.
    pub fn statvfs(&self) -> Result<rfs::StatVfs, Errno> {
        rfs::fstatvfs(&self.root)
    }
}

/// `name` in `dir`, opened with `O_PATH` (devices and fifos are never really opened).
pub fn open_path(dir: &OwnedFd, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

pub fn stat(dir: &OwnedFd, name: &[u8]) -> Result<rfs::Stat, Errno> {
    if name.is_empty() {
        rfs::fstat(dir)
    } else {
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
    }
}

/// True if the stat describes a whiteout (0/0 character device).
pub fn is_whiteout(st: &rfs::Stat) -> bool {
    st.st_mode & 0o170000 == 0o020000 && st.st_rdev == 0
}

/// One xattr of the entry behind `fd` (an `O_PATH` fd), or `None` if it has none by that name.
pub fn get_xattr(fd: impl AsFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let path = proc_path(fd);
    // Most values are short: try a small buffer before the largest one.
    let mut buf = vec![0u8; SMALL_XATTR];
    loop {
        match rfs::getxattr(path.as_str(), name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) if buf.len() < MAX_XATTR => buf.resize(MAX_XATTR, 0),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::PERM) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

pub fn set_xattr(fd: impl AsFd, name: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
    let flags = rfs::XattrFlags::from_bits_retain(flags as u32);
    rfs::setxattr(proc_path(fd), name, value, flags)
}

pub fn remove_xattr(fd: impl AsFd, name: &[u8]) -> Result<(), Errno> {
    rfs::removexattr(proc_path(fd), name)
}

/// Every xattr name of the entry behind `fd`.
pub fn list_xattrs(fd: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; MAX_XATTR];
    let n = match rfs::listxattr(proc_path(fd), &mut buf[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::PERM) => 0,
        Err(e) => return Err(e),
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The override of the entry behind `fd`, if it has a valid one.
pub fn read_override(fd: impl AsFd) -> Option<Override> {
    get_xattr(fd, OVERRIDE_STAT)
        .ok()
        .flatten()
        .and_then(|v| Override::parse(&v))
}

/// True if `name` is one of the xattrs the upper directory's format uses, which the mount
/// never shows nor lets anyone set.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == OVERRIDE_STAT.as_bytes()
}

/// Make a whiteout named `name` in `dir`.
pub fn make_whiteout(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    rfs::mknodat(
        dir,
        name,
        rfs::FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        0,
    )
}

/// A name in `dir` that nothing uses, for building an entry before renaming it into place.
pub fn temp_name(dir: &OwnedFd, hint: u64) -> Vec<u8> {
    let mut n = 0u32;
    loop {
        let name = format!(".layerfs-tmp-{hint:x}-{n}").into_bytes();
        if matches!(stat(dir, &name), Err(Errno::NOENT)) {
            return name;
        }
        n += 1;
    }
}

/// Link `src_dir/src_name` as `dir/name`, atomically replacing whatever is there (a
/// whiteout, an older copy): linked under a temporary name first, then renamed over it.
pub fn link_replacing(
    src_dir: &OwnedFd,
    src_name: &[u8],
    dir: &OwnedFd,
    name: &[u8],
    hint: u64,
) -> Result<(), Errno> {
    let tmp = temp_name(dir, hint);
    rfs::linkat(src_dir, src_name, dir, tmp.as_slice(), AtFlags::empty())?;
    rfs::renameat(dir, tmp.as_slice(), dir, name).inspect_err(|_| {
        let _ = rfs::unlinkat(dir, tmp.as_slice(), AtFlags::empty());
    })
}

/// Delete everything inside the upper directory `rel` (whiteouts left in a directory that the
/// merged view shows empty), so that it can be removed or replaced.
pub fn clear_dir(upper: &Upper, rel: &[u8]) -> Result<(), Errno> {
    let fd = upper.dir_for_reading(rel)?;
    let mut names = Vec::new();
    let mut dir = rfs::Dir::read_from(&fd)?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((name.to_vec(), entry.file_type() == rfs::FileType::Directory));
        }
    }
    for (name, is_dir) in names {
        if is_dir {
            let mut sub = rel.to_vec();
            if !sub.is_empty() {
                sub.push(b'/');
            }
            sub.extend_from_slice(&name);
            clear_dir(upper, &sub)?;
            rfs::unlinkat(fd.as_fd(), name.as_slice(), AtFlags::REMOVEDIR)?;
        } else {
            rfs::unlinkat(fd.as_fd(), name.as_slice(), AtFlags::empty())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides() {
        let cases: &[(&str, Option<Override>)] = &[
            (
                "0:0:0755",
                Some(Override {
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                    kind: None,
                }),
            ),
            (
                "0:42:4755:file",
                Some(Override {
                    uid: 0,
                    gid: 42,
                    mode: 0o4755,
                    kind: Some(Type::File),
                }),
            ),
            (
                "0:0:0600:char-1-3",
                Some(Override {
                    uid: 0,
                    gid: 0,
                    mode: 0o600,
                    kind: Some(Type::Char(1, 3)),
                }),
            ),
            (
                "5:6:020644",
                Some(Override {
                    uid: 5,
                    gid: 6,
                    mode: 0o644,
                    kind: Some(Type::Char(0, 0)),
                }),
            ),
            ("0:0", None),
            ("a:0:0644", None),
            ("0:0:0644:bogus", None),
        ];
        for (text, want) in cases {
            assert_eq!(Override::parse(text.as_bytes()), *want, "{text}");
            if let Some(o) = want
                && text.split(':').count() == 4
            {
                assert_eq!(o.encode(), *text);
            }
        }
    }
}
