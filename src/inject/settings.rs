//! What to inject: the settings (defaults from the flags, the config file or the
//! webhook's environment) and the checks of single values that flags and annotations
//! share.

use std::time::Duration;

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::containers::CREDENTIALS_DIR;
use super::{InjectError, broker, quantity, relay_pod};

/// The credentials Secret's default name.
pub const DEFAULT_SECRET_NAME: &str = "polars-cloud-credentials";

/// The default image of the injected containers: this very version.
pub fn default_image() -> String {
    format!("polars-cloud-auth:{}", env!("CARGO_PKG_VERSION"))
}

/// How the token gets into the pod.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A native sidecar (Kubernetes >= 1.29): an init container with `restartPolicy:
    /// Always` whose startup probe holds back the app containers until a token exists.
    #[default]
    Native,
    /// An init container for the first token and a regular sidecar container that keeps
    /// it fresh, for clusters without native sidecars.
    Classic,
    /// One init container that fetches the token once, for work that ends before the
    /// token expires.
    InitOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Classic => "classic",
            Mode::InitOnly => "init-only",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("'{s}' is not a mode; use native, classic or init-only"))
    }
}

/// An absolute token file path with at least one directory (the volume's mount point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPath(String);

impl TokenPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{s}' is not an absolute file path below a directory; write e.g. /var/run/polars-cloud/token"
            )
        };
        let rest = s.strip_prefix('/').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(char::is_whitespace))
            || s.contains(':')
        {
            return Err(bad());
        }
        let path = Self(s.to_string());
        let dir = path.dir();
        let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        for ours in [
            CREDENTIALS_DIR,
            relay_pod::CLIENT_DIR,
            crate::relay::DEFAULT_STATE_DIR,
        ] {
            if inside(dir, ours) || inside(ours, dir) {
                return Err(format!(
                    "'{s}' puts the token volume at {dir}, which overlaps polars-cloud-auth's mount {ours}; choose another directory"
                ));
            }
        }
        // A volume mounted there would hide the image's own files: programs (ours among
        // them), libraries, the CA bundle, or the kernel's interfaces.
        const SYSTEM: [&str; 12] = [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
            "/dev", "/sys", "/boot",
        ];
        if let Some(system) = SYSTEM.iter().find(|sys| inside(dir, sys)) {
            return Err(format!(
                "'{s}' puts the token volume at {dir}, inside {system}, where it would hide the image's own files; choose a directory such as /var/run/polars-cloud"
            ));
        }
        Ok(path)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory: the token volume's mount point.
    pub fn dir(&self) -> &str {
        self.0.rsplit_once('/').map_or("/", |(d, _)| d)
    }
}

impl Default for TokenPath {
    fn default() -> Self {
        Self(crate::sink::file::DEFAULT_POD_PATH.to_string())
    }
}

/// What to inject. The defaults come from the flags (or the webhook's environment);
/// a pod's annotations override them.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub image: String,
    pub secret_name: String,
    pub mode: Mode,
    pub token_path: TokenPath,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// `POLARS_CLOUD_DOMAIN` of our containers.
    pub domain: Option<String>,
    /// `POLARS_CLOUD_ISSUER` of our containers.
    pub issuer: Option<String>,
    /// The native sidecar's startup probe passes once the token is valid this long
    /// (`None`: the probe's default, 30 s but at most a tenth of the token's life).
    pub min_valid: Option<Duration>,
    /// `POLARS_CLOUD_RENEW_AT` of the sidecar (its own default when unset).
    pub renew_at: Option<f64>,
    /// The relay: the app's own client refreshes through our container (see
    /// `crate::relay`). Without it the app gets the token file only.
    pub relay: bool,
    /// The audience of a projected service-account token that authenticates our
    /// container's client (a client assertion) instead of the credentials Secret; for a
    /// confidential client in a realm the user controls (`POLARS_CLOUD_ISSUER`).
    pub client_assertion_audience: Option<String>,
    /// The token broker, when the cluster runs one: pods are then broker-backed (unless
    /// they opt out, or name their own client-assertion audience).
    pub broker: Option<broker::Broker>,
    /// A CA our containers trust for the identity provider (`POLARS_CLOUD_CA_PEM`), when
    /// they talk to it (not broker-backed ones).
    pub issuer_ca_pem: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: default_image(),
            secret_name: DEFAULT_SECRET_NAME.to_string(),
            mode: Mode::Native,
            token_path: TokenPath::default(),
            cpu_request: "5m".into(),
            memory_request: "8Mi".into(),
            memory_limit: "32Mi".into(),
            domain: None,
            issuer: None,
            min_valid: None,
            renew_at: None,
            relay: true,
            client_assertion_audience: None,
            broker: None,
            issuer_ca_pem: None,
        }
    }
}

