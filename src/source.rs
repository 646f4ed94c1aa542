//! The token source: turns credentials into tokens at a Keycloak-shaped token endpoint.
//!
//! It speaks the three grants the tool needs (a Polars Cloud service account's password
//! grant, `client_credentials`, and `refresh_token`), classifies every failure as
//! permanent or transient, and keeps the refresh token in memory only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::assertion::{self, Assertion};
use crate::credentials::{self, Credentials};
use crate::token::{AccessToken, JwtError, RefreshToken, Tokens, life};

/// Polars Cloud's production domain.
pub const DEFAULT_DOMAIN: &str = "prd.cloud.pola.rs";
/// The public client Polars Cloud's own client signs in with.
pub const POLARS_CLIENT_ID: &str = "PolarsCloud";
/// The suffix that turns a service account's client id into a Keycloak user name.
pub const SERVICE_ACCOUNT_SUFFIX: &str = "@sa.cloud.pola.rs";
/// The largest token reply we read; anything bigger is not a token reply.
const MAX_REPLY: usize = 1 << 20;
/// How long a service account's secret that the realm refused (`invalid_grant`) is not sent
/// again while it is unchanged. Keycloak's brute-force detection counts every refused
/// password and then locks the account, for the right secret too; a sidecar retrying a
/// wrong one would lock out every other user of the service account. A changed secret (a
/// rotated Secret file) is sent at once. Once an hour stays below Keycloak's default of 30
/// failures within its 12-hour failure reset time.
pub const RESEND_REFUSED_AFTER: Duration = Duration::from_secs(3600);

/// The realm's issuer URL for a Polars Cloud domain.
pub fn issuer_for_domain(domain: &str) -> Result<Url, EndpointError> {
    let raw = format!("https://auth.{domain}/realms/Polars");
    Url::parse(&raw).map_err(|_| EndpointError::BadDomain(domain.to_string()))
}

/// The realm's endpoints, all under its issuer as Keycloak lays them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Url,
    pub token: Url,
}

impl Endpoints {
    /// Endpoints from an issuer, or a token URL given outright.
    pub fn new(issuer: Url, token_url: Option<Url>) -> Result<Self, EndpointError> {
        let issuer = Url::parse(issuer.as_str().trim_end_matches('/'))
            .map_err(|_| EndpointError::BadDomain(issuer.to_string()))?;
        let token = match token_url {
            Some(url) => url,
            None => join(&issuer, "protocol/openid-connect/token"),
        };
        check_transport(&issuer)?;
        check_transport(&token)?;
        Ok(Self { issuer, token })
    }

    /// The revocation endpoint (RFC 7009), Keycloak's path.
    pub fn revocation(&self) -> Url {
        join(&self.issuer, "protocol/openid-connect/revoke")
    }

    /// The device authorization endpoint (RFC 8628), Keycloak's path.
    pub fn device(&self) -> Url {
        join(&self.issuer, "protocol/openid-connect/auth/device")
    }
}

fn join(base: &Url, tail: &str) -> Url {
    let mut url = base.clone();
    url.set_path(&format!("{}/{tail}", base.path().trim_end_matches('/')));
    url
}

/// Plain http would hand the secret to anyone on the path; only loopback is allowed.
fn check_transport(url: &Url) -> Result<(), EndpointError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(EndpointError::PlainHttp(url.to_string())),
        other => Err(EndpointError::Scheme(other.to_string(), url.to_string())),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Why the endpoint settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The domain does not make a URL.
    #[error("'{0}' is not a usable domain or issuer URL")]
    BadDomain(String),
    /// http to a non-loopback host.
    #[error("refusing plain http to '{0}': use https (plain http is allowed only to loopback)")]
    PlainHttp(String),
    /// Neither http nor https.
    #[error("unsupported URL scheme '{0}' in '{1}': use https")]
    Scheme(String, String),
}

/// Which grant turns the credentials into tokens.
#[derive(Clone, Debug)]
pub enum Grant {
    /// A Polars Cloud service account: the password grant against the `PolarsCloud` client,
    /// exactly as the official client sends it.
    ServiceAccount,
    /// RFC 6749 section 4.4, for other realms' confidential clients.
    ClientCredentials(ClientAuth),
}

/// How a confidential client authenticates at the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// In the form body (`client_secret_post`).
    Post,
    /// A JWT client assertion (RFC 7523 section 2.2): one issued by someone else
    /// (Keycloak's "Signed JWT - Federated") or one we sign (`private_key_jwt`, Keycloak's
    /// "Signed JWT"). No secret; the client id is optional for an assertion we did not sign.
    Assertion(Assertion),
}

impl Grant {
    fn is_service_account(&self) -> bool {
        matches!(self, Self::ServiceAccount)
    }
}

/// Everything the source needs besides the HTTP client.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoints: Endpoints,
    pub grant: Grant,
    pub credentials: Credentials,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

/// HTTP client settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Extra trusted roots, PEM.
    pub ca_file: Option<PathBuf>,
    /// Extra trusted roots, PEM text.
    pub ca_pem: Option<String>,
    /// The limit for one request, connection included.
    pub timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Builds the HTTP client: rustls with the system roots plus `ca_file`, proxies from the
