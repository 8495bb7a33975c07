//! OCI image-spec and Docker schema 2 documents: descriptors, manifests, indexes, configs.
//!
//! Pure data: parsers take bytes and return typed documents or a precise error. Both the OCI
//! media types and Docker's schema 2 / manifest-list types are accepted; schema 1 is refused.
//! Unknown fields are ignored, so newer documents still parse; the exact bytes are always kept
//! by the caller (digests are over bytes, never over a re-serialisation).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub mod media {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_NONDIST_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// The `Accept` header for manifest requests: everything layerfs can use.
    pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// Ref-name annotation of the OCI image layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// On a ref whose manifest layerfs converted to OCI media types: the digest of the manifest
/// exactly as the registry served it (kept in the store too).
pub const ANNOTATION_SOURCE_DIGEST: &str = "layerfs.source-digest";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} is a Docker schema 1 manifest, which layerfs does not support (it is deprecated and unsigned); \
         push the image again with a current client to get a schema 2 or OCI manifest"
    )]
    Schema1 { what: String },
    #[error("{what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what} is not a valid {kind}: {source}")]
    Json {
        what: String,
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("{what} has schemaVersion {found}, expected 2")]
    SchemaVersion { what: String, found: i64 },
    #[error("invalid platform {0:?} (expected os/arch or os/arch/variant, e.g. linux/arm64/v8)")]
    Platform(String),
}

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Docker foreign layers and OCI non-distributable layers.
    pub fn is_foreign(&self) -> bool {
        self.media_type == media::DOCKER_FOREIGN
            || self.media_type.starts_with(media::OCI_NONDIST_PREFIX)
    }
}

/// `os/architecture[/variant]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform of the machine layerfs runs on, named as registries name it.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
        }
    }

    /// Whether an index entry for `self` satisfies a request for `wanted`. A missing requested
    /// variant matches any; arm64's default variant is v8.
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        if self.os != wanted.os || self.architecture != wanted.architecture {
            return false;
        }
        let norm = |v: Option<&str>| match (self.architecture.as_str(), v) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        match &wanted.variant {
            None => true,
            Some(w) => norm(self.variant.as_deref()) == norm(Some(w)),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok_part) {
            return Err(Error::Platform(s.to_owned()));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
            os_version: None,
        })
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The image manifest for `wanted`. Attestations and entries of unknown platform are never
    /// chosen. On failure, returns the platforms the index does offer.
    pub fn select(&self, wanted: &Platform) -> Result<&Descriptor, Vec<String>> {
        let images = || {
            self.manifests.iter().filter(|d| {
                matches!(
                    d.media_type.as_str(),
                    media::OCI_MANIFEST
                        | media::DOCKER_MANIFEST
                        | media::OCI_INDEX
                        | media::DOCKER_LIST
                ) && d
                    .annotations
                    .get("vnd.docker.reference.type")
                    .map(String::as_str)
                    != Some("attestation-manifest")
                    && d.platform.as_ref().is_some_and(|p| p.os != "unknown")
            })
        };
        let satisfies = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.satisfies(wanted));
        images()
            .find(|d| {
                satisfies(d) && d.platform.as_ref().map(|p| &p.variant) == Some(&wanted.variant)
            })
            .or_else(|| images().find(satisfies))
            .ok_or_else(|| {
                let mut available: Vec<String> = images()
                    .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
                    .collect();
                available.dedup();
                available
            })
    }
}

