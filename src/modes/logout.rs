//! `logout`: revoke the stored refresh token (which ends the session at the realm) and
//! remove what `login` stored. The files are removed even when revocation fails; the exit
//! code then says that the session may still be alive.

use anyhow::Context;
use secrecy::SecretString;

use crate::cli::LogoutArgs;
use crate::sink::stored::Stores;
use crate::source::TokenSource;

/// `polars-cloud-auth logout`.
pub fn command(args: LogoutArgs) -> anyhow::Result<u8> {
    let mut idp = args.idp;
    // The session belongs to the public client people sign in with, whatever grant the
    // config file names for workloads.
    idp.grant = None;
    idp.client_auth = None;
    idp.client_assertion_file = None;
    idp.client_key_file = None;
    idp.client_key_id = None;
    let stores = args.store.stores()?;
    let source = idp.source()?;
    super::current_thread(async move { run(&source, &stores).await })?;
    Ok(crate::exit::OK)
}

pub async fn run(source: &TokenSource, stores: &Stores) -> anyhow::Result<()> {
    // The refresh token of config.toml, else the older clients' one. A config.toml that
    // cannot be read stops nothing else: the other files still go.
    let toml = stores.config.read();
    let refresh = match &toml {
        Ok(Some(auth)) => auth.refresh_token.clone(),
        _ => None,
    }
    .or_else(|| {
        stores
            .config
            .read_legacy()
            .ok()
            .flatten()
            .and_then(|a| a.refresh_token)
    });
    let revoked = match &refresh {
        Some(token) => Some(revoke(source, token).await),
        None => None,
    };
    let mut removed = Vec::new();
    let toml_error = match toml.and_then(|_| stores.config.clear_toml()) {
        Ok(true) => {
            removed.push(stores.config.path().to_path_buf());
            None
        }
        Ok(false) => None,
        Err(e) => Some(e),
    };
    removed.extend(stores.config.clear_legacy()?);
    if stores.token_file.remove()? {
        removed.push(stores.token_file.path().to_path_buf());
    }
    for path in &removed {
        eprintln!("Removed the tokens from {}", path.display());
    }
    if let Some(e) = toml_error {
        return Err(anyhow::Error::from(e).context(format!(
            "the session was {}; the other files were removed, config.toml was left as it is",
            match revoked {
                Some(Ok(())) => "revoked",
                Some(Err(_)) => "not revoked",
                None => "not revoked (no refresh token found)",
            }
        )));
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