/// environment (`HTTPS_PROXY`, `NO_PROXY`), no redirects (a token endpoint that redirects
/// is a wrong URL, and a redirected POST would lose its body).
pub fn http_client(settings: &HttpSettings) -> Result<reqwest::Client, HttpError> {
    // Installing twice is harmless; the first provider wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("polars-cloud-auth/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .timeout(settings.timeout);
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| HttpError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| HttpError::CaPem { path: path.clone() })?;
        if certs.is_empty() {
            return Err(HttpError::CaPem { path: path.clone() });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = &settings.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or(HttpError::CaPemText)?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(HttpError::Build)
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The CA file could not be read.
    #[error("failed to read CA file '{}'", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("CA file '{}' holds no PEM certificate", path.display())]
    CaPem { path: PathBuf },
    /// The CA text holds no PEM certificate.
    #[error("POLARS_CLOUD_CA_PEM (--ca-pem) holds no PEM certificate")]
    CaPemText,
    /// reqwest refused the configuration.
    #[error("failed to set up the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// A failed token request, classified.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The credentials could not be read; fix the configuration.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// No client assertion could be read or signed; fix the configuration.
    #[error(transparent)]
    Assertion(#[from] assertion::Error),
    /// The identity provider said no (4xx with an OAuth error, or another 4xx).
    #[error("the identity provider rejected the request ({status}{}){}: {hint}",
        error.as_deref().map(|e| format!(", {e}")).unwrap_or_default(),
        description.as_deref().map(|d| format!(": \"{d}\"")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: Option<String>,
        description: Option<String>,
        hint: String,
    },
    /// The request did not get an answer (connection refused or reset, DNS, TLS, timeout).
    #[error("could not reach the identity provider at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// A 5xx, 429 or 408: the provider is overloaded or down.
    #[error("the identity provider answered HTTP {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// An answer that is not a token reply.
    #[error("the identity provider's reply is not a usable token reply: {0}")]
    Malformed(String),
}

/// How a failure should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Retrying the same request will not help; the configuration or secret must change.
    Permanent,
    /// Worth retrying with backoff.
    Transient,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Transient => "transient",
        }
    }
}

impl FetchError {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Credentials(_) | Self::Assertion(_) | Self::Rejected { .. } => {
                FailureClass::Permanent
            }
            Self::Unreachable { .. } | Self::Unavailable { .. } | Self::Malformed(_) => {
                FailureClass::Transient
            }
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    expires_in: Option<f64>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<f64>,
}

#[derive(Deserialize)]
struct ErrorReply {
    error: Option<String>,
    error_description: Option<String>,
}

/// Fetches tokens; remembers the refresh token between calls.
pub struct TokenSource {
    http: reqwest::Client,
    settings: Settings,
    refresh: Mutex<Option<RefreshToken>>,
    /// The life of the last access token: a refresh token ending sooner is not used.
    last_life: Mutex<Duration>,
    refused: Mutex<Option<Refused>>,
}

/// The service-account credentials the realm last refused, and its answer.
struct Refused {
    id: String,
    secret: SecretString,
    at: Instant,
    status: u16,
    error: Option<String>,
    description: Option<String>,
    hint: String,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, settings: Settings) -> Self {
        Self {
            http,
            settings,
            refresh: Mutex::new(None),
            last_life: Mutex::new(Duration::ZERO),
            refused: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The refresh token of the last reply, if any (the GitHub Action revokes it in its post
    /// step).
    pub fn refresh_token(&self) -> Option<RefreshToken> {
        self.refresh.lock().ok().and_then(|r| r.clone())
    }

    /// New tokens: by refresh token when one is held and still usable, falling back to the
    /// full grant when the provider refuses it.
    ///
    /// A refresh token that ends before a new access token would is not used: Keycloak caps
    /// the refresh token and every access token at the session's max lifespan, so near it
    /// a refresh brings an ever shorter token and renewals would race the session's end (a
    /// reader could meet an expired file). Signing in again starts a new session.
    pub async fn fetch(&self) -> Result<Tokens, FetchError> {
        let now = SystemTime::now();
        let life = self.last_life.lock().map(|l| *l).unwrap_or_default();
        let held = self.refresh_token().filter(|r| r.usable(now + life));
        if let Some(refresh) = held {
            match self.refresh(&refresh).await {
                Ok(tokens) => return self.keep(tokens),
                Err(e) if e.class() == FailureClass::Permanent => {
                    tracing::info!(error = %e, "refresh token refused, signing in again");
                    self.forget_refresh();
                }
                Err(e) => return Err(e),
            }
        }
        let tokens = self.grant().await?;
        self.keep(tokens)
    }

    fn keep(&self, tokens: Tokens) -> Result<Tokens, FetchError> {
        if let Ok(mut held) = self.refresh.lock() {
            *held = tokens.refresh.clone();
        }
        if let Ok(mut life) = self.last_life.lock() {
            // The longest seen: a token cut short by the session's end must not shrink it.
            *life = (*life).max(tokens.access.lifetime());
        }
        Ok(tokens)
    }

    fn forget_refresh(&self) {
        if let Ok(mut held) = self.refresh.lock() {
            *held = None;
        }
    }

    async fn refresh(&self, refresh: &RefreshToken) -> Result<Tokens, FetchError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.value.expose_secret()),
        ];
        let proof = self.proof()?;
        let request = self.http.post(self.settings.endpoints.token.clone());
        let request = proof.apply(request, &mut form);
        let mut secrets = vec![refresh.value.expose_secret()];
        secrets.extend(proof.secrets());
        self.post(request.form(&form), &secrets).await
    }

    async fn grant(&self) -> Result<Tokens, FetchError> {
        if !self.settings.grant.is_service_account() {
            return self.client_credentials_grant().await;
        }
        let (id, secret) = self.settings.credentials.load()?;
        if let Some(e) = self.still_refused(&id, &secret) {
            return Err(e);
        }
        let username = format!("{id}{SERVICE_ACCOUNT_SUFFIX}");
        let mut form: Vec<(&str, &str)> = Vec::with_capacity(6);
        let request = self.http.post(self.settings.endpoints.token.clone());
        form.extend([
            ("grant_type", "password"),
            ("client_id", POLARS_CLIENT_ID),
            ("username", username.as_str()),
            ("password", secret.expose_secret()),
        ]);
        self.extras(&mut form);
        let basic = basic_credential(&id, secret.expose_secret());
        let result = self
            .post(request.form(&form), &[secret.expose_secret(), &basic])
            .await
            .map_err(|e| with_grant_hint(e, &self.settings.grant, &id));
        self.remember_refusal(&result, &id, &secret);
        result
    }

    /// RFC 6749 section 4.4, the client authenticated however it is configured.
    async fn client_credentials_grant(&self) -> Result<Tokens, FetchError> {
        let proof = self.proof()?;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let request = self.http.post(self.settings.endpoints.token.clone());
        let request = proof.apply(request, &mut form);
        self.extras(&mut form);
        self.post(request.form(&form), &proof.secrets())
            .await
            .map_err(|e| with_assertion_hint(e, &proof))
    }

    fn extras<'a>(&'a self, form: &mut Vec<(&'a str, &'a str)>) {
        if let Some(scope) = &self.settings.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &self.settings.audience {
            form.push(("audience", audience));
        }
    }

    /// The remembered refusal when these are the credentials the realm refused, recently.
    fn still_refused(&self, id: &str, secret: &SecretString) -> Option<FetchError> {
        let held = self.refused.lock().ok()?;
        let r = held.as_ref()?;
        let same = r.id == id && r.secret.expose_secret() == secret.expose_secret();
        if !same || r.at.elapsed() >= RESEND_REFUSED_AFTER {
            return None;
        }
        Some(FetchError::Rejected {
            status: r.status,
            error: r.error.clone(),
            description: r.description.clone(),
            hint: format!(
                "{}; this secret was refused and is not sent again until it changes (or for {} min), so that the realm's brute-force detection does not lock the account",
                r.hint,
                RESEND_REFUSED_AFTER.as_secs() / 60
            ),
        })
    }

    fn remember_refusal(
        &self,
        result: &Result<Tokens, FetchError>,
        id: &str,
        secret: &SecretString,
    ) {
        let Ok(mut held) = self.refused.lock() else {
            return;
        };
        match result {
            Err(FetchError::Rejected {
                status,
                error,
                description,
                hint,
            }) if self.settings.grant.is_service_account()
                && error.as_deref() == Some("invalid_grant") =>
            {
                *held = Some(Refused {
                    id: id.to_string(),
                    secret: secret.clone(),
                    at: Instant::now(),
                    status: *status,
                    error: error.clone(),
                    description: description.clone(),
                    hint: hint.clone(),
                });
            }
            Ok(_) => *held = None,
            Err(_) => {}
        }
    }

    /// Sends a token request and reads the reply. `secrets` are scrubbed from anything the
    /// provider echoes back into an error.
    async fn post(
        &self,
        request: reqwest::RequestBuilder,
        secrets: &[&str],
    ) -> Result<Tokens, FetchError> {
        let reply = send(request, self.settings.endpoints.token.as_str()).await?;
        classify(
            reply.status,
            reply.retry_after,
            &reply.body,
            reply.sent_at,
            secrets,
        )
    }

    /// What a client-credentials grant, a refresh or a revocation authenticates with, read
    /// (or signed) now: nothing for the public `PolarsCloud` client, the confidential
    /// client's secret or assertion otherwise.
    fn proof(&self) -> Result<Proof, FetchError> {
        let auth = match &self.settings.grant {
            Grant::ServiceAccount => return Ok(Proof::Public),
            Grant::ClientCredentials(auth) => auth,
        };
        if let ClientAuth::Assertion(assertion) = auth {
            let id = self.settings.credentials.client_id()?;
            let value = assertion.produce(
                id.as_deref(),
                self.settings.endpoints.issuer.as_str(),
                SystemTime::now(),
            )?;
            return Ok(Proof::Assertion {
                id,
                assertion: value,
                signed: matches!(assertion, Assertion::Key { .. }),
            });
        }
        let (id, secret) = self.settings.credentials.load()?;
        let basic = basic_credential(&id, secret.expose_secret());
        Ok(Proof::Secret {
            basic: matches!(auth, ClientAuth::Basic),
            id,
            secret,
            encoded: basic,
        })
    }

    /// Revokes `token` at the realm's revocation endpoint (RFC 7009), authenticating the way
    /// the grant does. `hint` is the `token_type_hint` (`refresh_token`, `access_token`).
    /// Keycloak ends the whole session when its refresh token is revoked.
    pub async fn revoke(&self, token: &SecretString, hint: &str) -> Result<(), FetchError> {
        let url = self.settings.endpoints.revocation();
        let mut form: Vec<(&str, &str)> =
            vec![("token", token.expose_secret()), ("token_type_hint", hint)];
        let proof = self.proof()?;
        let request = proof.apply(self.http.post(url.clone()), &mut form);
        let reply = send(request.form(&form), url.as_str()).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        let mut secrets = vec![token.expose_secret()];
        secrets.extend(proof.secrets());
        Err(failure(
            reply.status,
            reply.retry_after,
            &reply.body,
            &secrets,
        ))
    }
}

