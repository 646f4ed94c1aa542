//! The token file: the bare token, replaced atomically so that a reader polling it never
//! sees it empty or half-written, with its mode re-applied on every write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use crate::token::{AccessToken, JwtError};

/// Where the token file lives when neither flag nor `POLARS_CLOUD_ACCESS_TOKEN_PATH` say.
pub const DEFAULT_POD_PATH: &str = "/var/run/polars-cloud/token";

/// A token file and the mode it is kept at.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
    mode: u32,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>, mode: u32) -> Self {
        Self {
            path: path.into(),
            mode,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Replaces the file's content with `token`. An expired token is refused, so a reader
    /// never gets one from us.
    pub fn write(&self, token: &AccessToken, now: SystemTime) -> Result<(), Error> {
        if token.expires_at() <= now {
            return Err(Error::Expired {
                path: self.path.clone(),
            });
        }
        self.write_secret(token.secret())
    }

    /// Replaces the file's content with `value`, whatever it is.
    pub fn write_secret(&self, value: &SecretString) -> Result<(), Error> {
        write_atomic(&self.path, value.expose_secret().as_bytes(), self.mode).map_err(|source| {
            Error::Write {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// The token in the file, read as a JWT.
    pub fn read(&self) -> Result<AccessToken, Error> {
        let text = fs::read_to_string(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        let value = SecretString::from(text.trim().to_string());
        AccessToken::from_jwt(value).map_err(|source| Error::NotAToken {
            path: self.path.clone(),
            source,
        })
    }

    /// Deletes the file; a file already gone is fine.
    pub fn remove(&self) -> Result<bool, Error> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Write {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory: create
/// exclusively with `mode`, write, fsync, re-apply `mode` (the umask may have narrowed
/// it), rename over the target, fsync the directory. On any failure the temporary file is
/// removed and the old content stays.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        set_mode(&tmp, mode)?;
        drop(file);
        replace(&tmp, path)?;
        sync_dir(&dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

fn replace(from: &Path, to: &Path) -> io::Result<()> {
    // On Windows a rename over a file another process holds open can fail for a moment.
    let mut tries = 0;
    loop {
        match fs::rename(from, to) {
            Err(e) if cfg!(windows) && tries < 10 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
                if tries == 10 {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Best effort: the rename is what readers rely on; this only makes it durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// Why the token file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write failed; the previous token, if any, is still in place.
    #[error("failed to write token file '{}' (the previous token, if any, is unchanged)", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// We never write a token that has already expired.
    #[error("refusing to write an already expired token to '{}': check the clock", path.display())]
    Expired { path: PathBuf },
    /// Reading failed (for `probe`, `exec`, `status`).
    #[error("failed to read token file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file holds something that is not a JWT with `exp`.
    #[error("token file '{}' does not hold a usable token", path.display())]
    NotAToken {
        path: PathBuf,
        #[source]
        source: JwtError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::jwt;
    use std::time::{Duration, UNIX_EPOCH};

    fn token(exp: u64) -> AccessToken {
        AccessToken::from_jwt(jwt(&serde_json::json!({"exp": exp, "iat": exp - 300})).into())
            .unwrap()
    }

    #[test]
    fn writes_the_bare_token_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("a/b/token"), 0o640);
        let t = token(2_000_000_000);
        file.write(&t, SystemTime::now()).unwrap();
        let text = fs::read_to_string(file.path()).unwrap();
        assert_eq!(text, t.secret().expose_secret());
        assert_eq!(file.read().unwrap().expires_at(), t.expires_at());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn mode_is_reapplied_on_every_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let t = token(2_000_000_000);
        TokenFile::new(&path, 0o640)
            .write(&t, SystemTime::now())
            .unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        TokenFile::new(&path, 0o600)
            .write(&t, SystemTime::now())
            .unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn an_expired_token_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("token"), 0o600);
        file.write(&token(2_000_000_000), SystemTime::now())
            .unwrap();
        let before = fs::read_to_string(file.path()).unwrap();
        let err = file
            .write(&token(1_000), UNIX_EPOCH + Duration::from_secs(5_000))
            .unwrap_err();
        assert!(matches!(err, Error::Expired { .. }));
        assert_eq!(fs::read_to_string(file.path()).unwrap(), before);
    }

    #[test]
    fn reading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "not a token").unwrap();
        let err = TokenFile::new(&path, 0o600).read().unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        let err = TokenFile::new(dir.path().join("none"), 0o600)
            .read()
            .unwrap_err();
        assert!(matches!(err, Error::Read { .. }));
    }
}
