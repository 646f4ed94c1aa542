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

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// Bounds against slow, stalled and too many clients, so that memory stays bounded and
/// `/healthz` keeps answering whatever the clients do (with `failurePolicy: Fail`, a
/// stuck webhook stops pod creation). Documented in docs/kubernetes.md.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake: Duration,
    /// A connection on which no byte moved either way for this long is closed: silent
    /// after the handshake, idle between requests (HTTP/1 keep-alive, HTTP/2), or
    /// stalled in the middle of a body. HTTP/2 clients get a GOAWAY first.
    pub idle: Duration,
    /// HTTP/1 request headers, and then the body, must each arrive within this.
    pub request: Duration,
    /// After a graceful close for idleness a connection gets this long to finish.
    pub grace: Duration,
    /// Open connections at most; more are closed at once, before TLS. Below the usual
    /// 1,024-descriptor limit, so that accepting never fails for lack of one.
    pub connections: usize,
    /// Request bodies held in memory at once, in bytes, over all connections. A review
    /// waits (not reading, so the kernel holds the rest) until there is room.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(20),
            request: Duration::from_secs(10),
            grace: Duration::from_secs(2),
            connections: 256,
            body_budget: 12 * 1024 * 1024,
        }
    }
}

/// A body over the limit is read and thrown away up to this much, so the client gets its
/// 413 instead of a reset connection; beyond it the connection is closed.
const DRAIN: usize = 32 * 1024 * 1024;
/// HTTP/2 flow-control windows (per stream and per connection): what one connection can
/// make us buffer before we read it. The protocol's default, not hyper's 1 MiB.
const H2_WINDOW: u32 = 64 * 1024;
/// HTTP/2 streams per connection.
const H2_STREAMS: u32 = 32;
/// HTTP/1 read buffer per connection, at most (hyper's default is about 400 KiB).
const H1_BUFFER: usize = 64 * 1024;
/// Connections let in beyond the limit, on [`TIGHT`] limits.
const OVERFLOW: usize = 32;
/// Every phase limit of an overflow connection: enough for a probe, not for a squatter.
const TIGHT: Duration = Duration::from_secs(1);
/// Reviews larger than this go to the [`LargeLane`]; usual ones (a few KiB) are decided
/// on the worker that read them.
const LARGE_REVIEW: usize = 256 * 1024;

/// The budget of request-body bytes, in KiB permits.
const BUDGET_UNIT: usize = 1024;

/// Open connections and what became of the ones over the limit, for `/metrics`.
#[derive(Default)]
pub struct Connections {
    open: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    timed_out_bodies: AtomicU64,
}

impl Connections {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut family = |name: &str, kind: &str, help: &str, value: u64| {
            let name = format!("polars_cloud_auth_webhook_{name}");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        family(
            "connections",
            "gauge",
            "Open client connections.",
            self.open(),
        );
        family(
            "connections_refused_total",
            "counter",
            "Connections closed at once because the limit of open ones was reached.",
            self.refused.load(Ordering::Relaxed),
        );
        family(
            "connections_idle_closed_total",
            "counter",
            "Connections closed after moving no byte for the idle limit.",
            self.idle_closed.load(Ordering::Relaxed),
        );
        family(
            "request_body_timeouts_total",
            "counter",
            "Requests whose body did not arrive in time.",
            self.timed_out_bodies.load(Ordering::Relaxed),
        );
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// Cancelled when shutdown starts: `/readyz` then fails.
    draining: CancellationToken,
    cert: Option<Arc<ReloadingCert>>,
    connections: Arc<Connections>,
    /// Permits of [`BUDGET_UNIT`] bytes for request bodies in memory.
    bodies: Arc<Semaphore>,
    large: Arc<LargeLane>,
    limits: Arc<Limits>,
}

impl AppState {
    pub fn new(settings: Settings) -> Self {
        Self::with_limits(settings, Limits::default())
    }

