//! `commit`: an upper directory turned into a new OCI layer on top of its base image.
//!
//! The upper directory is read in overlayfs' format (0/0 character devices are whiteouts, the
//! opaque xattr marks opaque directories, `user.containers.override_stat` holds what a rootless
//! mount could not set) and written as a tar in OCI's change-set format (`.wh.NAME`,
//! `.wh..wh..opq`), gzip-compressed. The output is deterministic: entries in byte order of
//! their paths, no atime, ctime, user or group names, a gzip header without name or time, and,
//! with a timestamp given, every mtime clamped to it; so the same upper directory always gives
//! the same layer digest.
//!
//! The layer, a config (the base's, plus the new diff_id and a history entry) and a manifest
//! are written to the store like pulled blobs (hashed, fsynced, renamed into place); the
//! reference is set last.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::{Digest, Hasher};
use crate::fs::overlay::upper::{OVERRIDE_STAT, Override, Type, is_private_xattr};
use crate::image::Descriptor;
use crate::image::media::{
    OCI_LAYER_GZIP as MEDIA_OCI_LAYER_GZIP, OCI_MANIFEST as MEDIA_OCI_MANIFEST,
};
use crate::store::{self, ImageRef, Store};

/// Largest xattr value read from the upper directory (the kernel's limit).
const MAX_XATTR: usize = 64 << 10;
/// Largest config accepted from the store for rewriting.
const MAX_CONFIG: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the base image's {0} is not valid JSON; pull it again")]
    BadJson(&'static str),
    #[error("indexing the new layer: {0}")]
    Index(#[from] crate::layer::Error),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Choices for the new image.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Clamp every mtime to this (seconds since the epoch) and use it as the creation time.
    pub timestamp: Option<i64>,
    pub message: Option<String>,
    pub author: Option<String>,
}

/// What `commit` made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Committed {
    pub reference: String,
    pub digest: Digest,
    pub layer: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Turn `upper` into a layer over `base` and store the result as `name`.
pub fn commit(
    store: &Store,
    base: &ImageRef,
    upper: &Path,
    name: &str,
    opts: &Options,
) -> Result<Committed, Error> {
    let _lock = store.lock_shared()?;
    let now = opts.timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });

    // The layer, streamed: tar → diff_id hash → gzip → digest hash → temporary file.
    let tmp = store
        .private("tmp")
        .join(format!("commit-{}-{}.tar.gz", std::process::id(), now));
    fs::create_dir_all(store.private("tmp")).map_err(io_err("create", &tmp))?;
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let compressed = Hashing {
        inner: io::BufWriter::new(file),
        hasher: Hasher::new(),
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(compressed, flate2::Compression::default());
    let mut tar = tar::Builder::new(Hashing {
        inner: gz,
        hasher: Hasher::new(),
    });
    tar.mode(tar::HeaderMode::Complete);
    let result = write_changes(&mut tar, upper, opts.timestamp);
    let finished = result.and_then(|()| {
        let uncompressed = tar.into_inner().map_err(io_err("write", &tmp))?;
        let diff_id = uncompressed.hasher.finish();
        let compressed = uncompressed.inner.finish().map_err(io_err("write", &tmp))?;
        let size = compressed.hasher.len();
        let digest = compressed.hasher.finish();
        let file = compressed
            .inner
            .into_inner()
            .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        Ok((diff_id, digest, size))
    });
    let (diff_id, layer_digest, layer_size) = match finished {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if store.has_blob(&layer_digest) {
        let _ = fs::remove_file(&tmp);
    } else {
        store.adopt_blob(&layer_digest, &tmp)?;
    }
    store.record_diff_id(&layer_digest, &diff_id)?;
    let blob = File::open(store.blob_path(&layer_digest))
        .map_err(io_err("open", &store.blob_path(&layer_digest)))?;
    let index = crate::layer::index_stream(layer_digest.clone(), blob)?;
    store.save_layer_index(&index)?;

    // The config and manifest: the base's, as JSON values so that nothing they carry is lost.
    let stored = store.image(&base.descriptor)?;
    let config_bytes = store.read_blob(&stored.manifest.config.digest, MAX_CONFIG)?;
    let mut config: Value =
        serde_json::from_slice(&config_bytes).map_err(|_| Error::BadJson("config"))?;
    let created = rfc3339(now);
    let obj = config.as_object_mut().ok_or(Error::BadJson("config"))?;
    obj.insert("created".into(), Value::String(created.clone()));
    if let Some(a) = &opts.author {
        obj.insert("author".into(), Value::String(a.clone()));
    }
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or(Error::BadJson("config"))?
        .push(Value::String(diff_id.to_string()));
    let mut entry = serde_json::json!({"created": created, "created_by": "layerfs commit"});
    if let Some(m) = &opts.message {
        entry["comment"] = Value::String(m.clone());
    }
    if let Some(a) = &opts.author {
        entry["author"] = Value::String(a.clone());
    }
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => {
            obj.insert("history".into(), Value::Array(vec![entry]));
        }
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|_| Error::BadJson("config"))?;
    let config_digest = Digest::of(&config_bytes);
    store.put_blob(&config_digest, &config_bytes)?;

    let manifest_bytes = store.read_blob(&base.descriptor.digest, MAX_CONFIG)?;
    let mut manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|_| Error::BadJson("manifest"))?;
    let m = manifest.as_object_mut().ok_or(Error::BadJson("manifest"))?;
    m.insert("mediaType".into(), Value::String(MEDIA_OCI_MANIFEST.into()));
    if let Some(c) = m.get_mut("config").and_then(Value::as_object_mut) {
        c.insert("digest".into(), Value::String(config_digest.to_string()));
        c.insert("size".into(), Value::from(config_bytes.len() as u64));
    }
    let layer = serde_json::json!({
        "mediaType": MEDIA_OCI_LAYER_GZIP,
        "digest": layer_digest.to_string(),
        "size": layer_size,
    });
    m.get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or(Error::BadJson("manifest"))?
        .push(layer);
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|_| Error::BadJson("manifest"))?;
    let digest = Digest::of(&manifest_bytes);
    store.put_blob(&digest, &manifest_bytes)?;
    let mut descriptor = Descriptor::new(
        MEDIA_OCI_MANIFEST,
        digest.clone(),
        manifest_bytes.len() as u64,
    );
    descriptor.platform = base.descriptor.platform.clone();
    store.set_ref(name, &descriptor)?;
    Ok(Committed {
        reference: name.to_owned(),
        digest,
        layer: layer_digest,
        diff_id,
        size: layer_size,
    })
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `secs` since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// What one upper entry becomes in the layer.
struct Upper<'a> {
    path: &'a [u8],
    meta: &'a fs::Metadata,
    full: &'a Path,
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; MAX_XATTR];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; MAX_XATTR];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}

