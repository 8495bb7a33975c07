//! containers-registries.conf(5), as podman, buildah and skopeo read it: where an image name
//! is really fetched from (location rewriting and mirrors), which registries speak plain HTTP
//! or are blocked, and how a short name (`debian`) becomes a full one (aliases and
//! unqualified-search registries).
//!
//! Files: `$CONTAINERS_REGISTRIES_CONF` alone when set; otherwise
//! `~/.config/containers/registries.conf` if it exists, else `/etc/containers/registries.conf`,
//! then the drop-ins `registries.conf.d/*.conf` of `/etc/containers` and
//! `~/.config/containers`, in name order. A drop-in replaces the search list and mode it sets,
//! adds or erases (empty value) aliases, and replaces a `[[registry]]` table with the same
//! prefix. The version 1 format (`[registries.search|insecure|block]`) is read too. With no
//! file at all, nothing changes: short names mean Docker Hub, as with docker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::reference::{self, Reference};

/// Largest configuration file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid registries.conf: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("pulling {name} is blocked by {path} ([[registry]] prefix {prefix:?})")]
    Blocked {
        name: String,
        prefix: String,
        path: PathBuf,
    },
    #[error(
        "the short name {name:?} is ambiguous: short-name-mode is \"enforcing\" and it may come \
         from any of {}; use a full name or add an alias to {}",
        candidates.join(", "), path.display()
    )]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
        path: PathBuf,
    },
    #[error("{context}, which is not an image reference: {source}")]
    BadName {
        context: String,
        source: Box<reference::Error>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShortNameMode {
    Enforcing,
    #[default]
    Permissive,
    Disabled,
}

/// Which pulls a mirror serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum PullFrom {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFrom,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    prefix: String,
    /// Empty for a wildcard prefix (`*.example.com`), which cannot be relocated.
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
    /// The file that defined it, for messages.
    file: PathBuf,
}

/// The merged configuration.
#[derive(Clone, Debug, Default)]
pub struct RegistriesConf {
    search: Vec<String>,
    mode: ShortNameMode,
    aliases: BTreeMap<String, (String, PathBuf)>,
    entries: Vec<Entry>,
    /// Files read, in order.
    files: Vec<PathBuf>,
}

/// One place to try an image at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub reference: Reference,
    /// Plain HTTP (the table or mirror says `insecure = true`).
    pub insecure: bool,
    /// A mirror rather than the primary location.
    pub mirror: bool,
}

/// The raw TOML, version 2 and version 1 keys together.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    unqualified_search_registries: Option<Vec<String>>,
    short_name_mode: Option<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    registry: Vec<RawEntry>,
    registries: Option<RawV1>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawEntry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct RawV1 {
    search: Option<RawList>,
    insecure: Option<RawList>,
    block: Option<RawList>,
}

