//! The OCI distribution API, client side: manifests and blobs over HTTP(S), with auth,
//! redirects, retries and resumable blob reads.
//!
//! Every byte from a registry is untrusted: manifest bodies are read up to a fixed limit, blob
//! bodies never past their descriptor's size, and digests are checked by the caller. Redirects
//! are followed by hand so that the `Authorization` header goes only to the registry's own
//! host (and credentials only to it or its token realm), never to a storage host a blob is
//! redirected to.

pub mod auth;
mod blob;
pub mod conf;
mod tls;
mod upload;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use blob::{BlobReader, RateLimit};
pub use upload::{Body, Mounted};

use crate::digest::Digest;
use crate::image::media;
use crate::reference::{self, Reference};
use auth::{Challenge, Credentials};

/// Largest manifest or index accepted (the distribution spec's suggested registry limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest token-service response read.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Largest error body read, for the message shown to the user.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Redirect hops followed before giving up (blob redirects take one or two).
const MAX_REDIRECTS: usize = 8;
/// Retries of a transient failure (5xx, 429, reset, timeout); with the backoff below they
/// span about 15 s, long enough for a registry restart.
pub const MAX_RETRIES: u32 = 6;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Connecting: a registry that does not answer in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one read or write on the socket; a stalled body then counts as a
/// transient failure and is resumed with a Range request.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Refresh a cached token this long before the registry would consider it expired.
const TOKEN_SLACK: Duration = Duration::from_secs(10);
/// Token lifetime assumed when the token service does not say (the distribution spec's 60 s).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{method} {source}")]
    Transport {
        method: &'static str,
        url: String,
        source: Box<ureq::Transport>,
    },
    #[error(
        "{registry} requires authentication{detail}: pass --creds USER:PASSWORD, or log in so that \
         ~/.docker/config.json or $REGISTRY_AUTH_FILE holds credentials for {registry}"
    )]
    Unauthorized { registry: String, detail: String },
    #[error("{registry} denied access to {what}{detail}: check that your credentials may pull it")]
    Denied {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("{what} not found on {registry}{detail}")]
    NotFound {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("{method} {url} answered HTTP {status}{detail}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("token service {realm}: {why}")]
    Token { realm: String, why: String },
    #[error("{what} is larger than the {limit} bytes layerfs accepts")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {why}")]
    BadResponse { what: String, why: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Credentials for this registry (from `--creds`); otherwise the auth files are read.
    pub creds: Option<Credentials>,
    /// Use plain HTTP.
    pub insecure: bool,
    /// `Some(true)`: HTTPS even on loopback; `Some(false)`: plain HTTP; `None`: HTTPS except
    /// for loopback registries.
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (`*.crt`) and client certificates.
    pub cert_dir: Option<PathBuf>,
}

/// A cached Bearer token.
#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    /// The scheme the registry asked for, learned from its first 401.
    challenge: Option<Challenge>,
    /// Bearer tokens by scope.
    tokens: HashMap<String, Token>,
}

/// A client for one registry. Cheap to share between threads.
pub struct Client {
    agent: ureq::Agent,
    /// Registry name as in references (`docker.io`): the key for credentials.
    registry: String,
    /// Scheme and API host (`https://registry-1.docker.io`).
    base: String,
    /// `host[:port]` of the API, to decide where the Authorization header may go.
    api_origin: String,
    creds: Option<Credentials>,
    /// Whether credentials were looked up (for error messages).
    creds_source: Option<String>,
    auth: Mutex<AuthState>,
}

/// A successful response with its body as a reader.
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub docker_digest: Option<String>,
    pub content_range: Option<String>,
    pub body: Box<dyn Read + Send + Sync + 'static>,
}

