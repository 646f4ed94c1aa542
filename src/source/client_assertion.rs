//! Client assertions (RFC 7523 section 2.2): a client authenticates at the token endpoint
//! with a JWT instead of a secret. Either someone else issued the JWT (a projected
//! Kubernetes service-account token, the GitHub Actions OIDC token) and we read it at every
//! use, or we sign a fresh one at every use with the client's own key (`private_key_jwt`).
//!
//! Only confidential clients in realms their owner controls can be set up this way; Polars
//! Cloud's public `PolarsCloud` client cannot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a JWT we sign is valid: one request's worth, with room for clock skew.
pub const SIGNED_LIFETIME: Duration = Duration::from_secs(60);
/// The largest assertion file we read; a JWT is a few KiB.
const MAX_FILE: u64 = 64 * 1024;

/// Where the assertion of one request comes from.
#[derive(Clone)]
pub enum Assertion {
    /// A JWT issued by someone else, read from this file at every use
    /// (`--client-assertion-file`).
    File(PathBuf),
    /// A JWT held in memory (the GitHub Action's OIDC token, fetched by the action).
    Inline(SecretString),
    /// `private_key_jwt`: a JWT signed at every use with this PEM key (`--client-key-file`).
    Key { path: PathBuf, kid: Option<String> },
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Inline(_) => write!(f, "Inline([redacted])"),
            Self::Key { path, kid } => write!(f, "Key({}, kid {kid:?})", path.display()),
        }
    }
}

impl Assertion {
    /// The assertion for one request now. `client_id` is the `iss` and `sub` of a JWT we
    /// sign; `audience` its `aud` (the realm's issuer, which Keycloak and node-oidc-provider
    /// accept at every endpoint).
    pub fn produce(
        &self,
        client_id: Option<&str>,
        audience: &str,
        now: SystemTime,
    ) -> Result<SecretString, Error> {
        match self {
            Self::File(path) => read_file(path),
            Self::Inline(value) => check_jwt(value.expose_secret().trim(), || {
                "the client assertion".to_string()
            })
            .map(|v| SecretString::from(v.to_string())),
            Self::Key { path, kid } => {
                let client_id = client_id.ok_or(Error::NoClientId)?;
                let pem = std::fs::read(path).map_err(|source| Error::KeyRead {
                    path: path.clone(),
                    source,
                })?;
                let key = SigningKey::from_pem(&pem, path)?;
                let claims = Claims {
                    client_id,
                    audience,
                    jti: &random_id()?,
                    now,
                };
                key.sign(&claims, kid.as_deref()).map(SecretString::from)
            }
        }
    }
}

/// Reads a JWT from a file: trimmed, at most 64 KiB, three dot-separated parts.
fn read_file(path: &Path) -> Result<SecretString, Error> {
    let read = |source| Error::FileRead {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_FILE {
        return Err(Error::NotJwt {
            what: format!(
                "client assertion file '{}' (larger than 64 KiB)",
                path.display()
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::NotJwt {
        what: format!("client assertion file '{}'", path.display()),
    })?;
    let jwt = text.trim();
    if jwt.is_empty() {
        return Err(Error::FileEmpty {
            path: path.to_path_buf(),
        });
    }
    check_jwt(jwt, || {
        format!("client assertion file '{}'", path.display())
    })
    .map(|v| SecretString::from(v.to_string()))
}

/// A compact JWS has three base64url parts; anything else is the wrong file, and is named
/// without being shown.
fn check_jwt(value: &str, what: impl Fn() -> String) -> Result<&str, Error> {
    let parts: Vec<&str> = value.split('.').collect();
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if value.is_empty() {
        return Err(Error::NotJwt { what: what() });
    }
    if parts.len() != 3
        || parts[..2].iter().any(|p| p.is_empty())
        || !parts.iter().all(|p| b64url(p))
    {
        return Err(Error::NotJwt { what: what() });
    }
    Ok(value)
}

fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Sign)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The claims of a JWT we sign (RFC 7523 section 3).
pub struct Claims<'a> {
    pub client_id: &'a str,
    pub audience: &'a str,
    pub jti: &'a str,
    pub now: SystemTime,
}

impl Claims<'_> {
    fn json(&self) -> serde_json::Value {
        let iat = self
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "jti": self.jti,
            "iat": iat,
            "exp": iat + SIGNED_LIFETIME.as_secs(),
        })
    }
}

