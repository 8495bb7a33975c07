//! A hostile registry on loopback: each answer breaks the protocol in one way, and each pull must
//! end with a clear error, in bounded time, leaving a store that `images` and `fsck` accept.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::Sandbox;

/// What the server answers to one request line ("GET /v2/…").
type Handler = dyn Fn(&str, &mut TcpStream) + Send + Sync;

/// A server that hands every request to `handler` until the test ends.
fn serve(handler: Arc<Handler>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    // Skip the headers.
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    handler(line.trim_end(), &mut stream);
                }
            });
        }
    });
    addr
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Runs `layerfs pull` of `addr/evil/image:v1`; returns stderr, asserting failure within
/// `limit` and an intact store.
#[track_caller]
fn pull_fails(addr: &str, limit: Duration) -> String {
    pull_fails_with(addr, limit, &[])
}

/// `pull_fails` with extra environment variables for layerfs.
#[track_caller]
fn pull_fails_with(addr: &str, limit: Duration, env: &[(&str, &str)]) -> String {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let mut cmd = sandbox.command(&["pull", &format!("{addr}/evil/image:v1")]);
    cmd.envs(env.iter().copied());
    let out = util::Running::spawn(cmd).wait();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the pull succeeded: {err}");
    assert!(took < limit, "the pull took {took:?}: {err}");
    let images = sandbox.ok(&["images", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&images.stdout).trim(), "[]");
    sandbox.ok(&["fsck"]);
    err
}

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn an_oversized_manifest_is_refused_without_reading_it_all() {
    let addr = serve(Arc::new(|_line: &str, stream: &mut TcpStream| {
        // Claims nothing, sends forever.
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n",
        );
        let chunk = vec![b' '; 1 << 16];
        while stream.write_all(&chunk).is_ok() {}
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(
        err.contains("larger than") || err.contains("too large"),
        "{err}"
    );
}

#[test]
fn invalid_json_and_wrong_content_types_are_clear_errors() {
    let addr = serve(Arc::new(|_line: &str, stream: &mut TcpStream| {
        respond(
            stream,
            "200 OK",
            &[(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            b"{\"schemaVersion\": 2, \"layers\": [",
        );
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("manifest"), "{err}");

    let addr = serve(Arc::new(|_line: &str, stream: &mut TcpStream| {
        respond(
            stream,
            "200 OK",
            &[("Content-Type", "text/html".into())],
            b"<html>hi</html>",
        );
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("manifest"), "{err}");
}

#[test]
fn a_redirect_loop_ends() {
    let addr = serve(Arc::new(|line: &str, stream: &mut TcpStream| {
        let path = line.split(' ').nth(1).unwrap_or("/");
        respond(
            stream,
            "302 Found",
            &[("Location", format!("{path}x"))],
            b"",
        );
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("redirect"), "{err}");
}

#[test]
fn a_garbage_token_endpoint_is_a_clear_error() {
    let addr_cell: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let cell = addr_cell.clone();
    let addr = serve(Arc::new(move |line: &str, stream: &mut TcpStream| {
        if line.contains("/token") {
            respond(stream, "200 OK", &[], b"\x00\x01 not json at all");
            return;
        }
        let realm = format!("http://{}/token", cell.get().cloned().unwrap_or_default());
        respond(
            stream,
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"{realm}\",service=\"evil\",scope=\"repository:evil/image:pull\""
                ),
            )],
            b"",
        );
    }));
    addr_cell.set(addr.clone()).unwrap();
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn unsupported_digest_algorithms_are_refused() {
    let addr = serve(Arc::new(|_line: &str, stream: &mut TcpStream| {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha512:00","size":2},"layers":[]}"#;
        respond(
            stream,
            "200 OK",
            &[(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            manifest,
        );
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("sha512") || err.contains("digest"), "{err}");
}

/// A manifest that names a config of `size` bytes, with its digest.
fn manifest_naming_config(config: &[u8], size: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{size}}},"layers":[]}}"#,
        util::sha256_digest(config)
    )
    .into_bytes()
}

fn manifest_headers() -> Vec<(&'static str, String)> {
    vec![(
        "Content-Type",
        "application/vnd.oci.image.manifest.v1+json".into(),
    )]
}

#[test]
fn a_slow_loris_is_cut_off() {
    // Headers at once, then a byte every 100 ms: the socket never times out, yet the body
    // would take hours.
    let trickle = |stream: &mut TcpStream, head: &str| {
        let _ = stream.write_all(head.as_bytes());
        while stream.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let addr = serve(Arc::new(move |_line: &str, stream: &mut TcpStream| {
        trickle(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 100000\r\n\r\n",
        );
    }));
    let err = pull_fails_with(&addr, LIMIT, &[("LAYERFS_LOW_SPEED_TIME", "2")]);
    assert!(err.contains("bytes in"), "{err}");

    // The same on a blob, which is resumed a bounded number of times.
    let config = vec![b'{'; 4096];
    let manifest = manifest_naming_config(&config, config.len() as u64);
    let addr = serve(Arc::new(move |line: &str, stream: &mut TcpStream| {
        if line.contains("/manifests/") {
            respond(stream, "200 OK", &manifest_headers(), &manifest);
        } else {
            trickle(stream, "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n");
        }
    }));
    let err = pull_fails_with(&addr, LIMIT, &[("LAYERFS_LOW_SPEED_TIME", "1")]);
    assert!(err.contains("bytes in"), "{err}");
}

#[test]
fn a_blob_longer_than_its_descriptor_is_not_read_past_it() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = manifest_naming_config(config, config.len() as u64);
    let addr = serve(Arc::new(move |line: &str, stream: &mut TcpStream| {
        if line.contains("/manifests/") {
            respond(stream, "200 OK", &manifest_headers(), &manifest);
        } else {
            // The config, then garbage without end.
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            let _ = stream.write_all(b"{\"junk\":");
            let chunk = vec![b'7'; 1 << 16];
            while stream.write_all(&chunk).is_ok() {}
        }
    }));
    let err = pull_fails(&addr, LIMIT);
    assert!(err.contains("digest"), "{err}");
}

#[test]
fn a_token_the_registry_keeps_refusing_ends_in_unauthorized() {
    let addr_cell: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let cell = addr_cell.clone();
    let tokens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let issued = tokens.clone();
    let addr = serve(Arc::new(move |line: &str, stream: &mut TcpStream| {
        if line.contains("/token") {
            issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Expired at birth.
            respond(
                stream,
                "200 OK",
                &[],
                br#"{"token":"stale","expires_in":0}"#,
            );
            return;
        }
        let realm = format!("http://{}/token", cell.get().cloned().unwrap_or_default());
        respond(
            stream,
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!("Bearer realm=\"{realm}\",service=\"evil\",error=\"invalid_token\""),
            )],
            b"",
        );
    }));
    addr_cell.set(addr.clone()).unwrap();
    let err = pull_fails(&addr, LIMIT);
    assert!(
        err.contains("unauthorized") || err.contains("denied") || err.contains("credentials"),
        "{err}"
    );
    let n = tokens.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=4).contains(&n), "{n} token requests");
}
