//! TLS termination: PEM files -> rustls, certificate reload without restart, and the client
//! side for `https://` upstreams.
//!
//! The server certificate sits behind an [`ArcSwap`] read by a custom resolver, so a reload
//! swaps it atomically for new handshakes and in-flight connections keep theirs. A reload that
//! fails (unreadable file, key not matching the certificate) is logged and the old certificate
//! keeps serving. Only TLS 1.2 and 1.3 with rustls's AEAD suites are offered; ALPN offers `h2`
//! and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::util::FileStamp;

/// The certificate chain and private key files (PEM) the server presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a certificate chain and its private key (PKCS#8, RSA or EC); errors name the file.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no usable private key ({e})", files.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key ({e})", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together ({e})",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(ck)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read ({e})", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: malformed PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Hands out whatever certificate is current.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The served certificate and where it comes from.
pub struct CertReloader {
    current: Arc<ArcSwap<CertifiedKey>>,
    files: TlsFiles,
    stamp: std::sync::Mutex<(Option<FileStamp>, Option<FileStamp>)>,
}

impl CertReloader {
    pub fn new(files: &TlsFiles) -> Result<Arc<CertReloader>, String> {
        let key = load_certified_key(files)?;
        Ok(Arc::new(CertReloader {
            current: Arc::new(ArcSwap::from_pointee(key)),
            stamp: std::sync::Mutex::new((FileStamp::of(&files.cert), FileStamp::of(&files.key))),
            files: files.clone(),
        }))
    }

    /// The rustls server config that serves the current certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.current.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// When the served certificate (the chain's first) stops being valid, in seconds since the
    /// epoch; `None` if its DER does not parse.
    pub fn not_after(&self) -> Option<i64> {
        let key = self.current.load();
        let der = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Load the files again; on failure keep serving the old certificate.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = (
            FileStamp::of(&self.files.cert),
            FileStamp::of(&self.files.key),
        );
        match load_certified_key(&self.files) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                if let Ok(mut s) = self.stamp.lock() {
                    *s = stamps;
                }
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                if let Ok(mut s) = self.stamp.lock() {
                    // Do not retry the same broken files on every poll.
                    *s = stamps;
                }
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one");
                Err(e)
            }
        }
    }

    /// Reload when either file's modification time changed.
    pub fn reload_if_changed(&self) {
        let now = (
            FileStamp::of(&self.files.cert),
            FileStamp::of(&self.files.key),
        );
        let changed = self.stamp.lock().map(|s| *s != now).unwrap_or(false);
        if changed {
            let _ = self.reload();
        }
    }

    /// Poll the files every `every` until the reloader is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(r) => r.reload_if_changed(),
                    None => return,
                }
            }
        });
    }
}

/// Client TLS for an upstream: for `https://`, the CA bundle when given, else the system
/// roots; for plain `http://` an empty trust store (never used). ALPN (h2, http/1.1) is added
/// by the connector.
pub fn upstream_client_config(https: bool, ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        _ if !https => {}
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
