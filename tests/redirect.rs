//! Blob redirects to another host: the blob is fetched there, and the registry's credentials
//! never go with it. The registry here is a small HTTP server on loopback that serves one image,
//! asks for Basic auth, and redirects every blob request to a second server that records the
//! headers it receives.

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use util::{Compression, Flavor, Image, Sandbox, assert_success, stderr};

/// One request as a server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Read a request line and headers; returns (path, headers).
fn read_request(stream: &mut TcpStream) -> Option<(String, HashMap<String, String>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((path, headers))
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Serve `handler` on a loopback port until the test process ends.
fn serve(
    handler: impl Fn(&mut TcpStream, String, HashMap<String, String>) + Send + Sync + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = handler.clone();
            thread::spawn(move || {
                if let Some((path, headers)) = read_request(&mut stream) {
                    handler(&mut stream, path, headers);
                }
                let _ = stream.flush();
                let mut rest = Vec::new();
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(10)));
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    port
}

const BASIC: &str = "Basic dXNlcjpzZWNyZXQ="; // user:secret

#[test]
fn credentials_do_not_follow_a_blob_redirect_to_another_host() {
    let image = Image::simple("redirected", Flavor::Oci, Compression::Gzip);
    let blobs: HashMap<String, Vec<u8>> = image
        .blobs()
        .into_iter()
        .map(|b| (b.digest.clone(), b.bytes.clone()))
        .collect();

    // The storage host: serves blobs by digest and records what it was sent.
    let storage_log: Log = Arc::default();
    let log = storage_log.clone();
    let storage_blobs = blobs.clone();
    let storage = serve(move |stream, path, headers| {
        log.lock().unwrap().push(Seen {
            path: path.clone(),
            authorization: headers.get("authorization").cloned(),
        });
        let digest = path.rsplit('/').next().unwrap_or("").to_string();
        match storage_blobs.get(&digest) {
            Some(b) => respond(stream, "200 OK", &[], b),
            None => respond(stream, "404 Not Found", &[], b""),
        }
    });

    // The registry: Basic auth, the manifest, and a redirect for every blob.
    let registry_log: Log = Arc::default();
    let log = registry_log.clone();
    let manifest = image.manifest.clone();
    let registry = serve(move |stream, path, headers| {
        let auth = headers.get("authorization").cloned();
        log.lock().unwrap().push(Seen {
            path: path.clone(),
            authorization: auth.clone(),
        });
        if auth.as_deref() != Some(BASIC) {
            let challenge = ("WWW-Authenticate", "Basic realm=\"test\"".to_string());
            return respond(stream, "401 Unauthorized", &[challenge], b"");
        }
        if path.contains("/manifests/") {
            let headers = [
                ("Content-Type", manifest.media_type.clone()),
                ("Docker-Content-Digest", manifest.digest.clone()),
            ];
            respond(stream, "200 OK", &headers, &manifest.bytes);
        } else if let Some(digest) = path.split("/blobs/").nth(1) {
            // A different port on loopback is a different origin.
            let location = format!("http://127.0.0.1:{storage}/storage/{digest}");
            respond(
                stream,
                "307 Temporary Redirect",
                &[("Location", location)],
                b"",
            );
        } else {
            respond(stream, "404 Not Found", &[], b"");
        }
    });

    let sandbox = Sandbox::new();
    let reference = format!("127.0.0.1:{registry}/test/redirected:v1");
    let out = sandbox.run(&["pull", "--creds", "user:secret", &reference]);
    assert_success(&out);
    assert_eq!(
        sandbox.index_refs().get(&reference),
        Some(&image.manifest.digest)
    );

    let storage_seen = storage_log.lock().unwrap().clone();
    assert_eq!(
        storage_seen.len(),
        1 + image.layers.len(),
        "config and layers come from the storage host: {storage_seen:?}"
    );
    for seen in &storage_seen {
        assert_eq!(
            seen.authorization, None,
            "credentials were sent to the storage host with {}",
            seen.path
        );
    }
    let registry_seen = registry_log.lock().unwrap().clone();
    assert!(
        registry_seen
            .iter()
            .any(|s| s.authorization.as_deref() == Some(BASIC)),
        "the registry itself got the credentials: {registry_seen:?}"
    );
    drop(stderr(&out));
}

#[test]
fn a_redirect_loop_ends_with_a_clear_error() {
    let looping = serve(|stream, path, _| {
        let next = if path.ends_with("/a") { "/b" } else { "/a" };
        let location = format!(
            "{}{next}",
            path.trim_end_matches("/a").trim_end_matches("/b")
        );
        respond(stream, "302 Found", &[("Location", location)], b"");
    });
    let sandbox = Sandbox::new();
    let reference = format!("127.0.0.1:{looping}/test/loop:v1");
    let out = sandbox.run(&["pull", &reference]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("redirect"), "{err}");
    assert!(sandbox.index_refs().is_empty());
}
