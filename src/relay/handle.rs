//! The refresh handle: what the app's client holds in `config.toml` in place of a refresh
//! token. It has the shape the client insists on (a JWT with an integer `exp` in the
//! future) and an HMAC that only this pod's relay can check, so it is worth nothing to
//! the identity provider or anywhere outside the pod. Pure.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};

/// How long a handle stays acceptable to the client's own `exp` check. The relay, not
/// the date, decides whether it works: a pod outliving this is not a concern.
pub const LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `typ` of the handle's payload, so a person reading config.toml can tell what it is.
pub const TYPE: &str = "polars-cloud-auth pod-local refresh handle";

/// The pod's handle key (32 random bytes). `Debug` shows nothing of it.
pub struct HandleKey(hmac::Key, [u8; 32]);

impl HandleKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes), bytes)
    }

    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The key as stored in the relay's state directory.
    pub fn to_text(&self) -> SecretString {
        URL_SAFE_NO_PAD.encode(self.1).into()
    }

    pub fn from_text(text: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        Some(Self::from_bytes(raw.try_into().ok()?))
    }

    /// A new handle, valid (for the client's check) for [`LIFE`] after `now`.
    pub fn mint(&self, now: SystemTime) -> SecretString {
        let iat = crate::token::unix_secs(now);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = serde_json::json!({
            "typ": TYPE,
            "iat": iat,
            "exp": iat + LIFE.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>()),
        });
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let signed = format!("{header}.{payload}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())).into()
    }

    /// Whether `handle` was minted with this key (in constant time).
    pub fn verify(&self, handle: &str) -> bool {
        let Some((signed, tag)) = handle.trim().rsplit_once('.') else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        hmac::verify(&self.0, signed.as_bytes(), &tag).is_ok()
    }

    /// Whether the handle in a stored refresh token is one of ours.
    pub fn verify_secret(&self, handle: &SecretString) -> bool {
        self.verify(handle.expose_secret())
    }
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::claims;

    #[test]
    fn a_minted_handle_verifies_and_has_the_shape_the_client_checks() {
        let key = HandleKey::generate();
        let now = SystemTime::now();
        let handle = key.mint(now);
        assert!(key.verify(handle.expose_secret()));
        // The client parses the payload and wants an integer exp in the future.
        let c = claims(handle.expose_secret()).unwrap();
        let exp = crate::token::unix_secs(now) + LIFE.as_secs();
        assert_eq!(c.exp, Some(exp as f64));
        let payload = handle.expose_secret().split('.').nth(1).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(raw["exp"].is_u64(), "exp must be a JSON integer: {raw}");
        // Two handles differ (a jti each), both verify.
        assert_ne!(key.mint(now).expose_secret(), handle.expose_secret());
    }

    #[test]
    fn another_key_a_changed_payload_or_garbage_do_not_verify() {
        let (key, other) = (HandleKey::generate(), HandleKey::generate());
        let handle = key.mint(SystemTime::now());
        let h = handle.expose_secret();
        assert!(!other.verify(h));
        let (head, rest) = h.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(r#"{"exp":99999999999}"#);
        assert!(!key.verify(&format!("{head}.{forged_payload}.{tag}")));
        for junk in ["", ".", "a.b", "a.b.c", "a.b.!!!"] {
            assert!(!key.verify(junk), "{junk}");
        }
    }

    #[test]
    fn the_key_survives_its_text_form_and_debug_hides_it() {
        let key = HandleKey::generate();
        let again = HandleKey::from_text(key.to_text().expose_secret()).unwrap();
        assert!(again.verify(key.mint(SystemTime::now()).expose_secret()));
        assert!(HandleKey::from_text("short").is_none());
        assert_eq!(format!("{key:?}"), "HandleKey([redacted])");
    }
}
