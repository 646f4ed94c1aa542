//! The broker's HTTP surface: `POST /token` (an OAuth token endpoint for one request
//! shape), `/healthz`, `/readyz` and `/metrics`. The decisions are [`Broker::grant`]'s;
//! this module only parses, logs and encodes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde_json::json;

use super::{Broker, Outcome, TOKEN_PATH};
use crate::serve::Shared;
use crate::serve::prom::{self, family};
use crate::source::BROKER_REFUSAL;

/// Token requests are small: a form with a service-account token.
const MAX_BODY: usize = 32 * 1024;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub shared: Shared,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The assertion of a `client_credentials` request authenticated with a JWT (RFC 7523
/// section 2.2), or what is wrong with the request.
pub fn parse(body: &[u8]) -> Result<String, (&'static str, String)> {
    let mut grant = None;
    let mut kind = None;
    let mut assertion = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "grant_type" => grant = Some(v.into_owned()),
            "client_assertion_type" => kind = Some(v.into_owned()),
            "client_assertion" => assertion = Some(v.into_owned()),
            _ => {}
        }
    }
    match grant.as_deref() {
        Some("client_credentials") => {}
        other => {
            return Err((
                "unsupported_grant_type",
                format!(
                    "the broker answers grant_type=client_credentials only, not {}",
                    other.map_or("a request without one".to_string(), |g| format!("'{g}'"))
                ),
            ));
        }
    }
    if kind.as_deref() != Some(JWT_BEARER) {
        return Err((
            "invalid_client",
            format!(
                "authenticate with client_assertion_type={JWT_BEARER} and the pod's projected service-account token (--client-assertion-file)"
            ),
        ));
    }
    match assertion {
        Some(a) if !a.trim().is_empty() => Ok(a.trim().to_string()),
        _ => Err((
            "invalid_client",
            "the client_assertion is empty: the projected service-account token file was empty or unread".into(),
        )),
    }
}

