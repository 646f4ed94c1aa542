//! The HTTPS server the webhook and the broker share: TLS with a certificate re-read when
//! its files change, HTTP/1 or HTTP/2 by ALPN, and bounds against slow, stalled and too
//! many clients, so memory stays bounded and `/healthz` keeps answering whatever the
//! clients do.
//!
//! Shutdown: the first signal cancels `draining` (the caller's `/readyz` then fails) and
//! keeps serving for the drain delay, so that clients stop sending before the port
//! closes; then no new connections are accepted and open ones finish their requests.

pub mod prom;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use tls::ReloadingCert;

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
/// Open connections and what became of the ones over the limit, for `/metrics`.
pub struct Connections {
    /// The metric names' middle part: `webhook`, `broker`.
    pub prefix: &'static str,
    open: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    timed_out_bodies: AtomicU64,
}

impl Connections {
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            open: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            timed_out_bodies: AtomicU64::new(0),
        }
    }

    /// Counts a request whose body did not arrive within [`Limits::request`].
    pub fn body_timed_out(&self) {
        self.timed_out_bodies.fetch_add(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: u64| {
            let name = format!("{}_{name}", self.prefix);
            crate::serve::prom::family(out, &name, kind, help, &[("", value.to_string())]);
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

/// Where and how to serve.
pub struct Config {
    pub listen: SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// How long to keep serving after the first signal, with `/readyz` failing.
    pub drain: Duration,
    pub limits: Limits,
}

/// Loads the certificate named by `config` (checked now, re-read when it changes).
pub fn load_cert(config: &Config) -> Result<Arc<ReloadingCert>, crate::serve::tls::Error> {
    ReloadingCert::load(&config.cert, &config.key, crate::serve::tls::provider()).map(Arc::new)
}

/// Connections still open this long after the drain are dropped.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// What one server shares with its handlers: the connection counters, the drain signal
/// that `/readyz` follows, and the certificate it serves (for `/metrics`).
#[derive(Clone)]
pub struct Shared {
    pub connections: Arc<Connections>,
    /// Cancelled when shutdown starts.
    pub draining: CancellationToken,
    /// Set by [`serve`].
    cert: Arc<std::sync::OnceLock<Arc<ReloadingCert>>>,
}

impl Shared {
    /// `/readyz`: ready until shutdown starts.
    pub fn readyz(&self) -> (axum::http::StatusCode, &'static str) {
        if self.draining.is_cancelled() {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting down\n",
            )
        } else {
            (axum::http::StatusCode::OK, "ready\n")
        }
    }

    pub fn new(prefix: &'static str) -> Self {
        Self {
            connections: Arc::new(Connections::new(prefix)),
            draining: CancellationToken::new(),
            cert: Arc::default(),
        }
    }

    /// The server's part of `/metrics`: its connections, and when its certificate expires
    /// (the leaf in use now, re-read first if its files changed).
    pub fn render(&self, out: &mut String) {
        self.connections.render(out);
        if let Some(not_after) = self.cert.get().and_then(|c| c.not_after()) {
            crate::serve::prom::family(
                out,
                &format!(
                    "{}_certificate_expiry_timestamp_seconds",
                    self.connections.prefix
                ),
                "gauge",
                "When the serving certificate in use expires (its notAfter), in Unix seconds.",
                &[("", not_after.to_string())],
            );
        }
    }
}

/// Serves `app` over TLS on the bound `listener` until `cancel` and the drain after it.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    app: Router,
    config: &Config,
    shared: &Shared,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let _ = shared.cert.set(cert.clone());
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::serve::tls::provider())
        .with_safe_default_protocol_versions()
        .context("failed to set up TLS")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let drain_for = config.drain;
    let stop_accepting = CancellationToken::new();
    let drain = {
        let (cancel, stop, draining) = (
            cancel.clone(),
            stop_accepting.clone(),
            shared.draining.clone(),
        );
        async move {
            cancel.cancelled().await;
            draining.cancel();
            tracing::info!(
                drain_ms = drain_for.as_millis() as u64,
                "draining: /readyz fails, still serving"
            );
            tokio::time::sleep(drain_for).await;
            stop.cancel();
        }
    };
    let drainer = tokio::spawn(drain);
    accept(
        listener,
        &config.limits,
        shared.connections.clone(),
        stop_accepting,
        move |conn| {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            async move {
                if let Err(e) = serve_tls(conn.tcp, &acceptor, app, &conn.ctx).await {
                    tracing::debug!(peer = %conn.ctx.peer, error = %e, "TLS handshake failed");
                }
            }
        },
    )
    .await;
    drainer.abort();
    Ok(())
}

