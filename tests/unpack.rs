//! `layerfs unpack`: writing an image's merged tree into a directory, and never anywhere else.
//!
//! The differential checks of unpacked trees against umoci live in `tests/mount.rs`, beside the
//! mount they are also compared with. Here: layers written to escape the target directory
//! (`../` and absolute paths, symlinks and hardlinks pointing out, whiteouts of `..`, a
//! truncated gzip stream) must be refused by `pull` or `unpack`, or neutralised, and a canary
//! directory beside the target must come through untouched; the target's own rules (new or
//! empty) and an unprivileged unpack.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use util::mount::{MountGuard, NOBODY, command_as, setpriv};
use util::tarball::{Dialect, TarEntry, raw_layer, tar_raw};
use util::tree::{Kind, Tree, is_root};
use util::{
    Blob, Compression, Flavor, ImageBuilder, Layer, Registry, Sandbox, assert_failure,
    assert_stderr_mentions, sha256_digest,
};

const VICTIM: &[u8] = b"victim: must never change\n";

/// What the canary directory looks like: each entry's name, type, mode, owner, link count and
/// content, and the directory's own mode and owner.
fn snapshot(canary: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let meta = fs::symlink_metadata(canary).unwrap();
    out.insert(
        ".".to_string(),
        format!(
            "{:?} {:o} {}:{} {}",
            meta.file_type(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime()
        ),
    );
    for entry in fs::read_dir(canary).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let content = if meta.is_file() {
            String::from_utf8_lossy(&fs::read(entry.path()).unwrap()).into_owned()
        } else {
            String::new()
        };
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            format!(
                "{:?} {:o} {}:{} nlink={} {content:?}",
                meta.file_type(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.nlink()
            ),
        );
    }
    out
}

/// One attempt to escape: layers built knowing where the canary is.
struct Case {
    name: &'static str,
    layers: Vec<Vec<TarEntry>>,
}

