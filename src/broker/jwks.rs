//! The cluster's service-account signing keys (the API server's OIDC discovery and JWKS),
//! and the signature check that keeps forged tokens away from TokenReview.
//!
//! The check only refuses: a token whose signature verifies still goes to the API server,
//! which alone says whether it is valid (not revoked, its pod still there). A forged token,
//! whatever its claims, is refused here and costs the API server nothing.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The discovery document's path on the API server.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the API server serves its key set when discovery names no other place.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// A JWS algorithm the API server may sign service-account tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            _ => return None,
        })
    }
}

/// One public key of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    kid: Option<String>,
    material: Material,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04, x, y) on P-256 or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
}

/// The keys that sign the cluster's service-account tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Why a key set or discovery document cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not the JSON of a JWK set.
    #[error("the API server's service-account key set is not a JWK set: {0}")]
    NotJwks(String),
    /// A set with no key we can use.
    #[error("the API server's service-account key set has no RSA or EC (P-256, P-384) signing key")]
    NoUsableKey,
    /// Not the JSON of an OIDC discovery document.
    #[error("the API server's OIDC discovery document is unusable: {0}")]
    NotDiscovery(String),
}

/// What the signature check says of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Signed by a key of the set.
    Valid,
    /// Its `kid` names no key of the set: the set may be stale (a key rotation).
    UnknownKey,
    /// No key of the set made this signature (or the token is no JWS we accept).
    Invalid,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Parses a JWK set, keeping the signing keys we can verify with (others are skipped).
pub fn parse(json: &[u8]) -> Result<KeySet, Error> {
    let set: Jwks = serde_json::from_slice(json).map_err(|e| Error::NotJwks(e.to_string()))?;
    let keys: Vec<Key> = set
        .keys
        .into_iter()
        .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let material = match (k.kty.as_str(), k.crv.as_deref()) {
                ("RSA", _) => Material::Rsa {
                    n: b64(k.n.as_deref()?)?,
                    e: b64(k.e.as_deref()?)?,
                },
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let (x, y) = (b64(k.x.as_deref()?)?, b64(k.y.as_deref()?)?);
                    let size = if crv == "P-256" { 32 } else { 48 };
                    if x.len() != size || y.len() != size {
                        return None;
                    }
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    Material::Ec {
                        p384: crv == "P-384",
                        point,
                    }
                }
                _ => return None,
            };
            Some(Key {
                kid: k.kid,
                material,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(Error::NoUsableKey);
    }
    Ok(KeySet { keys })
}

/// The path and query of the discovery document's `jwks_uri`, to be fetched from the API
/// server itself: the issuer's public host may not be reachable from inside the cluster.
pub fn jwks_path(discovery: &[u8]) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Discovery {
        jwks_uri: String,
    }
    let d: Discovery =
        serde_json::from_slice(discovery).map_err(|e| Error::NotDiscovery(e.to_string()))?;
    let url = url::Url::parse(&d.jwks_uri)
        .map_err(|e| Error::NotDiscovery(format!("jwks_uri '{}': {e}", d.jwks_uri)))?;
    Ok(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

impl KeySet {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the signature of the compact JWS `token`.
    pub fn check(&self, token: &str) -> Check {
        let mut parts = token.split('.');
        let (Some(head), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Check::Invalid;
        };
        let Some(header) = b64(head).and_then(|h| serde_json::from_slice::<Header>(&h).ok()) else {
            return Check::Invalid;
        };
        // `none` and HMAC are never what the API server signs with.
        let Some(alg) = Alg::parse(&header.alg) else {
            return Check::Invalid;
        };
        let Some(sig) = b64(sig) else {
            return Check::Invalid;
        };
        let input = &token.as_bytes()[..head.len() + 1 + payload.len()];
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let named: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Check::UnknownKey;
                }
                named
            }
            // The API server accepts tokens without a `kid` (any of its keys may have
            // signed them), so the check tries every key.
            None => self.keys.iter().collect(),
        };
        if candidates.iter().any(|k| verify(k, alg, input, &sig)) {
            Check::Valid
        } else {
            Check::Invalid
        }
    }
}

