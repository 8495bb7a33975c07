//! Directory lowers and the fuse-overlayfs command line: `layerfs -o lowerdir=L2:L1,upperdir=U,
//! workdir=W MNT`, as containers-storage calls its `mount_program`, against kernel overlayfs over
//! the same directories; and an upper directory of an image mount reused as a lower.

mod util;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use util::mount::MountGuard;
use util::tarball::{TarEntry, raw_layer};
use util::tree::{Compare, Kind, Tree, assert_same, is_root};
use util::{Compression, Flavor, ImageBuilder, Registry, Sandbox};

fn whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Two lower directories in overlayfs' format: `l1` at the bottom, `l2` above it.
fn lowers(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (l1, l2) = (base.join("l1"), base.join("l2"));
    for d in ["a/sub", "b", "opq/old", "keep"] {
        fs::create_dir_all(l1.join(d)).unwrap();
    }
    fs::write(l1.join("a/f1"), "one\n").unwrap();
    fs::write(l1.join("a/f2"), "two\n").unwrap();
    fs::write(l1.join("a/sub/deep"), "deep\n").unwrap();
    fs::write(l1.join("b/gone"), "gone\n").unwrap();
    fs::write(l1.join("opq/old/x"), "old\n").unwrap();
    fs::write(l1.join("keep/k"), "k\n").unwrap();
    fs::hard_link(l1.join("keep/k"), l1.join("keep/k2")).unwrap();
    std::os::unix::fs::symlink("a/f1", l1.join("link")).unwrap();
    for d in ["a", "b", "opq"] {
        fs::create_dir_all(l2.join(d)).unwrap();
    }
    fs::write(l2.join("a/f2"), "two, above\n").unwrap();
    fs::write(l2.join("a/f3"), "three\n").unwrap();
    whiteout(&l2.join("b/gone"));
    xattr::set(l2.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(l2.join("opq/new"), "new\n").unwrap();
    (l1, l2)
}

/// The same changes through any union of the lowers.
fn change(m: &Path) {
    fs::write(m.join("a/f1"), "one, changed\n").unwrap();
    fs::remove_file(m.join("a/f3")).unwrap();
    fs::rename(m.join("a/sub"), m.join("moved")).unwrap();
    fs::create_dir(m.join("b/gone")).unwrap();
    fs::write(m.join("keep/k"), "k changed\n").unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
}

fn options() -> Compare {
    Compare {
        mtimes_of: Default::default(),
        xattrs: false,
        nlink: true,
    }
}

#[test]
fn fuse_overlayfs_command_line_matches_kernel_overlayfs() {
    assert!(
        is_root(),
        "kernel overlayfs needs root; CI runs the tests as root"
    );
    let sandbox = Sandbox::new();
    let (l1, l2) = lowers(&sandbox.path("lowers"));
    let lowerdir = format!("{}:{}", l2.display(), l1.display());

    // layerfs, called as containers-storage calls fuse-overlayfs.
    let (upper, work, mnt) = (
        sandbox.path("upper"),
        sandbox.path("work"),
        sandbox.path("mnt"),
    );
    for d in [&upper, &work, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_layerfs"))
        .arg("-o")
        .arg(format!(
            "lowerdir={lowerdir},upperdir={},workdir={},allow_other",
            upper.display(),
            work.display()
        ))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "layerfs -o lowerdir=...: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = MountGuard::adopt(&mnt);
    let before = Tree::walk("layerfs over the lower directories", &guard.path);

    // Kernel overlayfs over the same lowers.
    let (kupper, kwork, kmnt) = (
        sandbox.path("kupper"),
        sandbox.path("kwork"),
        sandbox.path("kmnt"),
    );
    for d in [&kupper, &kwork, &kmnt] {
        fs::create_dir_all(d).unwrap();
    }
    let mount = |upper: &Path, work: &Path, mnt: &Path| {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                // redirect_dir: renaming a lower directory works; index: a copied-up hard
                // link stays one file. Both as in layerfs.
                "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=on,index=on",
                upper.display(),
                work.display()
            ))
            .arg(mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "kernel overlayfs: {out:?}");
    };
    mount(&kupper, &kwork, &kmnt);
    let kernel = Tree::walk("kernel overlayfs", &kmnt);
    let result = std::panic::catch_unwind(|| {
        assert_same(&before, &kernel, &options());
        assert_eq!(
            fs::read_to_string(guard.path.join("a/f2")).unwrap(),
            "two, above\n"
        );
        assert!(!guard.path.join("b/gone").exists());
        assert!(!guard.path.join("opq/old").exists());
        let (k, k2) = (
            fs::metadata(guard.path.join("keep/k")).unwrap(),
            fs::metadata(guard.path.join("keep/k2")).unwrap(),
        );
        assert_eq!(
            k.ino(),
            k2.ino(),
            "a lower directory's hard links stay one inode"
        );

        change(&guard.path);
        change(&kmnt);
        let a = Tree::walk("layerfs after changes", &guard.path);
        let b = Tree::walk("kernel overlayfs after changes", &kmnt);
        assert_same(&a, &b, &options());
        a
    });
    let _ = Command::new("umount").arg(&kmnt).status();
    let changed = result.unwrap_or_else(|e| std::panic::resume_unwind(e));

    // `umount` ends the daemon; mounting the same layers again shows the same tree.
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "umount: {out:?}");
    guard.assert_ended();
    let out = Command::new(env!("CARGO_BIN_EXE_layerfs"))
        .arg("-o")
        .arg(format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        ))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "remount: {out:?}");
    let guard = MountGuard::adopt(&mnt);
    let again = Tree::walk("layerfs remounted", &guard.path);
    assert_same(&changed, &again, &options());
    guard.unmount();

    // The upper layerfs wrote is one kernel overlayfs reads the same way.
    fs::remove_dir_all(&kwork).unwrap();
    fs::create_dir_all(&kwork).unwrap();
    mount(&upper, &kwork, &kmnt);
    let seen = Tree::walk("kernel overlayfs over layerfs' upper", &kmnt);
    let _ = Command::new("umount").arg(&kmnt).status();
    assert_same(&changed, &seen, &options());
}