    pub fn with_limits(settings: Settings, limits: Limits) -> Self {
        Self {
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::default()),
            draining: CancellationToken::new(),
            cert: None,
            connections: Arc::new(Connections::default()),
            bodies: Arc::new(Semaphore::new((limits.body_budget / BUDGET_UNIT).max(1))),
            large: Arc::new(LargeLane::start()),
            limits: Arc::new(limits),
        }
    }

    pub fn connections(&self) -> &Connections {
        &self.connections
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
            state
                .connections
                .timed_out_bodies
                .fetch_add(1, Ordering::Relaxed);
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
struct LargeLane {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl LargeLane {
    fn start() -> Self {
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
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    state.metrics.render(&mut out);
    state.connections.render(&mut out);
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
        limits: {
            let d = Limits::default();
            Limits {
                idle: serve.idle_timeout.map_or(d.idle, |t| t.0),
                request: serve.request_timeout.map_or(d.request, |t| t.0),
                connections: serve.max_connections.map_or(d.connections, |n| n.get()),
                ..d
            }
        },
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
    pub limits: Limits,
}

/// Connections still open this long after the drain are dropped.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

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
    let limits = config.limits.clone();
    let state = AppState::with_limits(settings, config.limits).with_cert(cert);
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

    let slots = Arc::new(Semaphore::new(limits.connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    let tight_limits = Limits {
        handshake: TIGHT,
        idle: TIGHT,
        request: TIGHT,
        grace: TIGHT,
        ..limits.clone()
    };
    let closing = CancellationToken::new();
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
        // At the limit, a few more are let in on tight limits: a probe (handshake, one
        // quick request) gets through while a flood of silent clients holds the rest.
        // Beyond those: close at once, before spending a handshake on it.
        let (slot, tight) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(slot) => (slot, true),
                Err(_) => {
                    state.connections.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "connection limit reached, closing a new connection");
                    drop(tcp);
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, closing, state) = (
            acceptor.clone(),
            app.clone(),
            closing.clone(),
            state.clone(),
        );
        let limits = if tight {
            tight_limits.clone()
        } else {
            limits.clone()
        };
        tokio::spawn(async move {
            state.connections.open.fetch_add(1, Ordering::Relaxed);
            serve_one(tcp, peer, acceptor, app, &closing, &state, &limits).await;
            state.connections.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    drainer.abort();
    closing.cancel();
    let all = u32::try_from(limits.connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = async {
            let _all = slots.acquire_many(all).await;
            let _extra = overflow.acquire_many(OVERFLOW as u32).await;
        } => {}
        _ = tokio::time::sleep(CLOSE_LIMIT) => {
            tracing::warn!("connections still open after {}s; closing them", CLOSE_LIMIT.as_secs());
        }
    }
    tracing::info!("webhook stopped");
    Ok(())
}

/// One client connection: TLS within [`Limits::handshake`], then HTTP/1 or HTTP/2 (by
/// ALPN) until the client leaves, the connection idles past [`Limits::idle`], or
/// shutdown; a graceful close that does not finish within [`Limits::grace`] is cut.
async fn serve_one(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    closing: &CancellationToken,
    state: &AppState,
    limits: &Limits,
) {
    let connections = &state.connections;
    let activity = Activity::new();
    let tcp = Watched {
        inner: tcp,
        activity: activity.clone(),
    };
    let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
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
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request)
        .max_buf_size(H1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_STREAMS);
    // ALPN decided the protocol: without it, the auto builder would wait, unbounded, for
    // the first bytes to guess.
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let mut cut_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = activity.idle_for(limits.idle), if cut_at.is_none() => {
                connections.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection idle, closing it");
                conn.as_mut().graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + limits.grace);
            }
            _ = closing.cancelled(), if cut_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + CLOSE_LIMIT);
            }
            _ = sleep_until(cut_at), if cut_at.is_some() => {
                tracing::debug!(%peer, "connection did not close in time, dropping it");
                return;
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a connection last moved a byte, in milliseconds since it was opened.
#[derive(Clone)]
struct Activity {
    opened: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let at = last + limit;
            if tokio::time::Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

/// A stream that records when bytes last moved through it.
struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
