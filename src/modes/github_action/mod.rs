//! `github-action`: the binary behind the GitHub Action (`action.yml`). The node wrapper
//! runs `github-action main` as the action's main step and `github-action post` as its
//! post step; both read the action's inputs from the `INPUT_*` variables the runner sets.
//!
//! main: fetch a token, mask it, hand it to the later steps (GITHUB_ENV, the outputs, and
//! optionally a file under RUNNER_TEMP) and keep what post needs in GITHUB_STATE. post:
//! delete the file and revoke the refresh token. A failure becomes an `::error::`
//! annotation and one of the documented exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::ValueEnum;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::cli::Step;
use crate::config::{ClientAuthKind, GrantKind, IdpArgs};
use crate::exit;
use crate::renew::Policy;
use crate::shutdown;
use crate::sink::TokenFile;
use crate::sink::github::{self, FileCommand, Runner};
use crate::source::client_assertion;
use crate::source::credentials::{Credentials, Value};
use crate::source::retry;
use crate::token::RefreshToken;
use crate::vars;

mod inputs;
mod long_running;
#[cfg(test)]
mod tests;

use inputs::*;
pub use inputs::{Inputs, Lookup, token_file_path};
use long_running::*;

/// The inputs the binary reads. `action.yml` declares these plus `version` and
/// `binary-path`, which only the wrapper reads.
pub const INPUTS: &[&str] = &[
    "client-id",
    "client-secret",
    "grant",
    "client-auth",
    "domain",
    "issuer",
    "token-url",
    "scope",
    "audience",
    "export-env",
    "token-file",
    "retries",
    "ca-file",
    "long-running",
    "client-assertion",
    "oidc-audience",
];

/// The main step keeps retrying transient failures at most this long, whatever `retries`.
const DEADLINE: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: u32 = 5;
/// The token file is for the job's user only.
const TOKEN_FILE_MODE: u32 = 0o600;

/// What main keeps for post (post sees them as `STATE_<name>`).
const STATE_BINARY: &str = "binary";
const STATE_TOKEN_FILE: &str = "token_file";
const STATE_REFRESH_TOKEN: &str = "refresh_token";
const STATE_RELAY_PID: &str = "relay_pid";
/// The network variables post gives back to the later (post) steps, as a JSON object.
const STATE_NETWORK: &str = "network";

/// Why the action's settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input that does not parse (never the secret's: it is not parsed here).
    #[error("input '{name}' is '{value}': {expected}")]
    BadInput {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// `token-file: true` outside a runner.
    #[error("RUNNER_TEMP is not set: `token-file: true` needs a GitHub Actions runner")]
    NoRunnerTemp,
    /// A runner whose temporary directory is inside the checkout.
    #[error(
        "RUNNER_TEMP '{}' is inside the workspace '{}': refusing to write the token where the checkout, artifacts or caches could pick it up",
        temp.display(),
        workspace.display()
    )]
    TempInWorkspace { temp: PathBuf, workspace: PathBuf },
}

/// Runs one step. Failures are reported as annotations here, so the result is the exit code.
pub async fn run(step: Step) -> anyhow::Result<u8> {
    let lookup = |name: &str| std::env::var(name).ok();
    let runner = Runner::from_lookup(lookup);
    let mut out = std::io::stdout();
    let result = match step {
        Step::Main => main(&lookup, &runner, &mut out).await,
        Step::Post => post(&lookup, &runner, &mut out).await,
        Step::Relay => return relay_daemon().await.map(|()| exit::OK),
    };
    Ok(match result {
        Ok(()) => exit::OK,
        Err(e) => {
            github::error(&mut out, &format!("{e:#}"))?;
            code_for(&e)
        }
    })
}

fn code_for(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Error>()) {
        exit::USAGE
    } else {
        exit::code_for(e)
    }
}

