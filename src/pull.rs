//! Pulling an image: resolve the reference, choose the platform, fetch and verify manifest,
//! config and layers, and publish the ref only when everything checked out.
//!
//! Each layer is read once from the network: the compressed bytes are hashed and appended to
//! the blob's partial file, and decompressed in the same pass to check the config's `diff_id`.
//! A partial file left by an interrupted pull is replayed from disk through the same pipeline
//! and the download continues from where it stopped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::digest::{Digest, Hasher};
use crate::image::{self, Config, Descriptor, ManifestKind, Platform};
use crate::layer;
use crate::reference::Reference;
use crate::registry::conf::RegistriesConf;
use crate::registry::{self, BlobReader, Client, RateLimit};
use crate::store::{self, BlobSlot, Store};

/// Largest image config accepted. Real configs are a few KiB; long histories reach a few MiB.
const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// Nesting of indexes followed (an index that points at an index).
const MAX_INDEX_DEPTH: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Conf(#[from] Box<registry::conf::Error>),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error("{what} does not match its digest: expected {expected}, the content hashes to {found}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        found: Digest,
    },
    #[error("{what} is {found} bytes but its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "layer {layer} decompresses to {found}, but the image config says its diff_id is {expected}; \
         the image is corrupt or was tampered with"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        found: Digest,
    },
    #[error("the image config lists {diff_ids} diff_ids for {layers} layers")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("{reference} has no image for platform {wanted}; it has: {}", available.join(", "))]
    NoPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{reference} is for platform {found}, not {wanted}")]
    WrongPlatform {
        reference: String,
        wanted: String,
        found: String,
    },
    #[error(
        "layer {digest} is a foreign (non-distributable) layer that {registry} does not serve{urls}; \
         layerfs does not download layers from third-party URLs"
    )]
    Foreign {
        digest: Digest,
        registry: String,
        urls: String,
    },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: layer::Error,
    },
    #[error("layer {digest}: {source}")]
    Download {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the caller may set.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Platform to choose from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Layers downloaded at once.
    pub jobs: usize,
    pub registry: registry::Options,
    /// Total download rate cap in bytes per second.
    pub limit_rate: Option<u64>,
}

/// Progress callbacks; implementations draw bars or log lines.
pub trait Progress: Sync {
    fn resolved(&self, _reference: &str, _digest: &Digest, _platform: &str) {}
    /// A layer download begins; `done` bytes are already on disk from an earlier attempt.
    fn layer_start(&self, _index: usize, _digest: &Digest, _size: u64, _done: u64) {}
    fn layer_bytes(&self, _index: usize, _bytes: u64) {}
    fn layer_done(&self, _index: usize, _digest: &Digest, _reused: bool) {}
}

/// A progress sink that reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// What a successful pull stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pulled {
    /// The ref name recorded in the store.
    pub reference: String,
    /// Digest of the image manifest the ref points at.
    pub digest: Digest,
    /// Digest of the index it was chosen from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub platform: String,
    pub layers: usize,
    /// Layers that were already in the store.
    pub layers_reused: usize,
    /// Compressed bytes of all layers.
    pub size: u64,
}

