//! Content digests (`algorithm:hex`) and the streaming hasher that produces them.
//!
//! Only `sha256` is supported: it is what every registry and the OCI image layout use by default.
//! A digest is parsed once at the boundary (`FromStr`) and is valid from then on, so code that
//! holds a [`Digest`] may build store paths from it without further checks.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest string.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("digest {0:?} has no algorithm (expected sha256:<64 hex digits>)")]
    MissingAlgorithm(String),
    #[error(
        "digest algorithm {algorithm:?} is not supported (layerfs verifies sha256 digests only)"
    )]
    UnsupportedAlgorithm { algorithm: String },
    #[error("digest {0:?} is malformed (expected sha256:<64 lowercase hex digits>)")]
    Malformed(String),
}

/// A verified-format `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name; always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The first 12 hex digits, as shown in tables.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(Error::MissingAlgorithm(s.to_owned()));
        };
        if algorithm != "sha256" {
            let valid_algorithm = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if valid_algorithm {
                Error::UnsupportedAlgorithm {
                    algorithm: algorithm.to_owned(),
                }
            } else {
                Error::Malformed(s.to_owned())
            });
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::Malformed(s.to_owned()));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 that also counts the bytes it saw.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.inner.finalize()),
        }
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
        }
    }

    pub fn finish(self) -> (R, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that only hashes; used to digest a decompressed stream without keeping it.
impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases: &[(&str, Result<&str, Error>)] = &[
            (empty, Ok(empty)),
            ("e3b0c442", Err(Error::MissingAlgorithm("e3b0c442".into()))),
            (
                "sha512:abcd",
                Err(Error::UnsupportedAlgorithm {
                    algorithm: "sha512".into(),
                }),
            ),
            ("sha256:ABCD", Err(Error::Malformed("sha256:ABCD".into()))),
            (
                "sha256:../../etc/passwd",
                Err(Error::Malformed("sha256:../../etc/passwd".into())),
            ),
            ("SHA/256:x", Err(Error::Malformed("SHA/256:x".into()))),
        ];
        for (input, want) in cases {
            let got = input.parse::<Digest>().map(|d| d.to_string());
            assert_eq!(got, want.clone().map(str::to_owned), "input {input}");
        }
    }

    #[test]
    fn hashes_empty_input() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
