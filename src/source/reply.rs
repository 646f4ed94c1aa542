//! A reply classified: tokens, or a failure that is permanent or transient, with a hint
//! naming what to fix.

use super::*;

/// A failed token request, classified.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The credentials could not be read; fix the configuration.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// No client assertion could be read or signed; fix the configuration.
    #[error(transparent)]
    Assertion(#[from] client_assertion::Error),
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
    /// What the provider said when it refused a refresh token, without advice: a refused
    /// refresh token is how a session ends (SSO Session Idle or Max, a logout, a restart of
    /// the provider), routine for a long-running process, and no sign of a wrong secret.
    pub fn refresh_refusal(&self) -> String {
        match self {
            Self::Rejected {
                status,
                error,
                description,
                ..
            } => {
                let mut out = format!("HTTP {status}");
                if let Some(e) = error {
                    out.push_str(&format!(", {e}"));
                }
                if let Some(d) = description {
                    out.push_str(&format!(": \"{d}\""));
                }
                out
            }
            other => other.to_string(),
        }
    }

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
pub(super) struct TokenReply {
    pub(super) access_token: Option<String>,
    pub(super) expires_in: Option<f64>,
    pub(super) refresh_token: Option<String>,
    pub(super) refresh_expires_in: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct ErrorReply {
    pub(super) error: Option<String>,
    pub(super) error_description: Option<String>,
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
        .is_some_and(|d| d.starts_with(super::BROKER_REFUSAL))
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

pub(super) fn parse_success(body: &[u8], sent_at: SystemTime) -> Result<Tokens, FetchError> {
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

pub(super) fn hint(status: StatusCode, error: Option<&str>) -> &'static str {
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
pub(super) fn with_grant_hint(e: FetchError, grant: &Grant, id: &str) -> FetchError {
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
