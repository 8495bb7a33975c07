//! The content-addressed store: an OCI image layout that layerfs also keeps its own data beside.
//!
//! ```text
//! STORE/
//!   oci-layout               {"imageLayoutVersion":"1.0.0"}
//!   index.json               one descriptor per image, annotated with its ref name
//!   blobs/sha256/<hex>       manifests, configs, layers: exactly the bytes that hash to <hex>
//!   layerfs/                 ours, never read by other OCI tools
//!     lock                   shared by writers (pull, load), exclusive for gc
//!     index.lock             exclusive while index.json is rewritten
//!     tmp/<hex>.partial      a download in progress (resumable), guarded by tmp/<hex>.lock
//!     diffids/<hex>          the verified uncompressed digest of layer blob <hex>
//!     indexes/<hex>.idx      the layer index of blob <hex> (entries, checkpoints)
//!     cache/<hex>.tar        decompressed single-frame zstd layers, on first read
//!     logs/                  logs of background mounts
//!     mounts/<hex>.json      the image a writable mount's upper directory lies over
//! ```
//!
//! Invariants: a file appears under `blobs/` only after its bytes were hashed, compared with
//! its name, fsynced and renamed into place; refs in `index.json` are written last, so a crash
//! leaves at worst unreferenced blobs that `gc` removes. Other OCI tools (skopeo, umoci) read
//! the layout directly.

mod blob;
mod fsck;
mod gc;
mod image;
mod mounts;
mod refs;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use blob::{BlobSlot, Partial};
pub use fsck::{FsckReport, Problem};
pub use gc::GcReport;
pub use image::StoredImage;
pub use mounts::MountRecord;
pub use refs::ImageRef;

use crate::digest::Digest;

