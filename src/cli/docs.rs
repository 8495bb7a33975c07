//! Documentation generated from the one CLI definition: man pages and shell completions.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write layerfs.1 and layerfs-COMMAND.1 into
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs completions bash > /etc/bash_completion.d/layerfs\n  layerfs completions zsh > \"${fpath[1]}/_layerfs\"\n  layerfs completions fish > ~/.config/fish/completions/layerfs.fish"
)]
pub struct CompletionArgs {
    /// Shell to complete for
    pub shell: clap_complete::Shell,
}

const EXIT_STATUS: &str = "0 success; 1 failure; 2 usage error; 3 image not found (in the store \
or the registry); 4 authentication or authorisation failure; 5 verification failure (a digest, \
size or diff_id that does not match).";

const ENVIRONMENT: &str = "LAYERFS_STORE: the store directory (see --store). RUST_LOG: log \
filter, e.g. layerfs=debug. REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, DOCKER_CONFIG, HOME: where \
registry credentials are read (REGISTRY_AUTH_FILE, then $XDG_RUNTIME_DIR/containers/auth.json, \
~/.config/containers/auth.json, ~/.docker/config.json). CONTAINERS_REGISTRIES_CONF: the \
registries.conf to use instead of the usual ones (see --registries-conf). PATH: where the \
docker-credential-NAME helpers named by credHelpers and credsStore are found. SSL_CERT_FILE: \
extra CA certificates. LAYERFS_LOW_SPEED_TIME: seconds (default 30) in which a registry must \
send at least 1 KiB of a response body; a slower one is cut off (and a blob download resumed).";

const FILES: &str = "STORE/oci-layout, STORE/index.json, STORE/blobs/sha256/: the OCI image \
layout, readable by skopeo and umoci. STORE/layerfs/: layer indexes, partial downloads, logs of \
background mounts. /etc/containers/certs.d/REGISTRY/ and /etc/docker/certs.d/REGISTRY/: CA \
(*.crt) and client certificates (*.cert, *.key). ~/.config/containers/registries.conf, else \
/etc/containers/registries.conf, then the registries.conf.d/*.conf drop-ins of both directories: \
mirrors, location rewrites, insecure (plain HTTP) and blocked registries, short-name aliases, \
unqualified-search-registries and short-name-mode, as containers-registries.conf(5) describes. \
In an auth file, credHelpers (per registry) and credsStore (default) name a \
docker-credential-NAME helper, run as `docker-credential-NAME get`.";

/// Render the man page of `cmd` (named `name`) with the shared extra sections.
fn render(cmd: clap::Command, name: &str) -> Result<Vec<u8>> {
    let cmd = cmd.name(name.to_owned()).version(env!("CARGO_PKG_VERSION"));
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(after) = cmd.get_after_help() {
        section(
            &mut out,
            "EXAMPLES",
            &after.to_string().replace("Examples:\n", ""),
        );
    }
    section(&mut out, "EXIT STATUS", EXIT_STATUS);
    section(&mut out, "ENVIRONMENT", ENVIRONMENT);
    section(&mut out, "FILES", FILES);
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn section(out: &mut Vec<u8>, title: &str, body: &str) {
    out.extend_from_slice(format!(".SH \"{title}\"\n").as_bytes());
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // Escape roff control characters at the start of a line and backslashes.
        let escaped = line.replace('\\', "\\e");
        let escaped = if escaped.starts_with('.') || escaped.starts_with('\'') {
            format!("\\&{escaped}")
        } else {
            escaped
        };
        out.extend_from_slice(format!("{escaped}\n.br\n").as_bytes());
    }
}

/// Every man page: `(file name, contents)`.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let root = Cli::command();
    let mut pages = vec![("layerfs.1".to_owned(), render(root.clone(), "layerfs")?)];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("layerfs-{}", sub.get_name());
        pages.push((format!("{name}.1"), render(sub.clone(), &name)?));
    }
    Ok(pages)
}

pub fn write_man(args: ManArgs) -> Result<()> {
    write_pages(&args.dir)
}

fn write_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, page) in man_pages()? {
        let path = dir.join(&name);
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn completions(args: CompletionArgs) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "layerfs", &mut std::io::stdout());
    Ok(())
}
