//! FUSE mounts for tests: [`MountGuard`] runs `layerfs mount`, waits until the kernel lists the
//! mount point as a `fuse.layerfs` file system, and on drop (a failed assertion included)
//! unmounts it and waits for the daemon to exit, so that no test leaves a mount behind.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use super::tree::is_root;
use super::{Running, Sandbox};

/// How long a mount may take to appear after `layerfs mount` returned (it should be there at
/// once: the command returns when the daemon serves requests).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `--foreground` mount may take to appear (it builds the tree first).
const FOREGROUND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemon may take to exit once its mount is gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `fusermount3 -u` is retried while the mount is busy before going lazy.
const BUSY_RETRY: Duration = Duration::from_secs(3);

/// The file system type layerfs mounts should show in `/proc/self/mountinfo` (`fuse` with the
/// subtype `layerfs`).
pub const FSTYPE: &str = "fuse.layerfs";

/// Whether a mount is served by layerfs: a FUSE mount named `layerfs:IMAGE`. The exact type
/// ([`FSTYPE`]) is the mount tests' own assertion; the guard only needs to know that the FUSE
/// file system it waits for is there, so that one wrong detail does not hide every other test.
pub fn is_layerfs(m: &MountInfo) -> bool {
    m.fstype == FSTYPE || (m.fstype == "fuse" && m.source.starts_with("layerfs:"))
}

/// Fails the test with a clear message if FUSE cannot work here.
#[track_caller]
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE is not available: /dev/fuse is missing. The mount tests need it: load the fuse \
         module (`modprobe fuse`), or give the container the device (`--device /dev/fuse \
         --cap-add SYS_ADMIN`)."
    );
    assert!(
        Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "fusermount3 is missing: install fuse3 (run .ci/run's install step)"
    );
}

/// One line of `/proc/self/mountinfo`: where and what.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// The mounts this process sees.
pub fn mounts() -> Vec<MountInfo> {
    let info = fs::read("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let dash = fields.iter().position(|f| *f == b"-")?;
            Some(MountInfo {
                mountpoint: PathBuf::from(OsStr::from_bytes(&unescape(fields.get(4)?))),
                options: String::from_utf8_lossy(fields.get(5)?).into_owned(),
                fstype: String::from_utf8_lossy(fields.get(dash + 1)?).into_owned(),
                source: String::from_utf8_lossy(fields.get(dash + 2)?).into_owned(),
            })
        })
        .collect()
}

