//! Where the Polars Cloud clients look for a person's tokens, and how we put them there.
//!
//! - The current client (0.12) reads `config.toml` in its config directory
//!   (`POLARS_CLOUD_CONFIG_DIR`, else the platform config dir + `polars_cloud`) and needs
//!   both `[auth] access_token` and `refresh_token`. We edit that file with `toml_edit`, so
//!   the person's other keys and comments stay as they were.
//! - Clients 0.6 to 0.11 read the bare tokens from `cloud_access_token` and
//!   `cloud_refresh_token` in the same directory (both must be there), again at every
//!   call. 0.12 leaves these files alone while `config.toml` has an `[auth]`, so we write
//!   both kinds.
//! - `~/.polars/cloud_access_token` (moved by `POLARS_CLOUD_ACCESS_TOKEN_PATH`) is read by
//!   no released client (0.6 to 0.12 checked); login writes it for `exec`, `status` and
//!   tools that read a token file. It is a [`TokenFile`](super::TokenFile).
//!
//! Everything is written atomically with mode 0600.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use toml_edit::{DocumentMut, Item, Value};

use super::file::write_atomic;

/// Files holding a person's tokens are theirs alone.
pub const PERSONAL_MODE: u32 = 0o600;
/// The current client's configuration file, in its config directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The directory under the platform config dir that the client uses.
pub const CLIENT_DIR: &str = "polars_cloud";
/// The access token file of clients 0.6 to 0.11, in the config directory.
pub const LEGACY_ACCESS_FILE: &str = "cloud_access_token";
/// The refresh token file of clients 0.6 to 0.11, in the config directory.
pub const LEGACY_REFRESH_FILE: &str = "cloud_refresh_token";
/// A bare token file under the home directory, for `exec`, `status` and tools (no
/// polars-cloud release reads it).
pub const SEED_TOKEN_FILE: &str = ".polars/cloud_access_token";

/// The config directory the 0.12 client reads: `POLARS_CLOUD_CONFIG_DIR` (given as
/// `explicit`), else the platform's config directory + `polars_cloud`. `env` looks up
/// environment variables (a parameter so the rules are tested without touching the
/// process environment).
pub fn config_dir(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(dir.to_path_buf());
    }
    platform_config_dir(env)
        .map(|d| d.join(CLIENT_DIR))
        .ok_or(Error::NoConfigDir)
}

#[cfg(target_os = "macos")]
fn platform_config_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    home(env).map(|h| h.join("Library/Application Support"))
}

#[cfg(windows)]
fn platform_config_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    absolute(env("APPDATA"))
}

/// `$XDG_CONFIG_HOME` when it is absolute (the XDG spec ignores relative values), else
/// `~/.config`.
#[cfg(not(any(target_os = "macos", windows)))]
fn platform_config_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    absolute(env("XDG_CONFIG_HOME")).or_else(|| home(env).map(|h| h.join(".config")))
}

fn absolute(value: Option<OsString>) -> Option<PathBuf> {
    value.map(PathBuf::from).filter(|p| p.is_absolute())
}

/// The home directory: `HOME` (`USERPROFILE` on Windows).
pub fn home(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    absolute(env(var))
}

/// The bare token file: `explicit` (`--path`, `POLARS_CLOUD_ACCESS_TOKEN_PATH`)
/// or `~/.polars/cloud_access_token`.
pub fn seed_token_path(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, Error> {
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(path.to_path_buf());
    }
    home(env)
        .map(|h| h.join(SEED_TOKEN_FILE))
        .ok_or(Error::NoHome)
}

/// The tokens found in `[auth]`.
pub struct StoredAuth {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
}

/// The client's config directory: `config.toml` and the older clients' token files.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    path: PathBuf,
    legacy_access: PathBuf,
    legacy_refresh: PathBuf,
}

