//! Importing image archives: `docker save` tarballs (`manifest.json`, `<id>/layer.tar`, plain or
//! compressed) and OCI archives (an image layout in a tar).
//!
//! The archive is read once, front to back. Its members are never extracted under their own
//! names: small ones are kept in memory and large ones are spooled to numbered temp files in
//! the store while being hashed, so a hostile member name cannot write anywhere. Layers are
//! then decompressed to check the config's `diff_ids` before anything is published, exactly as
//! a pull does.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::image::{self, Config, Descriptor, Manifest, ManifestKind, Platform, media};
use crate::layer::{self, Compression};
use crate::reference::Reference;
use crate::store::{self, Store};

/// Members up to this size stay in memory (manifests, configs, small layers).
const IN_MEMORY_LIMIT: u64 = 1 << 20;
/// Largest manifest or config accepted from an archive.
const MAX_DOCUMENT_BYTES: u64 = 32 << 20;
/// Symlink hops followed when resolving a member (docker save links duplicate layers).
const MAX_LINK_HOPS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the archive is not a readable tar: {0}")]
    Tar(#[source] io::Error),
    #[error(
        "the archive is neither a docker save tarball (manifest.json) nor an OCI archive (oci-layout, index.json)"
    )]
    UnknownFormat,
    #[error("the archive is malformed: {0}")]
    Malformed(String),
    #[error("the archive has no member {0:?} that its manifest names")]
    Missing(String),
    #[error(
        "layer {member} decompresses to {found}, but the image config says its diff_id is {expected}"
    )]
    DiffIdMismatch {
        member: String,
        expected: Digest,
        found: Digest,
    },
    #[error("member {member} is named {expected} but hashes to {found}")]
    DigestMismatch {
        member: String,
        expected: Digest,
        found: Digest,
    },
    #[error("layer {member}: {source}")]
    Layer {
        member: String,
        #[source]
        source: layer::Error,
    },
    #[error("the archive does not name its image{0}; pass --tag REPOSITORY:TAG")]
    NoName(String),
    #[error("--tag names one image, but the archive holds {0}")]
    TagForMany(usize),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An image the archive brought into the store.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Loaded {
    pub reference: String,
    pub digest: Digest,
}

/// One member's content, hashed on the way in.
enum Content {
    Memory(Vec<u8>),
    Spooled(PathBuf),
}

struct Member {
    content: Content,
    digest: Digest,
    size: u64,
}

/// Every member read from the archive, by normalised name; removes spool files on drop.
struct Members {
    files: HashMap<String, Member>,
    links: HashMap<String, String>,
    spool: PathBuf,
}

impl Drop for Members {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.spool);
    }
}

impl Members {
    fn get(&self, name: &str) -> Result<&Member> {
        let mut name = normalise(name).ok_or_else(|| Error::Missing(name.to_owned()))?;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(m) = self.files.get(&name) {
                return Ok(m);
            }
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => break,
            }
        }
        Err(Error::Missing(name))
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        let m = self.get(name)?;
        if m.size > MAX_DOCUMENT_BYTES {
            return Err(Error::Malformed(format!(
                "{name} is too large for a JSON document"
            )));
        }
        match &m.content {
            Content::Memory(b) => Ok(b.clone()),
            Content::Spooled(p) => fs::read(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            }),
        }
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let m = self.get(name)?;
        Ok(match &m.content {
            Content::Memory(b) => Box::new(&b[..]),
            Content::Spooled(p) => Box::new(File::open(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?),
        })
    }
}

