//! The store after `pull`: shared by concurrent pulls, readable by other OCI tools (skopeo),
//! emptied again by `rm` and `gc`, and filled from tarballs by `load`.

mod util;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use util::{
    Compression, Entry, Flavor, Image, ImageBuilder, Layer, Registry, Running, Sandbox,
    assert_failure, assert_image_stored, assert_success, pseudo_random, stdout,
};

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo")
}

/// Three pulls at once into one store: two images sharing a 24 MiB layer, and the first image a
/// second time. Downloads are rate-limited so that they overlap.
fn concurrent_pulls(initialise_first: bool) {
    let registry = Registry::start();
    let shared = Layer::new(
        &[Entry::file(
            "shared.bin",
            pseudo_random(42, 24 * 1024 * 1024),
        )],
        Compression::None,
        Flavor::Oci,
    );
    let images: Vec<Image> = (0..2)
        .map(|i| {
            ImageBuilder::new(Flavor::Oci)
                .layer(shared.clone())
                .layer(Layer::named(
                    &format!("own{i}"),
                    Compression::Gzip,
                    Flavor::Oci,
                ))
                .env(&format!("IMAGE={i}"))
                .build()
        })
        .collect();
    for (i, image) in images.iter().enumerate() {
        registry.push_image("test/conc", &format!("v{i}"), image);
    }
    let sandbox = Sandbox::new();
    if initialise_first {
        assert_eq!(sandbox.images(), Vec::<serde_json::Value>::new());
    }
    let refs: Vec<String> = (0..2)
        .map(|i| registry.reference(&format!("test/conc:v{i}")))
        .collect();
    let running: Vec<Running> = [&refs[0], &refs[1], &refs[0]]
        .iter()
        .map(|r| Running::spawn(sandbox.command(&["pull", r, "--limit-rate", "8M"])))
        .collect();
    for pull in running {
        assert_success(&pull.wait());
    }
    for (reference, image) in refs.iter().zip(&images) {
        assert_image_stored(&sandbox, reference, image);
    }
    assert_eq!(sandbox.index_refs().len(), 2, "{:?}", sandbox.index_refs());
    assert_eq!(sandbox.partials(), Vec::<PathBuf>::new());
}

#[test]
fn concurrent_pulls_into_an_existing_store_all_succeed() {
    concurrent_pulls(true);
}

#[test]
fn concurrent_pulls_into_a_new_store_all_succeed() {
    concurrent_pulls(false);
}

#[test]
fn concurrent_commands_on_a_new_store_all_succeed() {
    // The first commands on a store create its layout; several at once must agree on it.
    for _ in 0..5 {
        let sandbox = Sandbox::new();
        let running: Vec<Running> = (0..8)
            .map(|_| Running::spawn(sandbox.command(&["images", "--format", "json"])))
            .collect();
        for run in running {
            let out = run.wait();
            assert_success(&out);
            assert_eq!(stdout(&out).trim(), "[]");
        }
        assert_eq!(sandbox.index_refs().len(), 0);
    }
}

