//! Where stored tokens live on a machine, for the modes that read them back: login's two
//! stores (config.toml and the bare token file), which `status` and `logout`
//! look at too, and the places `exec` looks for a token that stays valid.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::TokenFile;
use super::client_config::{self, ClientConfig, PERSONAL_MODE};
use super::file::DEFAULT_POD_PATH;
use crate::token::AccessToken;

/// Where login puts the tokens, and where `status` and `logout` look.
#[derive(Clone, Debug)]
pub struct Stores {
    pub token_file: TokenFile,
    pub config: ClientConfig,
}

impl Stores {
    /// The stores at these paths, defaults from the environment.
    pub fn from_env(
        token_file: Option<&Path>,
        config_dir: Option<&Path>,
    ) -> Result<Self, client_config::Error> {
        let env = |k: &str| std::env::var_os(k);
        Self::resolve(token_file, config_dir, &env)
    }

    pub fn resolve(
        token_file: Option<&Path>,
        config_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Self, client_config::Error> {
        let path = client_config::seed_token_path(token_file, env)?;
        let dir = client_config::config_dir(config_dir, env)?;
        Ok(Self {
            token_file: TokenFile::new(path, PERSONAL_MODE),
            config: ClientConfig::in_dir(&dir),
        })
    }
}

/// A place a token may be stored.
#[derive(Clone, Debug)]
pub enum Stored {
    File(TokenFile),
    Config(ClientConfig),
}

impl Stored {
    pub fn path(&self) -> &Path {
        match self {
            Self::File(f) => f.path(),
            Self::Config(c) => c.path(),
        }
    }

    fn read(&self) -> Option<AccessToken> {
        match self {
            Self::File(f) => f.read().ok(),
            Self::Config(c) => {
                let value = c.read().ok()??.access_token?;
                AccessToken::from_jwt(value).ok()
            }
        }
    }
}

/// Where to look: the explicit token file alone, or the sidecar's file, then login's.
pub fn places(
    token_file: Option<&Path>,
    config_dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<Stored> {
    if let Some(path) = token_file {
        return vec![Stored::File(TokenFile::new(path, PERSONAL_MODE))];
    }
    let mut places = vec![Stored::File(TokenFile::new(
        DEFAULT_POD_PATH,
        PERSONAL_MODE,
    ))];
    if let Ok(path) = client_config::seed_token_path(None, env) {
        places.push(Stored::File(TokenFile::new(path, PERSONAL_MODE)));
    }
    if let Ok(dir) = client_config::config_dir(config_dir, env) {
        places.push(Stored::Config(ClientConfig::in_dir(&dir)));
    }
    places
}

/// The first stored token valid for at least `min_valid`, and where it was.
pub fn pick(
    places: &[Stored],
    now: SystemTime,
    min_valid: Duration,
) -> Option<(AccessToken, &Stored)> {
    places.iter().find_map(|p| {
        p.read()
            .filter(|t| t.valid_for(now, min_valid))
            .map(|t| (t, p))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::token::tests::jwt;

    fn token_at(path: &Path, exp: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, jwt(&serde_json::json!({"exp": exp}))).unwrap();
    }

    #[test]
    fn the_first_token_valid_with_margin_wins() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        let env = move |k: &str| (k == "HOME").then(|| home.clone().into_os_string());
        let places = places(None, Some(&dir.path().join("cfg")), &env);
        assert_eq!(places.len(), 3);
        assert_eq!(places[0].path(), Path::new(DEFAULT_POD_PATH));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let margin = Duration::from_secs(30);
        assert!(pick(&places[1..], now, margin).is_none());

        // The seed file's token is too close to expiry; config.toml's is fine.
        token_at(&dir.path().join(".polars/cloud_access_token"), 1_000_020);
        let cfg = ClientConfig::in_dir(&dir.path().join("cfg"));
        let good = jwt(&serde_json::json!({"exp": 1_000_300}));
        cfg.store(&good.clone().into(), Some(&"r".to_string().into()))
            .unwrap();
        let (t, place) = pick(&places[1..], now, margin).unwrap();
        assert_eq!(place.path(), cfg.path());
        assert_eq!(t.secret().expose_secret(), good);

        token_at(&dir.path().join(".polars/cloud_access_token"), 1_000_100);
        let (_, place) = pick(&places[1..], now, margin).unwrap();
        assert_eq!(place.path(), dir.path().join(".polars/cloud_access_token"));
    }

    #[test]
    fn an_explicit_token_file_is_the_only_place() {
        let places = places(Some(Path::new("/x/token")), None, &|_: &str| None);
        assert_eq!(places.len(), 1);
        assert_eq!(places[0].path(), Path::new("/x/token"));
    }

    #[test]
    fn stores_default_to_the_clients_paths() {
        let env = |k: &str| match k {
            "HOME" => Some(OsString::from("/home/u")),
            _ => None,
        };
        let paths = |s: Stores| {
            [
                s.config.path().to_path_buf(),
                s.token_file.path().to_path_buf(),
            ]
        };
        let s = Stores::resolve(None, None, &env).unwrap();
        if cfg!(all(unix, not(target_os = "macos"))) {
            assert_eq!(
                paths(s),
                [
                    PathBuf::from("/home/u/.config/polars_cloud/config.toml"),
                    PathBuf::from("/home/u/.polars/cloud_access_token")
                ]
            );
        }
        let s =
            Stores::resolve(Some(Path::new("/t/token")), Some(Path::new("/t/cfg")), &env).unwrap();
        assert_eq!(
            paths(s),
            [
                PathBuf::from("/t/cfg/config.toml"),
                PathBuf::from("/t/token")
            ]
        );
    }
}
