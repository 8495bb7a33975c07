//! `layerfs mount`: serve an image at a directory. By default the command starts a daemon
//! (this same binary with `--foreground`), waits until the mount answers, and returns; the
//! daemon's log goes to a file named in the output. `--foreground` stays attached.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::fs::{IdMap, LayerFs};

/// Environment variable naming the fd (as /proc/self/fd/N) a daemon reports readiness on.
const NOTIFY_ENV: &str = "LAYERFS_NOTIFY_FD";
/// How long `mount` waits for its daemon to answer; building the tree of a large image that
/// has no index yet (a `load`ed one) is the slow case.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The FUSE device.
const FUSE_DEVICE: &str = "/dev/fuse";
/// FUSE worker threads at most; more gain nothing on a read-only tree.
const MAX_THREADS: usize = 8;

const EXAMPLES: &str = "\
Examples:
  layerfs mount debian:12 /mnt/debian && ls /mnt/debian && layerfs umount /mnt/debian
  layerfs mount -o allow_other,default_permissions debian:12 /srv/rootfs
  layerfs mount -o uidmapping=0:1000:1,gidmapping=0:1000:1 debian:12 ~/rootfs
  layerfs mount --foreground debian:12 /mnt/debian
  layerfs mount --upper ~/changes debian:12 ~/rootfs   # writable; changes land in ~/changes";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The image (a reference as pulled, or a manifest digest prefix; left out when
    /// --lowerdir gives all the layers) and the directory to mount on
    #[arg(value_names = ["IMAGE", "MOUNTPOINT"], num_args = 1..=2, required = true)]
    pub targets: Vec<PathBuf>,

    /// Directories as lower layers, overlayfs style: the first is the top one; `\:` is a colon
    /// inside a name. With an image, its layers lie below them
    #[arg(long, value_name = "DIR[:DIR...]")]
    pub lowerdir: Option<String>,

    /// Stay attached; log to stderr; SIGINT/SIGTERM unmount
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount options, comma separated: allow_other, allow_root, default_permissions,
    /// uidmapping=C:H:N[:C:H:N...], gidmapping=..., ro, rw (with --upper), nodev, dev, nosuid,
    /// suid, noexec, exec, noatime, atime; fuse-overlayfs' squash_to_root, squash_to_uid=N,
    /// squash_to_gid=N, static_nlink, noacl, userxattr, volatile or fsync=0 (fsync and fsyncdir
    /// return at once, without syncing the upper directory); redirect_dir=off (renaming a
    /// directory with lower content answers EXDEV instead of copying it up); overlayfs'
    /// index=off, metacopy=off and xino=off, which describe what layerfs does anyway
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,

    /// FUSE worker threads [default: the number of CPUs, at most 8]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Memory for decompressed spans of compressed layers, in MiB
    #[arg(long, value_name = "MIB", default_value_t = crate::layer::DEFAULT_CACHE_BYTES >> 20)]
    pub cache_mib: u64,

    /// Make the mount writable: every change goes to DIR (created if missing), in overlayfs'
    /// upper-directory format; the image's layers are never modified
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,

    /// Log file of the background daemon [default: STORE/layerfs/logs/mount-<name>.log]
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

impl Args {
    /// The image named, if any.
    fn image(&self) -> Option<String> {
        (self.targets.len() == 2).then(|| self.targets[0].to_string_lossy().into_owned())
    }

    fn mountpoint(&self) -> &Path {
        self.targets.last().map_or(Path::new(""), PathBuf::as_path)
    }

    /// The lower directories, top first.
    fn lowerdirs(&self) -> Vec<PathBuf> {
        self.lowerdir.as_deref().map(split_dirs).unwrap_or_default()
    }
}

/// Split a `lowerdir=` list at unescaped colons.
fn split_dirs(list: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(PathBuf::from(std::mem::take(&mut cur))),
            _ => cur.push(c),
        }
    }
    out.push(PathBuf::from(cur));
    out.retain(|p| !p.as_os_str().is_empty());
    out
}

