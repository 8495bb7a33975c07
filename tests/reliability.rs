//! Faults and load: a full disk under the store or the upper directory, and a soak of many
//! threads reading a mount (checked against `layerfs unpack`) while others write to a writable
//! mount, with the daemon's memory watched.
//!
//! `LAYERFS_SOAK_SECS` sets the soak's length (default 15 s; scripts/reliability.sh runs it for
//! longer).

mod util;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use util::mount::MountGuard;
use util::tarball::{TarEntry, raw_layer};
use util::tree::is_root;
use util::{Compression, Flavor, Image, ImageBuilder, Registry, Sandbox, pseudo_random};

/// A tmpfs of `size` mounted at `path`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn big_image() -> Image {
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[
                TarEntry::file("small", "small\n"),
                TarEntry::file("big", pseudo_random(3, 6 << 20)),
            ],
            Compression::Gzip,
        ))
        .build()
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_store_and_mount_usable() {
    assert!(
        is_root(),
        "tmpfs mounts need root; CI runs the tests as root"
    );
    let registry = Registry::start();
    registry.push_image("test/full", "v1", &big_image());
    let reference = registry.reference("test/full:v1");

    // A store on a 2 MiB filesystem cannot take a 6 MiB layer.
    let sandbox = Sandbox::new();
    let small = Tmpfs::mount(&sandbox.path("small"), "2m");
    let store = small.0.join("store");
    let out = util::layerfs(&store, &["pull", &reference]);
    assert!(!out.status.success(), "a pull into a full store succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device"),
        "the error should say the disk is full: {err}"
    );
    let out = util::layerfs(&store, &["images"]);
    assert!(out.status.success(), "images after a failed pull: {out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("test/full"));
    drop(small);

    // A writable mount whose upper directory fills up: ENOSPC, and the mount goes on serving.
    sandbox.ok(&["pull", &reference]);
    let upper_fs = Tmpfs::mount(&sandbox.path("upperfs"), "1m");
    let guard = MountGuard::mount(
        &sandbox,
        &reference,
        &sandbox.path("mnt"),
        &["--upper", upper_fs.0.join("upper").to_str().unwrap()],
    );
    let m = guard.path.clone();
    let mut f = fs::File::create(m.join("fill")).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut err = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.flush()) {
            err = Some(e);
            break;
        }
    }
    let err = err.or_else(|| f.sync_all().err());
    assert_eq!(
        err.map(|e| e.raw_os_error()),
        Some(Some(28)),
        "writing 4 MiB into a 1 MiB upper should fail with ENOSPC"
    );
    drop(f);
    // A copy-up that does not fit fails the same way, and leaves no partial file in the view.
    let copy_up = fs::OpenOptions::new().append(true).open(m.join("big"));
    match copy_up {
        Err(e) => assert_eq!(e.raw_os_error(), Some(28), "copy-up of 6 MiB: {e}"),
        Ok(_) => panic!("a 6 MiB copy-up into a full 1 MiB upper succeeded"),
    }
    let big = fs::read(m.join("big")).unwrap();
    assert!(
        big == pseudo_random(3, 6 << 20),
        "the lower file after a failed copy-up"
    );
    fs::remove_file(m.join("fill")).unwrap();
    fs::write(m.join("after"), "fits\n").unwrap();
    assert_eq!(fs::read_to_string(m.join("small")).unwrap(), "small\n");
    assert_eq!(fs::read_to_string(m.join("after")).unwrap(), "fits\n");
    guard.unmount();
}

/// VmHWM of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn soak_readers_and_writers() {
    let secs: u64 = std::env::var("LAYERFS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut entries = Vec::new();
    for d in 0..40 {
        entries.push(TarEntry::dir(format!("d{d}")));
        for f in 0..50 {
            let len = ((d * 50 + f) * 7919) % 200_000;
            entries.push(TarEntry::file(
                format!("d{d}/f{f}"),
                pseudo_random((d * 50 + f) as u64, len),
            ));
        }
    }
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(&entries, Compression::Gzip))
        .build();
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    registry.push_image("test/soak", "v1", &image);
    let reference = registry.reference("test/soak:v1");
    sandbox.ok(&["pull", &reference]);
    let reference_tree = sandbox.path("reference");
    sandbox.ok(&["unpack", &reference, reference_tree.to_str().unwrap()]);
    let ro = MountGuard::mount(
        &sandbox,
        &reference,
        &sandbox.path("ro"),
        &["--cache-mib", "8"],
    );
    let rw = MountGuard::mount(
        &sandbox,
        &reference,
        &sandbox.path("rw"),
        &["--upper", sandbox.path("upper").to_str().unwrap()],
    );
    let files = Arc::new(files_under(&reference_tree));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..16u64 {
        let (files, stop, reads) = (files.clone(), stop.clone(), reads.clone());
        let (mnt, refroot) = (ro.path.clone(), reference_tree.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let rel = &files[(x % files.len() as u64) as usize];
                if x.is_multiple_of(8) {
                    // A walk of one directory, with stat of every entry.
                    let dir = mnt.join(rel.parent().unwrap());
                    for e in fs::read_dir(&dir).map_err(|e| format!("{dir:?}: {e}"))? {
                        let e = e.map_err(|e| e.to_string())?;
                        fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
                    }
                }
                let mut got = Vec::new();
                fs::File::open(mnt.join(rel))
                    .and_then(|mut f| f.read_to_end(&mut got))
                    .map_err(|e| format!("{rel:?}: {e}"))?;
                let want = fs::read(refroot.join(rel)).map_err(|e| e.to_string())?;
                if got != want {
                    return Err(format!("{rel:?}: content differs from the reference"));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in 0..4u64 {
        let (stop, writes) = (stop.clone(), writes.clone());
        let mnt = rw.path.clone();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let dir = mnt.join(format!("writer{t}"));
            fs::create_dir(&dir).map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = dir.join(format!("f{}", n % 64));
                let data = pseudo_random(n ^ (t << 32), (n as usize * 4099) % 300_000);
                fs::write(&path, &data).map_err(|e| format!("{path:?}: {e}"))?;
                if fs::read(&path).map_err(|e| e.to_string())? != data {
                    return Err(format!("{path:?}: read back differs"));
                }
                // Modify a lower file too: copy-up under load.
                let lower = mnt.join(format!("d{}/f{}", (n + t) % 40, n % 50));
                match fs::OpenOptions::new().append(true).open(&lower) {
                    Ok(mut f) => f.write_all(b"+").map_err(|e| e.to_string())?,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{lower:?}: {e}")),
                }
                n += 1;
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut failures = Vec::new();
    for t in threads {
        if let Err(e) = t.join().unwrap() {
            failures.push(e);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60), "threads hung");
    assert!(failures.is_empty(), "soak failures: {failures:#?}");
    let (reads, writes) = (
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    );
    assert!(
        reads > 100 && writes > 10,
        "too little work: {reads} reads, {writes} writes"
    );
    // The read-only daemon's memory stays within its cache bound plus the tree.
    let rss: u64 = ro
        .daemon_pids()
        .iter()
        .map(|&p| peak_rss_kib(p))
        .max()
        .unwrap_or(0);
    assert!(rss > 0, "no daemon memory figure");
    assert!(
        rss < 50 * 1024,
        "read-only daemon peak RSS {rss} KiB exceeds 50 MiB with an 8 MiB cache"
    );
    eprintln!("soak: {secs} s, {reads} verified reads, {writes} writes, peak RSS {rss} KiB");
    ro.unmount();
    rw.unmount();
}
