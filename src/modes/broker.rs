//! `broker`: serve tokens to broker-backed sidecars over TLS until a signal
//! ([`crate::broker`] decides, [`crate::serve`] serves).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::broker::{self, Broker, api};
use crate::cli::BrokerCmdArgs;
use crate::serve::{self, Limits, Shared};

/// `polars-cloud-auth broker`.
pub fn command(args: BrokerCmdArgs) -> anyhow::Result<u8> {
    let (serve, idp, renew) = (args.serve, args.idp, args.renew);
    let (listen, cert, key, policy_file) = serve.resolve()?;
    let config = serve::Config {
        listen,
        cert,
        key,
        drain: serve.shutdown_delay.map_or(Duration::from_secs(5), |d| d.0),
        limits: Limits::default(),
    };
    let settings = broker::Settings {
        policy_file,
        audience: serve
            .token_audience
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| crate::config::DEFAULT_BROKER_AUDIENCE.to_string()),
        idp,
        renew: renew.policy(),
    };
    // Requests come from every broker-backed sidecar of the cluster: use the cores.
    super::multi_thread(|cancel| run(config, settings, cancel))?;
    Ok(crate::exit::OK)
}

pub async fn run(
    config: serve::Config,
    settings: broker::Settings,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let cert = serve::load_cert(&config).context("failed to load the broker's TLS certificate")?;
    let api = broker::apiserver::ApiServer::infer()
        .context("failed to find the Kubernetes API server for token reviews")?;
    let audience = settings.audience.clone();
    let broker = Arc::new(Broker::start(settings, api, cancel.clone())?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let shared = Shared::new("broker");
    let app = api::router(api::AppState {
        broker: broker.clone(),
        shared: shared.clone(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        audience = %audience,
        credentials = broker.keepers().len(),
        "broker started"
    );
    serve::serve(listener, cert, app, &config, &shared, cancel).await?;
    tracing::info!("broker stopped");
    Ok(())
}
