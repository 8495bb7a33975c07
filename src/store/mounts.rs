//! Records of writable mounts: which image an upper directory was mounted over, so that
//! `layerfs commit MOUNTPOINT|UPPER` knows the base image without being told.
//!
//! One small JSON file per upper directory under `layerfs/mounts/`, named after the digest of
//! the upper directory's path, rewritten atomically at each mount. A record outlives the mount:
//! an upper directory can be committed after it was unmounted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, Store, io_err};
use crate::digest::Digest;

/// A writable mount, as recorded when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub mountpoint: PathBuf,
    pub upper: PathBuf,
    /// The image's reference in the store.
    pub image: String,
    /// The manifest digest it named then.
    pub manifest: Digest,
}

/// Largest record read back; a real one is a few hundred bytes.
const MAX_RECORD: u64 = 64 << 10;

impl Store {
    fn mounts_dir(&self) -> PathBuf {
        self.private("mounts")
    }

    /// Remember that `record.upper` is mounted over `record.image`.
    pub fn record_mount(&self, record: &MountRecord) -> Result<()> {
        let dir = self.mounts_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let key = Digest::of(record.upper.as_os_str().as_encoded_bytes());
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        self.write_atomic(&dir.join(format!("{}.json", key.hex())), &bytes)
    }

    /// The record whose mount point or upper directory is `path` (already canonical).
    pub fn find_mount(&self, path: &Path) -> Option<MountRecord> {
        let entries = std::fs::read_dir(self.mounts_dir()).ok()?;
        let mut found: Vec<(std::time::SystemTime, MountRecord)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                if meta.len() > MAX_RECORD {
                    return None;
                }
                let bytes = std::fs::read(e.path()).ok()?;
                let record: MountRecord = serde_json::from_slice(&bytes).ok()?;
                (record.mountpoint == path || record.upper == path)
                    .then(|| (meta.modified().unwrap_or(std::time::UNIX_EPOCH), record))
            })
            .collect();
        // The newest mount wins when a mount point served several upper directories.
        found.sort_by_key(|(t, _)| *t);
        found.pop().map(|(_, r)| r)
    }
}
