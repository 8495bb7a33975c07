//! The command line: one file per subcommand, each a thin layer over the library that parses
//! arguments, reports progress and turns errors into messages with context.
//!
//! Exit codes (stable, documented in the man page): 0 success, 1 failure, 2 usage error,
//! 3 image not found (in the store or the registry), 4 authentication or authorisation
//! failure, 5 verification failure (a digest, size or diff_id that does not match).

mod commit;
mod docs;
mod fsck;
mod gc;
mod helper;
mod images;
mod inspect;
mod load;
mod mount;
mod pull;
mod push;
mod rm;
mod umount;
mod unpack;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::store::Store;

const EXAMPLES: &str = "\
Examples:
  layerfs pull debian:12
  layerfs pull --platform linux/arm64 ghcr.io/org/app:v1
  layerfs images
  layerfs inspect debian:12
  layerfs --store ./store pull 127.0.0.1:5000/demo/debian:bookworm";

/// Use a container image as a filesystem without Docker, root or kernel OverlayFS.
#[derive(Parser, Debug)]
#[command(name = "layerfs", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Store directory (an OCI image layout) [default: $LAYERFS_STORE, else /var/lib/layerfs
    /// for root, else $XDG_DATA_HOME/layerfs]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More messages (-v: progress details, -vv: protocol debugging); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download an image from a registry into the store, verifying every digest
    Pull(pull::Args),
    /// List the images in the store
    Images(images::Args),
    /// Show an image's configuration and layers as JSON
    Inspect(inspect::Args),
    /// Remove images from the store (their blobs go at the next `layerfs gc`)
    Rm(rm::Args),
    /// Delete blobs that no image references and print the bytes freed
    Gc(gc::Args),
    /// Import a `docker save` tarball or an OCI archive into the store
    Load(load::Args),
    /// Mount an image's merged rootfs read-only over FUSE
    Mount(mount::Args),
    /// Unmount a layerfs mount
    Umount(umount::Args),
    /// Write an image's merged rootfs into a directory
    Unpack(unpack::Args),
    /// Turn a writable mount's upper directory into a new image layer
    Commit(commit::Args),
    /// Upload an image from the store to a registry
    Push(push::Args),
    /// Verify every blob, index and image in the store; --repair removes what is damaged
    Fsck(fsck::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(docs::CompletionArgs),
    /// Write the man pages into a directory
    #[command(hide = true)]
    GenerateMan(docs::ManArgs),
}

/// How to reach a registry: shared by `pull` and `push`.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Credentials for the registry (otherwise read from $REGISTRY_AUTH_FILE, containers'
    /// auth.json or ~/.docker/config.json)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,

    /// Talk plain HTTP to this registry (loopback registries use HTTP without this flag)
    #[arg(long)]
    pub insecure: bool,

    /// Require HTTPS with a verified certificate (true), or allow plain HTTP (false)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: Option<bool>,

    /// Directory with extra CA certificates (*.crt) and client certificates (NAME.cert and
    /// NAME.key) [default: /etc/containers/certs.d/REGISTRY, /etc/docker/certs.d/REGISTRY]
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<std::path::PathBuf>,

    /// containers-registries.conf(5) file for mirrors, location rewrites, insecure and blocked
    /// registries, short-name aliases and search registries [default:
    /// ~/.config/containers/registries.conf or /etc/containers/registries.conf, with their
    /// registries.conf.d drop-ins]
    #[arg(
        long,
        value_name = "FILE",
        env = "CONTAINERS_REGISTRIES_CONF",
        hide_env_values = true
    )]
    pub registries_conf: Option<std::path::PathBuf>,
}

impl RegistryArgs {
    pub fn options(&self) -> anyhow::Result<crate::registry::Options> {
        use anyhow::Context as _;
        let creds = match self.creds.as_deref() {
            Some(c) => Some(
                crate::registry::auth::Credentials::parse(c)
                    .context("--creds takes USER:PASSWORD, with a non-empty user")?,
            ),
            None => None,
        };
        Ok(crate::registry::Options {
            creds,
            insecure: self.insecure,
            tls_verify: self.tls_verify,
            cert_dir: self.cert_dir.clone(),
        })
    }

    /// The registries configuration in force.
    pub fn conf(&self) -> anyhow::Result<crate::registry::conf::RegistriesConf> {
        let conf = crate::registry::conf::RegistriesConf::load(self.registries_conf.as_deref())?;
        for file in conf.files() {
            log::debug!("registries configuration from {}", file.display());
        }
        Ok(conf)
    }
}

/// Output format for commands that print data.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Parse the command line; a mount-helper style one (`layerfs IMAGE MNT -o ...`, as mount(8)
/// and fuse3's `mount.fuse3` call it) is first rewritten into `layerfs mount ...`.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut subcommands = vec!["help".to_owned()];
    for sub in <Cli as clap::CommandFactory>::command().get_subcommands() {
        subcommands.push(sub.get_name().to_owned());
        subcommands.extend(sub.get_all_aliases().map(str::to_owned));
    }
    match helper::rewrite(&args, &subcommands) {
        None => Cli::parse(),
        Some(Ok(rewritten)) => Cli::parse_from(rewritten),
        Some(Err(e)) => {
            eprintln!("layerfs: {e}");
            std::process::exit(2);
        }
    }
}

