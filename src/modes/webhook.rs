//! `webhook`: the mutating admission webhook over HTTPS. `/mutate` answers AdmissionReview
//! v1 through [`admission`](crate::admission); `/healthz`, `/readyz` and `/metrics` share
//! the port. The certificate is re-read when its files change ([`ReloadingCert`]).
//!
//! Shutdown: the first signal makes `/readyz` fail and keeps serving for the drain delay,
//! so the API server stops sending reviews before the port closes; then no new
//! connections are accepted and open ones finish their requests. A second signal aborts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Metrics, Verdict};
use crate::cli::WebhookCmdArgs;
use crate::config::{ConfigFile, overlay};
use crate::inject::Settings;
use crate::tls::ReloadingCert;

/// The largest AdmissionReview accepted. The API server stores objects of at most
/// 1.5 MiB, and a review holds the object (twice for updates) plus a little.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// Cancelled when shutdown starts: `/readyz` then fails.
    draining: CancellationToken,
    cert: Option<Arc<ReloadingCert>>,
}

impl AppState {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::default()),
            draining: CancellationToken::new(),
            cert: None,
        }
    }

    fn with_cert(mut self, cert: Arc<ReloadingCert>) -> Self {
        self.cert = Some(cert);
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes `/readyz` fail from now on.
    pub fn drain(&self) {
        self.draining.cancel();
    }
}

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

async fn mutate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            state.metrics.observe(Verdict::Invalid, started.elapsed());
            let status = e.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the AdmissionReview is larger than {MAX_BODY} bytes\n")
            } else {
                format!("failed to read the request body: {e}\n")
            };
            tracing::warn!(status = status.as_u16(), "unreadable review");
            return (status, message).into_response();
        }
    };
    match admission::review(&body, &state.settings) {
        Ok(reviewed) => {
            let response = match admission::encode(&reviewed.response) {
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
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    state.metrics.render(&mut out);
    if let Some(cert) = &state.cert {
        use std::fmt::Write as _;
        let (ok, failed) = cert.counts();
        let name = "polars_cloud_auth_webhook_certificate_reloads_total";
        let _ = writeln!(
            out,
            "# HELP {name} Certificate reloads after the files changed, by result."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name}{{result=\"ok\"}} {ok}");
        let _ = writeln!(out, "{name}{{result=\"failed\"}} {failed}");
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// `polars-cloud-auth webhook`: the settings from flags, environment and config file, then
/// [`run`] until a signal.
pub fn command(args: WebhookCmdArgs, file: &ConfigFile) -> anyhow::Result<u8> {
    let settings = overlay(&args.inject, &file.inject)?.settings()?;
    let serve = overlay(&args.serve, &file.webhook)?;
    let (listen, cert, key) = serve.resolve()?;
    let config = Config {
        listen,
        cert,
        key,
        drain: serve.shutdown_delay.map_or(Duration::from_secs(5), |d| d.0),
    };
    // Reviews come in parallel from every API server replica: use the cores.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let cancel = crate::shutdown::on_signals();
            run(config, settings, cancel).await
        })?;
    Ok(crate::exit::OK)
}

/// The server's settings besides the injection settings.
pub struct Config {
    pub listen: SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// How long to keep serving after the first signal, with `/readyz` failing.
    pub drain: Duration,
}

/// Connections still open this long after the drain are dropped.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

pub async fn run(
    config: Config,
    settings: Settings,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = Arc::new(
        ReloadingCert::load(&config.cert, &config.key, provider.clone())
            .context("failed to load the webhook's TLS certificate")?,
    );
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let state = AppState::new(settings).with_cert(cert);
    let app = router(state.clone());
    tracing::info!(
        listen = %listener.local_addr()?,
        mode = state.settings.mode.as_str(),
        image = %state.settings.image,
        "webhook started"
    );

    let stop_accepting = CancellationToken::new();
    let drain = {
        let (cancel, stop, state) = (cancel.clone(), stop_accepting.clone(), state.clone());
        async move {
            cancel.cancelled().await;
            state.drain();
            tracing::info!(
                drain_ms = config.drain.as_millis() as u64,
                "draining: /readyz fails, still serving"
            );
            tokio::time::sleep(config.drain).await;
            stop.cancel();
        }
    };
    let drainer = tokio::spawn(drain);

    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // With a timer, hyper drops a client that sends headers too slowly (30s).
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drainer.abort();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(CLOSE_LIMIT) => {
            tracing::warn!("connections still open after {}s; closing them", CLOSE_LIMIT.as_secs());
        }
    }
    tracing::info!("webhook stopped");
    Ok(())
}
