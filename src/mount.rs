//! Opening a stored image for serving: each layer's index (loaded, or built once from the blob
//! and kept), its content stream, and the merged tree. Shared by `mount` and `unpack`.

use std::sync::Arc;

use crate::fs::{Image, Layer};
use crate::image::Descriptor;
use crate::layer::{self, SpanCache};
use crate::store::{self, Store};
use crate::tree::{self, Tree};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("layer {digest}: {source}")]
    Layer {
        digest: crate::digest::Digest,
        #[source]
        source: layer::Error,
    },
    #[error(
        "layer {digest} decompresses to {found}, but the image config says {expected}; \
         the store is damaged: pull the image again"
    )]
    DiffId {
        digest: crate::digest::Digest,
        expected: crate::digest::Digest,
        found: crate::digest::Digest,
    },
    #[error(transparent)]
    Tree(#[from] tree::Error),
    #[error("lower directory {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: layer::dir::Error,
    },
}

/// Load everything needed to serve the image `descriptor` names.
pub fn open_image(
    store: &Store,
    descriptor: &Descriptor,
    cache: Arc<SpanCache>,
) -> Result<Image, Error> {
    open_layers(Some((store, descriptor)), &[], cache)
}

/// Load everything needed to serve the layers of the image `descriptor` names (if any) with
/// the directories `lowerdirs` above them, the first directory on top (overlayfs' order).
pub fn open_layers(
    image: Option<(&Store, &Descriptor)>,
    lowerdirs: &[std::path::PathBuf],
    cache: Arc<SpanCache>,
) -> Result<Image, Error> {
    let (mut layers, mut entry_lists) = match image {
        Some((store, d)) => open_blobs(store, d, cache)?,
        None => (Vec::new(), Vec::new()),
    };
    for dir in lowerdirs.iter().rev() {
        let scanned = layer::dir::scan(dir).map_err(|source| Error::Dir {
            path: dir.clone(),
            source,
        })?;
        entry_lists.push(scanned.entries);
        layers.push(Box::new(scanned.stream) as Box<dyn layer::reader::ReadAt>);
    }
    let tree = {
        let slices: Vec<&[layer::index::Entry]> = entry_lists.iter().map(Vec::as_slice).collect();
        Tree::build(&slices)?
    };
    // The tree holds every name now: the entries' paths are not needed any more (3 MiB on a
    // layer of 100,000 files).
    for entry in entry_lists.iter_mut().flatten() {
        entry.path = Vec::new();
    }
    let layers = layers
        .into_iter()
        .zip(entry_lists)
        .map(|(stream, entries)| Layer { entries, stream })
        .collect();
    Ok(Image { tree, layers })
}

/// The streams and entries of an image's layers, bottom first.
#[allow(clippy::type_complexity)]
fn open_blobs(
    store: &Store,
    descriptor: &Descriptor,
    cache: Arc<SpanCache>,
) -> Result<
    (
        Vec<Box<dyn layer::reader::ReadAt>>,
        Vec<Vec<layer::index::Entry>>,
    ),
    Error,
> {
    let stored = store.image(descriptor)?;
    let mut indexes = Vec::with_capacity(stored.manifest.layers.len());
    for (i, desc) in stored.manifest.layers.iter().enumerate() {
        let index = match store.layer_index(&desc.digest) {
            Some(index) => index,
            None => {
                log::info!("indexing layer {} (done once)", desc.digest);
                let file = std::fs::File::open(store.blob_path(&desc.digest)).map_err(|e| {
                    store::Error::Io {
                        action: "open",
                        path: store.blob_path(&desc.digest),
                        source: e,
                    }
                })?;
                let index = layer::index_stream(desc.digest.clone(), file).map_err(|source| {
                    Error::Layer {
                        digest: desc.digest.clone(),
                        source,
                    }
                })?;
                store.save_layer_index(&index)?;
                index
            }
        };
        if let Some(expected) = stored.config.rootfs.diff_ids.get(i)
            && expected != &index.diff_id
        {
            return Err(Error::DiffId {
                digest: desc.digest.clone(),
                expected: expected.clone(),
                found: index.diff_id.clone(),
            });
        }
        indexes.push(index);
    }
    let mut streams = Vec::with_capacity(indexes.len());
    let mut entries = Vec::with_capacity(indexes.len());
    for (id, index) in indexes.into_iter().enumerate() {
        let stream =
            layer::open_stream(store, &index, id as u64, cache.clone()).map_err(|source| {
                Error::Layer {
                    digest: index.blob.clone(),
                    source,
                }
            })?;
        streams.push(stream);
        entries.push(index.entries);
    }
    Ok((streams, entries))
}
