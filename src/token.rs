//! Access and refresh tokens, and what can be learnt from a JWT without verifying it.
//!
//! The Polars Cloud client only checks `exp`, so that is all we need from the payload; the
//! signature is the identity provider's business and the API server's.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A bearer token with the instants that bound its life.
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    issued_at: SystemTime,
    expires_at: SystemTime,
}

impl AccessToken {
    pub fn new(value: SecretString, issued_at: SystemTime, expires_at: SystemTime) -> Self {
        Self {
            value,
            issued_at,
            expires_at,
        }
    }

    /// Reads the life of a JWT from its `exp` (and `iat`, when present).
    pub fn from_jwt(value: SecretString) -> Result<Self, JwtError> {
        let claims = claims(value.expose_secret())?;
        let exp = claims.exp.ok_or(JwtError::NoExpiry)?;
        let expires_at = unix_time(exp).ok_or(JwtError::ExpiryOutOfRange)?;
        // A wild `iat` only skews the renewal point; the life is bounded by `exp` anyway.
        let issued_at = claims
            .iat
            .and_then(unix_time)
            .filter(|at| *at <= expires_at)
            .unwrap_or_else(SystemTime::now);
        Ok(Self::new(value, issued_at, expires_at))
    }

    pub fn secret(&self) -> &SecretString {
        &self.value
    }

