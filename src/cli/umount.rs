//! `layerfs umount`: end a mount, as `fusermount3 -u` would; `--lazy` detaches a busy one.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use super::Context;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs umount /mnt/debian\n  layerfs umount --lazy /mnt/debian"
)]
pub struct Args {
    /// Mount point to unmount
    pub mountpoint: PathBuf,

    /// Detach now even if busy; the kernel finishes when the last user leaves
    #[arg(short = 'z', long)]
    pub lazy: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    // A mount whose daemon died leaves a dead mount point that canonicalize cannot stat;
    // unmount it by the name given.
    let target = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
    let mut tried = Vec::new();
    let mut fusermount = Command::new("fusermount3");
    fusermount
        .arg(if args.lazy { "-uz" } else { "-u" })
        .arg(&target);
    match fusermount.output() {
        Ok(out) if out.status.success() => {
            ctx.say(&format!("unmounted {}", target.display()));
            return Ok(());
        }
        Ok(out) => tried.push(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => tried.push(format!("fusermount3: {e}")),
    }
    if rustix::process::geteuid().is_root() {
        let flags = if args.lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        match rustix::mount::unmount(&target, flags) {
            Ok(()) => {
                ctx.say(&format!("unmounted {}", target.display()));
                return Ok(());
            }
            Err(e) => tried.push(format!("umount: {e}")),
        }
    }
    bail!(
        "cannot unmount {}: {}{}",
        target.display(),
        tried.join("; "),
        if args.lazy {
            ""
        } else {
            " (if it is busy, try --lazy)"
        }
    )
}
