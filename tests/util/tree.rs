//! Snapshots of a directory tree (a FUSE mount, an unpacked rootfs, umoci's rootfs) and their
//! comparison, field by field: the differential tests' judge.
//!
//! A [`Tree`] maps each path, as raw bytes relative to the root and starting with `/`, to what
//! `lstat`, `readlink` and `llistxattr` say about it and the sha256 of regular files. Nothing is
//! followed: symlinks are read, never resolved; fifos and devices are never opened.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sha256_file;

/// How many differences a failed comparison lists before it stops.
const MAX_REPORTED: usize = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// What one path is, as the walker saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `st_size` of regular files; 0 for everything else (directory sizes mean nothing here).
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    /// `(major, minor)` of device nodes.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `(seconds, nanoseconds)`.
    pub mtime: (i64, i64),
    pub ino: u64,
    pub nlink: u64,
}

/// A walked tree: path (`/`, `/etc`, `/etc/passwd`, ...) to node.
pub struct Tree {
    pub name: String,
    pub root: PathBuf,
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

/// Shows a raw path the way `OsStr`'s `Debug` does: quoted, non-UTF-8 bytes as `\xNN`.
pub fn show(path: &[u8]) -> String {
    format!("{:?}", OsStr::from_bytes(path))
}

impl Tree {
    /// Walks `root` (which is itself recorded as `/`).
    pub fn walk(name: &str, root: &Path) -> Tree {
        let mut nodes = BTreeMap::new();
        let mut stack = vec![(b"/".to_vec(), root.to_path_buf())];
        while let Some((rel, path)) = stack.pop() {
            let node = read_node(&path);
            if node.kind == Kind::Dir {
                let entries = fs::read_dir(&path)
                    .unwrap_or_else(|e| panic!("{name}: read_dir {}: {e}", path.display()));
                for entry in entries {
                    let entry = entry
                        .unwrap_or_else(|e| panic!("{name}: read_dir {}: {e}", path.display()));
                    let mut child = rel.clone();
                    if child.len() > 1 {
                        child.push(b'/');
                    }
                    child.extend_from_slice(entry.file_name().as_bytes());
                    stack.push((child, entry.path()));
                }
            }
            nodes.insert(rel, node);
        }
        Tree {
            name: name.to_string(),
            root: root.to_path_buf(),
            nodes,
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path.as_bytes())
    }

    /// The node at `path`, or a panic naming the tree.
    #[track_caller]
    pub fn node(&self, path: &str) -> &Node {
        self.get(path)
            .unwrap_or_else(|| panic!("{}: no {path:?} in the tree", self.name))
    }

    /// Sets of paths that share an inode (non-directories with more than one name).
    pub fn link_groups(&self) -> BTreeSet<Vec<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (path, node) in &self.nodes {
            if node.kind != Kind::Dir {
                by_ino.entry(node.ino).or_default().push(path.clone());
            }
        }
        by_ino.into_values().filter(|g| g.len() > 1).collect()
    }
}

fn read_node(path: &Path) -> Node {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        Kind::Socket
    };
    let xattrs = xattr::list(path)
        .unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()))
        .map(|name| {
            let value = xattr::get(path, &name)
                .unwrap_or_else(|e| panic!("lgetxattr {} {name:?}: {e}", path.display()))
                .unwrap_or_default();
            (name.as_bytes().to_vec(), value)
        })
        .collect();
    let rdev = meta.rdev();
    Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if kind == Kind::File { meta.size() } else { 0 },
        sha256: (kind == Kind::File).then(|| sha256_file(path)),
        target: (kind == Kind::Symlink).then(|| {
            fs::read_link(path)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
                .as_os_str()
                .as_bytes()
                .to_vec()
        }),
        rdev: matches!(kind, Kind::Char | Kind::Block).then(|| (major(rdev), minor(rdev))),
        xattrs,
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ino: meta.ino(),
        nlink: meta.nlink(),
    }
}

/// `major()` of a Linux `dev_t`, as glibc encodes it.
pub fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// `minor()` of a Linux `dev_t`, as glibc encodes it.
pub fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// What [`diff`] compares beyond paths, types, modes, owners, sizes, contents, link targets,
/// device numbers and hardlink groups.
#[derive(Clone, Debug, Default)]
pub struct Compare {
    /// Paths whose entries are in a layer's tar: their mtimes must agree. Directories a tool
    /// created implicitly may carry any mtime.
    pub mtimes_of: BTreeSet<Vec<u8>>,
    /// Compare xattrs.
    pub xattrs: bool,
    /// Compare `st_nlink` of non-directories.
    pub nlink: bool,
}

impl Compare {
    /// Everything, mtimes of `explicit` paths included.
    pub fn full(explicit: BTreeSet<Vec<u8>>) -> Compare {
        Compare {
            mtimes_of: explicit,
            xattrs: true,
            nlink: true,
        }
    }
}

