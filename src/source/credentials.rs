//! Where the client id and secret come from: the environment, or files the way a
//! Kubernetes Secret is mounted. Files are read again at every use, so a rotated Secret
//! is picked up without a restart.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::vars;

/// Where one credential value is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// Taken once from an environment variable (or flag), named for errors.
    Inline { value: String, from: &'static str },
    /// Read from this file at every use.
    File(PathBuf),
    /// Nowhere: an error naming what to set, at use.
    Missing { what: &'static str },
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline { from, .. } => write!(f, "Inline({from}, [redacted])"),
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Missing { what } => write!(f, "Missing({what})"),
        }
    }
}

/// The pair of values a grant needs.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub client_id: Value,
    pub client_secret: Value,
}

/// Explicit sources, in order of precedence: a file per value, then a directory holding
/// `client_id` and `client_secret`, then the environment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub client_id: Option<String>,
    pub client_id_file: Option<PathBuf>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
}

impl Credentials {
    pub fn from_sources(s: Sources) -> Self {
        let pick = |inline: Option<String>,
                    file: Option<PathBuf>,
                    name: &str,
                    from: &'static str,
                    what: &'static str| {
            if let Some(file) = file {
                Value::File(file)
            } else if let Some(dir) = &s.credentials_dir {
                Value::File(dir.join(name))
            } else if let Some(value) = inline {
                Value::Inline { value, from }
            } else {
                Value::Missing { what }
            }
        };
        Self {
            client_id: pick(
                s.client_id.clone(),
                s.client_id_file.clone(),
                "client_id",
                vars::CLIENT_ID,
                "client id: set POLARS_CLOUD_CLIENT_ID, --client-id-file or --credentials-dir",
            ),
            client_secret: pick(
                s.client_secret.clone(),
                s.client_secret_file.clone(),
                "client_secret",
                vars::CLIENT_SECRET,
                "client secret: set POLARS_CLOUD_CLIENT_SECRET, --client-secret-file or --credentials-dir",
            ),
        }
    }

    /// Reads both values now.
    pub fn load(&self) -> Result<(String, SecretString), Error> {
        let id = self.id()?;
        let secret = read(&self.client_secret)?;
        if secret.chars().any(char::is_control) {
            return Err(Error::ControlCharacter {
                from: describe(&self.client_secret),
            });
        }
        Ok((id, SecretString::from(secret)))
    }
}

impl Credentials {
    /// The client id alone, now, or `None` when none is configured (a client assertion
    /// names its client itself).
    pub fn client_id(&self) -> Result<Option<String>, Error> {
        match self.client_id {
            Value::Missing { .. } => Ok(None),
            _ => self.id().map(Some),
        }
    }

    fn id(&self) -> Result<String, Error> {
        let id = read(&self.client_id)?;
        if id.contains(char::is_whitespace) || id.chars().any(char::is_control) {
            return Err(Error::BadClientId {
                from: describe(&self.client_id),
            });
        }
        Ok(id)
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Inline { from, .. } => (*from).to_string(),
        Value::File(path) => format!("'{}'", path.display()),
        Value::Missing { what } => (*what).to_string(),
    }
}

fn read(v: &Value) -> Result<String, Error> {
    let raw = match v {
        Value::Inline { value, .. } => value.clone(),
        Value::File(path) => read_file(path)?,
        Value::Missing { what } => return Err(Error::Missing { what }),
    };
    let trimmed = raw.trim_end_matches(['\n', '\r']).to_string();
    if trimmed.trim().is_empty() {
        return Err(Error::Empty { from: describe(v) });
    }
    Ok(trimmed)
}

fn read_file(path: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Why the credentials could not be read. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing configured.
    #[error("no {what}")]
    Missing { what: &'static str },
    /// Configured, but empty.
    #[error("the credential from {from} is empty")]
    Empty { from: String },
    /// The file could not be read.
    #[error("failed to read credential file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not text.
    #[error("credential file '{}' is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    /// A client id with spaces is a pasting mistake, not an id.
    #[error("the client id from {from} contains whitespace or control characters")]
    BadClientId { from: String },
    /// A newline inside a secret is almost always a pasting mistake.
    #[error(
        "the client secret from {from} contains a line break or control character (only trailing newlines are trimmed)"
    )]
    ControlCharacter { from: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn inline(id: &str, secret: &str) -> Credentials {
        Credentials::from_sources(Sources {
            client_id: Some(id.into()),
            client_secret: Some(secret.into()),
            ..Sources::default()
        })
    }

    #[test]
    fn env_values_are_trimmed_of_trailing_newlines() {
        let (id, secret) = inline("sa\n", "s3cret\r\n").load().unwrap();
        assert_eq!(id, "sa");
        assert_eq!(secret.expose_secret(), "s3cret");
    }

    #[test]
    fn files_win_over_env_and_are_reread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client_id"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("client_secret"), "one\n").unwrap();
        let creds = Credentials::from_sources(Sources {
            client_id: Some("from-env".into()),
            client_secret: Some("env-secret".into()),
            credentials_dir: Some(dir.path().to_path_buf()),
            ..Sources::default()
        });
        assert_eq!(creds.load().unwrap().0, "from-file");
        assert_eq!(creds.load().unwrap().1.expose_secret(), "one");
        std::fs::write(dir.path().join("client_secret"), "two").unwrap();
        assert_eq!(creds.load().unwrap().1.expose_secret(), "two");
    }

    #[test]
    fn missing_values_name_what_to_set() {
        let err = Credentials::from_sources(Sources::default())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("POLARS_CLOUD_CLIENT_ID"), "{err}");
        let err = inline("sa", "").load().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the credential from POLARS_CLOUD_CLIENT_SECRET is empty"
        );
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let creds = Credentials::from_sources(Sources {
            credentials_dir: Some("/nonexistent/creds".into()),
            ..Sources::default()
        });
        let err = creds.load().unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to read credential file '/nonexistent/creds/client_id'"
        );
    }

    #[test]
    fn a_newline_inside_the_secret_is_refused_without_echoing_it() {
        let err = inline("sa", "abc\ndef").load().unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("line break"), "{text}");
        assert!(!text.contains("abc") && !text.contains("def"), "{text}");
    }

    #[test]
    fn debug_never_shows_inline_values() {
        let creds = inline("sa", "hunter2");
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
