//! The HTTP handlers: `/mutate` reads the body within its limits and budget and has
//! [`admission`](super::admission) decide, `/readyz` follows the drain, `/metrics` renders
//! the counters.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;

use super::admission::{self, Verdict};
use super::{AppState, BUDGET_UNIT, DRAIN, LARGE_REVIEW, MAX_BODY, metrics};
use crate::inject::Settings;
use crate::serve::Limits;

/// The HTTP surface, apart from TLS and the listener so tests can drive it.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Why a request body was not read.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    TimedOut,
    Busy,
    Read(String),
}

impl BodyError {
    fn into_response(self, limits: &Limits) -> Response {
        let (status, message) = match self {
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the AdmissionReview is larger than {MAX_BODY} bytes\n"),
            ),
            Self::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s\n",
                    limits.request.as_secs()
                ),
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many reviews are being received at once; retry\n".to_string(),
            ),
            Self::Read(e) => (
                StatusCode::BAD_REQUEST,
                format!("failed to read the request body: {e}\n"),
            ),
        };
        // The connection may hold unread bytes: do not reuse it.
        (status, [(CONNECTION, "close")], message).into_response()
    }
}

/// Reads a request body into one buffer sized from `Content-Length` (no regrowth and
/// copies), within [`Limits::request`], holding budget permits for its size for as long as
/// the bytes live. A body over [`MAX_BODY`] is read on and dropped, up to [`DRAIN`], so that the client can read its 413 instead of a reset.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let deadline = tokio::time::Instant::now() + state.limits.request;
    if declared.is_some_and(|n| n > MAX_BODY) {
        return match tokio::time::timeout_at(deadline, drain(body, DRAIN)).await {
            Ok(_) => Err(BodyError::TooLarge),
            Err(_) => Err(BodyError::TimedOut),
        };
    }
    let reserve = declared.unwrap_or(MAX_BODY);
    let units = u32::try_from(reserve.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
    let permit =
        match tokio::time::timeout_at(deadline, state.bodies.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return Err(BodyError::Busy),
        };
    let read = async {
        let mut buf = bytes::BytesMut::with_capacity(reserve);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > reserve.min(MAX_BODY) {
                // Longer than declared or than the limit: throw the rest away.
                drop(buf);
                drain(body, DRAIN).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(bytes)) => Ok((bytes, permit)),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            state.shared.connections.body_timed_out();
            Err(BodyError::TimedOut)
        }
    }
}

/// The review decided and its answer encoded: the CPU- and memory-heavy part.
type Decided = Result<(admission::Reviewed, serde_json::Result<Vec<u8>>), admission::ReviewError>;

fn decide(body: &[u8], settings: &Settings) -> Decided {
    let reviewed = admission::review(body, settings)?;
    let encoded = admission::encode(&reviewed.response);
    Ok((reviewed, encoded))
}

/// Large reviews are decided one at a time on one thread of their own. Decoding a pod
/// takes several times its JSON's size, and the allocator keeps a heap per thread that
/// allocated in it: 2.8 MiB many-container reviews on every worker thread left each
/// thread's heap at its high-water mark. Here only one heap grows, once.
pub(super) struct LargeLane {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl LargeLane {
    pub(super) fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        // Ends when the last sender (the last AppState) is dropped.
        let spawned = std::thread::Builder::new()
            .name("large-reviews".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the large-review thread; deciding them inline");
        }
        Self {
            jobs: std::sync::Mutex::new(tx),
        }
    }

    async fn decide(&self, body: Bytes, settings: Arc<Settings>) -> Decided {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fallback = (body.clone(), settings.clone());
        let job = Box::new(move || {
            let _ = tx.send(decide(&body, &settings));
        });
        let sent = self
            .jobs
            .lock()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        match rx.await {
            Ok(decided) if sent => decided,
            _ => decide(&fallback.0, &fallback.1),
        }
    }
}

/// Reads and drops up to `limit` bytes of `body`.
async fn drain(mut body: Body, limit: usize) {
    let mut seen = 0usize;
    while seen <= limit {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

async fn mutate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let (body, _permit) = match read_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(e) => {
            state.metrics.observe(Verdict::Invalid, started.elapsed());
            tracing::warn!(problem = ?e, "unreadable review");
            return e.into_response(&state.limits);
        }
    };
    let decided = if body.len() > LARGE_REVIEW {
        state.large.decide(body, state.settings.clone()).await
    } else {
        decide(&body, &state.settings)
    };
    match decided {
        Ok((reviewed, encoded)) => {
            let response = match encoded {
                Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => {
                    tracing::error!(error = %e, "failed to encode the AdmissionReview");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            };
            state.metrics.observe(reviewed.verdict, started.elapsed());
            match reviewed.verdict {
                Verdict::Injected => tracing::info!(
                    pod = %reviewed.object,
                    mode = reviewed.mode.map(|m| m.as_str()),
                    "pod injected"
                ),
                Verdict::Denied => tracing::warn!(
                    pod = %reviewed.object,
                    reason = reviewed.denial.as_deref(),
                    "pod denied"
                ),
                v => {
                    tracing::debug!(pod = %reviewed.object, result = v.as_str(), "review answered")
                }
            }
            response
        }
        Err(e) => {
            state.metrics.observe(Verdict::Invalid, started.elapsed());
            tracing::warn!(error = %e, "invalid review");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    state.shared.readyz()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    state.metrics.render(&mut out);
    state.shared.render(&mut out);
    if let Some(cert) = &state.cert {
        metrics::render_reloads(&mut out, cert.counts());
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
