//! `layerfs rm`: drop refs; the blobs stay until `layerfs gc`.

use anyhow::Result;

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
    let mut first_error = None;
    for query in &args.images {
        let result = store
            .find(query)
            .and_then(|r| store.remove_ref(&r.name).map(|()| r.name));
        match result {
            Ok(name) => println!("{name}"),
            Err(e) => {
                eprintln!("layerfs: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
