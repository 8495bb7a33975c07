//! Helpers shared by the integration tests, which drive the real `layerfs` binary against a real
//! registry (Debian's `docker-registry`) and check what lands in the store on disk.
//!
//! - [`Sandbox`]: a temporary store and `HOME`, and the `layerfs` command run inside them with an
//!   environment scrubbed of anything from the developer's machine (auth files, CA bundles).
//! - [`Registry`]: the registry fixture (plain, Basic auth, Bearer token auth, TLS).
//! - [`ImageBuilder`], [`Index`], [`Layer`]: deterministic test images.
//! - Store checks: every blob hashes to its name, refs in `index.json`, leftover partial files.
//! - [`tarball`]: tar layers written header by header, for entries no archiver would write.
//! - [`mount::MountGuard`]: a FUSE mount that is unmounted on drop, even when a test fails.
//! - [`tree`]: walking a tree (mount, unpacked directory, umoci's rootfs) and comparing two.

// Each test file uses a different part of these helpers.
#![allow(dead_code, unused_imports)]

pub mod image;
pub mod mount;
pub mod registry;
pub mod tarball;
pub mod tls;
pub mod token;
pub mod tree;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub use image::{
    Blob, CREATED, Compression, Entry, Flavor, Image, ImageBuilder, Index, Layer, Platform,
    pseudo_random, tar_of,
};
pub use registry::{Auth, Registry};

/// The longest any single `layerfs` invocation may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// Environment variables that would let the developer's machine leak into a test.
const SCRUBBED_ENV: &[&str] = &[
    "LAYERFS_STORE",
    "REGISTRY_AUTH_FILE",
    "DOCKER_CONFIG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// `sha256:<hex>` of a file's contents, streamed.
pub fn sha256_file(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(ctx.finish()))
}

