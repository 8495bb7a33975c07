//! POSIX conformance: pjdfstest (the Rust suite from crates.io, which `.ci/run` installs) run
//! inside a writable mount, with the kernel checking permissions (`allow_other,
//! default_permissions`) as a system mount would. Every test must pass; a test that fails is
//! run once more on its own (a few compare timestamps within a short nap) and must pass then.

mod util;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use util::mount::MountGuard;
use util::tarball::{TarEntry, raw_layer};
use util::tree::is_root;
use util::{Compression, Flavor, ImageBuilder, Registry, Sandbox};

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 0.01
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

fn pjdfstest() -> PathBuf {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    ["/usr/local/bin/pjdfstest", "/root/.cargo/bin/pjdfstest"]
        .iter()
        .map(PathBuf::from)
        .chain([home.join(".cargo/bin/pjdfstest")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("pjdfstest is not installed: `cargo install --locked pjdfstest` (.ci/run does)")
        })
}

#[test]
fn pjdfstest_passes_in_a_writable_mount() {
    assert!(
        is_root(),
        "pjdfstest switches users; CI runs the tests as root"
    );
    let users = Command::new("id").arg("tests").output().unwrap();
    assert!(
        users.status.success(),
        "pjdfstest needs a user and group `tests` (useradd -U tests; .ci/run creates it)"
    );
    let pjd = pjdfstest();
    let registry = Registry::start();
    let sandbox = Sandbox::new();
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[TarEntry::dir("etc"), TarEntry::file("etc/motd", "lower\n")],
            Compression::Gzip,
        ))
        .build();
    registry.push_image("test/posix", "v1", &image);
    let reference = registry.reference("test/posix:v1");
    sandbox.ok(&["pull", &reference]);
    // pjdfstest's other users must reach the mount point.
    for dir in [sandbox.path(""), sandbox.path("mnt")] {
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let guard = MountGuard::mount(
        &sandbox,
        &reference,
        &sandbox.path("mnt"),
        &[
            "--upper",
            sandbox.path("upper").to_str().unwrap(),
            "-o",
            "allow_other,default_permissions",
        ],
    );
    let config = sandbox.path("pjdfstest.toml");
    fs::write(&config, CONFIG).unwrap();
    let dir = guard.path.join("pjdfstest");
    fs::create_dir(&dir).unwrap();
    let run = |filter: &[&str]| {
        let out = Command::new(&pjd)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .args(filter)
            .current_dir(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let log = run(&[]);
    let summary = log
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("pjdfstest printed no summary:\n{log}"))
        .to_owned();
    let failed: Vec<String> = log
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    // What each failure printed, up to the next test's line, for the log.
    for name in &failed {
        let detail: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.starts_with(name.as_str()))
            .take_while(|l| l.starts_with(name.as_str()) || !l.contains("::"))
            .take(40)
            .collect();
        eprintln!("{}", detail.join("\n"));
    }
    let mut still = Vec::new();
    for name in &failed {
        // A pattern matches by substring (`-e` wants names the output does not print), so
        // the rerun may take a few tests along: all of them must pass, and at least one run.
        let again = run(&[name]);
        let rerun = again.lines().find(|l| l.starts_with("Summary:"));
        if !rerun.is_some_and(|l| l.contains(" 0 failed") && !l.contains(" 0 passed")) {
            still.push(format!("{name}:\n{again}"));
        }
    }
    eprintln!("pjdfstest: {summary}; failed once, passed alone: {failed:?}");
    assert!(
        still.is_empty(),
        "pjdfstest failures in the mount:\n{}",
        still.join("\n")
    );
    assert!(
        summary.contains(" passed") && !summary.contains(" 0 passed"),
        "{summary}"
    );
    guard.unmount();
}
