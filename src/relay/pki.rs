//! The relay's own certificate authority: made once per pod (or per `exec`), limited by a
//! name constraint to the relay's host name, so that trusting it lets the app's TLS
//! clients trust nothing but the relay.
//!
//! The CA key stays in the relay's state directory, which only our container mounts; the
//! CA certificate goes into the bundle the app trusts. The serving certificate is issued
//! anew at every start from the same key and the same subject, so a restarted sidecar is
//! still trusted by a client that loaded the bundle long ago.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's files in the state directory.
const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.pem";

/// Why the relay's certificates could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory could not be read or written.
    #[error("failed to use the relay's state file '{}'", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored key is not a usable PEM key (a half-written file, or not ours).
    #[error(
        "the relay's CA key '{}' is not a usable PEM key; remove the relay's state directory's files to make new ones (app containers then need a restart)",
        path.display()
    )]
    BadKey { path: PathBuf },
    /// rcgen or rustls refused what we built; a bug rather than bad input.
    #[error("failed to make the relay's TLS certificate: {0}")]
    Build(String),
}

/// The CA and the serving certificate for `host`.
pub struct Authority {
    /// The CA certificate (PEM), for the bundle the app trusts.
    pub ca_pem: String,
    /// The serving certificate chain and key, for the relay's TLS listener.
    pub server: Arc<rustls::ServerConfig>,
}

fn ca_params(host: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("polars-cloud-auth relay CA ({host})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(name_constraints(host));
    params
}

/// The CA may sign for `host` only. A name type without a permitted subtree is not
/// constrained at all, so each type a TLS client could match a server against is closed
/// too: every IPv4 and IPv6 address is excluded (a leaf for `IP:127.0.0.1` would
/// otherwise pass for `https://127.0.0.1`), and e-mail addresses must be in the reserved
/// `invalid` domain, which no mailbox has. Directory names are left alone: the subject
/// of every leaf is one, and rustls-based clients refuse all leaves of a CA that
/// constrains them. URIs, which no HTTPS client matches a server against, cannot be
/// expressed in rcgen.
fn name_constraints(host: &str) -> NameConstraints {
    NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName(host.to_string()),
            GeneralSubtree::Rfc822Name(NO_MAILBOX.to_string()),
        ],
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    }
}

/// The only mail domain the CA may sign for: reserved, never a real one (RFC 2606).
const NO_MAILBOX: &str = "invalid";

/// Loads the CA from `state_dir`, or makes it there (key mode 0600), then issues the
/// serving certificate for `host`.
pub fn load_or_create(state_dir: &Path, host: &str) -> Result<Authority, Error> {
    let key_path = state_dir.join(CA_KEY);
    let cert_path = state_dir.join(CA_CERT);
    let state = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::State { path, source }
    };
    let build = |e: rcgen::Error| Error::Build(e.to_string());
    let (ca_key, ca_pem) = match (
        std::fs::read_to_string(&key_path),
        std::fs::read_to_string(&cert_path),
    ) {
        (Ok(key), Ok(pem)) => (
            KeyPair::from_pem(&key).map_err(|_| Error::BadKey {
                path: key_path.clone(),
            })?,
            pem,
        ),
        _ => {
            std::fs::create_dir_all(state_dir).map_err(state(state_dir))?;
            let key = KeyPair::generate().map_err(build)?;
            let pem = ca_params(host).self_signed(&key).map_err(build)?.pem();
            // The key first: a CA certificate without its key would be useless.
            crate::sink::file::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(state(&key_path))?;
            crate::sink::file::write_atomic(&cert_path, pem.as_bytes(), 0o644)
                .map_err(state(&cert_path))?;
            (key, pem)
        }
    };
    let issuer = Issuer::new(ca_params(host), ca_key);
    let leaf_key = KeyPair::generate().map_err(build)?;
    let mut params = CertificateParams::new(vec![host.to_string()]).map_err(build)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(build)?;
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(crate::serve::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Build(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Build(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Authority {
        ca_pem,
        server: Arc::new(server),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "auth.example.internal").unwrap();
        let again = load_or_create(dir.path(), "auth.example.internal").unwrap();
        assert_eq!(first.ca_pem, again.ca_pem);
        assert!(first.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), "auth.example.internal").unwrap();
        std::fs::write(dir.path().join(CA_KEY), "half a key").unwrap();
        let e = load_or_create(dir.path(), "auth.example.internal")
            .err()
            .unwrap();
        assert!(matches!(e, Error::BadKey { .. }), "{e}");
        assert!(e.to_string().contains("ca.key"), "{e}");
    }
}
