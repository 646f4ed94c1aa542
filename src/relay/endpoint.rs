//! The relay's token endpoint over TLS: `POST /realms/Polars/protocol/openid-connect/token`
//! with `grant_type=refresh_token` and one of our handles answers with the token the
//! renewal loop holds now. Nothing else is served: the app cannot sign in through us,
//! and a wrong handle gets the `invalid_grant` that Keycloak would send.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router, extract::State};
use http_body_util::BodyExt;
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
use crate::serve::{self, ConnContext, Connections, Limits};
use crate::token::AccessToken;

/// Refreshes are answered one at a time, this far apart. Processes sharing a config
/// directory all refresh when the same token nears expiry, and the client writes its
/// config.toml back through one fixed temporary name: two writes at once make one of them
/// fail ("Failed to move config into place"), which fails that call. Spaced answers keep
/// the writes apart; a refresh waits at most this long per process ahead of it. Only
/// refreshes with a valid handle take their turn: a request is read (within
/// [`Limits::request`]) and checked before it queues, so junk never waits for the
/// spacing nor makes a real refresh wait.
pub const SPACING: Duration = Duration::from_millis(250);

/// The largest token request read: a refresh is a form of a few hundred bytes.
const MAX_FORM: usize = 16 * 1024;

/// The relay's bounds, those of our other servers ([`crate::serve`]) with fewer
/// connections: an app's client needs a handful, and under `exec` each tunnel through the
/// proxy holds two descriptors of ours, so the cap stays well below the usual limit of
/// 1,024 and leaves the rest to the command's own connections.
pub fn limits() -> Limits {
    Limits {
        connections: 128,
        ..Limits::default()
    }
}

/// What the relay serves from, shared by its connections.
pub struct Relay {
    prepared: Arc<super::Prepared>,
    current: watch::Receiver<Option<AccessToken>>,
    tls: TlsAcceptor,
    limits: Limits,
    /// Open connections and what became of the hostile ones.
    pub connections: Arc<Connections>,
    /// Refreshes answered with a token.
    pub served: AtomicU64,
    /// Requests refused (wrong grant, wrong handle, no valid token, unreadable).
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
            limits: limits(),
            connections: Arc::new(Connections::new("relay")),
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            clients: Seen::default(),
            last_answer: tokio::sync::Mutex::new(None),
        })
    }

    /// The relay's bounds (see [`limits`]).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves one connection that has reached us (directly, or through the CONNECT
    /// proxy): TLS, then HTTP/1.1, on the shared server's bounds.
    pub async fn serve_connection<S>(self: Arc<Self>, io: S, ctx: &ConnContext)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = self.tls.clone();
        let app = router(self.clone());
        if let Err(e) = serve::serve_tls(io, &tls, app, ctx).await {
            if refused_our_ca(&e) && self.clients.untrusting() {
                tracing::warn!(
                    family = Family::LegacyBuiltinRoots.name(),
                    "relay: an app's client refused the relay's certificate; polars-cloud 0.10 and older trust only built-in roots and cannot refresh here: they are served by the legacy token files, which every renewal rewrites before they would refresh"
                );
            }
            tracing::debug!(error = %e, "relay: TLS handshake failed");
        }
    }
}

/// Accepts on `listener` until `cancel`, with the shared server's bounds.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>, cancel: CancellationToken) {
    let (limits, connections) = (relay.limits.clone(), relay.connections.clone());
    serve::accept(listener, &limits, connections, cancel, move |conn| {
        let relay = relay.clone();
        async move { relay.serve_connection(conn.tcp, &conn.ctx).await }
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
        .layer(axum::middleware::map_response(one_request_per_connection))
}

/// Every answer closes its connection. A client refreshes once per token life, so a
/// kept-alive connection would only wait idle until our server's deadline closes it, and
/// a client that reuses it just then (its refresh cadence near that deadline: 20 s
/// tokens refresh every 10 s) gets a reset instead of its token. A new connection per
/// refresh costs a loopback handshake.
async fn one_request_per_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
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

/// Why a token request's body was not read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    TimedOut,
    TooLarge,
    Broken,
}

/// Reads a token request's form within `limit`, at most [`MAX_FORM`] bytes.
async fn read_form(body: Body, limit: Duration) -> Result<HashMap<String, String>, Unread> {
    let read = async {
        let mut buf = Vec::new();
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Unread::Broken)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_FORM {
                    return Err(Unread::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(url::form_urlencoded::parse(&buf).into_owned().collect())
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(Unread::TimedOut))
}

async fn token(State(relay): State<Arc<Relay>>, headers: HeaderMap, body: Body) -> Response {
    // Read and check before taking a turn: an unfinished or refused request never waits
    // for the spacing, nor holds it.
    let form = match read_form(body, relay.limits.request).await {
        Ok(form) => form,
        Err(why) => {
            if why == Unread::TimedOut {
                relay.connections.body_timed_out();
            }
            let (status, text) = match why {
                Unread::TimedOut => (
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ),
                Unread::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "the request is too large"),
                Unread::Broken => (StatusCode::BAD_REQUEST, "the request body is broken"),
            };
            note_refused(&relay, status, "invalid_request");
            let mut response = oauth_error(status, "invalid_request", text);
            // The connection may hold unread bytes: the server closes it after this.
            response
                .headers_mut()
                .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
            return response;
        }
    };
    if let Some((status, body)) = refusal(&form, &relay.prepared.key) {
        note_refused(&relay, status, body["error"].as_str().unwrap_or_default());
        return (status, Json(body)).into_response();
    }
    note_client(&relay, &headers);
    // One answer at a time, SPACING apart; the lock is held until this one is made.
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
    drop(last);
    if status.is_success() {
        relay.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("relay: refresh answered");
    } else {
        note_refused(&relay, status, body["error"].as_str().unwrap_or_default());
    }
    (status, Json(body)).into_response()
}

/// Counts a refused request; logs the first and then every hundredth, so that a flood
/// of junk (any local user can send it under `exec`) does not flood the log.
fn note_refused(relay: &Relay, status: StatusCode, error: &str) {
    let n = relay.refused.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 || n.is_multiple_of(100) {
        tracing::warn!(
            status = status.as_u16(),
            error,
            refused_total = n,
            "relay: request refused"
        );
    } else {
        tracing::debug!(status = status.as_u16(), error, "relay: request refused");
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

type Answer = (StatusCode, Value);

fn error(status: StatusCode, error: &str, description: &str) -> Answer {
    (
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// Why a token request is refused whatever token the relay holds (another grant, a
/// handle that is not ours), or `None`. Pure.
pub fn refusal(form: &HashMap<String, String>, key: &HandleKey) -> Option<Answer> {
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "polars-cloud-auth's pod-local token endpoint only refreshes the token it handed out; sign-ins go to the identity provider",
        ));
    }
    if !form.get("refresh_token").is_some_and(|h| key.verify(h)) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token was not issued by this pod's polars-cloud-auth",
        ));
    }
    None
}

/// The answer to one token request. Pure.
pub fn answer(
    form: &HashMap<String, String>,
    current: Option<&AccessToken>,
    key: &HandleKey,
    now: SystemTime,
) -> Answer {
    if let Some(refused) = refusal(form, key) {
        return refused;
    }
    let handle = form
        .get("refresh_token")
        .map(String::as_str)
        .unwrap_or_default();
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
