//! Large blobs arrive through a [`Partial`]: a file in `layerfs/tmp/` named by the digest it
//! must end up with, guarded by a lock so that two processes never write the same blob at once.
//! A partial file survives an interrupted download, so the next attempt resumes where it ended.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

use super::{Error, Result, Store, io_err, sync_dir};
use crate::digest::Digest;

/// What [`Store::begin_blob`] found.
pub enum BlobSlot {
    /// The blob is already in the store (verified when it was added).
    Present(PathBuf),
    /// The caller holds the only right to write it.
    Partial(Partial),
}

/// A blob being written. Holds the per-digest lock until committed or dropped.
pub struct Partial {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    digest: Digest,
    lock_path: PathBuf,
    _lock: File,
}

impl Store {
    /// Claim the right to write blob `digest`, waiting while another process writes it.
    /// Returns [`BlobSlot::Present`] if it is (or has meanwhile become) present.
    pub fn begin_blob(&self, digest: &Digest) -> Result<BlobSlot> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(BlobSlot::Present(final_path));
        }
        let tmp = self.private("tmp");
        let lock_path = tmp.join(format!("{}.lock", digest.hex()));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        if lock.try_lock().is_err() {
            log::info!("waiting for another process to finish downloading {digest}");
            lock.lock().map_err(io_err("lock", &lock_path))?;
        }
        if final_path.is_file() {
            return Ok(BlobSlot::Present(final_path));
        }
        let path = tmp.join(format!("{}.partial", digest.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Ok(BlobSlot::Partial(Partial {
            file,
            path,
            final_path,
            digest: digest.clone(),
            lock_path,
            _lock: lock,
        }))
    }
}

impl Partial {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes already written by an earlier attempt.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(io_err("stat", &self.path))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Throw away what was written (it cannot be the blob) so the next attempt starts afresh.
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(io_err("truncate", &self.path))
    }

    /// Publish the blob: `found` is the digest of every byte written, `size` their count.
    /// On a mismatch the partial file is deleted, so a bad download is never resumed.
    pub fn commit(self, found: Digest, size: u64, expected_size: u64) -> Result<PathBuf> {
        if found != self.digest || size != expected_size {
            let _ = fs::remove_file(&self.path);
            return Err(if size != expected_size {
                Error::SizeMismatch {
                    digest: self.digest,
                    expected: expected_size,
                    found: size,
                }
            } else {
                Error::DigestMismatch {
                    expected: self.digest,
                    found,
                }
            });
        }
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        fs::rename(&self.path, &self.final_path)
            .map_err(io_err("rename into place", &self.final_path))?;
        if let Some(dir) = self.final_path.parent() {
            sync_dir(dir)?;
        }
        // Safe while still holding the lock: whoever waits on this file finds the blob
        // present once it gets the lock, and later comers find it before taking any lock.
        let _ = fs::remove_file(&self.lock_path);
        Ok(self.final_path)
    }

    /// Give up on this blob and delete what was written.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}