/// The mount at `path` (the last one, if several are stacked).
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mountpoint == path)
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && field.len() >= i + 4
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = (field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// How the daemon runs: detached (found through /proc) or as our own child (`--foreground`).
enum Daemon {
    Detached(Vec<u32>),
    Foreground(Child),
}

/// A mounted image; unmounts on drop and waits for the daemon to exit.
pub struct MountGuard {
    /// The canonical mount point.
    pub path: PathBuf,
    /// Where the daemon logs.
    pub log: PathBuf,
    daemon: Daemon,
    /// Prefix for the unmount command (e.g. `setpriv ...` for a user's mount).
    run_as: Vec<OsString>,
    done: bool,
}

impl MountGuard {
    /// `layerfs mount IMAGE MOUNTPOINT [extra...]` in `sandbox`, the mount point created if
    /// needed, the daemon's log in the sandbox.
    #[track_caller]
    pub fn mount(sandbox: &Sandbox, image: &str, mountpoint: &Path, extra: &[&str]) -> MountGuard {
        require_fuse();
        fs::create_dir_all(mountpoint).unwrap();
        let log = log_path(mountpoint);
        let mut cmd = sandbox.command(&["mount", image]);
        cmd.arg(mountpoint).arg("--log").arg(&log).args(extra);
        MountGuard::run(cmd, mountpoint, log, Vec::new())
    }

    /// Runs `cmd`, a complete `layerfs mount` command line (perhaps behind `setpriv`), that
    /// mounts on `mountpoint` and logs to `log`. `run_as` prefixes the unmount command.
    #[track_caller]
    pub fn run(cmd: Command, mountpoint: &Path, log: PathBuf, run_as: Vec<OsString>) -> MountGuard {
        require_fuse();
        let path = fs::canonicalize(mountpoint)
            .unwrap_or_else(|e| panic!("mount point {}: {e}", mountpoint.display()));
        let description = format!("{cmd:?}");
        let out = Running::spawn(cmd).wait();
        // Whatever the outcome, take charge of a daemon that may have started.
        let mut guard = MountGuard {
            daemon: Daemon::Detached(daemon_pids(&path)),
            path,
            log,
            run_as,
            done: false,
        };
        if !out.status.success() {
            panic!(
                "{description} failed: {}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                guard.read_log()
            );
        }
        guard.wait_mounted(APPEAR_TIMEOUT, None);
        if let Daemon::Detached(pids) = &mut guard.daemon {
            *pids = daemon_pids(&guard.path);
            assert!(
                !pids.is_empty(),
                "{} is mounted but no `layerfs mount --foreground` process serves it",
                guard.path.display()
            );
        }
        guard
    }

    /// Takes charge of a mount something else made (mount(8), a helper) at `mountpoint`.
    #[track_caller]
    pub fn adopt(mountpoint: &Path) -> MountGuard {
        let path = fs::canonicalize(mountpoint).unwrap();
        let mut guard = MountGuard {
            daemon: Daemon::Detached(daemon_pids(&path)),
            log: log_path(&path),
            path,
            run_as: Vec::new(),
            done: false,
        };
        guard.wait_mounted(APPEAR_TIMEOUT, None);
        if let Daemon::Detached(pids) = &mut guard.daemon {
            *pids = daemon_pids(&guard.path);
        }
        guard
    }

    /// `layerfs mount --foreground IMAGE MOUNTPOINT [extra...]` as a child of the test.
    #[track_caller]
    pub fn foreground(
        sandbox: &Sandbox,
        image: &str,
        mountpoint: &Path,
        extra: &[&str],
    ) -> MountGuard {
        require_fuse();
        fs::create_dir_all(mountpoint).unwrap();
        let path = fs::canonicalize(mountpoint).unwrap();
        let log = log_path(mountpoint);
        let mut cmd = sandbox.command(&["mount", "--foreground", image]);
        cmd.arg(&path)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut guard = MountGuard {
            path,
            log,
            daemon: Daemon::Foreground(child),
            run_as: Vec::new(),
            done: false,
        };
        guard.wait_mounted(FOREGROUND_TIMEOUT, Some(&format!("{cmd:?}")));
        guard
    }

    /// The daemon's log so far.
    pub fn read_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({}: {e})", self.log.display()))
    }

    /// Whether the kernel still lists a mount at the mount point.
    pub fn is_mounted(&self) -> bool {
        mount_at(&self.path).is_some()
    }

    /// The kernel's line for this mount.
    #[track_caller]
    pub fn info(&self) -> MountInfo {
        mount_at(&self.path).unwrap_or_else(|| panic!("{} is not mounted", self.path.display()))
    }

    /// The pids of the detached daemon (empty for `--foreground` mounts).
    pub fn daemon_pids(&self) -> Vec<u32> {
        match &self.daemon {
            Daemon::Detached(pids) => pids.clone(),
            Daemon::Foreground(child) => vec![child.id()],
        }
    }

    #[track_caller]
    fn wait_mounted(&mut self, timeout: Duration, what: Option<&str>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = mount_at(&self.path) {
                assert!(
                    is_layerfs(&m),
                    "{} is mounted, but not by layerfs: {m:?}",
                    self.path.display()
                );
                return;
            }
            if let Daemon::Foreground(child) = &mut self.daemon
                && let Some(status) = child.try_wait().unwrap()
            {
                panic!(
                    "{} exited with {status} before the mount appeared; log:\n{}",
                    what.unwrap_or("layerfs mount --foreground"),
                    self.read_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not appear as a {FSTYPE} mount within {timeout:?}; daemon log:\n{}",
                self.path.display(),
                self.read_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Marks the mount as ended by the test itself (e.g. with `layerfs umount`) and checks
    /// that it is gone and the daemon exited; a `--foreground` daemon must exit with 0.
    #[track_caller]
    pub fn assert_ended(mut self) {
        assert!(
            !self.is_mounted(),
            "{} is still mounted",
            self.path.display()
        );
        let result = self.wait_daemon();
        self.done = true;
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// Unmounts (explicitly, asserting it worked) and waits for the daemon.
    #[track_caller]
    pub fn unmount(mut self) {
        let result = self.cleanup();
        self.done = true;
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// Unmount with `fusermount3 -u` (retried while busy), then lazily; then wait for the
    /// daemon, killing it if it outstays [`EXIT_TIMEOUT`].
    fn cleanup(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        let deadline = Instant::now() + BUSY_RETRY;
        while self.is_mounted() {
            let out = self.fusermount("-u");
            if !self.is_mounted() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!(
                    "fusermount3 -u {} failed: {}",
                    self.path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                let _ = self.fusermount("-uz");
                if self.is_mounted() {
                    let _ = Command::new("umount").arg("-l").arg(&self.path).output();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self.wait_daemon() {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn fusermount(&self, flag: &str) -> Output {
        let mut cmd = match self.run_as.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("fusermount3");
                c
            }
            None => Command::new("fusermount3"),
        };
        cmd.arg(flag)
            .arg(&self.path)
            .output()
            .expect("run fusermount3")
    }

    fn wait_daemon(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        match &mut self.daemon {
            Daemon::Foreground(child) => loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "the foreground daemon exited with {status} after unmount; log:\n{}",
                            fs::read_to_string(&self.log).unwrap_or_default()
                        ))
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the foreground daemon did not exit within {EXIT_TIMEOUT:?} of the \
                         unmount; killed it"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            },
            Daemon::Detached(pids) => loop {
                let alive: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
                if alive.is_empty() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    for pid in &alive {
                        let _ = Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .output();
                    }
                    return Err(format!(
                        "daemon pid(s) {alive:?} did not exit within {EXIT_TIMEOUT:?} of the \
                         unmount of {}; killed them. Log:\n{}",
                        self.path.display(),
                        fs::read_to_string(&self.log).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            },
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.cleanup() {
            if std::thread::panicking() {
                eprintln!("while cleaning up after a failure: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// The log file for a mount at `mountpoint`: beside it, named after it.
fn log_path(mountpoint: &Path) -> PathBuf {
    let name = mountpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mnt".into());
    mountpoint.with_file_name(format!("{name}.mount.log"))
}

/// Processes serving `mountpoint`: `... mount --foreground ... MOUNTPOINT` command lines.
pub fn daemon_pids(mountpoint: &Path) -> Vec<u32> {
    let want = mountpoint.as_os_str().as_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            args.contains(&&b"mount"[..])
                && args.iter().any(|a| *a == b"--foreground" || *a == b"-f")
                && args.contains(&want)
                && alive(pid)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The uid and gid unprivileged tests run as when the suite runs as root (`nobody`).
pub const NOBODY: u32 = 65534;

/// `setpriv` arguments that run a program as `uid:gid` with no supplementary groups.
pub fn setpriv(uid: u32, gid: u32) -> Vec<OsString> {
    [
        "setpriv",
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
        "--",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// `program args...` behind `prefix` (empty: as ourselves), with an environment holding only
/// `HOME` and a standard `PATH`.
pub fn command_as(prefix: &[OsString], home: &Path, program: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// A directory an unprivileged user owns, with their own store and a copy of the binary they
/// can execute (the build tree may not be reachable for them).
pub struct UserSpace {
    _dir: tempfile::TempDir,
    pub base: PathBuf,
    prefix: Vec<std::ffi::OsString>,
    bin: PathBuf,
    pub store: PathBuf,
    pub home: PathBuf,
}

impl UserSpace {
    /// As root: `nobody`'s space, commands run through setpriv. Otherwise: our own.
    pub fn new() -> UserSpace {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-user-")
            .tempdir()
            .unwrap();
        let base = dir.path().to_path_buf();
        let bin = base.join("bin/layerfs");
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_layerfs"), &bin).unwrap();
        for d in [&base, &base.join("bin")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let (store, home) = (base.join("store"), base.join("home"));
        let prefix = if is_root() {
            for d in [&base, &base.join("bin")] {
                std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
            }
            setpriv(NOBODY, NOBODY)
        } else {
            Vec::new()
        };
        UserSpace {
            _dir: dir,
            base,
            prefix,
            bin,
            store,
            home,
        }
    }

    /// `layerfs --store STORE ARGS...` as the user.
    pub fn layerfs(&self, args: &[&str]) -> Command {
        let mut all: Vec<&std::ffi::OsStr> = vec!["--store".as_ref(), self.store.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        command_as(&self.prefix, &self.home, &self.bin, &all)
    }

    /// `sh -c SCRIPT` as the user.
    pub fn sh(&self, script: &str) -> Output {
        command_as(
            &self.prefix,
            &self.home,
            Path::new("/bin/sh"),
            &["-c".as_ref(), script.as_ref()],
        )
        .output()
        .unwrap()
    }

    /// Mounts `reference` at `BASE/NAME` as the user, with `extra` arguments.
    pub fn mount(&self, reference: &str, name: &str, extra: &[&str]) -> MountGuard {
        let mnt = self.base.join(name);
        let log = self.base.join(format!("{name}.log"));
        let mkdir = self.sh(&format!("mkdir -p {}", mnt.display()));
        assert!(mkdir.status.success(), "mkdir: {mkdir:?}");
        let mut args = vec!["mount", reference, mnt.to_str().unwrap()];
        args.extend(["--log", log.to_str().unwrap()]);
        args.extend(extra);
        MountGuard::run(self.layerfs(&args), &mnt, log, self.prefix.clone())
    }
}

/// Output of a shell command, asserting success.
#[track_caller]
pub fn sh_ok(user: &UserSpace, script: &str) -> String {
    let out = user.sh(script);
    assert!(
        out.status.success(),
        "sh -c {script:?} as the user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
