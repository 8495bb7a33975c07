//! Reading an image back out of the store: its manifest and config, resolved through an index
//! when a ref names one (as `skopeo copy --all` writes them).

use super::{Error, Result, Store};
use crate::digest::Digest;
use crate::image::{Config, Descriptor, Manifest, ManifestKind, Platform};

/// Largest manifest or config read back (they were size-checked when they came in).
const MAX_DOCUMENT_BYTES: u64 = 32 << 20;

/// An image as stored: the manifest a ref resolves to and its config.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest: Manifest,
    pub config: Config,
}

impl StoredImage {
    /// Manifest, config and layers: what the image occupies in the store.
    pub fn size(&self) -> u64 {
        self.manifest_size
            + self.manifest.config.size
            + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }

    pub fn platform(&self) -> Platform {
        Platform {
            os: self.config.os.clone(),
            architecture: self.config.architecture.clone(),
            variant: self.config.variant.clone(),
            os_version: None,
        }
    }
}

impl Store {
    /// Load the image `descriptor` points at; an index resolves to the host's platform.
    pub fn image(&self, descriptor: &Descriptor) -> Result<StoredImage> {
        let mut digest = descriptor.digest.clone();
        for _ in 0..4 {
            let bytes = self.read_blob(&digest, MAX_DOCUMENT_BYTES)?;
            let parsed = ManifestKind::parse(&digest.to_string(), None, &bytes)
                .map_err(|e| Error::Corrupt(format!("manifest {digest}: {e}")))?;
            match parsed {
                ManifestKind::Image(manifest) => {
                    let config_bytes =
                        self.read_blob(&manifest.config.digest, MAX_DOCUMENT_BYTES)?;
                    let config = Config::parse(&manifest.config.digest.to_string(), &config_bytes)
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    return Ok(StoredImage {
                        manifest_digest: digest,
                        manifest_size: bytes.len() as u64,
                        manifest,
                        config,
                    });
                }
                ManifestKind::Index(index) => {
                    let chosen = index
                        .select(&Platform::host())
                        .ok()
                        .or_else(|| index.manifests.first())
                        .ok_or_else(|| Error::Corrupt(format!("index {digest} is empty")))?;
                    digest = chosen.digest.clone();
                }
            }
        }
        Err(Error::Corrupt(format!(
            "{} nests indexes too deeply",
            descriptor.digest
        )))
    }
}
