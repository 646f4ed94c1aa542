//! `sidecar`: keep the token file fresh until told to stop, and say how it is going on
//! `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::SidecarArgs;
use crate::relay::{self, endpoint, endpoint::Relay};
use crate::renew::{self, Policy};
use crate::renewal::{self, Renewer};
use crate::serve::prom::family as metric;
use crate::sink::TokenFile;
use crate::source::{FailureClass, FetchError, TokenSource};
use crate::token::AccessToken;

/// What the HTTP endpoints report; updated by the renewal loop.
#[derive(Default)]
pub struct Health {
    renewals: AtomicU64,
    transient_failures: AtomicU64,
    permanent_failures: AtomicU64,
    write_failures: AtomicU64,
    rejected: AtomicBool,
    expires_at: Mutex<Option<SystemTime>>,
    /// The life of the token on disk, for the readiness margin.
    lifetime: Mutex<Option<Duration>>,
    /// The relay, when the app's client refreshes through us (its counters).
    relay: std::sync::OnceLock<Arc<Relay>>,
}

impl Health {
    fn renewed(&self, token: &AccessToken) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.rejected.store(false, Ordering::Relaxed);
        if let Ok(mut at) = self.expires_at.lock() {
            *at = Some(token.expires_at());
        }
        if let Ok(mut life) = self.lifetime.lock() {
            *life = Some(token.lifetime());
        }
    }

    fn failed(&self, class: FailureClass) {
        match class {
            FailureClass::Transient => self.transient_failures.fetch_add(1, Ordering::Relaxed),
            FailureClass::Permanent => {
                self.rejected.store(true, Ordering::Relaxed);
                self.permanent_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn seconds_left(&self, now: SystemTime) -> Option<f64> {
        let at = (*self.expires_at.lock().ok()?)?;
        Some(match at.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }

    /// Ready: the token on disk is valid for at least `margin` (at most a tenth of its
    /// life, see [`renew::margin`]), and the last attempt was not a rejection of the
    /// credentials.
    pub fn ready(&self, now: SystemTime, margin: Option<Duration>) -> bool {
        let life = self.lifetime.lock().ok().and_then(|l| *l);
        let margin = renew::margin(margin, life.unwrap_or(renew::DEFAULT_MARGIN * 10));
        !self.rejected.load(Ordering::Relaxed)
            && self
                .seconds_left(now)
                .is_some_and(|s| s > margin.as_secs_f64())
    }

    /// Prometheus text exposition.
    pub fn metrics(&self, now: SystemTime, margin: Option<Duration>) -> String {
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed).to_string();
        let left = self
            .seconds_left(now)
            .map_or("NaN".to_string(), |s| format!("{s:.0}"));
        let mut out = String::with_capacity(1024);
        metric(
            &mut out,
            "renewals_total",
            "counter",
            "Tokens obtained and written.",
            &[("", count(&self.renewals))],
        );
        metric(
            &mut out,
            "failures_total",
            "counter",
            "Failed renewals by class.",
            &[
                ("{class=\"transient\"}", count(&self.transient_failures)),
                ("{class=\"permanent\"}", count(&self.permanent_failures)),
                ("{class=\"write\"}", count(&self.write_failures)),
            ],
        );
        metric(
            &mut out,
            "token_expiry_seconds",
            "gauge",
            "Seconds until the token on disk expires.",
            &[("", left)],
        );
        if let Some(relay) = self.relay.get() {
            metric(
                &mut out,
                "relay_requests_total",
                "counter",
                "Token requests of the app's clients at the relay, by result.",
                &[
                    ("{result=\"served\"}", count(&relay.served)),
                    ("{result=\"refused\"}", count(&relay.refused)),
                ],
            );
            let clients = relay.clients.metric_samples();
            let samples: Vec<(&str, String)> = clients
                .iter()
                .map(|(l, n)| (l.as_str(), n.clone()))
                .collect();
            metric(
                &mut out,
                "client_info",
                "gauge",
                "1 for each polars-cloud client version the relay has seen, with its behaviour family (docs/polars-cloud-client.md) and whether this mode serves it; version \"<=0.10\": a client refused the relay's CA. Clients older than 0.12 are served by the token files and show here only once they try to refresh.",
                &samples,
            );
            // Its connections: open, refused at the cap, closed idle, bodies timed out.
            relay.connections.render(&mut out);
        }
        let ready = u8::from(self.ready(now, margin)).to_string();
        metric(
            &mut out,
            "ready",
            "gauge",
            "Whether a valid token is on disk with margin.",
            &[("", ready)],
        );
        out
    }
}

/// The sidecar's settings besides the source.
pub struct Settings {
    pub file: TokenFile,
    pub policy: Policy,
    pub listen: SocketAddr,
    /// Given by flag or config; else derived from the token's life.
    pub ready_margin: Option<Duration>,
    /// The relay and its listener, when the app's client refreshes through us.
    pub relay: Option<(relay::Settings, SocketAddr)>,
}

/// `polars-cloud-auth sidecar`.
pub fn command(args: SidecarArgs) -> anyhow::Result<u8> {
    let (idp, renew, serve) = (args.idp, args.renew, args.serve);
    let source = Arc::new(idp.source()?);
    let token_file = args.file.pod_token_file();
    let relay_args = args.relay;
    let relay = relay_args
        .settings(&token_file)
        .map(|s| (s, relay_args.listen()));
    let mut policy = renew.policy();
    if relay.is_some() {
        policy.lead = relay::CLIENT_LEAD;
    }
    let settings = Settings {
        file: token_file,
        policy,
        relay,
        listen: serve
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8471))),
        ready_margin: serve.ready_margin.map(|d| d.0),
    };
    super::current_thread(async move {
        let cancel = crate::shutdown::on_signals();
        run(source, settings, cancel).await
    })?;
    Ok(crate::exit::OK)
}