/// Every difference between `a` and `b`, one line each.
pub fn diff(a: &Tree, b: &Tree, opts: &Compare) -> Vec<String> {
    let mut out = Vec::new();
    let (an, bn) = (&a.name, &b.name);
    for path in a
        .nodes
        .keys()
        .chain(b.nodes.keys())
        .collect::<BTreeSet<_>>()
    {
        let p = show(path);
        let (x, y) = match (a.nodes.get(path), b.nodes.get(path)) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => {
                out.push(format!("{p}: only in {an} ({:?})", x.kind));
                continue;
            }
            (None, Some(y)) => {
                out.push(format!("{p}: only in {bn} ({:?})", y.kind));
                continue;
            }
            (None, None) => unreachable!(),
        };
        let mut field = |what: &str, l: &dyn fmt::Debug, r: &dyn fmt::Debug| {
            let (l, r) = (format!("{l:?}"), format!("{r:?}"));
            if l != r {
                out.push(format!("{p}: {what}: {an} {l}, {bn} {r}"));
            }
        };
        field("type", &x.kind, &y.kind);
        if x.kind != y.kind {
            continue;
        }
        field("mode", &Octal(x.mode), &Octal(y.mode));
        field("uid", &x.uid, &y.uid);
        field("gid", &x.gid, &y.gid);
        field("size", &x.size, &y.size);
        field("sha256", &x.sha256, &y.sha256);
        field(
            "symlink target",
            &x.target.as_deref().map(show),
            &y.target.as_deref().map(show),
        );
        field("device", &x.rdev, &y.rdev);
        if opts.xattrs {
            let shown = |n: &Node| -> BTreeMap<String, String> {
                n.xattrs.iter().map(|(k, v)| (show(k), show(v))).collect()
            };
            field("xattrs", &shown(x), &shown(y));
        }
        if opts.nlink && x.kind != Kind::Dir {
            field("nlink", &x.nlink, &y.nlink);
        }
        if opts.mtimes_of.contains(path) {
            field("mtime", &x.mtime, &y.mtime);
        }
    }
    let groups = |t: &Tree| -> BTreeSet<Vec<String>> {
        t.link_groups()
            .into_iter()
            .map(|g| g.iter().map(|p| show(p)).collect())
            .collect()
    };
    let (ga, gb) = (groups(a), groups(b));
    for g in ga.difference(&gb) {
        out.push(format!("hardlink group only in {an}: {g:?}"));
    }
    for g in gb.difference(&ga) {
        out.push(format!("hardlink group only in {bn}: {g:?}"));
    }
    out
}

/// Panics with a readable report if `a` and `b` differ.
#[track_caller]
pub fn assert_same(a: &Tree, b: &Tree, opts: &Compare) {
    if let Some(report) = report(a, b, opts) {
        panic!("{report}");
    }
}

/// Panics with one report for every pair `(a, b, opts)` that differs.
#[track_caller]
pub fn assert_all_same(pairs: &[(&Tree, &Tree, &Compare)]) {
    let reports: Vec<String> = pairs
        .iter()
        .filter_map(|(a, b, opts)| report(a, b, opts))
        .collect();
    if !reports.is_empty() {
        panic!("{}", reports.join("\n"));
    }
}

/// A readable report of the differences between `a` and `b`, if any.
pub fn report(a: &Tree, b: &Tree, opts: &Compare) -> Option<String> {
    let differences = diff(a, b, opts);
    if differences.is_empty() {
        return None;
    }
    let mut report = format!(
        "{} ({}) and {} ({}) differ in {} ways:\n",
        a.name,
        a.root.display(),
        b.name,
        b.root.display(),
        differences.len()
    );
    for d in differences.iter().take(MAX_REPORTED) {
        report.push_str("  ");
        report.push_str(d);
        report.push('\n');
    }
    if differences.len() > MAX_REPORTED {
        report.push_str(&format!(
            "  ... and {} more\n",
            differences.len() - MAX_REPORTED
        ));
    }
    Some(report)
}

struct Octal(u32);

impl fmt::Debug for Octal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// Paths (as in a [`Tree`]) of the entries in a layer's tar, whiteouts excepted: the paths
/// whose metadata comes from a header rather than from a tool's defaults.
pub fn tar_paths(tar: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = BTreeSet::new();
    for entry in archive.entries().expect("read tar") {
        let entry = entry.expect("read tar entry");
        let raw = entry.path_bytes().into_owned();
        let name = raw.rsplit(|&b| b == b'/').find(|c| !c.is_empty());
        if name.is_some_and(|n| n.starts_with(b".wh.")) {
            continue;
        }
        out.insert(normalize(&raw));
    }
    out
}

/// `./a//b/` → `/a/b`; `.` and `./` → `/`.
pub fn normalize(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// `umoci unpack --image STORE:REF BUNDLE`: the reference implementation's rootfs, at
/// `BUNDLE/rootfs`. As root umoci keeps ownership and creates device nodes; otherwise it runs
/// with `--rootless`.
pub fn umoci_unpack(store: &Path, reference: &str, bundle: &Path) -> PathBuf {
    // umoci creates implicit parent directories with 0777 less the umask; pin the umask so
    // that they come out 0755 as the spec has them, whatever the caller's umask.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 022 && exec umoci \"$@\"", "umoci", "unpack"]);
    if !is_root() {
        cmd.arg("--rootless");
    }
    let image = format!("{}:{reference}", store.display());
    let out = cmd
        .arg("--image")
        .arg(&image)
        .arg(bundle)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "umoci unpack --image {image} {} failed (is umoci installed? .ci/run's install step \
         installs it):\n{}",
        bundle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

/// Whether the tests run as root (umoci and unpack keep ownership, device nodes are made).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