/// `a/./b/../c` → `a/c`; `None` for names that climb out of the archive.
fn normalise(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Import every image in the archive at `path`. `tag` names the image when the archive holds
/// exactly one (and overrides the archive's own names).
pub fn load(store: &Store, path: &Path, tag: Option<&Reference>) -> Result<Vec<Loaded>> {
    let _lock = store.lock_shared()?;
    let members = read_members(store, path)?;
    if members.files.contains_key("manifest.json") {
        load_docker(store, &members, tag)
    } else if members.files.contains_key("index.json") && members.files.contains_key("oci-layout") {
        load_oci(store, &members, tag)
    } else {
        Err(Error::UnknownFormat)
    }
}

fn read_members(store: &Store, path: &Path) -> Result<Members> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut input = BufReader::new(file);
    let head = io::BufRead::fill_buf(&mut input).map_err(io_err)?;
    let reader: Box<dyn Read> = match Compression::sniff(head) {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(io_err)?)
        }
    };
    let spool = store.private("tmp").join(format!(
        "load-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&spool).map_err(|source| Error::Io {
        path: spool.clone(),
        source,
    })?;
    let mut members = Members {
        files: HashMap::new(),
        links: HashMap::new(),
        spool,
    };
    let mut archive = tar::Archive::new(reader);
    let mut counter = 0u64;
    for entry in archive.entries().map_err(Error::Tar)? {
        let mut entry = entry.map_err(Error::Tar)?;
        let raw = entry.path_bytes().into_owned();
        let Some(name) = std::str::from_utf8(&raw).ok().and_then(normalise) else {
            log::warn!(
                "skipping archive member {:?}",
                String::from_utf8_lossy(&raw)
            );
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                counter += 1;
                let member = read_member(&mut entry, &members.spool, counter)?;
                members.files.insert(name, member);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                let resolved = if entry.header().entry_type() == tar::EntryType::Link
                    || target.starts_with('/')
                {
                    normalise(&target)
                } else {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    normalise(&format!("{dir}/{target}"))
                };
                if let Some(t) = resolved {
                    members.links.insert(name, t);
                }
            }
            _ => {}
        }
    }
    Ok(members)
}