fn is_opaque(xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    xattrs
        .iter()
        .any(|(n, v)| (n == b"trusted.overlay.opaque" || n == b"user.overlay.opaque") && v == b"y")
}

/// Write the tar of `upper`'s changes.
fn write_changes<W: Write>(
    tar: &mut tar::Builder<W>,
    upper: &Path,
    clamp: Option<i64>,
) -> Result<(), Error> {
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let root_xattrs = xattrs_of(upper);
    if is_opaque(&root_xattrs) {
        marker(tar, b".wh..wh..opq", clamp)?;
    }
    write_dir(tar, upper, &[], clamp, &mut links)?;
    tar.finish().map_err(|e| Error::Io {
        action: "write",
        path: upper.to_path_buf(),
        source: e,
    })
}

/// Write the entries of the upper directory `dir` (at `prefix` in the layer), each directory
/// followed by its contents, names in byte order.
fn write_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &[u8],
    clamp: Option<i64>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<(), Error> {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .map_err(io_err("read", dir))?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(io_err("read", dir))?;
    names.sort();
    for name in names {
        if name.starts_with(b".layerfs-tmp-") {
            continue;
        }
        let full = dir.join(std::ffi::OsStr::from_bytes(&name));
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        let meta = fs::symlink_metadata(&full).map_err(io_err("stat", &full))?;
        let entry = Upper {
            path: &path,
            meta: &meta,
            full: &full,
        };
        if write_entry(tar, &entry, clamp, links)? {
            write_dir(tar, &full, &path, clamp, links)?;
        }
    }
    Ok(())
}

