//! Layers built to exhaust the puller: a file that claims a petabyte through a sparse map, a
//! gzip bomb (1 GiB of zeros in a few MiB), 200,000 tiny entries, garbage after the tar's end
//! and after the gzip stream. Each pull ends in a clear error or a usable image, while the
//! pulling process's memory stays bounded and the store holds nothing but the blobs and indexes.

mod util;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use sha2::Digest as _;
use util::mount::MountGuard;
use util::tarball::{TarEntry, raw_layer, tar_raw};
use util::{Blob, Compression, Flavor, ImageBuilder, Layer, Registry, Sandbox};

/// Peak RSS of the largest child process waited for so far, in MiB.
fn children_peak_rss_mib() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    (usage.ru_maxrss as u64) / 1024
}

/// Bytes the store uses beyond its blobs.
fn store_overhead(sandbox: &Sandbox) -> u64 {
    fn size(p: &std::path::Path) -> u64 {
        let meta = std::fs::symlink_metadata(p).unwrap();
        if meta.is_dir() {
            std::fs::read_dir(p)
                .unwrap()
                .map(|e| size(&e.unwrap().path()))
                .sum()
        } else {
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512
        }
    }
    let store = sandbox.path("store");
    size(&store) - size(&store.join("blobs"))
}

/// Pull `layer` as a one-layer image; the pull's stderr and whether it succeeded.
fn pull(registry: &Registry, sandbox: &Sandbox, name: &str, layer: Layer) -> (bool, String) {
    let image = ImageBuilder::new(Flavor::Oci).layer(layer).build();
    registry.push_image(&format!("bomb/{name}"), "v1", &image);
    let out = sandbox.run(&["pull", &registry.reference(&format!("bomb/{name}:v1"))]);
    let rss = children_peak_rss_mib();
    assert!(rss < 256, "{name}: a process used {rss} MiB");
    let overhead = store_overhead(sandbox);
    assert!(
        overhead < 64 << 20,
        "{name}: the store holds {overhead} bytes beyond its blobs"
    );
    let ok = out.status.success();
    eprintln!(
        "{name}: {}, peak RSS of any child so far {rss} MiB, store overhead {} KiB",
        if ok { "pulled" } else { "refused" },
        overhead >> 10
    );
    if !ok {
        util::assert_failure(&out);
        assert!(sandbox.image_refs().keys().all(|r| !r.contains(name)));
        sandbox.ok(&["fsck"]);
    }
    (ok, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A gzip layer compressed by an outside program from a stream written piece by piece, so that
/// neither the tar nor the compressed form needs the test's memory.
fn streamed_gzip_layer(write_tar: impl FnOnce(&mut dyn Write) + Send + 'static) -> Layer {
    let mut child = Command::new("pigz")
        .args(["-1", "-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .or_else(|_| {
            Command::new("gzip")
                .args(["-1", "-c", "-n"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        })
        .expect("pigz or gzip");
    let stdin = child.stdin.take().unwrap();
    let hasher = std::thread::spawn(move || {
        struct Tee<W: Write>(W, sha2::Sha256);
        impl<W: Write> Write for Tee<W> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(buf)?;
                self.1.update(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let mut tee = Tee(stdin, sha2::Sha256::new());
        write_tar(&mut tee);
        format!("sha256:{}", hex::encode(tee.1.finalize()))
    });
    let mut compressed = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut compressed)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let diff_id = hasher.join().unwrap();
    Layer {
        tar: Vec::new(),
        diff_id,
        compression: Compression::Gzip,
        blob: Blob::new(Flavor::Oci.layer_type(Compression::Gzip), compressed),
    }
}

/// A ustar header block for a regular file.
fn header(name: &str, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    *h.as_bytes()
}

#[test]
fn exhausting_layers_end_in_bounded_pulls() {
    let registry = Registry::start();
    let sandbox = Sandbox::new();

    // A petabyte claimed through a pax 1.0 sparse map with one 512-byte segment at its end.
    let petabyte: u64 = 1 << 50;
    let mut map = format!("1\n{}\n512\n", petabyte - 512).into_bytes();
    map.resize(512, 0);
    map.extend_from_slice(&[b'z'; 512]);
    let sparse = TarEntry::file("GNUSparseFile.0/huge", map)
        .pax_record("GNU.sparse.major", "1")
        .pax_record("GNU.sparse.minor", "0")
        .pax_record("GNU.sparse.name", "huge")
        .pax_record("GNU.sparse.realsize", petabyte.to_string());
    let (ok, err) = pull(
        &registry,
        &sandbox,
        "sparse",
        raw_layer(&[sparse], Compression::Gzip),
    );
    if ok {
        // Served without materialising it: the size as claimed, the hole as zeros.
        let guard = MountGuard::mount(
            &sandbox,
            &registry.reference("bomb/sparse:v1"),
            &sandbox.path("mnt-sparse"),
            &[],
        );
        let file = guard.path.join("huge");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), petabyte);
        let f = std::fs::File::open(&file).unwrap();
        let mut buf = [1u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 1 << 40).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..512], petabyte - 512).unwrap();
        assert!(buf[..512].iter().all(|&b| b == b'z'));
        drop(f);
        guard.unmount();
    } else {
        assert!(err.contains("sparse"), "{err}");
    }

    // A gzip bomb: 1 GiB of zeros in one file.
    let gib: u64 = 1 << 30;
    let bomb = streamed_gzip_layer(move |w| {
        w.write_all(&header("zeros", gib)).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(gib >> 20) {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(&[0u8; 1024]).unwrap();
    });
    assert!(bomb.blob.size() < 16 << 20);
    let (ok, err) = pull(&registry, &sandbox, "gzip", bomb);
    assert!(ok, "{err}");
    let guard = MountGuard::mount(
        &sandbox,
        &registry.reference("bomb/gzip:v1"),
        &sandbox.path("mnt-gzip"),
        &["--cache-mib", "8"],
    );
    let f = std::fs::File::open(guard.path.join("zeros")).unwrap();
    let mut buf = vec![1u8; 1 << 16];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, gib - (1 << 16)).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(f);
    guard.unmount();

    // 200,000 tiny entries.
    let many = streamed_gzip_layer(|w| {
        for i in 0..200_000u32 {
            w.write_all(&header(&format!("d{}/f{}", i / 1000, i % 1000), 0))
                .unwrap();
        }
        w.write_all(&[0u8; 1024]).unwrap();
    });
    let (ok, err) = pull(&registry, &sandbox, "many", many);
    assert!(ok, "{err}");
    let guard = MountGuard::mount(
        &sandbox,
        &registry.reference("bomb/many:v1"),
        &sandbox.path("mnt-many"),
        &[],
    );
    assert_eq!(
        std::fs::read_dir(guard.path.join("d199")).unwrap().count(),
        1000
    );
    guard.unmount();

    // Garbage after the tar's end blocks is part of the stream (and of its diff_id), not of
    // the archive: the image is what comes before.
    let mut tar = tar_raw(&[TarEntry::file("kept", "yes\n")]);
    tar.extend_from_slice(b"trailing garbage that is not a tar header at all");
    let (ok, err) = pull(
        &registry,
        &sandbox,
        "trailing-tar",
        Layer::from_tar(tar, Compression::Gzip, Flavor::Oci),
    );
    assert!(ok, "{err}");
    let root = sandbox.path("trailing");
    sandbox.ok(&[
        "unpack",
        &registry.reference("bomb/trailing-tar:v1"),
        root.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(root.join("kept")).unwrap(), "yes\n");

    // Garbage after the gzip stream is refused.
    let mut layer = raw_layer(&[TarEntry::file("kept", "yes\n")], Compression::Gzip);
    let mut bytes = layer.blob.bytes.clone();
    bytes.extend_from_slice(b"not gzip");
    layer.blob = Blob::new(&layer.blob.media_type.clone(), bytes);
    let (ok, err) = pull(&registry, &sandbox, "trailing-gzip", layer);
    assert!(!ok);
    assert!(err.contains("gzip") || err.contains("after"), "{err}");
}
