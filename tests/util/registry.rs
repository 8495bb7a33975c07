//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a free loopback
//! port with its own storage directory, optionally behind Basic auth (htpasswd, bcrypt), Bearer
//! token auth (our [`TokenService`]) or TLS (a private CA). The process is killed on drop, and can
//! be killed and restarted on the same port and storage to test interrupted downloads.
//!
//! Images get in through the distribution API, as any client would push them; broken images are
//! made by editing the registry's storage afterwards (it serves blob files as they are on disk).

use std::fs::{self, OpenOptions};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tempfile::TempDir;

use super::image::{Blob, Image, Index};
use super::tls::ServerTls;
use super::token::{ISSUER, SERVICE, TokenService};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long a registry may take to answer `/v2/` after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which authentication the registry demands.
pub enum Auth {
    None,
    /// htpasswd with one bcrypt user.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from a [`TokenService`] knowing one user; anonymous callers get
    /// `anonymous_actions`.
    Token {
        user: String,
        password: String,
        anonymous_actions: Vec<String>,
    },
}

pub struct Registry {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    auth: Auth,
    token: Option<TokenService>,
    tls: Option<ServerTls>,
    config_path: PathBuf,
}

impl Registry {
    /// A registry without auth, over plain HTTP.
    pub fn start() -> Registry {
        Registry::start_with(Auth::None, false)
    }