impl Client {
    /// A client for the registry of `reference`.
    pub fn new(reference: &Reference, options: &Options) -> Result<Client> {
        let registry = reference.registry().to_owned();
        let host = reference.api_host().to_owned();
        let https = match options.tls_verify {
            Some(v) => v,
            None => !(options.insecure || reference::is_loopback_host(&host)),
        } && !options.insecure;
        let mut builder = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(IO_TIMEOUT)
            .timeout_write(IO_TIMEOUT)
            .user_agent(concat!("layerfs/", env!("CARGO_PKG_VERSION")));
        if https {
            builder =
                builder.tls_config(tls::client_config(&registry, options.cert_dir.as_deref())?);
        }
        let (creds, creds_source) = match &options.creds {
            Some(c) => (Some(c.clone()), Some("--creds".to_owned())),
            None => {
                let files = auth::auth_files();
                match auth::lookup(&files, &registry, reference.repository()) {
                    Some(c) => (Some(c), Some("an auth file".to_owned())),
                    None => (None, None),
                }
            }
        };
        Ok(Client {
            agent: builder.build(),
            base: format!("{}://{host}", if https { "https" } else { "http" }),
            api_origin: host,
            registry,
            creds,
            creds_source,
            auth: Mutex::new(AuthState::default()),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Fetch a manifest or index by tag or digest. Returns the exact bytes and content type.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, Response)> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let what = format!("manifest {repository}:{reference}");
        let mut resp = self.get(
            &url,
            repository,
            &[("Accept", media::ACCEPT_MANIFESTS)],
            &what,
        )?;
        let limit = limit.min(MAX_MANIFEST_BYTES);
        if let Some(len) = resp.content_length
            && len > limit
        {
            return Err(Error::TooLarge { what, limit });
        }
        let body = read_limited(&mut resp.body, limit, &what)?;
        Ok((body, resp))
    }

    /// Fetch a small blob (a config) whole, reading at most `size` bytes.
    pub fn small_blob(&self, repository: &str, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        let what = format!("blob {digest}");
        let mut reader = self.blob(repository, digest, size, 0, None)?;
        let mut out = Vec::with_capacity(size.min(1 << 20) as usize);
        reader
            .read_to_end(&mut out)
            .map_err(|source| Error::Io { what, source })?;
        Ok(out)
    }

    /// A reader over blob `digest` from byte `offset` to its descriptor `size`, resuming
    /// with Range requests across transient failures.
    pub fn blob<'a>(
        &'a self,
        repository: &str,
        digest: &Digest,
        size: u64,
        offset: u64,
        rate: Option<&'a RateLimit>,
    ) -> Result<BlobReader<'a>> {
        BlobReader::new(self, repository, digest, size, offset, rate)
    }

    fn blob_url(&self, repository: &str, digest: &Digest) -> String {
        format!("{}/v2/{repository}/blobs/{digest}", self.base)
    }

    /// GET `url` with retries, redirects and auth.
    pub(crate) fn get(
        &self,
        url: &str,
        repository: &str,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            match self.get_once(url, repository, headers, what) {
                Err(e) if is_transient(&e) && attempt < MAX_RETRIES => {
                    let delay = backoff(attempt);
                    log::warn!("{e}; retrying in {:.1}s", delay.as_secs_f32());
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One GET, following redirects and answering one auth challenge.
    fn get_once(
        &self,
        url: &str,
        repository: &str,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<Response> {
        let scope = format!("repository:{repository}:pull");
        let mut url = url.to_owned();
        let mut authenticated_retry = false;
        let mut hops = 0;
        loop {
            let on_registry = self.is_registry_url(&url);
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            let header = if on_registry {
                self.authorization(&scope)
            } else {
                None
            };
            let sent_auth = header.is_some();
            if let Some(h) = &header {
                req = req.set("Authorization", h);
            }
            let result = req.call();
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::Transport {
                        method: "GET",
                        url,
                        source: Box::new(t),
                    });
                }
            };
            let status = resp.status();
            match status {
                200..=299 => return Ok(into_response(resp)),
                301 | 302 | 303 | 307 | 308 => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(Error::BadResponse {
                            what: what.to_owned(),
                            why: format!("more than {MAX_REDIRECTS} redirects (a redirect loop?)"),
                        });
                    }
                    let location = resp.header("Location").unwrap_or("").to_owned();
                    url = resolve_redirect(&url, &location).ok_or_else(|| Error::BadResponse {
                        what: what.to_owned(),
                        why: format!("redirect to an invalid location {location:?}"),
                    })?;
                    log::debug!("redirected to {url}");
                }
                401 if on_registry && !authenticated_retry => {
                    let challenges: Vec<Challenge> = resp
                        .all("WWW-Authenticate")
                        .iter()
                        .flat_map(|h| auth::parse_challenges(h))
                        .collect();
                    self.answer_challenge(&challenges, &scope, sent_auth)?;
                    authenticated_retry = true;
                }
                _ => return Err(self.status_error("GET", &url, what, resp)),
            }
        }
    }

    fn is_registry_url(&self, url: &str) -> bool {
        url::Url::parse(url)
            .ok()
            .map(|u| {
                let host = u.host_str().unwrap_or("");
                let origin = match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                let scheme_ok = self.base.starts_with(&format!("{}://", u.scheme()));
                scheme_ok && origin.eq_ignore_ascii_case(&self.api_origin)
            })
            .unwrap_or(false)
    }

    /// The Authorization header for a request to the registry host, if auth is known.
    fn authorization(&self, scope: &str) -> Option<String> {
        let state = self.auth.lock().ok()?;
        match state.challenge.as_ref()?.scheme.as_str() {
            "basic" => self.creds.as_ref().map(Credentials::basic_header),
            "bearer" => {
                let t = state.tokens.get(scope)?;
                (Instant::now() + TOKEN_SLACK < t.expires).then(|| format!("Bearer {}", t.value))
            }
            _ => None,
        }
    }

    /// React to a 401: remember the scheme; for Bearer, get a token for `scope`. `sent_auth`:
    /// the refused request carried credentials (so Basic ones were refused, not missing).
    fn answer_challenge(
        &self,
        challenges: &[Challenge],
        scope: &str,
        sent_auth: bool,
    ) -> Result<()> {
        let unauthorized = |detail: &str| Error::Unauthorized {
            registry: self.registry.clone(),
            detail: detail.to_owned(),
        };
        let chosen = challenges
            .iter()
            .find(|c| c.scheme == "bearer")
            .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
            .ok_or_else(|| unauthorized(" (no supported WWW-Authenticate challenge)"))?;
        match chosen.scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(unauthorized(""));
                }
            }
            _ => {
                let token = self.fetch_token(chosen, scope)?;
                if let Ok(mut state) = self.auth.lock() {
                    state.tokens.insert(scope.to_owned(), token);
                }
            }
        }
        if let Ok(mut state) = self.auth.lock() {
            let already = state.challenge.as_ref() == Some(chosen);
            if already && sent_auth && chosen.scheme == "basic" {
                let src = self.creds_source.clone().unwrap_or_default();
                return Err(unauthorized(&format!(
                    " (the credentials from {src} were refused)"
                )));
            }
            state.challenge = Some(chosen.clone());
        }
        Ok(())
    }

    fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<Token> {
        let realm = challenge.params.get("realm").cloned().unwrap_or_default();
        let token_err = |why: String| Error::Token {
            realm: realm.clone(),
            why,
        };
        let mut url = url::Url::parse(&realm)
            .map_err(|e| token_err(format!("the registry named an invalid realm ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_err("the realm is not an http(s) URL".into()));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            // A push with a cross-repository mount needs two scopes.
            for s in scope.split(' ') {
                q.append_pair("scope", s);
            }
        }
        let realm_host = url.host_str().unwrap_or("").to_owned();
        let plain_remote = url.scheme() == "http" && !reference::is_loopback_host(&realm_host);
        let creds = match &self.creds {
            Some(_) if plain_remote => {
                log::warn!("not sending credentials to {realm}: it is plain HTTP");
                None
            }
            c => c.as_ref(),
        };
        let answer = match creds {
            // An identity token is a refresh token: exchanged by an OAuth2 POST.
            Some(Credentials {
                identity_token: Some(refresh),
                ..
            }) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "layerfs"),
                    ("scope", scope),
                ];
                if let Some(service) = challenge.params.get("service") {
                    form.push(("service", service.as_str()));
                }
                let mut plain = url.clone();
                plain.set_query(None);
                self.agent.post(plain.as_str()).send_form(&form)
            }
            Some(c) => self
                .agent
                .get(url.as_str())
                .set("Authorization", &c.basic_header())
                .call(),
            None => self.agent.get(url.as_str()).call(),
        };
        let resp = match answer {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) => {
                let detail = match &self.creds_source {
                    Some(src) => format!(" (the token service refused the credentials from {src})"),
                    None => String::new(),
                };
                return Err(Error::Unauthorized {
                    registry: self.registry.clone(),
                    detail,
                });
            }
            Err(ureq::Error::Status(code, _)) => {
                return Err(token_err(format!("answered HTTP {code}")));
            }
            Err(ureq::Error::Transport(t)) => return Err(token_err(t.to_string())),
        };
        let body = read_limited(&mut resp.into_reader(), MAX_TOKEN_BYTES, "token response")?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("invalid token response ({e})")))?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("the response holds no token".into()))?;
        if value.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(token_err(
                "the token has characters a header cannot carry".into(),
            ));
        }
        let lifetime = parsed
            .expires_in
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .clamp(1, 86_400);
        log::debug!("got a token for {scope} valid {lifetime}s");
        Ok(Token {
            value,
            expires: Instant::now() + Duration::from_secs(lifetime),
        })
    }

    fn status_error(
        &self,
        method: &'static str,
        url: &str,
        what: &str,
        resp: ureq::Response,
    ) -> Error {
        let status = resp.status();
        let mut reader = resp.into_reader();
        let body = read_limited(&mut reader, MAX_ERROR_BODY, "error body").unwrap_or_default();
        let detail = error_detail(&body);
        match status {
            401 => Error::Unauthorized {
                registry: self.registry.clone(),
                detail,
            },
            403 => Error::Denied {
                registry: self.registry.clone(),
                what: what.to_owned(),
                detail,
            },
            404 => Error::NotFound {
                registry: self.registry.clone(),
                what: what.to_owned(),
                detail,
            },
            _ => Error::Status {
                method,
                url: url.to_owned(),
                status,
                detail,
            },
        }
    }
}

