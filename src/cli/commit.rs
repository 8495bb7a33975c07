//! `layerfs commit`: turn a writable mount's upper directory into a new image.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use super::{Context, Format};
use crate::reference::Reference;

const EXAMPLES: &str = "\
Examples:
  layerfs mount --upper ~/changes debian:12 ~/rootfs
  echo hello > ~/rootfs/etc/motd
  layerfs commit ~/rootfs localhost:5000/my/debian:motd
  layerfs commit --base debian:12 ~/changes my/debian:motd   # after unmounting
  SOURCE_DATE_EPOCH=0 layerfs commit ~/rootfs my/debian:reproducible";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A writable mount point, or the upper directory of one (mounted or not)
    pub source: PathBuf,

    /// Reference for the new image
    pub reference: String,

    /// The image the upper directory lies over [default: the image it was last mounted over]
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,

    /// Comment for the new history entry
    #[arg(short, long)]
    pub message: Option<String>,

    /// Author recorded in the config and history
    #[arg(long)]
    pub author: Option<String>,

    /// Creation time, and the latest mtime in the layer, in seconds since the epoch: the same
    /// changes then always give the same digests [default: $SOURCE_DATE_EPOCH, else now, mtimes
    /// as they are]
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
    pub timestamp: Option<i64>,

    /// Output: the new reference and digest (table) or a JSON object (json)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let source = std::fs::canonicalize(&args.source)
        .with_context(|| format!("{} does not exist", args.source.display()))?;
    let record = store.find_mount(&source);
    let upper = match &record {
        Some(r) => r.upper.clone(),
        None if source.is_dir() => source.clone(),
        None => bail!("{} is not a directory", source.display()),
    };
    let base = match (&args.base, &record) {
        (Some(b), _) => store.find(b)?,
        (None, Some(r)) => store
            .find(&r.image)
            .ok()
            .filter(|f| f.descriptor.digest == r.manifest)
            .map_or_else(|| store.find(&r.manifest.to_string()), Ok)
            .with_context(|| {
                format!(
                    "the image {} that {} was mounted over is gone from the store",
                    r.image,
                    upper.display()
                )
            })?,
        (None, None) => bail!(
            "{} was never mounted with --upper from this store: name its image with --base",
            source.display()
        ),
    };
    let reference: Reference = args
        .reference
        .parse()
        .with_context(|| format!("invalid reference {:?}", args.reference))?;
    let name = reference.to_string();
    let opts = crate::commit::Options {
        timestamp: args.timestamp,
        message: args.message.clone(),
        author: args.author.clone(),
    };
    ctx.say(&format!(
        "committing {} over {} as {name}",
        upper.display(),
        base.name
    ));
    let done = crate::commit::commit(&store, &base, &upper, &name, &opts)
        .with_context(|| format!("cannot commit {}", upper.display()))?;
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&done)?),
        Format::Table => super::out!("{} {}", done.reference, done.digest),
    }
    Ok(())
}
