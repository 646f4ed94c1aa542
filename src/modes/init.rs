//! `init`: fetch once, write the token file, exit (an init container).

use std::time::SystemTime;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::InitArgs;
use crate::relay;
use crate::renew::Policy;
use crate::sink::TokenFile;
use crate::source::TokenSource;
use crate::source::retry;
use crate::token::unix_secs;

/// `polars-cloud-auth init`.
pub fn command(args: InitArgs) -> anyhow::Result<u8> {
    let (idp, renew) = (args.idp, args.renew);
    let token_file = args.file.pod_token_file();
    let relay = args.relay.settings(&token_file);
    let source = idp.source()?;
    super::current_thread(async move {
        let cancel = crate::shutdown::on_signals();
        run(
            &source,
            &token_file,
            relay.as_ref(),
            renew.deadline(),
            &renew.policy(),
            &cancel,
        )
        .await
    })?;
    Ok(crate::exit::OK)
}

pub async fn run(
    source: &TokenSource,
    file: &TokenFile,
    relay: Option<&relay::Settings>,
    deadline: std::time::Duration,
    policy: &Policy,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let tokens = retry::fetch_until(source, deadline, policy, cancel)
        .await
        .context("failed to obtain a token")?;
    // The app's config.toml and CA bundle before the token file: once the token file is
    // there (what a startup probe checks), everything the app reads is.
    if let Some(relay) = relay {
        relay::prepare(relay, &tokens.access, SystemTime::now())
            .context("failed to set up the relay for the app's client")?;
    }
    file.write(&tokens.access, SystemTime::now())?;
    tracing::info!(
        path = %file.path().display(),
        expires_at = unix_secs(tokens.access.expires_at()),
        expires_in = tokens.access.remaining(SystemTime::now()).as_secs(),
        "token written"
    );
    Ok(())
}
