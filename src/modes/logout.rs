//! `logout`: revoke the stored refresh token (which ends the session at the realm) and
//! remove what `login` stored. The files are removed even when revocation fails; the exit
//! code then says that the session may still be alive.

use anyhow::Context;
use secrecy::SecretString;

use super::login::Stores;
use crate::cli::LogoutArgs;
use crate::config::{ConfigFile, IdpArgs, overlay};
use crate::source::TokenSource;

/// `polars-cloud-auth logout`.
pub fn command(args: LogoutArgs, file: &ConfigFile) -> anyhow::Result<u8> {
    let mut idp = overlay(&IdpArgs::from(args.realm), &file.idp)?;
    // The session belongs to the public client people sign in with, whatever grant the
    // config file names for workloads.
    idp.grant = None;
    let stores = Stores::from_args(&args.store)?;
    let source = idp.source()?;
    crate::current_thread(async move { run(&source, &stores).await })?;
    Ok(crate::exit::OK)
}

pub async fn run(source: &TokenSource, stores: &Stores) -> anyhow::Result<()> {
    // An unreadable config.toml must not stop the rest: the token file still goes.
    let (refresh, read_error) = match stores.config.read() {
        Ok(auth) => (auth.and_then(|a| a.refresh_token), None),
        Err(e) => (None, Some(e)),
    };
    let revoked = match &refresh {
        Some(token) => Some(revoke(source, token).await),
        None => None,
    };
    let mut removed = Vec::new();
    if read_error.is_none() {
        removed.extend(stores.config.clear()?);
    }
    if stores.token_file.remove()? {
        removed.push(stores.token_file.path().to_path_buf());
    }
    for path in &removed {
        eprintln!("Removed the tokens from {}", path.display());
    }
    if let Some(e) = read_error {
        return Err(anyhow::Error::from(e).context("the tokens in config.toml were left in place"));
    }
    match revoked {
        Some(Ok(())) => eprintln!("Signed out: the session was revoked."),
        Some(Err(e)) => {
            return Err(e.context(
                "the stored tokens were removed, but the session could not be revoked and may stay valid until it expires",
            ));
        }
        None if removed.is_empty() => eprintln!("Not signed in: nothing to remove."),
        None => eprintln!("Signed out (there was no refresh token to revoke)."),
    }
    Ok(())
}

async fn revoke(source: &TokenSource, token: &SecretString) -> anyhow::Result<()> {
    source
        .revoke(token, "refresh_token")
        .await
        .with_context(|| {
            format!(
                "failed to revoke the refresh token at {}",
                source.settings().endpoints.revocation()
            )
        })
}
