//! mount(8) integration: `layerfs` called the way mount helpers are.
//!
//! `mount -t fuse.layerfs IMAGE MNT -o store=DIR,upper=DIR,allow_other` runs fuse3's
//! `mount.fuse3`, which runs `layerfs IMAGE MNT -o OPTIONS`; `/etc/fstab` lines take the same
//! route, and a `mount.fuse.layerfs` link to the binary is called the same way by mount(8)
//! itself. Such a command line is rewritten here into `layerfs [--store DIR] mount ...` before
//! the normal parser sees it. Options that only mean something to mount(8) or fstab
//! (`defaults`, `noauto`, `nofail`, `_netdev`, `user`, `x-*`, ...) are dropped.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Names the binary answers to as a mount helper.
const HELPER_NAMES: &[&str] = &["mount.fuse.layerfs", "mount.layerfs"];

/// Options that concern mount(8), fstab or fuse3's helper, never the file system.
const DROPPED: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
    "sw", "loop",
];

/// The `layerfs mount` command line for a helper-style invocation, `None` when `args` is an
/// ordinary one (its first argument is an option or a subcommand).
pub fn rewrite(args: &[OsString], subcommands: &[String]) -> Option<Result<Vec<OsString>, String>> {
    let argv0 = args.first()?;
    let base = std::path::Path::new(argv0)
        .file_name()
        .map(OsStr::as_bytes)
        .unwrap_or_default();
    let as_helper = HELPER_NAMES.iter().any(|n| base == n.as_bytes());
    let first = args.get(1)?;
    // fuse-overlayfs' callers (containers-storage's mount_program) start with `-o` or `-f`,
    // which no layerfs command begins with.
    let fuse_style =
        first.as_bytes().starts_with(b"-o") || matches!(first.as_bytes(), b"-f" | b"-d");
    let first_is_command = !fuse_style
        && (first.as_bytes().starts_with(b"-")
            || subcommands.iter().any(|s| s.as_bytes() == first.as_bytes()));
    if !as_helper && first_is_command {
        return None;
    }
    Some(translate(&args[1..], rustix::process::geteuid().is_root()))
}

/// The rewritten command line; `root`: the caller is root.
fn translate(args: &[OsString], root: bool) -> Result<Vec<OsString>, String> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut verbose = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let bytes = a.as_bytes();
        match bytes {
            b"-o" => {
                let v = it.next().ok_or("-o needs a value")?;
                options.push(v.to_string_lossy().into_owned());
            }
            b"-f" => foreground = true,
            b"-d" | b"--debug" | b"-v" => verbose = true,
            // mount(8)'s "no mtab", "sloppy" and "fake" flags.
            b"-n" | b"-s" => {}
            _ if bytes.starts_with(b"-o") => {
                options.push(String::from_utf8_lossy(&bytes[2..]).into_owned());
            }
            _ if bytes.starts_with(b"-") && bytes.len() > 1 => {
                return Err(format!("unknown flag {} for a mount", a.to_string_lossy()));
            }
            _ => positional.push(a.clone()),
        }
    }
    let lowerdir = options
        .iter()
        .flat_map(|o| split_options(o))
        .find_map(|o| o.strip_prefix("lowerdir=").map(str::to_owned));
    let mut image: Option<OsString> = None;
    let mountpoint = match (positional.as_slice(), &lowerdir) {
        // With lower directories the source is only a name, as for fuse-overlayfs.
        ([m], Some(_)) | ([_, m], Some(_)) => m.clone(),
        ([s, m], None) => {
            image = Some(s.clone());
            m.clone()
        }
        ([_], None) => {
            return Err("give an image and a mount point: layerfs IMAGE MOUNTPOINT -o ...".into());
        }
        _ => return Err("expected: layerfs IMAGE MOUNTPOINT [-o OPTIONS]".into()),
    };
    let mut store = None;
    let mut upper = None;
    let mut log = None;
    let mut cache = None;
    let mut rest = Vec::new();
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("store", Some(v)) => store = Some(v.to_owned()),
            ("upper" | "upperdir", Some(v)) => upper = Some(v.to_owned()),
            // An overlayfs-style work directory: copy-up needs none.
            ("workdir", Some(_)) => {}
            ("log", Some(v)) => log = Some(v.to_owned()),
            ("cache_mib", Some(v)) => cache = Some(v.to_owned()),
            ("lowerdir", Some(_)) => {}
            ("image", Some(v)) => image = Some(v.into()),
            ("fsname" | "subtype" | "comment" | "source", Some(_)) => {}
            (k, _) if DROPPED.contains(&k) || k.starts_with("x-") => {}
            _ => rest.push(opt.to_owned()),
        }
    }
    let mut out: Vec<OsString> = vec!["layerfs".into()];
    if verbose {
        out.push("-v".into());
    }
    if let Some(s) = store {
        out.extend(["--store".into(), s.into()]);
    }
    out.push("mount".into());
    if let Some(l) = lowerdir {
        out.extend(["--lowerdir".into(), l.into()]);
    }
    out.extend(image);
    out.push(mountpoint);
    if let Some(u) = upper {
        out.extend(["--upper".into(), u.into()]);
    }
    if let Some(l) = log {
        out.extend(["--log".into(), l.into()]);
    }
    if let Some(c) = cache {
        out.extend(["--cache-mib".into(), c.into()]);
    }
    if foreground {
        out.push("--foreground".into());
    }
    // A system mount made by root serves every user with the kernel checking permissions,
    // as fuse-overlayfs does when root runs it.
    if root {
        for (opt, alternatives) in [
            ("allow_other", &["allow_other", "allow_root"][..]),
            ("default_permissions", &["default_permissions"][..]),
        ] {
            if !rest.iter().any(|r| alternatives.contains(&r.as_str())) {
                rest.push(opt.to_owned());
            }
        }
    }
    if !rest.is_empty() {
        out.extend(["-o".into(), rest.join(",").into()]);
    }
    Ok(out)
}