/// A reply read to its end (at most [`MAX_REPLY`] bytes).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
    pub sent_at: SystemTime,
}

/// Sends a request to one of the realm's endpoints and reads the whole reply; only a failure
/// to get an answer is an error here.
pub(crate) async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<Reply, FetchError> {
    let sent_at = SystemTime::now();
    let mut response = request.send().await.map_err(|e| unreachable(url, &e))?;
    let status = response.status();
    let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, &e))? {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(FetchError::Malformed("reply larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        retry_after,
        body,
        sent_at,
    })
}

/// How the client identifies itself on one request, read or signed for that request.
enum Proof {
    /// The public `PolarsCloud` client: its id only.
    Public,
    /// A client secret, by HTTP Basic (`basic`) or in the form.
    Secret {
        basic: bool,
        id: String,
        secret: SecretString,
        /// The Basic credential as sent, so that an echo of it is scrubbed too.
        encoded: String,
    },
    /// A JWT client assertion; `signed` when we signed it (`private_key_jwt`).
    Assertion {
        id: Option<String>,
        assertion: SecretString,
        signed: bool,
    },
}

impl Proof {
    fn apply<'a>(
        &'a self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'a str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        match self {
            Self::Public => {
                form.push(("client_id", POLARS_CLIENT_ID));
                request
            }
            Self::Secret {
                basic: true,
                encoded,
                ..
            } => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}"))
                    .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Basic"));
                value.set_sensitive(true);
                request.header(reqwest::header::AUTHORIZATION, value)
            }
            Self::Secret { id, secret, .. } => {
                form.extend([
                    ("client_id", id.as_str()),
                    ("client_secret", secret.expose_secret()),
                ]);
                request
            }
            Self::Assertion { id, assertion, .. } => {
                // RFC 7521 section 4.2: client_id is optional; Keycloak checks it against
                // the assertion's subject when sent.
                if let Some(id) = id {
                    form.push(("client_id", id));
                }
                form.extend([
                    ("client_assertion_type", assertion::JWT_BEARER),
                    ("client_assertion", assertion.expose_secret()),
                ]);
                request
            }
        }
    }

    /// What must not come back in an error.
    fn secrets(&self) -> Vec<&str> {
        match self {
            Self::Public => Vec::new(),
            Self::Secret {
                secret, encoded, ..
            } => vec![secret.expose_secret(), encoded.as_str()],
            Self::Assertion { assertion, .. } => {
                let jwt = assertion.expose_secret();
                // The signature alone would replay nothing, but the whole JWT and its
                // parts are what a provider echoes.
                let mut parts = vec![jwt];
                parts.extend(jwt.split('.').filter(|p| p.len() >= 16));
                parts
            }
        }
    }
}