#[derive(serde::Deserialize, Default)]
struct RawList {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistriesConf {
    /// Read the configuration the containers tools would read; `explicit` (a command-line
    /// flag or `$CONTAINERS_REGISTRIES_CONF`) replaces the search for files.
    pub fn load(explicit: Option<&Path>) -> Result<RegistriesConf, Error> {
        let mut conf = RegistriesConf::default();
        if let Some(path) = explicit {
            conf.merge_file(path)?;
            return Ok(conf);
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config/containers"));
        let system = Path::new("/etc/containers");
        let main = home
            .as_ref()
            .map(|h| h.join("registries.conf"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| system.join("registries.conf"));
        if main.is_file() {
            conf.merge_file(&main)?;
        }
        for dir in std::iter::once(system.to_path_buf()).chain(home) {
            let Ok(list) = std::fs::read_dir(dir.join("registries.conf.d")) else {
                continue;
            };
            let mut drop_ins: Vec<PathBuf> = list
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                .collect();
            drop_ins.sort();
            for path in drop_ins {
                conf.merge_file(&path)?;
            }
        }
        Ok(conf)
    }

    /// Parse `text` as if read from `path` (for tests and `load`).
    pub fn parse(text: &str, path: &Path) -> Result<RegistriesConf, Error> {
        let mut conf = RegistriesConf::default();
        conf.merge(text, path)?;
        Ok(conf)
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), Error> {
        use std::io::Read as _;
        let read = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(read)?;
        self.merge(&text, path)
    }

    fn merge(&mut self, text: &str, path: &Path) -> Result<(), Error> {
        let invalid = |why: String| Error::Invalid {
            path: path.to_owned(),
            why,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        self.files.push(path.to_owned());
        if let Some(v1) = &raw.registries {
            if !raw.registry.is_empty() || raw.unqualified_search_registries.is_some() {
                return Err(invalid(
                    "it mixes the version 1 [registries.*] tables with version 2 keys".into(),
                ));
            }
            if let Some(search) = &v1.search {
                self.search = search.registries.clone();
            }
            for (list, insecure) in [(&v1.insecure, true), (&v1.block, false)] {
                for location in list.iter().flat_map(|l| &l.registries) {
                    self.put(Entry {
                        prefix: location.clone(),
                        location: location.clone(),
                        insecure,
                        blocked: !insecure,
                        mirror_by_digest_only: false,
                        mirrors: Vec::new(),
                        file: path.to_owned(),
                    });
                }
            }
            return Ok(());
        }
        if let Some(search) = raw.unqualified_search_registries {
            self.search = search;
        }
        if let Some(mode) = raw.short_name_mode.as_deref() {
            self.mode = match mode {
                "enforcing" => ShortNameMode::Enforcing,
                "permissive" | "" => ShortNameMode::Permissive,
                "disabled" => ShortNameMode::Disabled,
                other => {
                    return Err(invalid(format!(
                        "short-name-mode {other:?} is not one of enforcing, permissive, disabled"
                    )));
                }
            };
        }
        for (name, value) in raw.aliases {
            if !reference::is_short_name(&name) || !reference::split_short_name(&name).1.is_empty()
            {
                return Err(invalid(format!(
                    "alias {name:?} is not a short name without tag or digest"
                )));
            }
            if value.is_empty() {
                self.aliases.remove(&name);
            } else {
                self.aliases.insert(name, (value, path.to_owned()));
            }
        }
        for e in raw.registry {
            let prefix = e.prefix.or_else(|| e.location.clone()).unwrap_or_default();
            if prefix.is_empty() {
                return Err(invalid(
                    "a [[registry]] table has neither prefix nor location".into(),
                ));
            }
            let location = e.location.unwrap_or_default();
            let location = match (prefix.starts_with("*."), location.is_empty()) {
                (true, true) => String::new(),
                (true, false) => {
                    return Err(invalid(format!(
                        "the wildcard prefix {prefix:?} cannot have a location"
                    )));
                }
                (false, true) => prefix.clone(),
                (false, false) => location,
            };
            let mut mirrors = Vec::new();
            for m in e.mirror {
                let pull_from = match m.pull_from_mirror.as_deref() {
                    None | Some("all") | Some("") => PullFrom::All,
                    Some("digest-only") => PullFrom::DigestOnly,
                    Some("tag-only") => PullFrom::TagOnly,
                    Some(other) => {
                        return Err(invalid(format!(
                            "pull-from-mirror {other:?} is not one of all, digest-only, tag-only"
                        )));
                    }
                };
                mirrors.push(Mirror {
                    location: m.location,
                    insecure: m.insecure,
                    pull_from,
                });
            }
            self.put(Entry {
                prefix,
                location,
                insecure: e.insecure,
                blocked: e.blocked,
                mirror_by_digest_only: e.mirror_by_digest_only,
                mirrors,
                file: path.to_owned(),
            });
        }
        Ok(())
    }

    fn put(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.prefix == entry.prefix) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }

    /// The files that were read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The `[[registry]]` table for `name` (`registry/repository[:tag][@digest]`): the one with
    /// the longest matching prefix.
    fn entry_for(&self, name: &str) -> Option<&Entry> {
        let host = name.split('/').next().unwrap_or(name);
        self.entries
            .iter()
            .filter(|e| match e.prefix.strip_prefix('*') {
                Some(suffix) => reference::host_without_port(host).ends_with(suffix),
                None => matches_prefix(name, &e.prefix),
            })
            .max_by_key(|e| e.prefix.len())
    }

    /// Where to pull `reference` from, in the order to try: its mirrors, then the primary
    /// location. Errors if a table blocks it.
    pub fn sources(&self, reference: &Reference) -> Result<Vec<Source>, Error> {
        let name = reference.to_string();
        let Some(entry) = self.entry_for(&name) else {
            return Ok(vec![Source {
                reference: reference.clone(),
                insecure: false,
                mirror: false,
            }]);
        };
        if entry.blocked {
            return Err(Error::Blocked {
                name,
                prefix: entry.prefix.clone(),
                path: entry.file.clone(),
            });
        }
        let by_digest = reference.digest().is_some();
        let relocate = |location: &str, what: &str| -> Result<Reference, Error> {
            if location.is_empty() {
                return Ok(reference.clone());
            }
            let value = format!("{location}{}", &name[entry.prefix.len()..]);
            value
                .parse()
                .map_err(|source| bad_name(what.to_owned(), value, entry.file.clone(), source))
        };
        let mut out = Vec::new();
        if !entry.mirror_by_digest_only || by_digest {
            for m in &entry.mirrors {
                let wanted = match m.pull_from {
                    PullFrom::All => true,
                    PullFrom::DigestOnly => by_digest,
                    PullFrom::TagOnly => !by_digest,
                };
                if wanted {
                    out.push(Source {
                        reference: relocate(&m.location, "a mirror location")?,
                        insecure: m.insecure,
                        mirror: true,
                    });
                }
            }
        }
        out.push(Source {
            reference: relocate(&entry.location, "the location")?,
            insecure: entry.insecure,
            mirror: false,
        });
        Ok(out)
    }

    /// Whether a table marks the registry of `reference` insecure (plain HTTP).
    pub fn insecure(&self, reference: &Reference) -> bool {
        self.entry_for(&reference.to_string())
            .is_some_and(|e| e.insecure)
    }

    /// The full names a user's `input` may stand for, in the order to try them: itself when
    /// it names a registry; else its alias; else one name per unqualified-search registry (as
    /// the short-name mode allows); else Docker Hub's.
    pub fn candidates(&self, input: &str) -> Result<Vec<Reference>, Error> {
        if !reference::is_short_name(input) {
            return Ok(vec![input.parse().map_err(|source| {
                bad_name("the name", input.to_owned(), PathBuf::new(), source)
            })?]);
        }
        let (short, suffix) = reference::split_short_name(input);
        if let Some((alias, path)) = self.aliases.get(short) {
            let value = format!("{alias}{suffix}");
            return Ok(vec![value.parse().map_err(|source| {
                bad_name(
                    format!("the alias for {short:?}"),
                    value,
                    path.clone(),
                    source,
                )
            })?]);
        }
        if self.search.is_empty() {
            return Ok(vec![input.parse().map_err(|source| {
                bad_name("the name", input.to_owned(), PathBuf::new(), source)
            })?]);
        }
        let mut out = Vec::new();
        for registry in &self.search {
            let value = format!("{registry}/{input}");
            out.push(value.parse().map_err(|source| {
                bad_name(
                    "an unqualified-search registry",
                    value,
                    self.files.last().cloned().unwrap_or_default(),
                    source,
                )
            })?);
        }
        if out.len() > 1 && self.mode == ShortNameMode::Enforcing {
            return Err(Error::Ambiguous {
                name: input.to_owned(),
                candidates: out.iter().map(ToString::to_string).collect(),
                path: self.files.last().cloned().unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

fn bad_name(
    what: impl Into<String>,
    value: impl Into<String>,
    path: impl AsRef<Path>,
    source: reference::Error,
) -> Error {
    let path = path.as_ref();
    let place = if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" in {}", path.display())
    };
    Error::BadName {
        context: format!("{}{place} gives {:?}", what.into(), value.into()),
        source: Box::new(source),
    }
}

/// `name` starts with `prefix` and goes on, if at all, with a separator.
fn matches_prefix(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::parse(text, Path::new("/test/registries.conf")).unwrap()
    }

    fn names(sources: Vec<Source>) -> Vec<(String, bool, bool)> {
        sources
            .into_iter()
            .map(|s| (s.reference.to_string(), s.insecure, s.mirror))
            .collect()
    }

    #[test]
    fn mirrors_then_relocated_primary() {
        let c = conf(
            r#"
[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"
[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"
[[registry.mirror]]
location = "mirror-1.local:5000/mirrors/foo"
insecure = true
"#,
        );
        let r: Reference = "example.com/foo/image:latest".parse().unwrap();
        assert_eq!(
            names(c.sources(&r).unwrap()),
            [
                (
                    "mirror-0.local/mirror-for-foo/image:latest".into(),
                    false,
                    true
                ),
                (
                    "mirror-1.local:5000/mirrors/foo/image:latest".into(),
                    true,
                    true
                ),
                ("internal.example.net/bar/image:latest".into(), false, false),
            ]
        );
        // A prefix only matches at a separator.
        let other: Reference = "example.com/foobar/image".parse().unwrap();
        assert_eq!(names(c.sources(&other).unwrap()).len(), 1);
        assert_eq!(c.sources(&other).unwrap()[0].reference, other);
    }

    #[test]
    fn longest_prefix_wins_and_docker_hub_needs_library() {
        let c = conf(
            r#"
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "hub-mirror.local"
[[registry]]
prefix = "docker.io/library/alpine"
location = "alpine.local/alpine"
"#,
        );
        let alpine: Reference = "alpine:3".parse().unwrap();
        assert_eq!(
            names(c.sources(&alpine).unwrap()),
            [("alpine.local/alpine:3".into(), false, false)]
        );
        let debian: Reference = "debian".parse().unwrap();
        assert_eq!(
            names(c.sources(&debian).unwrap()),
            [
                ("hub-mirror.local/library/debian:latest".into(), false, true),
                ("docker.io/library/debian:latest".into(), false, false),
            ]
        );
    }

    #[test]
    fn digest_only_mirrors_blocked_and_wildcards() {
        let c = conf(
            r#"
[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.local"
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "tags.local"
pull-from-mirror = "tag-only"
[[registry]]
prefix = "*.bad.example"
blocked = true
[[registry]]
location = "plain.example:5000"
insecure = true
"#,
        );
        let tagged: Reference = "quay.io/a/b:1".parse().unwrap();
        assert_eq!(c.sources(&tagged).unwrap().len(), 1);
        let pinned = tagged.with_digest(crate::digest::Digest::of(b"x"));
        assert!(c.sources(&pinned).unwrap()[0].mirror);
        let ghcr: Reference = "ghcr.io/a/b:1".parse().unwrap();
        assert!(c.sources(&ghcr).unwrap()[0].mirror);
        assert!(
            !c.sources(&ghcr.with_digest(crate::digest::Digest::of(b"x")))
                .unwrap()[0]
                .mirror
        );
        let bad: Reference = "registry.bad.example/x".parse().unwrap();
        assert!(matches!(c.sources(&bad), Err(Error::Blocked { .. })));
        assert!(c.insecure(&"plain.example:5000/x".parse().unwrap()));
        assert!(!c.insecure(&"plain.example/x".parse().unwrap()));
    }

    #[test]
    fn short_names() {
        let none = conf("");
        assert_eq!(
            none.candidates("debian:12").unwrap()[0].to_string(),
            "docker.io/library/debian:12"
        );
        let c = conf(
            r#"
unqualified-search-registries = ["registry.fedoraproject.org", "docker.io"]
[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"#,
        );
        let all = |input: &str| -> Vec<String> {
            c.candidates(input)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(all("fedora:40"), ["registry.fedoraproject.org/fedora:40"]);
        assert_eq!(
            all("debian"),
            [
                "registry.fedoraproject.org/debian:latest",
                "docker.io/library/debian:latest"
            ]
        );
        assert_eq!(all("ghcr.io/a/b:1"), ["ghcr.io/a/b:1"]);
        let strict = conf(
            r#"
unqualified-search-registries = ["a.example", "b.example"]
short-name-mode = "enforcing"
"#,
        );
        assert!(matches!(
            strict.candidates("tool"),
            Err(Error::Ambiguous { .. })
        ));
        assert_eq!(strict.candidates("a.example/tool").unwrap().len(), 1);
    }

    #[test]
    fn version_1_and_bad_files() {
        let c = conf(
            r#"
[registries.search]
registries = ["one.example"]
[registries.insecure]
registries = ["two.example:5000"]
[registries.block]
registries = ["three.example"]
"#,
        );
        assert_eq!(
            c.candidates("x").unwrap()[0].to_string(),
            "one.example/x:latest"
        );
        assert!(c.insecure(&"two.example:5000/x".parse().unwrap()));
        assert!(c.sources(&"three.example/x".parse().unwrap()).is_err());
        for bad in [
            "short-name-mode = \"sometimes\"",
            "[[registry]]\ninsecure = true",
            "[[registry]]\nprefix = \"*.x.example\"\nlocation = \"y.example\"",
            "[aliases]\n\"a.example/b\" = \"c.example/d\"",
            "unqualified-search-registries = 3",
        ] {
            assert!(
                RegistriesConf::parse(bad, Path::new("/t")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn drop_ins_replace_same_prefix_and_erase_aliases() {
        let mut c = conf(
            r#"
[aliases]
"a" = "x.example/a"
"b" = "x.example/b"
[[registry]]
location = "x.example"
insecure = true
"#,
        );
        c.merge(
            r#"
[aliases]
"a" = ""
[[registry]]
location = "x.example"
blocked = true
"#,
            Path::new("/test/registries.conf.d/10.conf"),
        )
        .unwrap();
        assert_eq!(
            c.candidates("a").unwrap()[0].to_string(),
            "docker.io/library/a:latest"
        );
        assert_eq!(
            c.candidates("b").unwrap()[0].to_string(),
            "x.example/b:latest"
        );
        assert!(c.sources(&"x.example/z".parse().unwrap()).is_err());
        assert!(!c.insecure(&"x.example/z".parse().unwrap()));
    }
}
