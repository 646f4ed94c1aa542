//! The relay: a stand-in of the identity provider's token endpoint, local to the pod (or
//! to one `exec`), that answers the real Polars Cloud client's refreshes with the token
//! our renewal loop keeps fresh.
//!
//! Why: the `polars-cloud` 0.12 client reads `POLARS_CLOUD_ACCESS_TOKEN` once and never
//! again, and refreshes by itself only from `config.toml`, against
//! `https://auth.{POLARS_CLOUD_DOMAIN}`, dying for good when its refresh token dies. So
//! the app gets a `config.toml` whose refresh token is a [`handle`] that only this relay
//! accepts, and a `POLARS_CLOUD_DOMAIN` whose `auth.` host is the relay (on loopback, by
//! `hostAliases` in a pod or a CONNECT proxy for `exec`), trusted through a bundle that
//! adds the relay's name-constrained CA ([`pki`]) to the system roots. The API address is
//! pinned with `POLARS_CLOUD_API_ADDR`, so only the token requests change route. The one
//! real session stays in our process; the app holds nothing the identity provider
//! accepts, and the session ending (Keycloak's SSO Session Max) is invisible to it.
//!
//! Clients 0.7 to 0.11 ignore `config.toml` and read the legacy token files again at every
//! call, so each config directory also gets those, rewritten at every renewal (at least
//! [`CLIENT_LEAD`] before expiry, before such a client would refresh); [`clients`] tells
//! the families apart and what the relay has seen of them.

pub mod clients;
pub mod endpoint;
pub mod handle;
pub mod local;
pub mod pki;
pub mod proxy;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use secrecy::SecretString;

use crate::sink::client_config::{self, ClientConfig};
use crate::token::AccessToken;
use handle::HandleKey;

/// The private domain given to the app as `POLARS_CLOUD_DOMAIN`: `.internal` is reserved
/// for private use, so the relay's host never exists in public DNS.
pub const DEFAULT_DOMAIN: &str = "polars-cloud-auth.internal";
/// The token endpoint's path, the same as Keycloak's for the realm.
pub const TOKEN_PATH: &str = "/realms/Polars/protocol/openid-connect/token";
/// Where our container keeps the relay's keys (a volume only it mounts).
pub const DEFAULT_STATE_DIR: &str = "/var/run/polars-cloud-auth";
/// The file with the handle key in the state directory.
pub const HANDLE_KEY: &str = "handle.key";
/// The bundle's file name beside the token file.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
/// Where our container finds the system roots to put into the bundle, when
/// `SSL_CERT_FILE` does not say (Debian's path, and our image's).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The client refreshes when about 10 s of life are left (docs/polars-cloud-client.md):
/// a renewed token must be there before that, with room for a slow identity provider.
pub const CLIENT_LEAD: std::time::Duration = std::time::Duration::from_secs(15);

/// The host the client sends its token requests to.
pub fn auth_host(domain: &str) -> String {
    format!("auth.{domain}")
}

/// What the relay needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The private domain the app's client is given.
    pub domain: String,
    /// Our keys: the CA key and the handle key.
    pub state_dir: PathBuf,
    /// The app containers' config directories, each to get a `config.toml` and the
    /// legacy token files.
    pub client_configs: Vec<PathBuf>,
    /// The bundle the app trusts: the system roots plus the relay's CA.
    pub ca_bundle: PathBuf,
    /// The system roots to copy into the bundle.
    pub system_roots: PathBuf,
    /// Mode of the files the app reads (`config.toml`, the bundle); the legacy token files
    /// get [`legacy_mode`] of it.
    pub file_mode: u32,
}

/// Why the relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A state, bundle or config file could not be read or written.
    #[error("failed to {action} '{}'", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The system roots file holds no certificate: the app would trust only the relay.
    #[error(
        "'{}' holds no PEM certificate; point SSL_CERT_FILE (of our container) at the system CA bundle",
        path.display()
    )]
    NoRoots { path: PathBuf },
    /// An app's config.toml could not be edited.
    #[error(transparent)]
    ClientConfig(#[from] client_config::Error),
}