/// How the token broker (`crate::broker`) starts its refusals' descriptions, so that a
/// sidecar's hint points at them rather than at a realm's setup.
pub const BROKER_REFUSAL: &str = "polars-cloud-auth broker: ";

/// A refused assertion's hint says what the realm must be set up with.
fn with_assertion_hint(e: FetchError, proof: &Proof) -> FetchError {
    let Proof::Assertion { signed, .. } = proof else {
        return e;
    };
    match e {
        // The broker's description already says what to change.
        FetchError::Rejected {
            ref description, ..
        } if description
            .as_deref()
            .is_some_and(|d| d.starts_with(BROKER_REFUSAL)) =>
        {
            e
        }
        FetchError::Rejected {
            status,
            error,
            description,
            ..
        } if matches!(
            error.as_deref(),
            Some("invalid_client" | "unauthorized_client")
        ) =>
        {
            let hint = if *signed {
                "the realm did not accept the JWT signed with --client-key-file: register its public key (or JWKS) and --client-key-id on the client, with the client authenticator \"Signed JWT\" (private_key_jwt), and check the client id"
            } else {
                "the realm did not accept the client assertion: the client needs the authenticator \"Signed JWT - Federated\" with an identity provider that trusts the assertion's issuer, the assertion's subject as its federated subject, and the realm's issuer URL as the assertion's audience"
            };
            FetchError::Rejected {
                status,
                error,
                description,
                hint: hint.to_string(),
            }
        }
        e => e,
    }
}

fn unreachable(url: &str, e: &reqwest::Error) -> FetchError {
    let reason = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        format!("connection failed ({})", root_cause(e))
    } else {
        root_cause(e)
    };
    FetchError::Unreachable {
        url: url.to_string(),
        reason,
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}

/// Turns a status and body into tokens or a classified error. Pure, so every branch is
/// tested without a server.
pub(crate) fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: SystemTime,
    secrets: &[&str],
) -> Result<Tokens, FetchError> {
    if status.is_success() {
        return parse_success(body, sent_at);
    }
    Err(failure(status, retry_after, body, secrets))
}

/// The classified error for a reply that is not a success.
pub(crate) fn failure(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    secrets: &[&str],
) -> FetchError {
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return FetchError::Unavailable {
            status: status.as_u16(),
            retry_after,
        };
    }
    let reply: Option<ErrorReply> = serde_json::from_slice(body).ok();
    let (error, description) = reply
        .map(|r| (r.error, r.error_description))
        .unwrap_or_default();
    let error = error.map(|e| scrub(&e, secrets));
    let description = description.map(|d| scrub(&d, secrets));
    let hint = if description
        .as_deref()
        .is_some_and(|d| d.starts_with(BROKER_REFUSAL))
    {
        "the token broker says what to change, above".to_string()
    } else {
        hint(status, error.as_deref()).to_string()
    };
    FetchError::Rejected {
        status: status.as_u16(),
        error,
        description,
        hint,
    }
}

fn parse_success(body: &[u8], sent_at: SystemTime) -> Result<Tokens, FetchError> {
    let reply: TokenReply = serde_json::from_slice(body)
        .map_err(|_| FetchError::Malformed("not a JSON object".into()))?;
    let Some(raw) = reply.access_token.filter(|t| !t.trim().is_empty()) else {
        return Err(FetchError::Malformed("no access_token in the reply".into()));
    };
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FetchError::Malformed(
            "the access_token contains whitespace".into(),
        ));
    }
    let value = SecretString::from(raw);
    let access = match AccessToken::from_jwt(value.clone()) {
        // Renewal counts from when we got it: a token handed out from a cache (the
        // broker's) may be well into its life already, and renewing at 80% of its whole
        // life would come at once and again every second until the cache renews.
        Ok(token) => token.received_at(sent_at),
        Err(e @ JwtError::ExpiryOutOfRange) => return Err(FetchError::Malformed(e.to_string())),
        Err(JwtError::NotJwt | JwtError::BadPayload | JwtError::NoExpiry) => {
            // Opaque tokens are fine as long as the reply says how long they live.
            let Some(secs) = reply.expires_in.filter(|s| *s > 0.0) else {
                return Err(FetchError::Malformed(
                    "the access token has no `exp` and the reply no `expires_in`".into(),
                ));
            };
            let Some(expires_at) = life(secs).and_then(|d| sent_at.checked_add(d)) else {
                return Err(FetchError::Malformed(format!(
                    "`expires_in` {secs} is out of range (more than ten years)"
                )));
            };
            AccessToken::new(value, sent_at, expires_at)
        }
    };
    let refresh = reply
        .refresh_token
        .filter(|t| !t.trim().is_empty())
        .map(|t| RefreshToken {
            value: SecretString::from(t),
            // Unknown or out of range: treated as no stated expiry (a refused refresh
            // token falls back to the full grant anyway).
            expires_at: reply
                .refresh_expires_in
                .and_then(life)
                .and_then(|d| sent_at.checked_add(d)),
        });
    Ok(Tokens { access, refresh })
}

/// Removes every form a secret was sent in from text the provider echoed back, then
/// shortens it. Replacing before shortening keeps a secret cut in half from showing.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    let mut forms: Vec<String> = secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .flat_map(|s| encodings(s))
        .collect();
    // Longest first, so a form that contains another is removed whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    for form in &forms {
        out = replace_ignoring_hex_case(&out, form);
    }
    out.chars().take(300).collect()
}

/// The forms a secret travels in: as is, form-encoded (`+` for a space, `%2B` for `+`),
/// percent-encoded (`%20` for a space), and both escapes of the JSON string.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent = form.replace('+', "%20");
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    vec![secret.to_string(), form, percent, json]
}