/// Pulls an image of `flavor` and copies it out of the store with `skopeo copy oci:STORE:REF`.
fn skopeo_reads_the_store(flavor: Flavor) {
    let registry = Registry::start();
    let image = ImageBuilder::new(flavor)
        .layer(Layer::named("one", Compression::Gzip, flavor))
        .layer(Layer::named("two", Compression::None, flavor))
        .build();
    registry.push_image("test/interop", "v1", &image);
    let sandbox = Sandbox::new();
    let reference = registry.reference("test/interop:v1");
    sandbox.ok(&["pull", &reference]);

    let source = format!("oci:{}:{reference}", sandbox.store.display());
    let copy = sandbox.path("copy");
    let dest = format!("dir:{}", copy.display());
    let out = skopeo(&["copy", &source, &dest]);
    assert!(
        out.status.success(),
        "{flavor:?}: skopeo copy {source} {dest}: {}\nindex.json:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(sandbox.store.join("index.json")).unwrap_or_default()
    );
    // A Docker manifest is stored converted to OCI media types (same config and layers);
    // skopeo copies the manifest the layout names.
    let expected_manifest = match util::converted_manifests(&sandbox.store).first() {
        Some(d) => {
            let hex = d.trim_start_matches("sha256:");
            fs::read(sandbox.store.join("blobs/sha256").join(hex)).unwrap()
        }
        None => image.manifest.bytes.clone(),
    };
    assert_eq!(
        matches!(flavor, Flavor::Docker),
        expected_manifest != image.manifest.bytes,
        "only Docker manifests are converted"
    );
    assert_eq!(
        fs::read(copy.join("manifest.json")).unwrap(),
        expected_manifest
    );
    for blob in image.blobs() {
        assert_eq!(fs::read(copy.join(blob.hex())).unwrap(), blob.bytes);
    }
}

#[test]
fn skopeo_reads_oci_images_in_the_store() {
    skopeo_reads_the_store(Flavor::Oci);
}

#[test]
fn skopeo_reads_docker_images_in_the_store() {
    skopeo_reads_the_store(Flavor::Docker);
}

/// The byte count in `gc`'s report (`freed N bytes ...`).
#[track_caller]
fn freed_bytes(out: &Output) -> u64 {
    let text = stdout(out);
    text.split_once("freed ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gc did not report `freed N bytes`: {text:?}"))
}

#[test]
fn rm_and_gc_free_the_bytes_of_unreferenced_blobs() {
    let registry = Registry::start();
    let shared = Layer::named("shared", Compression::Gzip, Flavor::Oci);
    let keep = ImageBuilder::new(Flavor::Oci)
        .layer(shared.clone())
        .layer(Layer::named("keep", Compression::Gzip, Flavor::Oci))
        .build();
    let remove = ImageBuilder::new(Flavor::Oci)
        .layer(shared.clone())
        .layer(Layer::new(
            &[Entry::file("big.bin", pseudo_random(9, 3 * 1024 * 1024))],
            Compression::Zstd,
            Flavor::Oci,
        ))
        .env("REMOVE=1")
        .build();
    registry.push_image("test/gc", "keep", &keep);
    registry.push_image("test/gc", "remove", &remove);
    let keep_ref = registry.reference("test/gc:keep");
    let remove_ref = registry.reference("test/gc:remove");
    let sandbox = Sandbox::new();
    sandbox.ok(&["pull", &keep_ref]);
    sandbox.ok(&["pull", &remove_ref]);

    let before = sandbox.blobs();
    sandbox.ok(&["rm", &remove_ref]);
    assert_eq!(
        sandbox.index_refs().keys().cloned().collect::<Vec<_>>(),
        vec![keep_ref.clone()]
    );
    assert_eq!(
        sandbox.image_refs().keys().cloned().collect::<Vec<_>>(),
        vec![keep_ref.clone()]
    );
    // `rm` only drops the ref; the bytes go at `gc`.
    let out = sandbox.ok(&["gc"]);
    let after = sandbox.blobs();
    let mut expected: Vec<String> = keep
        .all_digests()
        .iter()
        .map(|d| d["sha256:".len()..].to_string())
        .collect();
    expected.sort();
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), expected);
    let freed: u64 = before
        .iter()
        .filter(|(hex, _)| !after.contains_key(*hex))
        .map(|(_, size)| size)
        .sum();
    let expected_freed: u64 = [&remove.manifest, &remove.config, &remove.layers[1].blob]
        .iter()
        .map(|b| b.size())
        .sum();
    assert_eq!(freed, expected_freed);
    assert_eq!(freed_bytes(&out), freed);
    assert_image_stored(&sandbox, &keep_ref, &keep);

    // Nothing left to collect.
    let out = sandbox.ok(&["gc"]);
    assert_eq!(sandbox.blobs(), after);
    assert_eq!(freed_bytes(&out), 0);

    // Removing something that is not there is an error.
    assert_failure(&sandbox.run(&["rm", &remove_ref]));
}

