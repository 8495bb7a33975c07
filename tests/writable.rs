//! Writable mounts (`layerfs mount --upper DIR`): changes land in the upper directory in
//! overlayfs' format, survive a remount byte for byte, and kernel overlayfs over the image's
//! unpacked rootfs (`umoci unpack`) and the same upper directory shows the same tree.
//!
//! Also: a rootless mount keeps what the host refuses (owners, setuid, a copied-up device:
//! unprivileged processes cannot mknod devices on any filesystem) in
//! `user.containers.override_stat`; a seeded random sequence of operations gives the same tree
//! in the mount as in a plain directory; a daemon killed with SIGKILL loses no fsynced file.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{self as rfs, Mode, RenameFlags};
use util::mount::{MountGuard, UserSpace, sh_ok};
use util::tarball::{TarEntry, raw_layer};
use util::tree::{Compare, Kind, Tree, assert_same, is_root, umoci_unpack};
use util::{Compression, Flavor, Image, ImageBuilder, Registry, Sandbox, pseudo_random};

/// Size of the big lower file: more than one copy-up chunk (1 MiB), not a multiple of it.
const BIG: usize = 3 * 1024 * 1024 + 777;

fn lower_image() -> Image {
    let base = vec![
        TarEntry::dir("a"),
        TarEntry::file("a/file1", "one\n"),
        TarEntry::file("a/file2", "two\n"),
        TarEntry::file("a/file3", "three\n"),
        TarEntry::file("a/file4", "four\n"),
        TarEntry::dir("a/sub"),
        TarEntry::file("a/sub/deep", "deep\n")
            .mode(0o640)
            .owner(3, 4),
        TarEntry::dir("a/sub/deeper"),
        TarEntry::file("a/sub/deeper/x", "x\n"),
        TarEntry::symlink("a/sub/link", "deep"),
        TarEntry::file("b", "b\n"),
        TarEntry::dir("c").mode(0o700).owner(9, 9),
        TarEntry::file("c/x", "x\n"),
        TarEntry::dir("c/y"),
        TarEntry::file("c/y/z", "z\n"),
        TarEntry::file("h/orig", "orig\n"),
        TarEntry::hardlink("h/link", "h/orig"),
        TarEntry::file("h/keep", "keep\n"),
        TarEntry::hardlink("h/keep2", "h/keep"),
        TarEntry::file("big", pseudo_random(7, BIG)),
        TarEntry::file("xa", "xattrs\n").xattr("user.foo", "bar"),
        TarEntry::dir("dir"),
        TarEntry::dir("dir/empty"),
        TarEntry::file("gone", "gone\n"),
        TarEntry::fifo("fifo"),
        TarEntry::char_device("devnull", 1, 3).mode(0o666),
    ];
    let top = vec![
        TarEntry::file(".wh.gone", ""),
        TarEntry::file("a/file5", "five\n").mtime(1_600_000_000),
    ];
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(&base, Compression::Gzip))
        .layer(raw_layer(&top, Compression::Gzip))
        .build()
}

/// Pushes `image` as `test/NAME:v1` and pulls it into `sandbox`'s store.
fn publish(registry: &Registry, sandbox: &Sandbox, name: &str, image: &Image) -> String {
    registry.push_image(&format!("test/{name}"), "v1", image);
    let reference = registry.reference(&format!("test/{name}:v1"));
    sandbox.ok(&["pull", &reference]);
    reference
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_missing(path: &Path) {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("{} should not exist: {other:?}", path.display()),
    }
}

/// Every path of `t` that is not a directory: the entries whose mtimes must survive.
fn non_dirs(t: &Tree) -> BTreeSet<Vec<u8>> {
    t.nodes
        .iter()
        .filter(|(_, n)| n.kind != Kind::Dir)
        .map(|(p, _)| p.clone())
        .collect()
}

