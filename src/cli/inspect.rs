//! `layerfs inspect`: an image's configuration and layers as one JSON document.

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Context;
use crate::image::{History, Platform};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs inspect debian:12\n  layerfs inspect debian:12 | jq '.layers[].diffId'"
)]
pub struct Args {
    /// Image: a reference as pulled, or a manifest digest (prefix)
    pub image: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inspect {
    reference: String,
    /// The manifest digest as the registry serves it.
    digest: String,
    /// The digest of the manifest in the store, when layerfs converted it to OCI media types.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_digest: Option<String>,
    media_type: String,
    platform: Platform,
    created: Option<String>,
    author: Option<String>,
    env: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
    size: u64,
    config: LayerRow,
    layers: Vec<LayerRow>,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayerRow {
    digest: String,
    media_type: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff_id: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let found = store.find(&args.image)?;
    let img = store
        .image(&found.descriptor)
        .with_context(|| format!("reading {}", found.name))?;
    let run = img.config.config.clone().unwrap_or_default();
    // Describe the manifest as the registry served it, when layerfs stored a converted copy.
    let source = found
        .source_digest()
        .parse::<crate::digest::Digest>()
        .ok()
        .filter(|d| d != &img.manifest_digest)
        .and_then(|d| {
            store
                .read_blob(&d, crate::registry::MAX_MANIFEST_BYTES)
                .ok()
        })
        .and_then(
            |b| match crate::image::ManifestKind::parse("manifest", None, &b) {
                Ok(crate::image::ManifestKind::Image(m)) => Some(m),
                _ => None,
            },
        );
    let manifest = source.as_ref().unwrap_or(&img.manifest);
    let layers = manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerRow {
            digest: l.digest.to_string(),
            media_type: l.media_type.clone(),
            size: l.size,
            diff_id: img.config.rootfs.diff_ids.get(i).map(ToString::to_string),
        })
        .collect();
    let out = Inspect {
        reference: found.name.clone(),
        digest: found.source_digest(),
        stored_digest: (found.source_digest() != img.manifest_digest.to_string())
            .then(|| img.manifest_digest.to_string()),
        media_type: manifest.media_type().to_owned(),
        platform: img.platform(),
        created: img.config.created.clone(),
        author: img.config.author.clone(),
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
        labels: run.labels.unwrap_or_default(),
        size: img.size(),
        config: LayerRow {
            digest: manifest.config.digest.to_string(),
            media_type: manifest.config.media_type.clone(),
            size: manifest.config.size,
            diff_id: None,
        },
        layers,
        history: img.config.history.clone(),
    };
    super::out!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