/// Log to stderr with the `layerfs:` prefix; `RUST_LOG` overrides `-q`/`-v`.
pub fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| format!("layerfs={level}"));
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            writeln!(buf, "layerfs: {level}{}", record.args())
        })
        .init();
}

pub fn run(cli: Cli) -> Result<()> {
    let store_path = cli.store.clone().unwrap_or_else(Store::default_path);
    let ctx = Context {
        store_path,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Pull(args) => pull::run(&ctx, args),
        Command::Images(args) => images::run(&ctx, args),
        Command::Inspect(args) => inspect::run(&ctx, args),
        Command::Rm(args) => rm::run(&ctx, args),
        Command::Gc(args) => gc::run(&ctx, args),
        Command::Load(args) => load::run(&ctx, args),
        Command::Mount(args) => mount::run(&ctx, args),
        Command::Umount(args) => umount::run(&ctx, args),
        Command::Unpack(args) => unpack::run(&ctx, args),
        Command::Commit(args) => commit::run(&ctx, args),
        Command::Push(args) => push::run(&ctx, args),
        Command::Fsck(args) => fsck::run(&ctx, args),
        Command::Completions(args) => docs::completions(args),
        Command::GenerateMan(args) => docs::write_man(args),
    }
}

/// What every subcommand gets.
pub struct Context {
    pub store_path: PathBuf,
    pub quiet: bool,
}

impl Context {
    fn store(&self) -> Result<Store> {
        use anyhow::Context as _;
        Store::open(&self.store_path)
            .with_context(|| format!("cannot open the store at {}", self.store_path.display()))
    }

    /// A message for the user on stderr, unless `-q`.
    fn say(&self, msg: &str) {
        if !self.quiet {
            eprintln!("layerfs: {msg}");
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
pub fn format_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Map an error to the documented exit code.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use crate::{archive, pull, push, registry, store};
    fn registry_code(e: &registry::Error) -> Option<u8> {
        match e {
            registry::Error::Unauthorized { .. } | registry::Error::Denied { .. } => Some(4),
            registry::Error::NotFound { .. } => Some(3),
            _ => None,
        }
    }
    fn store_code(e: &store::Error) -> Option<u8> {
        match e {
            store::Error::NoSuchImage(_) | store::Error::Ambiguous(_) => Some(3),
            store::Error::DigestMismatch { .. } | store::Error::SizeMismatch { .. } => Some(5),
            _ => None,
        }
    }
    fn conf_code(e: &registry::conf::Error) -> Option<u8> {
        match e {
            registry::conf::Error::Blocked { .. } => Some(4),
            registry::conf::Error::Ambiguous { .. } | registry::conf::Error::BadName { .. } => {
                Some(2)
            }
            _ => None,
        }
    }
    for cause in err.chain() {
        let code = if let Some(e) = cause.downcast_ref::<registry::Error>() {
            registry_code(e)
        } else if let Some(e) = cause.downcast_ref::<registry::conf::Error>() {
            conf_code(e)
        } else if let Some(e) = cause.downcast_ref::<store::Error>() {
            store_code(e)
        } else if let Some(e) = cause.downcast_ref::<pull::Error>() {
            match e {
                pull::Error::Registry(r) => registry_code(r),
                pull::Error::Conf(c) => conf_code(c),
                pull::Error::Store(s) => store_code(s),
                pull::Error::DigestMismatch { .. }
                | pull::Error::SizeMismatch { .. }
                | pull::Error::DiffIdMismatch { .. } => Some(5),
                pull::Error::NoPlatform { .. } | pull::Error::WrongPlatform { .. } => Some(3),
                _ => None,
            }
        } else if let Some(e) = cause.downcast_ref::<push::Error>() {
            match e {
                push::Error::Registry(r) => registry_code(r),
                push::Error::Store(s) => store_code(s),
            }
        } else if let Some(e) = cause.downcast_ref::<archive::Error>() {
            match e {
                archive::Error::DiffIdMismatch { .. } | archive::Error::DigestMismatch { .. } => {
                    Some(5)
                }
                archive::Error::Store(s) => store_code(s),
                _ => None,
            }
        } else {
            None
        };
        if let Some(code) = code {
            return code;
        }
    }
    1
}

/// Write a line of data to stdout, returning early on failure: a closed pipe surfaces as an
/// error (main exits 0 on it) instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use out;

/// `1.5 MiB` style sizes for tables.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (5 << 30, "5.0 GiB"),
        ] {
            assert_eq!(human_size(n), want);
        }
    }

    #[test]
    fn man_pages_are_current() {
        // man/ is generated from the CLI definition; regenerate with
        // `layerfs generate-man man` when this fails.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        for (name, page) in docs::man_pages().unwrap() {
            let committed = std::fs::read(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == page,
                "man/{name} is out of date: run `cargo run -- generate-man man`"
            );
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