pub async fn run(
    source: Arc<TokenSource>,
    settings: Settings,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", settings.listen))?;
    let (publish, current) = watch::channel(None);
    // The relay is up before the first token: its keys and bundle need none, and a pod
    // that cannot bind it should fail at once, not at the app's first refresh.
    let relay = match &settings.relay {
        Some((relay_settings, addr)) => {
            let prepared = Arc::new(
                relay::setup(relay_settings)
                    .context("failed to set up the relay for the app's client")?,
            );
            let relay_listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "failed to listen on {addr} for the relay: {e}; binding port 443 without privileges needs the pod sysctl net.ipv4.ip_unprivileged_port_start=443 (inject and the webhook set it)"
                )
            })?;
            tracing::info!(
                listen = %addr,
                host = %relay::auth_host(&relay_settings.domain),
                clients = relay_settings.client_configs.len(),
                "relay started"
            );
            let served = Relay::new(prepared.clone(), current);
            let _ = health.relay.set(served.clone());
            tokio::spawn(endpoint::serve(relay_listener, served, cancel.clone()));
            Some((relay_settings, prepared))
        }
        None => None,
    };
    let app = router(health.clone(), settings.ready_margin);
    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_cancel.cancelled_owned())
            .await
    });
    let sinks = Sinks { publish, relay };
    renew_loop(&source, &settings, &sinks, &health, &cancel).await;
    cancel.cancel();
    server.await??;
    tracing::info!("sidecar stopped");
    Ok(())
}

/// Renews until cancelled, with the one renewal driver. Failures never end the loop: a
/// transient one is retried with backoff, a rejection slowly (the Secret may be rotated);
/// the last good token stays on disk meanwhile. SIGHUP renews at once.
async fn renew_loop(
    source: &TokenSource,
    s: &Settings,
    sinks: &Sinks<'_>,
    health: &Health,
    cancel: &CancellationToken,
) {
    let mut ours = Ours {
        file: &s.file,
        sinks,
        health,
    };
    let hangup = Some(crate::shutdown::Hangup::new());
    renewal::run(source, &s.policy, None, &mut ours, hangup, cancel).await;
}

/// The sidecar's part of the renewal driver: the token file, the app's files and the
/// relay; the health and metrics counters; its log lines.
struct Ours<'a> {
    file: &'a TokenFile,
    sinks: &'a Sinks<'a>,
    health: &'a Health,
}

