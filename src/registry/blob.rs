//! A blob body as one `Read` that survives the network: when the connection breaks, stalls or
//! ends early, it asks again from the byte it reached with an HTTP Range request, after a
//! backoff, so the layers above (hashing, decompression) never see the failure.

use std::io::{self, Read};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Client, Error, MAX_RETRIES, Response, backoff, is_transient};
use crate::digest::Digest;

/// Reconnections allowed for one blob even when each made progress: a server that keeps
/// dropping the connection after a few bytes is broken, not unlucky.
const MAX_RECONNECTS: u32 = 100;

/// A byte-rate cap shared by every download of one command (`--limit-rate`).
pub struct RateLimit {
    bytes_per_sec: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Account for `n` bytes and sleep as long as the average rate is above the cap.
    fn consume(&self, n: usize) {
        let wait = {
            let Ok(mut s) = self.state.lock() else { return };
            s.1 += n as u64;
            let due = Duration::from_secs_f64(s.1 as f64 / self.bytes_per_sec as f64);
            due.saturating_sub(s.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Reads blob bytes `[offset, size)`, never more, resuming across transient failures.
pub struct BlobReader<'a> {
    client: &'a Client,
    url: String,
    repository: String,
    what: String,
    size: u64,
    pos: u64,
    body: Option<Box<dyn Read + Send + Sync>>,
    failures: u32,
    reconnects: u32,
    rate: Option<&'a RateLimit>,
}

impl<'a> BlobReader<'a> {
    pub(super) fn new(
        client: &'a Client,
        repository: &str,
        digest: &Digest,
        size: u64,
        offset: u64,
        rate: Option<&'a RateLimit>,
    ) -> Result<BlobReader<'a>, Error> {
        let mut reader = BlobReader {
            client,
            url: client.blob_url(repository, digest),
            repository: repository.to_owned(),
            what: format!("blob {digest}"),
            size,
            pos: offset.min(size),
            body: None,
            failures: 0,
            reconnects: 0,
            rate,
        };
        // Open now so that 401/404 surface as typed errors before any byte is consumed.
        if reader.pos < size {
            reader.open()?;
        }
        Ok(reader)
    }

    /// Bytes of the blob delivered so far (including the initial offset).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn open(&mut self) -> Result<(), Error> {
        let range = format!("bytes={}-", self.pos);
        let headers: Vec<(&str, &str)> = if self.pos > 0 {
            vec![("Range", range.as_str())]
        } else {
            Vec::new()
        };
        let resp = self
            .client
            .get(&self.url, &self.repository, &headers, &self.what)?;
        let body = self.position_body(resp)?;
        self.body = Some(body);
        Ok(())
    }

    /// Make the body start at `self.pos`: a 206 must start there; a 200 (Range ignored) is
    /// skipped forward.
    fn position_body(&self, mut resp: Response) -> Result<Box<dyn Read + Send + Sync>, Error> {
        if self.pos == 0 || resp.status != 206 {
            if self.pos > 0 {
                log::debug!(
                    "{}: server ignored Range; skipping {} bytes",
                    self.what,
                    self.pos
                );
                let skipped = io::copy(&mut (&mut resp.body).take(self.pos), &mut io::sink())
                    .map_err(|source| Error::Io {
                        what: self.what.clone(),
                        source,
                    })?;
                if skipped != self.pos {
                    return Err(Error::BadResponse {
                        what: self.what.clone(),
                        why: "the body ended before the resume offset".into(),
                    });
                }
            }
            return Ok(resp.body);
        }
        let start = resp
            .content_range
            .as_deref()
            .and_then(|r| r.trim().strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if start != Some(self.pos) {
            return Err(Error::BadResponse {
                what: self.what.clone(),
                why: format!(
                    "asked for bytes from {} but got Content-Range {:?}",
                    self.pos, resp.content_range
                ),
            });
        }
        Ok(resp.body)
    }

    fn fail(&mut self, e: Error) -> io::Result<()> {
        self.body = None;
        self.reconnects += 1;
        if !is_transient(&e) || self.failures >= MAX_RETRIES || self.reconnects > MAX_RECONNECTS {
            return Err(io::Error::other(e));
        }
        let delay = backoff(self.failures);
        log::warn!(
            "{} interrupted at byte {} of {}: {e}; resuming in {:.1}s",
            self.what,
            self.pos,
            self.size,
            delay.as_secs_f32()
        );
        std::thread::sleep(delay);
        self.failures += 1;
        Ok(())
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.size - self.pos;
            if left == 0 || buf.is_empty() {
                return Ok(0);
            }
            if self.body.is_none() {
                // `open` already retried with backoff; its failure is final.
                self.open().map_err(io::Error::other)?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match body.read(&mut buf[..want]) {
                Ok(0) => {
                    let e = Error::Io {
                        what: self.what.clone(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("connection closed at byte {} of {}", self.pos, self.size),
                        ),
                    };
                    self.fail(e)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    if let Some(rate) = self.rate {
                        rate.consume(n);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let e = Error::Io {
                        what: self.what.clone(),
                        source,
                    };
                    self.fail(e)?;
                }
            }
        }
    }
}
