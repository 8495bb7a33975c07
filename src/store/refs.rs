//! Refs: the descriptors in `index.json`, each named by the `org.opencontainers.image.ref.name`
//! annotation (the full normalised reference, e.g. `docker.io/library/debian:12`).
//! `index.json` is only ever replaced whole (temp file + rename) under `layerfs/index.lock`.

use std::collections::BTreeMap;
use std::fs;

use serde::{Deserialize, Serialize};

use super::{Error, Result, Store, io_err};
use crate::image::{ANNOTATION_REF_NAME, Descriptor, media};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LayoutIndex {
    schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Default for LayoutIndex {
    fn default() -> Self {
        LayoutIndex {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// One named image in the store.
#[derive(Clone, Debug)]
pub struct ImageRef {
    pub name: String,
    pub descriptor: Descriptor,
}

impl ImageRef {
    /// The manifest digest as the registry knows it: the stored one, or for a manifest
    /// layerfs converted to OCI media types, the original's.
    pub fn source_digest(&self) -> String {
        self.descriptor
            .annotations
            .get(crate::image::ANNOTATION_SOURCE_DIGEST)
            .cloned()
            .unwrap_or_else(|| self.descriptor.digest.to_string())
    }
}

impl Store {
    fn read_index(&self) -> Result<LayoutIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::CorruptIndex { path, source })
    }

    pub(super) fn write_index(&self, index: &LayoutIndex) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(index).unwrap_or_default();
        bytes.push(b'\n');
        self.write_atomic(&self.index_path(), &bytes)
    }

    /// Every descriptor in `index.json`, named or not.
    pub fn descriptors(&self) -> Result<Vec<Descriptor>> {
        Ok(self.read_index()?.manifests)
    }

    /// Named images, in `index.json` order.
    pub fn refs(&self) -> Result<Vec<ImageRef>> {
        Ok(self
            .descriptors()?
            .into_iter()
            .filter_map(|descriptor| {
                let name = descriptor.annotations.get(ANNOTATION_REF_NAME)?.clone();
                Some(ImageRef { name, descriptor })
            })
            .collect())
    }

    /// Point `name` at `descriptor`, replacing what it named before.
    pub fn set_ref(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        let _lock = self.lock_file("index.lock", true)?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        let mut descriptor = descriptor.clone();
        descriptor
            .annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), name.to_owned());
        index.manifests.push(descriptor);
        self.write_index(&index)
    }

    /// Remove the ref `name`. Its blobs stay until `gc`.
    pub fn remove_ref(&self, name: &str) -> Result<()> {
        let _lock = self.lock_file("index.lock", true)?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        if index.manifests.len() == before {
            return Err(Error::NoSuchImage(name.to_owned()));
        }
        self.write_index(&index)
    }
}

impl Store {
    /// Find an image by what a user typed: its exact ref name, a reference that normalises to
    /// one (`debian:12` is `docker.io/library/debian:12`), or a manifest digest (or a prefix of
    /// its hex of at least 6 digits). Several refs with the same digest are one image: the first
    /// is returned.
    pub fn find(&self, query: &str) -> Result<ImageRef> {
        self.find_all(query)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoSuchImage(query.to_owned()))
    }

    /// Every ref `query` names: one for a name, all refs of the image for a digest.
    pub fn find_all(&self, query: &str) -> Result<Vec<ImageRef>> {
        let refs = self.refs()?;
        if let Some(r) = refs.iter().find(|r| r.name == query) {
            return Ok(vec![r.clone()]);
        }
        if let Ok(parsed) = query.parse::<crate::reference::Reference>() {
            let normalised = parsed.to_string();
            if let Some(r) = refs.iter().find(|r| r.name == normalised) {
                return Ok(vec![r.clone()]);
            }
            // A short name pulled through a search registry other than Docker Hub is stored
            // under that registry: `tool` finds `quay.io/tool:latest` if it is the only one.
            if crate::reference::is_short_name(query) {
                let tail = match parsed.tag() {
                    Some(tag) if !query.contains(':') => format!("/{query}:{tag}"),
                    _ => format!("/{query}"),
                };
                let hits: Vec<&ImageRef> = refs
                    .iter()
                    .filter(|r| {
                        r.name
                            .strip_suffix(&tail)
                            .is_some_and(|reg| !reg.is_empty() && !reg.contains('/'))
                    })
                    .collect();
                match hits.as_slice() {
                    [one] => return Ok(vec![(*one).clone()]),
                    [] => {}
                    _ => return Err(Error::Ambiguous(query.to_owned())),
                }
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 6 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let hits: Vec<ImageRef> = refs
                .iter()
                .filter(|r| {
                    r.descriptor.digest.hex().starts_with(hex)
                        || r.source_digest()
                            .trim_start_matches("sha256:")
                            .starts_with(hex)
                })
                .cloned()
                .collect();
            let first = hits.first().map(|r| r.descriptor.digest.clone());
            if hits
                .iter()
                .any(|r| Some(&r.descriptor.digest) != first.as_ref())
            {
                return Err(Error::Ambiguous(query.to_owned()));
            }
            if !hits.is_empty() {
                return Ok(hits);
            }
        }
        Err(Error::NoSuchImage(query.to_owned()))
    }
}
