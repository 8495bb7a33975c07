//! containers-registries.conf(5) against Debian's docker-registry: mirrors tried before the
//! primary location, location rewriting, blocked registries, short-name aliases and search
//! registries, and the short-name modes.

mod util;

use std::fs;

use util::tarball::{TarEntry, raw_layer};
use util::{Compression, Flavor, ImageBuilder, Registry, Sandbox, assert_stderr_mentions};

fn image(text: &str) -> util::Image {
    ImageBuilder::new(Flavor::Oci)
        .layer(raw_layer(
            &[TarEntry::dir("etc"), TarEntry::file("etc/motd", text)],
            Compression::Gzip,
        ))
        .build()
}

/// Write `text` as the sandbox's registries.conf and return the flag pair that selects it.
fn conf(sandbox: &Sandbox, text: &str) -> [String; 2] {
    let path = sandbox.path("registries.conf");
    fs::write(&path, text).unwrap();
    ["--registries-conf".into(), path.to_str().unwrap().into()]
}

fn pull(sandbox: &Sandbox, conf: &[String; 2], name: &str) -> std::process::Output {
    sandbox.run(&["pull", &conf[0], &conf[1], "--format", "json", name])
}

#[test]
fn mirrors_come_first_and_the_image_keeps_its_name() {
    let mirror = Registry::start();
    let primary = Registry::start();
    mirror.push_image("hub/team/app", "v1", &image("from the mirror\n"));
    primary.push_image("team/app", "v1", &image("from the primary\n"));
    primary.push_image("team/app", "v2", &image("only on the primary\n"));
    // A closed port: a mirror that cannot be reached is skipped.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sandbox = Sandbox::new();
    let flags = conf(
        &sandbox,
        &format!(
            r#"
[[registry]]
prefix = "registry.example/team"
location = "{primary}/team"
[[registry.mirror]]
location = "127.0.0.1:{dead}/nothing"
[[registry.mirror]]
location = "{mirror}/hub/team"
"#,
            primary = primary.host(),
            mirror = mirror.host(),
        ),
    );
    let out = pull(&sandbox, &flags, "registry.example/team/app:v1");
    util::assert_success(&out);
    let v = util::pull_json(&out);
    assert_eq!(v["reference"], "registry.example/team/app:v1");
    let inspected = sandbox.inspect("registry.example/team/app:v1");
    assert_eq!(inspected["reference"], "registry.example/team/app:v1");
    sandbox.ok(&[
        "unpack",
        "registry.example/team/app:v1",
        sandbox.path("root1").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(sandbox.path("root1/etc/motd")).unwrap(),
        "from the mirror\n"
    );
    assert!(
        primary
            .access_log()
            .lines()
            .all(|l| !l.contains("GET /v2/team/app/manifests/v1")),
        "the primary was asked although the mirror had the image"
    );

    // Not on any mirror: the relocated primary serves it.
    let out = pull(&sandbox, &flags, "registry.example/team/app:v2");
    util::assert_success(&out);
    sandbox.ok(&[
        "unpack",
        "registry.example/team/app:v2",
        sandbox.path("root2").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(sandbox.path("root2/etc/motd")).unwrap(),
        "only on the primary\n"
    );

    // Nowhere at all: the primary's answer is the error.
    let out = pull(&sandbox, &flags, "registry.example/team/app:v3");
    assert_eq!(out.status.code(), Some(3), "{}", util::show(&out));
}

#[test]
fn blocked_registries_are_refused() {
    let registry = Registry::start();
    registry.push_image("team/app", "v1", &image("x\n"));
    let sandbox = Sandbox::new();
    let flags = conf(
        &sandbox,
        &format!(
            "[[registry]]\nlocation = \"{}/team\"\nblocked = true\n",
            registry.host()
        ),
    );
    let out = pull(&sandbox, &flags, &registry.reference("team/app:v1"));
    assert_eq!(out.status.code(), Some(4), "{}", util::show(&out));
    assert_stderr_mentions(&out, &["blocked", "registries.conf"]);
    assert!(sandbox.image_refs().is_empty());
    // Another namespace of the same registry is not.
    registry.push_image("other/app", "v1", &image("y\n"));
    util::assert_success(&pull(&sandbox, &flags, &registry.reference("other/app:v1")));
}

#[test]
fn short_names_use_aliases_then_search_registries() {
    let first = Registry::start();
    let second = Registry::start();
    second.push_image("tools/probe", "1.0", &image("probe\n"));
    first.push_image("tools/other", "1.0", &image("other\n"));
    let sandbox = Sandbox::new();
    let flags = conf(
        &sandbox,
        &format!(
            r#"
unqualified-search-registries = ["{first}", "{second}"]
short-name-mode = "permissive"
[aliases]
"pinned" = "{first}/tools/other"
"#,
            first = first.host(),
            second = second.host(),
        ),
    );
    // The first search registry lacks it; the second has it.
    let out = pull(&sandbox, &flags, "tools/probe:1.0");
    util::assert_success(&out);
    let stored = second.reference("tools/probe:1.0");
    assert_eq!(util::pull_json(&out)["reference"], stored.as_str());
    // The short name finds the stored image again.
    assert_eq!(
        sandbox.inspect("tools/probe:1.0")["reference"],
        stored.as_str()
    );

    let out = pull(&sandbox, &flags, "pinned:1.0");
    util::assert_success(&out);
    assert_eq!(
        util::pull_json(&out)["reference"],
        first.reference("tools/other:1.0").as_str()
    );

    // Enforcing mode cannot choose between two search registries without asking.
    let strict = conf(
        &sandbox,
        &format!(
            "unqualified-search-registries = [\"{}\", \"{}\"]\nshort-name-mode = \"enforcing\"\n",
            first.host(),
            second.host()
        ),
    );
    let out = pull(&sandbox, &strict, "tools/probe:1.0");
    assert_eq!(out.status.code(), Some(2), "{}", util::show(&out));
    assert_stderr_mentions(&out, &["ambiguous", &first.host(), &second.host()]);

    // A broken file is an error that names it, not silence.
    let broken = conf(&sandbox, "unqualified-search-registries = \"not a list\"\n");
    let out = pull(&sandbox, &broken, "tools/probe:1.0");
    util::assert_failure(&out);
    assert_stderr_mentions(&out, &["registries.conf"]);
}

/// A `docker-credential-NAME` program in `dir` that answers for `server` only and records
/// each request in `dir/NAME.log`.
fn credential_helper(dir: &std::path::Path, name: &str, server: &str, user: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        r#"#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> '{log}'
if [ "$server" = '{server}' ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"#,
        log = log.display(),
    );
    let path = dir.join(format!("docker-credential-{name}"));
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_from_the_docker_config() {
    let basic = Registry::with_basic_auth("alice", "s3cret");
    let bearer = Registry::with_token_auth("bob", "hunter2", &[]);
    for r in [&basic, &bearer] {
        r.push_image("private/img", "v1", &image("secret\n"));
    }
    let sandbox = Sandbox::new();
    let bin = sandbox.path("bin");
    fs::create_dir_all(&bin).unwrap();
    // credHelpers for the Basic registry; credsStore (the default helper) answers with an
    // identity token for the Bearer one.
    credential_helper(&bin, "per-host", &basic.host(), "alice", "s3cret");
    credential_helper(&bin, "store", &bearer.host(), "<token>", "refresh-bob");
    let docker = sandbox.path("home/.docker");
    fs::create_dir_all(&docker).unwrap();
    let config = serde_json::json!({
        "credsStore": "store",
        "credHelpers": { basic.host(): "per-host" },
        "auths": {},
    });
    fs::write(docker.join("config.json"), config.to_string()).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |reference: &str| {
        let mut cmd = sandbox.command(&["pull", reference]);
        cmd.env("PATH", &path);
        util::Running::spawn(cmd).wait()
    };
    for registry in [&basic, &bearer] {
        let reference = registry.reference("private/img:v1");
        let out = run(&reference);
        util::assert_success(&out);
        assert!(sandbox.image_refs().contains_key(&reference));
    }
    let asked = |name: &str| fs::read_to_string(bin.join(format!("{name}.log"))).unwrap();
    assert_eq!(asked("per-host").trim(), basic.host());
    assert!(asked("store").lines().all(|l| l == bearer.host()));

    // A helper that knows nothing leaves the pull anonymous, and the registry's refusal is
    // the error.
    let other = Registry::with_basic_auth("carol", "pw");
    other.push_image("private/img", "v1", &image("x\n"));
    let out = run(&other.reference("private/img:v1"));
    assert_eq!(out.status.code(), Some(4), "{}", util::show(&out));
}