#[test]
fn an_upper_directory_serves_as_a_lower() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[
                TarEntry::dir("etc"),
                TarEntry::file("etc/a", "a\n"),
                TarEntry::file("etc/b", "b\n"),
                TarEntry::dir("var/lib"),
                TarEntry::file("var/lib/x", "x\n"),
            ],
            Compression::Gzip,
        ))
        .build();
    registry.push_image("test/upper-as-lower", "v1", &image);
    let reference = registry.reference("test/upper-as-lower:v1");
    sandbox.ok(&["pull", &reference]);
    let upper = sandbox.path("upper");
    let mnt = sandbox.path("mnt");
    let guard = MountGuard::mount(
        &sandbox,
        &reference,
        &mnt,
        &["--upper", upper.to_str().unwrap()],
    );
    fs::write(guard.path.join("etc/a"), "a changed\n").unwrap();
    fs::remove_file(guard.path.join("etc/b")).unwrap();
    fs::remove_dir_all(guard.path.join("var/lib")).unwrap();
    fs::create_dir(guard.path.join("var/lib")).unwrap();
    fs::write(guard.path.join("var/lib/y"), "y\n").unwrap();
    let view = Tree::walk("writable view", &guard.path);
    guard.unmount();

    // Yesterday's upper, today's lower: the image's layers with the directory on top.
    let guard = MountGuard::mount(
        &sandbox,
        &reference,
        &mnt,
        &["--lowerdir", upper.to_str().unwrap()],
    );
    let stacked = Tree::walk("image + upper as a lower", &guard.path);
    assert_same(&view, &stacked, &options());
    assert!(
        stacked.nodes.values().all(|n| n.kind != Kind::Char),
        "a whiteout shows through"
    );
    guard.unmount();
}
