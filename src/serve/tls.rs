//! The webhook's TLS certificate, re-read when its files change, without a watcher: each
//! new connection looks at the files' identity (device, inode, size, modification time),
//! which a Secret volume's `..data` symlink swap or cert-manager's rewrite changes. A
//! reload that fails (a half-written file, a key that does not match the certificate)
//! never panics and never drops the certificate in use: it is logged once, and the files
//! are tried again on a later connection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The process's one rustls crypto provider (ring): installed as the process default by
/// `main` before anything else, and by the first caller in tests. Every TLS client and
/// server takes it from here, so no place chooses its own.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(p) = CryptoProvider::get_default() {
        return p.clone();
    }
    // Two threads may race here: the first install wins, and both read it back.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .expect("a crypto provider was just installed")
        .clone()
}

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file cannot be read.
    #[error("failed to read TLS file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("'{}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key.
    #[error("'{}' holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    /// The key is unusable or does not belong to the certificate.
    #[error("the key '{}' does not fit the certificate '{}': {message}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// A file's identity: when any part changes, the file was replaced or rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        // Elsewhere size and modification time tell a rewrite.
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Ok(Self {
            dev,
            ino,
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

struct State {
    current: Arc<CertifiedKey>,
    loaded: (Stamp, Stamp),
    /// The stamps and time of the last failed reload, so it is logged once and retried
    /// at most once a second while the files stay unchanged.
    failed: Option<((Stamp, Stamp), Instant)>,
}

/// A server certificate resolver that re-reads its files when they change.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

const RETRY: Duration = Duration::from_secs(1);

impl ReloadingCert {
    /// Loads the certificate chain and key; at start-up they must be usable.
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, Error> {
        let stamps = stamps(cert, key)?;
        let current = Arc::new(read(cert, key, &provider)?);
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            state: Mutex::new(State {
                current,
                loaded: stamps,
                failed: None,
            }),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// When the leaf certificate in use expires (its notAfter, Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current();
        let leaf = current.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The certificate to present now, re-read first when the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            // A panic elsewhere while holding the lock cannot leave the state half-set:
            // every field is replaced whole.
            Err(poisoned) => poisoned.into_inner(),
        };
        let stamps = match stamps(&self.cert, &self.key) {
            Ok(s) => s,
            Err(e) => {
                self.failed(&mut state, None, &e);
                return state.current.clone();
            }
        };
        if stamps == state.loaded {
            return state.current.clone();
        }
        if let Some((failed, at)) = state.failed
            && failed == stamps
            && at.elapsed() < RETRY
        {
            return state.current.clone();
        }
        match read(&self.cert, &self.key, &self.provider) {
            Ok(key) => {
                state.current = Arc::new(key);
                state.loaded = stamps;
                state.failed = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => self.failed(&mut state, Some(stamps), &e),
        }
        state.current.clone()
    }

    fn failed(&self, state: &mut State, stamps: Option<(Stamp, Stamp)>, e: &Error) {
        let first = match (stamps, state.failed) {
            (Some(s), Some((f, _))) => s != f,
            _ => true,
        };
        if first {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %chain(e),
                "TLS certificate reload failed; serving the previous certificate"
            );
        }
        if let Some(s) = stamps {
            state.failed = Some((s, Instant::now()));
        }
    }

    /// Reloads that replaced the certificate, and reloads that failed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The error and its causes on one line, as `{:#}` prints an anyhow chain.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn stamps(cert: &Path, key: &Path) -> Result<(Stamp, Stamp), Error> {
    let stamp = |p: &Path| {
        Stamp::of(p).map_err(|source| Error::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok((stamp(cert)?, stamp(key)?))
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let file = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = file(cert)?;
    let key_pem = file(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| Error::NoCertificate {
            path: cert.to_path_buf(),
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| Error::NoKey {
        path: key.to_path_buf(),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| Error::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed certificate and its key, PEM.
    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn serial(ck: &CertifiedKey) -> Vec<u8> {
        ck.cert[0].as_ref().to_vec()
    }

    #[test]
    fn reloads_changed_files_and_keeps_the_old_pair_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("one.example");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let r = ReloadingCert::load(&cert, &key, provider()).unwrap();
        let first = serial(&r.current());
        assert_eq!(serial(&r.current()), first);

        // A half-written certificate: keep the old pair, count one failure.
        std::fs::write(&cert, &c1[..c1.len() / 2]).unwrap();
        assert_eq!(serial(&r.current()), first);
        assert_eq!(r.counts(), (0, 1));
        // The new certificate without its key yet: a mismatch, still the old pair.
        let (c2, k2) = pair("two.example");
        std::fs::write(&cert, &c2).unwrap();
        assert_eq!(serial(&r.current()), first);
        assert_eq!(r.counts(), (0, 2));
        // Garbage key, then an empty one: never a panic.
        std::fs::write(&key, "not a key").unwrap();
        assert_eq!(serial(&r.current()), first);
        std::fs::write(&key, "").unwrap();
        assert_eq!(serial(&r.current()), first);
        // The key arrives: the new pair is served.
        std::fs::write(&key, &k2).unwrap();
        let second = serial(&r.current());
        assert_ne!(second, first);
        assert_eq!(r.counts().0, 1);
        // Files gone (a volume being swapped): keep serving.
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(serial(&r.current()), second);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_swap_like_a_secret_volume_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: &str, (c, k): &(String, String)| {
            let d = dir.path().join(v);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("tls.crt"), c).unwrap();
            std::fs::write(d.join("tls.key"), k).unwrap();
        };
        let (p1, p2) = (pair("one.example"), pair("two.example"));
        write("v1", &p1);
        write("v2", &p2);
        std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
        }
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let r = ReloadingCert::load(&cert, &key, provider()).unwrap();
        let first = serial(&r.current());
        // The kubelet's atomic writer: a new link renamed over ..data.
        std::os::unix::fs::symlink("v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert_ne!(serial(&r.current()), first);
    }

    #[test]
    fn start_up_needs_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let e = ReloadingCert::load(&cert, &key, provider()).unwrap_err();
        assert!(e.to_string().contains("tls.crt"), "{e}");
        let (c1, _) = pair("one.example");
        let (_, k2) = pair("two.example");
        std::fs::write(&cert, "junk").unwrap();
        std::fs::write(&key, &k2).unwrap();
        let e = ReloadingCert::load(&cert, &key, provider()).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        std::fs::write(&cert, &c1).unwrap();
        let e = ReloadingCert::load(&cert, &key, provider()).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