/// `text` with `form` replaced, where the hex digits of its `%XX` escapes may be of either
/// case (`%2b` is `%2B`).
fn replace_ignoring_hex_case(text: &str, form: &str) -> String {
    if !form.contains('%') {
        return text.replace(form, "[redacted]");
    }
    let lower = text.to_ascii_lowercase();
    let needle = form.to_ascii_lowercase();
    // Case-folding ASCII keeps byte offsets, so matches in `lower` index `text`.
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(&needle) {
        if at < last {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str("[redacted]");
        last = at + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The `Authorization: Basic` credential for `id` and `secret` as we send it (RFC 6749
/// section 2.3.1: both form-encoded, then base64), so it can be scrubbed when echoed.
fn basic_credential(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
}

fn hint(status: StatusCode, error: Option<&str>) -> &'static str {
    // Whatever a redirect's body says, the URL is what is wrong.
    let error = error.filter(|_| !status.is_redirection());
    match (status.as_u16(), error) {
        (_, Some("invalid_client")) => {
            "the client id or secret is wrong, or the client does not exist in this realm: check the credentials and --issuer"
        }
        (_, Some("invalid_grant")) => {
            "the credentials were not accepted: check the client id and secret"
        }
        // Keycloak answers a wrong client secret with 401 `unauthorized_client` (not
        // `invalid_client`), and a grant the client may not use with 400.
        (401, Some("unauthorized_client")) => {
            "the client id or secret is wrong, or the client does not exist in this realm: check the credentials and --issuer"
        }
        (_, Some("unauthorized_client")) => {
            "this client may not use this grant: check --grant (service-account or client-credentials)"
        }
        (_, Some("unsupported_grant_type")) => "the realm does not offer this grant: check --grant",
        (_, Some("invalid_scope")) => {
            "the requested scope is not allowed for this client: check --scope"
        }
        (_, Some("invalid_target")) => "the requested audience is not allowed: check --audience",
        (404, _) => "no token endpoint at this URL: check --issuer (realm name) or --token-url",
        (401 | 403, _) => "the credentials were not accepted: check the client id and secret",
        (300..=399, _) => {
            "the token URL redirects, so it is not the token endpoint (a wrong --issuer or --token-url, or http where https is needed): check --issuer or --token-url"
        }
        _ => "check --issuer, --grant and the credentials",
    }
}

/// The service account hint names the user name we sent, which is the usual confusion.
fn with_grant_hint(e: FetchError, grant: &Grant, id: &str) -> FetchError {
    match (e, grant) {
        (
            FetchError::Rejected {
                status,
                error,
                description,
                ..
            },
            Grant::ServiceAccount,
        ) if matches!(error.as_deref(), Some("invalid_grant") | None)
            && (400..500).contains(&status) =>
        {
            FetchError::Rejected {
                status,
                error,
                description,
                hint: format!(
                    "wrong client id or secret for service account '{id}' (signed in as '{id}{SERVICE_ACCOUNT_SUFFIX}'), or a wrong realm: check POLARS_CLOUD_CLIENT_ID/SECRET and --issuer"
                ),
            }
        }
        (e, _) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::jwt;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn default_issuer_is_polars_realm() {
        let issuer = issuer_for_domain(DEFAULT_DOMAIN).unwrap();
        let e = Endpoints::new(issuer, None).unwrap();
        assert_eq!(
            e.token.as_str(),
            "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/token"
        );
        assert_eq!(
            e.device().as_str(),
            "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/auth/device"
        );
        assert_eq!(
            e.revocation().as_str(),
            "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/revoke"
        );
    }

    #[test]
    fn trailing_slash_on_issuer_is_ignored() {
        let e = Endpoints::new(
            Url::parse("http://127.0.0.1:9/realms/Polars/").unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(
            e.token.as_str(),
            "http://127.0.0.1:9/realms/Polars/protocol/openid-connect/token"
        );
    }

    #[test]
    fn ca_pem_text_is_trusted_or_refused_with_its_variable_named() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["broker.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let with = |pem: &str| {
            http_client(&HttpSettings {
                ca_pem: Some(pem.into()),
                ..HttpSettings::default()
            })
        };
        assert!(with(&ca.pem()).is_ok());
        let e = with("not a certificate").unwrap_err().to_string();
        assert!(e.contains("POLARS_CLOUD_CA_PEM"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8080/r",
            "http://localhost/r",
            "http://[::1]:1/r",
            "https://idp.example/r",
        ] {
            assert!(
                Endpoints::new(Url::parse(ok).unwrap(), None).is_ok(),
                "{ok}"
            );
        }
        let err = Endpoints::new(
            Url::parse("http://idp.example/realms/Polars").unwrap(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("use https"), "{err}");
        let err = Endpoints::new(
            Url::parse("https://idp.example/realms/Polars").unwrap(),
            Some(Url::parse("http://10.0.0.1/token").unwrap()),
        )
        .unwrap_err();
        assert!(matches!(err, EndpointError::PlainHttp(_)));
        assert!(Endpoints::new(Url::parse("ftp://127.0.0.1/x").unwrap(), None).is_err());
    }

    #[test]
    fn a_keycloak_reply_gives_access_and_refresh_tokens() {
        let access = jwt(&serde_json::json!({"exp": 2_000_000_000u64, "iat": 1_999_999_700u64}));
        let body = serde_json::json!({
            "access_token": access, "expires_in": 300, "refresh_expires_in": 1800,
            "refresh_token": "r1", "token_type": "Bearer", "not-before-policy": 0,
            "session_state": "x", "scope": "profile email"
        });
        let t = classify(
            StatusCode::OK,
            None,
            body.to_string().as_bytes(),
            now(),
            &[],
        )
        .unwrap();
        assert_eq!(t.access.lifetime(), Duration::from_secs(300));
        assert_eq!(t.access.secret().expose_secret(), access);
        let r = t.refresh.unwrap();
        assert_eq!(r.value.expose_secret(), "r1");
        assert!(r.expires_at.is_some());
    }

    /// A token from a cache (the broker's) 200 s into its 300 s life is renewed 80% into
    /// the 100 s it has left, not at once.
    #[test]
    fn a_token_well_into_its_life_counts_its_life_from_receipt() {
        let sent = now();
        let at = |d: i64| {
            (sent
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + d) as u64
        };
        let access = jwt(&serde_json::json!({"exp": at(100), "iat": at(-200)}));
        let body = serde_json::json!({"access_token": access, "expires_in": 100});
        let t = classify(StatusCode::OK, None, body.to_string().as_bytes(), sent, &[]).unwrap();
        assert_eq!(t.access.issued_at(), sent);
        let policy = crate::renew::Policy::default();
        let wait = crate::renew::next_renewal(&t.access, sent, &policy, 0.0);
        // 80% of the 99 to 100 s left (the claims are whole seconds).
        assert!((79.0..=80.0).contains(&wait.as_secs_f64()), "{wait:?}");
    }

    #[test]
    fn opaque_tokens_use_expires_in() {
        let sent = now();
        let body = br#"{"access_token":"opaque","expires_in":60,"refresh_expires_in":0}"#;
        let t = classify(StatusCode::OK, None, body, sent, &[]).unwrap();
        assert_eq!(t.access.expires_at(), sent + Duration::from_secs(60));
        assert!(t.refresh.is_none());
        let err = classify(
            StatusCode::OK,
            None,
            br#"{"access_token":"opaque"}"#,
            sent,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.class(), FailureClass::Transient);
    }

    #[test]
    fn malformed_replies_are_transient() {
        for body in [
            &b"<html>oops</html>"[..],
            b"",
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":""}"#,
            br#"[1]"#,
        ] {
            let err = classify(StatusCode::OK, None, body, now(), &[]).unwrap_err();
            assert!(matches!(err, FetchError::Malformed(_)), "{err:?}");
            assert_eq!(err.class(), FailureClass::Transient);
        }
    }

    #[test]
    fn server_trouble_is_transient_and_keeps_retry_after() {
        for status in [500, 502, 503, 504, 429, 408] {
            let s = StatusCode::from_u16(status).unwrap();
            let err = classify(s, Some(Duration::from_secs(3)), b"busy", now(), &[]).unwrap_err();
            assert_eq!(err.class(), FailureClass::Transient, "{status}");
            assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        }
    }

    #[test]
    fn oauth_errors_are_permanent_with_a_hint() {
        let cases = [
            ("invalid_client", "client id or secret is wrong"),
            ("invalid_grant", "credentials were not accepted"),
            ("unauthorized_client", "check --grant"),
            ("invalid_scope", "check --scope"),
        ];
        for (error, hint) in cases {
            let body = serde_json::json!({"error": error, "error_description": "nope"}).to_string();
            let err =
                classify(StatusCode::BAD_REQUEST, None, body.as_bytes(), now(), &[]).unwrap_err();
            assert_eq!(err.class(), FailureClass::Permanent);
            let text = err.to_string();
            assert!(text.contains(error) && text.contains(hint), "{text}");
        }
        let err = classify(StatusCode::NOT_FOUND, None, b"Not Found", now(), &[]).unwrap_err();
        assert!(err.to_string().contains("realm name"), "{err}");
        assert_eq!(err.class(), FailureClass::Permanent);
    }

    #[test]
    fn keycloaks_401_unauthorized_client_is_a_wrong_client_secret() {
        let body = br#"{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}"#;
        let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("the client id or secret is wrong"),
            "{err}"
        );
        let body = br#"{"error":"unauthorized_client","error_description":"Client not allowed for direct access grants"}"#;
        let err = classify(StatusCode::BAD_REQUEST, None, body, now(), &[]).unwrap_err();
        assert!(err.to_string().contains("check --grant"), "{err}");
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let body = br#"{"error":"invalid_grant","error_description":"bad password hunter2!"}"#;
        let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &["hunter2"]).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn an_echoed_form_body_or_basic_header_leaks_no_encoding_of_the_secret() {
        let secret = "Zq9+UNIQUE/SECRET=77&x y";
        let basic = basic_credential("cc", secret);
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let echoed = format!(
            "grant_type=password&password={form} lower={} pct={} auth=Basic {basic}",
            form.to_ascii_lowercase(),
            form.replace('+', "%20"),
        );
        let body = serde_json::json!({"error": "invalid_grant", "error_description": echoed});
        let err = classify(
            StatusCode::UNAUTHORIZED,
            None,
            body.to_string().as_bytes(),
            now(),
            &[secret, &basic],
        )
        .unwrap_err();
        let text = format!("{err} {err:?}");
        for leak in ["UNIQUE", "SECRET", &basic[..12]] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        assert!(text.contains("grant_type=password"), "{text}");
    }

    #[test]
    fn a_secret_cut_by_the_length_limit_is_still_scrubbed() {
        let secret = "hunter2-UNIQUE";
        let description = format!("{}{secret}", "x".repeat(295));
        let body = serde_json::json!({"error": "invalid_grant", "error_description": description});
        let err = classify(
            StatusCode::UNAUTHORIZED,
            None,
            body.to_string().as_bytes(),
            now(),
            &[secret],
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter"), "{err}");
    }

    #[test]
    fn a_redirect_is_reported_as_a_wrong_url_not_a_wrong_secret() {
        let err = classify(StatusCode::FOUND, None, b"", now(), &[]).unwrap_err();
        let err = with_grant_hint(err, &Grant::ServiceAccount, "my-sa");
        let text = err.to_string();
        assert!(text.contains("redirects"), "{text}");
        assert!(!text.contains("wrong client id or secret"), "{text}");
        assert_eq!(err.class(), FailureClass::Permanent);
    }

    #[test]
    fn extreme_expiry_values_are_refused_or_ignored_not_a_panic() {
        let sent = now();
        for body in [
            r#"{"access_token":"opaque","expires_in":1e300}"#.to_string(),
            format!(
                r#"{{"access_token":"{}","expires_in":300}}"#,
                jwt(&serde_json::json!({"exp": 1e19}))
            ),
            format!(
                r#"{{"access_token":"{}","expires_in":300}}"#,
                jwt(&serde_json::json!({"exp": 1e300}))
            ),
        ] {
            let err = classify(StatusCode::OK, None, body.as_bytes(), sent, &[]).unwrap_err();
            assert!(
                matches!(&err, FetchError::Malformed(m) if m.contains("out of range")),
                "{err}"
            );
        }
        let body = br#"{"access_token":"opaque","expires_in":60,"refresh_token":"r","refresh_expires_in":1e300}"#;
        let t = classify(StatusCode::OK, None, body, sent, &[]).unwrap();
        assert_eq!(t.refresh.unwrap().expires_at, None);
    }

    #[test]
    fn service_account_rejections_name_the_user_name() {
        let body = br#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#;
        let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &[]).unwrap_err();
        let err = with_grant_hint(err, &Grant::ServiceAccount, "my-sa");
        assert!(
            err.to_string().contains("'my-sa@sa.cloud.pola.rs'"),
            "{err}"
        );
    }

    /// A loopback server that answers one request with `reply` and hands the request back.
    async fn one_shot(reply: &'static str) -> (Url, tokio::task::JoinHandle<String>) {
        let (issuer, task) = serve(vec![reply.to_string()]).await;
        (
            issuer,
            tokio::spawn(async { task.await.unwrap().remove(0) }),
        )
    }

    /// A loopback server that answers one request per reply, in order, then closes; hands
    /// the requests back.
    async fn serve(replies: Vec<String>) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = Url::parse(&format!("http://{addr}/realms/Polars")).unwrap();
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for reply in replies {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length || n == 0 {
                            break;
                        }
                    }
                }
                stream.write_all(reply.as_bytes()).await.unwrap();
                requests.push(String::from_utf8(request).unwrap());
            }
            requests
        });
        (issuer, task)
    }

    fn token_reply(expires_in: u64, refresh_expires_in: u64) -> String {
        let now = unix_now();
        let access = jwt(&serde_json::json!({"iat": now, "exp": now + expires_in}));
        let body = format!(
            r#"{{"access_token":"{access}","expires_in":{expires_in},"refresh_token":"r-1","refresh_expires_in":{refresh_expires_in}}}"#
        );
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn grant_type(request: &str) -> &str {
        let body = request.split_once("\r\n\r\n").unwrap().1;
        body.split('&')
            .find_map(|kv| kv.strip_prefix("grant_type="))
            .unwrap()
    }

    /// Keycloak caps the refresh token at the session's max lifespan: near it, a new sign-in
    /// beats a refresh that would bring a token cut short.
    #[tokio::test]
    async fn a_refresh_token_ending_before_a_new_access_token_would_is_not_used() {
        let (issuer, server) = serve(vec![
            token_reply(60, 600),
            token_reply(60, 30),
            token_reply(60, 600),
        ])
        .await;
        let source = source_at(issuer, Grant::ServiceAccount);
        for _ in 0..3 {
            source.fetch().await.unwrap();
        }
        let requests = server.await.unwrap();
        let grants: Vec<&str> = requests.iter().map(|r| grant_type(r)).collect();
        assert_eq!(grants, ["password", "refresh_token", "password"]);
    }

    fn source_at(issuer: Url, grant: Grant) -> TokenSource {
        let credentials = Credentials::from_sources(credentials::Sources {
            client_id: Some("cc".into()),
            client_secret: Some("cc-secret".into()),
            ..credentials::Sources::default()
        });
        TokenSource::new(
            http_client(&HttpSettings::default()).unwrap(),
            Settings {
                endpoints: Endpoints::new(issuer, None).unwrap(),
                grant,
                credentials,
                scope: None,
                audience: None,
            },
        )
    }

    fn refresh(value: &str) -> RefreshToken {
        RefreshToken {
            value: SecretString::from(value.to_string()),
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn revoke_posts_the_refresh_token_to_keycloaks_revocation_endpoint() {
        let (issuer, server) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let source = source_at(issuer, Grant::ServiceAccount);
        source
            .revoke(&refresh("r-1").value, "refresh_token")
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /realms/Polars/protocol/openid-connect/revoke HTTP/1.1\r\n"),
            "{request}"
        );
        let body = request.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            body,
            "token=r-1&token_type_hint=refresh_token&client_id=PolarsCloud"
        );
    }

    #[tokio::test]
    async fn a_refused_revocation_is_permanent_and_scrubbed() {
        let (issuer, server) = one_shot(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 61\r\nconnection: close\r\n\r\n{\"error\":\"invalid_client\",\"error_description\":\"bad r-secret\"}",
        )
        .await;
        let source = source_at(issuer, Grant::ClientCredentials(ClientAuth::Basic));
        let err = source
            .revoke(&refresh("r-secret").value, "refresh_token")
            .await
            .unwrap_err();
        assert_eq!(err.class(), FailureClass::Permanent);
        let text = err.to_string();
        assert!(
            text.contains("invalid_client") && !text.contains("r-secret"),
            "{text}"
        );
        let request = server.await.unwrap();
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: basic "),
            "{request}"
        );
        assert!(!request.contains("client_secret="), "{request}");
    }

    fn form(request: &str) -> Vec<(String, String)> {
        let body = request.split_once("\r\n\r\n").unwrap().1;
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    fn assertion_source(issuer: Url, assertion: Assertion, client_id: Option<&str>) -> TokenSource {
        let credentials = Credentials::from_sources(credentials::Sources {
            client_id: client_id.map(str::to_string),
            ..credentials::Sources::default()
        });
        TokenSource::new(
            http_client(&HttpSettings::default()).unwrap(),
            Settings {
                endpoints: Endpoints::new(issuer, None).unwrap(),
                grant: Grant::ClientCredentials(ClientAuth::Assertion(assertion)),
                credentials,
                scope: Some("openid".into()),
                audience: None,
            },
        )
    }

    /// RFC 7523 section 2.2: the assertion and its type in the form, no secret anywhere,
    /// the file read again for every request (grant, refresh, revocation).
    #[tokio::test]
    async fn an_assertion_file_is_sent_and_reread_for_grant_refresh_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "hdr.first-assertion.sig\n").unwrap();
        let (issuer, server) = serve(vec![
            token_reply(60, 600),
            token_reply(60, 600),
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
        ])
        .await;
        let source = assertion_source(issuer, Assertion::File(file.clone()), None);
        source.fetch().await.unwrap();
        std::fs::write(&file, "hdr.second-assertion.sig").unwrap();
        source.fetch().await.unwrap();
        source
            .revoke(&refresh("r-9").value, "refresh_token")
            .await
            .unwrap();
        let requests = server.await.unwrap();
        let forms: Vec<_> = requests.iter().map(|r| form(r)).collect();
        let get = |f: &Vec<(String, String)>, k: &str| {
            f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(
            get(&forms[0], "grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(get(&forms[0], "scope").as_deref(), Some("openid"));
        assert_eq!(
            get(&forms[1], "grant_type").as_deref(),
            Some("refresh_token")
        );
        for (f, jwt) in forms.iter().zip([
            "hdr.first-assertion.sig",
            "hdr.second-assertion.sig",
            "hdr.second-assertion.sig",
        ]) {
            assert_eq!(get(f, "client_assertion").as_deref(), Some(jwt), "{f:?}");
            assert_eq!(
                get(f, "client_assertion_type").as_deref(),
                Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            );
            assert_eq!(get(f, "client_id"), None, "no client id was configured");
            assert_eq!(get(f, "client_secret"), None);
        }
        for r in &requests {
            assert!(!r.to_ascii_lowercase().contains("authorization:"), "{r}");
        }
    }

    /// `private_key_jwt`: a fresh JWT per request, its iss and sub the client id, its aud
    /// the realm's issuer, and the client id in the form.
    #[tokio::test]
    async fn a_client_key_signs_a_fresh_assertion_for_every_request() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, crate::assertion::tests::EC_PKCS8).unwrap();
        let (issuer, server) = serve(vec![token_reply(60, 0), token_reply(60, 0)]).await;
        let source = assertion_source(
            issuer.clone(),
            Assertion::Key {
                path: key,
                kid: Some("k1".into()),
            },
            Some("workload"),
        );
        source.fetch().await.unwrap();
        source.grant().await.unwrap();
        let requests = server.await.unwrap();
        let mut jtis = Vec::new();
        for r in &requests {
            let f = form(r);
            let get = |k: &str| {
                f.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            assert_eq!(get("client_id"), "workload");
            let jwt = get("client_assertion");
            let part = |i: usize| -> serde_json::Value {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(jwt.split('.').nth(i).unwrap())
                    .unwrap();
                serde_json::from_slice(&raw).unwrap()
            };
            assert_eq!(part(0)["alg"], "ES256");
            assert_eq!(part(0)["kid"], "k1");
            let claims = part(1);
            assert_eq!(claims["iss"], "workload");
            assert_eq!(claims["sub"], "workload");
            assert_eq!(claims["aud"], issuer.as_str().trim_end_matches('/'));
            assert_eq!(
                claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
                60
            );
            jtis.push(claims["jti"].clone());
        }
        assert_ne!(jtis[0], jtis[1]);
    }

    #[tokio::test]
    async fn a_refused_assertion_is_scrubbed_and_says_what_the_realm_needs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU";
        std::fs::write(&file, jwt).unwrap();
        let body = format!(r#"{{"error":"invalid_client","error_description":"bad {jwt}"}}"#);
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (issuer, _server) = serve(vec![reply]).await;
        let source = assertion_source(issuer, Assertion::File(file), Some("cc"));
        let err = source.fetch().await.unwrap_err();
        assert_eq!(err.class(), FailureClass::Permanent);
        let text = format!("{err} {err:?}");
        assert!(text.contains("Signed JWT - Federated"), "{text}");
        for part in jwt.split('.') {
            assert!(!text.contains(part), "{text}");
        }
    }

    #[tokio::test]
    async fn a_missing_assertion_file_fails_before_any_request_naming_the_flag() {
        let source = assertion_source(
            Url::parse("http://127.0.0.1:9/realms/r").unwrap(),
            Assertion::File("/nonexistent/token".into()),
            None,
        );
        let err = source.fetch().await.unwrap_err();
        assert_eq!(err.class(), FailureClass::Permanent);
        assert_eq!(
            err.to_string(),
            "failed to read the client assertion file '/nonexistent/token' (--client-assertion-file)"
        );
        assert_eq!(
            crate::exit::code_for(&anyhow::Error::new(err)),
            crate::exit::USAGE
        );
    }

    /// Keycloak locks a user after a few refused passwords, for the right one too: an
    /// unchanged refused secret is not sent again, a rotated one is.
    #[tokio::test]
    async fn a_refused_service_account_secret_is_not_sent_again_until_it_changes() {
        let refused = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 72\r\nconnection: close\r\n\r\n{\"error\":\"invalid_grant\",\"error_description\":\"Invalid user credentials\"}";
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("client_secret");
        std::fs::write(&secret_file, "wrong-secret").unwrap();
        let (issuer, server) = one_shot(refused).await;
        let source = TokenSource::new(
            http_client(&HttpSettings::default()).unwrap(),
            Settings {
                endpoints: Endpoints::new(issuer.clone(), None).unwrap(),
                grant: Grant::ServiceAccount,
                credentials: Credentials::from_sources(credentials::Sources {
                    client_id: Some("sa".into()),
                    client_secret_file: Some(secret_file.clone()),
                    ..credentials::Sources::default()
                }),
                scope: None,
                audience: None,
            },
        );
        let first = source.fetch().await.unwrap_err();
        assert_eq!(first.class(), FailureClass::Permanent);
        assert!(server.await.unwrap().contains("password=wrong-secret"));
        // The one-shot server is gone: a second request would be `Unreachable`.
        let again = source.fetch().await.unwrap_err();
        assert!(
            matches!(&again, FetchError::Rejected { error: Some(e), .. } if e == "invalid_grant"),
            "{again:?}"
        );
        assert!(
            again
                .to_string()
                .contains("not sent again until it changes"),
            "{again}"
        );
        assert!(!again.to_string().contains("wrong-secret"), "{again}");
        // A rotated secret goes out (and finds no server: proof that it was sent).
        std::fs::write(&secret_file, "rotated-secret").unwrap();
        let rotated = source.fetch().await.unwrap_err();
        assert!(
            matches!(rotated, FetchError::Unreachable { .. }),
            "{rotated:?}"
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let v = reqwest::header::HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(Some(&v)), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let v = reqwest::header::HeaderValue::from_str(&later).unwrap();
        let d = parse_retry_after(Some(&v)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let v = reqwest::header::HeaderValue::from_static("soon");
        assert_eq!(parse_retry_after(Some(&v)), None);
    }
}