/// A zero-length marker file (whiteout or opaque marker).
fn marker<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &[u8],
    clamp: Option<i64>,
) -> Result<(), Error> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(clamp.unwrap_or(0).max(0) as u64);
    tar.append_data(
        &mut h,
        Path::new(std::ffi::OsStr::from_bytes(path)),
        io::empty(),
    )
    .map_err(|e| Error::Io {
        action: "write",
        path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
        source: e,
    })
}

/// Write one upper entry; true if it is a directory to descend into.
fn write_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    e: &Upper<'_>,
    clamp: Option<i64>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<bool, Error> {
    let werr = |source: io::Error| Error::Io {
        action: "write",
        path: e.full.to_path_buf(),
        source,
    };
    let mode = e.meta.mode();
    let mut t = Type::from_mode(mode, e.meta.rdev());
    if matches!(t, Type::Char(0, 0)) {
        // A whiteout: OCI's `.wh.NAME`.
        let (dir, base) = match e.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&e.path[..=i], &e.path[i + 1..]),
            None => (&b""[..], e.path),
        };
        let mut wh = dir.to_vec();
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(base);
        marker(tar, &wh, clamp)?;
        return Ok(false);
    }
    let all_xattrs = xattrs_of(e.full);
    let over = all_xattrs
        .iter()
        .find(|(n, _)| n == OVERRIDE_STAT.as_bytes())
        .and_then(|(_, v)| Override::parse(v));
    let (mut uid, mut gid, mut perm) = (e.meta.uid(), e.meta.gid(), mode & 0o7777);
    if let Some(o) = &over {
        uid = o.uid;
        gid = o.gid;
        perm = o.mode;
        if let Some(k) = o.kind {
            t = k;
        }
    }
    let opaque = t == Type::Dir && is_opaque(&all_xattrs);
    let xattrs: Vec<_> = all_xattrs
        .into_iter()
        .filter(|(n, _)| !is_private_xattr(n))
        .collect();
    if !xattrs.is_empty() {
        let pax: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(n, v)| {
                (
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)),
                    v.as_slice(),
                )
            })
            .collect();
        tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(werr)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(perm);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    let mtime = match clamp {
        Some(c) => e.meta.mtime().min(c),
        None => e.meta.mtime(),
    };
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    let name = Path::new(std::ffi::OsStr::from_bytes(e.path));
    match t {
        Type::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            let mut p = e.path.to_vec();
            p.push(b'/');
            tar.append_data(
                &mut h,
                Path::new(std::ffi::OsStr::from_bytes(&p)),
                io::empty(),
            )
            .map_err(werr)?;
            if opaque {
                let mut m = e.path.to_vec();
                m.extend_from_slice(b"/.wh..wh..opq");
                marker(tar, &m, clamp)?;
            }
            return Ok(true);
        }
        Type::File if over.and_then(|o| o.kind).is_none_or(|k| k == Type::File) => {
            let key = (e.meta.dev(), e.meta.ino());
            if e.meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut h, name, Path::new(std::ffi::OsStr::from_bytes(first)))
                        .map_err(werr)?;
                    return Ok(false);
                }
                links.insert(key, e.path.to_vec());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.meta.len());
            let f = File::open(e.full).map_err(io_err("open", e.full))?;
            tar.append_data(&mut h, name, f).map_err(werr)?;
        }
        Type::File => {
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, io::empty()).map_err(werr)?;
        }
        Type::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(e.full).map_err(io_err("read link", e.full))?;
            tar.append_link(&mut h, name, &target).map_err(werr)?;
        }
        Type::Fifo | Type::Socket => {
            h.set_entry_type(tar::EntryType::Fifo);
            tar.append_data(&mut h, name, io::empty()).map_err(werr)?;
        }
        Type::Char(a, b) | Type::Block(a, b) => {
            h.set_entry_type(if matches!(t, Type::Char(..)) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            h.set_device_major(a).map_err(werr)?;
            h.set_device_minor(b).map_err(werr)?;
            tar.append_data(&mut h, name, io::empty()).map_err(werr)?;
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
