//! `layerfs pull` against a real registry: media types and compressions, platform selection,
//! shared and big layers, authentication (Basic, Bearer token, auth files), TLS with a private CA,
//! resuming after the registry dies mid-download, and refusing blobs that fail verification.
//!
//! Every successful case checks the store on disk (blobs hash to their names, the ref is in
//! `index.json`), `layerfs images` and `layerfs inspect`.

mod util;

use std::fs;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use util::{
    Compression, Entry, Flavor, Image, ImageBuilder, Index, Layer, Platform, Registry, Sandbox,
    assert_failure, assert_image_stored, assert_stderr_mentions, assert_success, pseudo_random,
    pull_json,
};

/// Size of the file in the big layer: over 100 MiB, and not a multiple of any block size.
const BIG_FILE_SIZE: usize = 100 * 1024 * 1024 + 4321;

/// How much of the big layer the resume test lets through before killing the registry.
const KILL_AFTER_BYTES: u64 = 30 * 1024 * 1024;

/// An image with one uncompressed layer holding a single incompressible file of
/// [`BIG_FILE_SIZE`] bytes, built once per test process.
fn big_image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let data = pseudo_random(0x5eed, BIG_FILE_SIZE);
        let layer = Layer::new(
            &[Entry::dir("data"), Entry::file("data/big.bin", data)],
            Compression::None,
            Flavor::Oci,
        );
        ImageBuilder::new(Flavor::Oci)
            .layer(Layer::named("small", Compression::Gzip, Flavor::Oci))
            .layer(layer)
            .build()
    })
}

#[test]
fn pulls_single_platform_images_of_each_media_type_and_compression() {
    let registry = Registry::start();
    let cases: &[(&str, Flavor, &[Compression])] = &[
        ("oci-gzip", Flavor::Oci, &[Compression::Gzip]),
        ("oci-zstd", Flavor::Oci, &[Compression::Zstd]),
        ("oci-none", Flavor::Oci, &[Compression::None]),
        (
            "oci-mixed",
            Flavor::Oci,
            &[Compression::Gzip, Compression::Zstd, Compression::None],
        ),
        ("docker-gzip", Flavor::Docker, &[Compression::Gzip]),
        ("docker-none", Flavor::Docker, &[Compression::None]),
        (
            "docker-mixed",
            Flavor::Docker,
            &[Compression::Gzip, Compression::None, Compression::Gzip],
        ),
    ];
    for &(name, flavor, compressions) in cases {
        let mut builder = ImageBuilder::new(flavor).env(&format!("CASE={name}"));
        for (i, &c) in compressions.iter().enumerate() {
            builder = builder.layer(Layer::named(&format!("{name}-{i}"), c, flavor));
        }
        let image = builder.build();
        registry.push_image(&format!("test/{name}"), "v1", &image);

        let sandbox = Sandbox::new();
        let reference = registry.reference(&format!("test/{name}:v1"));
        let out = sandbox.ok(&["pull", &reference, "--format", "json"]);
        let json = pull_json(&out);
        assert_eq!(json["reference"], reference.as_str(), "{name}: {json:#}");
        assert_eq!(json["digest"], image.manifest.digest.as_str(), "{name}");
        assert_image_stored(&sandbox, &reference, &image);
        assert_eq!(
            sandbox.image_blobs().len(),
            image.all_digests().len(),
            "{name}: the store holds exactly the image's blobs"
        );
        assert_eq!(sandbox.partials(), Vec::<std::path::PathBuf>::new());
    }
}

#[test]
fn pulls_the_requested_platform_from_an_index() {
    let registry = Registry::start();
    let platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
    let host = Platform::host().to_string();
    // (flag, platform expected); no flag means the host's platform.
    let choices: Vec<(Option<&str>, &str)> = vec![
        (None, host.as_str()),
        (Some("linux/arm64"), "linux/arm64"),
        (Some("linux/arm/v7"), "linux/arm/v7"),
        (Some("linux/amd64"), "linux/amd64"),
    ];
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let index = Index::for_platforms(flavor, &platforms);
        let repo = format!("test/multi-{flavor:?}").to_lowercase();
        registry.push_index(&repo, "latest", &index);
        let reference = registry.reference(&format!("{repo}:latest"));
        for (flag, expected) in &choices {
            let sandbox = Sandbox::new();
            let mut args = vec!["pull", reference.as_str()];
            if let Some(p) = flag {
                args.extend(["--platform", p]);
            }
            sandbox.ok(&args);
            let image = index.image_for(expected);
            assert_image_stored(&sandbox, &reference, image);
            // Only the chosen platform's blobs are stored (and perhaps the index itself).
            let mut expected_blobs = image.all_digests();
            expected_blobs.sort();
            let mut stored: Vec<String> = sandbox
                .image_blobs()
                .keys()
                .map(|h| format!("sha256:{h}"))
                .filter(|d| *d != index.blob.digest)
                .collect();
            stored.sort();
            assert_eq!(stored, expected_blobs, "{flavor:?} {flag:?}");
        }
    }
}