impl ClientConfig {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join(CONFIG_FILE),
            legacy_access: dir.join(LEGACY_ACCESS_FILE),
            legacy_refresh: dir.join(LEGACY_REFRESH_FILE),
        }
    }

    /// The `config.toml`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The older clients' access and refresh token files.
    pub fn legacy_paths(&self) -> [&Path; 2] {
        [&self.legacy_access, &self.legacy_refresh]
    }

    /// Sets `[auth] access_token` and `refresh_token`, keeping everything else, and writes
    /// the older clients' two files. Without a refresh token a stale one is removed (it
    /// would belong to another session). An invalid `config.toml` stops everything before
    /// anything is written.
    pub fn store(
        &self,
        access_token: &SecretString,
        refresh_token: Option<&SecretString>,
    ) -> Result<(), Error> {
        let text = self.read_text()?.unwrap_or_default();
        let updated =
            with_tokens(&text, access_token, refresh_token).map_err(|e| self.invalid(e, &text))?;
        write_file(&self.legacy_access, access_token.expose_secret())?;
        match refresh_token {
            Some(r) => write_file(&self.legacy_refresh, r.expose_secret())?,
            None => {
                remove_file(&self.legacy_refresh)?;
            }
        }
        write_file(&self.path, &updated)
    }

    /// Sets `[auth]` in `config.toml` alone, with file mode `mode`, for a config directory
    /// that polars-cloud-auth provides to an app (the relay's): the older clients' files
    /// are not written, and a file that is not valid TOML is replaced.
    pub fn store_toml(
        &self,
        access_token: &SecretString,
        refresh_token: &SecretString,
        mode: u32,
    ) -> Result<(), Error> {
        let text = self.read_text()?.unwrap_or_default();
        let updated = with_tokens(&text, access_token, Some(refresh_token))
            .or_else(|_| with_tokens("", access_token, Some(refresh_token)))
            .map_err(|e| self.invalid(e, ""))?;
        write_atomic(&self.path, updated.as_bytes(), mode).map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the older clients' two files alone, bare (a trailing newline makes 0.11's
    /// requests fail with `builder error`), atomically, with file mode `mode`: for a
    /// config directory that polars-cloud-auth provides to an app, rewritten at every
    /// renewal because those clients read them again at every call.
    pub fn store_legacy(
        &self,
        access_token: &SecretString,
        refresh_token: &SecretString,
        mode: u32,
    ) -> Result<(), Error> {
        for (path, value) in [
            (&self.legacy_refresh, refresh_token),
            (&self.legacy_access, access_token),
        ] {
            write_atomic(path, value.expose_secret().as_bytes(), mode).map_err(|source| {
                Error::Write {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The tokens in the older clients' files; `None` when there are none.
    pub fn read_legacy(&self) -> Result<Option<StoredAuth>, Error> {
        let access = read_optional(&self.legacy_access)?;
        let refresh = read_optional(&self.legacy_refresh)?;
        if access.is_none() && refresh.is_none() {
            return Ok(None);
        }
        let secret = |t: String| SecretString::from(t.trim().to_string());
        Ok(Some(StoredAuth {
            access_token: access.map(secret),
            refresh_token: refresh.map(secret),
        }))
    }

    /// The tokens in `[auth]`; `None` when the file does not exist.
    pub fn read(&self) -> Result<Option<StoredAuth>, Error> {
        let Some(text) = self.read_text()? else {
            return Ok(None);
        };
        let doc: DocumentMut = text
            .parse()
            .map_err(|e| self.invalid(EditError::Toml(e), &text))?;
        let get = |key: &str| {
            doc.get("auth")
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
                .map(|s| SecretString::from(s.to_string()))
        };
        Ok(Some(StoredAuth {
            access_token: get("access_token"),
            refresh_token: get("refresh_token"),
        }))
    }

    /// Removes the tokens from `[auth]` (and `[auth]` when nothing else is in it), deleting
    /// `config.toml` when nothing at all is left. Answers whether it changed. An invalid
    /// `config.toml` is left as it is, and said so.
    pub fn clear_toml(&self) -> Result<bool, Error> {
        let Some(text) = self.read_text()? else {
            return Ok(false);
        };
        let (updated, removed) = without_tokens(&text).map_err(|e| self.invalid(e, &text))?;
        if removed {
            if updated.trim().is_empty() {
                remove_file(&self.path)?;
            } else {
                write_file(&self.path, &updated)?;
            }
        }
        Ok(removed)
    }

    /// Deletes the older clients' token files; answers those that were there.
    pub fn clear_legacy(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        for path in [&self.legacy_access, &self.legacy_refresh] {
            if remove_file(path)? {
                removed.push(path.clone());
            }
        }
        Ok(removed)
    }

    fn read_text(&self) -> Result<Option<String>, Error> {
        read_optional(&self.path)
    }

    fn invalid(&self, e: EditError, text: &str) -> Error {
        match e {
            EditError::Toml(e) => Error::Invalid {
                path: self.path.clone(),
                line: e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1)),
                message: e.message().trim().to_string(),
            },
            EditError::NotATable => Error::AuthNotATable {
                path: self.path.clone(),
            },
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    write_atomic(path, text.as_bytes(), PERSONAL_MODE).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Deletes a file; answers whether it was there.
fn remove_file(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Why a text could not be edited.
#[derive(Debug)]
pub enum EditError {
    Toml(toml_edit::TomlError),
    /// `auth` is there but is not a table.
    NotATable,
}

/// `text` with `[auth] access_token` and `refresh_token` set; all else (other keys, other
/// tables, comments, order) is kept. Pure.
pub fn with_tokens(
    text: &str,
    access_token: &SecretString,
    refresh_token: Option<&SecretString>,
) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().map_err(EditError::Toml)?;
    let auth = doc
        .as_table_mut()
        .entry("auth")
        .or_insert_with(toml_edit::table);
    let auth = auth.as_table_like_mut().ok_or(EditError::NotATable)?;
    set_keeping_decor(auth, "access_token", access_token.expose_secret());
    match refresh_token {
        Some(r) => set_keeping_decor(auth, "refresh_token", r.expose_secret()),
        None => {
            auth.remove("refresh_token");
        }
    }
    Ok(doc.to_string())
}

/// Replaces a string value; a comment after the old value stays with the new one.
fn set_keeping_decor(table: &mut dyn toml_edit::TableLike, key: &str, value: &str) {
    let mut new = Value::from(value);
    match table.get_mut(key) {
        // Replacing the item in place keeps the key, and with it a comment above the line.
        Some(item) => {
            if let Some(old) = item.as_value() {
                *new.decor_mut() = old.decor().clone();
            }
            *item = Item::Value(new);
        }
        None => {
            table.insert(key, Item::Value(new));
        }
    }
}

/// `text` without `[auth] access_token` and `refresh_token` (and without an `[auth]` left
/// empty), and whether anything was removed. Pure.
pub fn without_tokens(text: &str) -> Result<(String, bool), EditError> {
    let mut doc: DocumentMut = text.parse().map_err(EditError::Toml)?;
    let Some(item) = doc.get_mut("auth") else {
        return Ok((text.to_string(), false));
    };
    let auth = item.as_table_like_mut().ok_or(EditError::NotATable)?;
    let removed = auth.remove("access_token").is_some() | auth.remove("refresh_token").is_some();
    if auth.is_empty() {
        doc.remove("auth");
    }
    Ok((doc.to_string(), removed))
}

/// Why the client's files could not be found, read or written. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither POLARS_CLOUD_CONFIG_DIR nor a home or config directory.
    #[error(
        "cannot tell where the Polars Cloud client keeps config.toml: set POLARS_CLOUD_CONFIG_DIR or --config-dir"
    )]
    NoConfigDir,
    /// No home directory for the default token file.
    #[error(
        "cannot tell the home directory: set HOME, or POLARS_CLOUD_ACCESS_TOKEN_PATH or --path"
    )]
    NoHome,
    /// The file exists but could not be read.
    #[error("failed to read '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML; we change nothing rather than lose the person's settings.
    #[error(
        "'{}' is not valid TOML{}: {message}; fix it or move it away (nothing was changed)",
        path.display(),
        line.map(|l| format!(" (line {l})")).unwrap_or_default()
    )]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// `auth` is a value, not a table.
    #[error("'{}' has an `auth` key that is not a table: fix it or move the file away (nothing was changed)", path.display())]
    AuthNotATable { path: PathBuf },
    /// Writing or removing failed; the previous content is unchanged.
    #[error("failed to write '{}' (its previous content is unchanged)", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_string())
    }

    const PERSONAL: &str = r#"# my Polars Cloud settings