/// Pull `reference` into `store`, from exactly where it says.
pub fn pull(
    store: &Store,
    reference: &Reference,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Pulled> {
    pull_from(
        store,
        reference,
        reference,
        &options.registry,
        options,
        progress,
    )
}

/// Pull what a user typed, resolved as containers-registries.conf(5) says: each name it may
/// stand for in turn (an alias, or one per search registry), each from its mirrors and then
/// its primary location. The first that works is stored under the name, wherever it came
/// from. A failure moves on to the next place, except one of the store's own; when all fail,
/// the last error is returned and the others were logged.
pub fn pull_named(
    store: &Store,
    input: &str,
    conf: &RegistriesConf,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let mut attempts = Vec::new();
    for name in conf.candidates(input).map_err(Box::new)? {
        for source in conf.sources(&name).map_err(Box::new)? {
            let mut registry = options.registry.clone();
            registry.insecure |= source.insecure;
            attempts.push((name.clone(), source.reference, registry));
        }
    }
    let count = attempts.len();
    let mut last = None;
    for (i, (name, from, registry)) in attempts.into_iter().enumerate() {
        if count > 1 {
            log::info!("trying {from} for {name}");
        }
        match pull_from(store, &name, &from, &registry, options, progress) {
            Ok(pulled) => return Ok(pulled),
            Err(e @ Error::Store(_)) => return Err(e),
            Err(e) if i + 1 < count => log::warn!("{from}: {e}; trying the next place"),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("a name has at least one source"))
}

/// Pull `name` from `from` (its mirror or relocated place, or itself) with `registry`'s
/// connection options.
fn pull_from(
    store: &Store,
    name: &Reference,
    from: &Reference,
    registry: &registry::Options,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let _lock = store.lock_shared()?;
    let client = Client::new(from, registry)?;
    let repo = from.repository();
    let reference = from;
    let wanted = options.platform.clone().unwrap_or_else(Platform::host);

    let (mut bytes, resp) = client.manifest(repo, &reference.manifest_reference(), u64::MAX)?;
    let mut digest = Digest::of(&bytes);
    let what = format!("manifest of {reference}");
    if let Some(expected) = reference.digest() {
        check_digest(&what, expected, &digest)?;
    } else if let Some(Ok(header)) = resp.docker_digest.as_deref().map(str::parse::<Digest>) {
        check_digest(&what, &header, &digest)?;
    }
    let mut content_type = resp.content_type;
    let mut index_digest = None;
    let mut depth = 0;
    let (manifest, platform_desc) = loop {
        match ManifestKind::parse(&what, content_type.as_deref(), &bytes)? {
            ManifestKind::Image(m) => break (m, None::<Descriptor>),
            ManifestKind::Index(index) => {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(image::Error::UnsupportedMediaType {
                        what,
                        media_type: "indexes nested too deeply".into(),
                    }
                    .into());
                }
                let chosen = index
                    .select(&wanted)
                    .map_err(|available| Error::NoPlatform {
                        reference: reference.to_string(),
                        wanted: wanted.to_string(),
                        available,
                    })?;
                let chosen = chosen.clone();
                index_digest.get_or_insert(digest.clone());
                let (child, child_resp) =
                    client.manifest(repo, &chosen.digest.to_string(), chosen.size)?;
                let child_what = format!("manifest {} of {reference}", chosen.digest);
                check_digest(&child_what, &chosen.digest, &Digest::of(&child))?;
                check_size(&child_what, chosen.size, child.len() as u64)?;
                bytes = child;
                digest = chosen.digest.clone();
                content_type = child_resp.content_type.or(Some(chosen.media_type.clone()));
                if let ManifestKind::Image(m) =
                    ManifestKind::parse(&child_what, content_type.as_deref(), &bytes)?
                {
                    break (m, Some(chosen));
                }
            }
        }
    };

    // The config: small, fetched whole, verified before it is trusted.
    let cfg_desc = &manifest.config;
    if cfg_desc.size > MAX_CONFIG_BYTES {
        return Err(registry::Error::TooLarge {
            what: format!("config {}", cfg_desc.digest),
            limit: MAX_CONFIG_BYTES,
        }
        .into());
    }
    let config_bytes = if store.has_blob(&cfg_desc.digest) {
        store.read_blob(&cfg_desc.digest, MAX_CONFIG_BYTES)?
    } else {
        client.small_blob(repo, &cfg_desc.digest, cfg_desc.size)?
    };
    let cfg_what = format!("config {}", cfg_desc.digest);
    check_digest(&cfg_what, &cfg_desc.digest, &Digest::of(&config_bytes))?;
    check_size(&cfg_what, cfg_desc.size, config_bytes.len() as u64)?;
    let config = Config::parse(&cfg_what, &config_bytes)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    let platform = Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
        os_version: None,
    };
    if platform_desc.is_none() && options.platform.is_some() && !platform.satisfies(&wanted) {
        return Err(Error::WrongPlatform {
            reference: reference.to_string(),
            wanted: wanted.to_string(),
            found: platform.to_string(),
        });
    }
    progress.resolved(&name.to_string(), &digest, &platform.to_string());

    let reused = fetch_layers(
        store,
        &client,
        repo,
        &manifest.layers,
        &config.rootfs.diff_ids,
        options,
        progress,
    )?;

    // Everything verified: publish config and manifest, then the ref.
    store.put_blob(&cfg_desc.digest, &config_bytes)?;
    store.put_blob(&digest, &bytes)?;
    let mut descriptor = match manifest.to_oci() {
        Some(oci) => {
            let oci_bytes = serde_json::to_vec(&oci).map_err(|e| image::Error::Json {
                what: what.clone(),
                kind: "converted manifest",
                source: e,
            })?;
            let oci_digest = Digest::of(&oci_bytes);
            store.put_blob(&oci_digest, &oci_bytes)?;
            let mut d = Descriptor::new(
                image::media::OCI_MANIFEST,
                oci_digest,
                oci_bytes.len() as u64,
            );
            d.annotations.insert(
                image::ANNOTATION_SOURCE_DIGEST.to_owned(),
                digest.to_string(),
            );
            d
        }
        None => Descriptor::new(manifest.media_type(), digest.clone(), bytes.len() as u64),
    };
    descriptor.platform = Some(platform.clone());
    let name = name.to_string();
    store.set_ref(&name, &descriptor)?;
    Ok(Pulled {
        reference: name,
        digest,
        index_digest,
        platform: platform.to_string(),
        layers: manifest.layers.len(),
        layers_reused: reused,
        size: manifest.layers.iter().map(|l| l.size).sum(),
    })
}