#[test]
fn missing_platform_error_lists_available_platforms() {
    let registry = Registry::start();
    let platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let index = Index::for_platforms(flavor, &platforms);
        let repo = format!("test/multi-{flavor:?}").to_lowercase();
        registry.push_index(&repo, "latest", &index);
        let sandbox = Sandbox::new();
        let reference = registry.reference(&format!("{repo}:latest"));
        let out = sandbox.run(&["pull", &reference, "--platform", "linux/s390x"]);
        assert_failure(&out);
        assert_stderr_mentions(&out, &["linux/s390x"]);
        assert_stderr_mentions(&out, &platforms);
        assert_eq!(sandbox.index_refs().len(), 0);
    }
}

#[test]
fn pulls_by_digest() {
    let registry = Registry::start();
    let image = Image::simple("by-digest", Flavor::Oci, Compression::Gzip);
    registry.push_image("test/img", "v1", &image);
    let sandbox = Sandbox::new();
    let reference = registry.reference(&format!("test/img@{}", image.manifest.digest));
    let out = sandbox.ok(&["pull", &reference, "--format", "json"]);
    assert_eq!(pull_json(&out)["digest"], image.manifest.digest.as_str());
    assert_image_stored(&sandbox, &reference, &image);
}

#[test]
fn shared_layer_is_stored_once_and_not_fetched_again() {
    let registry = Registry::start();
    let shared = Layer::named("shared", Compression::Gzip, Flavor::Oci);
    let first = ImageBuilder::new(Flavor::Oci)
        .layer(shared.clone())
        .layer(Layer::named("first", Compression::Gzip, Flavor::Oci))
        .build();
    let second = ImageBuilder::new(Flavor::Oci)
        .layer(shared.clone())
        .layer(Layer::named("second", Compression::Zstd, Flavor::Oci))
        .env("SECOND=1")
        .build();
    registry.push_image("test/shared", "first", &first);
    registry.push_image("test/shared", "second", &second);

    let sandbox = Sandbox::new();
    let first_ref = registry.reference("test/shared:first");
    let second_ref = registry.reference("test/shared:second");
    sandbox.ok(&["pull", &first_ref]);
    assert_eq!(registry.blob_gets(&shared.blob.digest).len(), 1);

    // Were the shared layer fetched again, it would now fail verification.
    registry.corrupt_blob(&shared.blob.digest);
    sandbox.ok(&["pull", &second_ref]);
    assert_eq!(
        registry.blob_gets(&shared.blob.digest).len(),
        1,
        "the shared layer was downloaded again"
    );

    assert_image_stored(&sandbox, &first_ref, &first);
    assert_image_stored(&sandbox, &second_ref, &second);
    let mut expected: Vec<String> = first
        .all_digests()
        .into_iter()
        .chain(second.all_digests())
        .map(|d| d["sha256:".len()..].to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(
        sandbox.blobs().keys().cloned().collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn pulls_a_layer_over_100_mib() {
    let registry = Registry::start();
    let image = big_image();
    registry.push_image("test/big", "v1", image);
    let sandbox = Sandbox::new();
    let reference = registry.reference("test/big:v1");
    sandbox.ok(&["pull", &reference, "--jobs", "2"]);
    assert_image_stored(&sandbox, &reference, image);
    assert_eq!(sandbox.partials(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn resumes_when_the_registry_dies_mid_download() {
    let mut registry = Registry::start();
    let image = big_image();
    let big = &image.layers[1].blob;
    registry.push_image("test/big", "v1", image);
    let sandbox = Sandbox::new();
    let reference = registry.reference("test/big:v1");

    let pull = util::Running::spawn(sandbox.command(&["pull", &reference, "--limit-rate", "20M"]));
    // Kill the registry once the big layer is well under way (about 1.5 s in at 20 MiB/s).
    let partial = sandbox
        .store
        .join("layerfs/tmp")
        .join(format!("{}.partial", big.hex()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&partial).map_or(0, |m| m.len()) < KILL_AFTER_BYTES {
        assert!(
            Instant::now() < deadline,
            "no partial download of {} bytes at {} after 60 s",
            KILL_AFTER_BYTES,
            partial.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    registry.kill();
    let partial_len = fs::metadata(&partial).unwrap().len();
    assert!(
        partial_len < big.size(),
        "the download finished before the registry was killed ({partial_len} bytes)"
    );
    std::thread::sleep(Duration::from_millis(1000));
    registry.restart();
    let out = pull.wait();
    assert_success(&out);

    assert_image_stored(&sandbox, &reference, image);
    assert_eq!(sandbox.partials(), Vec::<std::path::PathBuf>::new());
    // The restarted registry served the rest of the blob, not the whole of it again.
    let gets = registry.blob_gets(&big.digest);
    let resumed: Vec<&(u16, u64)> = gets.iter().filter(|(status, _)| *status == 206).collect();
    assert_eq!(resumed.len(), 1, "blob requests after restart: {gets:?}");
    assert!(resumed[0].1 < big.size(), "{gets:?}");
}

/// How a test hands credentials to `layerfs pull`.
#[derive(Clone, Copy, Debug)]
enum Creds {
    None,
    Flag(&'static str),
    AuthFile(&'static str),
    DockerConfig(&'static str),
}

/// Runs `layerfs pull REF` in a fresh sandbox with credentials given as `creds` says.
fn pull_with(
    registry: &Registry,
    reference: &str,
    creds: Creds,
    extra: &[&str],
) -> (Sandbox, std::process::Output) {
    let sandbox = Sandbox::new();
    let auths = |user_pass: &str| {
        serde_json::json!({"auths": {registry.host(): {"auth": STANDARD.encode(user_pass)}}})
            .to_string()
    };
    let mut args = vec!["pull", reference];
    args.extend(extra);
    if let Creds::Flag(c) = creds {
        args.extend(["--creds", c]);
    }
    let mut cmd = sandbox.command(&args);
    match creds {
        Creds::None | Creds::Flag(_) => {}
        Creds::AuthFile(c) => {
            let path = sandbox.path("auth.json");
            fs::write(&path, auths(c)).unwrap();
            cmd.env("REGISTRY_AUTH_FILE", &path);
        }
        Creds::DockerConfig(c) => {
            let dir = sandbox.home.join(".docker");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("config.json"), auths(c)).unwrap();
        }
    }
    let out = util::Running::spawn(cmd).wait();
    (sandbox, out)
}

#[test]
fn basic_auth() {
    let registry = Registry::with_basic_auth("alice", "s3cret");
    let image = Image::simple("private", Flavor::Docker, Compression::Gzip);
    registry.push_image("private/img", "v1", &image);
    let reference = registry.reference("private/img:v1");
    let cases = [
        (Creds::Flag("alice:s3cret"), true),
        (Creds::AuthFile("alice:s3cret"), true),
        (Creds::DockerConfig("alice:s3cret"), true),
        (Creds::None, false),
        (Creds::Flag("alice:wrong"), false),
        (Creds::DockerConfig("alice:wrong"), false),
    ];
    for (creds, succeeds) in cases {
        let (sandbox, out) = pull_with(&registry, &reference, creds, &[]);
        if succeeds {
            assert_success(&out);
            assert_image_stored(&sandbox, &reference, &image);
        } else {
            assert_failure(&out);
            assert_stderr_mentions(&out, &["--creds"]);
            assert_eq!(sandbox.index_refs().len(), 0, "{creds:?}");
        }
    }
}

#[test]
fn bearer_token_auth() {
    let registry = Registry::with_token_auth("bob", "hunter2", &[]);
    let mut builder = ImageBuilder::new(Flavor::Oci);
    for i in 0..6 {
        builder = builder.layer(Layer::named(
            &format!("tok{i}"),
            Compression::Gzip,
            Flavor::Oci,
        ));
    }
    let image = builder.build();
    registry.push_image("private/img", "v1", &image);
    let reference = registry.reference("private/img:v1");
    let tokens = registry.token_service();

    // Anonymous callers get a token without access: the registry says 401.
    let (sandbox, out) = pull_with(&registry, &reference, Creds::None, &[]);
    assert_failure(&out);
    assert_stderr_mentions(&out, &["--creds"]);
    assert_eq!(sandbox.index_refs().len(), 0);

    // Wrong password: the token service refuses.
    let (sandbox, out) = pull_with(&registry, &reference, Creds::Flag("bob:wrong"), &[]);
    assert_failure(&out);
    assert_eq!(sandbox.index_refs().len(), 0);

    for creds in [Creds::Flag("bob:hunter2"), Creds::AuthFile("bob:hunter2")] {
        let before = tokens.requests();
        let (sandbox, out) = pull_with(&registry, &reference, creds, &["--jobs", "4"]);
        assert_success(&out);
        let used = tokens.requests() - before;
        assert_image_stored(&sandbox, &reference, &image);
        // One token covers the manifest, the config and all six layers, even when they are
        // fetched in parallel.
        assert_eq!(
            used,
            1,
            "{creds:?}: token requests for one pull of {} blobs",
            image.all_digests().len()
        );
    }
}

#[test]
fn bearer_token_auth_allows_anonymous_pull_of_public_repositories() {
    let registry = Registry::with_token_auth("bob", "hunter2", &["pull"]);
    let image = Image::simple("public", Flavor::Oci, Compression::Zstd);
    registry.push_image("library/public", "latest", &image);
    let reference = registry.reference("library/public:latest");
    let (sandbox, out) = pull_with(&registry, &reference, Creds::None, &[]);
    assert_success(&out);
    assert_image_stored(&sandbox, &reference, &image);
}

#[test]
fn tls_with_a_private_ca() {
    let registry = Registry::with_tls();
    let image = Image::simple("tls", Flavor::Oci, Compression::Gzip);
    registry.push_image("secure/img", "v1", &image);
    let reference = registry.reference("secure/img:v1");
    let tls = registry.tls();
    let cert_dir = tls.cert_dir.display().to_string();

    // (name, extra arguments, SSL_CERT_FILE, succeeds)
    let cases: Vec<(&str, Vec<&str>, Option<&std::path::Path>, bool)> = vec![
        (
            "cert-dir",
            vec!["--cert-dir", cert_dir.as_str()],
            None,
            true,
        ),
        ("SSL_CERT_FILE", vec![], Some(tls.ca_file.as_path()), true),
        ("no CA", vec![], None, false),
    ];
    for (name, extra, ssl_cert_file, succeeds) in cases {
        let sandbox = Sandbox::new();
        let mut args = vec!["pull", "--tls-verify=true", reference.as_str()];
        args.extend(extra);
        let mut cmd = sandbox.command(&args);
        if let Some(file) = ssl_cert_file {
            cmd.env("SSL_CERT_FILE", file);
        }
        let out = util::Running::spawn(cmd).wait();
        if succeeds {
            assert_success(&out);
            assert_image_stored(&sandbox, &reference, &image);
        } else {
            assert_failure(&out);
            assert_stderr_mentions(&out, &["certificate"]);
            assert_eq!(sandbox.index_refs().len(), 0, "{name}");
        }
    }
}

/// After a refused pull the store must be as usable as before: no ref, only verified blobs,
/// `images` works, and a good image still pulls.
fn assert_store_unharmed(sandbox: &Sandbox, registry: &Registry, refused: &str) {
    assert!(
        !sandbox.index_refs().contains_key(refused),
        "{refused} was added to index.json"
    );
    sandbox.blobs(); // asserts every blob hashes to its name
    assert!(!sandbox.image_refs().contains_key(refused));
    let good = Image::simple("good", Flavor::Oci, Compression::Gzip);
    registry.push_image("test/good", "v1", &good);
    let good_ref = registry.reference("test/good:v1");
    sandbox.ok(&["pull", &good_ref]);
    assert_image_stored(sandbox, &good_ref, &good);
}

#[test]
fn refuses_blobs_that_do_not_match_their_digest() {
    let registry = Registry::start();
    enum Damage {
        /// A valid config with one changed character.
        Config,
        /// One byte of file content changed inside an uncompressed layer.
        PlainLayer,
        /// One byte changed in the middle of a gzip layer.
        GzipLayer,
        /// A manifest pulled by digest with a space of its indentation turned into a tab.
        ManifestByDigest,
    }
    let cases = [
        ("config", Damage::Config),
        ("plain-layer", Damage::PlainLayer),
        ("gzip-layer", Damage::GzipLayer),
        ("manifest", Damage::ManifestByDigest),
    ];
    for (name, damage) in cases {
        let image = ImageBuilder::new(Flavor::Oci)
            .layer(Layer::named(
                &format!("{name}-plain"),
                Compression::None,
                Flavor::Oci,
            ))
            .layer(Layer::named(
                &format!("{name}-gzip"),
                Compression::Gzip,
                Flavor::Oci,
            ))
            .build();
        let repo = format!("test/{name}");
        registry.push_image(&repo, "v1", &image);
        let (reference, damaged) = match damage {
            Damage::Config => {
                registry.replace_in_blob(
                    &image.config.digest,
                    b"LAYERFS_TEST=1",
                    b"LAYERFS_TEST=2",
                );
                (format!("{repo}:v1"), &image.config)
            }
            Damage::PlainLayer => {
                registry.corrupt_blob(&image.layers[0].blob.digest);
                (format!("{repo}:v1"), &image.layers[0].blob)
            }
            Damage::GzipLayer => {
                registry.corrupt_blob(&image.layers[1].blob.digest);
                (format!("{repo}:v1"), &image.layers[1].blob)
            }
            Damage::ManifestByDigest => {
                registry.replace_in_blob(&image.manifest.digest, b"\n  ", b"\n\t ");
                (format!("{repo}@{}", image.manifest.digest), &image.manifest)
            }
        };
        let reference = registry.reference(&reference);
        let sandbox = Sandbox::new();
        let out = sandbox.run(&["pull", &reference]);
        assert_failure(&out);
        match damage {
            // A broken gzip stream may be noticed before the digest is.
            Damage::GzipLayer => {}
            _ => assert_stderr_mentions(&out, &["digest", &damaged.digest]),
        }
        assert!(
            !sandbox.blobs().contains_key(damaged.hex()),
            "{name}: the damaged blob was stored"
        );
        assert_store_unharmed(&sandbox, &registry, &reference);
    }
}

#[test]
fn refuses_a_layer_whose_diff_id_does_not_match_the_config() {
    let registry = Registry::start();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let image = ImageBuilder::new(Flavor::Oci)
            .layer(Layer::named("ok", Compression::Gzip, Flavor::Oci))
            .layer(Layer::named("wrong-diff-id", compression, Flavor::Oci))
            .wrong_diff_id(1)
            .build();
        let repo = format!("test/diffid-{compression:?}").to_lowercase();
        registry.push_image(&repo, "v1", &image);
        let reference = registry.reference(&format!("{repo}:v1"));
        let sandbox = Sandbox::new();
        let out = sandbox.run(&["pull", &reference]);
        assert_failure(&out);
        assert_stderr_mentions(&out, &["diff"]);
        assert_store_unharmed(&sandbox, &registry, &reference);
    }
}

#[test]
fn unknown_tag_or_repository_fails_cleanly() {
    let registry = Registry::start();
    let image = Image::simple("exists", Flavor::Oci, Compression::Gzip);
    registry.push_image("test/exists", "v1", &image);
    for name in ["test/exists:nope", "test/missing:v1"] {
        let sandbox = Sandbox::new();
        let reference = registry.reference(name);
        let out = sandbox.run(&["pull", &reference]);
        assert_failure(&out);
        assert_stderr_mentions(&out, &[&reference]);
        assert_store_unharmed(&sandbox, &registry, &reference);
    }
}

#[test]
fn limit_rate_slows_the_download() {
    let registry = Registry::start();
    let layer = Layer::new(
        &[Entry::file("blob.bin", pseudo_random(7, 6 * 1024 * 1024))],
        Compression::None,
        Flavor::Oci,
    );
    let image = ImageBuilder::new(Flavor::Oci).layer(layer).build();
    registry.push_image("test/rate", "v1", &image);
    let reference = registry.reference("test/rate:v1");
    let sandbox = Sandbox::new();
    let start = Instant::now();
    sandbox.ok(&["pull", &reference, "--limit-rate", "2M"]);
    let elapsed = start.elapsed();
    // 6 MiB at 2 MiB/s (or 2 MB/s) takes about three seconds; allow for a burst at the start.
    assert!(
        elapsed >= Duration::from_secs(2),
        "6 MiB at --limit-rate 2M took only {elapsed:?}"
    );
    assert_image_stored(&sandbox, &reference, &image);
}
