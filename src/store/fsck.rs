//! `fsck`: re-verify everything in the store, and with `repair` remove what is wrong so that
//! the next pull fetches it again.
//!
//! Checked: every blob hashes to its name; every layer index decodes (version, checksum) and
//! names the blob it is filed under, which must exist; every recorded diff_id parses and agrees
//! with the index; `index.json` parses, and every image it names has its manifest, config and
//! layers, the manifest and config parse. A partial download in `tmp/` is not a problem (the
//! next pull resumes it); other leftovers there are. Repair runs under the store's exclusive
//! lock, so no pull or gc is writing meanwhile.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Result, Store, io_err};
use crate::digest::{Digest, Hasher};

/// Read size while hashing blobs.
const HASH_BUFFER: usize = 1 << 20;

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What is wrong, for a person.
    pub what: String,
    /// The file or ref concerned.
    pub path: String,
    /// Whether `--repair` removed it.
    pub repaired: bool,
}

/// What fsck saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FsckReport {
    pub blobs: u64,
    pub bytes_hashed: u64,
    pub indexes: u64,
    pub images: u64,
    /// Partial downloads that the next pull resumes.
    pub resumable: u64,
    /// Files an interrupted command left (temporary files of atomic writes, spools): garbage,
    /// not damage; `--repair` and `gc` remove them.
    pub leftovers: Vec<String>,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// Problems that are still there.
    pub fn remaining(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }
}

fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let len = h.len();
    Ok((h.finish(), len))
}

/// The temporary name `write_atomic` builds a file under before renaming it into place.
fn is_atomic_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

impl Store {
    /// Check the store; with `repair`, delete what is wrong.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let _lock = if repair {
            self.lock_exclusive()?
        } else {
            self.lock_shared()?
        };
        let mut report = FsckReport::default();
        let problem = |report: &mut FsckReport, what: String, path: &Path, remove: bool| {
            let repaired = repair && remove && fs::remove_file(path).is_ok();
            report.problems.push(Problem {
                what,
                path: path.display().to_string(),
                repaired,
            });
        };

        // Blobs.
        let blobs = self.root.join("blobs/sha256");
        let mut names: Vec<PathBuf> = match fs::read_dir(&blobs) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &blobs)(e)),
        };
        names.sort();
        let leftover = |report: &mut FsckReport, path: &Path| {
            if repair {
                let _ = fs::remove_file(path);
            }
            report.leftovers.push(path.display().to_string());
        };
        for path in &names {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_atomic_temp(name) {
                leftover(&mut report, path);
                continue;
            }
            let Ok(expected) = format!("sha256:{name}").parse::<Digest>() else {
                problem(
                    &mut report,
                    "a file under blobs/ whose name is not a digest".into(),
                    path,
                    false,
                );
                continue;
            };
            report.blobs += 1;
            match hash_file(path) {
                Ok((found, len)) => {
                    report.bytes_hashed += len;
                    if found != expected {
                        problem(
                            &mut report,
                            format!("blob hashes to {found}, not to its name"),
                            path,
                            true,
                        );
                    }
                }
                Err(e) => problem(&mut report, format!("blob cannot be read: {e}"), path, true),
            }
        }

        // Layer indexes.
        let indexes = self.private("indexes");
        for entry in fs::read_dir(&indexes).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_atomic_temp(name) {
                leftover(&mut report, &path);
                continue;
            }
            let Some(hex) = name.strip_suffix(".idx") else {
                continue;
            };
            report.indexes += 1;
            let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
                problem(
                    &mut report,
                    "an index named after no digest".into(),
                    &path,
                    true,
                );
                continue;
            };
            if !self.blob_path(&digest).is_file() {
                problem(
                    &mut report,
                    "the index of a blob that is not in the store".into(),
                    &path,
                    true,
                );
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    problem(&mut report, format!("cannot read: {e}"), &path, true);
                    continue;
                }
            };
            match crate::layer::index::LayerIndex::decode(&bytes) {
                Ok(index) if index.blob != digest => problem(
                    &mut report,
                    format!("the index describes {}, not its name", index.blob),
                    &path,
                    true,
                ),
                Ok(index) => {
                    if let Some(recorded) = self.diff_id(&digest)
                        && recorded != index.diff_id
                    {
                        let record = self.private("diffids").join(digest.hex());
                        problem(
                            &mut report,
                            format!(
                                "recorded diff_id {recorded} disagrees with the index's {}",
                                index.diff_id
                            ),
                            &record,
                            true,
                        );
                    }
                }
                Err(e) => problem(&mut report, format!("damaged index: {e}"), &path, true),
            }
        }

        // diff_id records.
        let diffids = self.private("diffids");
        for entry in fs::read_dir(&diffids).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_atomic_temp(name) {
                leftover(&mut report, &path);
                continue;
            }
            let digest = format!("sha256:{name}").parse::<Digest>().ok();
            let parses = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<Digest>().ok())
                .is_some();
            match digest {
                None => problem(
                    &mut report,
                    "a record named after no digest".into(),
                    &path,
                    true,
                ),
                Some(_) if !parses => problem(
                    &mut report,
                    "a diff_id record that is not a digest".into(),
                    &path,
                    true,
                ),
                Some(d) if !self.blob_path(&d).is_file() => problem(
                    &mut report,
                    "the diff_id of a blob that is not in the store".into(),
                    &path,
                    true,
                ),
                Some(_) => {}
            }
        }

        // Images.
        match self.refs() {
            Err(e) => problem(
                &mut report,
                format!("{e}"),
                &self.root.join("index.json"),
                false,
            ),
            Ok(refs) => {
                for r in refs {
                    report.images += 1;
                    let missing: Option<String> = match self.image(&r.descriptor) {
                        Err(e) => Some(e.to_string()),
                        Ok(img) => img
                            .manifest
                            .layers
                            .iter()
                            .chain(std::iter::once(&img.manifest.config))
                            .find(|d| !self.blob_path(&d.digest).is_file())
                            .map(|d| format!("blob {} is missing", d.digest)),
                    };
                    if let Some(why) = missing {
                        let repaired = repair && self.remove_ref(&r.name).is_ok();
                        report.problems.push(Problem {
                            what: format!("image {}: {why}; pull it again", r.name),
                            path: r.name.clone(),
                            repaired,
                        });
                    }
                }
            }
        }

        // Temporary files: partial downloads resume; anything else is a leftover.
        let tmp = self.private("tmp");
        for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".partial") {
                report.resumable += 1;
            } else if name.ends_with(".lock") {
                // Held by a running pull, or free: harmless either way; gc removes them.
            } else {
                leftover(&mut report, &path);
            }
        }
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if is_atomic_temp(name.to_str().unwrap_or("")) {
                leftover(&mut report, &entry.path());
            }
        }
        Ok(report)
    }
}
