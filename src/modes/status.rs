//! `status`: where the tokens are, whose they are and how long they stay valid, read from
//! the JWTs without printing them. Exit 0 when some stored token is valid now.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::cli::StatusArgs;
use crate::sink::client_config::{self, StoredAuth};
use crate::sink::stored::Stores;
use crate::token::claims;
use crate::vars;

/// `polars-cloud-auth status`.
pub fn command(args: StatusArgs) -> anyhow::Result<u8> {
    let stores = args.store.stores()?;
    let env_token = std::env::var(vars::ACCESS_TOKEN)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(SecretString::from);
    let report = report(&stores, env_token.as_ref(), SystemTime::now());
    print!("{}", report.text);
    Ok(if report.valid {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    })
}

/// The status text and whether a stored token is valid now.
pub struct Report {
    pub text: String,
    pub valid: bool,
}

pub fn report(stores: &Stores, env_token: Option<&SecretString>, now: SystemTime) -> Report {
    let mut text = String::new();
    let mut valid = false;

    let _ = writeln!(
        text,
        "config.toml  {}  (polars-cloud 0.12 and later)",
        stores.config.path().display()
    );
    valid |= pair(&mut text, stores.config.read(), true, now);
    let [access, _] = stores.config.legacy_paths();
    let _ = writeln!(
        text,
        "token files  {} and cloud_refresh_token  (polars-cloud 0.6 to 0.11)",
        access.display()
    );
    valid |= pair(&mut text, stores.config.read_legacy(), false, now);

    let path = stores.token_file.path();
    let _ = writeln!(
        text,
        "token file   {}  (for exec and tools; no polars-cloud release reads it)",
        path.display()
    );
    match read_file(path) {
        Ok(None) => text.push_str("  not there\n"),
        Ok(Some(token)) => {
            let (line, ok) = describe(&token, now);
            valid |= ok;
            let _ = writeln!(text, "  access token   {line}");
        }
        Err(e) => {
            let _ = writeln!(text, "  unreadable: {e}");
        }
    }

    if let Some(t) = env_token {
        let (line, _) = describe(t.expose_secret(), now);
        let _ = writeln!(
            text,
            "environment  POLARS_CLOUD_ACCESS_TOKEN is set; clients use it before any file\n  access token   {line}"
        );
    }
    if !valid {
        text.push_str("\nNo valid stored token: run `polars-cloud-auth login`.\n");
    }
    Report { text, valid }
}

/// Describes an access and refresh token pair; answers whether the access token is valid.
/// Both are needed: the clients ignore an access token without a refresh token.
fn pair(
    text: &mut String,
    read: Result<Option<StoredAuth>, client_config::Error>,
    toml: bool,
    now: SystemTime,
) -> bool {
    let auth = match read {
        Ok(Some(auth)) => auth,
        Ok(None) => {
            text.push_str("  not there\n");
            return false;
        }
        Err(e) => {
            let _ = writeln!(text, "  unreadable: {e}");
            return false;
        }
    };
    let mut valid = false;
    match &auth.access_token {
        Some(t) => {
            let (line, ok) = describe(t.expose_secret(), now);
            valid = ok && auth.refresh_token.is_some();
            let _ = writeln!(text, "  access token   {line}");
        }
        None => text.push_str("  access token   none\n"),
    }
    match &auth.refresh_token {
        Some(t) => {
            let _ = writeln!(text, "  refresh token  {}", describe_refresh(t, now));
        }
        None if auth.access_token.is_some() => {
            let _ = writeln!(
                text,
                "  refresh token  none: the client ignores the access token {}; run login again",
                if toml {
                    "in [auth] without one"
                } else {
                    "without one"
                }
            );
        }
        None => text.push_str("  refresh token  none\n"),
    }
    valid
}

