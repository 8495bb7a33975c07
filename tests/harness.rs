//! Checks of the test fixtures themselves, using skopeo as an independent client: images built
//! by `ImageBuilder` and pushed to each `Registry` variant read back byte for byte, and broken
//! images are really broken. When a layerfs test fails, these tell whether to suspect the
//! fixture or layerfs.

mod util;

use std::process::{Command, Output};

use util::{Compression, Flavor, Image, Index, Registry, Sandbox};

/// Runs skopeo with a private HOME (no auth files from the machine) and the given arguments.
fn skopeo(sandbox: &Sandbox, args: &[&str]) -> Output {
    Command::new("skopeo")
        .env("HOME", &sandbox.home)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .args(args)
        .output()
        .expect("run skopeo")
}

/// The flags skopeo needs to reach `registry`; `prefix` is `""` for `inspect` and `"src-"` for
/// the source of `copy`.
fn transport_flags(registry: &Registry, creds: Option<&str>, prefix: &str) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(c) = creds {
        flags.extend([format!("--{prefix}creds"), c.to_string()]);
    }
    if registry.url().starts_with("https") {
        flags.extend([
            format!("--{prefix}cert-dir"),
            registry.tls().cert_dir.display().to_string(),
        ]);
    } else {
        flags.push(format!("--{prefix}tls-verify=false"));
    }
    flags
}

#[test]
fn pushed_images_read_back_with_skopeo() {
    let cases: Vec<(&str, Registry, Option<&str>)> = vec![
        ("plain", Registry::start(), None),
        (
            "basic",
            Registry::with_basic_auth("alice", "s3cret"),
            Some("alice:s3cret"),
        ),
        (
            "token",
            Registry::with_token_auth("bob", "hunter2", &[]),
            Some("bob:hunter2"),
        ),
        ("tls", Registry::with_tls(), None),
    ];
    for (name, registry, creds) in cases {
        let sandbox = Sandbox::new();
        let image = Image::simple("harness", Flavor::Oci, Compression::Gzip);
        registry.push_image("test/img", "v1", &image);
        let index = Index::for_platforms(Flavor::Docker, &["linux/amd64", "linux/arm64"]);
        registry.push_index("test/multi", "latest", &index);

        for (reference, expected) in [
            ("test/img:v1", &image.manifest.bytes),
            ("test/multi:latest", &index.blob.bytes),
        ] {
            let target = format!("docker://{}", registry.reference(reference));
            let flags = transport_flags(&registry, creds, "");
            let mut args = vec!["inspect", "--raw"];
            args.extend(flags.iter().map(String::as_str));
            args.push(&target);
            let out = skopeo(&sandbox, &args);
            assert!(
                out.status.success(),
                "{name}: skopeo {args:?}: {}\nregistry log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                registry.log()
            );
            assert_eq!(&out.stdout, expected, "{name}: manifest of {reference}");
        }

        if creds.is_some() {
            let target = format!("docker://{}", registry.reference("test/img:v1"));
            let flags = transport_flags(&registry, None, "");
            let mut args = vec!["inspect", "--raw"];
            args.extend(flags.iter().map(String::as_str));
            args.push(&target);
            let out = skopeo(&sandbox, &args);
            assert!(!out.status.success(), "{name}: anonymous pull was allowed");
        }

        // A full copy verifies every blob against its digest.
        let source = format!("docker://{}", registry.reference("test/img:v1"));
        let dest = format!("dir:{}", sandbox.path("copy").display());
        let flags = transport_flags(&registry, creds, "src-");
        let mut args = vec!["copy"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([source.as_str(), dest.as_str()]);
        let out = skopeo(&sandbox, &args);
        assert!(
            out.status.success(),
            "{name}: skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for layer in &image.layers {
            let copied = std::fs::read(sandbox.path("copy").join(layer.blob.hex())).unwrap();
            assert_eq!(
                copied, layer.blob.bytes,
                "{name}: layer {}",
                layer.blob.digest
            );
        }
    }
}

#[test]
fn corrupted_blob_fails_skopeo_copy() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let image = Image::simple("broken", Flavor::Oci, Compression::None);
    registry.push_image("test/broken", "v1", &image);
    registry.corrupt_blob(&image.layers[0].blob.digest);
    let target = format!("docker://{}", registry.reference("test/broken:v1"));
    let dest = format!("dir:{}", sandbox.path("copy").display());
    let out = skopeo(
        &sandbox,
        &["copy", "--src-tls-verify=false", &target, &dest],
    );
    assert!(!out.status.success(), "skopeo copied a corrupted blob");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("digest"), "skopeo error: {err}");
}
