//! Registry authentication: `WWW-Authenticate` challenges, where credentials come from, and
//! the Bearer token flow.
//!
//! Credentials belong to one registry. They are sent to that registry's API host (Basic), or to
//! the token realm that registry named in its challenge (Bearer), and never to any other host,
//! such as the storage host a blob download is redirected to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::reference::DOCKER_HUB;

/// A parsed authentication challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `bearer`, `basic`, …
    pub scheme: String,
    /// Parameters with lowercased names.
    pub params: BTreeMap<String, String>,
}

/// Longest header value the parser looks at; real challenges are a few hundred bytes.
const MAX_CHALLENGE_LEN: usize = 8192;

/// Parse one `WWW-Authenticate` header value, which may hold several challenges
/// (`Bearer realm="…",service="…", Basic realm="…"`). Malformed parts are skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let s = &s[..s.len().min(MAX_CHALLENGE_LEN)];
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b);
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && is_token(s[i]) {
            i += 1;
        }
        if i == start {
            i += 1; // an unexpected byte: skip it
            continue;
        }
        let word = String::from_utf8_lossy(&s[start..i]).to_ascii_lowercase();
        let mut j = i;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < s.len() && s[i] == b' ' {
                i += 1;
            }
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let vs = i;
                while i < s.len() && s[i] != b',' && s[i] != b' ' {
                    i += 1;
                }
                String::from_utf8_lossy(&s[vs..i]).into_owned()
            };
            if let Some(current) = out.last_mut() {
                current.params.insert(word, value);
            }
        } else {
            out.push(Challenge {
                scheme: word,
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token (Docker's "identity token"): exchanged at the token service
    /// instead of sending the password.
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Parse `user:pass` as given to `--creds`.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
            identity_token: None,
        })
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files consulted, most specific first, as containers tools and Docker do.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        return vec![f];
    }
    let mut files = Vec::new();
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    let config = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
    if let Some(c) = config {
        files.push(c.join("containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        files.push(d.join("config.json"));
    } else if let Some(h) = env("HOME") {
        files.push(h.join(".docker/config.json"));
    }
    files
}

/// Find credentials for `registry`/`repository` in the given auth files. The first file
/// with a matching entry wins; within a file, the most specific key (`host/namespace/repo`
/// beats `host`) wins.
pub fn lookup(files: &[PathBuf], registry: &str, repository: &str) -> Option<Credentials> {
    files
        .iter()
        .find_map(|f| lookup_in_file(f, registry, repository))
}

/// Largest auth file read; they hold a handful of entries.
const MAX_AUTH_FILE: u64 = 4 << 20;

fn lookup_in_file(path: &Path, registry: &str, repository: &str) -> Option<Credentials> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_AUTH_FILE)
        .read_to_end(&mut bytes)
        .ok()?;
    let doc: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("ignoring {}: not valid JSON ({e})", path.display());
            return None;
        }
    };
    if let Some(helper) = helper_for(&doc, registry)
        && let Some(creds) = from_helper(helper, registry)
    {
        return Some(creds);
    }
    let auths = doc.get("auths")?.as_object()?;
    let full = format!("{registry}/{repository}");
    let mut best: Option<(usize, &serde_json::Value)> = None;
    for (key, entry) in auths {
        let Some(k) = normalise_key(key) else {
            continue;
        };
        let matches = k == registry
            || (full.starts_with(&k) && full.as_bytes().get(k.len()) == Some(&b'/'))
            || full == k;
        if matches && best.is_none_or(|(len, _)| k.len() > len) {
            best = Some((k.len(), entry));
        }
    }
    let entry = best?.1;
    let identity_token = entry
        .get("identitytoken")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str())
        && !auth.is_empty()
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let mut creds = Credentials::parse(&String::from_utf8(decoded).ok()?)?;
        creds.identity_token = identity_token;
        return Some(creds);
    }
    if let Some(token) = identity_token {
        return Some(Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: Some(token),
        });
    }
    let username = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
        identity_token: None,
    })
}

