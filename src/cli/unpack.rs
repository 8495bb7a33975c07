//! `layerfs unpack`: write an image's merged tree into a directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::{Context, human_size};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs unpack debian:12 ./rootfs\n  sudo layerfs unpack debian:12 /srv/rootfs   # as root: ownership and device nodes too"
)]
pub struct Args {
    /// Image: a reference as pulled, or a manifest digest (prefix)
    pub image: String,

    /// Target directory: new, or empty
    pub dir: PathBuf,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let found = store.find(&args.image)?;
    let cache = Arc::new(crate::layer::SpanCache::new(
        crate::layer::DEFAULT_CACHE_BYTES,
    ));
    let image = crate::mount::open_image(&store, &found.descriptor, cache)
        .with_context(|| format!("cannot open {}", found.name))?;
    let report = crate::unpack::unpack(&image, &args.dir).with_context(|| {
        format!(
            "unpacking {} into {} failed",
            found.name,
            args.dir.display()
        )
    })?;
    for s in &report.skipped {
        log::warn!("left out: {s}");
    }
    ctx.say(&format!(
        "unpacked {} into {}: {} entries, {}{}",
        found.name,
        args.dir.display(),
        report.entries,
        human_size(report.bytes),
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} things left out (see warnings)", report.skipped.len())
        }
    ));
    Ok(())
}