impl Renewer for Ours<'_> {
    fn deliver(&mut self, token: &AccessToken) -> anyhow::Result<()> {
        self.sinks.deliver(self.file, token)?;
        self.health.renewed(token);
        Ok(())
    }

    fn renewed(&mut self, token: &AccessToken, wait: Duration) {
        tracing::info!(
            expires_in = token.remaining(SystemTime::now()).as_secs(),
            next_renewal_in = wait.as_secs(),
            "token renewed"
        );
    }

    fn fetch_failed(&mut self, error: FetchError, wait: Duration) {
        self.health.failed(error.class());
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::from(error)),
            retry_in_ms = wait.as_millis() as u64,
            "token renewal failed; the last good token stays in place"
        );
    }

    fn deliver_failed(&mut self, error: anyhow::Error, wait: Duration) {
        self.health.write_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            error = format!("{error:#}"),
            retry_in_ms = wait.as_millis() as u64,
            "token file write failed"
        );
    }
}

/// Where a renewed token goes: the app's config.toml files (only where missing: the
/// client keeps its own), the token file, and the relay.
struct Sinks<'a> {
    publish: watch::Sender<Option<AccessToken>>,
    relay: Option<(&'a relay::Settings, Arc<relay::Prepared>)>,
}

impl Sinks<'_> {
    fn deliver(&self, file: &TokenFile, token: &AccessToken) -> anyhow::Result<()> {
        let now = SystemTime::now();
        if let Some((settings, prepared)) = &self.relay {
            prepared
                .seed(settings, token, now)
                .context("failed to write the app's config.toml")?;
        }
        file.write(token, now)?;
        self.publish.send_replace(Some(token.clone()));
        Ok(())
    }
}

/// The HTTP surface, apart from the loop so tests can drive it.
pub fn router(health: Arc<Health>, margin: Option<Duration>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state((health, margin))
}

async fn readyz(
    State((health, margin)): State<(Arc<Health>, Option<Duration>)>,
) -> impl IntoResponse {
    if health.ready(SystemTime::now(), margin) {
        (StatusCode::OK, "ready\n")
    } else if health.rejected.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the identity provider rejected the credentials: see this container's log\n",
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no valid token on disk\n")
    }
}

async fn metrics(
    State((health, margin)): State<(Arc<Health>, Option<Duration>)>,
) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        health.metrics(SystemTime::now(), margin),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn token(issued: u64, life: u64) -> AccessToken {
        let at = UNIX_EPOCH + Duration::from_secs(issued);
        AccessToken::new("t".to_string().into(), at, at + Duration::from_secs(life))
    }

    #[test]
    fn readiness_follows_the_token_and_rejections() {
        let h = Health::default();
        let now = UNIX_EPOCH + Duration::from_secs(100);
        assert!(!h.ready(now, Some(Duration::from_secs(30))));
        h.renewed(&token(100, 300));
        assert!(h.ready(now, Some(Duration::from_secs(30))));
        assert!(!h.ready(
            now + Duration::from_secs(280),
            Some(Duration::from_secs(30))
        ));
        h.failed(FailureClass::Transient);
        assert!(h.ready(now, Some(Duration::from_secs(30))));
        h.failed(FailureClass::Permanent);
        assert!(!h.ready(now, Some(Duration::from_secs(30))));
        h.renewed(&token(100, 300));
        assert!(h.ready(now, Some(Duration::from_secs(30))));
    }

    #[test]
    fn short_tokens_stay_ready_between_renewals() {
        let h = Health::default();
        let now = UNIX_EPOCH + Duration::from_secs(100);
        h.renewed(&token(100, 40));
        // Renewal comes at 80% (8 s left): with a fixed 30 s margin the sidecar would be
        // unready from 10 s on; a tenth of the life (4 s) keeps it ready.
        assert!(h.ready(now + Duration::from_secs(32), None));
        assert!(!h.ready(now + Duration::from_secs(37), None));
        // A margin asked for is kept.
        assert!(!h.ready(now + Duration::from_secs(32), Some(Duration::from_secs(30))));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let h = Health::default();
        h.renewed(&token(0, 300));
        h.failed(FailureClass::Transient);
        let text = h.metrics(
            UNIX_EPOCH + Duration::from_secs(100),
            Some(Duration::from_secs(30)),
        );
        assert!(
            text.contains("polars_cloud_auth_renewals_total 1\n"),
            "{text}"
        );
        assert!(text.contains("polars_cloud_auth_failures_total{class=\"transient\"} 1\n"));
        assert!(text.contains("polars_cloud_auth_token_expiry_seconds 200\n"));
        assert!(text.contains("polars_cloud_auth_ready 1\n"));
    }
}