/// Name of layerfs' private directory at the top of the store.
const PRIVATE_DIR: &str = "layerfs";
const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {expected} failed verification: its bytes hash to {found}")]
    DigestMismatch { expected: Digest, found: Digest },
    #[error("blob {digest} is {found} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        found: u64,
    },
    #[error("{path} is not a valid OCI image index: {source}; repair or remove it")]
    CorruptIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is not an OCI image layout ({why}); choose another --store or remove it")]
    NotALayout { path: PathBuf, why: String },
    #[error("the store is damaged: {0}; run `layerfs pull` again for the image")]
    Corrupt(String),
    #[error("{0} matches several images; give more of the digest or a reference")]
    Ambiguous(String),
    #[error("no image named {0} in the store (see `layerfs images`)")]
    NoSuchImage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// An open store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held lock on the store; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// The store used when `--store` is not given: `$LAYERFS_STORE`, else `/var/lib/layerfs`
    /// for root, else `$XDG_DATA_HOME/layerfs` (or `~/.local/share/layerfs`).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("LAYERFS_STORE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/layerfs");
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return PathBuf::from(p).join("layerfs");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/layerfs")
    }

    /// Open the store at `root`, creating an empty layout if the directory is new or empty.
    pub fn open(root: &Path) -> Result<Store> {
        let private = root.join(PRIVATE_DIR);
        fs::create_dir_all(&private).map_err(io_err("create store", root))?;
        // Absolute, so that messages and background mounts name it unambiguously.
        let root = &fs::canonicalize(root).map_err(io_err("resolve", root))?;
        let store = Store {
            root: root.to_owned(),
        };
        // First-time setup by concurrent commands is serialised, so none sees another's
        // half-made layout.
        let _setup = store.lock_file("init.lock", true)?;
        let layout = root.join("oci-layout");
        match fs::read(&layout) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::NotALayout {
                        path: root.to_owned(),
                        why: format!("oci-layout is not JSON: {e}"),
                    })?;
                if v.get("imageLayoutVersion")
                    .and_then(|v| v.as_str())
                    .is_none()
                {
                    return Err(Error::NotALayout {
                        path: root.to_owned(),
                        why: "oci-layout has no imageLayoutVersion".into(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A first setup killed half-way leaves at most our own directory and the
                // temporary file of the oci-layout write: both mean "new store".
                let non_empty = fs::read_dir(root)
                    .map_err(io_err("read", root))?
                    .filter_map(|e| e.ok())
                    .any(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        let setup_temp = name.starts_with(".oci-layout.") && name.ends_with(".tmp");
                        if setup_temp {
                            let _ = fs::remove_file(e.path());
                        }
                        name != PRIVATE_DIR && !setup_temp
                    });
                if non_empty && !root.join("blobs").is_dir() {
                    return Err(Error::NotALayout {
                        path: root.to_owned(),
                        why: "the directory is not empty and has no oci-layout file".into(),
                    });
                }
                store.write_atomic(&layout, OCI_LAYOUT.as_bytes())?;
            }
            Err(e) => return Err(io_err("read", &layout)(e)),
        }
        for dir in [
            store.root.join("blobs/sha256"),
            store.private("tmp"),
            store.private("diffids"),
            store.private("indexes"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        if !store.index_path().exists() {
            store.write_index(&refs::LayoutIndex::default())?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Read a whole blob that is known to be small (manifests, configs), refusing anything
    /// larger than `limit`.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        use std::io::Read;
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if bytes.len() as u64 > limit {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: limit,
                found: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    pub(crate) fn private(&self, name: &str) -> PathBuf {
        self.root.join(PRIVATE_DIR).join(name)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Shared lock held by anything that adds blobs and refs; `gc` takes it exclusively so it
    /// never deletes a blob that a running pull is about to reference.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock_file("lock", false)
    }

    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock_file("lock", true)
    }

    fn lock_file(&self, name: &str, exclusive: bool) -> Result<StoreLock> {
        let path = self.private(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }

    /// Write `bytes` to `path` via a temp file in the same directory, fsync, rename, fsync dir.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(&self.root);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        sync_dir(dir)
    }

    /// Add a small blob whose bytes are in memory, after checking them against `expected`.
    pub fn put_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<()> {
        let found = Digest::of(bytes);
        if &found != expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        let path = self.blob_path(expected);
        if path.is_file() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Move a file that the caller wrote and hashed to `digest` into the store. It must be on
    /// the store's filesystem (a file under `layerfs/tmp/`).
    pub fn adopt_blob(&self, digest: &Digest, path: &Path) -> Result<()> {
        let target = self.blob_path(digest);
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync", path))?;
        fs::rename(path, &target).map_err(io_err("rename into place", &target))?;
        sync_dir(target.parent().unwrap_or(&self.root))
    }

    /// The uncompressed digest recorded when layer blob `digest` was verified, if any.
    pub fn diff_id(&self, digest: &Digest) -> Option<Digest> {
        let text = fs::read_to_string(self.private("diffids").join(digest.hex())).ok()?;
        text.trim().parse().ok()
    }

    /// The index of layer blob `digest`, if one was built and is intact. A stale, foreign or
    /// corrupt index is reported and ignored, so the caller rebuilds it.
    pub fn layer_index(&self, digest: &Digest) -> Option<crate::layer::index::LayerIndex> {
        let path = self
            .private("indexes")
            .join(format!("{}.idx", digest.hex()));
        let mut file = File::open(&path).ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        match crate::layer::index::LayerIndex::decode_file(&bytes, file) {
            Ok(index) if &index.blob == digest => Some(index),
            Ok(_) => {
                log::warn!("{} belongs to another blob; rebuilding it", path.display());
                None
            }
            Err(e) => {
                log::warn!("{}: {e}; rebuilding it", path.display());
                None
            }
        }
    }

    pub fn save_layer_index(&self, index: &crate::layer::index::LayerIndex) -> Result<()> {
        let path = self
            .private("indexes")
            .join(format!("{}.idx", index.blob.hex()));
        let bytes = index
            .encode()
            .map_err(io_err("read a window of the layer index", &path))?;
        self.write_atomic(&path, &bytes)
    }

    /// Where a decompressed copy of layer blob `digest` may be cached.
    pub fn cache_path(&self, digest: &Digest) -> PathBuf {
        self.private("cache").join(format!("{}.tar", digest.hex()))
    }

    /// Record that layer blob `digest` decompresses to content with digest `diff_id`.
    pub fn record_diff_id(&self, digest: &Digest, diff_id: &Digest) -> Result<()> {
        let path = self.private("diffids").join(digest.hex());
        self.write_atomic(&path, format!("{diff_id}\n").as_bytes())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_layout_and_refuses_foreign_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("oci-layout")).unwrap(),
            OCI_LAYOUT
        );
        assert!(store.refs().unwrap().is_empty());
        Store::open(tmp.path()).expect("reopen");

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("notes.txt"), "mine").unwrap();
        assert!(matches!(
            Store::open(other.path()),
            Err(Error::NotALayout { .. })
        ));
    }

    #[test]
    fn a_setup_killed_half_way_is_finished_not_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join(PRIVATE_DIR)).unwrap();
        fs::write(tmp.path().join(".oci-layout.123.0.tmp"), "{").unwrap();
        let store = Store::open(tmp.path()).expect("an interrupted setup is completed");
        assert!(store.refs().unwrap().is_empty());
        assert!(!tmp.path().join(".oci-layout.123.0.tmp").exists());
    }

    #[test]
    fn put_blob_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let good = Digest::of(b"hello");
        store.put_blob(&good, b"hello").unwrap();
        assert_eq!(store.read_blob(&good, 100).unwrap(), b"hello");
        let err = store.put_blob(&good, b"hellO").unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(matches!(
            store.read_blob(&good, 2),
            Err(Error::SizeMismatch { .. })
        ));
    }
}