domain = "dev.cloud.pola.rs" # staging

[auth]
# written by pc login
access_token = "old-access" # keep me
refresh_token = "old-refresh"
extra = 1

[profile]
workspace = "ws" # my workspace
"#;

    #[test]
    fn tokens_replace_the_old_ones_and_keep_comments_and_other_keys() {
        let out = with_tokens(PERSONAL, &s("new-access"), Some(&s("new-refresh"))).unwrap();
        assert_eq!(
            out,
            PERSONAL
                .replace("old-access", "new-access")
                .replace("old-refresh", "new-refresh")
        );
    }

    #[test]
    fn auth_is_added_to_a_file_without_it() {
        let text = "# top comment\ndomain = \"x\"\n\n[profile]\nname = \"a\" # why\n";
        let out = with_tokens(text, &s("a"), Some(&s("r"))).unwrap();
        assert!(out.starts_with(text), "{out}");
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["auth"]["access_token"].as_str(), Some("a"));
        assert_eq!(doc["auth"]["refresh_token"].as_str(), Some("r"));
        let empty = with_tokens("", &s("a"), Some(&s("r"))).unwrap();
        assert_eq!(
            empty,
            "[auth]\naccess_token = \"a\"\nrefresh_token = \"r\"\n"
        );
    }

    #[test]
    fn an_inline_auth_table_is_edited_in_place() {
        let out = with_tokens(
            "auth = { access_token = \"o\", other = 2 }\n",
            &s("n"),
            Some(&s("r")),
        )
        .unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["auth"]["access_token"].as_str(), Some("n"));
        assert_eq!(doc["auth"]["other"].as_integer(), Some(2));
    }

    #[test]
    fn without_a_refresh_token_a_stale_one_is_dropped() {
        let out = with_tokens(PERSONAL, &s("n"), None).unwrap();
        assert!(!out.contains("old-refresh"), "{out}");
        assert!(out.contains("extra = 1"));
    }

    #[test]
    fn clearing_keeps_the_rest_and_drops_an_empty_auth() {
        let (out, removed) = without_tokens(PERSONAL).unwrap();
        assert!(removed);
        assert!(
            !out.contains("old-access") && !out.contains("old-refresh"),
            "{out}"
        );
        assert!(
            out.contains("extra = 1") && out.contains("# my workspace"),
            "{out}"
        );
        let only = "[auth]\naccess_token = \"a\"\nrefresh_token = \"r\"\n";
        let (out, removed) = without_tokens(only).unwrap();
        assert!(removed);
        assert_eq!(out.trim(), "");
        let (out, removed) = without_tokens("domain = \"x\"\n").unwrap();
        assert!(!removed);
        assert_eq!(out, "domain = \"x\"\n");
    }

    #[test]
    fn invalid_files_are_refused_without_echoing_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClientConfig::in_dir(dir.path());
        let bad = "domain = \"x\"\n[auth\naccess_token = \"secret-in-a-broken-file\"\n";
        std::fs::write(cfg.path(), bad).unwrap();
        let err = cfg.store(&s("n"), Some(&s("r"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not valid TOML (line 2)"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
        assert!(!text.contains("secret-in-a-broken-file"), "{text}");
        assert_eq!(std::fs::read_to_string(cfg.path()).unwrap(), bad);
        assert!(!cfg.legacy_paths()[0].exists());
        std::fs::write(cfg.path(), "auth = 5\n").unwrap();
        let err = cfg.store(&s("n"), None).unwrap_err();
        assert!(matches!(err, Error::AuthNotATable { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_written_0600_read_back_and_removed_when_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClientConfig::in_dir(&dir.path().join("new/dir"));
        assert!(cfg.read().unwrap().is_none());
        assert!(cfg.read_legacy().unwrap().is_none());
        assert!(!cfg.clear_toml().unwrap());
        assert!(cfg.clear_legacy().unwrap().is_empty());
        cfg.store(&s("acc"), Some(&s("ref"))).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cfg.path()), 0o600);
        let auth = cfg.read().unwrap().unwrap();
        assert_eq!(auth.access_token.unwrap().expose_secret(), "acc");
        assert_eq!(auth.refresh_token.unwrap().expose_secret(), "ref");
        // The older clients' files: the bare tokens, 0600.
        let [access, refresh] = cfg.legacy_paths();
        assert_eq!(std::fs::read_to_string(access).unwrap(), "acc");
        assert_eq!(std::fs::read_to_string(refresh).unwrap(), "ref");
        assert_eq!((mode(access), mode(refresh)), (0o600, 0o600));
        let legacy = cfg.read_legacy().unwrap().unwrap();
        assert_eq!(legacy.access_token.unwrap().expose_secret(), "acc");
        // A file others could read is narrowed on the next write.
        std::fs::set_permissions(cfg.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        cfg.store(&s("acc2"), Some(&s("ref2"))).unwrap();
        assert_eq!(mode(cfg.path()), 0o600);
        // Without a refresh token, the stale one goes from both places.
        cfg.store(&s("acc3"), None).unwrap();
        assert!(cfg.read().unwrap().unwrap().refresh_token.is_none());
        assert!(!refresh.exists());
        assert!(cfg.clear_toml().unwrap());
        assert_eq!(cfg.clear_legacy().unwrap(), [access]);
        assert!(!cfg.path().exists() && !access.exists());
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[cfg(not(any(target_os = "macos", windows)))]
    #[test]
    fn the_config_dir_follows_the_client_rules() {
        let env = env_of(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/x")]);
        assert_eq!(
            config_dir(Some(Path::new("rel/dir")), &env).unwrap(),
            PathBuf::from("rel/dir")
        );
        assert_eq!(
            config_dir(None, &env).unwrap(),
            PathBuf::from("/x/polars_cloud")
        );
        let env = env_of(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "relative")]);
        assert_eq!(
            config_dir(None, &env).unwrap(),
            PathBuf::from("/home/u/.config/polars_cloud")
        );
        assert!(matches!(
            config_dir(None, &env_of(&[])),
            Err(Error::NoConfigDir)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn the_seed_token_file_is_under_home_unless_moved() {
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            seed_token_path(None, &env).unwrap(),
            PathBuf::from("/home/u/.polars/cloud_access_token")
        );
        assert_eq!(
            seed_token_path(Some(Path::new("/t/tok")), &env).unwrap(),
            PathBuf::from("/t/tok")
        );
        let err = seed_token_path(None, &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("POLARS_CLOUD_ACCESS_TOKEN_PATH"));
    }
}
