//! `token`: one token on stdout, for `export POLARS_CLOUD_ACCESS_TOKEN=$(...)`.

use std::io::Write;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::cli::TokenArgs;
use crate::renew::Policy;
use crate::source::TokenSource;
use crate::source::retry;

/// Why `token` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The identity provider handed out a token that has already expired; printing it
    /// would only move the failure to the API call (`init` refuses the same).
    #[error(
        "refusing to print an already expired token (it expired at {at}): check this machine's clock and the identity provider's"
    )]
    Expired { at: String },
}

/// `polars-cloud-auth token`.
pub fn command(args: TokenArgs) -> anyhow::Result<u8> {
    let (idp, renew) = (args.idp, args.renew);
    let source = idp.source()?;
    super::current_thread(async move {
        let cancel = crate::shutdown::on_signals();
        run(&source, renew.deadline(), &renew.policy(), &cancel).await
    })?;
    Ok(crate::exit::OK)
}

pub async fn run(
    source: &TokenSource,
    deadline: std::time::Duration,
    policy: &Policy,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let tokens = retry::fetch_until(source, deadline, policy, cancel).await?;
    if tokens.access.expires_at() <= std::time::SystemTime::now() {
        return Err(Error::Expired {
            at: humantime::format_rfc3339_seconds(tokens.access.expires_at()).to_string(),
        }
        .into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", tokens.access.secret().expose_secret())?;
    out.flush()?;
    Ok(())
}