/// Every escape, for a target directory `WORK/rootfs` beside the canary `WORK/canary`.
fn cases(canary: &Path) -> Vec<Case> {
    let abs = canary.to_str().unwrap().to_string();
    let climb = "../".repeat(40);
    let case = |name, layers| Case { name, layers };
    vec![
        case("dotdot", vec![vec![TarEntry::file("../canary/pwned", "x")]]),
        case(
            "dotdot-inside-path",
            vec![vec![
                TarEntry::dir("a"),
                TarEntry::file("a/../../canary/pwned", "x"),
            ]],
        ),
        case(
            "dotdot-to-absolute",
            vec![vec![TarEntry::file(
                format!("{climb}{}/pwned", &abs[1..]),
                "x",
            )]],
        ),
        case(
            "absolute",
            vec![vec![TarEntry::file(format!("{abs}/pwned"), "x")]],
        ),
        case(
            "dot-slash-dotdot",
            vec![vec![TarEntry::file("./../canary/pwned", "x")]],
        ),
        case(
            "pax-path-dotdot",
            vec![vec![
                TarEntry::file("benign", "x")
                    .header_name("benign")
                    .pax_record("path", "../canary/pwned"),
            ]],
        ),
        case(
            "gnu-longname-absolute",
            vec![vec![
                TarEntry::file(format!("{climb}{}/pwned-gnu-long-name", &abs[1..]), "x")
                    .dialect(Dialect::Gnu),
            ]],
        ),
        case(
            "symlink-then-write",
            vec![vec![
                TarEntry::symlink("evil", &abs),
                TarEntry::file("evil/pwned", "x"),
            ]],
        ),
        case(
            "relative-symlink-then-write",
            vec![vec![
                TarEntry::symlink("up", "../canary"),
                TarEntry::file("up/pwned", "x"),
            ]],
        ),
        case(
            "symlink-then-write-next-layer",
            vec![
                vec![TarEntry::symlink("evil", &abs)],
                vec![TarEntry::file("evil/pwned", "x")],
            ],
        ),
        case(
            "symlink-chain-then-write",
            vec![vec![
                TarEntry::symlink("s1", "s2"),
                TarEntry::symlink("s2", "sub/../../canary"),
                TarEntry::dir("sub"),
                TarEntry::file("s1/pwned", "x"),
            ]],
        ),
        case(
            "symlink-then-mkdir",
            vec![vec![
                TarEntry::symlink("d", &abs),
                TarEntry::dir("d/pwned-dir"),
            ]],
        ),
        case(
            "symlink-then-dir-metadata",
            vec![vec![
                TarEntry::symlink("d", &abs),
                TarEntry::dir("d").mode(0o777).owner(1234, 1234).mtime(1),
            ]],
        ),
        case(
            "symlink-then-overwrite",
            vec![vec![
                TarEntry::symlink("s", "../canary/victim"),
                TarEntry::file("s", "pwned"),
            ]],
        ),
        case(
            "symlink-then-overwrite-next-layer",
            vec![
                vec![TarEntry::symlink("s", format!("{abs}/victim"))],
                vec![TarEntry::file("s", "pwned").mode(0o777)],
            ],
        ),
        case(
            "hardlink-to-missing-target",
            vec![vec![TarEntry::hardlink("h", "not/there")]],
        ),
        case(
            "hardlink-to-dotdot",
            vec![vec![TarEntry::hardlink("h", "../canary/victim")]],
        ),
        case(
            "hardlink-to-absolute",
            vec![vec![TarEntry::hardlink("h", format!("{abs}/victim"))]],
        ),
        case(
            "hardlink-out-then-overwrite",
            vec![vec![
                TarEntry::hardlink("h", "../canary/victim"),
                TarEntry::file("h", "pwned"),
            ]],
        ),
        case(
            "hardlink-through-symlink",
            vec![vec![
                TarEntry::symlink("evil", &abs),
                TarEntry::hardlink("h", "evil/victim"),
                TarEntry::file("h", "pwned"),
            ]],
        ),
        case(
            "device-outside",
            vec![vec![TarEntry::char_device("../canary/pwned-dev", 1, 3)]],
        ),
        case(
            "symlink-outside",
            vec![vec![TarEntry::symlink(
                "../canary/pwned-link",
                "/etc/passwd",
            )]],
        ),
        case(
            "root-as-file",
            vec![vec![TarEntry::file(".", "the root is a file")]],
        ),
        case(
            "root-as-symlink",
            vec![vec![
                TarEntry::symlink(".", &abs),
                TarEntry::file("pwned", "x"),
            ]],
        ),
        case(
            "whiteout-of-dotdot",
            vec![
                vec![TarEntry::file("keep", "keep")],
                vec![
                    TarEntry::file(".wh...", ""),
                    TarEntry::file("sub/.wh...", ""),
                ],
            ],
        ),
        case(
            "whiteout-through-dotdot",
            vec![
                vec![TarEntry::file("keep", "keep")],
                vec![TarEntry::file("../.wh.canary", "")],
            ],
        ),
        case(
            "whiteout-through-symlink",
            vec![
                vec![TarEntry::symlink("evil", &abs)],
                vec![TarEntry::whiteout("evil/victim")],
            ],
        ),
        case(
            "opaque-through-dotdot",
            vec![
                vec![TarEntry::file("keep", "keep")],
                vec![TarEntry::file("../canary/.wh..wh..opq", "")],
            ],
        ),
        case(
            "opaque-through-symlink",
            vec![
                vec![TarEntry::symlink("evil", &abs)],
                vec![TarEntry::opaque("evil")],
            ],
        ),
    ]
}

/// Where one case runs: the target (`rootfs`, not created in advance) beside the canary.
struct Work {
    dir: PathBuf,
    canary: PathBuf,
    target: PathBuf,
}

