//! The relay's token endpoint over TLS: `POST /realms/Polars/protocol/openid-connect/token`
//! with `grant_type=refresh_token` and one of our handles answers with the token the
//! renewal loop holds now. Nothing else is served: the app cannot sign in through us,
//! and a wrong handle gets the `invalid_grant` that Keycloak would send.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::TOKEN_PATH;
use super::clients::{Family, Seen, version_from_headers};
use super::handle::{HandleKey, LIFE};
use crate::token::AccessToken;

/// A TLS handshake must finish within this, or the connection is dropped.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Refreshes are answered one at a time, this far apart. Processes sharing a config
/// directory all refresh when the same token nears expiry, and the client writes its
/// config.toml back through one fixed temporary name: two writes at once make one of them
/// fail ("Failed to move config into place"), which fails that call. Spaced answers keep
/// the writes apart; a refresh waits at most this long per process ahead of it.
pub const SPACING: Duration = Duration::from_millis(250);

/// What the relay serves from, shared by its connections.
pub struct Relay {
    prepared: Arc<super::Prepared>,
    current: watch::Receiver<Option<AccessToken>>,
    tls: TlsAcceptor,
    /// Refreshes answered with a token.
    pub served: AtomicU64,
    /// Requests refused (wrong grant, wrong handle, no valid token).
    pub refused: AtomicU64,
    /// The app's client versions, from their refreshes and broken-off handshakes.
    pub clients: Seen,
    /// When the last refresh was answered (see [`SPACING`]).
    last_answer: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Relay {
    pub fn new(
        prepared: Arc<super::Prepared>,
        current: watch::Receiver<Option<AccessToken>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls: TlsAcceptor::from(prepared.authority.server.clone()),
            prepared,
            current,
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            clients: Seen::default(),
            last_answer: tokio::sync::Mutex::new(None),
        })
    }

    /// Serves one connection that has reached us (directly, or through the CONNECT
    /// proxy): TLS, then HTTP/1.1.
    pub async fn serve_connection<S>(self: Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = match tokio::time::timeout(HANDSHAKE_LIMIT, self.tls.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if refused_our_ca(&e) && self.clients.untrusting() {
                    tracing::warn!(
                        family = Family::LegacyBuiltinRoots.name(),
                        "relay: an app's client refused the relay's certificate; polars-cloud 0.10 and older trust only built-in roots and cannot refresh here: they are served by the legacy token files, which every renewal rewrites before they would refresh"
                    );
                }
                tracing::debug!(error = %e, "relay: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("relay: TLS handshake timed out");
                return;
            }
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        let app = router(self);
        if let Err(e) = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .await
        {
            tracing::debug!(error = %e, "relay: connection ended with an error");
        }
    }
}

/// Accepts on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>, cancel: CancellationToken) {
    super::accept_loop(listener, "relay", cancel, |tcp| {
        relay.clone().serve_connection(tcp)
    })
    .await
}

fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .fallback(|| async {
            oauth_error(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "this is polars-cloud-auth's pod-local token endpoint; it serves token refreshes only",
            )
        })
        .with_state(relay)
}

/// Whether a failed handshake is the client refusing our certificate (its alert).
fn refused_our_ca(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown
        ))
    )
}

/// Counts the client's version and says once per version who it is.
fn note_client(relay: &Relay, headers: &HeaderMap) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let version = version_from_headers(header("x-client-version"), header("user-agent"));
    if !relay.clients.refresh(version) {
        return;
    }
    match version {
        Some(v) => {
            let family = Family::of(v);
            tracing::info!(
                client_version = %v,
                family = family.name(),
                served = family.served_by_relay_modes(),
                "relay: the app runs polars-cloud {v}, which {}",
                family.note()
            );
        }
        None => tracing::info!(
            user_agent = header("user-agent"),
            "relay: a client without a polars-cloud version header refreshed"
        ),
    }
}

async fn token(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    note_client(&relay, &headers);
    // One answer at a time, SPACING apart; the lock is held until this one is sent off.
    let mut last = relay.last_answer.lock().await;
    if let Some(at) = *last {
        tokio::time::sleep_until(at + SPACING).await;
    }
    *last = Some(tokio::time::Instant::now());
    let current = relay.current.borrow().clone();
    let (status, body) = answer(
        &form,
        current.as_ref(),
        &relay.prepared.key,
        SystemTime::now(),
    );
    if status.is_success() {
        relay.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("relay: refresh answered");
    } else {
        relay.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            status = status.as_u16(),
            error = body["error"].as_str(),
            "relay: request refused"
        );
    }
    (status, Json(body)).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The answer to one token request. Pure.
pub fn answer(
    form: &HashMap<String, String>,
    current: Option<&AccessToken>,
    key: &HandleKey,
    now: SystemTime,
) -> (StatusCode, Value) {
    let error = |status, error: &str, description: &str| {
        (
            status,
            json!({ "error": error, "error_description": description }),
        )
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "polars-cloud-auth's pod-local token endpoint only refreshes the token it handed out; sign-ins go to the identity provider",
        );
    }
    let Some(handle) = form.get("refresh_token").filter(|h| key.verify(h)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token was not issued by this pod's polars-cloud-auth",
        );
    };
    match current.filter(|t| t.expires_at() > now) {
        Some(token) => {
            let handle_left = crate::token::claims(handle)
                .ok()
                .and_then(|c| c.exp)
                .map(|exp| (exp - crate::token::unix_secs(now) as f64).max(0.0) as u64)
                .unwrap_or(LIFE.as_secs());
            (
                StatusCode::OK,
                json!({
                    "access_token": token.secret().expose_secret(),
                    "expires_in": token.remaining(now).as_secs(),
                    "refresh_token": handle,
                    "refresh_expires_in": handle_left,
                    "token_type": "Bearer",
                    "not-before-policy": 0,
                }),
            )
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "polars-cloud-auth holds no valid token right now; it keeps retrying the identity provider (see its log and /readyz)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn token(now: SystemTime, life: u64) -> AccessToken {
        AccessToken::new(
            "the-access-token".to_string().into(),
            now,
            now + Duration::from_secs(life),
        )
    }

    #[test]
    fn a_refresh_with_our_handle_gets_the_current_token_and_the_same_handle() {
        let key = HandleKey::generate();
        let now = SystemTime::now();
        let handle = key.mint(now);
        let f = form(&[
            ("client_id", "PolarsCloud"),
            ("grant_type", "refresh_token"),
            ("refresh_token", handle.expose_secret()),
        ]);
        let (status, body) = answer(&f, Some(&token(now, 300)), &key, now);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["access_token"], "the-access-token");
        assert_eq!(body["refresh_token"], handle.expose_secret());
        assert_eq!(body["expires_in"], 300);
    }

    #[test]
    fn other_grants_foreign_handles_and_no_token_are_refused() {
        let key = HandleKey::generate();
        let now = SystemTime::now();
        let t = token(now, 300);
        let password = form(&[("grant_type", "password"), ("password", "x")]);
        assert_eq!(
            answer(&password, Some(&t), &key, now).0,
            StatusCode::BAD_REQUEST
        );
        let foreign = HandleKey::generate().mint(now);
        let f = form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", foreign.expose_secret()),
        ]);
        let (status, body) = answer(&f, Some(&t), &key, now);
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let ours = form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", key.mint(now).expose_secret()),
        ]);
        assert_eq!(
            answer(&ours, None, &key, now).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let expired = token(now - Duration::from_secs(400), 300);
        assert_eq!(
            answer(&ours, Some(&expired), &key, now).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