fn into_response(resp: ureq::Response) -> Response {
    let header = |n: &str| resp.header(n).map(str::to_owned);
    Response {
        status: resp.status(),
        content_type: header("Content-Type"),
        content_length: header("Content-Length").and_then(|v| v.trim().parse().ok()),
        docker_digest: header("Docker-Content-Digest"),
        content_range: header("Content-Range"),
        body: Box::new(Paced::new(resp.into_reader(), low_speed_time())),
    }
}

/// Least a body must deliver in every window of `low_speed_time()`.
const LOW_SPEED_BYTES: u64 = 1024;
/// The window, unless `LAYERFS_LOW_SPEED_TIME` (seconds) says otherwise.
const LOW_SPEED_TIME: Duration = Duration::from_secs(30);

fn low_speed_time() -> Duration {
    static TIME: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIME.get_or_init(|| {
        std::env::var("LAYERFS_LOW_SPEED_TIME")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map_or(LOW_SPEED_TIME, Duration::from_secs)
    })
}

/// A response body that must keep moving: fewer than `LOW_SPEED_BYTES` in a window is a
/// `TimedOut` error. The socket's read timeout catches a server that sends nothing; this
/// catches one that trickles a byte now and then to keep the connection alive (a slow loris).
/// Like any I/O failure it counts as transient: a blob download resumes, a bounded number of
/// times.
struct Paced<R> {
    inner: R,
    window: Duration,
    /// When the current window began: the first read, so that a body read late is not blamed
    /// for the wait.
    started: Option<Instant>,
    bytes: u64,
}

