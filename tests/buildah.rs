//! A real containers-storage user: Debian's buildah with `mount_program` set to layerfs in a
//! storage.conf of the test's own, as root. `buildah from` takes a Debian image straight from a
//! layerfs store (an OCI layout); `buildah mount`, writes through the mount, `buildah copy`,
//! `buildah run` (chroot isolation) and `buildah commit` follow; the committed image, loaded
//! back into layerfs, must show exactly the tree that buildah's layerfs mount showed.
//!
//! A second test runs buildah rootless, as `nobody`, with layerfs mounting inside buildah's user
//! namespace.
//!
//! `buildah run` with an OCI runtime (crun) needs cgroups that some hosts (cgroup v1/hybrid)
//! do not give it; chroot isolation runs the same command in the same mounted rootfs.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::tarball::{TarEntry, gzip_layer_fast, raw_layer};
use util::tree::{Compare, Tree, assert_same, is_root};
use util::{Compression, Flavor, ImageBuilder, Registry, Sandbox};

/// buildah with the test's storage configuration; unmounts and removes its containers on drop.
struct Buildah {
    conf: PathBuf,
    graph: PathBuf,
    /// Rootless: buildah runs as `nobody` with this home (where rootless buildah keeps its
    /// storage, whatever storage.conf says).
    home: Option<PathBuf>,
}