async fn main(lookup: Lookup<'_>, runner: &Runner, out: &mut impl Write) -> anyhow::Result<()> {
    let inputs = Inputs::parse(lookup)?;
    if inputs.long_running && !inputs.export_env {
        return Err(bad(
            "export-env",
            "false",
            "`long-running: true` hands the later steps their settings through the environment; set export-env to true",
        )
        .into());
    }
    let token_file = if inputs.token_file {
        let temp = lookup("RUNNER_TEMP").filter(|v| !v.is_empty());
        let workspace = lookup("GITHUB_WORKSPACE").filter(|v| !v.is_empty());
        Some(token_file_path(
            temp.as_deref().map(Path::new),
            workspace.as_deref().map(Path::new),
            rand::random(),
        )?)
    } else {
        None
    };
    if inputs.long_running && inputs.github_oidc.is_some() {
        return Err(bad(
            "long-running",
            "true",
            "the relay renews with a client secret; with `client-assertion: github-oidc` set long-running to false",
        )
        .into());
    }
    let source = source(
        lookup,
        inputs.idp,
        inputs.credentials,
        &inputs.github_oidc,
        out,
    )
    .await?;
    let cancel = shutdown::on_signals();
    let attempts = inputs.retries.saturating_add(1);
    let tokens = retry::fetch_at_most(&source, attempts, DEADLINE, &Policy::default(), &cancel)
        .await
        .context("failed to obtain a Polars Cloud access token")?;

    // Masked before anything else happens, so no later line of the job can show them.
    let access = tokens.access.secret().expose_secret();
    github::add_mask(out, access)?;
    if let Some(refresh) = &tokens.refresh {
        github::add_mask(out, refresh.value.expose_secret())?;
    }

    // What post must undo is recorded before it exists.
    let exe = std::env::current_exe().context("failed to locate the running binary")?;
    runner.set(FileCommand::State, STATE_BINARY, &exe.to_string_lossy())?;
    if let Some(refresh) = &tokens.refresh {
        runner.set(
            FileCommand::State,
            STATE_REFRESH_TOKEN,
            refresh.value.expose_secret(),
        )?;
    }
    if let Some(path) = &token_file {
        runner.set(
            FileCommand::State,
            STATE_TOKEN_FILE,
            &path.to_string_lossy(),
        )?;
        TokenFile::new(path, TOKEN_FILE_MODE).write(&tokens.access, SystemTime::now())?;
    }

    let relay = if inputs.long_running {
        let ready = start_relay(lookup, &exe).await?;
        runner.set(FileCommand::State, STATE_RELAY_PID, &ready.pid.to_string())?;
        let network = network_after_relay(lookup, &ready.env);
        runner.set(
            FileCommand::State,
            STATE_NETWORK,
            &serde_json::to_string(&network)?,
        )?;
        for (name, value) in &ready.env {
            if name == crate::vars::API_ADDR && lookup(name).is_some() {
                continue; // the workflow's own API address stays
            }
            runner.set(FileCommand::Env, name, value)?;
        }
        tracing::info!(
            pid = ready.pid,
            "long-running: later steps' Polars Cloud clients renew their token through polars-cloud-auth (POLARS_CLOUD_CONFIG_DIR, HTTPS_PROXY to a local relay); POLARS_CLOUD_ACCESS_TOKEN is not exported, it would never be renewed"
        );
        Some(ready)
    } else {
        None
    };
    if inputs.export_env && relay.is_none() {
        runner.set(FileCommand::Env, vars::ACCESS_TOKEN, access)?;
        if let Some(path) = &token_file {
            runner.set(
                FileCommand::Env,
                vars::ACCESS_TOKEN_PATH,
                &path.to_string_lossy(),
            )?;
        }
        if let Some(domain) = &inputs.domain {
            runner.set(FileCommand::Env, vars::DOMAIN, domain)?;
        }
    }
    let expires_at = humantime::format_rfc3339_seconds(tokens.access.expires_at()).to_string();
    runner.set(FileCommand::Output, "access-token", access)?;
    runner.set(FileCommand::Output, "expires-at", &expires_at)?;
    if let Some(path) = &token_file {
        runner.set(FileCommand::Output, "token-file", &path.to_string_lossy())?;
    }

    let issuer = &source.settings().endpoints.issuer;
    runner.summary(&summary_line(
        issuer,
        &expires_at,
        inputs.export_env && relay.is_none(),
        token_file.is_some(),
        relay.is_some(),
    ))?;
    let expires_in = tokens.access.remaining(SystemTime::now()).as_secs();
    if relay.is_none() {
        tracing::info!(
            %issuer,
            expires_at,
            expires_in,
            "Polars Cloud access token ready; it is not renewed: steps that start after it expires, or run longer, need the input `long-running: true`"
        );
    } else {
        tracing::info!(%issuer, "Polars Cloud access token ready and kept fresh for later steps");
    }
    Ok(())
}

