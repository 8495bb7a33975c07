//! `layerfs fsck`: verify the store, and repair it.

use anyhow::{Result, bail};

use super::{Context, Format, human_size};

const EXAMPLES: &str = "\
Examples:
  layerfs fsck
  layerfs fsck --repair && layerfs pull debian:12   # refetches what was removed
  layerfs fsck --format json";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Delete bad blobs, indexes and records, leftovers and images with missing parts, so that
    /// the next pull fetches them again
    #[arg(long)]
    pub repair: bool,

    /// Output: one line per problem and a summary (table) or a JSON report (json)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let report = store.fsck(args.repair)?;
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            let verb = if args.repair { "removed" } else { "leftover" };
            for l in &report.leftovers {
                super::out!("{verb}: {l}: left by an interrupted command (garbage, not damage)");
            }
            for p in &report.problems {
                let state = if p.repaired { "removed" } else { "problem" };
                super::out!("{state}: {}: {}", p.path, p.what);
            }
            super::out!(
                "{} blobs ({} hashed), {} layer indexes, {} images checked; {} partial \
                 downloads to resume, {} leftovers; {} problems, {} left",
                report.blobs,
                human_size(report.bytes_hashed),
                report.indexes,
                report.images,
                report.resumable,
                report.leftovers.len(),
                report.problems.len(),
                report.remaining()
            );
        }
    }
    if report.remaining() > 0 {
        bail!(
            "the store has {} problems{}",
            report.remaining(),
            if args.repair {
                " that --repair cannot fix"
            } else {
                "; `layerfs fsck --repair` removes what is damaged"
            }
        );
    }
    Ok(())
}