    pub fn with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(
            Auth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            },
            false,
        )
    }

    pub fn with_token_auth(user: &str, password: &str, anonymous_actions: &[&str]) -> Registry {
        Registry::start_with(
            Auth::Token {
                user: user.to_string(),
                password: password.to_string(),
                anonymous_actions: anonymous_actions.iter().map(|s| s.to_string()).collect(),
            },
            false,
        )
    }

    /// A registry without auth, serving HTTPS with a certificate from a private CA.
    pub fn with_tls() -> Registry {
        Registry::start_with(Auth::None, true)
    }

    pub fn start_with(auth: Auth, tls: bool) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-registry-")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let port = free_port();

        let mut auth_yaml = String::new();
        let mut token = None;
        match &auth {
            Auth::None => {}
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, &out.stdout).unwrap();
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: layerfs-test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            Auth::Token {
                user,
                password,
                anonymous_actions,
            } => {
                let actions: Vec<&str> = anonymous_actions.iter().map(String::as_str).collect();
                let service = TokenService::start(user, password, &actions);
                let bundle = dir.path().join("token-root.pem");
                fs::write(&bundle, service.root_cert_pem()).unwrap();
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
                     rootcertbundle: {}\n",
                    service.realm(),
                    bundle.display()
                );
                token = Some(service);
            }
        }
        let tls = tls.then(|| ServerTls::generate(dir.path()));
        let tls_yaml = match &tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert_file.display(),
                t.key_file.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: inmemory\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n  redirect:\n    disable: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: layerfs-test-secret\n{tls_yaml}\
             {auth_yaml}",
            storage = storage.display(),
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let mut registry = Registry {
            port,
            dir,
            child: None,
            auth,
            token,
            tls,
            config_path,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        // The access log (Apache combined format) goes to stdout, everything else to stderr;
        // both files are appended to across restarts.
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(open("access.log"))
            .stderr(open("registry.log"))
            .spawn()
            .expect("start /usr/bin/docker-registry (Debian package docker-registry)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "docker-registry exited with {status} before answering; its log:\n{}",
                    self.log()
                );
            }
            if self.answers() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/v2/` answers with 200 or 401 (auth required: the server is up all the same).
    fn answers(&self) -> bool {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        match self.agent().get(&format!("{}/v2/", self.url())).call() {
            Ok(_) => true,
            Err(ureq::Error::Status(401, _)) => true,
            Err(_) => false,
        }
    }

    /// Stops the registry at once (SIGKILL), as a crash or a network failure would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port, storage and configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A full reference to `name` (e.g. `test/img:v1` or `test/img@sha256:…`) on this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn tls(&self) -> &ServerTls {
        self.tls.as_ref().expect("registry was started without TLS")
    }

    pub fn token_service(&self) -> &TokenService {
        self.token
            .as_ref()
            .expect("registry was started without token auth")
    }

    /// The registry's storage root (filesystem driver).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Rewrites the bytes of a stored blob in place with `edit`, which must keep its size, so
    /// the registry serves content that no longer matches the digest it is served under.
    pub fn edit_blob(&self, digest: &str, edit: impl FnOnce(&mut Vec<u8>)) {
        let path = self.blob_path(digest);
        let mut bytes = fs::read(&path).unwrap();
        let len = bytes.len();
        edit(&mut bytes);
        assert_eq!(bytes.len(), len, "editing blob {digest} changed its size");
        fs::write(&path, &bytes).unwrap();
    }

    /// Flips bits of the byte in the middle of a stored blob.
    pub fn corrupt_blob(&self, digest: &str) {
        self.edit_blob(digest, |bytes| {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        });
    }

    /// Replaces the first occurrence of `from` in a stored blob by `to` (of the same length).
    pub fn replace_in_blob(&self, digest: &str, from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        self.edit_blob(digest, |bytes| {
            let at = bytes
                .windows(from.len())
                .position(|w| w == from)
                .unwrap_or_else(|| panic!("blob {digest} does not contain {from:?}"));
            bytes[at..at + to.len()].copy_from_slice(to);
        });
    }

    /// The registry's own log (errors, startup), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The access log: one line per request, Apache combined format.
    pub fn access_log(&self) -> String {
        // The access log line is written after the response; give it a moment to land.
        std::thread::sleep(Duration::from_millis(200));
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Requests recorded for one blob as `(method, status, bytes sent)`, oldest first.
    pub fn blob_requests(&self, digest: &str) -> Vec<(String, u16, u64)> {
        parse_access_log(&self.access_log())
            .into_iter()
            .filter(|r| r.path.contains("/blobs/") && r.path.ends_with(digest))
            .map(|r| (r.method, r.status, r.bytes))
            .collect()
    }

    /// Successful full or partial GETs of one blob.
    pub fn blob_gets(&self, digest: &str) -> Vec<(u16, u64)> {
        self.blob_requests(digest)
            .into_iter()
            .filter(|(m, s, _)| m == "GET" && (*s == 200 || *s == 206))
            .map(|(_, s, b)| (s, b))
            .collect()
    }

    fn agent(&self) -> ureq::Agent {
        let mut builder = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .redirects(0);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.client_config());
        }
        builder.build()
    }

    /// The Authorization header our own client sends when pushing to `repo`.
    fn authorization(&self, repo: &str) -> Option<String> {
        match &self.auth {
            Auth::None => None,
            Auth::Basic { user, password } => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            )),
            Auth::Token { user, .. } => {
                let scope = format!("repository:{repo}:pull,push");
                Some(format!(
                    "Bearer {}",
                    self.token_service().token_for(user, &scope)
                ))
            }
        }
    }

    /// Uploads a blob (POST then monolithic PUT) unless the repository already has it.
    pub fn push_blob(&self, repo: &str, blob: &Blob) {
        let agent = self.agent();
        let auth = self.authorization(repo);
        let with_auth = |req: ureq::Request| match &auth {
            Some(a) => req.set("Authorization", a),
            None => req,
        };
        let head =
            with_auth(agent.head(&format!("{}/v2/{repo}/blobs/{}", self.url(), blob.digest)))
                .call();
        if head.is_ok() {
            return;
        }
        let resp = with_auth(agent.post(&format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .set("Content-Length", "0")
            .call()
            .unwrap_or_else(|e| panic!("start upload of {}: {}", blob.digest, describe(e)));
        assert_eq!(resp.status(), 202);
        let location = resp
            .header("Location")
            .expect("upload Location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", blob.digest);
        let resp = with_auth(agent.put(&put))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&blob.bytes)
            .unwrap_or_else(|e| panic!("finish upload of {}: {}", blob.digest, describe(e)));
        assert_eq!(resp.status(), 201);
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) {
        let agent = self.agent();
        let mut req = agent.put(&format!("{}/v2/{repo}/manifests/{reference}", self.url()));
        if let Some(a) = self.authorization(repo) {
            req = req.set("Authorization", &a);
        }
        let resp = req
            .set("Content-Type", &manifest.media_type)
            .send_bytes(&manifest.bytes)
            .unwrap_or_else(|e| {
                panic!(
                    "push manifest {repo}:{reference}: {}\nregistry log:\n{}",
                    describe(e),
                    self.log()
                )
            });
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.header("Docker-Content-Digest"),
            Some(manifest.digest.as_str())
        );
    }

    /// Pushes an image's blobs and its manifest under `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) {
        for blob in image.blobs() {
            self.push_blob(repo, blob);
        }
        self.push_manifest(repo, tag, &image.manifest);
    }

    /// Pushes every platform's image (by digest), then the index under `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, index: &Index) {
        for image in &index.images {
            self.push_image(repo, &image.manifest.digest, image);
        }
        self.push_manifest(repo, tag, &index.blob);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => {
            format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// A port that was free a moment ago. The registry binds it right after; tests run few enough
/// registries that a collision is unlikely, and `wait_ready` would report one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct AccessLine {
    method: String,
    path: String,
    status: u16,
    bytes: u64,
}

/// Parses `host - user [date] "METHOD PATH PROTO" STATUS BYTES "referer" "agent"` lines.
fn parse_access_log(log: &str) -> Vec<AccessLine> {
    log.lines()
        .filter_map(|line| {
            let mut quoted = line.split('"');
            let _prefix = quoted.next()?;
            let request = quoted.next()?;
            let after = quoted.next()?;
            let mut req = request.split(' ');
            let method = req.next()?.to_string();
            let path = req.next()?.to_string();
            let mut nums = after.split_whitespace();
            let status = nums.next()?.parse().ok()?;
            let bytes = nums.next()?.parse().unwrap_or(0);
            Some(AccessLine {
                method,
                path,
                status,
                bytes,
            })
        })
        .collect()
}
