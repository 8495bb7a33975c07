//! TLS client configuration: the system's roots, `SSL_CERT_FILE`, and per-registry CA and
//! client-certificate directories in the containers/Docker `certs.d` convention
//! (`*.crt` are CAs; `NAME.cert` with `NAME.key` is a client certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Error;

/// Directories searched for `registry` when no `--cert-dir` is given.
fn default_cert_dirs(registry: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(
            PathBuf::from(home)
                .join(".config/containers/certs.d")
                .join(registry),
        );
    }
    dirs.push(Path::new("/etc/containers/certs.d").join(registry));
    dirs.push(Path::new("/etc/docker/certs.d").join(registry));
    dirs
}

/// Build the rustls configuration for talking to `registry`.
pub fn client_config(
    registry: &str,
    cert_dir: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("system certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        let file = PathBuf::from(file);
        let certs = read_certs(&file)?;
        roots.add_parsable_certificates(certs);
    }

    let dirs = match cert_dir {
        Some(d) => {
            if !d.is_dir() {
                return Err(Error::Tls(format!(
                    "--cert-dir {} is not a directory",
                    d.display()
                )));
            }
            vec![d.to_owned()]
        }
        None => default_cert_dirs(registry),
    };
    let mut client_auth = None;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Tls(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    let (added, _) = roots.add_parsable_certificates(read_certs(&path)?);
                    log::debug!("{}: {added} CA certificate(s)", path.display());
                }
                Some("cert") if client_auth.is_none() => {
                    let key = path.with_extension("key");
                    let chain = read_certs(&path)?;
                    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
                        Error::Tls(format!(
                            "client certificate {} needs its key {}: {e}",
                            path.display(),
                            key.display()
                        ))
                    })?;
                    client_auth = Some((chain, key));
                }
                _ => {}
            }
        }
    }
    if roots.is_empty() {
        log::warn!(
            "no trusted CA certificates found: install ca-certificates, or pass --cert-dir or SSL_CERT_FILE"
        );
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Tls(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            Error::Tls(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?
        .collect();
    let certs =
        certs.map_err(|e| Error::Tls(format!("bad certificate in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}
