//! A small token service for the registry's Bearer auth (the Docker token protocol): it answers
//! `GET /token?service=…&scope=repository:NAME:pull,push` (and the OAuth2 `POST /token` form)
//! on a loopback port with a JWT signed by [`TokenSigner`], whose certificate rides in the JWS
//! `x5c` header so that distribution can verify it against its `rootcertbundle`.
//!
//! Known users get the actions they ask for (pull and push); anonymous callers get only what
//! the service was told to give them. Every request is counted so tests can check that a client
//! reuses its token instead of asking again for each blob.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::tls::TokenSigner;

pub const SERVICE: &str = "layerfs-test-registry";
pub const ISSUER: &str = "layerfs-test-issuer";
/// Lifetime of issued tokens; long enough that no test ever needs a second one.
const TOKEN_SECONDS: u64 = 600;

struct Shared {
    signer: TokenSigner,
    users: HashMap<String, String>,
    anonymous_actions: Vec<String>,
    requests: AtomicUsize,
    stop: AtomicBool,
    next_id: AtomicUsize,
}

pub struct TokenService {
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TokenService {
    /// Starts the service for one user; anonymous callers get `anonymous_actions`
    /// (e.g. `&["pull"]` for a public registry, `&[]` for a private one).
    pub fn start(user: &str, password: &str, anonymous_actions: &[&str]) -> TokenService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            signer: TokenSigner::generate(),
            users: HashMap::from([(user.to_string(), password.to_string())]),
            anonymous_actions: anonymous_actions.iter().map(|s| s.to_string()).collect(),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            next_id: AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if thread_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&thread_shared);
                std::thread::spawn(move || {
                    let _ = serve(&shared, conn);
                });
            }
        });
        TokenService {
            port,
            shared,
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The signing certificate (PEM) for the registry's `rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        &self.shared.signer.cert_pem
    }

    /// How many token requests were served (or refused) so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// A token for `scope`, as the test harness itself needs when pushing.
    pub fn token_for(&self, user: &str, scope: &str) -> String {
        let actions = parse_scope(scope);
        assert!(self.shared.users.contains_key(user));
        issue(&self.shared, user, &actions)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses `repository:NAME:a,b` scopes (several may be given, space- or parameter-separated).
fn parse_scope(scope: &str) -> Vec<(String, Vec<String>)> {
    scope
        .split(' ')
        .filter_map(|s| {
            let s = s.strip_prefix("repository:")?;
            let (name, actions) = s.rsplit_once(':')?;
            Some((
                name.to_string(),
                actions.split(',').map(str::to_string).collect(),
            ))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn issue(shared: &Shared, subject: &str, access: &[(String, Vec<String>)]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&shared.signer.cert_der)],
    });
    let access: Vec<_> = access
        .iter()
        .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + TOKEN_SECONDS,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("token-{}", shared.next_id.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
    );
    let signature = shared.signer.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn serve(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    if shared.stop.load(Ordering::SeqCst) || request_line.is_empty() {
        return Ok(());
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return respond(&mut conn, "404 Not Found", r#"{"error":"not found"}"#);
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);

    let mut params = parse_form(query);
    let mut user: Option<(String, String)> = None;
    if method == "POST" {
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let form = parse_form(&String::from_utf8_lossy(&body));
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if let (Some(u), Some(p)) = (get("username"), get("password")) {
            user = Some((u, p));
        }
        // OAuth2 refresh tokens ("identity tokens"): `refresh-USER` stands for USER.
        if get("grant_type").as_deref() == Some("refresh_token") {
            let token = get("refresh_token").unwrap_or_default();
            let who = token.strip_prefix("refresh-").unwrap_or("");
            match shared.users.get(who) {
                Some(p) => user = Some((who.to_owned(), p.clone())),
                None => {
                    return respond(
                        &mut conn,
                        "401 Unauthorized",
                        r#"{"error":"invalid_grant"}"#,
                    );
                }
            }
        }
        params.extend(form);
    }
    if let Some(auth) = headers.get("authorization") {
        let Some(b64) = auth.strip_prefix("Basic ") else {
            return respond(
                &mut conn,
                "401 Unauthorized",
                r#"{"error":"basic auth only"}"#,
            );
        };
        let decoded = STANDARD.decode(b64.trim()).unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
        user = Some((u.to_string(), p.to_string()));
    }

    let service_ok = params.iter().all(|(k, v)| k != "service" || v == SERVICE);
    if !service_ok {
        return respond(
            &mut conn,
            "400 Bad Request",
            r#"{"error":"unknown service"}"#,
        );
    }
    let requested: Vec<(String, Vec<String>)> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| parse_scope(v))
        .collect();

    let (subject, allowed): (String, Vec<String>) = match user {
        Some((u, p)) => {
            if shared.users.get(&u) != Some(&p) {
                return respond(
                    &mut conn,
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
                );
            }
            (u, vec!["pull".to_string(), "push".to_string()])
        }
        None => (String::new(), shared.anonymous_actions.clone()),
    };
    let granted: Vec<(String, Vec<String>)> = requested
        .into_iter()
        .map(|(name, actions)| {
            let actions = actions
                .into_iter()
                .filter(|a| allowed.contains(a))
                .collect::<Vec<_>>();
            (name, actions)
        })
        .filter(|(_, actions)| !actions.is_empty())
        .collect();
    let token = issue(shared, &subject, &granted);
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_SECONDS,
    });
    respond(&mut conn, "200 OK", &body.to_string())
}
