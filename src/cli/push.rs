//! `layerfs push`: upload an image from the store to a registry.

use anyhow::{Context as _, Result, bail};

use super::{Context, Format};
use crate::digest::Digest;
use crate::push::{self, Outcome, Progress};
use crate::reference::Reference;

/// Blobs pushed at once by default, as for pull.
const DEFAULT_JOBS: usize = 3;
/// Default chunk size in MiB: large enough that a chunk's round trip costs little, small
/// enough that a failed chunk is cheap to resend.
const DEFAULT_CHUNK_MIB: u64 = 16;

const EXAMPLES: &str = "\
Examples:
  layerfs push my/debian:changed localhost:5000/my/debian:changed
  layerfs push --creds user:secret debian:12 registry.example.com/mirror/debian:12
  layerfs push --chunk-size 4 --format json app:1 127.0.0.1:5000/app:1";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The image in the store: a reference as pulled or committed, or a manifest digest
    pub image: String,

    /// Where to push: [REGISTRY[:PORT]/]REPOSITORY[:TAG] [default: the image's own name]
    pub destination: Option<String>,

    #[command(flatten)]
    pub registry: super::RegistryArgs,

    /// Blobs uploaded at once
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS, value_name = "N")]
    pub jobs: usize,

    /// Blobs larger than this go up in chunks of this many MiB
    #[arg(long, default_value_t = DEFAULT_CHUNK_MIB, value_name = "MIB")]
    pub chunk_size: u64,

    /// Output: the manifest digest (table) or a JSON object with each blob's fate (json)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// One line per blob on stderr, unless quiet.
struct Lines {
    quiet: bool,
}

impl Progress for Lines {
    fn blob(&self, digest: &Digest, size: u64, outcome: Outcome) {
        if self.quiet {
            return;
        }
        let what = match outcome {
            Outcome::Exists => "exists",
            Outcome::Mounted => "mounted from another repository",
            Outcome::Uploaded => "uploaded",
        };
        eprintln!(
            "layerfs: blob {} ({}) {what}",
            digest.short(),
            super::human_size(size)
        );
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be at least 1 MiB");
    }
    let store = ctx.store()?;
    let image = store.find(&args.image)?;
    let dest_name = args.destination.as_deref().unwrap_or(&image.name);
    let dest: Reference = dest_name
        .parse()
        .with_context(|| format!("invalid destination {dest_name:?}"))?;
    // registries.conf's `insecure` applies to pushes; its mirrors and locations only to pulls.
    let mut registry = args.registry.options()?;
    registry.insecure |= args.registry.conf()?.insecure(&dest);
    let opts = push::Options {
        jobs: args.jobs,
        chunk_size: args.chunk_size.saturating_mul(1 << 20),
        registry,
    };
    let pushed = push::push(&store, &image, &dest, &opts, &Lines { quiet: ctx.quiet })
        .with_context(|| format!("pushing {} to {dest} failed", image.name))?;
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&pushed)?),
        Format::Table => super::out!("{}", pushed.digest),
    }
    Ok(())
}
