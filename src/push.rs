//! `push`: an image from the store to a registry.
//!
//! Blobs go first (layers in parallel, then the config), each skipped if the repository has it
//! (HEAD), else linked from another repository of the same registry that should have it (a
//! cross-repository mount: repositories of other images in the store from that registry, and
//! the one the image came from), else uploaded: in one PUT up to the chunk size, in PATCH
//! chunks above it. The manifest goes last, byte for byte as stored, so its digest is kept.
//! A transient failure restarts that blob's upload after a backoff.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::digest::Digest;
use crate::image::Descriptor;
use crate::reference::Reference;
use crate::registry::{self, Client, Mounted};
use crate::store::{self, ImageRef, Store};

/// Tries per blob before the push gives up.
const MAX_ATTEMPTS: u32 = 4;
/// Largest manifest read from the store.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// How to push.
#[derive(Clone, Debug)]
pub struct Options {
    pub jobs: usize,
    /// Blobs larger than this go up in chunks of this size.
    pub chunk_size: u64,
    pub registry: registry::Options,
}

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Exists,
    Mounted,
    Uploaded,
}

/// Progress reports, one line per blob.
pub trait Progress: Sync {
    fn blob(&self, digest: &Digest, size: u64, outcome: Outcome);
}

/// The pushed image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pushed {
    pub reference: String,
    pub digest: Digest,
    pub blobs: Vec<(Digest, Outcome)>,
}

/// Push the stored image `image` to `dest`.
pub fn push(
    store: &Store,
    image: &ImageRef,
    dest: &Reference,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Pushed, Error> {
    let _lock = store.lock_shared()?;
    let stored = store.image(&image.descriptor)?;
    let client = Client::new(dest, &opts.registry)?;
    let repo = dest.repository();
    let sources = mount_sources(store, image, dest);
    let mut blobs: Vec<&Descriptor> = stored.manifest.layers.iter().collect();
    blobs.push(&stored.manifest.config);

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<Outcome, registry::Error>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, blobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(desc) = blobs.get(i) else { break };
                    let r = push_blob(&client, store, repo, desc, &sources, opts.chunk_size);
                    if let Ok(o) = &r {
                        progress.blob(&desc.digest, desc.size, *o);
                    }
                    let failed = r.is_err();
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                    if failed {
                        // Let the other workers stop after their current blob.
                        next.store(blobs.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut outcomes = Vec::new();
    for (i, r) in results {
        outcomes.push((blobs[i].digest.clone(), r?));
    }

    let bytes = store.read_blob(&image.descriptor.digest, MAX_MANIFEST)?;
    let media_type = image.descriptor.media_type.clone();
    let digest = image.descriptor.digest.clone();
    let tag = match (dest.tag(), dest.digest()) {
        (Some(t), _) => t.to_owned(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "latest".to_owned(),
    };
    client.put_manifest(repo, &tag, &media_type, &bytes)?;
    if tag != digest.to_string() {
        log::info!("pushed {repo}:{tag} ({digest})");
    }
    Ok(Pushed {
        reference: dest.to_string(),
        digest,
        blobs: outcomes,
    })
}

/// Repositories of the destination's registry that may hold the image's blobs.
fn mount_sources(store: &Store, image: &ImageRef, dest: &Reference) -> Vec<String> {
    let mut out = Vec::new();
    let mut consider = |name: &str| {
        if let Ok(r) = name.parse::<Reference>()
            && r.registry() == dest.registry()
            && r.repository() != dest.repository()
            && !out.iter().any(|o| o == r.repository())
        {
            out.push(r.repository().to_owned());
        }
    };
    consider(&image.name);
    for r in store.refs().unwrap_or_default() {
        consider(&r.name);
    }
    out
}

fn push_blob(
    client: &Client,
    store: &Store,
    repo: &str,
    desc: &Descriptor,
    sources: &[String],
    chunk: u64,
) -> Result<Outcome, registry::Error> {
    let mut attempt = 0;
    loop {
        match push_blob_once(client, store, repo, desc, sources, chunk) {
            Err(e) if registry::is_transient(&e) && attempt + 1 < MAX_ATTEMPTS => {
                let delay = registry::backoff(attempt);
                log::warn!(
                    "{e}; retrying blob {} in {:.1}s",
                    desc.digest,
                    delay.as_secs_f32()
                );
                std::thread::sleep(delay);
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn push_blob_once(
    client: &Client,
    store: &Store,
    repo: &str,
    desc: &Descriptor,
    sources: &[String],
    chunk: u64,
) -> Result<Outcome, registry::Error> {
    if client.blob_exists(repo, &desc.digest)? {
        log::info!("blob {} exists in {repo}", desc.digest);
        return Ok(Outcome::Exists);
    }
    let mut location = None;
    for from in sources {
        match client.mount_blob(repo, &desc.digest, from) {
            Ok(Mounted::Done) => {
                log::info!("blob {} mounted from {from}", desc.digest);
                return Ok(Outcome::Mounted);
            }
            Ok(Mounted::Upload(loc)) => {
                location = Some(loc);
                break;
            }
            Err(e) => log::debug!("mount of {} from {from} refused: {e}", desc.digest),
        }
    }
    let location = match location {
        Some(l) => l,
        None => client.start_upload(repo)?,
    };
    let path = store.blob_path(&desc.digest);
    client.upload_blob(repo, location, &desc.digest, &path, desc.size, chunk.max(1))?;
    log::info!("blob {} uploaded ({} bytes)", desc.digest, desc.size);
    Ok(Outcome::Uploaded)
}