fn read_member(entry: &mut dyn Read, spool: &Path, n: u64) -> Result<Member> {
    let mut hasher = Hasher::new();
    let mut head = Vec::new();
    entry
        .take(IN_MEMORY_LIMIT + 1)
        .read_to_end(&mut head)
        .map_err(Error::Tar)?;
    hasher.update(&head);
    if head.len() as u64 <= IN_MEMORY_LIMIT {
        let size = head.len() as u64;
        return Ok(Member {
            content: Content::Memory(head),
            digest: hasher.finish(),
            size,
        });
    }
    let path = spool.join(n.to_string());
    let io_err = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut out = File::create(&path).map_err(io_err)?;
    out.write_all(&head).map_err(io_err)?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let k = entry.read(&mut buf).map_err(Error::Tar)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(io_err)?;
    }
    let size = hasher.len();
    Ok(Member {
        content: Content::Spooled(path),
        digest: hasher.finish(),
        size,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_docker(store: &Store, members: &Members, tag: Option<&Reference>) -> Result<Vec<Loaded>> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(&members.bytes("manifest.json")?)
        .map_err(|e| Error::Malformed(format!("manifest.json: {e}")))?;
    if tag.is_some() && entries.len() != 1 {
        return Err(Error::TagForMany(entries.len()));
    }
    // Refs are published only once every image of the archive has checked out.
    let mut pending = Vec::new();
    for entry in entries {
        let config_bytes = members.bytes(&entry.config)?;
        let config_digest = Digest::of(&config_bytes);
        let config = Config::parse(&entry.config, &config_bytes)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(Error::Malformed(format!(
                "{} lists {} diff_ids for {} layers",
                entry.config,
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            layers.push(import_layer(store, members, name, diff_id, None)?);
        }
        store.put_blob(&config_digest, &config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_owned()),
            config: Descriptor::new(media::OCI_CONFIG, config_digest, config_bytes.len() as u64),
            layers,
            annotations: Default::default(),
        };
        let names: Vec<String> = match (tag, &entry.repo_tags) {
            (Some(t), _) => vec![t.to_string()],
            (None, Some(tags)) if !tags.is_empty() => tags
                .iter()
                .map(|t| {
                    t.parse::<Reference>()
                        .map(|r| r.to_string())
                        .map_err(|e| Error::Malformed(format!("RepoTags: {e}")))
                })
                .collect::<Result<_>>()?,
            _ => return Err(Error::NoName(format!(" (image {})", entry.config))),
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::Malformed(format!("cannot encode the manifest: {e}")))?;
        pending.push(Pending {
            media_type: manifest.media_type().to_owned(),
            bytes,
            platform: platform_of(&config),
            names,
        });
    }
    publish(store, pending)
}

fn load_oci(store: &Store, members: &Members, tag: Option<&Reference>) -> Result<Vec<Loaded>> {
    let index_bytes = members.bytes("index.json")?;
    let index = match ManifestKind::parse("index.json", None, &index_bytes)? {
        ManifestKind::Index(i) => i,
        ManifestKind::Image(_) => {
            return Err(Error::Malformed("index.json is not an image index".into()));
        }
    };
    if tag.is_some() && index.manifests.len() != 1 {
        return Err(Error::TagForMany(index.manifests.len()));
    }
    // Refs are published only once every image of the archive has checked out.
    let mut pending = Vec::new();
    for top in &index.manifests {
        let (manifest, desc) = resolve_oci_manifest(members, top)?;
        let manifest_bytes = verified_blob(members, &desc)?;
        let config_bytes = verified_blob(members, &manifest.config)?;
        let config = Config::parse(&manifest.config.digest.to_string(), &config_bytes)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Malformed(format!(
                "config {} lists {} diff_ids for {} layers",
                manifest.config.digest,
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            import_layer(
                store,
                members,
                &blob_name(&layer.digest),
                diff_id,
                Some(layer),
            )?;
        }
        store.put_blob(&manifest.config.digest, &config_bytes)?;
        let name = match tag {
            Some(t) => t.to_string(),
            None => oci_name(top)?,
        };
        pending.push(Pending {
            media_type: manifest.media_type().to_owned(),
            bytes: manifest_bytes,
            platform: platform_of(&config),
            names: vec![name],
        });
    }
    publish(store, pending)
}

/// The name an OCI archive gives an image: containerd's full name, else the ref name when it
/// is a full reference. A bare tag (`latest`) does not say which repository.
fn oci_name(top: &Descriptor) -> Result<String> {
    let candidates = [
        top.annotations.get("io.containerd.image.name"),
        top.annotations.get(image::ANNOTATION_REF_NAME),
    ];
    for name in candidates.into_iter().flatten() {
        if (name.contains('/') || name.contains(':'))
            && let Ok(r) = name.parse::<Reference>()
        {
            return Ok(r.to_string());
        }
    }
    let hint = top
        .annotations
        .get(image::ANNOTATION_REF_NAME)
        .map(|n| format!(" (only the tag {n:?})"))
        .unwrap_or_default();
    Err(Error::NoName(hint))
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// A blob of an OCI archive, checked against its descriptor.
fn verified_blob(members: &Members, desc: &Descriptor) -> Result<Vec<u8>> {
    let name = blob_name(&desc.digest);
    let m = members.get(&name)?;
    if m.digest != desc.digest {
        return Err(Error::DigestMismatch {
            member: name,
            expected: desc.digest.clone(),
            found: m.digest.clone(),
        });
    }
    if m.size != desc.size {
        return Err(Error::Malformed(format!(
            "{name} is {} bytes, its descriptor says {}",
            m.size, desc.size
        )));
    }
    members.bytes(&name)
}

/// Follow an index entry to an image manifest (choosing the host platform in nested indexes).
fn resolve_oci_manifest(members: &Members, top: &Descriptor) -> Result<(Manifest, Descriptor)> {
    let mut desc = top.clone();
    for _ in 0..4 {
        let bytes = verified_blob(members, &desc)?;
        match ManifestKind::parse(&desc.digest.to_string(), Some(&desc.media_type), &bytes)? {
            ManifestKind::Image(m) => return Ok((m, desc)),
            ManifestKind::Index(i) => {
                let host = Platform::host();
                desc = i
                    .select(&host)
                    .map_err(|available| {
                        Error::Malformed(format!(
                            "no image for {host} in the archive; it has: {}",
                            available.join(", ")
                        ))
                    })?
                    .clone();
            }
        }
    }
    Err(Error::Malformed("indexes nested too deeply".into()))
}

/// Verify one layer member against `diff_id` and move it into the store.
fn import_layer(
    store: &Store,
    members: &Members,
    name: &str,
    diff_id: &Digest,
    desc: Option<&Descriptor>,
) -> Result<Descriptor> {
    let m = members.get(name)?;
    if let Some(d) = desc
        && d.digest != m.digest
    {
        return Err(Error::DigestMismatch {
            member: name.to_owned(),
            expected: d.digest.clone(),
            found: m.digest.clone(),
        });
    }
    let known = store
        .diff_id(&m.digest)
        .filter(|_| store.has_blob(&m.digest) && store.layer_index(&m.digest).is_some());
    let (found, index) = match known {
        Some(known) => (known, None),
        None => {
            let index =
                layer::index_stream(m.digest.clone(), members.reader(name)?).map_err(|source| {
                    Error::Layer {
                        member: name.to_owned(),
                        source,
                    }
                })?;
            (index.diff_id.clone(), Some(index))
        }
    };
    if &found != diff_id {
        return Err(Error::DiffIdMismatch {
            member: name.to_owned(),
            expected: diff_id.clone(),
            found,
        });
    }
    if !store.has_blob(&m.digest) {
        match &m.content {
            Content::Memory(bytes) => store.put_blob(&m.digest, bytes)?,
            Content::Spooled(path) => store.adopt_blob(&m.digest, path)?,
        }
    }
    if let Some(index) = &index {
        store.save_layer_index(index)?;
    }
    store.record_diff_id(&m.digest, diff_id)?;
    let media_type = match desc {
        Some(d) => d.media_type.clone(),
        None => {
            let mut head = [0u8; 4];
            let n = members
                .reader(name)
                .ok()
                .and_then(|mut r| r.read(&mut head).ok())
                .unwrap_or(0);
            match Compression::sniff(&head[..n]) {
                Compression::None => media::OCI_LAYER,
                Compression::Gzip => media::OCI_LAYER_GZIP,
                Compression::Zstd => media::OCI_LAYER_ZSTD,
            }
            .to_owned()
        }
    };
    Ok(Descriptor::new(&media_type, m.digest.clone(), m.size))
}

fn platform_of(config: &Config) -> Platform {
    Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
        os_version: None,
    }
}

/// Store the manifest `bytes` and point each name at them.
/// An image of the archive that checked out, waiting for its refs.
struct Pending {
    bytes: Vec<u8>,
    media_type: String,
    platform: Platform,
    names: Vec<String>,
}

fn publish(store: &Store, pending: Vec<Pending>) -> Result<Vec<Loaded>> {
    let mut loaded = Vec::new();
    for p in pending {
        let digest = Digest::of(&p.bytes);
        store.put_blob(&digest, &p.bytes)?;
        let mut descriptor = Descriptor::new(&p.media_type, digest.clone(), p.bytes.len() as u64);
        descriptor.platform = Some(p.platform);
        for name in p.names {
            store.set_ref(&name, &descriptor)?;
            loaded.push(Loaded {
                reference: name,
                digest: digest.clone(),
            });
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_member_names() {
        for (input, want) in [
            ("./manifest.json", Some("manifest.json")),
            ("abc/layer.tar", Some("abc/layer.tar")),
            ("abc/../def/layer.tar", Some("def/layer.tar")),
            ("../etc/passwd", None),
            ("/abs/x", Some("abs/x")),
            ("./", None),
        ] {
            assert_eq!(normalise(input).as_deref(), want, "{input}");
        }
    }
}
