//! `webhook`: serves the mutating admission webhook ([`crate::webhook`]) with the
//! settings from flags, environment and config file, until a signal.

use std::time::Duration;

use crate::cli::WebhookCmdArgs;
use crate::serve::{self, Limits};
use crate::webhook::run;

/// `polars-cloud-auth webhook`: the settings from flags, environment and config file, then
/// [`run`] until a signal.
pub fn command(args: WebhookCmdArgs) -> anyhow::Result<u8> {
    let settings = args.inject.settings()?;
    let serve = args.serve;
    let (listen, cert, key) = serve.resolve()?;
    let config = serve::Config {
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
    super::multi_thread(|cancel| run(config, settings, cancel))?;
    Ok(crate::exit::OK)
}