/// A private key that signs client assertions: RSA (RS256) or EC P-256 (ES256).
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it).
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, Error> {
        let unusable = |reason: &str| Error::KeyUnusable {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let not_pem = || Error::KeyPem {
            path: path.to_path_buf(),
        };
        let text = std::str::from_utf8(pem).map_err(|_| not_pem())?;
        // PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy PEM with RFC 1421 headers.
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type:") {
            return Err(unusable(
                "the key is encrypted; store it unencrypted in a file only the workload can read",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| not_pem())?;
        let rng = SystemRandom::new();
        let ec = |pkcs8: &[u8]| {
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        };
        match key {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
                    return Ok(Self::Rsa(rsa));
                }
                ec(der).map(Self::Ec).map_err(|_| {
                    unusable("not an RSA key of 2048 bits or more, nor an EC P-256 key")
                })
            }
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(Self::Rsa)
                .map_err(|_| unusable("not an RSA key of 2048 bits or more")),
            PrivateKeyDer::Sec1(der) => ec(&sec1_to_pkcs8(der.secret_sec1_der()))
                .map(Self::Ec)
                .map_err(|_| unusable("not an EC P-256 key (ES256 needs the curve prime256v1)")),
            _ => Err(not_pem()),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RS256",
            Self::Ec(_) => "ES256",
        }
    }

    /// The public key as a JWK (for registering the client, and for tests that verify).
    pub fn public_jwk(&self, kid: Option<&str>) -> serde_json::Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match self {
            Self::Rsa(k) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                serde_json::json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Self::Ec(k) => {
                // An uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = k.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        };
        jwk["alg"] = self.alg().into();
        jwk["use"] = "sig".into();
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        jwk
    }

    /// A compact JWS of `claims`, with `kid` in the header when given.
    pub fn sign(&self, claims: &Claims<'_>, kid: Option<&str>) -> Result<String, Error> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut header = serde_json::json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.json().to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Self::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| Error::Sign)?;
                sig
            }
            Self::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| Error::Sign)?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

/// Wraps a SEC1 `ECPrivateKey` of a P-256 key into PKCS#8, which ring reads.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALG: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(ALG);
    body.push(0x04);
    push_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// The variables the runner sets when the job may ask for its OIDC token
/// (`permissions: id-token: write`).
pub const GITHUB_OIDC_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const GITHUB_OIDC_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Fetches the GitHub Actions job's OIDC token for `audience`: GET
/// `$ACTIONS_ID_TOKEN_REQUEST_URL&audience=...` with the request token as Bearer; the reply
/// is `{"value": "<jwt>"}`. `url` and `bearer` are the two variables, `None` when unset.
pub async fn github_oidc_token(
    http: &reqwest::Client,
    url: Option<&str>,
    bearer: Option<&str>,
    audience: &str,
) -> Result<SecretString, Error> {
    let (Some(url), Some(bearer)) = (
        url.filter(|u| !u.is_empty()),
        bearer.filter(|b| !b.is_empty()),
    ) else {
        return Err(Error::GithubOidcUnavailable);
    };
    let mut url = url::Url::parse(url).map_err(|_| Error::GithubOidc {
        reason: format!("{GITHUB_OIDC_URL} is not a URL"),
    })?;
    url.query_pairs_mut().append_pair("audience", audience);
    let reply = http
        .get(url)
        .bearer_auth(bearer)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| Error::GithubOidc {
            reason: format!("the request failed ({})", e.without_url()),
        })?;
    let status = reply.status();
    if !status.is_success() {
        return Err(Error::GithubOidc {
            reason: format!("HTTP {status}"),
        });
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        value: Option<String>,
    }
    let body: Reply = reply.json().await.map_err(|_| Error::GithubOidc {
        reason: "the reply is not JSON with a `value`".into(),
    })?;
    let value = body.value.unwrap_or_default();
    check_jwt(value.trim(), || "job's OIDC token".to_string())?;
    Ok(SecretString::from(value.trim().to_string()))
}