/// Split an `-o` value at commas that are not escaped with a backslash (a colon escape in
/// `lowerdir=` stays as it is for the next parser).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|o| !o.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Option<Result<Vec<String>, String>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let subs = vec!["mount".to_owned(), "pull".to_owned()];
        let _helper_style = rewrite(&args, &subs)?;
        Some(
            translate(&args[1..], false)
                .map(|v| v.iter().map(|s| s.to_string_lossy().into_owned()).collect()),
        )
    }

    #[test]
    fn root_mounts_serve_everyone_with_kernel_checks() {
        let args: Vec<OsString> = ["img", "/m", "-o", "allow_root"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = translate(&args, true).unwrap();
        assert_eq!(
            out.last().map(|s| s.to_string_lossy().into_owned()),
            Some("allow_root,default_permissions".to_owned())
        );
    }

    #[test]
    fn helper_command_lines() {
        assert_eq!(run(&["layerfs", "mount", "x", "/m"]), None);
        assert_eq!(run(&["layerfs", "--store", "s", "pull", "x"]), None);
        assert_eq!(
            run(&[
                "layerfs",
                "debian:12",
                "/mnt",
                "-o",
                "rw,store=/s,upper=/u,allow_other,noauto,nofail,_netdev,x-systemd.automount,dev,suid"
            ]),
            Some(Ok(vec![
                "layerfs",
                "--store",
                "/s",
                "mount",
                "debian:12",
                "/mnt",
                "--upper",
                "/u",
                "-o",
                "rw,allow_other,dev,suid"
            ]
            .into_iter()
            .map(String::from)
            .collect()))
        );
        assert_eq!(
            run(&[
                "/sbin/mount.fuse.layerfs",
                "img",
                "/m",
                "-n",
                "-oro,defaults",
                "-f"
            ]),
            Some(Ok(vec![
                "layerfs",
                "mount",
                "img",
                "/m",
                "--foreground",
                "-o",
                "ro"
            ]
            .into_iter()
            .map(String::from)
            .collect()))
        );
        assert!(matches!(run(&["layerfs", "img"]), Some(Err(_))));
        assert_eq!(
            run(&[
                "fuse-overlayfs",
                "-o",
                "lowerdir=/l1:/l\\:2,upperdir=/u,workdir=/w,squash_to_root",
                "/m"
            ]),
            Some(Ok(vec![
                "layerfs",
                "mount",
                "--lowerdir",
                "/l1:/l\\:2",
                "/m",
                "--upper",
                "/u",
                "-o",
                "squash_to_root"
            ]
            .into_iter()
            .map(String::from)
            .collect()))
        );
    }
}