/// Parsed `-o` options.
#[derive(Debug, Default, Clone)]
struct MountOptions {
    allow_other: bool,
    allow_root: bool,
    default_permissions: bool,
    uid_map: IdMap,
    gid_map: IdMap,
    flags: Vec<fuser::MountOption>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
    static_nlink: bool,
    no_dir_rename: bool,
    volatile: bool,
    /// `rw` was asked for (needs --upper) or `ro`.
    rw: bool,
    ro: bool,
    /// The kernel's share of the options, as text (everything but the id mappings and `ro`).
    text: Vec<String>,
}

fn parse_options(opts: &[String]) -> Result<MountOptions> {
    use fuser::MountOption as M;
    let mut out = MountOptions::default();
    for opt in opts.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if !matches!(
            key,
            "uidmapping"
                | "gidmapping"
                | "ro"
                | "rw"
                | "squash_to_root"
                | "squash_to_uid"
                | "squash_to_gid"
                | "static_nlink"
                | "noacl"
                | "userxattr"
                | "redirect_dir"
                | "volatile"
                | "fsync"
                | "index"
                | "metacopy"
                | "xino"
        ) {
            out.text.push(opt.to_owned());
        }
        match (key, value) {
            ("allow_other", None) => out.allow_other = true,
            ("allow_root", None) => out.allow_root = true,
            ("default_permissions", None) => out.default_permissions = true,
            ("uidmapping", Some(v)) => {
                out.uid_map = v.parse().map_err(|e| anyhow::anyhow!("uidmapping: {e}"))?
            }
            ("gidmapping", Some(v)) => {
                out.gid_map = v.parse().map_err(|e| anyhow::anyhow!("gidmapping: {e}"))?
            }
            ("squash_to_root", None) => {
                out.squash_uid = Some(0);
                out.squash_gid = Some(0);
            }
            ("squash_to_uid", Some(v)) => {
                out.squash_uid = Some(v.parse().map_err(|_| anyhow::anyhow!("{opt}: not a uid"))?)
            }
            ("squash_to_gid", Some(v)) => {
                out.squash_gid = Some(v.parse().map_err(|_| anyhow::anyhow!("{opt}: not a gid"))?)
            }
            ("static_nlink", None) => out.static_nlink = true,
            ("redirect_dir", Some("on" | "follow")) => out.no_dir_rename = false,
            ("redirect_dir", Some("off" | "nofollow")) => out.no_dir_rename = true,
            // Neither ACLs nor trusted xattrs need switching off or on here: ACLs are not
            // interpreted, and the xattr namespace follows the daemon's privileges.
            ("noacl" | "userxattr", None) => {}
            ("volatile", None) | ("fsync", Some("0")) => out.volatile = true,
            ("fsync", Some("1")) => out.volatile = false,
            // Off is what layerfs does: no inode index, no metadata-only copy-up, inode numbers
            // of its own.
            ("index" | "metacopy" | "xino", Some("off")) => {}
            ("ro", None) => out.ro = true,
            ("rw", None) => out.rw = true,
            ("dev", None) => out.flags.push(M::Dev),
            ("nodev", None) => out.flags.push(M::NoDev),
            ("suid", None) => out.flags.push(M::Suid),
            ("nosuid", None) => out.flags.push(M::NoSuid),
            ("exec", None) => out.flags.push(M::Exec),
            ("noexec", None) => out.flags.push(M::NoExec),
            ("atime", None) => out.flags.push(M::Atime),
            ("noatime", None) => out.flags.push(M::NoAtime),
            _ => bail!("unknown mount option {opt:?} (see `layerfs mount --help`)"),
        }
    }
    if out.allow_other && out.allow_root {
        bail!("allow_other and allow_root exclude each other");
    }
    if out.rw && out.ro {
        bail!("rw and ro exclude each other");
    }
    Ok(out)
}