/// The credential helper a config file names for `registry`: its `credHelpers` entry, else
/// its `credsStore`.
fn helper_for<'a>(doc: &'a serde_json::Value, registry: &str) -> Option<&'a str> {
    let specific = doc
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| normalise_key(k).as_deref() == Some(registry))
        })
        .and_then(|(_, v)| v.as_str());
    specific
        .or_else(|| doc.get("credsStore").and_then(|s| s.as_str()))
        .filter(|h| !h.is_empty())
}

/// Longest a credential helper may take, and most it may print.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// Run `docker-credential-HELPER get` for `registry`, as Docker does: the server address on
/// stdin, `{"Username", "Secret"}` on stdout (`<token>` as the user name marks an identity
/// token). "Not found" and every failure mean no credentials; failures are logged.
fn from_helper(helper: &str, registry: &str) -> Option<Credentials> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        log::warn!("ignoring the credential helper {helper:?}: not a plain program name");
        return None;
    }
    let program = format!("docker-credential-{helper}");
    let server = if registry == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot run {program} for {registry}: {e}");
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(MAX_HELPER_OUTPUT).read_to_end(&mut out);
        out
    });
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                log::warn!("{program} did not answer within {HELPER_TIMEOUT:?}");
                return None;
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = (&mut e).take(4096).read_to_string(&mut err);
        }
        let text = String::from_utf8_lossy(&out).into_owned() + &err;
        if !text.to_lowercase().contains("not found") {
            log::warn!("{program} get failed ({status}): {}", text.trim());
        }
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer = match serde_json::from_slice(&out) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("{program} printed no credentials ({e})");
            return None;
        }
    };
    if answer.username == "<token>" {
        return Some(Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: Some(answer.secret),
        });
    }
    Some(Credentials {
        username: answer.username,
        password: answer.secret,
        identity_token: None,
    })
}

/// Turn an auth-file key (`https://index.docker.io/v1/`, `quay.io`, `ghcr.io/org/repo`) into
/// `registry[/path]` as layerfs names registries.
fn normalise_key(key: &str) -> Option<String> {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    };
    if host.is_empty() {
        return None;
    }
    // Docker's legacy key carries an API version path (`/v1/`), not a namespace.
    match path {
        Some(p) if !p.is_empty() && p != "v1" && p != "v2" => Some(format!("{host}/{p}")),
        _ => Some(host.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/debian:pull");

        let two = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm=x,scope="a\"b""#);
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].scheme, "basic");
        assert_eq!(two[0].params["realm"], "Registry Realm");
        assert_eq!(two[1].params["realm"], "x");
        assert_eq!(two[1].params["scope"], "a\"b");

        for junk in [
            "",
            "=",
            "\"\"\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "Bearer ===",
        ] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
    }

    #[test]
    fn finds_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let doc = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
            "quay.io": {"auth": b64("quay:one")},
            "quay.io/org/app": {"auth": b64("quay:two")},
            "127.0.0.1:5000": {"username": "u", "password": "p:w"},
        }});
        std::fs::write(&file, doc.to_string()).unwrap();
        let files = [dir.path().join("missing.json"), file];
        let get = |reg: &str, repo: &str| {
            lookup(&files, reg, repo).map(|c| format!("{}:{}", c.username, c.password))
        };
        assert_eq!(
            get("docker.io", "library/debian").as_deref(),
            Some("hub:pw")
        );
        assert_eq!(get("quay.io", "other/x").as_deref(), Some("quay:one"));
        assert_eq!(get("quay.io", "org/app").as_deref(), Some("quay:two"));
        assert_eq!(
            get("quay.io", "org/application").as_deref(),
            Some("quay:one")
        );
        assert_eq!(get("127.0.0.1:5000", "a").as_deref(), Some("u:p:w"));
        assert_eq!(get("ghcr.io", "a"), None);
    }

    #[test]
    fn creds_flag() {
        let c = Credentials::parse("user:pa:ss").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(Credentials::parse("nopass"), None);
        assert_eq!(Credentials::parse(":x"), None);
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}