/// One accepted connection, on the limits it was let in on.
pub struct Accepted {
    pub tcp: tokio::net::TcpStream,
    pub ctx: ConnContext,
}

/// What serving one connection needs besides its stream.
pub struct ConnContext {
    pub peer: SocketAddr,
    /// The connection's limits: [`Limits`] as configured, or [`TIGHT`] ones for a
    /// connection let in beyond the limit.
    pub limits: Limits,
    /// Cancelled when the server stops: open connections finish their requests.
    pub closing: CancellationToken,
    pub connections: Arc<Connections>,
}

/// Accepts on `listener` until `stop`, with the bounds of [`Limits`]: at most
/// [`Limits::connections`] open, a few more on tight limits, the rest closed at once
/// before anything is spent on them, so that accepting never runs out of descriptors.
/// Each connection goes to `serve` on a task of its own. After `stop`, open connections
/// get [`CLOSE_LIMIT`] to finish.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    limits: &Limits,
    connections: Arc<Connections>,
    stop: CancellationToken,
    serve: F,
) where
    F: Fn(Accepted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
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
            _ = stop.cancelled() => break,
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
                    connections.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "connection limit reached, closing a new connection");
                    drop(tcp);
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ConnContext {
            peer,
            limits: if tight {
                tight_limits.clone()
            } else {
                limits.clone()
            },
            closing: closing.clone(),
            connections: connections.clone(),
        };
        let connections = connections.clone();
        let served = serve(Accepted { tcp, ctx });
        tokio::spawn(async move {
            connections.open.fetch_add(1, Ordering::Relaxed);
            served.await;
            connections.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
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
}

/// One client connection: TLS within [`Limits::handshake`], then HTTP/1 or HTTP/2 (by
/// ALPN, as the acceptor offers them) until the client leaves, the connection idles past
/// [`Limits::idle`], a response says `connection: close`, or shutdown; a graceful close
/// that does not finish within [`Limits::grace`] is cut. A failed or timed-out handshake
/// is the error (the caller decides how much it matters).
pub async fn serve_tls<IO>(
    io: IO,
    acceptor: &TlsAcceptor,
    app: Router,
    ctx: &ConnContext,
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let stream = match tokio::time::timeout(ctx.limits.handshake, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(stream, h2, app, ctx, &activity).await;
    Ok(())
}

async fn serve_http<IO>(io: IO, h2: bool, app: Router, ctx: &ConnContext, activity: &Activity)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, limits) = (ctx.peer, &ctx.limits);
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
    // A handler answers `connection: close` when the connection holds bytes it will not
    // read (a body that did not arrive in time, one too large): hyper would otherwise wait
    // for that body's rest to discard it, and the client keeps the connection for as
    // long as it sends nothing more. Close it once the answer is out.
    let close = CancellationToken::new();
    let app = {
        let close = close.clone();
        app.layer(axum::middleware::map_response(
            move |response: axum::response::Response| {
                let close = close.clone();
                async move {
                    if closes(response.headers()) {
                        close.cancel();
                    }
                    response
                }
            },
        ))
    };
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
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
                ctx.connections.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection idle, closing it");
                conn.as_mut().graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + limits.grace);
            }
            _ = close.cancelled(), if cut_at.is_none() => {
                tracing::debug!(%peer, "answered with connection: close, closing it");
                conn.as_mut().graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + limits.grace);
            }
            _ = ctx.closing.cancelled(), if cut_at.is_none() => {
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

/// Whether a response asks for its connection to be closed.
fn closes(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
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

#[cfg(test)]
mod tests {
    /// The exact text served before `prom` wrote it, so dashboards keep working.
    #[test]
    fn connection_counters_render_as_before() {
        let c = super::Connections::new("broker");
        c.body_timed_out();
        let mut out = String::new();
        c.render(&mut out);
        let p = "polars_cloud_auth_broker";
        assert_eq!(
            out,
            format!(
                "# HELP {p}_connections Open client connections.\n# TYPE {p}_connections gauge\n{p}_connections 0\n\
                 # HELP {p}_connections_refused_total Connections closed at once because the limit of open ones was reached.\n# TYPE {p}_connections_refused_total counter\n{p}_connections_refused_total 0\n\
                 # HELP {p}_connections_idle_closed_total Connections closed after moving no byte for the idle limit.\n# TYPE {p}_connections_idle_closed_total counter\n{p}_connections_idle_closed_total 0\n\
                 # HELP {p}_request_body_timeouts_total Requests whose body did not arrive in time.\n# TYPE {p}_request_body_timeouts_total counter\n{p}_request_body_timeouts_total 1\n"
            )
        );
    }
}