impl Buildah {
    fn new(dir: &Path) -> Buildah {
        fs::create_dir_all(dir).unwrap();
        let graph = dir.join("graph");
        let conf = dir.join("storage.conf");
        fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n\
                 [storage.options.overlay]\nmount_program = \"{}\"\n",
                dir.join("run").display(),
                graph.display(),
                env!("CARGO_BIN_EXE_layerfs"),
            ),
        )
        .unwrap();
        Buildah {
            conf,
            graph,
            home: None,
        }
    }

    /// buildah as `nobody`, with `home` (created, and given to nobody) as its home.
    fn rootless(home: &Path) -> Buildah {
        let mut b = Buildah::new(home);
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(home)
            .status()
            .unwrap();
        assert!(status.success());
        b.graph = home.to_owned();
        b.home = Some(home.to_owned());
        b
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = match &self.home {
            None => Command::new("buildah"),
            Some(home) => {
                let mut c = Command::new("setpriv");
                c.args(
                    util::mount::setpriv(util::mount::NOBODY, util::mount::NOBODY)
                        .iter()
                        .skip(1),
                )
                .arg("buildah")
                .env("HOME", home)
                .env_remove("XDG_RUNTIME_DIR")
                .current_dir(home);
                c
            }
        };
        cmd.args(args)
            .env("CONTAINERS_STORAGE_CONF", &self.conf)
            .env("BUILDAH_ISOLATION", "chroot")
            .output()
            .expect("buildah is not installed (.ci/run installs it)")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "buildah {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.run(&["umount", "--all"]);
        let _ = self.run(&["rm", "--all"]);
        // Whatever buildah left mounted under its graph root.
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let graph = self.graph.to_string_lossy().into_owned();
        for line in mounts.lines() {
            if let Some(target) = line.split(' ').nth(1)
                && target.starts_with(&graph)
            {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// Commit the container `work` to the OCI archive `archive`, load that into the sandbox's store
/// and unpack it: the directory it was unpacked into.
fn commit_and_unpack(buildah: &Buildah, sandbox: &Sandbox, archive: &Path) -> PathBuf {
    buildah.ok(&[
        "commit",
        "--quiet",
        "work",
        &format!("oci-archive:{}:committed", archive.display()),
    ]);
    sandbox.ok(&[
        "load",
        archive.to_str().unwrap(),
        "--tag",
        "localhost/committed:1",
    ]);
    let unpacked = sandbox.path("unpacked");
    sandbox.ok(&[
        "unpack",
        "localhost/committed:1",
        unpacked.to_str().unwrap(),
    ]);
    unpacked
}

fn mounted_fs_type(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let mut f = l.split(' ');
        let (_, target, kind) = (f.next()?, f.next()?, f.next()?);
        (Path::new(target) == path).then(|| kind.to_owned())
    })
}

#[test]
fn buildah_builds_on_layerfs_as_its_mount_program() {
    assert!(
        is_root(),
        "buildah runs as root here; CI runs the tests as root"
    );
    let base = fs::read(util::image::debian_rootfs_tar()).unwrap();
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(gzip_layer_fast(base))
        .layer(raw_layer(
            &[
                TarEntry::file("etc/layerfs-test", "second layer\n"),
                TarEntry::whiteout("etc/issue"),
            ],
            Compression::Gzip,
        ))
        .build();
    let registry = Registry::start();
    registry.push_image("test/debian", "v1", &image);
    let reference = registry.reference("test/debian:v1");
    let sandbox = Sandbox::new();
    sandbox.ok(&["pull", &reference]);
    let store = sandbox.path("store");
    let buildah = Buildah::new(&sandbox.path("buildah"));

    // From the layerfs store, read as an OCI layout. buildah names the image after the
    // layout's path, which must then be lowercase: a link gives it one.
    let link = std::env::temp_dir().join(format!("layerfs-buildah-{}", std::process::id()));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&store, &link).unwrap();
    let from = format!("oci:{}:{reference}", link.display());
    buildah.ok(&["from", "--name", "work", &from]);
    // copy and run first: each mounts and unmounts the container itself. (After a
    // `buildah mount`, `buildah run` leaves buildah's mount count off by one, whatever the
    // driver, and the container stays mounted.)
    let copied = sandbox.path("copied.txt");
    fs::write(&copied, "copied in\n").unwrap();
    buildah.ok(&["copy", "work", copied.to_str().unwrap(), "/srv/copied.txt"]);
    let ran = buildah.ok(&[
        "run",
        "--isolation",
        "chroot",
        // The test images' config names an unprivileged user.
        "--user",
        "0:0",
        "work",
        "--",
        "sh",
        "-c",
        "cat /etc/debian_version; echo ran > /srv/ran",
    ]);
    assert!(ran.starts_with("12."), "{ran}");
    let root = PathBuf::from(buildah.ok(&["mount", "work"]));
    assert_eq!(mounted_fs_type(&root).as_deref(), Some("fuse.layerfs"));
    assert_eq!(
        fs::read_to_string(root.join("etc/layerfs-test")).unwrap(),
        "second layer\n"
    );
    assert!(!root.join("etc/issue").exists());

    // Changes through the mount: a new file, a changed one, a removal, a lower directory
    // renamed, a mode change.
    fs::write(root.join("etc/motd"), "built with buildah on layerfs\n").unwrap();
    fs::remove_file(root.join("etc/issue.net")).unwrap();
    fs::rename(root.join("etc/apt"), root.join("etc/apt-moved")).unwrap();
    fs::create_dir(root.join("srv/new")).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(root.join("etc/hostname"))
            .unwrap()
            .permissions(),
        0o600,
    );
    fs::set_permissions(
        root.join("etc/hostname"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut seen = Tree::walk("buildah mount", &root);
    buildah.ok(&["umount", "work"]);
    assert!(
        mounted_fs_type(&root).is_none(),
        "still mounted after buildah umount: buildah mount says {:?}",
        buildah.ok(&["mount"])
    );
    assert!(
        util::mount::daemon_pids(&root).is_empty(),
        "the layerfs daemon outlived the unmount"
    );

    // Committed, exported, loaded back into layerfs: the tree buildah's mount showed.
    let unpacked = commit_and_unpack(&buildah, &sandbox, &sandbox.path("committed.tar"));
    let mut committed = Tree::walk("committed", &unpacked);
    // The root's own mode is the upper directory's on the mount (as on overlayfs) and the
    // unpack target's here; neither comes from the image.
    seen.nodes.remove(&b"/"[..]);
    committed.nodes.remove(&b"/"[..]);
    let opts = Compare {
        mtimes_of: Default::default(),
        xattrs: false,
        nlink: true,
    };
    assert_same(&seen, &committed, &opts);
    for (path, text) in [
        ("etc/motd", "built with buildah on layerfs\n"),
        ("srv/copied.txt", "copied in\n"),
        ("srv/ran", "ran\n"),
    ] {
        assert_eq!(fs::read_to_string(unpacked.join(path)).unwrap(), text);
    }
    assert!(!unpacked.join("etc/issue.net").exists());
    assert!(!unpacked.join("etc/apt").exists());
    assert!(unpacked.join("etc/apt-moved/sources.list.d").is_dir());
    fs::remove_file(&link).unwrap();
}

/// Rootless: buildah as `nobody` (no subordinate ids, so one id mapped: everything in the
/// image is root's), layerfs as its mount program inside buildah's user namespace, where it is
/// "root" yet cannot open the default store (it needs none for lower directories).
#[test]
fn rootless_buildah_mounts_writes_and_commits_through_layerfs() {
    assert!(
        is_root(),
        "the test runs buildah as nobody through setpriv; CI runs the tests as root"
    );
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[
                TarEntry::dir("etc"),
                TarEntry::file("etc/greeting", "hello\n"),
                TarEntry::file("etc/old", "old\n"),
            ],
            Compression::Gzip,
        ))
        .build();
    let registry = Registry::start();
    registry.push_image("test/small", "v1", &image);
    let reference = registry.reference("test/small:v1");
    let sandbox = Sandbox::new();
    sandbox.ok(&["pull", &reference]);
    // nobody reads the store as an OCI layout through a lowercase link.
    let store = sandbox.path("store");
    let readable = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(sandbox.path(""))
        .status()
        .unwrap();
    assert!(readable.success());
    let link = std::env::temp_dir().join(format!("layerfs-rootless-{}", std::process::id()));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&store, &link).unwrap();
    let home = sandbox.path("nobody");
    let buildah = Buildah::rootless(&home);

    buildah.ok(&[
        "from",
        "--name",
        "work",
        &format!("oci:{}:{reference}", link.display()),
    ]);
    let copied = home.join("copied.txt");
    fs::write(&copied, "copied in\n").unwrap();
    let _ = Command::new("chown").arg("nobody").arg(&copied).status();
    buildah.ok(&["copy", "work", copied.to_str().unwrap(), "/etc/copied"]);
    // Mounted, changed and unmounted inside one user namespace, as rootless tools do.
    let changed = buildah.ok(&[
        "unshare",
        "sh",
        "-ec",
        "m=$(buildah mount work); grep -q \" $m fuse.layerfs \" /proc/self/mounts; \
         cat \"$m/etc/greeting\"; echo new > \"$m/etc/added\"; chown 0:0 \"$m/etc/added\"; \
         rm \"$m/etc/old\"; mkdir \"$m/srv\"; ls -n \"$m/etc\"; buildah umount work",
    ]);
    assert!(changed.starts_with("hello"), "{changed}");
    let unpacked = commit_and_unpack(&buildah, &sandbox, &home.join("committed.tar"));
    for (path, text) in [
        ("etc/greeting", "hello\n"),
        ("etc/added", "new\n"),
        ("etc/copied", "copied in\n"),
    ] {
        assert_eq!(
            fs::read_to_string(unpacked.join(path)).unwrap(),
            text,
            "{path}"
        );
    }
    assert!(!unpacked.join("etc/old").exists());
    assert!(unpacked.join("srv").is_dir());
    let added = fs::metadata(unpacked.join("etc/added")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&added),
            std::os::unix::fs::MetadataExt::gid(&added)
        ),
        (0, 0)
    );
    fs::remove_file(&link).unwrap();
}
