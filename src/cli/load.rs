//! `layerfs load`: import `docker save` tarballs and OCI archives.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::{Context, Format};
use crate::archive;
use crate::reference::Reference;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  docker save debian:12 | gzip > debian.tar.gz && layerfs load debian.tar.gz\n  skopeo copy docker://alpine oci-archive:alpine.tar && layerfs load --tag alpine:latest alpine.tar"
)]
pub struct Args {
    /// The archive: a docker save tarball (plain, gzip or zstd) or an OCI archive
    pub file: PathBuf,

    /// Name for the image (required when the archive does not name it)
    #[arg(long, value_name = "REFERENCE")]
    pub tag: Option<String>,

    /// Output: the loaded references (table) or a JSON array (json)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let tag = args
        .tag
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    let store = ctx.store()?;
    let loaded = archive::load(&store, &args.file, tag.as_ref())
        .with_context(|| format!("loading {} failed", args.file.display()))?;
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&loaded)?),
        Format::Table => {
            for l in &loaded {
                super::out!("{} {}", l.reference, l.digest);
            }
        }
    }
    Ok(())
}
