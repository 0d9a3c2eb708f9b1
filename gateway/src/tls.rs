//! TLS on the listener (rustls, with the `aws-lc-rs` provider: post-quantum key exchange first), from a PEM certificate chain and a
//! PEM private key.
//!
//! The files are watched: a certificate renewed on disk (by certbot, cert-manager or a hand
//! `cp`) is used for new connections within [`POLL`] of the change, or at once on SIGHUP,
//! without a restart. Connections already open keep the certificate they started with. A pair
//! that cannot be read, or whose key does not match its certificate (caught half-written, say),
//! is logged and the previous pair stays in use; the next change is tried again.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {0}: {1}")]
    Cert(PathBuf, String),
    #[error("cannot read the TLS private key {0}: {1}")]
    Key(PathBuf, String),
    #[error("the TLS private key {key} does not fit the certificate {cert}: {why}")]
    Mismatch { cert: PathBuf, key: PathBuf, why: String },
}

/// What the files looked like when last loaded: size, modification and change times, inode.
type Stamp = Vec<(u64, i64, i64, i64, u64)>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).map_or((0, 0, 0, 0, 0), |m| {
                (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ctime(), m.ctime_nsec(), m.ino())
            })
        })
        .collect()
}

/// A certificate that can be replaced while connections are served.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last loaded, and as last found unusable (tried again only once changed).
    loaded: Mutex<(Stamp, Option<Stamp>)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl Certificates {
    /// Loads the pair; fails if it cannot be used.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let before = stamp(&[cert, key]);
        let certified = load(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            loaded: Mutex::new((before, None)),
        }))
    }

    /// Loads the pair again if the files changed (or always, with `force`). True if a new pair
    /// is in use.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamp(&[&self.cert, &self.key]);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !force && (loaded.0 == now || loaded.1.as_ref() == Some(&now)) {
            return Ok(false);
        }
        match load(&self.cert, &self.key, &self.provider) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
                *loaded = (now, None);
                Ok(true)
            }
            Err(e) => {
                loaded.1 = Some(now);
                Err(e)
            }
        }
    }

    /// The rustls configuration of the listener (HTTP/1.1 only, as the server speaks).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Starts the thread that reloads the pair when the files change.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("zarrgate-tls-watch".into())
            .spawn(move || loop {
                std::thread::sleep(POLL);
                let Some(certs) = weak.upgrade() else { return };
                certs.reload_logged(false);
            })
            .expect("a thread can be started at start-up");
    }

    /// Reloads, saying in the log what happened.
    pub fn reload_logged(&self, force: bool) {
        match self.reload(force) {
            Ok(true) => tracing::info!("TLS certificate {} loaded", self.cert.display()),
            Ok(false) => {}
            Err(e) => tracing::error!("{e}; the previous certificate stays in use"),
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Cert(cert.to_path_buf(), "no PEM certificate in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: e.to_string(),
    })
}
