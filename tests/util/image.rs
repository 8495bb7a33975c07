//! Building test images in memory: tar layers with fixed metadata, compressed with gzip, zstd or
//! not at all; image configs; manifests and indexes in OCI or Docker media types; and the
//! `docker save` tarball format for `layerfs load`.
//!
//! Everything is deterministic (fixed mtimes, uids and contents), so a test can compute every
//! digest it expects before the image ever reaches a registry.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::sha256_digest;

/// The mtime of every tar entry and the `created` time of every image config.
pub const MTIME: u64 = 1_700_000_000;
pub const CREATED: &str = "2024-01-02T03:04:05Z";

/// Media type family: OCI image-spec or Docker Image Manifest V2 Schema 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.manifest.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.index.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.config.v1+json",
            Flavor::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    pub fn layer_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Flavor::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Flavor::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Flavor::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Flavor::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Flavor::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            // Docker's own zstd layers use the OCI media type inside a schema2 manifest.
            (Flavor::Docker, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(tar).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }
}

/// Bytes with their digest and media type, ready to be pushed as a blob or manifest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        let digest = sha256_digest(&bytes);
        Blob {
            media_type: media_type.to_string(),
            bytes,
            digest,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The hex part of the digest, the blob's file name in a layout.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }

    /// An OCI descriptor for this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// One tar entry of a test layer.
#[derive(Clone, Debug)]
pub enum Entry {
    Dir(String),
    File(String, Vec<u8>),
    Symlink(String, String),
}

impl Entry {
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File(path.to_string(), data.into())
    }

    pub fn dir(path: &str) -> Entry {
        Entry::Dir(path.to_string())
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink(path.to_string(), target.to_string())
    }
}

/// A tar archive of `entries` with fixed mtimes, root ownership and ustar headers.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap();
            }
            Entry::File(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, &data[..]).unwrap();
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// A layer: the uncompressed tar (whose digest is the config's diff_id) and the blob pushed.
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub diff_id: String,
    pub compression: Compression,
    pub blob: Blob,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression, flavor: Flavor) -> Layer {
        let diff_id = sha256_digest(&tar);
        let blob = Blob::new(flavor.layer_type(compression), compression.compress(&tar));
        Layer {
            tar,
            diff_id,
            compression,
            blob,
        }
    }

    pub fn new(entries: &[Entry], compression: Compression, flavor: Flavor) -> Layer {
        Layer::from_tar(tar_of(entries), compression, flavor)
    }

    /// A small layer holding one file whose content is derived from `name`, so that layers
    /// built from different names differ.
    pub fn named(name: &str, compression: Compression, flavor: Flavor) -> Layer {
        Layer::new(
            &[
                Entry::dir("etc"),
                Entry::file(
                    &format!("etc/{name}.conf"),
                    format!("layer {name}\n").repeat(100),
                ),
                Entry::symlink(&format!("{name}.link"), &format!("etc/{name}.conf")),
            ],
            compression,
            flavor,
        )
    }
}

/// Deterministic, incompressible bytes (xorshift64*), so big layers cost no disk in the repo.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Platform {
        let mut parts = s.split('/');
        let os = parts.next().unwrap().to_string();
        let architecture = parts.next().unwrap().to_string();
        let variant = parts.next().map(str::to_string);
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform of the machine running the tests, in OCI terms.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            other => panic!("no OCI name known for host architecture {other}"),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Describes an image; `build` turns it into blobs.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    flavor: Flavor,
    platform: Platform,
    layers: Vec<Layer>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    working_dir: String,
    user: String,
    wrong_diff_id: Option<usize>,
}

impl ImageBuilder {
    pub fn new(flavor: Flavor) -> ImageBuilder {
        ImageBuilder {
            flavor,
            platform: Platform::parse("linux/amd64"),
            layers: Vec::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "LAYERFS_TEST=1".to_string(),
            ],
            entrypoint: vec!["/bin/sh".to_string(), "-c".to_string()],
            cmd: vec!["echo hello".to_string()],
            working_dir: "/srv".to_string(),
            user: "1000:1000".to_string(),
            wrong_diff_id: None,
        }
    }

    pub fn platform(mut self, platform: &str) -> Self {
        self.platform = Platform::parse(platform);
        self
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Records in the config a diff_id for layer `index` that is not the digest of its tar.
    pub fn wrong_diff_id(mut self, index: usize) -> Self {
        self.wrong_diff_id = Some(index);
        self
    }

    pub fn build(self) -> Image {
        let mut diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.clone()).collect();
        if let Some(i) = self.wrong_diff_id {
            diff_ids[i] = sha256_digest(b"not the tar of this layer");
        }
        let mut history: Vec<Value> = (0..self.layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("ADD layer{i}.tar /")}))
            .collect();
        history.push(json!({
            "created": CREATED,
            "created_by": "CMD [\"echo hello\"]",
            "empty_layer": true
        }));
        let mut config = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": {
                "Env": self.env,
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "WorkingDir": self.working_dir,
                "User": self.user,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(variant) = &self.platform.variant {
            config["variant"] = json!(variant);
        }
        let config = Blob::new(
            self.flavor.config_type(),
            serde_json::to_vec(&config).unwrap(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.flavor.manifest_type(),
            "config": config.descriptor(),
            "layers": self.layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            self.flavor.manifest_type(),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        );
        Image {
            flavor: self.flavor,
            platform: self.platform,
            manifest,
            config,
            layers: self.layers,
            env: self.env,
            entrypoint: self.entrypoint,
            cmd: self.cmd,
            working_dir: self.working_dir,
            user: self.user,
            history_len: history.len(),
        }
    }
}