/// True if `path` is a mount point, per /proc/self/mountinfo.
fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|m| m == want)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn run(ctx: &Context, mut args: Args) -> Result<()> {
    let options = parse_options(&args.options)?;
    if options.rw && args.upper.is_none() {
        bail!("option rw: a writable mount needs an upper directory (--upper DIR)");
    }
    if options.ro && args.upper.is_some() {
        bail!("option ro: --upper makes the mount writable; leave out one of them");
    }
    if let Some(upper) = &args.upper {
        std::fs::create_dir_all(upper)
            .with_context(|| format!("cannot create upper directory {}", upper.display()))?;
        let upper = std::fs::canonicalize(upper)
            .with_context(|| format!("upper directory {} is not usable", upper.display()))?;
        args.upper = Some(upper);
    }
    if args.image().is_none() && args.lowerdir.is_none() {
        bail!(
            "give an image and a mount point (layerfs mount IMAGE MOUNTPOINT), or lower \
             directories with --lowerdir"
        );
    }
    let lowerdirs: Vec<PathBuf> = args
        .lowerdirs()
        .iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .with_context(|| format!("lower directory {} does not exist", d.display()))
        })
        .collect::<Result<_>>()?;
    if args.lowerdir.is_some() {
        if lowerdirs.is_empty() {
            bail!("--lowerdir names no directory");
        }
        let joined: Vec<String> = lowerdirs
            .iter()
            .map(|d| {
                d.to_string_lossy()
                    .replace('\\', "\\\\")
                    .replace(':', "\\:")
            })
            .collect();
        args.lowerdir = Some(joined.join(":"));
    }
    let target = args.mountpoint().to_owned();
    let mountpoint = std::fs::canonicalize(&target)
        .with_context(|| format!("mount point {} does not exist", target.display()))?;
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if is_mountpoint(&mountpoint) {
        bail!(
            "{} is already a mount point; unmount it first (`layerfs umount {0}`)",
            mountpoint.display()
        );
    }
    if args.foreground {
        serve(ctx, &args, options, &mountpoint)
    } else {
        start_daemon(ctx, &args, &mountpoint)
    }
}

fn start_daemon(ctx: &Context, args: &Args, mountpoint: &Path) -> Result<()> {
    // Lower directories alone need no store: a mount program may run where the default store
    // cannot be opened (as root of a rootless user namespace, say).
    let store = match ctx.store() {
        Ok(store) => Some(store),
        Err(e) if args.image().is_none() => {
            log::debug!("{e:#}; mounting without a store");
            None
        }
        Err(e) => return Err(e),
    };
    let (log, log_name) = match (&args.log, &store) {
        (Some(path), _) => (create_log(path)?, path.display().to_string()),
        (None, Some(store)) => {
            let dir = store.root().join("layerfs/logs");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let name: String = mountpoint
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let path = dir.join(format!("mount{name}.log"));
            (create_log(&path)?, path.display().to_string())
        }
        (None, None) => (
            unnamed_log()?,
            "the daemon's stderr, /proc/PID/fd/2 (no store to keep a log in; see --log)".into(),
        ),
    };
    let mut log_copy = log.try_clone().context("cannot share the log file")?;
    let (mut ready_r, ready_w) = std::io::pipe().context("cannot create a pipe")?;
    let exe = std::env::current_exe().context("cannot find the layerfs binary")?;
    let mut cmd = Command::new(exe);
    // The daemon's log says what it serves and why it stopped, unless told otherwise.
    if !ctx.quiet && std::env::var_os("RUST_LOG").is_none() {
        cmd.arg("-v");
    }
    if let Some(store) = &store {
        cmd.arg("--store").arg(store.root());
    }
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--cache-mib")
        .arg(args.cache_mib.to_string());
    if let Some(t) = args.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    if let Some(upper) = &args.upper {
        cmd.arg("--upper").arg(upper);
    }
    if let Some(dirs) = &args.lowerdir {
        cmd.arg("--lowerdir").arg(dirs);
    }
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    if let Some(image) = args.image() {
        cmd.arg(image);
    }
    cmd.arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // The child writes one byte to this fd when the mount serves requests; it sees the fd as
    // its stdout's neighbour through /proc/self/fd, so no fd juggling is needed.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    rustix::io::fcntl_setfd(&ready_w, rustix::io::FdFlags::empty())
        .context("cannot pass the readiness pipe")?;
    cmd.env(NOTIFY_ENV, fd.to_string());
    let mut child = cmd.spawn().context("cannot start the mount daemon")?;
    drop(ready_w);

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(matches!(ready_r.read(&mut b), Ok(1)));
    });
    let ready = rx.recv_timeout(READY_TIMEOUT).unwrap_or(false);
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let mut log = String::new();
        let _ =
            std::io::Seek::rewind(&mut log_copy).and_then(|()| log_copy.read_to_string(&mut log));
        let last: Vec<&str> = log.lines().rev().take(5).collect();
        let detail: Vec<&str> = last.into_iter().rev().collect();
        bail!(
            "the mount daemon did not start{}{} (log: {log_name})",
            if detail.is_empty() { "" } else { ": " },
            detail.join("; "),
        );
    }
    ctx.say(&format!(
        "mounted {} at {} (pid {}, log {})",
        args.image()
            .unwrap_or_else(|| "the lower directories".into()),
        mountpoint.display(),
        child.id(),
        log_name.replace("PID", &child.id().to_string())
    ));
    Ok(())
}

