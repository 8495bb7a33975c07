//! `layerfs pull`: progress bars on a terminal, plain lines otherwise, the digest on stdout.

use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Context, Format, human_size};
use crate::digest::Digest;
use crate::image::Platform;
use crate::pull::{self, Progress};
use crate::reference::Reference;

/// Layers downloaded at once by default: enough to fill a link, few enough to be polite.
const DEFAULT_JOBS: usize = 3;

const EXAMPLES: &str = "\
Examples:
  layerfs pull debian:12
  layerfs pull --platform linux/arm64/v8 docker.io/library/alpine:3.20
  layerfs pull --creds user:secret registry.example.com/team/app@sha256:<digest>
  layerfs pull --cert-dir ./certs registry.internal:5000/app:latest
  layerfs pull --format json 127.0.0.1:5000/demo/debian:bookworm";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Image reference: [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]
    pub reference: String,

    /// Platform to choose from a multi-platform image, OS/ARCH[/VARIANT] [default: this host]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub registry: super::RegistryArgs,

    /// Layers downloaded at once
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS, value_name = "N")]
    pub jobs: usize,

    /// Cap the total download rate, in bytes per second (suffixes K, M, G)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,

    /// Output: the manifest digest (table) or a JSON object (json)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 500K or 20M"))?;
    n.checked_mul(mult)
        .filter(|&r| r > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    // Checked as a reference first, so that a typo reads as one whatever the configuration.
    args.reference.parse::<Reference>()?;
    let conf = args.registry.conf()?;
    let platform = args
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let options = pull::Options {
        platform,
        jobs: args.jobs,
        registry: args.registry.options()?,
        limit_rate: args.limit_rate,
    };
    let store = ctx.store()?;
    let bars = !ctx.quiet && std::io::stderr().is_terminal();
    let reporter = Reporter::new(bars, ctx.quiet);
    let pulled = pull::pull_named(&store, &args.reference, &conf, &options, &reporter)
        .with_context(|| format!("pulling {} failed", args.reference))?;
    reporter.finish();
    ctx.say(&format!(
        "pulled {} ({}, {} layer{}, {}, {} already in the store)",
        pulled.reference,
        pulled.platform,
        pulled.layers,
        if pulled.layers == 1 { "" } else { "s" },
        human_size(pulled.size),
        pulled.layers_reused
    ));
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&pulled)?),
        Format::Table => super::out!("{}", pulled.digest),
    }
    Ok(())
}

/// Bars on a terminal; otherwise one line per finished layer.
struct Reporter {
    multi: Option<MultiProgress>,
    bars: Mutex<Vec<Option<ProgressBar>>>,
    quiet: bool,
}

impl Reporter {
    fn new(bars: bool, quiet: bool) -> Reporter {
        Reporter {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(Vec::new()),
            quiet,
        }
    }

    fn finish(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }

    fn with_bar(&self, index: usize, f: impl FnOnce(&ProgressBar)) {
        if let Ok(bars) = self.bars.lock()
            && let Some(Some(bar)) = bars.get(index)
        {
            f(bar);
        }
    }
}

impl Progress for Reporter {
    fn resolved(&self, reference: &str, digest: &Digest, platform: &str) {
        if !self.quiet {
            let line = format!("layerfs: {reference} is {digest} ({platform})");
            match &self.multi {
                Some(m) => {
                    let _ = m.println(line);
                }
                None => eprintln!("{line}"),
            }
        }
    }

    fn layer_start(&self, index: usize, digest: &Digest, size: u64, done: u64) {
        let Some(multi) = &self.multi else { return };
        let bar = multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(digest.short().to_owned());
        bar.set_position(done);
        if let Ok(mut bars) = self.bars.lock() {
            if bars.len() <= index {
                bars.resize(index + 1, None);
            }
            bars[index] = Some(bar);
        }
    }

    fn layer_bytes(&self, index: usize, bytes: u64) {
        self.with_bar(index, |b| b.inc(bytes));
    }

    fn layer_done(&self, index: usize, digest: &Digest, reused: bool) {
        if self.quiet {
            return;
        }
        let what = if reused {
            "already in the store"
        } else {
            "verified"
        };
        match &self.multi {
            Some(_) => self.with_bar(index, |b| {
                b.finish_with_message(what);
            }),
            None => eprintln!("layerfs: layer {} {digest} {what}", index + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("123"), Ok(123));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999G").is_err());
    }
}