fn read_file(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// "alice (sub …), expires 2030-01-01T00:00:00Z, in 4m 59s" and whether it is valid now.
/// Only claims are shown, never the token.
pub fn describe(token: &str, now: SystemTime) -> (String, bool) {
    let Ok(c) = claims(token) else {
        return (
            "present, but not a JWT (cannot tell whose or until when)".into(),
            false,
        );
    };
    let who = match (&c.preferred_username, &c.sub) {
        (Some(name), Some(sub)) if name != sub => format!("{name} (sub {sub})"),
        (Some(name), _) => name.clone(),
        (None, Some(sub)) => format!("sub {sub}"),
        (None, None) => "no subject".into(),
    };
    let Some(exp) = c.exp.and_then(crate::token::unix_time) else {
        return (format!("{who}, no expiry"), false);
    };
    let (when, ok) = expiry(exp, now);
    (format!("{who}, {when}"), ok)
}

fn describe_refresh(token: &SecretString, now: SystemTime) -> String {
    match claims(token.expose_secret()).ok().and_then(|c| c.exp) {
        // Keycloak's offline tokens carry exp 0: no expiry.
        Some(exp) if exp > 0.0 => match crate::token::unix_time(exp) {
            Some(at) => expiry(at, now).0,
            None => "present, with an out-of-range expiry".into(),
        },
        _ => "present".into(),
    }
}

fn expiry(exp: SystemTime, now: SystemTime) -> (String, bool) {
    let at = humantime::format_rfc3339_seconds(exp);
    match exp.duration_since(now) {
        Ok(left) if !left.is_zero() => (format!("expires {at}, in {}", round(left)), true),
        _ => {
            let ago = now.duration_since(exp).unwrap_or_default();
            (format!("expired {at}, {} ago", round(ago)), false)
        }
    }
}

fn round(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::StoreArgs;
    use crate::token::tests::jwt;
    use std::ffi::OsString;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn describes_subject_and_time_left_without_the_token() {
        let t = jwt(
            &serde_json::json!({"sub": "u-1", "preferred_username": "alice", "exp": 1_000_300}),
        );
        let (line, ok) = describe(&t, at(1_000_000));
        assert!(ok);
        assert_eq!(line, "alice (sub u-1), expires 1970-01-12T13:51:40Z, in 5m");
        let (line, ok) = describe(&t, at(1_000_360));
        assert!(!ok);
        assert!(
            line.ends_with("expired 1970-01-12T13:51:40Z, 1m ago"),
            "{line}"
        );
        let (line, ok) = describe("opaque", at(0));
        assert!(!ok && line.contains("not a JWT"), "{line}");
    }

    #[test]
    fn the_report_covers_both_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let args = StoreArgs {
            path: Some(dir.path().join("token")),
            config_dir: Some(dir.path().join("cfg")),
        };
        let stores = Stores::resolve(
            args.path.as_deref(),
            args.config_dir.as_deref(),
            &|_: &str| None::<OsString>,
        )
        .unwrap();
        let r = report(&stores, None, at(1_000_000));
        assert!(!r.valid);
        assert!(r.text.contains("not there"), "{}", r.text);
        assert!(
            r.text.contains("run `polars-cloud-auth login`"),
            "{}",
            r.text
        );

        let access = jwt(&serde_json::json!({"sub": "s", "exp": 1_000_300}));
        let refresh = jwt(&serde_json::json!({"exp": 1_001_800}));
        stores
            .config
            .store(
                &SecretString::from(access.clone()),
                Some(&SecretString::from(refresh.clone())),
            )
            .unwrap();
        std::fs::write(stores.token_file.path(), format!("{access}\n")).unwrap();
        let env = SecretString::from(access.clone());
        let r = report(&stores, Some(&env), at(1_000_000));
        assert!(r.valid);
        assert!(r.text.contains("refresh token  expires"), "{}", r.text);
        assert!(
            r.text.contains("POLARS_CLOUD_ACCESS_TOKEN is set"),
            "{}",
            r.text
        );
        assert_eq!(r.text.matches("sub s, expires").count(), 4, "{}", r.text);
        assert!(!r.text.contains(&access) && !r.text.contains(&refresh));
    }
}