/// The log file at `path`, emptied, open for reading too (a failed start is read back).
fn create_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create log file {}", path.display()))
}

/// A log file with no name, in the temporary directory: it lives as long as the daemon.
fn unnamed_log() -> Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let fd = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("cannot create a log file in {}", dir.display()))?;
    Ok(fd.into())
}

fn serve(ctx: &Context, args: &Args, options: MountOptions, mountpoint: &Path) -> Result<()> {
    crate::sys::malloc::tune_for_daemon();
    let daemon = std::env::var(NOTIFY_ENV).ok();
    if daemon.is_some() {
        // Leave the caller's session so its hangup does not end the mount.
        let _ = rustix::process::setsid();
    }
    let image_name = args.image();
    let store = match &image_name {
        Some(_) => Some(ctx.store()?),
        None => None,
    };
    let found = match (&store, &image_name) {
        (Some(store), Some(name)) => Some(store.find(name)?),
        _ => None,
    };
    let cache = Arc::new(crate::layer::SpanCache::new(
        args.cache_mib.saturating_mul(1 << 20),
    ));
    let lowerdirs = args.lowerdirs();
    let name = match &found {
        Some(f) => f.name.clone(),
        None => format!("lowerdir={}", args.lowerdir.as_deref().unwrap_or_default()),
    };
    let blobs = match (&store, &found) {
        (Some(store), Some(f)) => Some((store, &f.descriptor)),
        _ => None,
    };
    let image = crate::mount::open_layers(blobs, &lowerdirs, cache)
        .with_context(|| format!("cannot open {name}"))?;
    // Building the tree freed about as much as it keeps: give whole free pages back.
    crate::sys::malloc::release_free_memory();
    let image = Arc::new(image);
    let fs_options = crate::fs::Options {
        uid_map: options.uid_map.clone(),
        gid_map: options.gid_map.clone(),
        squash_uid: options.squash_uid,
        squash_gid: options.squash_gid,
        static_nlink: options.static_nlink,
        no_dir_rename: options.no_dir_rename,
        volatile: options.volatile,
    };
    let mount = Mounting {
        name: &name,
        mountpoint,
        options: &options,
        threads: args.threads,
        writable: args.upper.is_some(),
        notify: daemon,
    };
    match &args.upper {
        Some(upper) => {
            if let (Some(store), Some(found)) = (&store, &found) {
                let record = crate::store::MountRecord {
                    mountpoint: mountpoint.to_owned(),
                    upper: upper.clone(),
                    image: found.name.clone(),
                    manifest: found.descriptor.digest.clone(),
                };
                if let Err(e) = store.record_mount(&record) {
                    log::warn!("cannot record the mount for `layerfs commit`: {e}");
                }
            }
            let fs = crate::fs::OverlayFs::new(image, fs_options, upper)
                .with_context(|| format!("cannot use upper directory {}", upper.display()))?;
            log::info!("writable: changes go to {}", upper.display());
            run_session(fs, mount)
        }
        None => run_session(LayerFs::new(image, fs_options), mount),
    }
}

/// What a session needs to know about the mount it serves.
struct Mounting<'a> {
    name: &'a str,
    mountpoint: &'a Path,
    options: &'a MountOptions,
    threads: Option<usize>,
    writable: bool,
    /// The readiness fd of a background daemon.
    notify: Option<String>,
}