/// The changes, made through the mount at `m` (as root).
fn change_everything(m: &Path) {
    fs::create_dir(m.join("new")).unwrap();
    fs::write(m.join("new/file"), "new\n").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("a/file1"))
        .unwrap();
    f.write_all(b"+more\n").unwrap();
    drop(f);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("a/file2"))
        .unwrap();
    f.set_len(1).unwrap();
    drop(f);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    f.write_all_at(b"PATCH", (1 << 20) + 5).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(m.join("b")).unwrap();
    fs::remove_dir_all(m.join("c")).unwrap();
    fs::rename(m.join("a/sub"), m.join("moved")).unwrap();
    fs::rename(m.join("h/orig"), m.join("h/renamed")).unwrap();
    fs::write(m.join("h/keep"), "kept and changed\n").unwrap();
    std::os::unix::fs::chown(m.join("xa"), Some(7), Some(8)).unwrap();
    fs::set_permissions(m.join("xa"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("a/file1", m.join("newlink")).unwrap();
    fs::hard_link(m.join("new/file"), m.join("new/hl")).unwrap();
    rfs::mknodat(
        rfs::CWD,
        m.join("fifo2"),
        rfs::FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rfs::mknodat(
        rfs::CWD,
        m.join("null2"),
        rfs::FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rfs::makedev(1, 3),
    )
    .unwrap();
    xattr::set(m.join("a/file1"), "user.test", b"1").unwrap();
    xattr::remove(m.join("xa"), "user.foo").unwrap();
    fs::create_dir(m.join("c")).unwrap();
    fs::write(m.join("c/fresh"), "fresh\n").unwrap();
    rfs::renameat_with(
        rfs::CWD,
        m.join("new/file"),
        rfs::CWD,
        m.join("a/file3"),
        RenameFlags::EXCHANGE,
    )
    .unwrap();
    let noreplace = rfs::renameat_with(
        rfs::CWD,
        m.join("a/file4"),
        rfs::CWD,
        m.join("a/file5"),
        RenameFlags::NOREPLACE,
    );
    assert_eq!(noreplace, Err(rustix::io::Errno::EXIST));
    fs::remove_dir(m.join("dir/empty")).unwrap();
    fs::write(m.join("new/over"), "over\n").unwrap();
    fs::rename(m.join("new/over"), m.join("a/file4")).unwrap();
    fs::remove_file(m.join("a/file5")).unwrap();
    fs::write(m.join("a/file5"), "five again\n").unwrap();
}

/// What the changes must look like, through any view of the merged tree.
fn assert_changed(m: &Path) {
    assert_eq!(read(&m.join("a/file1")), b"one\n+more\n");
    assert_eq!(read(&m.join("a/file2")), b"t");
    assert_eq!(read(&m.join("a/file3")), b"new\n");
    assert_eq!(read(&m.join("new/file")), b"three\n");
    assert_eq!(read(&m.join("new/hl")), b"new\n");
    assert_eq!(read(&m.join("a/file4")), b"over\n");
    assert_eq!(read(&m.join("a/file5")), b"five again\n");
    let big = read(&m.join("big"));
    let mut want = pseudo_random(7, BIG);
    want[(1 << 20) + 5..(1 << 20) + 10].copy_from_slice(b"PATCH");
    assert!(big == want, "big file content after a write in the middle");
    for gone in ["b", "c/x", "c/y", "a/sub", "h/orig", "dir/empty", "gone"] {
        assert_missing(&m.join(gone));
    }
    assert_eq!(read(&m.join("c/fresh")), b"fresh\n");
    assert_eq!(read(&m.join("moved/deep")), b"deep\n");
    assert_eq!(read(&m.join("moved/deeper/x")), b"x\n");
    assert_eq!(
        fs::read_link(m.join("moved/link")).unwrap(),
        Path::new("deep")
    );
    let deep = fs::metadata(m.join("moved/deep")).unwrap();
    assert_eq!(
        (deep.uid(), deep.gid(), deep.mode() & 0o7777),
        (3, 4, 0o640)
    );
    assert_eq!(read(&m.join("h/renamed")), b"orig\n");
    let (renamed, link) = (
        fs::metadata(m.join("h/renamed")).unwrap(),
        fs::metadata(m.join("h/link")).unwrap(),
    );
    assert_eq!((renamed.ino(), renamed.nlink()), (link.ino(), 2));
    assert_eq!(read(&m.join("h/keep2")), b"kept and changed\n");
    let xa = fs::metadata(m.join("xa")).unwrap();
    assert_eq!((xa.uid(), xa.gid(), xa.mode() & 0o7777), (7, 8, 0o4755));
    assert_eq!(xattr::get(m.join("xa"), "user.foo").unwrap(), None);
    assert_eq!(
        xattr::get(m.join("a/file1"), "user.test").unwrap(),
        Some(b"1".to_vec())
    );
    let null2 = fs::symlink_metadata(m.join("null2")).unwrap();
    assert_eq!(null2.rdev(), rfs::makedev(1, 3));
    let names: BTreeSet<String> = fs::read_dir(m.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = ["file1", "file2", "file3", "file4", "file5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

/// Kernel overlayfs over `lower` and `upper`, unmounted on drop.
struct KernelOverlay {
    path: PathBuf,
}

impl KernelOverlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, mnt: &Path, extra: &str) -> KernelOverlay {
        fs::create_dir_all(work).unwrap();
        fs::create_dir_all(mnt).unwrap();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kernel overlayfs mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        KernelOverlay {
            path: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[track_caller]
fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root (kernel overlayfs mounts and device nodes); CI runs the tests as root"
    );
}

/// The image mounted at the sandbox's `mnt` with `upper` as its upper directory.
fn mount_with_upper(sandbox: &Sandbox, reference: &str, upper: &Path) -> MountGuard {
    MountGuard::mount(
        sandbox,
        reference,
        &sandbox.path("mnt"),
        &["--upper", upper.to_str().unwrap()],
    )
}

#[test]
fn changes_persist_and_match_kernel_overlayfs() {
    require_root("this test");
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let reference = publish(&registry, &sandbox, "writable", &lower_image());
    let upper = sandbox.path("upper");
    let mnt = sandbox.path("mnt");

    let guard = mount_with_upper(&sandbox, &reference, &upper);
    change_everything(&guard.path);
    assert_changed(&guard.path);
    let before = Tree::walk("layerfs before remount", &guard.path);
    guard.unmount();

    // Whiteouts and opaque directories in overlayfs' own format.
    let wo = fs::symlink_metadata(upper.join("b")).unwrap();
    assert!(
        wo.file_type().is_char_device() && wo.rdev() == 0,
        "b should be a whiteout"
    );
    assert_eq!(
        xattr::get(upper.join("c"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(upper.join("moved"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );

    let guard = mount_with_upper(&sandbox, &reference, &upper);
    assert_changed(&guard.path);
    let after = Tree::walk("layerfs after remount", &guard.path);
    assert_same(&before, &after, &Compare::full(non_dirs(&before)));
    guard.unmount();

    let bundle = sandbox.path("umoci");
    let rootfs = umoci_unpack(&sandbox.store, &reference, &bundle);
    let kernel = KernelOverlay::mount(
        &rootfs,
        &upper,
        &sandbox.path("work"),
        &sandbox.path("kmnt"),
        "",
    );
    assert_changed(&kernel.path);
    let seen = Tree::walk("kernel overlayfs", &kernel.path);
    assert_same(&before, &seen, &Compare::full(non_dirs(&before)));
    drop(kernel);

    // commit: the upper directory becomes a layer; the new image mounts as the view did, and
    // umoci reads it the same. The same changes give the same digest.
    let commit = |name: &str| {
        let out = sandbox.ok(&[
            "commit",
            upper.to_str().unwrap(),
            name,
            "--timestamp",
            "1700000000",
            "--format",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["digest"].as_str().unwrap().to_owned(),
            v["layer"].as_str().unwrap().to_owned(),
        )
    };
    let (first, layer1) = commit("committed/one:v1");
    let (second, layer2) = commit("committed/two:v1");
    assert_eq!(
        layer1, layer2,
        "the same upper directory gave two layer digests"
    );
    assert_eq!(first, second, "the same commit gave two manifest digests");
    let opts = Compare {
        mtimes_of: BTreeSet::new(),
        xattrs: true,
        nlink: true,
    };
    let guard = MountGuard::mount(&sandbox, "committed/one:v1", &mnt, &[]);
    assert_changed(&guard.path);
    let committed = Tree::walk("committed image", &guard.path);
    assert_same(&before, &committed, &opts);
    guard.unmount();
    let rootfs = umoci_unpack(
        &sandbox.store,
        "docker.io/committed/one:v1",
        &sandbox.path("umoci-committed"),
    );
    let unpacked = Tree::walk("umoci unpack of the committed image", &rootfs);
    assert_same(&before, &unpacked, &opts);
}

#[test]
fn rootless_ownership_and_devices_persist_in_override_xattrs() {
    let registry = Registry::start();
    let image = lower_image();
    registry.push_image("test/rootless-rw", "v1", &image);
    let reference = registry.reference("test/rootless-rw:v1");
    let user = UserSpace::new();
    let out = user.layerfs(&["pull", &reference]).output().unwrap();
    assert!(out.status.success(), "pull: {out:?}");
    let upper = user.base.join("upper");
    let guard = user.mount(&reference, "mnt", &["--upper", upper.to_str().unwrap()]);
    let m = guard.path.display().to_string();
    sh_ok(
        &user,
        &format!(
            "set -e; cd {m}; echo hi > mine; chown 0:0 mine; chmod 4755 mine; \
             chmod 0600 devnull; chown 0:5 devnull; echo appended >> a/sub/deep; \
             rm b; mkdir c2; chown 1234:5678 c2; chmod 0750 c2; mv a/sub moved"
        ),
    );
    let show = "stat -c '%n %u %g %a %F %t:%T' mine devnull a/file1 moved/deep c2";
    let expected = "mine 0 0 4755 regular file 0:0\n\
                    devnull 0 5 600 character special file 1:3\n\
                    a/file1 0 0 644 regular file 0:0\n\
                    moved/deep 3 4 640 regular file 0:0\n\
                    c2 1234 5678 750 directory 0:0\n";
    assert_eq!(sh_ok(&user, &format!("cd {m} && {show}")), expected);
    assert_eq!(
        sh_ok(&user, &format!("cat {m}/moved/deep")),
        "deep\nappended\n"
    );
    drop(guard);

    // On disk the files are the user's; what they stand for is in the override.
    let disk = fs::metadata(upper.join("mine")).unwrap();
    assert_ne!(disk.uid(), 0, "a rootless daemon cannot chown to root");
    assert_eq!(
        xattr::get(upper.join("mine"), "user.containers.override_stat").unwrap(),
        Some(b"0:0:4755:file".to_vec())
    );
    assert_eq!(
        xattr::get(upper.join("devnull"), "user.containers.override_stat").unwrap(),
        Some(b"0:5:0600:char-1-3".to_vec())
    );
    let wo = fs::symlink_metadata(upper.join("b")).unwrap();
    assert!(wo.file_type().is_char_device() && wo.rdev() == 0);
    assert_eq!(
        xattr::get(upper.join("moved"), "user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );

    // A new mount shows the same.
    let guard = user.mount(&reference, "mnt", &["--upper", upper.to_str().unwrap()]);
    let m = guard.path.display().to_string();
    assert_eq!(sh_ok(&user, &format!("cd {m} && {show}")), expected);
    assert!(sh_ok(&user, &format!("ls {m}/b 2>&1 || true")).contains("No such"));
}

/// A tiny deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Paths under `root` (relative), directories and regular files, in a stable order (fifos
/// and symlinks are left alone: writing to a fifo would block).
fn entries(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut files) = (vec![PathBuf::new()], Vec::new());
    let mut i = 0;
    while i < dirs.len() {
        let dir = root.join(&dirs[i]);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let rel = dirs[i].join(&n);
            let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
            if meta.is_dir() {
                dirs.push(rel);
            } else if meta.is_file() {
                files.push(rel);
            }
        }
        i += 1;
    }
    (dirs, files)
}

/// One random operation, applied identically under `root`; returns what it did.
fn random_op(rng: &mut Rng, root: &Path, scope: &Path, n: usize) -> String {
    let (dirs, files) = entries(&root.join(scope));
    let dirs: Vec<PathBuf> = dirs.into_iter().map(|d| scope.join(d)).collect();
    let files: Vec<PathBuf> = files.into_iter().map(|f| scope.join(f)).collect();
    let pick_dir = |rng: &mut Rng| dirs[rng.below(dirs.len())].clone();
    let op = rng.below(10);
    let name = format!("n{n}");
    match op {
        0 | 1 => {
            let p = pick_dir(rng).join(&name);
            let len = rng.below(300_000);
            fs::write(root.join(&p), pseudo_random(n as u64, len)).unwrap();
            format!("create {}", p.display())
        }
        2 if !files.is_empty() => {
            let p = &files[rng.below(files.len())];
            let off = rng.below(200_000) as u64;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(root.join(p))
                .unwrap();
            f.write_all_at(&pseudo_random(n as u64, rng.below(70_000)), off)
                .unwrap();
            format!("write {} at {off}", p.display())
        }
        3 if !files.is_empty() => {
            let p = &files[rng.below(files.len())];
            let len = rng.below(150_000) as u64;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(root.join(p))
                .unwrap();
            f.set_len(len).unwrap();
            format!("truncate {} to {len}", p.display())
        }
        4 if !files.is_empty() => {
            let p = &files[rng.below(files.len())];
            fs::remove_file(root.join(p)).unwrap();
            format!("unlink {}", p.display())
        }
        5 if !files.is_empty() => {
            let from = &files[rng.below(files.len())];
            let to = pick_dir(rng).join(&name);
            fs::rename(root.join(from), root.join(&to)).unwrap();
            format!("rename {} {}", from.display(), to.display())
        }
        6 if !files.is_empty() => {
            let from = &files[rng.below(files.len())];
            let to = pick_dir(rng).join(&name);
            fs::hard_link(root.join(from), root.join(&to)).unwrap();
            format!("link {} {}", from.display(), to.display())
        }
        7 => {
            let p = pick_dir(rng).join(&name);
            fs::create_dir(root.join(&p)).unwrap();
            format!("mkdir {}", p.display())
        }
        8 if !files.is_empty() => {
            let p = &files[rng.below(files.len())];
            let mode = [0o600, 0o644, 0o755, 0o4755, 0o640][rng.below(5)];
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
            format!("chmod {:o} {}", mode, p.display())
        }
        9 if dirs.len() > 1 => {
            let d = &dirs[1 + rng.below(dirs.len() - 1)];
            if d.as_os_str().is_empty() || d == scope {
                return "skip".into();
            }
            if rng.below(2) == 0 {
                let to = pick_dir(rng);
                if to.starts_with(d) {
                    return "skip".into();
                }
                let to = to.join(&name);
                fs::rename(root.join(d), root.join(&to)).unwrap();
                format!("rename dir {} {}", d.display(), to.display())
            } else {
                fs::remove_dir_all(root.join(d)).unwrap();
                format!("rm -r {}", d.display())
            }
        }
        _ => "skip".into(),
    }
}

/// The seeded operations applied to the mount and to a plain copy of the lower tree give the
/// same tree, also with four threads working at once (each in its own directory).
#[test]
fn random_operations_match_a_plain_directory() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let reference = publish(&registry, &sandbox, "random", &lower_image());
    let upper = sandbox.path("upper");
    let guard = mount_with_upper(&sandbox, &reference, &upper);
    let plain = sandbox.path("plain");
    sandbox.ok(&["unpack", &reference, plain.to_str().unwrap()]);
    let mnt = guard.path.clone();

    let mut log = Vec::new();
    for (root, tag) in [(&mnt, "mount"), (&plain, "plain")] {
        let mut rng = Rng(0x001a_7ef5);
        for n in 0..1500 {
            let did = random_op(&mut rng, root, Path::new(""), n);
            if tag == "mount" {
                log.push(did);
            }
        }
    }
    let threads: Vec<_> = (0..4)
        .flat_map(|t| [(mnt.clone(), t), (plain.clone(), t)])
        .map(|(root, t)| {
            std::thread::spawn(move || {
                let scope = PathBuf::from(format!("thread{t}"));
                fs::create_dir(root.join(&scope)).unwrap();
                let mut rng = Rng(0xbeef + t as u64);
                for n in 0..400 {
                    random_op(&mut rng, &root, &scope, n);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a = Tree::walk("mount", &mnt);
    let b = Tree::walk("plain directory", &plain);
    let opts = Compare {
        mtimes_of: BTreeSet::new(),
        xattrs: false,
        nlink: true,
    };
    if let Some(report) = util::tree::report(&a, &b, &opts) {
        panic!(
            "{report}\nlast operations:\n{}",
            log[log.len().saturating_sub(20)..].join("\n")
        );
    }
    guard.unmount();
    let guard = mount_with_upper(&sandbox, &reference, &upper);
    // After a remount: the same tree to the nanosecond of every mtime, xattrs included.
    let again = Tree::walk("mount after remount", &guard.path);
    let exact = Compare {
        mtimes_of: a.nodes.keys().cloned().collect(),
        xattrs: true,
        nlink: true,
    };
    assert_same(&a, &again, &exact);
}

/// SIGKILL of the daemon in the middle of writes: after `layerfs umount` and a new mount,
/// every fsynced file is whole and no half-copied file is visible.
#[test]
fn killed_daemon_loses_no_fsynced_file() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let reference = publish(&registry, &sandbox, "kill", &lower_image());
    let upper = sandbox.path("upper");
    let guard = mount_with_upper(&sandbox, &reference, &upper);
    let m = guard.path.clone();
    let mut synced = Vec::new();
    for i in 0..20 {
        let p = m.join(format!("synced{i}"));
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&pseudo_random(i as u64, 100_000 + i)).unwrap();
        f.sync_all().unwrap();
        synced.push((format!("synced{i}"), pseudo_random(i as u64, 100_000 + i)));
    }
    // The big lower file copied up by an open for writing, then synced.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    f.write_all_at(b"X", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Writers busy when the daemon dies.
    let writer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for i in 0..10_000 {
                if fs::write(m.join(format!("busy{}", i % 50)), pseudo_random(i, 50_000)).is_err() {
                    break;
                }
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    for pid in guard.daemon_pids() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let _ = writer.join();
    // The mount point is stale now; `layerfs umount` clears it.
    sandbox.ok(&["umount", m.to_str().unwrap()]);
    drop(guard);

    let guard = mount_with_upper(&sandbox, &reference, &upper);
    for (name, want) in &synced {
        assert!(
            read(&guard.path.join(name)) == *want,
            "{name} after the kill"
        );
    }
    let mut big = pseudo_random(7, BIG);
    big[0] = b'X';
    assert!(read(&guard.path.join("big")) == big, "big after the kill");
    for e in fs::read_dir(&upper).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".layerfs-tmp-"),
            "a temporary file is left in the upper directory: {name:?}"
        );
    }
    let mut buf = Vec::new();
    fs::File::open(guard.path.join("a/file1"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf, b"one\n");
    guard.unmount();
}

/// Writes, truncations and chowns clear set-user-ID (and set-group-ID where group execute is
/// set) as the VFS does, and `stat` shows it at once; a root writer keeps them. The mount's
/// root takes chmod and chown like any directory.
#[test]
fn writes_clear_set_user_id_as_the_kernel_does() {
    assert!(is_root(), "switches to nobody; CI runs the tests as root");
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let reference = publish(&registry, &sandbox, "suid", &lower_image());
    for dir in [sandbox.path(""), sandbox.path("mnt")] {
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let guard = MountGuard::mount(
        &sandbox,
        &reference,
        &sandbox.path("mnt"),
        &[
            "--upper",
            sandbox.path("upper").to_str().unwrap(),
            "-o",
            "allow_other,default_permissions",
        ],
    );
    let mnt = guard.path.clone();
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777)).unwrap();
    rfs::chown(
        &mnt,
        Some(rfs::Uid::from_raw(0)),
        Some(rfs::Gid::from_raw(0)),
    )
    .unwrap();
    assert_eq!(fs::metadata(&mnt).unwrap().mode() & 0o7777, 0o777);
    let file = mnt.join("tool");
    fs::write(&file, "#!/bin/sh\n").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let as_nobody = |script: &str| {
        let out = Command::new("su")
            .args(["nobody", "-s", "/bin/sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    let path = file.to_str().unwrap().to_owned();
    for (set, action, want) in [
        (0o6777, "write", 0o777),
        (0o6767, "write", 0o2767),
        (0o6777, "truncate", 0o777),
        (0o6777, "root write", 0o6777),
        (0o6777, "chown", 0o777),
    ] {
        fs::set_permissions(&file, fs::Permissions::from_mode(set)).unwrap();
        match action {
            "write" => as_nobody(&format!("echo x >> '{path}'")),
            "truncate" => as_nobody(&format!("truncate -s 1 '{path}'")),
            "root write" => fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap()
                .write_all(b"y\n")
                .unwrap(),
            _ => rfs::chown(&file, Some(rfs::Uid::from_raw(65534)), None).unwrap(),
        }
        assert_eq!(mode(&file), want, "{set:o} after {action}");
    }
    guard.unmount();
}

/// Truncation whatever the handle: `open(O_RDONLY | O_TRUNC)` of a lower file (the kernel then
/// truncates through the read-only handle it got), and `truncate(path)` while the file is open
/// read-only elsewhere.
#[test]
fn truncation_works_through_read_only_handles() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let reference = publish(&registry, &sandbox, "trunc", &lower_image());
    let upper = sandbox.path("upper");
    let guard = mount_with_upper(&sandbox, &reference, &upper);
    let mnt = guard.path.clone();
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(mnt.join("a/file1"))
        .unwrap();
    assert_eq!(opened.metadata().unwrap().len(), 0);
    drop(opened);
    assert_eq!(fs::read(mnt.join("a/file1")).unwrap(), b"");
    assert_eq!(fs::metadata(upper.join("a/file1")).unwrap().len(), 0);

    let reader = fs::File::open(mnt.join("a/file3")).unwrap();
    // truncate(2) by path: the kernel's setattr carries no handle.
    let path =
        std::ffi::CString::new(mnt.join("a/file3").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; truncate(2) reads nothing else.
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 2) }, 0);
    assert_eq!(fs::read(mnt.join("a/file3")).unwrap(), b"th");
    drop(reader);
    guard.unmount();
}