impl<R> Paced<R> {
    fn new(inner: R, window: Duration) -> Paced<R> {
        Paced {
            inner,
            window,
            started: None,
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if started.elapsed() >= self.window {
            if self.bytes < LOW_SPEED_BYTES && n > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the server sent {} bytes in {} s, below {LOW_SPEED_BYTES} bytes per {} s",
                        self.bytes,
                        started.elapsed().as_secs(),
                        self.window.as_secs()
                    ),
                ));
            }
            self.started = Some(Instant::now());
            self.bytes = 0;
        }
        Ok(n)
    }
}

/// `: code: message` from an OCI error body, or a short excerpt of anything else.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && !e.errors.is_empty()
    {
        let parts: Vec<String> = e
            .errors
            .iter()
            .take(3)
            .map(|i| format!("{} {}", i.code, i.message).trim().to_owned())
            .collect();
        return format!(" ({})", parts.join("; "));
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(" ({})", text.trim())
    }
}

fn resolve_redirect(current: &str, location: &str) -> Option<String> {
    if location.is_empty() {
        return None;
    }
    let base = url::Url::parse(current).ok()?;
    let next = base.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then(|| next.to_string())
}

fn read_limited(reader: &mut dyn Read, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Io {
            what: what.to_owned(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    Ok(out)
}

/// Worth another try: network failures, timeouts, 5xx, 408 and 429.
pub(crate) fn is_transient(e: &Error) -> bool {
    match e {
        Error::Transport { source, .. } => {
            !matches!(
                source.kind(),
                ureq::ErrorKind::InvalidUrl
                    | ureq::ErrorKind::UnknownScheme
                    | ureq::ErrorKind::Dns
                    | ureq::ErrorKind::InvalidProxyUrl
                    | ureq::ErrorKind::ProxyUnauthorized
            ) && !is_tls_failure(source)
        }
        Error::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
        Error::Io { .. } => true,
        _ => false,
    }
}

/// A certificate problem will not fix itself by retrying.
fn is_tls_failure(t: &ureq::Transport) -> bool {
    use std::error::Error as _;
    let mut source = t.source();
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve() {
        let cases = [
            (
                "https://r.io/v2/a/blobs/x",
                "https://cdn.io/b?sig=1",
                Some("https://cdn.io/b?sig=1"),
            ),
            (
                "https://r.io/v2/a/blobs/x",
                "/other",
                Some("https://r.io/other"),
            ),
            ("https://r.io/v2/a/blobs/x", "", None),
            ("https://r.io/v2/a/blobs/x", "file:///etc/passwd", None),
        ];
        for (cur, loc, want) in cases {
            assert_eq!(resolve_redirect(cur, loc).as_deref(), want, "{loc}");
        }
    }

    #[test]
    fn error_details() {
        let oci = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(error_detail(oci), " (MANIFEST_UNKNOWN manifest unknown)");
        assert_eq!(error_detail(b""), "");
        assert_eq!(error_detail(b"oops\n"), " (oops)");
    }

    #[test]
    fn auth_header_only_for_registry_host() {
        let r: Reference = "127.0.0.1:5000/a/b".parse().unwrap();
        let c = Client::new(&r, &Options::default()).unwrap();
        assert!(c.is_registry_url("http://127.0.0.1:5000/v2/a/b/blobs/x"));
        assert!(!c.is_registry_url("http://127.0.0.1:5001/v2/"));
        assert!(!c.is_registry_url("http://evil.example:5000/v2/"));
        assert!(!c.is_registry_url("https://127.0.0.1:5000/v2/"));
    }
}