async fn token(State(state): State<AppState>, body: Bytes) -> Response {
    let broker = &state.broker;
    let outcome = match parse(&body) {
        Ok(assertion) => broker.grant(&assertion).await,
        Err((error, description)) => broker.invalid_request(error, description),
    };
    match outcome {
        Outcome::Granted {
            who,
            credential,
            token,
        } => {
            let expires_in = token.remaining(SystemTime::now()).as_secs();
            tracing::info!(
                namespace = %who.namespace,
                service_account = %who.service_account,
                pod = %who.pod,
                credential = %credential,
                expires_in,
                "token granted"
            );
            let body = json!({
                "access_token": token.secret().expose_secret(),
                "token_type": "Bearer",
                "expires_in": expires_in,
            });
            (
                StatusCode::OK,
                [(CACHE_CONTROL, "no-store")],
                axum::Json(body),
            )
                .into_response()
        }
        Outcome::Refused {
            status,
            error,
            description,
            who,
        } => {
            match &who {
                Some(w) => tracing::warn!(
                    namespace = %w.namespace,
                    service_account = %w.service_account,
                    pod = %w.pod,
                    error,
                    reason = %description,
                    "token refused"
                ),
                None => tracing::warn!(error, reason = %description, "token refused"),
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (
                status,
                [(CACHE_CONTROL, "no-store")],
                axum::Json(json!({
                    "error": error,
                    "error_description": format!("{BROKER_REFUSAL}{description}"),
                })),
            )
                .into_response()
        }
        Outcome::Unavailable { description } => {
            tracing::warn!(reason = %description, "token request not answered now");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (CACHE_CONTROL, "no-store"),
                    (axum::http::header::RETRY_AFTER, "1"),
                ],
                axum::Json(json!({
                    "error": "temporarily_unavailable",
                    "error_description": format!("{BROKER_REFUSAL}{description}"),
                })),
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    state.shared.readyz()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let b = &state.broker;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    let mut out = String::with_capacity(2048);
    let c = &b.counts;
    family(
        &mut out,
        "broker_requests_total",
        "counter",
        "Token requests by result.",
        &[
            ("{result=\"granted\"}", n(&c.granted)),
            ("{result=\"invalid_request\"}", n(&c.invalid_request)),
            ("{result=\"unauthenticated\"}", n(&c.unauthenticated)),
            ("{result=\"not_granted\"}", n(&c.not_granted)),
            ("{result=\"unavailable\"}", n(&c.unavailable)),
        ],
    );
    let r = b.reviewer();
    family(
        &mut out,
        "broker_token_reviews_total",
        "counter",
        "TokenReviews sent to the API server, by result, and answers from the cache.",
        &[
            ("{result=\"authenticated\"}", n(&r.accepted)),
            ("{result=\"refused\"}", n(&r.refused)),
            ("{result=\"failed\"}", n(&r.failed)),
            ("{result=\"cached\"}", n(&r.hits)),
        ],
    );
    family(
        &mut out,
        "broker_token_signatures_total",
        "counter",
        "Signature checks of tokens not in the cache, by result: forged tokens are refused without a review; unchecked ones went to review while the cluster's keys could not be fetched.",
        &[
            ("{result=\"valid\"}", n(&r.signed)),
            ("{result=\"forged\"}", n(&r.forged)),
            ("{result=\"unchecked\"}", n(&r.unchecked)),
        ],
    );
    family(
        &mut out,
        "broker_token_reviews_throttled_total",
        "counter",
        "Reviews not sent because one service account asked for too many at once.",
        &[("", n(&r.throttled))],
    );
    family(
        &mut out,
        "broker_token_reviews_cached",
        "gauge",
        "Reviews held in the cache (about one per pod).",
        &[("", r.cached().to_string())],
    );
    family(
        &mut out,
        "broker_policy_reloads_total",
        "counter",
        "Policy file reloads by result.",
        &[
            ("{result=\"ok\"}", n(&c.policy_reloads)),
            ("{result=\"failed\"}", n(&c.policy_reload_failures)),
        ],
    );
    let keepers = b.keepers();
    let now = SystemTime::now();
    let mut fetched = Vec::new();
    let mut expiry = Vec::new();
    for (name, k) in &keepers {
        let l = prom::label(name);
        fetched.push((
            format!("{{credential=\"{l}\",result=\"ok\"}}"),
            n(&k.counts.fetched),
        ));
        fetched.push((
            format!("{{credential=\"{l}\",result=\"transient\"}}"),
            n(&k.counts.transient),
        ));
        fetched.push((
            format!("{{credential=\"{l}\",result=\"rejected\"}}"),
            n(&k.counts.rejected),
        ));
        let left = k
            .expires_at()
            .map_or("NaN".to_string(), |at| match at.duration_since(now) {
                Ok(d) => d.as_secs().to_string(),
                Err(e) => format!("-{}", e.duration().as_secs()),
            });
        expiry.push((format!("{{credential=\"{l}\"}}"), left));
    }
    let fetched: Vec<(&str, String)> = fetched
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    family(
        &mut out,
        "broker_idp_requests_total",
        "counter",
        "Token requests to the identity provider, by credential and result.",
        &fetched,
    );
    let expiry: Vec<(&str, String)> = expiry
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    family(
        &mut out,
        "broker_token_expiry_seconds",
        "gauge",
        "Seconds until each credential's current token expires.",
        &expiry,
    );
    state.shared.render(&mut out);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_assertion_requests_are_parsed() {
        let ok = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion=a.b.c%0A",
            url::form_urlencoded::byte_serialize(JWT_BEARER.as_bytes()).collect::<String>()
        );
        assert_eq!(parse(ok.as_bytes()), Ok("a.b.c".to_string()));
        let (e, d) = parse(b"grant_type=password&username=x").unwrap_err();
        assert_eq!(e, "unsupported_grant_type");
        assert!(d.contains("'password'"), "{d}");
        let (e, d) = parse(b"grant_type=client_credentials&client_secret=s").unwrap_err();
        assert_eq!(e, "invalid_client");
        assert!(d.contains("--client-assertion-file"), "{d}");
        assert!(!d.contains('s') || !d.contains("=s"));
        let empty = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion=",
            url::form_urlencoded::byte_serialize(JWT_BEARER.as_bytes()).collect::<String>()
        );
        assert!(parse(empty.as_bytes()).unwrap_err().1.contains("empty"));
        assert!(parse(&[0xff, 0xfe, b'=', b'&']).is_err());
    }
}
