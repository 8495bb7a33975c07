//! `layerfs gc`: delete what no image references.

use anyhow::Result;

use super::{Context, human_size};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  layerfs gc")]
pub struct Args {}

pub fn run(ctx: &Context, _args: Args) -> Result<()> {
    let store = ctx.store()?;
    let report = store.gc()?;
    super::out!(
        "freed {} bytes ({}) in {} blobs, and {} of indexes, caches and stale downloads",
        report.bytes_freed,
        human_size(report.bytes_freed),
        report.blobs_removed,
        human_size(report.private_bytes_freed)
    );
    Ok(())
}