/// The job summary's line: where the token came from, until when, and where it went. No
/// secrets, and no client id either (it is often kept as a secret).
fn summary_line(issuer: &Url, expires_at: &str, exported: bool, file: bool, relay: bool) -> String {
    if relay {
        return format!(
            "Polars Cloud access token from `{issuer}`, kept fresh for the later steps' Polars Cloud clients by a local relay (`long-running: true`) until the post step stops it."
        );
    }
    let handed = match (exported, file) {
        (true, true) => {
            format!(
                "exported as `{}` and written to a file under RUNNER_TEMP",
                vars::ACCESS_TOKEN
            )
        }
        (true, false) => format!("exported as `{}`", vars::ACCESS_TOKEN),
        (false, true) => "written to a file under RUNNER_TEMP".to_string(),
        (false, false) => "available as the step's `access-token` output".to_string(),
    };
    format!(
        "Polars Cloud access token from `{issuer}`, valid until {expires_at}, {handed}. It is not renewed: for steps that start after that, or run longer, set the input `long-running: true`."
    )
}

/// post: revoke main's session while the relay (whose proxy and CA bundle the job's
/// environment names, post's own included) still runs, then stop the relay, give the later
/// post steps the job's network back, and delete the token file.
async fn post(lookup: Lookup<'_>, runner: &Runner, out: &mut impl Write) -> anyhow::Result<()> {
    let state = |name: &str| lookup(&format!("STATE_{name}")).filter(|v| !v.is_empty());
    if let Some(value) = state(STATE_REFRESH_TOKEN) {
        let refresh = RefreshToken {
            value: SecretString::from(value),
            expires_at: None,
        };
        // The token dies on its own soon; an identity provider that is down now should not
        // fail a job whose work is done.
        match revoke(lookup, &refresh).await {
            Ok(()) => tracing::info!("refresh token revoked"),
            Err(e) => github::warning(
                out,
                &format!(
                    "{:#}",
                    e.context("could not revoke the refresh token (it expires on its own)")
                ),
            )?,
        }
    }
    if let Some(pid) = state(STATE_RELAY_PID) {
        stop_relay(&pid).await;
    }
    if let Some(network) = state(STATE_NETWORK) {
        let network: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&network).context("the state `network` is not a JSON object")?;
        for (name, value) in &network {
            runner.set(FileCommand::Env, name, value)?;
        }
        tracing::info!(
            variables = ?network.keys().collect::<Vec<_>>(),
            "later steps get the job's network settings back"
        );
    }
    let mut removal = Ok(());
    if let Some(path) = state(STATE_TOKEN_FILE) {
        let removed = TokenFile::new(&path, TOKEN_FILE_MODE).remove();
        match removed {
            Ok(true) => tracing::info!(path, "token file deleted"),
            Ok(false) => tracing::info!(path, "token file already gone"),
            Err(_) => {}
        }
        removal = removed.map(drop);
    }
    Ok(removal?)
}

/// The token source of the inputs; with `client-assertion: github-oidc`, the job's OIDC
/// token (fetched now, and masked before anything else) authenticates the client.
async fn source(
    lookup: Lookup<'_>,
    idp: IdpArgs,
    credentials: Credentials,
    github_oidc: &Option<Option<String>>,
    out: &mut impl Write,
) -> anyhow::Result<crate::source::TokenSource> {
    let Some(audience) = github_oidc else {
        return Ok(idp.source_with(credentials)?);
    };
    let audience = match audience {
        Some(a) => a.clone(),
        None => idp.endpoints()?.issuer.to_string(),
    };
    let http = crate::source::http_client(&idp.http())?;
    let jwt = client_assertion::github_oidc_token(
        &http,
        lookup(client_assertion::GITHUB_OIDC_URL).as_deref(),
        lookup(client_assertion::GITHUB_OIDC_TOKEN).as_deref(),
        &audience,
    )
    .await
    .map_err(crate::source::FetchError::from)?;
    github::add_mask(out, jwt.expose_secret())?;
    Ok(idp.source_with_assertion(credentials, client_assertion::Assertion::Inline(jwt))?)
}

async fn revoke(lookup: Lookup<'_>, refresh: &RefreshToken) -> anyhow::Result<()> {
    let inputs = Inputs::parse(lookup)?;
    let source = source(
        lookup,
        inputs.idp,
        inputs.credentials,
        &inputs.github_oidc,
        &mut std::io::stdout(),
    )
    .await?;
    source.revoke(&refresh.value, "refresh_token").await?;
    Ok(())
}