/// Why no client assertion could be made. Never carries the assertion or the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The assertion file could not be read.
    #[error("failed to read the client assertion file '{}' (--client-assertion-file)", path.display())]
    FileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The assertion file is empty (a projected token not written yet, a wrong path).
    #[error("the client assertion file '{}' (--client-assertion-file) is empty", path.display())]
    FileEmpty { path: PathBuf },
    /// Not a compact JWT.
    #[error(
        "the {what} is not a JWT (three base64url parts separated by dots): check --client-assertion-file"
    )]
    NotJwt { what: String },
    /// The key file could not be read.
    #[error("failed to read the client key file '{}' (--client-key-file)", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No PEM private key in the file.
    #[error("the client key file '{}' (--client-key-file) holds no PEM private key (BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)", path.display())]
    KeyPem { path: PathBuf },
    /// A key we cannot sign with.
    #[error("the client key file '{}' (--client-key-file) is unusable: {reason}; use an RSA key (RS256) or an EC P-256 key (ES256)", path.display())]
    KeyUnusable { path: PathBuf, reason: String },
    /// A signed JWT names its client.
    #[error(
        "--client-key-file signs a JWT whose issuer and subject are the client id: set POLARS_CLOUD_CLIENT_ID, --client-id-file or --credentials-dir"
    )]
    NoClientId,
    /// The runner did not offer the job an OIDC token.
    #[error(
        "the job's OIDC token is not available ({GITHUB_OIDC_URL} and {GITHUB_OIDC_TOKEN} are not set): grant the job `permissions: id-token: write`"
    )]
    GithubOidcUnavailable,
    /// The runner's token service did not hand it out.
    #[error("could not get the job's OIDC token from {GITHUB_OIDC_URL}: {reason}")]
    GithubOidc { reason: String },
    /// The system's random source or the signer failed.
    #[error("failed to sign the client assertion")]
    Sign,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test keys made by openssl (never used anywhere else).
    pub const RSA_PKCS8: &str = include_str!("../../tests/data/assertion/rsa.pem");
    pub const RSA_PKCS1: &str = include_str!("../../tests/data/assertion/rsa-pkcs1.pem");
    pub const EC_PKCS8: &str = include_str!("../../tests/data/assertion/ec.pem");
    pub const EC_SEC1: &str = include_str!("../../tests/data/assertion/ec-sec1.pem");
    const EC_P384: &str = include_str!("../../tests/data/assertion/ec-p384.pem");

    fn key(pem: &str) -> SigningKey {
        SigningKey::from_pem(pem.as_bytes(), Path::new("k.pem")).unwrap()
    }

    fn decode(part: &str) -> serde_json::Value {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    fn claims(now: SystemTime) -> Claims<'static> {
        Claims {
            client_id: "workload",
            audience: "https://idp.example/realms/r",
            jti: "j-1",
            now,
        }
    }

    /// Verifies `jwt` with the public key the JWK describes, as a server would.
    fn verify(jwt: &str, jwk: &serde_json::Value) {
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        let b = |k: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[k].as_str().unwrap())
                .unwrap()
        };
        match jwk["kty"].as_str().unwrap() {
            "RSA" => signature::RsaPublicKeyComponents {
                n: b("n"),
                e: b("e"),
            }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &sig,
            )
            .unwrap(),
            _ => {
                let mut point = vec![4u8];
                point.extend(b("x"));
                point.extend(b("y"));
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input.as_bytes(), &sig)
                    .unwrap()
            }
        }
    }

    #[test]
    fn every_key_format_signs_a_jwt_its_public_key_verifies() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (pem, alg) in [
            (RSA_PKCS8, "RS256"),
            (RSA_PKCS1, "RS256"),
            (EC_PKCS8, "ES256"),
            (EC_SEC1, "ES256"),
        ] {
            let k = key(pem);
            let jwt = k.sign(&claims(at), Some("kid-1")).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            let header = decode(parts[0]);
            assert_eq!(header["alg"], alg);
            assert_eq!(header["kid"], "kid-1");
            let body = decode(parts[1]);
            assert_eq!(body["iss"], "workload");
            assert_eq!(body["sub"], "workload");
            assert_eq!(body["aud"], "https://idp.example/realms/r");
            assert_eq!(body["jti"], "j-1");
            assert_eq!(body["iat"], 1_700_000_000u64);
            assert_eq!(body["exp"], 1_700_000_060u64);
            verify(&jwt, &k.public_jwk(None));
        }
    }

    #[test]
    fn a_signature_does_not_verify_with_another_key() {
        let jwt = key(EC_PKCS8)
            .sign(&claims(SystemTime::now()), None)
            .unwrap();
        assert!(
            !decode(jwt.split('.').next().unwrap())
                .as_object()
                .unwrap()
                .contains_key("kid")
        );
        let other = key(EC_SEC1).public_jwk(None);
        let result = std::panic::catch_unwind(|| verify(&jwt, &other));
        assert!(result.is_err(), "verified with the wrong key");
    }

    #[test]
    fn every_signed_assertion_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, RSA_PKCS8).unwrap();
        let a = Assertion::Key { path, kid: None };
        let now = SystemTime::now();
        let one = a.produce(Some("c"), "https://i", now).unwrap();
        let two = a.produce(Some("c"), "https://i", now).unwrap();
        let jti =
            |s: &SecretString| decode(s.expose_secret().split('.').nth(1).unwrap())["jti"].clone();
        assert_ne!(jti(&one), jti(&two));
        let e = a.produce(None, "https://i", now).unwrap_err().to_string();
        assert!(e.contains("POLARS_CLOUD_CLIENT_ID"), "{e}");
    }

    #[test]
    fn unusable_keys_name_the_flag_and_path() {
        let p = Path::new("/keys/k.pem");
        let err = |pem: &str| {
            SigningKey::from_pem(pem.as_bytes(), p)
                .err()
                .unwrap()
                .to_string()
        };
        let e = err("not a key");
        assert!(
            e.contains("'/keys/k.pem' (--client-key-file)") && e.contains("no PEM private key"),
            "{e}"
        );
        let e = err(EC_P384);
        assert!(e.contains("EC P-256"), "{e}");
        let e = err(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(e.contains("encrypted"), "{e}");
        let e = err("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        assert!(e.contains("no PEM private key"), "{e}");
        let missing = Assertion::Key {
            path: "/nonexistent/k.pem".into(),
            kid: None,
        };
        let e = missing
            .produce(Some("c"), "a", SystemTime::now())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "failed to read the client key file '/nonexistent/k.pem' (--client-key-file)"
        );
    }

    #[test]
    fn the_assertion_file_is_read_at_every_use_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "aaa.bbb.ccc\n").unwrap();
        let a = Assertion::File(path.clone());
        let now = SystemTime::now();
        assert_eq!(
            a.produce(None, "x", now).unwrap().expose_secret(),
            "aaa.bbb.ccc"
        );
        std::fs::write(&path, "ddd.eee.fff").unwrap();
        assert_eq!(
            a.produce(None, "x", now).unwrap().expose_secret(),
            "ddd.eee.fff"
        );
    }

    #[test]
    fn a_bad_assertion_file_is_named_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let a = Assertion::File(path.clone());
        let now = SystemTime::now();
        let e = a.produce(None, "x", now).unwrap_err().to_string();
        assert!(
            e.starts_with("failed to read the client assertion file")
                && e.contains("--client-assertion-file"),
            "{e}"
        );
        std::fs::write(&path, " \n").unwrap();
        let e = a.produce(None, "x", now).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&path, "secret-value-not-a-jwt").unwrap();
        let e = a.produce(None, "x", now).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains("is not a JWT"), "{text}");
        assert!(!text.contains("secret-value"), "{text}");
        std::fs::write(&path, "a.b c.d").unwrap();
        assert!(a.produce(None, "x", now).is_err());
    }

    /// A local stand-in for GitHub's token service (the real one exists only on a runner):
    /// it checks the Bearer and the audience and answers as GitHub does.
    #[tokio::test]
    async fn the_github_oidc_token_is_fetched_with_the_audience_and_bearer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let body = r#"{"count":1,"value":"eyJh.eyJzdWIiOiJyZXBvIn0.c2ln"}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let http = crate::source::http_client(&crate::source::HttpSettings::default()).unwrap();
        let url = format!("http://{addr}/idtoken?api-version=2.0");
        let jwt = github_oidc_token(&http, Some(&url), Some("req-tok"), "https://kc/realms/r")
            .await
            .unwrap();
        assert_eq!(jwt.expose_secret(), "eyJh.eyJzdWIiOiJyZXBvIn0.c2ln");
        let request = server.await.unwrap();
        assert!(
            request.starts_with(
                "GET /idtoken?api-version=2.0&audience=https%3A%2F%2Fkc%2Frealms%2Fr HTTP/1.1"
            ),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer req-tok"),
            "{request}"
        );
        let e = github_oidc_token(&http, None, Some("x"), "a")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("id-token: write"), "{e}");
    }

    #[test]
    fn debug_never_shows_an_inline_assertion() {
        let a = Assertion::Inline(SecretString::from("hdr.payload-secret.sig".to_string()));
        assert!(!format!("{a:?}").contains("payload-secret"));
    }
}