/// Checks of single values, shared by the annotations and the flags. Each returns why
/// the value is unusable, naming the value and what to write instead.
pub mod check {
    use std::time::Duration;

    use super::{DEFAULT_SECRET_NAME, Mode, TokenPath};
    use crate::values::{Fraction, HumanDuration};

    pub fn image(s: &str) -> Result<String, String> {
        if s.is_empty() || s.contains(char::is_whitespace) || s.len() > 1024 {
            return Err(format!(
                "'{s}' is not an image reference; write e.g. polars-cloud-auth:{}",
                env!("CARGO_PKG_VERSION")
            ));
        }
        Ok(s.to_string())
    }

    /// A Secret name is a DNS subdomain: lowercase letters, digits, '-' and '.'.
    pub fn secret_name(s: &str) -> Result<String, String> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(format!(
                "'{s}' is not a Secret name (lowercase letters, digits, '-' and '.'); write e.g. {DEFAULT_SECRET_NAME}"
            ));
        }
        Ok(s.to_string())
    }

    pub fn quantity(s: &str) -> Result<String, String> {
        super::super::quantity::parse(s).map(|_| s.to_string())
    }

    pub fn domain(s: &str) -> Result<String, String> {
        if s.is_empty()
            || s.contains("://")
            || s.contains(['/', ' '])
            || !s.contains('.')
            || s.len() > 253
        {
            return Err(format!(
                "'{s}' is not a domain name; write e.g. prd.cloud.pola.rs (no scheme, no path)"
            ));
        }
        Ok(s.to_string())
    }

    pub fn issuer(s: &str) -> Result<String, String> {
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
                Ok(s.to_string())
            }
            _ => Err(format!(
                "'{s}' is not an http(s) issuer URL; write e.g. https://auth.prd.cloud.pola.rs/realms/Polars"
            )),
        }
    }

    pub fn min_valid(s: &str) -> Result<Duration, String> {
        let d = s.parse::<HumanDuration>()?.0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "'{s}' is out of range; write a duration between 1s and 24h, e.g. 30s"
            ));
        }
        Ok(d)
    }

    pub fn renew_at(s: &str) -> Result<f64, String> {
        s.parse::<Fraction>().map(|f| f.0).map_err(|e| {
            format!("{e}; write the fraction of the token's life after which to renew, e.g. 0.8")
        })
    }

    pub fn mode(s: &str) -> Result<Mode, String> {
        Mode::parse(s)
    }

    pub fn switch(s: &str) -> Result<bool, String> {
        match s {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("'{s}' is neither \"true\" nor \"false\"")),
        }
    }

    pub fn token_path(s: &str) -> Result<TokenPath, String> {
        TokenPath::parse(s)
    }
}

/// The API server refuses a container whose memory request exceeds its limit; say so
/// before it does, naming the annotations.
pub fn check_limits(s: &Settings) -> Result<(), InjectError> {
    let request = quantity::parse(&s.memory_request).unwrap_or(0.0);
    let limit = quantity::parse(&s.memory_limit).unwrap_or(f64::INFINITY);
    if request > limit {
        return Err(InjectError::RequestAboveLimit {
            request: s.memory_request.clone(),
            limit: s.memory_limit.clone(),
        });
    }
    Ok(())
}