/// What a manifest endpoint returned.
#[derive(Debug)]
pub enum ManifestKind {
    Image(Manifest),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

impl ManifestKind {
    /// Parse a manifest or index. `content_type` is the HTTP `Content-Type` (if any); the
    /// document's own `mediaType` and shape decide when the header is missing or generic.
    pub fn parse(what: &str, content_type: Option<&str>, bytes: &[u8]) -> Result<Self, Error> {
        let json_err = |kind, source| Error::Json {
            what: what.to_owned(),
            kind,
            source,
        };
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| json_err("manifest (JSON object)", e))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
        let media_type = probe.media_type.clone().or(header.clone());
        let is_schema1 = probe.schema_version == Some(1)
            || probe.fs_layers.is_some()
            || matches!(
                media_type.as_deref(),
                Some(media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED)
            );
        if is_schema1 {
            return Err(Error::Schema1 {
                what: what.to_owned(),
            });
        }
        let kind = match media_type.as_deref() {
            Some(media::OCI_INDEX | media::DOCKER_LIST) => "index",
            Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => "manifest",
            Some(other) if probe.manifests.is_none() && probe.config.is_none() => {
                return Err(Error::UnsupportedMediaType {
                    what: what.to_owned(),
                    media_type: other.to_owned(),
                });
            }
            _ if probe.manifests.is_some() => "index",
            _ => "manifest",
        };
        if let Some(found) = probe.schema_version
            && found != 2
        {
            return Err(Error::SchemaVersion {
                what: what.to_owned(),
                found,
            });
        }
        if kind == "index" {
            let index: Index =
                serde_json::from_slice(bytes).map_err(|e| json_err("image index", e))?;
            Ok(ManifestKind::Index(index))
        } else {
            let manifest: Manifest =
                serde_json::from_slice(bytes).map_err(|e| json_err("image manifest", e))?;
            Ok(ManifestKind::Image(manifest))
        }
    }
}

impl Manifest {
    /// The manifest's media type, defaulting by its config's type when the field is absent.
    pub fn media_type(&self) -> &str {
        match &self.media_type {
            Some(m) => m,
            None if self.config.media_type == media::DOCKER_CONFIG => media::DOCKER_MANIFEST,
            None => media::OCI_MANIFEST,
        }
    }
}

impl Manifest {
    /// The same image with OCI media types, for a Docker schema 2 manifest: OCI image-layout
    /// readers (skopeo, umoci) only look at OCI manifests. Config and layer blobs are
    /// unchanged; only the descriptors' media types differ. `None` if already OCI.
    pub fn to_oci(&self) -> Option<Manifest> {
        if self.media_type() != media::DOCKER_MANIFEST {
            return None;
        }
        let convert = |d: &Descriptor| {
            let media_type = match d.media_type.as_str() {
                media::DOCKER_CONFIG => media::OCI_CONFIG,
                media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
                media::DOCKER_LAYER => media::OCI_LAYER,
                media::DOCKER_FOREIGN => {
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                }
                other => other,
            };
            Descriptor {
                media_type: media_type.to_owned(),
                ..d.clone()
            }
        };
        Some(Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_owned()),
            config: convert(&self.config),
            layers: self.layers.iter().map(convert).collect(),
            annotations: self.annotations.clone(),
        })
    }
}

/// The parts of an image config layerfs reads (`inspect`, diff_id checks).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

impl Config {
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Config, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: what.to_owned(),
            kind: "image config",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.satisfies(&v8), "arm64 without variant is v8");
        let armv6: Platform = "linux/arm/v6".parse().unwrap();
        let armv7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!armv6.satisfies(&armv7));
        assert!(armv7.satisfies(&"linux/arm".parse().unwrap()));
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn detects_kinds() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{d}","size":2}},"layers":[]}}"#,
            media::DOCKER_CONFIG
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{d}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_MANIFEST
        );
        match ManifestKind::parse("m", None, manifest.as_bytes()).unwrap() {
            ManifestKind::Image(m) => assert_eq!(m.media_type(), media::DOCKER_MANIFEST),
            other => panic!("{other:?}"),
        }
        match ManifestKind::parse("i", Some(media::OCI_INDEX), index.as_bytes()).unwrap() {
            ManifestKind::Index(i) => assert_eq!(i.manifests.len(), 1),
            other => panic!("{other:?}"),
        }
        let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = ManifestKind::parse("s", Some(media::DOCKER_SCHEMA1_SIGNED), schema1);
        assert!(matches!(err, Err(Error::Schema1 { .. })), "{err:?}");
        let garbage = ManifestKind::parse("g", None, b"<html>");
        assert!(matches!(garbage, Err(Error::Json { .. })));
        let helm = br#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart"}"#;
        assert!(matches!(
            ManifestKind::parse("h", None, helm),
            Err(Error::UnsupportedMediaType { .. })
        ));
    }
}
