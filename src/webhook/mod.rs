//! The mutating admission webhook over HTTPS, in the shape of kubewarden policy-server's
//! `api/`: [`admission`] decides, [`handlers`] serve, [`metrics`] count; the HTTPS
//! server is the shared [`crate::serve`]. `/mutate` answers AdmissionReview
//! v1 through [`admission`]; `/healthz`, `/readyz` and `/metrics` share
//! the port. The certificate is re-read when its files change ([`ReloadingCert`]).
//!
//! Shutdown: the first signal makes `/readyz` fail and keeps serving for the drain delay,
//! so the API server stops sending reviews before the port closes; then no new
//! connections are accepted and open ones finish their requests. A second signal aborts.

pub mod admission;
mod handlers;
pub mod metrics;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::inject::Settings;
use crate::serve::tls::ReloadingCert;
use crate::serve::{self, Connections, Limits, Shared};
use handlers::LargeLane;
pub use handlers::router;
use metrics::Metrics;

/// The largest AdmissionReview accepted. The API server stores objects of at most
/// 1.5 MiB, and a review holds the object (twice for updates) plus a little.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A body over the limit is read and thrown away up to this much, so the client gets its
/// 413 instead of a reset connection; beyond it the connection is closed.
const DRAIN: usize = 32 * 1024 * 1024;
/// Reviews larger than this go to the [`LargeLane`]; usual ones (a few KiB) are decided
/// on the worker that read them.
const LARGE_REVIEW: usize = 256 * 1024;

/// The budget of request-body bytes, in KiB permits.
const BUDGET_UNIT: usize = 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// Connection counters and the drain signal `/readyz` follows.
    shared: Shared,
    cert: Option<Arc<ReloadingCert>>,
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
            shared: Shared::new("webhook"),
            cert: None,
            bodies: Arc::new(Semaphore::new((limits.body_budget / BUDGET_UNIT).max(1))),
            large: Arc::new(LargeLane::start()),
            limits: Arc::new(limits),
        }
    }

    pub fn connections(&self) -> &Connections {
        &self.shared.connections
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
        self.shared.draining.cancel();
    }
}

/// Serves the webhook until `cancel` and the drain after it.
pub async fn run(
    config: serve::Config,
    settings: Settings,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let cert = serve::load_cert(&config).context("failed to load the webhook's TLS certificate")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let state = AppState::with_limits(settings, config.limits.clone()).with_cert(cert.clone());
    let app = router(state.clone());
    tracing::info!(
        listen = %listener.local_addr()?,
        mode = state.settings.mode.as_str(),
        image = %state.settings.image,
        "webhook started"
    );
    serve::serve(listener, cert, app, &config, &state.shared, cancel).await?;
    tracing::info!("webhook stopped");
    Ok(())
}
