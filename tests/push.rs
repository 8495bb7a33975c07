//! `layerfs push` against Debian's docker-registry: uploads, skipped blobs, cross-repository
//! mounts, chunked uploads, Basic and Bearer auth, and the round trip pull → mount with an
//! upper directory → change → commit → push → pull into an empty store → mount.

mod util;

use std::fs;
use std::process::Command;

use util::mount::MountGuard;
use util::tarball::{TarEntry, raw_layer};
use util::tree::{Compare, Tree, assert_same};
use util::{Compression, Flavor, Image, ImageBuilder, Registry, Sandbox, pseudo_random};

fn image() -> Image {
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[
                TarEntry::dir("etc"),
                TarEntry::file("etc/hostname", "box\n"),
                TarEntry::file("etc/motd", "welcome\n"),
                TarEntry::dir("usr/share/doc/pkg"),
                TarEntry::file("usr/share/doc/pkg/README", "read me\n"),
                TarEntry::file("usr/bin/tool", "#!/bin/sh\necho tool\n").mode(0o755),
            ],
            Compression::Gzip,
        ))
        .layer(raw_layer(
            &[TarEntry::file("data/big", pseudo_random(11, 3 << 20))],
            Compression::Gzip,
        ))
        .build()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn push_skips_existing_blobs_mounts_across_repositories_and_chunks() {
    let source = Registry::start();
    let target = Registry::start();
    source.push_image("test/app", "v1", &image());
    let sandbox = Sandbox::new();
    let pulled = source.reference("test/app:v1");
    sandbox.ok(&["pull", &pulled]);

    // First push: everything uploaded, the 3 MiB layer in 1 MiB chunks.
    let dest = target.reference("team/app:v1");
    let out = sandbox.ok(&[
        "push",
        &pulled,
        &dest,
        "--chunk-size",
        "1",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<&str> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[1].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["uploaded", "uploaded", "uploaded"], "{v}");
    let digest = v["digest"].as_str().unwrap().to_owned();

    // Pulled back into an empty store: the same manifest digest, every blob verified.
    let other = Sandbox::new();
    let out = other.ok(&["pull", &dest, "--format", "json"]);
    let back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back["digest"].as_str(), Some(digest.as_str()), "{back}");

    // skopeo reads what was pushed.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect: {out:?}");
    assert_eq!(util::sha256_digest(&out.stdout), digest);

    // Second push: every blob is already there.
    let out = sandbox.ok(&["push", &pulled, &dest]);
    assert_eq!(
        stderr(&out).matches(") exists").count(),
        3,
        "{}",
        stderr(&out)
    );

    // Another repository of the same registry: blobs are mounted, not uploaded. The store
    // knows `team/app` on that registry once an image from there is in it.
    sandbox.ok(&["pull", &dest]);
    let elsewhere = target.reference("team/copy:v1");
    let out = sandbox.ok(&["push", &dest, &elsewhere]);
    assert_eq!(
        stderr(&out)
            .matches("mounted from another repository")
            .count(),
        3,
        "{}",
        stderr(&out)
    );
    let out = other.ok(&["pull", &elsewhere, "--format", "json"]);
    let copy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(copy["digest"].as_str(), Some(digest.as_str()));
}

#[test]
fn push_with_basic_and_bearer_auth() {
    let source = Registry::start();
    source.push_image("test/auth", "v1", &image());
    let sandbox = Sandbox::new();
    let pulled = source.reference("test/auth:v1");
    sandbox.ok(&["pull", &pulled]);

    let basic = Registry::with_basic_auth("alice", "s3cret");
    let dest = basic.reference("alice/app:v1");
    let out = sandbox.run(&["push", &pulled, &dest, "--creds", "alice:wrong"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "wrong password: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    sandbox.ok(&["push", &pulled, &dest, "--creds", "alice:s3cret"]);
    let other = Sandbox::new();
    other.ok(&["pull", &dest, "--creds", "alice:s3cret"]);

    let bearer = Registry::with_token_auth("bob", "t0ken", &["pull"]);
    let dest = bearer.reference("bob/app:v1");
    let out = sandbox.run(&["push", &pulled, &dest]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "anonymous push: {}",
        stderr(&out)
    );
    sandbox.ok(&["push", &pulled, &dest, "--creds", "bob:t0ken"]);
    let other = Sandbox::new();
    other.ok(&["pull", &dest]);
}

#[test]
fn round_trip_through_commit_and_push() {
    let registry = Registry::start();
    registry.push_image("test/base", "v1", &image());
    let sandbox = Sandbox::new();
    let base = registry.reference("test/base:v1");
    sandbox.ok(&["pull", &base]);
    let upper = sandbox.path("upper");
    let guard = MountGuard::mount(
        &sandbox,
        &base,
        &sandbox.path("mnt"),
        &["--upper", upper.to_str().unwrap()],
    );
    let m = guard.path.clone();
    fs::write(m.join("etc/added"), "added\n").unwrap();
    fs::write(m.join("etc/motd"), "changed\n").unwrap();
    fs::remove_file(m.join("etc/hostname")).unwrap();
    fs::rename(m.join("usr/share/doc"), m.join("usr/share/documents")).unwrap();
    fs::set_permissions(
        m.join("usr/bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let before = Tree::walk("writable view", &m);
    let changed = registry.reference("test/changed:v1");
    sandbox.ok(&["commit", m.to_str().unwrap(), &changed]);
    guard.unmount();
    sandbox.ok(&["push", &changed]);

    let fresh = Sandbox::new();
    fresh.ok(&["pull", &changed]);
    let guard = MountGuard::mount(&fresh, &changed, &fresh.path("mnt"), &[]);
    let after = Tree::walk("pushed and pulled back", &guard.path);
    let opts = Compare {
        mtimes_of: Default::default(),
        xattrs: true,
        nlink: true,
    };
    assert_same(&before, &after, &opts);
    assert_eq!(
        fs::read_to_string(guard.path.join("usr/share/documents/pkg/README")).unwrap(),
        "read me\n"
    );
    guard.unmount();
}
