//! Which `polars-cloud` client an app runs, and whether a delivery mode serves it. Pure.
//!
//! The clients fall into behaviour families (docs/polars-cloud-client.md has the
//! measurements); every mode with a relay serves every family from 0.7 on, because the
//! config directory holds both `config.toml` (0.12) and the legacy token files (0.7 to
//! 0.11), rewritten at every renewal. The relay learns a client's version from the
//! headers of its refresh (`x-client-version`, else `User-Agent: polars-cloud/X`); a
//! client of 0.10 or older cannot even finish the TLS handshake with it (built-in roots
//! only), which is also worth telling.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

/// A client release, `major.minor.patch` (a pre-release suffix is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// `0.12.0`, `0.12.0rc1`, `0.12`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = digits(parts.next()?)?;
        let patch = parts.next().map_or(Some(0), digits)?;
        Some(Self(major, minor, patch))
    }
}

fn digits(part: &str) -> Option<u32> {
    let end = part
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(part.len());
    part[..end].parse().ok()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// How a range of releases authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// 0.6: legacy files, and no `POLARS_CLOUD_API_ADDR`, so the private domain a relay
    /// mode sets would move its API calls too.
    NoApiAddr,
    /// 0.7 to 0.10: re-read the legacy files at every call; their HTTPS trusts built-in
    /// roots only, so they cannot refresh through the relay.
    LegacyBuiltinRoots,
    /// 0.11: re-read the legacy files at every call; refresh through the relay.
    LegacyFiles,
    /// 0.12 and later (the best-known default for releases newer than we know):
    /// `config.toml` read once, refreshed through the relay.
    ConfigToml,
}

impl Family {
    pub fn of(v: Version) -> Self {
        match v {
            v if v >= Version(0, 12, 0) => Self::ConfigToml,
            v if v >= Version(0, 11, 0) => Self::LegacyFiles,
            v if v >= Version(0, 7, 0) => Self::LegacyBuiltinRoots,
            _ => Self::NoApiAddr,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::NoApiAddr => "no-api-addr",
            Self::LegacyBuiltinRoots => "legacy-builtin-roots",
            Self::LegacyFiles => "legacy-files",
            Self::ConfigToml => "config-toml",
        }
    }

    /// Whether a mode with the relay (a pod's sidecar, `exec`, the action's
    /// `long-running`) keeps this family working for as long as it runs.
    pub fn served_by_relay_modes(self) -> bool {
        self != Self::NoApiAddr
    }

    /// What a person reading the log should know.
    pub fn note(self) -> &'static str {
        match self {
            Self::ConfigToml => "reads config.toml once and refreshes through the relay",
            Self::LegacyFiles => {
                "re-reads cloud_access_token at every call (renewed before it would refresh); refreshes through the relay if it must"
            }
            Self::LegacyBuiltinRoots => {
                "re-reads cloud_access_token at every call (renewed before it would refresh); it cannot refresh through the relay (built-in roots only)"
            }
            Self::NoApiAddr => {
                "has no POLARS_CLOUD_API_ADDR: the relay's private domain moves its API calls too; upgrade to 0.7 or later"
            }
        }
    }
}

/// The client's version from its request headers: `x-client-version`, else a
/// `User-Agent` of the form `polars-cloud/X`.
pub fn version_from_headers(
    client_version: Option<&str>,
    user_agent: Option<&str>,
) -> Option<Version> {
    client_version.and_then(Version::parse).or_else(|| {
        user_agent?
            .split_whitespace()
            .find_map(|p| p.strip_prefix("polars-cloud/"))
            .and_then(Version::parse)
    })
}

/// What the relay has seen of the app's clients: refreshes by version (`None`: no version
/// header), and TLS handshakes a client broke off (a client that does not trust the
/// relay's CA, as 0.10 and older).
#[derive(Default)]
pub struct Seen {
    by_version: Mutex<BTreeMap<Option<Version>, u64>>,
    untrusting: Mutex<u64>,
}

impl Seen {
    /// Counts one refresh; answers true the first time this version is seen (to log it
    /// once).
    pub fn refresh(&self, version: Option<Version>) -> bool {
        let Ok(mut map) = self.by_version.lock() else {
            return false;
        };
        let n = map.entry(version).or_default();
        *n += 1;
        *n == 1
    }

