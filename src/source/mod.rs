//! The token source: turns credentials into tokens at a Keycloak-shaped token endpoint.
//!
//! It speaks the three grants the tool needs (a Polars Cloud service account's password
//! grant, `client_credentials`, and `refresh_token`), classifies every failure as
//! permanent or transient, and keeps the refresh token in memory only.

pub mod client_assertion;
pub mod credentials;
pub mod device;
mod endpoints;
mod http;
mod reply;
pub mod retry;
mod scrub;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::token::{AccessToken, JwtError, RefreshToken, Tokens, life};
use client_assertion::Assertion;
use credentials::Credentials;
pub use endpoints::{EndpointError, Endpoints, issuer_for_domain};
pub(crate) use http::send;
pub use http::{HttpError, HttpSettings, http_client};
use reply::with_grant_hint;
pub use reply::{FailureClass, FetchError};
pub(crate) use reply::{classify, failure};
use scrub::{basic_credential, scrub};

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
                    // The session ended (idle or max lifespan, logout, provider restart):
                    // routine, and no reason to doubt the credentials. A sign-in that
                    // fails next is reported with its own advice.
                    tracing::info!(
                        provider_said = %e.refresh_refusal(),
                        "the identity provider ended the session (refresh token no longer accepted); signing in again"
                    );
                    self.forget_refresh();
                    let tokens = self.grant().await?;
                    tracing::info!("signed in again: new session");
                    return self.keep(tokens);
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
                    ("client_assertion_type", client_assertion::JWT_BEARER),
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

#[cfg(test)]
mod tests;