/// The references `layerfs load` should record and what `inspect` then reports.
fn assert_loaded(sandbox: &Sandbox, reference: &str, image: &Image) {
    let refs = sandbox.image_refs();
    assert!(refs.contains_key(reference), "images: {refs:?}");
    let v = sandbox.inspect(reference);
    assert_eq!(v["reference"], reference);
    let diff_ids: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diffId"].as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.diff_ids(), "inspect: {v:#}");
    assert_eq!(v["env"], serde_json::json!(image.env));
    assert_eq!(v["cmd"], serde_json::json!(image.cmd));
    assert_eq!(
        v["platform"]["architecture"],
        image.platform.architecture.as_str()
    );
    // Every layer's blob is in the store, verified.
    let blobs = sandbox.blobs();
    for layer in v["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        assert!(
            blobs.contains_key(&digest["sha256:".len()..]),
            "{digest} missing"
        );
    }
    assert!(blobs.contains_key(image.config.hex()), "config missing");
}

#[test]
fn loads_docker_save_tarballs() {
    let image = ImageBuilder::new(Flavor::Docker)
        .layer(Layer::named("load-a", Compression::None, Flavor::Docker))
        .layer(Layer::new(
            &[
                Entry::dir("usr"),
                Entry::dir("usr/bin"),
                Entry::file("usr/bin/tool", pseudo_random(3, 200_000)),
            ],
            Compression::None,
            Flavor::Docker,
        ))
        .build();
    // (name, gzip, --tag, reference expected)
    let cases = [
        ("plain", false, None, "docker.io/library/busybox:1.36"),
        ("gzip", true, None, "docker.io/library/busybox:1.36"),
        (
            "plain-tagged",
            false,
            Some("example.com/loaded/img:v2"),
            "example.com/loaded/img:v2",
        ),
        (
            "gzip-tagged",
            true,
            Some("127.0.0.1:5000/loaded/img:v3"),
            "127.0.0.1:5000/loaded/img:v3",
        ),
    ];
    for (name, gzip, tag, expected_ref) in cases {
        let sandbox = Sandbox::new();
        let file = sandbox.path(&format!("{name}.tar"));
        fs::write(&file, image.docker_save(&["busybox:1.36"], gzip)).unwrap();
        let file = file.display().to_string();
        let mut args = vec!["load", file.as_str()];
        if let Some(t) = tag {
            args.extend(["--tag", t]);
        }
        sandbox.ok(&args);
        assert_loaded(&sandbox, expected_ref, &image);
    }
}

#[test]
fn loads_an_oci_archive_written_by_skopeo() {
    let registry = Registry::start();
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(Layer::named("archive-a", Compression::Gzip, Flavor::Oci))
        .layer(Layer::named("archive-b", Compression::Zstd, Flavor::Oci))
        .build();
    registry.push_image("test/archive", "v1", &image);
    let source = Sandbox::new();
    let reference = registry.reference("test/archive:v1");
    source.ok(&["pull", &reference]);

    let archive = source.path("image.tar");
    let out = skopeo(&[
        "copy",
        &format!("oci:{}:{reference}", source.store.display()),
        &format!("oci-archive:{}", archive.display()),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy to oci-archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let target = Sandbox::new();
    let loaded_ref = "example.com/from/archive:v1";
    let archive = archive.display().to_string();
    target.ok(&["load", &archive, "--tag", loaded_ref]);
    assert_loaded(&target, loaded_ref, &image);
    // skopeo copied the image unchanged, so it is the very manifest that was pulled.
    assert_eq!(
        target.index_refs().get(loaded_ref),
        Some(&image.manifest.digest)
    );
}