/// Mount `fs` and serve it until unmounted.
fn run_session<F: fuser::Filesystem + Send + Sync + 'static>(fs: F, m: Mounting<'_>) -> Result<()> {
    let (options, mountpoint) = (m.options, m.mountpoint);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("layerfs:{}", m.name)),
        fuser::MountOption::Subtype("layerfs".into()),
    ];
    if !m.writable {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.mount_options.extend(options.flags.iter().cloned());
    if options.default_permissions {
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
    }
    config.acl = if options.allow_other {
        fuser::SessionACL::All
    } else if options.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    config.n_threads = Some(m.threads.unwrap_or(cpus).clamp(1, MAX_THREADS));
    config.clone_fd = true;

    let root = rustix::process::geteuid().is_root();
    if !root
        && let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(FUSE_DEVICE)
    {
        bail!(
            "cannot open {FUSE_DEVICE} ({e}): unprivileged FUSE mounts need it readable and writable by \
             you (Debian's default mode is 0666; fusermount3 cannot help otherwise)"
        );
    }
    let cant_mount = || {
        format!(
            "cannot mount on {} (is {FUSE_DEVICE} usable and fusermount3 installed?)",
            mountpoint.display()
        )
    };
    // Root mounts with mount(2) itself, as type fuse.layerfs so that `findmnt -t fuse.layerfs`
    // and mount(8) know it; others go through fuser, which asks fusermount3 (that names the
    // type from the subtype option too).
    let (session, unmount): (_, Box<dyn FnOnce() -> std::io::Result<()> + Send>) = if root {
        let device = mount_as_root(m.name, mountpoint, &options.text, config.acl, m.writable)
            .with_context(cant_mount)?;
        let acl = config.acl;
        let session = fuser::Session::from_fd(fs, device, acl, config).with_context(cant_mount)?;
        let target = mountpoint.to_owned();
        let unmount = move || {
            rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH)
                .map_err(std::io::Error::from)
        };
        (session, Box::new(unmount))
    } else {
        let mut session = fuser::Session::new(fs, mountpoint, &config).with_context(cant_mount)?;
        let mut unmounter = session.unmount_callable();
        (session, Box::new(move || unmounter.unmount()))
    };
    crate::fs::set_notifier(session.notifier());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting");
            if let Err(e) = unmount() {
                log::error!("unmount failed: {e}");
            }
        }
    });
    log::info!("serving {} at {}", m.name, mountpoint.display());
    if let Some(fd) = &m.notify {
        notify_ready(fd);
    }
    session.run().context("the FUSE session failed")?;
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Mount the FUSE device on `mountpoint` with mount(2), as type `fuse.layerfs`; returns the
/// open device for the session. `extra` are the user's `-o` options that are kernel options.
fn mount_as_root(
    name: &str,
    mountpoint: &Path,
    extra: &[String],
    acl: fuser::SessionACL,
    writable: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::mount::MountFlags;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)?;
    let fd = std::os::fd::OwnedFd::from(device);
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if !writable {
        flags |= MountFlags::RDONLY;
    }
    let mut data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    );
    for opt in extra {
        match opt.as_str() {
            "dev" => flags.remove(MountFlags::NODEV),
            "suid" => flags.remove(MountFlags::NOSUID),
            "nodev" => flags.insert(MountFlags::NODEV),
            "nosuid" => flags.insert(MountFlags::NOSUID),
            "noexec" => flags.insert(MountFlags::NOEXEC),
            "noatime" => flags.insert(MountFlags::NOATIME),
            "exec" | "atime" | "allow_other" | "allow_root" => {}
            other => {
                data.push(',');
                data.push_str(other);
            }
        }
    }
    if acl != fuser::SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        format!("layerfs:{name}"),
        mountpoint,
        "fuse.layerfs",
        flags,
        Some(data.as_c_str()),
    )?;
    Ok(fd)
}

fn notify_ready(fd: &str) {
    use std::io::Write;
    let path = format!("/proc/self/fd/{fd}");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(mut f) => {
            let _ = f.write_all(b"1");
        }
        Err(e) => log::warn!("cannot report readiness on {path}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "allow_other".into(),
            "default_permissions".into(),
            "uidmapping=0:1000:1".into(),
            "ro".into(),
            "nodev".into(),
        ])
        .unwrap();
        assert!(o.allow_other && o.default_permissions);
        assert_eq!(o.uid_map.to_host(0), 1000);
        assert_eq!(o.flags, vec![fuser::MountOption::NoDev]);
        for bad in ["bogus", "uidmapping=1:2", "allow_other=1"] {
            assert!(parse_options(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_options(&["allow_other".into(), "allow_root".into()]).is_err());
        assert!(parse_options(&["rw".into(), "ro".into()]).is_err());
    }
}
