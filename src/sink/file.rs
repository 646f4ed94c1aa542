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
    remove_stale_temps(&dir, &name.to_string_lossy());
    let tmp = dir.join(format!(
        ".{}.{}.{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        // Before any byte of the token: the temporary file's owner is who we are.
        check_dir(&dir, &file)?;
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

/// Whether a directory owned by `dir_uid` with `dir_mode` is one another user planted for
/// a writer running as `our_uid`: it belongs to someone other than us and root, and others
/// may write in it. That user could replace the token, and a setgid bit makes the file
/// belong to their group, which a group-readable mode then lets them read. Kubernetes'
/// emptyDir volumes (root's, setgid to the pod's `fsGroup`) and directories of our own
/// are fine.
pub fn planted(dir_uid: u32, dir_mode: u32, our_uid: u32) -> bool {
    dir_uid != our_uid && dir_uid != 0 && dir_mode & 0o022 != 0
}

#[cfg(unix)]
fn check_dir(dir: &Path, ours: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = ours.metadata()?.uid();
    let meta = fs::metadata(dir)?;
    if planted(meta.uid(), meta.mode(), me) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the directory '{}' belongs to uid {} and others may write in it (mode {:04o}): that user could read or replace the token; use a directory that you (uid {me}) or root own and only you may write in (for example `mkdir -m 0700`, or the pod's emptyDir volume)",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_dir(_dir: &Path, _ours: &File) -> io::Result<()> {
    Ok(())
}

/// A temporary file of ours older than this was left by a writer that died (SIGKILL, a
/// full disk before the fix for SIGXFSZ): a write takes milliseconds.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes temporary files that a killed writer of `name` left in `dir`: only names of
/// our pattern (`.{name}.{pid}.{8 hex}.tmp`) and only when older than [`STALE_TEMP`], so
/// a write in progress in another process is left alone. They may hold a token. Best
/// effort: a failure here must not stop the write.
fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        let ours = rest.split_once('.').is_some_and(|(pid, hex)| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && hex.len() == 8
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        let stale = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_TEMP);
        if ours && stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a stale temporary token file")
                }
                Err(e) => {
                    tracing::debug!(path = %entry.path().display(), error = %e, "could not remove a stale temporary file")
                }
            }
        }
    }
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
    fn stale_temp_files_of_killed_writers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let old = SystemTime::now() - Duration::from_secs(120);
        let make = |name: &str, at: SystemTime| {
            let f = File::create(dir.path().join(name)).unwrap();
            f.set_modified(at).unwrap();
        };
        make(".token.4242.deadbeef.tmp", old);
        make(".token.1.0000abcd.tmp", old);
        make(".token.4242.cafebabe.tmp", SystemTime::now()); // a write in progress
        make(".other.4242.deadbeef.tmp", old);
        make("notes.tmp", old);
        make(".token.x.deadbeef.tmp", old);
        TokenFile::new(&path, 0o600)
            .write(&token(2_000_000_000), SystemTime::now())
            .unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".other.4242.deadbeef.tmp",
                ".token.4242.cafebabe.tmp",
                ".token.x.deadbeef.tmp",
                "notes.tmp",
                "token"
            ]
        );
    }

    #[test]
    fn a_directory_planted_by_another_user_is_refused() {
        // Another user's world-writable setgid directory (issue 18, item 5).
        assert!(planted(1001, 0o2777, 65532));
        assert!(planted(1001, 0o777, 65532));
        assert!(planted(1001, 0o2775, 65532));
        // A Kubernetes emptyDir with an fsGroup: root's, setgid, world-writable.
        assert!(!planted(0, 0o2777, 65532));
        // /tmp, and directories of our own.
        assert!(!planted(0, 0o1777, 1000));
        assert!(!planted(1000, 0o2777, 1000));
        // Another user's directory that nobody else may write in.
        assert!(!planted(1001, 0o755, 1000));
    }

    /// Regression (issue 18, item 5): the token ended up group-readable by the user who
    /// planted the directory. Needs root to make a directory of another user.
    #[cfg(unix)]
    #[test]
    fn init_refuses_a_planted_setgid_directory_and_writes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let planted_dir = dir.path().join("shared");
        fs::create_dir(&planted_dir).unwrap();
        if std::os::unix::fs::chown(&planted_dir, Some(4242), Some(4242)).is_err() {
            eprintln!("skipped: only root can make a directory of another user here");
            return;
        }
        fs::set_permissions(&planted_dir, fs::Permissions::from_mode(0o2777)).unwrap();
        let file = TokenFile::new(planted_dir.join("token"), 0o640);
        let err = file
            .write(&token(2_000_000_000), SystemTime::now())
            .unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(
            text.contains(&*planted_dir.to_string_lossy())
                && text.contains("uid 4242")
                && text.contains("mode 2777")
                && text.contains("mkdir -m 0700"),
            "{text}"
        );
        // Not even an empty temporary file is left.
        assert_eq!(fs::read_dir(&planted_dir).unwrap().count(), 0);
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
