//! The README's quick start, as a newcomer runs it: its first command (the demo) verbatim, from
//! the repository root, with a new empty HOME, checking what it prints. The second command is
//! the test suite itself, which `.ci/run` runs verbatim; this test checks that it does.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};

/// The commands of the quick start's code block, comments stripped.
fn quick_start(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("the README has a Quick start section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the quick start has a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn the_readme_quick_start_works_for_a_new_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = quick_start(&readme);
    assert_eq!(
        commands.len(),
        2,
        "the quick start is two commands: {commands:?}"
    );

    // The second command is what CI runs.
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let last = ci
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(
        last, commands[1],
        ".ci/run must end with the README's test command"
    );

    assert!(
        util::tree::is_root(),
        "the demo installs packages and runs programs under chroot; CI runs the tests as root"
    );
    let home = tempfile::tempdir().unwrap();
    // A newcomer's toolchain stays where rustup put it; everything else starts empty.
    let real_home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME").map_or(real_home.join(".cargo"), Into::into);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map_or(real_home.join(".rustup"), Into::into);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&commands[0])
        .current_dir(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CARGO_HOME", cargo_home)
        .env("RUSTUP_HOME", rustup_home)
        .env("TERM", "dumb")
        .stdin(Stdio::null());
    let out = util::Running::spawn(cmd).wait();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} failed:\n{text}", commands[0]);
    for expected in [
        "layerfs: pulled 127.0.0.1:",
        "demo/debian:bookworm",
        "\"schemaVersion\": 2",
        "Debian GNU/Linux 12 (bookworm)",
        "/etc/shadow root:shadow 640",
        "Read-only file system",
        "Welcome to a layerfs demo",
        "layers, digest sha256:",
        "done. The store stays in",
    ] {
        assert!(
            text.contains(expected),
            "the demo did not print {expected:?}:\n{text}"
        );
    }
    // Written into the image, committed, pushed and pulled back: seen twice.
    assert!(
        text.matches("\nWelcome to a layerfs demo").count() >= 2,
        "{text}"
    );
    // Nothing left mounted.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains("layerfs-demo."),
        "the demo left a mount:\n{mounts}"
    );
}