    /// Counts a handshake the client broke off; true the first time.
    pub fn untrusting(&self) -> bool {
        let Ok(mut n) = self.untrusting.lock() else {
            return false;
        };
        *n += 1;
        *n == 1
    }

    /// `(version, family, refreshes)`: the versions seen, for `/metrics` and logs.
    pub fn snapshot(&self) -> (Vec<(String, &'static str, u64)>, u64) {
        let versions = self
            .by_version
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(v, n)| match v {
                        Some(v) => (v.to_string(), Family::of(*v).name(), *n),
                        None => ("unknown".to_string(), "unknown", *n),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let untrusting = self.untrusting.lock().map(|n| *n).unwrap_or_default();
        (versions, untrusting)
    }

    /// The samples of `polars_cloud_auth_client_info`: 1 per version seen.
    pub fn metric_samples(&self) -> Vec<(String, String)> {
        let (versions, untrusting) = self.snapshot();
        let mut out: Vec<(String, String)> = versions
            .into_iter()
            .map(|(v, family, n)| {
                let served = family != Family::NoApiAddr.name();
                (
                    format!(
                        "{{version=\"{}\",family=\"{family}\",served=\"{served}\"}}",
                        crate::serve::prom::label(&v)
                    ),
                    if n > 0 { "1" } else { "0" }.to_string(),
                )
            })
            .collect();
        if untrusting > 0 {
            out.push((
                format!(
                    "{{version=\"<=0.10\",family=\"{}\",served=\"true\"}}",
                    Family::LegacyBuiltinRoots.name()
                ),
                "1".to_string(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("0.12.0"), Some(Version(0, 12, 0)));
        assert_eq!(Version::parse("0.11.3rc1"), Some(Version(0, 11, 3)));
        assert_eq!(Version::parse("1.0"), Some(Version(1, 0, 0)));
        for bad in ["", "x", "0", "0.x.1", "v0.12.0"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(Version(0, 9, 0) < Version(0, 10, 0));
    }

    #[test]
    fn every_release_has_a_family_and_newer_ones_get_the_newest() {
        let family = |t: &str| Family::of(Version::parse(t).unwrap());
        assert_eq!(family("0.6.3"), Family::NoApiAddr);
        assert_eq!(family("0.7.0"), Family::LegacyBuiltinRoots);
        assert_eq!(family("0.10.0"), Family::LegacyBuiltinRoots);
        assert_eq!(family("0.11.0"), Family::LegacyFiles);
        assert_eq!(family("0.11.3"), Family::LegacyFiles);
        assert_eq!(family("0.12.0"), Family::ConfigToml);
        // An unknown newer release gets the best-known default, not a refusal.
        assert_eq!(family("0.13.4"), Family::ConfigToml);
        assert_eq!(family("2.0.0"), Family::ConfigToml);
        assert!(family("0.7.0").served_by_relay_modes());
        assert!(!family("0.6.1").served_by_relay_modes());
    }

    #[test]
    fn the_version_comes_from_the_client_headers() {
        assert_eq!(
            version_from_headers(Some("0.12.0"), Some("polars-cloud/0.11.0")),
            Some(Version(0, 12, 0))
        );
        assert_eq!(
            version_from_headers(None, Some("polars-cloud/0.11.3")),
            Some(Version(0, 11, 3))
        );
        assert_eq!(
            version_from_headers(Some("junk"), Some("reqwest/0.12")),
            None
        );
        assert_eq!(version_from_headers(None, None), None);
    }

    #[test]
    fn seen_versions_are_counted_logged_once_and_exported() {
        let seen = Seen::default();
        assert!(seen.refresh(Some(Version(0, 12, 0))));
        assert!(!seen.refresh(Some(Version(0, 12, 0))));
        assert!(seen.refresh(None));
        assert!(seen.untrusting());
        assert!(!seen.untrusting());
        let samples = seen.metric_samples();
        assert!(samples.contains(&(
            "{version=\"0.12.0\",family=\"config-toml\",served=\"true\"}".into(),
            "1".into()
        )));
        assert!(samples.contains(&(
            "{version=\"unknown\",family=\"unknown\",served=\"true\"}".into(),
            "1".into()
        )));
        assert!(
            samples
                .iter()
                .any(|(l, n)| l.contains("<=0.10") && n == "1")
        );
        assert_eq!(
            seen.snapshot().0[1],
            ("0.12.0".to_string(), "config-toml", 2)
        );
    }
}