/// A built image: every blob a registry needs, plus what `inspect` should report.
#[derive(Clone, Debug)]
pub struct Image {
    pub flavor: Flavor,
    pub platform: Platform,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub history_len: usize,
}

impl Image {
    /// A one-layer image of the given flavour and compression.
    pub fn simple(name: &str, flavor: Flavor, compression: Compression) -> Image {
        ImageBuilder::new(flavor)
            .layer(Layer::named(name, compression, flavor))
            .build()
    }

    /// Every blob of the image: config and layers, not the manifest.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config)
            .chain(self.layers.iter().map(|l| &l.blob))
            .collect()
    }

    /// Digests of manifest, config and layers: what a store holding this image must contain.
    pub fn all_digests(&self) -> Vec<String> {
        std::iter::once(self.manifest.digest.clone())
            .chain(self.blobs().iter().map(|b| b.digest.clone()))
            .collect()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// A tarball in the format of `docker save`: manifest.json, repositories, one directory per
    /// layer with `layer.tar`, and the config as `<hex>.json`.
    pub fn docker_save(&self, repo_tags: &[&str], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(MTIME);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, data).unwrap();
        };
        let config_name = format!("{}.json", self.config.hex());
        add(&config_name, &self.config.bytes);
        let mut layer_paths = Vec::new();
        let mut parent: Option<String> = None;
        for layer in &self.layers {
            // Legacy layer ids: a chain over the diff_ids, as docker computes them.
            let id_input = format!("{}{}", parent.as_deref().unwrap_or(""), layer.diff_id);
            let id = sha256_digest(id_input.as_bytes())["sha256:".len()..].to_string();
            add(&format!("{id}/VERSION"), b"1.0");
            let mut legacy = json!({"id": id, "created": CREATED});
            if let Some(p) = &parent {
                legacy["parent"] = json!(p);
            }
            add(&format!("{id}/json"), &serde_json::to_vec(&legacy).unwrap());
            add(&format!("{id}/layer.tar"), &layer.tar);
            layer_paths.push(format!("{id}/layer.tar"));
            parent = Some(id);
        }
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": layer_paths,
        }]);
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        let mut repositories = serde_json::Map::new();
        for tag in repo_tags {
            let (repo, tag) = tag.rsplit_once(':').unwrap();
            let entry = repositories
                .entry(repo.to_string())
                .or_insert_with(|| json!({}));
            entry[tag] = json!(parent.clone().unwrap_or_default());
        }
        add(
            "repositories",
            &serde_json::to_vec(&Value::Object(repositories)).unwrap(),
        );
        let tar = builder.into_inner().unwrap();
        if gzip {
            Compression::Gzip.compress(&tar)
        } else {
            tar
        }
    }
}

/// A multi-platform index (OCI) or manifest list (Docker) over `images`.
#[derive(Clone, Debug)]
pub struct Index {
    pub blob: Blob,
    pub images: Vec<Image>,
}

impl Index {
    pub fn new(flavor: Flavor, images: Vec<Image>) -> Index {
        let manifests: Vec<Value> = images
            .iter()
            .map(|image| {
                let mut d = image.manifest.descriptor();
                d["platform"] = image.platform.json();
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": flavor.index_type(),
            "manifests": manifests,
        });
        Index {
            blob: Blob::new(
                flavor.index_type(),
                serde_json::to_vec_pretty(&index).unwrap(),
            ),
            images,
        }
    }

    /// One image per platform, each with a layer of its own.
    pub fn for_platforms(flavor: Flavor, platforms: &[&str]) -> Index {
        let images = platforms
            .iter()
            .map(|p| {
                ImageBuilder::new(flavor)
                    .platform(p)
                    .layer(Layer::named("base", Compression::Gzip, flavor))
                    .layer(Layer::named(
                        &p.replace('/', "-"),
                        Compression::Gzip,
                        flavor,
                    ))
                    .env(&format!("PLATFORM={p}"))
                    .build()
            })
            .collect();
        Index::new(flavor, images)
    }

    pub fn image_for(&self, platform: &str) -> &Image {
        let want = Platform::parse(platform);
        self.images
            .iter()
            .find(|i| i.platform == want)
            .unwrap_or_else(|| panic!("index has no image for {platform}"))
    }
}

/// `target/test-cache`: outputs that are slow to build and never change.
pub fn test_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-cache");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Debian bookworm minbase rootfs as a tar, built by mmdebstrap from the Debian mirror on the
/// first run and cached in `target/test-cache`.
pub fn debian_rootfs_tar() -> PathBuf {
    let tar = test_cache().join("debian-bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    let available = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        available,
        "mmdebstrap is not installed; the Debian rootfs test builds its image with it. Run \
         .ci/run's install step (apt-get install mmdebstrap)."
    );
    let partial = tar.with_extension("tar.partial");
    let out = Command::new("mmdebstrap")
        .env("SOURCE_DATE_EPOCH", MTIME.to_string())
        .args(["--quiet", "--variant=minbase", "--format=tar", "bookworm"])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap failed (it needs the Debian mirror):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &tar).unwrap();
    tar
}