/// A `layerfs` command with `--store STORE`, `HOME` set to `home` and a scrubbed environment.
pub fn command_in(store: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerfs"));
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    // The host's registries.conf (aliases, search registries) stays out of the tests; a test
    // that wants one passes --registries-conf.
    cmd.env("HOME", home)
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `layerfs --store STORE ARGS...` to completion (with `HOME` beside the store).
pub fn layerfs(store: &Path, args: &[&str]) -> Output {
    let home = store.parent().unwrap().join("home");
    fs::create_dir_all(&home).unwrap();
    Running::spawn(command_in(store, &home, args)).wait()
}

/// A child process whose output is drained by threads, so it can run beside others.
pub struct Running {
    child: Option<Child>,
    description: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let description = format!("{cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        Running {
            child: Some(child),
            description,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits for the process (killing it after [`COMMAND_TIMEOUT`]) and returns its output.
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = self.stderr.take().unwrap().join().unwrap();
                panic!(
                    "{} did not finish within {COMMAND_TIMEOUT:?}; stderr:\n{}",
                    self.description,
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "layerfs failed\n{}", show(out));
}

/// Asserts that the command failed and said why on stderr, with the `layerfs:` prefix.
#[track_caller]
pub fn assert_failure(out: &Output) {
    assert!(
        !out.status.success(),
        "layerfs succeeded but should have failed\n{}",
        show(out)
    );
    assert!(
        stderr(out).lines().any(|l| l.starts_with("layerfs:")),
        "no `layerfs:` error message on stderr\n{}",
        show(out)
    );
}

/// Asserts that stderr mentions every one of `needles` (case-insensitive).
#[track_caller]
pub fn assert_stderr_mentions(out: &Output, needles: &[&str]) {
    let err = stderr(out).to_lowercase();
    for needle in needles {
        assert!(
            err.contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}\n{}",
            show(out)
        );
    }
}

/// A temporary store and home directory for one test.
pub struct Sandbox {
    dir: TempDir,
    pub store: PathBuf,
    pub home: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-test-")
            .tempdir()
            .unwrap();
        let store = dir.path().join("store");
        let home = dir.path().join("home");
        fs::create_dir_all(&home).unwrap();
        Sandbox { dir, store, home }
    }

    /// A path inside the sandbox, for scratch files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref().to_str().unwrap()).collect();
        command_in(&self.store, &self.home, &args)
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        Running::spawn(self.command(args)).wait()
    }

    /// Runs and asserts success.
    #[track_caller]
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert_success(&out);
        out
    }

    /// Runs and asserts failure with an error message.
    #[track_caller]
    pub fn fail<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert_failure(&out);
        out
    }

    /// `layerfs images --format json`, parsed.
    #[track_caller]
    pub fn images(&self) -> Vec<Value> {
        let out = self.ok(&["images", "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("images output is not JSON ({e})\n{}", show(&out)));
        v.as_array()
            .unwrap_or_else(|| panic!("images output is not an array\n{}", show(&out)))
            .clone()
    }

    /// References listed by `layerfs images --format json`, with their digests.
    #[track_caller]
    pub fn image_refs(&self) -> BTreeMap<String, String> {
        self.images()
            .iter()
            .map(|i| {
                (
                    i["reference"].as_str().unwrap().to_string(),
                    i["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// `layerfs inspect REF`, parsed.
    #[track_caller]
    pub fn inspect(&self, reference: &str) -> Value {
        let out = self.ok(&["inspect", reference]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("inspect output is not JSON ({e})\n{}", show(&out)))
    }

    /// The refs in the store's `index.json` (`org.opencontainers.image.ref.name` → digest).
    pub fn index_refs(&self) -> BTreeMap<String, String> {
        index_refs(&self.store)
    }

    /// The blobs in the store (hex → size), each checked to hash to its name.
    pub fn blobs(&self) -> BTreeMap<String, u64> {
        verified_blobs(&self.store)
    }

    /// The blobs that came from the registry: all blobs but converted manifests.
    pub fn image_blobs(&self) -> BTreeMap<String, u64> {
        let converted = converted_manifests(&self.store);
        self.blobs()
            .into_iter()
            .filter(|(hex, _)| !converted.contains(&format!("sha256:{hex}")))
            .collect()
    }

    /// Files under `STORE/layerfs/tmp` (partial downloads).
    pub fn partials(&self) -> Vec<PathBuf> {
        let dir = self.store.join("layerfs/tmp");
        match fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The refs in `STORE/index.json`; empty if the file does not exist yet.
pub fn index_refs(store: &Path) -> BTreeMap<String, String> {
    let path = store.join("index.json");
    let Ok(bytes) = fs::read(&path) else {
        return BTreeMap::new();
    };
    let index: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(index["schemaVersion"], 2, "index.json schemaVersion");
    index["manifests"]
        .as_array()
        .expect("index.json has a manifests array")
        .iter()
        .filter_map(|d| {
            let name = d["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            // Docker manifests are stored converted to OCI media types (so that skopeo and
            // umoci can read the layout); the registry's digest is kept in an annotation.
            let digest = d["annotations"][SOURCE_DIGEST]
                .as_str()
                .or(d["digest"].as_str())
                .unwrap();
            assert_eq!(
                d["mediaType"], "application/vnd.oci.image.manifest.v1+json",
                "index.json must name OCI manifests for OCI layout readers: {d}"
            );
            Some((name.to_string(), digest.to_string()))
        })
        .collect()
}

/// Annotation on a ref whose Docker manifest was converted: the registry's digest.
pub const SOURCE_DIGEST: &str = "layerfs.source-digest";

/// Digests of the OCI manifests layerfs wrote for converted Docker manifests.
pub fn converted_manifests(store: &Path) -> Vec<String> {
    let Ok(bytes) = fs::read(store.join("index.json")) else {
        return Vec::new();
    };
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    index["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["annotations"][SOURCE_DIGEST].is_string())
                .filter_map(|d| d["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every blob under `STORE/blobs/sha256` (hex → size), asserting that each hashes to its name.
pub fn verified_blobs(store: &Path) -> BTreeMap<String, u64> {
    let dir = store.join("blobs/sha256");
    let Ok(entries) = fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    let mut blobs = BTreeMap::new();
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let digest = sha256_file(&entry.path());
        assert_eq!(
            digest,
            format!("sha256:{name}"),
            "blob {} does not hash to its name",
            entry.path().display()
        );
        blobs.insert(name, entry.metadata().unwrap().len());
    }
    blobs
}

/// Asserts the store is a valid OCI layout holding `image` under `reference`: the ref in
/// `index.json`, every blob present with the registry's exact bytes, listed by `images`, and
/// `inspect` reporting the config and layers the image was built with.
#[track_caller]
pub fn assert_image_stored(sandbox: &Sandbox, reference: &str, image: &Image) {
    let layout: Value =
        serde_json::from_slice(&fs::read(sandbox.store.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");

    let refs = sandbox.index_refs();
    assert_eq!(
        refs.get(reference),
        Some(&image.manifest.digest),
        "index.json refs: {refs:?}"
    );
    let blobs = sandbox.blobs();
    for blob in std::iter::once(&image.manifest).chain(image.blobs()) {
        assert_eq!(
            blobs.get(blob.hex()),
            Some(&blob.size()),
            "blob {} ({}) missing from the store",
            blob.digest,
            blob.media_type
        );
    }
    let stored_manifest = fs::read(
        sandbox
            .store
            .join("blobs/sha256")
            .join(image.manifest.hex()),
    );
    assert_eq!(stored_manifest.unwrap(), image.manifest.bytes);

    let images = sandbox.image_refs();
    assert_eq!(
        images.get(reference),
        Some(&image.manifest.digest),
        "images: {images:?}"
    );
    assert_inspect(&sandbox.inspect(reference), reference, image);
}

/// Asserts that `layerfs inspect` output describes `image`.
#[track_caller]
pub fn assert_inspect(v: &Value, reference: &str, image: &Image) {
    assert_eq!(v["reference"], reference, "inspect: {v:#}");
    assert_eq!(
        v["digest"],
        image.manifest.digest.as_str(),
        "inspect: {v:#}"
    );
    assert_eq!(v["mediaType"], image.manifest.media_type.as_str());
    assert_eq!(v["platform"]["os"], image.platform.os.as_str());
    assert_eq!(
        v["platform"]["architecture"],
        image.platform.architecture.as_str()
    );
    assert_eq!(
        v["platform"].get("variant").and_then(Value::as_str),
        image.platform.variant.as_deref(),
        "inspect platform: {:#}",
        v["platform"]
    );
    assert_eq!(v["created"], CREATED);
    assert_eq!(v["env"], serde_json::json!(image.env));
    assert_eq!(v["entrypoint"], serde_json::json!(image.entrypoint));
    assert_eq!(v["cmd"], serde_json::json!(image.cmd));
    assert_eq!(v["workingDir"], image.working_dir.as_str());
    assert_eq!(v["user"], image.user.as_str());
    let layers: Vec<(String, String, u64, String)> = v["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("inspect has no layers array: {v:#}"))
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or_default().to_string(),
                l["mediaType"].as_str().unwrap_or_default().to_string(),
                l["size"].as_u64().unwrap_or_default(),
                l["diffId"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, String)> = image
        .layers
        .iter()
        .map(|l| {
            (
                l.blob.digest.clone(),
                l.blob.media_type.clone(),
                l.blob.size(),
                l.diff_id.clone(),
            )
        })
        .collect();
    assert_eq!(layers, expected);
    assert_eq!(
        v["history"].as_array().map(Vec::len),
        Some(image.history_len),
        "inspect history: {:#}",
        v["history"]
    );
}

/// The JSON document `layerfs pull --format json` printed.
#[track_caller]
pub fn pull_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pull --format json printed no JSON ({e})\n{}", show(out)))
}