impl Work {
    fn new(sandbox: &Sandbox, name: &str) -> Work {
        let dir = sandbox.path(name);
        let canary = dir.join("canary");
        fs::create_dir_all(&canary).unwrap();
        fs::set_permissions(&canary, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(canary.join("victim"), VICTIM).unwrap();
        fs::set_permissions(canary.join("victim"), fs::Permissions::from_mode(0o644)).unwrap();
        Work {
            target: dir.join("rootfs"),
            canary: fs::canonicalize(&canary).unwrap(),
            dir,
        }
    }

    /// The work directory holds only the canary and the target.
    #[track_caller]
    fn assert_nothing_beside(&self, case: &str) {
        let names: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "canary" && n != "rootfs")
            .collect();
        assert!(
            names.is_empty(),
            "{case}: written beside the target: {names:?}"
        );
        if let Ok(meta) = fs::symlink_metadata(&self.target) {
            assert!(
                meta.is_dir(),
                "{case}: the target is no longer a directory: {:?}",
                meta.file_type()
            );
        }
    }
}

#[test]
fn malicious_layers_never_write_outside_the_target() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let probe = Work::new(&sandbox, "probe");
    let names: Vec<&str> = cases(&probe.canary).iter().map(|c| c.name).collect();
    let mut outcomes = Vec::new();
    for name in names {
        let work = Work::new(&sandbox, name);
        let case = cases(&work.canary)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        let before = snapshot(&work.canary);
        let mut builder = ImageBuilder::new(Flavor::Oci);
        for entries in &case.layers {
            builder = builder.layer(raw_layer(entries, Compression::Gzip));
        }
        let image = builder.build();
        registry.push_image(&format!("evil/{name}"), "v1", &image);
        let reference = registry.reference(&format!("evil/{name}:v1"));

        let pull = sandbox.run(&["pull", &reference]);
        let outcome = if !pull.status.success() {
            assert_failure(&pull);
            format!("refused by pull: {}", last_line(&pull.stderr))
        } else {
            let unpack = sandbox.run(&["unpack", &reference, work.target.to_str().unwrap()]);
            let outcome = if unpack.status.success() {
                format!("unpacked: {}", describe_tree(&work.target))
            } else {
                assert_failure(&unpack);
                format!("refused by unpack: {}", last_line(&unpack.stderr))
            };
            // The mount must serve the same image without tripping over it.
            let guard = MountGuard::mount(
                &sandbox,
                &reference,
                &sandbox.path(&format!("mnt-{name}")),
                &[],
            );
            let tree = Tree::walk("mount", &guard.path);
            for path in tree.nodes.keys() {
                let last = path.rsplit(|&b| b == b'/').next().unwrap();
                assert!(
                    !last.starts_with(b".wh.") && last != b".." && last != b".",
                    "{name}: the mount shows {}",
                    util::tree::show(path)
                );
            }
            guard.unmount();
            outcome
        };
        assert_eq!(
            snapshot(&work.canary),
            before,
            "{name}: the canary beside the target changed ({outcome})"
        );
        work.assert_nothing_beside(name);
        outcomes.push(format!("{name}: {outcome}"));
    }
    // Shown with --nocapture: what layerfs made of each case.
    eprintln!("{}", outcomes.join("\n"));
}

fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn describe_tree(root: &Path) -> String {
    let tree = Tree::walk("unpacked", root);
    let paths: Vec<String> = tree
        .nodes
        .iter()
        .filter(|(p, _)| p.as_slice() != b"/")
        .map(|(p, n)| format!("{}={:?}", util::tree::show(p), n.kind))
        .collect();
    format!("[{}]", paths.join(", "))
}