fn verify(key: &Key, alg: Alg, input: &[u8], sig: &[u8]) -> bool {
    match (&key.material, alg) {
        (Material::Rsa { n, e }, Alg::Rs256 | Alg::Rs384 | Alg::Rs512) => {
            let params = match alg {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                _ => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, input, sig)
                .is_ok()
        }
        (Material::Ec { p384: false, point }, Alg::Es256) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input, sig)
                .is_ok()
        }
        (Material::Ec { p384: true, point }, Alg::Es384) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(input, sig)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::client_assertion::SigningKey;
    use crate::source::client_assertion::tests::{EC_PKCS8, RSA_PKCS8};
    use ring::rand::SystemRandom;
    use std::path::Path;

    pub fn key(pem: &str) -> SigningKey {
        SigningKey::from_pem(pem.as_bytes(), Path::new("k.pem")).unwrap()
    }

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// A token with any header and claims, signed by `key`.
    pub fn signed(
        key: &SigningKey,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match key {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            SigningKey::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", enc(&sig))
    }

    pub fn set_of(keys: &[(&SigningKey, Option<&str>)]) -> KeySet {
        let jwks = serde_json::json!({
            "keys": keys.iter().map(|(k, kid)| k.public_jwk(*kid)).collect::<Vec<_>>()
        });
        parse(jwks.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_jwks_as_the_api_server_serves_it_parses() {
        // The shape of `kubectl get --raw /openid/v1/jwks`.
        let rsa = key(RSA_PKCS8);
        let served = serde_json::json!({"keys": [rsa.public_jwk(Some("k1"))]});
        let set = parse(served.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        // Keys we cannot use are skipped; a set of only those is an error that says so.
        let odd = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        ]});
        assert_eq!(parse(odd.to_string().as_bytes()), Err(Error::NoUsableKey));
        let e = parse(b"<html>").unwrap_err().to_string();
        assert!(e.contains("not a JWK set"), "{e}");
        let mixed = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            key(EC_PKCS8).public_jwk(None),
            rsa.public_jwk(Some("k1")),
        ]});
        assert_eq!(parse(mixed.to_string().as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn discovery_gives_the_jwks_path_on_the_api_server() {
        let d = br#"{"issuer":"https://oidc.example.com/id/ABC","jwks_uri":"https://oidc.example.com/openid/v1/jwks"}"#;
        assert_eq!(jwks_path(d).unwrap(), JWKS_PATH);
        let q = br#"{"jwks_uri":"https://10.0.0.1:6443/keys?v=2"}"#;
        assert_eq!(jwks_path(q).unwrap(), "/keys?v=2");
        assert!(jwks_path(b"{}").is_err());
        assert!(jwks_path(br#"{"jwks_uri":"not a url"}"#).is_err());
    }

    #[test]
    fn only_a_signature_by_a_key_of_the_set_is_valid() {
        let rsa = key(RSA_PKCS8);
        let ec = key(EC_PKCS8);
        let claims =
            serde_json::json!({"aud": ["polars-cloud-auth"], "sub": "system:serviceaccount:a:b"});
        let rs = serde_json::json!({"alg": "RS256", "kid": "k1"});
        let es = serde_json::json!({"alg": "ES256", "kid": "k2"});
        let set = set_of(&[(&rsa, Some("k1")), (&ec, Some("k2"))]);
        let good = signed(&rsa, rs.clone(), claims.clone());
        assert_eq!(set.check(&good), Check::Valid);
        assert_eq!(set.check(&signed(&ec, es, claims.clone())), Check::Valid);
        // Without a kid, as the API server also accepts: every key is tried.
        let bare = signed(&rsa, serde_json::json!({"alg": "RS256"}), claims.clone());
        assert_eq!(set.check(&bare), Check::Valid);
        // The same claims with a changed payload: the signature no longer matches.
        let (head, rest) = good.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let other = enc(br#"{"aud":["polars-cloud-auth"],"sub":"system:serviceaccount:a:admin"}"#);
        assert_eq!(set.check(&format!("{head}.{other}.{sig}")), Check::Invalid);
        // Any signature, right header: what the attacker sent 3,000 of.
        assert_eq!(set.check(&format!("{head}.{other}.c2ln")), Check::Invalid);
        // A kid the set does not hold: the set may be stale.
        let unknown = signed(
            &rsa,
            serde_json::json!({"alg": "RS256", "kid": "new"}),
            claims.clone(),
        );
        assert_eq!(set.check(&unknown), Check::UnknownKey);
        // Signed by a key of the set, but the header names the other key.
        let wrong = signed(
            &ec,
            serde_json::json!({"alg": "ES256", "kid": "k1"}),
            claims.clone(),
        );
        assert_eq!(set.check(&wrong), Check::Invalid);
        // alg none, HMAC, and junk.
        for alg in ["none", "HS256"] {
            let t = format!(
                "{}.{}.",
                enc(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()),
                enc(b"{}")
            );
            assert_eq!(set.check(&t), Check::Invalid, "{alg}");
        }
        for junk in ["", "a.b", "a.b.c", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(set.check(junk), Check::Invalid, "{junk}");
        }
        // A key of another cluster.
        let foreign = set_of(&[(&ec, Some("k1"))]);
        assert_eq!(foreign.check(&good), Check::Invalid);
    }
}