fn file_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::File {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a prepared relay serves with.
pub struct Prepared {
    pub key: HandleKey,
    pub authority: pki::Authority,
}

/// Loads or makes the relay's keys (kept across restarts in the state directory) and
/// writes the bundle the app trusts.
pub fn setup(s: &Settings) -> Result<Prepared, Error> {
    let authority = pki::load_or_create(&s.state_dir, &auth_host(&s.domain))?;
    let key = load_or_create_key(&s.state_dir)?;
    write_bundle(s, &authority.ca_pem)?;
    Ok(Prepared { key, authority })
}

impl Prepared {
    /// Gives every app config directory a `config.toml` with `token` and a handle, unless
    /// it already holds one of ours (the 0.12 client keeps that file up to date itself),
    /// and the legacy token files with `token` and a handle, always (0.7 to 0.11 read
    /// them again at every call and never write them while the token lives).
    pub fn seed(&self, s: &Settings, token: &AccessToken, now: SystemTime) -> Result<(), Error> {
        for dir in &s.client_configs {
            seed(dir, s.file_mode, &self.key, token, now)?;
        }
        Ok(())
    }
}

/// [`setup`] and [`Prepared::seed`]: what an init container does. Idempotent, so the
/// classic init container and the sidecar after it share the same keys and files.
pub fn prepare(s: &Settings, token: &AccessToken, now: SystemTime) -> Result<Prepared, Error> {
    let prepared = setup(s)?;
    prepared.seed(s, token, now)?;
    Ok(prepared)
}

fn load_or_create_key(state_dir: &Path) -> Result<HandleKey, Error> {
    let path = state_dir.join(HANDLE_KEY);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(key) = HandleKey::from_text(&text)
    {
        return Ok(key);
    }
    let key = HandleKey::generate();
    use secrecy::ExposeSecret;
    crate::sink::file::write_atomic(&path, key.to_text().expose_secret().as_bytes(), 0o600)
        .map_err(file_error("write", &path))?;
    Ok(key)
}

fn write_bundle(s: &Settings, ca_pem: &str) -> Result<(), Error> {
    let roots = std::fs::read_to_string(&s.system_roots)
        .map_err(file_error("read the system roots", &s.system_roots))?;
    if !roots.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::NoRoots {
            path: s.system_roots.clone(),
        });
    }
    let bundle = bundle_text(&roots, ca_pem);
    crate::sink::file::write_atomic(&s.ca_bundle, bundle.as_bytes(), s.file_mode)
        .map_err(file_error("write the CA bundle", &s.ca_bundle))
}

/// The system roots followed by the relay's CA. Pure.
pub fn bundle_text(roots: &str, ca_pem: &str) -> String {
    let mut out = String::with_capacity(roots.len() + ca_pem.len() + 64);
    out.push_str(roots.trim_end());
    out.push_str("\n# polars-cloud-auth relay CA (valid for its host name only)\n");
    out.push_str(ca_pem.trim_end());
    out.push('\n');
    out
}

/// The mode of an app's config directory: whoever may read the files may also replace
/// them there (the client writes `config.toml` back through a temporary file).
pub fn dir_mode(file_mode: u32) -> u32 {
    let mut mode = 0o700;
    if file_mode & 0o040 != 0 {
        mode |= 0o070;
    }
    if file_mode & 0o004 != 0 {
        mode |= 0o007;
    }
    mode
}

/// The mode of the legacy token files: whoever may read them may also write them. 0.7 to
/// 0.11 write both files back after a refresh through the relay by opening them for
/// writing in place (`O_TRUNC`), not through a temporary file, and a write-back they are
/// refused fails the call with "Authentication token was not found". In a pod our
/// container writes them as another user than the app's, so the mode must give the app
/// write access; the directory already lets the same readers replace them ([`dir_mode`]),
/// so this grants nothing new. Pure.
pub fn legacy_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 1)
}

