//! `layerfs fsck`: a clean store is clean; a flipped byte in a blob, a truncated index, a
//! garbage diff_id record, an image whose layer is gone and a leftover temporary file are each
//! reported, and removed by `--repair`, after which a pull makes the store whole again. And a
//! pull killed with SIGKILL at many points leaves a store fsck finds clean (partial downloads
//! resume) and a new pull completes.

mod util;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use util::tarball::{TarEntry, raw_layer};
use util::{Compression, Flavor, Image, ImageBuilder, Registry, Sandbox, pseudo_random};

fn image() -> Image {
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[
                TarEntry::file("a", "a\n"),
                TarEntry::file("b", pseudo_random(5, 4 << 20)),
            ],
            Compression::Gzip,
        ))
        .layer(raw_layer(&[TarEntry::file("c", "c\n")], Compression::Gzip))
        .build()
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The largest blob: the 4 MiB layer.
fn biggest_blob(store: &std::path::Path) -> std::path::PathBuf {
    files(&store.join("blobs/sha256"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap()
}

#[test]
fn fsck_reports_and_repairs_damage() {
    let registry = Registry::start();
    registry.push_image("test/fsck", "v1", &image());
    let reference = registry.reference("test/fsck:v1");
    let sandbox = Sandbox::new();
    sandbox.ok(&["pull", &reference]);
    let out = sandbox.ok(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 problems, 0 left"), "{text}");

    // Damage of every kind at once.
    let store = sandbox.store.clone();
    let blob = biggest_blob(&store);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let index = files(&store.join("layerfs/indexes"))
        .into_iter()
        .find(|p| !p.ends_with(blob.file_name().unwrap()))
        .unwrap();
    let idx = fs::read(&index).unwrap();
    fs::write(&index, &idx[..idx.len() / 2]).unwrap();
    let record = files(&store.join("layerfs/diffids"))[0].clone();
    fs::write(&record, "not a digest\n").unwrap();
    fs::write(store.join("layerfs/tmp/commit-1-2.tar.gz"), "left over").unwrap();

    let out = sandbox.run(&["fsck", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fsck of a damaged store must fail"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let whats: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["what"].as_str().unwrap().to_owned())
        .collect();
    let has = |s: &str| whats.iter().any(|w| w.contains(s));
    assert!(has("hashes to"), "the flipped byte: {whats:?}");
    assert!(has("damaged index"), "the truncated index: {whats:?}");
    assert!(has("not a digest"), "the garbage record: {whats:?}");
    let leftovers = report["leftovers"].as_array().unwrap();
    assert!(
        leftovers
            .iter()
            .any(|l| l.as_str().unwrap().ends_with("commit-1-2.tar.gz")),
        "the leftover: {report}"
    );

    let out = sandbox.run(&["fsck", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "repair: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!blob.exists(), "the bad blob is gone");
    // The image lost a layer: its ref went too, and the store is clean.
    assert!(text.contains("image"), "{text}");
    let out = sandbox.ok(&["fsck"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 problems, 0 left"));

    // A pull makes it whole again.
    sandbox.ok(&["pull", &reference]);
    let out = sandbox.ok(&["fsck"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 problems, 0 left"));
    sandbox.ok(&[
        "unpack",
        &reference,
        sandbox.path("rootfs").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read(sandbox.path("rootfs/b")).unwrap(),
        pseudo_random(5, 4 << 20)
    );
}

#[test]
fn pulls_killed_at_random_points_leave_a_clean_store() {
    let registry = Registry::start();
    registry.push_image("test/killed", "v1", &image());
    let reference = registry.reference("test/killed:v1");
    let sandbox = Sandbox::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut gcs = 0;
    for run in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % 60_000);
        let mut child = sandbox
            .command(&["pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let out = sandbox.run(&["fsck"]);
        assert!(
            out.status.success(),
            "run {run}, killed after {delay:?}: fsck found {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Then a pull that finishes, the image removed again, and a gc killed.
        sandbox.ok(&["pull", &reference]);
        sandbox.ok(&["rm", &reference]);
        let mut gc = sandbox
            .command(&["gc"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(seed % 5_000));
        let _ = gc.kill();
        let _ = gc.wait();
        let out = sandbox.run(&["fsck"]);
        assert!(out.status.success(), "after a killed gc: {out:?}");
        gcs += 1;
    }
    sandbox.ok(&["pull", &reference]);
    sandbox.ok(&["fsck"]);
    eprintln!(
        "pull: 50 runs killed at random points; gc: {gcs} runs killed; fsck clean after each"
    );
}

#[test]
fn commits_killed_at_random_points_leave_a_clean_store() {
    let registry = Registry::start();
    registry.push_image("test/base", "v1", &image());
    let base = registry.reference("test/base:v1");
    let sandbox = Sandbox::new();
    sandbox.ok(&["pull", &base]);
    // An upper directory with enough data that a commit takes a while.
    let upper = sandbox.path("upper");
    fs::create_dir_all(upper.join("data")).unwrap();
    for i in 0..8u64 {
        fs::write(
            upper.join(format!("data/f{i}")),
            pseudo_random(100 + i, 1 << 20),
        )
        .unwrap();
    }
    fs::write(upper.join("a"), "changed\n").unwrap();
    let upper_arg = upper.to_str().unwrap();
    let commit = |name: &str| sandbox.command(&["commit", "--base", &base, upper_arg, name]);
    // One full commit tells how long one takes.
    let started = std::time::Instant::now();
    let out = util::Running::spawn(commit("test/new:full")).wait();
    util::assert_success(&out);
    let full = started.elapsed();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut finished = 0;
    for run in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Mostly mid-commit; now and then after it finished.
        let delay = full.mul_f64((seed % 1300) as f64 / 1000.0);
        let name = format!("test/new:run{run}");
        let mut child = commit(&name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let out = sandbox.run(&["fsck"]);
        assert!(
            out.status.success(),
            "run {run}, killed after {delay:?} of {full:?}: fsck found {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Either the new image is there whole, or it is not there at all.
        if sandbox.image_refs().keys().any(|r| r.ends_with(&name)) {
            finished += 1;
            let root = sandbox.path(&format!("root{run}"));
            sandbox.ok(&["unpack", &name, root.to_str().unwrap()]);
            assert_eq!(
                fs::read(root.join("data/f7")).unwrap(),
                pseudo_random(107, 1 << 20)
            );
        }
    }
    eprintln!("commit: 50 runs killed at random points, {finished} had finished");
    // Leftovers of the killed runs go with gc; a new commit still works.
    sandbox.ok(&["gc"]);
    sandbox.ok(&["fsck"]);
    util::assert_success(&util::Running::spawn(commit("test/new:after")).wait());
}
