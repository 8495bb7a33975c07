//! Garbage collection: delete every blob that no ref reaches, and layerfs' own records for
//! blobs that are gone. Runs under the exclusive store lock, so no pull is half-way through.

use std::collections::HashSet;
use std::fs;

use super::{Result, Store, io_err};
use crate::digest::Digest;
use crate::image::ManifestKind;

/// Largest manifest or index gc will parse while marking (the distribution spec's 4 MiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What a gc run removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: u64,
    /// Bytes of the blobs removed.
    pub bytes_freed: u64,
    /// Bytes of layerfs' own files removed with them: indexes, caches, stale downloads.
    pub private_bytes_freed: u64,
}

impl Store {
    /// Every blob reachable from `index.json`.
    pub fn reachable(&self) -> Result<HashSet<Digest>> {
        let mut seen = HashSet::new();
        let mut todo: Vec<Digest> = Vec::new();
        for d in self.descriptors()? {
            // A converted manifest keeps the registry's original beside it.
            if let Some(Ok(source)) = d
                .annotations
                .get(crate::image::ANNOTATION_SOURCE_DIGEST)
                .map(|s| s.parse::<Digest>())
            {
                todo.push(source);
            }
            todo.push(d.digest);
        }
        while let Some(digest) = todo.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&digest, MAX_MANIFEST_BYTES) else {
                continue;
            };
            match ManifestKind::parse(&digest.to_string(), None, &bytes) {
                Ok(ManifestKind::Image(m)) => {
                    seen.insert(m.config.digest);
                    seen.extend(m.layers.into_iter().map(|l| l.digest));
                }
                Ok(ManifestKind::Index(i)) => {
                    todo.extend(i.manifests.into_iter().map(|d| d.digest))
                }
                Err(_) => {}
            }
        }
        Ok(seen)
    }

    /// Delete unreachable blobs, stale downloads and orphaned records.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let reachable = self.reachable()?;
        let mut report = GcReport::default();

        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("read", &blobs))? {
            let entry = entry.map_err(io_err("read", &blobs))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .map(|d| reachable.contains(&d))
                .unwrap_or(false);
            if keep {
                continue;
            }
            // The blob's own records go first: a gc killed half-way leaves a blob without its
            // index (rebuilt when needed), never an index or record of a missing blob.
            for record in [
                self.private("indexes").join(format!("{name}.idx")),
                self.private("diffids").join(name),
            ] {
                if let Ok(meta) = fs::metadata(&record)
                    && fs::remove_file(&record).is_ok()
                {
                    report.private_bytes_freed += meta.len();
                }
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }

        // Records about blobs that no longer exist.
        let diffids = self.private("diffids");
        for entry in fs::read_dir(&diffids).map_err(io_err("read", &diffids))? {
            let entry = entry.map_err(io_err("read", &diffids))?;
            if !blobs.join(entry.file_name()).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }

        // Indexes and caches of blobs that are gone (named <hex>.idx / <hex>.tar).
        for dir in [self.private("indexes"), self.private("cache")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let hex = name
                    .to_str()
                    .and_then(|n| n.split('.').next())
                    .unwrap_or("");
                if !blobs.join(hex).is_file() {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    if fs::remove_file(entry.path()).is_ok() {
                        report.private_bytes_freed += size;
                    }
                }
            }
        }

        // Downloads that no process is working on (each holds its .lock while it runs).
        let tmp = self.private("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
            let entry = entry.map_err(io_err("read", &tmp))?;
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(&path).is_ok() {
                report.private_bytes_freed += size;
            }
        }
        Ok(report)
    }
}
