//! mount(8) integration: `mount -t fuse.layerfs`, an fstab line, and `mount.fuse.layerfs`.
//!
//! mount(8) runs fuse3's `mount.fuse3`, which runs `layerfs IMAGE MNT -o OPTIONS` through
//! `/bin/sh` with mount's default PATH; the test puts a link to the binary in
//! /usr/local/bin for the duration (and removes it), as an installed layerfs would be.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::mount::{MountGuard, daemon_pids, mount_at};
use util::tarball::{TarEntry, raw_layer};
use util::tree::is_root;
use util::{Compression, Flavor, ImageBuilder, Registry, Sandbox};

/// A link to the binary under test in mount's default PATH, removed on drop.
struct Installed(PathBuf);

impl Installed {
    fn new() -> Installed {
        let link = PathBuf::from("/usr/local/bin/layerfs");
        if let Ok(target) = fs::read_link(&link) {
            assert_eq!(
                target,
                Path::new(env!("CARGO_BIN_EXE_layerfs")),
                "{} exists and is not this build; remove it to run this test",
                link.display()
            );
        } else {
            assert!(
                !link.exists(),
                "{} exists and is not this build; remove it to run this test",
                link.display()
            );
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_layerfs"), &link).unwrap();
        }
        Installed(link)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn mount_t_fuse_layerfs_and_fstab() {
    assert!(is_root(), "mount(8) needs root; CI runs the tests as root");
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[TarEntry::file("etc/motd", "hello from the image\n")],
            Compression::Gzip,
        ))
        .build();
    registry.push_image("test/helper", "v1", &image);
    let reference = registry.reference("test/helper:v1");
    sandbox.ok(&["pull", &reference]);
    let _installed = Installed::new();
    let mnt = sandbox.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let upper = sandbox.path("upper");
    let store = sandbox.store.display().to_string();

    // mount -t fuse.layerfs IMAGE MNT -o store=...,upper=...,allow_other
    let out = Command::new("mount")
        .args(["-t", "fuse.layerfs", &reference])
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "store={store},upper={},allow_other",
            upper.display()
        ))
        .env("LAYERFS_STORE", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.layerfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = MountGuard::adopt(&mnt);
    assert_eq!(
        fs::read_to_string(mnt.join("etc/motd")).unwrap(),
        "hello from the image\n"
    );
    fs::write(mnt.join("etc/motd"), "changed\n").unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "changed\n"
    );
    let info = mount_at(&mnt).unwrap();
    assert_eq!(info.fstype, util::mount::FSTYPE);
    assert!(
        info.options.split(',').any(|o| o == "rw"),
        "the upper makes it writable: {info:?}"
    );
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "umount: {out:?}");
    guard.assert_ended();

    // An fstab line (a private fstab file, as `mount -T` allows).
    let fstab = sandbox.path("fstab");
    fs::write(
        &fstab,
        format!(
            "{reference} {} fuse.layerfs store={store},ro,noauto,nofail,_netdev,allow_other 0 0\n",
            mnt.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount with an fstab line: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = MountGuard::adopt(&mnt);
    assert_eq!(
        fs::read_to_string(mnt.join("etc/motd")).unwrap(),
        "hello from the image\n"
    );
    let info = mount_at(&mnt).unwrap();
    assert!(
        info.options.split(',').any(|o| o == "ro"),
        "ro from fstab: {info:?}"
    );
    guard.unmount();

    // The binary called as mount.fuse.layerfs, the name mount(8) looks for first.
    let helper = sandbox.path("mount.fuse.layerfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_layerfs"), &helper).unwrap();
    let out = Command::new(&helper)
        .arg(&reference)
        .arg(&mnt)
        .args(["-o", &format!("store={store},nodev")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount.fuse.layerfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = MountGuard::adopt(&mnt);
    assert_eq!(
        fs::read_to_string(mnt.join("etc/motd")).unwrap(),
        "hello from the image\n"
    );
    assert!(!daemon_pids(&guard.path).is_empty());
    guard.unmount();

    // Unknown options are refused with a clear message, not ignored.
    let out = Command::new(&helper)
        .arg(&reference)
        .arg(&mnt)
        .args(["-o", &format!("store={store},bogus_option")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_option"));
}