    /// The same token, its life counted from `at` when it was issued before that (never
    /// past its expiry).
    pub fn received_at(mut self, at: SystemTime) -> Self {
        self.issued_at = self.issued_at.max(at).min(self.expires_at);
        self
    }

    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Time left at `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    /// True when the token is still valid for at least `margin` after `now`.
    pub fn valid_for(&self, now: SystemTime, margin: Duration) -> bool {
        now.checked_add(margin)
            .is_some_and(|at| self.expires_at > at)
    }

    /// The full life the issuer granted; never zero, so ratios stay finite.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
            .max(Duration::from_secs(1))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[redacted]")
            .field(
                "expires_at",
                &humantime::format_rfc3339_seconds(self.expires_at),
            )
            .finish()
    }
}

/// A refresh token, kept only in memory.
#[derive(Clone)]
pub struct RefreshToken {
    pub value: SecretString,
    /// `None` when the issuer did not say (`refresh_expires_in` absent or 0 for offline tokens).
    pub expires_at: Option<SystemTime>,
}

impl RefreshToken {
    pub fn usable(&self, now: SystemTime) -> bool {
        self.expires_at
            .is_none_or(|at| at > now + Duration::from_secs(1))
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// What a token endpoint handed out.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access: AccessToken,
    pub refresh: Option<RefreshToken>,
}

/// The claims we read from a JWT payload.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    pub exp: Option<f64>,
    pub iat: Option<f64>,
    pub sub: Option<String>,
    pub azp: Option<String>,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    /// RFC 7519 allows one string or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(s)) => vec![s],
        Some(Aud::Many(v)) => v,
    })
}

/// Why a token could not be read as a JWT.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three dot-separated parts.
    #[error("the token is not a JWT (expected three dot-separated parts)")]
    NotJwt,
    /// The payload is not base64url JSON.
    #[error("the token's payload is not base64url-encoded JSON")]
    BadPayload,
    /// No `exp` claim.
    #[error("the token has no `exp` claim")]
    NoExpiry,
    /// An `exp` that is no time we can represent (past the year 9999).
    #[error(
        "the token's `exp` claim is out of range (after the year 9999): the identity provider sent a broken token"
    )]
    ExpiryOutOfRange,
}

/// Decodes a JWT's payload without verifying the signature.
pub fn claims(jwt: &str) -> Result<Claims, JwtError> {
    let mut parts = jwt.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotJwt);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| JwtError::BadPayload)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::BadPayload)
}

/// The latest instant an issuer may name: 9999-12-31T23:59:59Z. Anything later (a JWT
/// `exp` of 1e19 or 1e300) is refused rather than converted, which would panic.
pub const MAX_UNIX_SECS: f64 = 253_402_300_799.0;

/// The longest life a reply's `expires_in` or `refresh_expires_in` may state: ten years.
pub const MAX_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Seconds since the epoch as an instant: `None` past [`MAX_UNIX_SECS`] (or NaN); times
/// before the epoch are the epoch.
pub fn unix_time(secs: f64) -> Option<SystemTime> {
    if secs.is_nan() || secs > MAX_UNIX_SECS {
        return None;
    }
    if secs <= 0.0 {
        return Some(UNIX_EPOCH);
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

/// A positive life in seconds (`expires_in`) as a duration: `None` when zero, negative,
/// NaN or longer than [`MAX_LIFE`].
pub fn life(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs <= 0.0 || secs > MAX_LIFE.as_secs_f64() {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Seconds since the epoch, for logs, metrics and outputs.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An unsigned JWT with the given claims, as tests elsewhere need one.
    pub(crate) fn jwt(payload: &serde_json::Value) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            enc.encode(payload.to_string())
        )
    }

    #[test]
    fn reads_exp_and_iat() {
        let t = AccessToken::from_jwt(jwt(&serde_json::json!({"exp": 1000, "iat": 700})).into())
            .unwrap();
        assert_eq!(t.expires_at(), UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(t.lifetime(), Duration::from_secs(300));
        assert_eq!(
            t.remaining(UNIX_EPOCH + Duration::from_secs(900)),
            Duration::from_secs(100)
        );
        assert!(t.valid_for(
            UNIX_EPOCH + Duration::from_secs(900),
            Duration::from_secs(99)
        ));
        assert!(!t.valid_for(
            UNIX_EPOCH + Duration::from_secs(900),
            Duration::from_secs(100)
        ));
    }

    #[test]
    fn rejects_what_is_not_a_jwt() {
        assert!(matches!(claims("abc"), Err(JwtError::NotJwt)));
        assert!(matches!(claims("a.b.c.d"), Err(JwtError::NotJwt)));
        assert!(matches!(claims("a.!!!.c"), Err(JwtError::BadPayload)));
        let no_exp = jwt(&serde_json::json!({"sub": "x"}));
        assert!(matches!(
            AccessToken::from_jwt(no_exp.into()),
            Err(JwtError::NoExpiry)
        ));
    }

    #[test]
    fn extreme_exp_values_are_refused_not_a_panic() {
        for exp in [1e19, 1e300, f64::MAX, MAX_UNIX_SECS + 1.0] {
            let raw = jwt(&serde_json::json!({ "exp": exp, "iat": 1000 }));
            assert!(
                matches!(
                    AccessToken::from_jwt(raw.into()),
                    Err(JwtError::ExpiryOutOfRange)
                ),
                "{exp}"
            );
        }
        // A wild iat falls back to now instead of panicking.
        let raw = jwt(&serde_json::json!({ "exp": 2_000_000_000u64, "iat": 1e300 }));
        let t = AccessToken::from_jwt(raw.into()).unwrap();
        assert!(t.issued_at() <= SystemTime::now());
        assert_eq!(life(1e300), None);
        assert_eq!(life(-1.0), None);
        assert_eq!(life(300.0), Some(Duration::from_secs(300)));
        assert_eq!(unix_time(-5.0), Some(UNIX_EPOCH));
    }

    #[test]
    fn accepts_padded_payloads() {
        let enc = base64::engine::general_purpose::URL_SAFE;
        let token = format!("e30.{}.sig", enc.encode(br#"{"exp":5}"#));
        assert_eq!(claims(&token).unwrap().exp, Some(5.0));
    }

    #[test]
    fn debug_hides_the_value() {
        let raw = jwt(&serde_json::json!({"exp": 1000}));
        let t = AccessToken::from_jwt(raw.clone().into()).unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(&raw[..20]), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