fn check_digest(what: &str, expected: &Digest, found: &Digest) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            found: found.clone(),
        })
    }
}

fn check_size(what: &str, expected: u64, found: u64) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected,
            found,
        })
    }
}

/// Fetch every layer with up to `options.jobs` downloads at once. Returns how many were
/// already present.
fn fetch_layers(
    store: &Store,
    client: &Client,
    repo: &str,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    options: &Options,
    progress: &dyn Progress,
) -> Result<usize> {
    let rate = options.limit_rate.map(RateLimit::new);
    let next = AtomicUsize::new(0);
    let reused = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = options.jobs.clamp(1, 64).min(layers.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let (Some(desc), Some(diff_id)) = (layers.get(i), diff_ids.get(i)) else {
                        break;
                    };
                    let job = LayerJob {
                        store,
                        client,
                        repo,
                        desc,
                        diff_id,
                        rate: rate.as_ref(),
                        progress,
                        index: i,
                    };
                    match job.run() {
                        Ok(was_present) => {
                            if was_present {
                                reused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(reused.into_inner()),
    }
}

struct LayerJob<'a> {
    store: &'a Store,
    client: &'a Client,
    repo: &'a str,
    desc: &'a Descriptor,
    diff_id: &'a Digest,
    rate: Option<&'a RateLimit>,
    progress: &'a dyn Progress,
    index: usize,
}

impl LayerJob<'_> {
    /// Make sure the layer is in the store and matches its diff_id. Returns whether it
    /// already was.
    fn run(&self) -> Result<bool> {
        let digest = &self.desc.digest;
        // A resumed partial can hold bytes that do not belong (a server that changed the
        // blob, a disk error); then the whole blob is fetched once more from the start.
        for attempt in 0..2 {
            match self.store.begin_blob(digest)? {
                BlobSlot::Present(path) => {
                    let diff_id = match self.store.diff_id(digest) {
                        Some(d) => d,
                        None => {
                            let file = File::open(&path).map_err(|source| Error::Io {
                                path: path.clone(),
                                source,
                            })?;
                            let index =
                                layer::index_stream(digest.clone(), file).map_err(|source| {
                                    Error::Layer {
                                        digest: digest.clone(),
                                        source,
                                    }
                                })?;
                            self.store.save_layer_index(&index)?;
                            self.store.record_diff_id(digest, &index.diff_id)?;
                            index.diff_id
                        }
                    };
                    self.check_diff_id(&diff_id)?;
                    self.progress.layer_done(self.index, digest, true);
                    return Ok(true);
                }
                BlobSlot::Partial(mut partial) => {
                    let resumed = partial.len()? > 0;
                    let got = match self.download(&mut partial) {
                        Ok(got) => got,
                        Err(Retry::FromScratch(e)) if attempt == 0 => {
                            log::warn!("{e}; downloading {digest} again from the start");
                            partial.reset()?;
                            continue;
                        }
                        Err(Retry::FromScratch(e) | Retry::Fatal(e)) => return Err(e),
                    };
                    match partial.commit(got.digest, got.len, self.desc.size) {
                        Ok(_) => {}
                        Err(store::Error::DigestMismatch { .. }) if resumed && attempt == 0 => {
                            log::warn!(
                                "resumed download of {digest} did not verify; starting over"
                            );
                            continue;
                        }
                        Err(store::Error::DigestMismatch { expected, found }) => {
                            return Err(Error::DigestMismatch {
                                what: format!("layer {expected}"),
                                expected,
                                found,
                            });
                        }
                        Err(store::Error::SizeMismatch {
                            digest,
                            expected,
                            found,
                        }) => {
                            return Err(Error::SizeMismatch {
                                what: format!("layer {digest}"),
                                expected,
                                found,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.store.save_layer_index(&got.index)?;
                    self.store.record_diff_id(digest, &got.index.diff_id)?;
                    self.check_diff_id(&got.index.diff_id)?;
                    self.progress.layer_done(self.index, digest, false);
                    return Ok(false);
                }
            }
        }
        Err(Error::Download {
            digest: digest.clone(),
            source: io::Error::other("the blob did not verify after a second full download"),
        })
    }

    fn check_diff_id(&self, found: &Digest) -> Result<()> {
        if found == self.diff_id {
            Ok(())
        } else {
            Err(Error::DiffIdMismatch {
                layer: self.desc.digest.clone(),
                expected: self.diff_id.clone(),
                found: found.clone(),
            })
        }
    }

    /// Stream the rest of the blob into `partial`, decompressing and hashing as it goes.
    fn download(&self, partial: &mut store::Partial) -> Result<Downloaded, Retry> {
        let digest = &self.desc.digest;
        let size = self.desc.size;
        let mut have = partial.len()?;
        if have > size {
            partial.reset()?;
            have = 0;
        }
        self.progress.layer_start(self.index, digest, size, have);
        if have > 0 {
            log::info!("resuming {digest} at byte {have} of {size}");
        }
        let replay = File::open(partial.path()).map_err(|source| {
            Retry::Fatal(Error::Io {
                path: partial.path().to_owned(),
                source,
            })
        })?;
        let net = match self.client.blob(self.repo, digest, size, have, self.rate) {
            Ok(r) => r,
            Err(registry::Error::NotFound { .. }) if self.desc.is_foreign() => {
                let urls = if self.desc.urls.is_empty() {
                    String::new()
                } else {
                    format!(" (it names {})", self.desc.urls.join(", "))
                };
                return Err(Retry::Fatal(Error::Foreign {
                    digest: digest.clone(),
                    registry: self.client.registry().to_owned(),
                    urls,
                }));
            }
            Err(e) => return Err(Retry::Fatal(e.into())),
        };
        let source = Source {
            replay: replay.take(have),
            net,
            out: partial.file(),
            hasher: Hasher::new(),
            progress: self.progress,
            index: self.index,
            failure: None,
        };
        // Two stages on two threads: receiving, storing and hashing the compressed bytes, and
        // decompressing, hashing and indexing them. A bounded channel keeps memory fixed.
        let (result, source) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE_CHUNKS);
            let producer = scope.spawn(move || produce(source, tx));
            let result = layer::index_stream(digest.clone(), ChannelReader::new(rx));
            (result, producer.join())
        });
        let Ok(Source {
            hasher, failure, ..
        }) = source
        else {
            return Err(Retry::Fatal(Error::Download {
                digest: digest.clone(),
                source: io::Error::other("the download thread failed"),
            }));
        };
        match (result, failure) {
            (Ok(index), _) => {
                let len = hasher.len();
                Ok(Downloaded {
                    index,
                    digest: hasher.finish(),
                    len,
                })
            }
            // The network or the disk failed: keep the partial file for the next attempt.
            (Err(_), Some(source)) => Err(Retry::Fatal(Error::Download {
                digest: digest.clone(),
                source,
            })),
            (Err(source), None) => {
                let e = Error::Layer {
                    digest: digest.clone(),
                    source,
                };
                if have > 0 {
                    Err(Retry::FromScratch(e))
                } else {
                    // Bytes that do not decompress are no use for a resume.
                    let _ = partial.reset();
                    Err(Retry::Fatal(e))
                }
            }
        }
    }
}

struct Downloaded {
    /// The layer's index, built in the same pass; its `diff_id` is still to be checked.
    index: layer::index::LayerIndex,
    digest: Digest,
    len: u64,
}

enum Retry {
    FromScratch(Error),
    Fatal(Error),
}

impl From<store::Error> for Retry {
    fn from(e: store::Error) -> Self {
        Retry::Fatal(e.into())
    }
}

/// The compressed bytes of a layer: first those already in the partial file (hashed only),
/// then the network's (hashed and appended to the partial file).
struct Source<'a> {
    replay: io::Take<File>,
    net: BlobReader<'a>,
    out: &'a File,
    hasher: Hasher,
    progress: &'a dyn Progress,
    index: usize,
    /// A network or disk failure, kept so it is reported as such, not as corrupt data.
    failure: Option<io::Error>,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.replay.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let n = self.net.read(buf).map_err(|e| self.keep(e))?;
        self.out.write_all(&buf[..n]).map_err(|e| self.keep(e))?;
        self.hasher.update(&buf[..n]);
        self.progress.layer_bytes(self.index, n as u64);
        Ok(n)
    }
}

/// Chunks in flight between the download and the decompression stage.
const PIPELINE_CHUNKS: usize = 16;
/// Size of one chunk (below glibc's default mmap threshold, so chunks recycle cheaply).
const PIPELINE_CHUNK: usize = 120 << 10;

/// Read `source` to its end into `tx`; a read error is sent along, then reading stops. Stops
/// early when the receiver is gone (decompression failed).
fn produce(
    mut source: Source<'_>,
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> Source<'_> {
    loop {
        let mut buf = vec![0u8; PIPELINE_CHUNK];
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                break;
            }
        }
    }
    source
}

/// The decompression stage's view of the chunks the download stage sends.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the sender finished
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Source<'_> {
    /// Remember `e` and hand the decompressor an equivalent error.
    fn keep(&mut self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.failure = Some(e);
        copy
    }
}
