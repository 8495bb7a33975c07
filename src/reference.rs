//! Image references: `[registry[:port]/]repo[:tag][@sha256:…]`, normalised by Docker Hub rules.
//!
//! Pure data, no I/O. The first path component is a registry when it contains `.` or `:`, is
//! `localhost`, or is a bracketed IPv6 address; otherwise the registry is `docker.io` and a
//! one-component repository gains the `library/` prefix. A reference with neither tag nor digest
//! gets the tag `latest`. The normalised string form is what the store records as the ref name.

use std::fmt;
use std::str::FromStr;

use crate::digest::{self, Digest};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's distribution API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Longest repository name (registry included) that registries accept.
const MAX_NAME_LEN: usize = 255;
/// Longest tag, per the distribution spec.
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("empty image reference")]
    Empty,
    #[error("invalid reference {reference:?}: {why}")]
    Invalid { reference: String, why: String },
    #[error("invalid reference {reference:?}: {source}")]
    Digest {
        reference: String,
        source: digest::Error,
    },
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Registry as named in references (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Host (and port) that serves the registry's API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the manifests endpoint for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with a different tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (the tag, if any, is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// True when the registry is on this machine, where plain HTTP is the norm.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// True when `input` names no registry (`debian:12`, `user/app`): the form that
/// containers-registries.conf(5) calls a short name, resolved through aliases and search
/// registries before Docker Hub's default applies.
pub fn is_short_name(input: &str) -> bool {
    let rest = input.split('@').next().unwrap_or(input);
    match rest.split_once('/') {
        Some((first, _)) => !looks_like_registry(first),
        None => true,
    }
}

/// A short name without its tag or digest (`debian` from `debian:12`), and the suffix that was
/// cut (`:12`).
pub fn split_short_name(input: &str) -> (&str, &str) {
    let end = input
        .find('@')
        .into_iter()
        .chain(input.rfind(':').filter(|&i| !input[i..].contains('/')))
        .min()
        .unwrap_or(input.len());
    input.split_at(end)
}

/// `localhost`, `127.0.0.0/8` or `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = host_without_port(registry);
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `host` from `host`, `host:port` or `[v6]:port`.
pub fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(end) => &registry[..=end],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| Error::Invalid {
            reference: input.to_owned(),
            why: why.to_owned(),
        };
        if input.is_empty() {
            return Err(Error::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace or control characters"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|source| Error::Digest {
                    reference: input.to_owned(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // A tag follows the last ':' that comes after the last '/', so `host:5000/repo` has none.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|why| invalid(&why))?;
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_registry(first) => (first.to_owned(), path),
            _ => (DOCKER_HUB.to_owned(), name),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        validate_registry(&registry).map_err(|why| invalid(&why))?;

        if path.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        for component in path.split('/') {
            validate_component(component).map_err(|why| invalid(&why))?;
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid("the name is longer than 255 characters"));
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if registry.starts_with('[') {
        let end = registry
            .find(']')
            .ok_or_else(|| format!("registry {registry:?} has an unclosed '['"))?;
        let inner = &registry[1..end];
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry {registry:?} is not a valid IPv6 address"));
        }
        let rest = &registry[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return Err(format!("registry {registry:?} is malformed")),
        };
        (None, port)
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!("registry host {host:?} is not a valid host name"));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map(|p| p == 0).unwrap_or(true)
    {
        return Err(format!(
            "registry port {port:?} is not a number from 1 to 65535"
        ));
    }
    Ok(())
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separators `.`, `_`, `__` or runs of `-`.
fn validate_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("the repository has an empty path component".to_owned());
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository component {component:?} has uppercase letters (repository names must be lowercase)"
        ));
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
    if !alnum(first) || !alnum(last) {
        return Err(format!(
            "repository component {component:?} must start and end with a lowercase letter or digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "repository component {component:?} has an invalid separator {sep:?}"
            ));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && word(tag.as_bytes()[0])
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid (1 to 128 characters of letters, digits, '_', '.', '-', not starting with '.' or '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises() {
        let with_digest = format!("docker.io/library/alpine@{D}");
        let tagged_digest = format!("quay.io/a/b:v1@{D}");
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "debian",
                "docker.io/library/debian:latest".into(),
                "registry-1.docker.io",
            ),
            (
                "debian:12",
                "docker.io/library/debian:12".into(),
                "registry-1.docker.io",
            ),
            (
                "user/app",
                "docker.io/user/app:latest".into(),
                "registry-1.docker.io",
            ),
            (
                "index.docker.io/library/x:1",
                "docker.io/library/x:1".into(),
                "registry-1.docker.io",
            ),
            (
                "docker.io/debian",
                "docker.io/library/debian:latest".into(),
                "registry-1.docker.io",
            ),
            ("ghcr.io/o/r/sub:t", "ghcr.io/o/r/sub:t".into(), "ghcr.io"),
            ("localhost/x", "localhost/x:latest".into(), "localhost"),
            (
                "127.0.0.1:5000/a/b:c",
                "127.0.0.1:5000/a/b:c".into(),
                "127.0.0.1:5000",
            ),
            ("[::1]:5000/a", "[::1]:5000/a:latest".into(), "[::1]:5000"),
            (
                &with_digest[10..],
                with_digest.clone(),
                "registry-1.docker.io",
            ),
            (&tagged_digest, tagged_digest.clone(), "quay.io"),
            (
                "a__b/c-d--e.f_g:T_1.0-x",
                "docker.io/a__b/c-d--e.f_g:T_1.0-x".into(),
                "registry-1.docker.io",
            ),
        ];
        for (input, want, host) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "input {input}");
            assert_eq!(r.api_host(), host, "input {input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for input in [
            "",
            "Debian",
            "debian:",
            "debian:-x",
            "a//b",
            "/a",
            "a/",
            "a/b@sha256:1234",
            "a@md5:00",
            "host:99999/a",
            "host:0/a",
            "a b",
            "a/.b",
            "a/b_-c",
            "a:b:c",
            "exa_mple.com/a",
        ] {
            assert!(input.parse::<Reference>().is_err(), "accepted {input:?}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().is_err());
    }

    #[test]
    fn digest_algorithm_error_is_specific() {
        let err = "a@sha512:00".parse::<Reference>().unwrap_err();
        assert!(err.to_string().contains("sha512"), "{err}");
    }

    #[test]
    fn loopback() {
        for (r, want) in [
            ("localhost:5000/a", true),
            ("127.0.0.1/a", true),
            ("127.1.2.3:80/a", true),
            ("[::1]:5000/a", true),
            ("ghcr.io/a", false),
            ("debian", false),
        ] {
            assert_eq!(
                r.parse::<Reference>().map(|r| r.is_loopback()),
                Ok(want),
                "{r}"
            );
        }
    }
}
