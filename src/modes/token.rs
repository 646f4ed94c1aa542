//! `token`: one token on stdout, for `export POLARS_CLOUD_ACCESS_TOKEN=$(...)`.

use std::io::Write;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::renew::Policy;
use crate::retry;
use crate::source::TokenSource;

pub async fn run(
    source: &TokenSource,
    deadline: std::time::Duration,
    policy: &Policy,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let tokens = retry::fetch_until(source, deadline, policy, cancel).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", tokens.access.secret().expose_secret())?;
    out.flush()?;
    Ok(())
}