#[test]
fn truncated_gzip_layer_is_refused_by_pull() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let tar = tar_raw(&[
        TarEntry::dir("data"),
        TarEntry::file("data/a", util::pseudo_random(7, 300_000)),
        TarEntry::file("data/b", "after the cut\n"),
    ]);
    let gz = Compression::Gzip.compress(&tar);
    // The registry stores what it is given: a blob whose digest is right but whose gzip stream
    // stops half way, under a config whose diff_id is the digest of the whole tar.
    let layer = Layer {
        diff_id: sha256_digest(&tar),
        compression: Compression::Gzip,
        blob: Blob::new(
            Flavor::Oci.layer_type(Compression::Gzip),
            gz[..gz.len() / 2].to_vec(),
        ),
        tar,
    };
    let image = ImageBuilder::new(Flavor::Oci).layer(layer).build();
    registry.push_image("evil/truncated", "v1", &image);
    let reference = registry.reference("evil/truncated:v1");
    let out = sandbox.run(&["pull", &reference]);
    assert_failure(&out);
    assert_stderr_mentions(&out, &[image.layers[0].blob.digest.as_str()]);
    let text = util::stderr(&out).to_lowercase();
    assert!(
        ["truncated", "unexpected end", "ends", "eof", "incomplete"]
            .iter()
            .any(|w| text.contains(w)),
        "the error should say that the layer is cut short: {text}"
    );
    assert!(
        !sandbox.image_refs().contains_key(&reference),
        "a truncated image was stored"
    );
    let target = sandbox.path("rootfs");
    let out = sandbox.run(&["unpack", &reference, target.to_str().unwrap()]);
    assert_failure(&out);
    assert!(
        fs::read_dir(&target).map_or(true, |mut d| d.next().is_none()),
        "unpack of an image that was never stored wrote files"
    );
}

fn small_image() -> util::Image {
    let entries = vec![
        TarEntry::dir("etc"),
        TarEntry::file("etc/config", "config\n")
            .mode(0o640)
            .owner(0, 42),
        TarEntry::file("etc/owned", "owned\n").owner(1_000_000, 1_000_001),
        TarEntry::file("bin/tool", "#!/bin/sh\necho tool\n").mode(0o4755),
        TarEntry::symlink("tool", "bin/tool"),
        TarEntry::hardlink("bin/tool-again", "bin/tool"),
        TarEntry::char_device("dev/null", 1, 3),
        TarEntry::block_device("dev/loop0", 7, 0),
        TarEntry::fifo("run/fifo"),
        TarEntry::dir("ro").mode(0o500),
        TarEntry::file("ro/inside", "written before its dir became read-only\n").mode(0o400),
        TarEntry::file("no-perms", "mode 0000\n").mode(0),
        TarEntry::file("xattrs", "x\n").xattr("user.foo", "bar"),
    ];
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(&entries, Compression::Gzip))
        .build()
}

#[test]
fn target_must_be_new_or_empty() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    registry.push_image("test/small", "v1", &small_image());
    let reference = registry.reference("test/small:v1");
    sandbox.ok(&["pull", &reference]);

    let full = sandbox.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), "keep me\n").unwrap();
    let out = sandbox.run(&["unpack", &reference, full.to_str().unwrap()]);
    assert_failure(&out);
    assert_stderr_mentions(&out, &["empty"]);
    let left: Vec<_> = fs::read_dir(&full).unwrap().collect();
    assert_eq!(left.len(), 1, "unpack wrote into a non-empty directory");
    assert_eq!(fs::read(full.join("precious")).unwrap(), b"keep me\n");

    let file = sandbox.path("a-file");
    fs::write(&file, "not a dir\n").unwrap();
    let out = sandbox.run(&["unpack", &reference, file.to_str().unwrap()]);
    assert_failure(&out);
    assert_eq!(fs::read(&file).unwrap(), b"not a dir\n");

    let out = sandbox.run(&[
        "unpack",
        &registry.reference("test/never-pulled:v1"),
        sandbox.path("x").to_str().unwrap(),
    ]);
    assert_failure(&out);
    assert_stderr_mentions(&out, &["never-pulled"]);

    for target in [sandbox.path("new"), sandbox.path("empty")] {
        if target.ends_with("empty") {
            fs::create_dir(&target).unwrap();
        }
        sandbox.ok(&["unpack", &reference, target.to_str().unwrap()]);
        assert_eq!(fs::read(target.join("etc/config")).unwrap(), b"config\n");
        let t = Tree::walk("unpacked", &target);
        assert!(t.node("/ro/inside").sha256.is_some());
        if is_root() {
            let config = t.node("/etc/config");
            assert_eq!((config.mode, config.uid, config.gid), (0o640, 0, 42));
            assert_eq!(t.node("/etc/owned").uid, 1_000_000);
            assert_eq!(t.node("/dev/null").rdev, Some((1, 3)));
            assert_eq!(t.node("/dev/loop0").kind, Kind::Block);
            assert_eq!(t.node("/bin/tool").mode, 0o4755);
            assert_eq!(t.node("/bin/tool").nlink, 2);
        }
    }
}

