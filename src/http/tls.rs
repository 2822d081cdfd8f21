//! TLS for the page, the API and the metrics (`http.tls`): the certificate chain and key
//! are read from PEM files once, at start, before root is dropped (the key may be root's
//! alone), with errors naming the file and where the config names it. The provider is
//! `ring` (no C toolchain beyond cc; aws-lc-rs needs cmake). Only TLS 1.2 and 1.3, the
//! rustls defaults; HTTP/1.1 only, like the plain listener.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::config::{Config, TlsConfig};

/// Why the TLS certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{cfg}:{pos}: http.tls.cert {}: {why}", file.display())]
    Cert {
        cfg: String,
        pos: crate::yaml::Pos,
        file: std::path::PathBuf,
        why: String,
    },
    #[error("{cfg}:{pos}: http.tls.key {}: {why}", file.display())]
    Key {
        cfg: String,
        pos: crate::yaml::Pos,
        file: std::path::PathBuf,
        why: String,
    },
}

fn pem_why(e: rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(e) => format!("cannot read: {e}"),
        E::NoItemsFound => format!("holds no {what} (a PEM file with a BEGIN line is expected)"),
        e => format!("is not a valid PEM file: {e}"),
    }
}

/// Pure over the files: the acceptor for `tls`, or what is wrong with its files.
pub(crate) fn acceptor(
    config: &Config,
    tls: &TlsConfig,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let cfg = config.file.display().to_string();
    let cert_err = |why: String| TlsError::Cert {
        cfg: cfg.clone(),
        pos: tls.cert_pos,
        file: tls.cert.clone(),
        why,
    };
    let key_err = |why: String| TlsError::Key {
        cfg: cfg.clone(),
        pos: tls.key_pos,
        file: tls.key.clone(),
        why,
    };
    let certs = read_certs(&tls.cert).map_err(cert_err)?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| key_err(pem_why(e, "private key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| key_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(e) => {
                cert_err(format!("is not a certificate rustls can use: {e}"))
            }
            rustls::Error::InconsistentKeys(_) => key_err(format!(
                "does not match the certificate in {}",
                tls.cert.display()
            )),
            e => key_err(format!("cannot be used: {e}")),
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_why(e, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_why(e, "certificate"))?;
    if certs.is_empty() {
        return Err(
            "holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- is expected)".into(),
        );
    }
    Ok(certs)
}
