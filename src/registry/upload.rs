//! The push side of the distribution API: blob existence checks, cross-repository mounts,
//! monolithic and chunked uploads, and manifest PUTs.
//!
//! Requests carry the registry's Authorization header only while they go to the registry's
//! own host: an upload URL (`Location`) may point elsewhere, and then it goes bare, as blob
//! redirects do. A 401 is answered once per request with the scope it needs
//! (`repository:NAME:pull,push`, plus `repository:FROM:pull` for a mount). Bodies come from
//! memory or from a range of a file in the store, reopened for a retry, never read whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::auth::{self, Challenge};
use super::{Client, Error, MAX_ERROR_BODY, Result, read_limited};
use crate::digest::Digest;

/// What a request sends.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of the file at `path` from `offset`.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

/// The parts of a response the push needs.
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
}

/// What a cross-repository mount request led to.
pub enum Mounted {
    /// The registry linked the blob.
    Done,
    /// It did not, but opened an upload at this location instead.
    Upload(String),
}

impl Client {
    /// The scope a push to `repository` needs.
    fn push_scope(repository: &str) -> String {
        format!("repository:{repository}:pull,push")
    }

    /// One request with auth, answering one 401; any status other than `ok` is an error.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        method: &'static str,
        url: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: &Body<'_>,
        ok: &[u16],
        what: &str,
    ) -> Result<Answer> {
        let mut retried = false;
        loop {
            let on_registry = self.is_registry_url(url);
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            let header = if on_registry {
                self.authorization(scope)
            } else {
                None
            };
            let sent_auth = header.is_some();
            if let Some(h) = &header {
                req = req.set("Authorization", h);
            }
            let result = match body {
                Body::Empty => req.set("Content-Length", "0").call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File { path, offset, len } => {
                    let mut f = File::open(path).map_err(|source| Error::Io {
                        what: format!("{}", path.display()),
                        source,
                    })?;
                    f.seek(SeekFrom::Start(*offset))
                        .map_err(|source| Error::Io {
                            what: format!("{}", path.display()),
                            source,
                        })?;
                    req.set("Content-Length", &len.to_string())
                        .send(f.take(*len))
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::Transport {
                        method,
                        url: url.to_owned(),
                        source: Box::new(t),
                    });
                }
            };
            let status = resp.status();
            if ok.contains(&status) {
                let answer = Answer {
                    status,
                    location: resp.header("Location").map(str::to_owned),
                };
                // Drain a short body so the connection can be reused.
                let _ = read_limited(&mut resp.into_reader(), MAX_ERROR_BODY, "response");
                return Ok(answer);
            }
            if status == 401 && on_registry && !retried {
                let challenges: Vec<Challenge> = resp
                    .all("WWW-Authenticate")
                    .iter()
                    .flat_map(|h| auth::parse_challenges(h))
                    .collect();
                self.answer_challenge(&challenges, scope, sent_auth)?;
                retried = true;
                continue;
            }
            if status == 401
                && retried
                && let Some(src) = &self.creds_source
            {
                return Err(Error::Unauthorized {
                    registry: self.registry.clone(),
                    detail: format!(
                        " (the credentials from {src} were refused, or lack push rights to this \
                         repository)"
                    ),
                });
            }
            return Err(self.status_error(method, url, what, resp));
        }
    }

    /// An upload location as an absolute URL (registries often answer with a path).
    fn absolute(&self, location: &str) -> Result<String> {
        let base = url::Url::parse(&self.base).map_err(|e| Error::BadResponse {
            what: "upload location".into(),
            why: e.to_string(),
        })?;
        base.join(location)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|u| u.to_string())
            .ok_or_else(|| Error::BadResponse {
                what: "upload location".into(),
                why: format!("invalid Location {location:?}"),
            })
    }

    fn location(&self, answer: &Answer, what: &str) -> Result<String> {
        let loc = answer
            .location
            .as_deref()
            .ok_or_else(|| Error::BadResponse {
                what: what.to_owned(),
                why: "the registry gave no upload Location".into(),
            })?;
        self.absolute(loc)
    }

    /// True if `repository` already has blob `digest`.
    pub fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let url = self.blob_url(repository, digest);
        let what = format!("blob {digest}");
        match self.send(
            "HEAD",
            &url,
            &Self::push_scope(repository),
            &[],
            &Body::Empty,
            &[200],
            &what,
        ) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ask the registry to link blob `digest` from `from` into `repository`.
    pub fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<Mounted> {
        let mut url = url::Url::parse(&format!("{}/v2/{repository}/blobs/uploads/", self.base))
            .map_err(|e| Error::BadResponse {
                what: "upload URL".into(),
                why: e.to_string(),
            })?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scope = format!("{} repository:{from}:pull", Self::push_scope(repository));
        let what = format!("mount of blob {digest} from {from}");
        let answer = self.send(
            "POST",
            url.as_str(),
            &scope,
            &[],
            &Body::Empty,
            &[201, 202],
            &what,
        )?;
        if answer.status == 201 {
            Ok(Mounted::Done)
        } else {
            Ok(Mounted::Upload(self.location(&answer, &what)?))
        }
    }

    /// Open an upload session in `repository`; returns its location.
    pub fn start_upload(&self, repository: &str) -> Result<String> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let what = format!("upload to {repository}");
        let answer = self.send(
            "POST",
            &url,
            &Self::push_scope(repository),
            &[],
            &Body::Empty,
            &[202],
            &what,
        )?;
        self.location(&answer, &what)
    }

    /// Send `len` bytes of `path` as the blob `digest`: in one PUT if `chunk` covers it,
    /// otherwise as PATCH chunks of `chunk` bytes and a closing PUT.
    pub fn upload_blob(
        &self,
        repository: &str,
        location: String,
        digest: &Digest,
        path: &Path,
        len: u64,
        chunk: u64,
    ) -> Result<()> {
        let scope = Self::push_scope(repository);
        let what = format!("upload of blob {digest}");
        let octets = [("Content-Type", "application/octet-stream".to_owned())];
        let mut location = location;
        let mut offset = 0u64;
        if len > chunk {
            while offset < len {
                let n = chunk.min(len - offset);
                let mut headers = octets.to_vec();
                headers.push(("Content-Range", format!("{offset}-{}", offset + n - 1)));
                let answer = self.send(
                    "PATCH",
                    &location,
                    &scope,
                    &headers,
                    &Body::File {
                        path,
                        offset,
                        len: n,
                    },
                    &[202],
                    &what,
                )?;
                location = self.location(&answer, &what)?;
                offset += n;
                log::debug!("{what}: {offset} of {len} bytes sent");
            }
        }
        let mut url = url::Url::parse(&location).map_err(|e| Error::BadResponse {
            what: what.clone(),
            why: e.to_string(),
        })?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let body = if offset < len {
            Body::File {
                path,
                offset,
                len: len - offset,
            }
        } else {
            Body::Empty
        };
        self.send(
            "PUT",
            url.as_str(),
            &scope,
            &octets,
            &body,
            &[201, 204],
            &what,
        )?;
        Ok(())
    }

    /// PUT a manifest under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let what = format!("manifest {repository}:{reference}");
        self.send(
            "PUT",
            &url,
            &Self::push_scope(repository),
            &[("Content-Type", media_type.to_owned())],
            &Body::Bytes(bytes),
            &[200, 201, 202],
            &what,
        )?;
        Ok(())
    }
}