/// An unprivileged user unpacks what they can: contents, modes (read-only directories filled
/// before they are closed), links; owners become theirs and device nodes are left out with a
/// warning rather than failing the unpack.
#[test]
fn unprivileged_unpack() {
    let registry = Registry::start();
    registry.push_image("test/small", "v1", &small_image());
    let reference = registry.reference("test/small:v1");
    let dir = tempfile::Builder::new()
        .prefix("layerfs-user-")
        .tempdir()
        .unwrap();
    let base = dir.path();
    let bin = base.join("layerfs");
    fs::copy(env!("CARGO_BIN_EXE_layerfs"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    let (prefix, uid) = if is_root() {
        std::os::unix::fs::chown(base, Some(NOBODY), Some(NOBODY)).unwrap();
        (setpriv(NOBODY, NOBODY), NOBODY)
    } else {
        (Vec::new(), fs::metadata("/proc/self").unwrap().uid())
    };
    let (store, home, target) = (base.join("store"), base.join("home"), base.join("rootfs"));
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["--store".as_ref(), store.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        command_as(&prefix, &home, &bin, &all).output().unwrap()
    };
    let out = run(&["pull", &reference]);
    assert!(out.status.success(), "pull: {}", util::stderr(&out));
    let out = run(&["unpack", &reference, target.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "unprivileged unpack failed: {}",
        util::stderr(&out)
    );
    assert_stderr_mentions(&out, &["dev/null"]);
    let t = Tree::walk("unpacked", &target);
    assert_eq!(t.node("/etc/config").uid, uid);
    assert_eq!(t.node("/etc/config").mode, 0o640);
    assert_eq!(t.node("/ro").mode, 0o500);
    assert_eq!(t.node("/ro/inside").mode, 0o400);
    assert_eq!(
        t.node("/ro/inside").sha256,
        Some(sha256_digest(b"written before its dir became read-only\n"))
    );
    assert_eq!(t.node("/no-perms").mode, 0);
    assert_eq!(t.node("/tool").target.as_deref(), Some(&b"bin/tool"[..]));
    assert_eq!(t.node("/bin/tool").ino, t.node("/bin/tool-again").ino);
    assert_eq!(t.node("/run/fifo").kind, Kind::Fifo);
    assert_eq!(
        t.node("/xattrs").xattrs.get(&b"user.foo"[..]),
        Some(&b"bar".to_vec())
    );
    assert!(t.get("/dev/null").is_none_or(|n| n.kind != Kind::Char));
    // The user can remove what they unpacked (read-only directories included, after chmod).
    let cleanup = command_as(
        &prefix,
        &home,
        Path::new("/bin/sh"),
        &[
            "-c".as_ref(),
            format!("chmod -R u+rwX {0} && rm -rf {0}", target.display()).as_ref(),
        ],
    )
    .output()
    .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
}