fn seed(
    dir: &Path,
    file_mode: u32,
    key: &HandleKey,
    token: &AccessToken,
    now: SystemTime,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Keep a setgid bit that an fsGroup's volume passed down.
        let current = std::fs::metadata(dir)
            .map_err(file_error("read", dir))?
            .permissions()
            .mode();
        let mode = dir_mode(file_mode) | (current & 0o2000);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(file_error("set the mode of", dir))?;
    }
    let config = ClientConfig::in_dir(dir);
    let ours = |h: &Option<SecretString>| h.as_ref().filter(|h| key.verify_secret(h)).cloned();
    let toml = config
        .read()
        .ok()
        .flatten()
        .filter(|s| s.access_token.is_some())
        .and_then(|s| ours(&s.refresh_token));
    // config.toml first: a 0.12 client finding the legacy files beside a config.toml
    // without [auth] would migrate them (and delete them under an older client).
    let handle = match toml {
        Some(handle) => handle,
        None => {
            let handle: SecretString = key.mint(now);
            config.store_toml(token.secret(), &handle, file_mode)?;
            handle
        }
    };
    // The legacy files at every renewal: 0.7 to 0.11 read them again at every call, and
    // refresh only in their last seconds, well after our renewal.
    let legacy = config
        .read_legacy()
        .ok()
        .flatten()
        .and_then(|s| ours(&s.refresh_token))
        .unwrap_or(handle);
    config.store_legacy(token.secret(), &legacy, legacy_mode(file_mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dirs_let_the_readers_replace_files() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o770);
        assert_eq!(dir_mode(0o644), 0o777);
    }

    #[test]
    fn legacy_files_are_writable_by_their_readers() {
        assert_eq!(legacy_mode(0o600), 0o600);
        assert_eq!(legacy_mode(0o400), 0o600);
        assert_eq!(legacy_mode(0o640), 0o660);
        assert_eq!(legacy_mode(0o440), 0o660);
        assert_eq!(legacy_mode(0o644), 0o666);
        assert_eq!(legacy_mode(0o444), 0o666);
    }

    #[cfg(unix)]
    #[test]
    fn every_renewal_rewrites_the_legacy_files_and_config_toml_only_once() {
        use secrecy::ExposeSecret;
        use std::os::unix::fs::PermissionsExt;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let roots = tmp.path().join("roots.pem");
        std::fs::write(&roots, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let app = tmp.path().join("client/app");
        let s = Settings {
            domain: DEFAULT_DOMAIN.into(),
            state_dir: tmp.path().join("state"),
            client_configs: vec![app.clone()],
            ca_bundle: tmp.path().join(CA_BUNDLE_FILE),
            system_roots: roots,
            file_mode: 0o640,
        };
        let now = SystemTime::now();
        let token =
            |t: &str| AccessToken::new(t.to_string().into(), now, now + Duration::from_secs(300));
        let prepared = prepare(&s, &token("first"), now).unwrap();
        let read = |n: &str| std::fs::read_to_string(app.join(n)).unwrap();
        let config = ClientConfig::in_dir(&app);
        let stored = config.read().unwrap().unwrap();
        let handle = stored.refresh_token.unwrap();
        assert!(prepared.key.verify_secret(&handle));
        // Bare: a trailing newline breaks 0.11's requests.
        assert_eq!(read(client_config::LEGACY_ACCESS_FILE), "first");
        assert_eq!(
            read(client_config::LEGACY_REFRESH_FILE),
            handle.expose_secret()
        );
        prepared.seed(&s, &token("second"), now).unwrap();
        // config.toml is the 0.12 client's from now on; the legacy files follow renewals.
        let again = config.read().unwrap().unwrap();
        assert_eq!(again.access_token.unwrap().expose_secret(), "first");
        assert_eq!(read(client_config::LEGACY_ACCESS_FILE), "second");
        assert_eq!(
            read(client_config::LEGACY_REFRESH_FILE),
            handle.expose_secret()
        );
        for n in [
            client_config::LEGACY_ACCESS_FILE,
            client_config::LEGACY_REFRESH_FILE,
        ] {
            // The client writes them back in place after a refresh through the relay.
            let mode = std::fs::metadata(app.join(n)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660, "{n}");
        }
        // A foreign refresh token in the legacy file is replaced by one of our handles.
        std::fs::write(app.join(client_config::LEGACY_REFRESH_FILE), "foreign").unwrap();
        prepared.seed(&s, &token("third"), now).unwrap();
        let legacy = read(client_config::LEGACY_REFRESH_FILE);
        assert!(prepared.key.verify(&legacy), "{legacy}");
    }

    #[test]
    fn the_bundle_keeps_the_roots_and_adds_the_ca() {
        let b = bundle_text("ROOTS\n\n", "CA\n");
        assert!(b.starts_with("ROOTS\n#"));
        assert!(b.ends_with("CA\n"));
    }
}
