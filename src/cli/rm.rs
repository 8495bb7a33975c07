//! `layerfs rm`: drop refs; the blobs stay until `layerfs gc`.

use anyhow::{Context as _, Result};

use super::Context;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs rm debian:12\n  layerfs rm debian:12 alpine && layerfs gc"
)]
pub struct Args {
    /// Images to remove: references as pulled, or manifest digests
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let mut failed = Vec::new();
    for query in &args.images {
        let result = store.find_all(query).and_then(|refs| {
            refs.into_iter()
                .map(|r| store.remove_ref(&r.name).map(|()| r.name))
                .collect::<Result<Vec<_>, _>>()
        });
        match result {
            Ok(names) => {
                for name in names {
                    super::out!("{name}");
                }
            }
            Err(e) => failed.push(e),
        }
    }
    // One failure is the error; several are each reported, then summarised.
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0).into()),
        n => {
            for e in &failed {
                eprintln!("layerfs: {e}");
            }
            Err(failed.remove(0)).context(format!(
                "{n} of {} images were not removed",
                args.images.len()
            ))
        }
    }
}
