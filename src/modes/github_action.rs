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

use crate::assertion;
use crate::cli::Step;
use crate::config::{ClientAuthKind, GrantKind, IdpArgs};
use crate::credentials::{Credentials, Value};
use crate::exit;
use crate::renew::Policy;
use crate::retry;
use crate::shutdown;
use crate::sink::TokenFile;
use crate::sink::github::{self, FileCommand, Runner};
use crate::token::RefreshToken;
use crate::vars;

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

/// The relay's variables for the later steps, its readiness line on stdout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RelayReady {
    pid: u32,
    env: std::collections::BTreeMap<String, String>,
}

/// Reads an environment variable; `std::env::var` outside tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The action's inputs, parsed.
#[derive(Debug)]
pub struct Inputs {
    pub idp: IdpArgs,
    pub credentials: Credentials,
    pub export_env: bool,
    pub token_file: bool,
    pub retries: u32,
    /// The `domain` input, exported so that the client talks to the same deployment.
    pub domain: Option<String>,
    /// Keep the token fresh for later steps (the relay) instead of exporting one token.
    pub long_running: bool,
    /// `client-assertion: github-oidc`: the job's OIDC token authenticates the client,
    /// for this audience (`None`: the realm's issuer URL, which Keycloak expects).
    pub github_oidc: Option<Option<String>>,
}

/// The variable the runner sets for an input: upper-cased, spaces to `_`, dashes kept.
fn input_variable(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

/// An input, trimmed; an empty input is an absent one (the runner sets every declared
/// input, empty when not given).
fn input(lookup: Lookup, name: &str) -> Option<String> {
    lookup(&input_variable(name))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn bad(name: &'static str, value: &str, expected: impl Into<String>) -> Error {
    Error::BadInput {
        name,
        value: value.to_string(),
        expected: expected.into(),
    }
}

fn choice<T: ValueEnum>(lookup: Lookup, name: &'static str) -> Result<Option<T>, Error> {
    let Some(value) = input(lookup, name) else {
        return Ok(None);
    };
    T::from_str(&value, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        bad(name, &value, format!("use {}", names.join(" or ")))
    })
}

/// YAML 1.2 core booleans, as the Actions toolkit accepts them.
fn boolean(lookup: Lookup, name: &'static str, default: bool) -> Result<bool, Error> {
    match input(lookup, name).as_deref() {
        None => Ok(default),
        Some("true" | "True" | "TRUE") => Ok(true),
        Some("false" | "False" | "FALSE") => Ok(false),
        Some(other) => Err(bad(name, other, "use true or false")),
    }
}

fn url(lookup: Lookup, name: &'static str) -> Result<Option<Url>, Error> {
    input(lookup, name)
        .map(|v| Url::parse(&v).map_err(|e| bad(name, &v, format!("not a URL ({e})"))))
        .transpose()
}

/// A credential from its input, else its environment variable, else an error at use that
/// says what to set.
fn credential(
    input: Option<String>,
    from: &'static str,
    env: (&'static str, Option<String>),
    missing: &'static str,
) -> Value {
    let present = |v: &String| !v.trim().is_empty();
    match (input.filter(present), env.1.filter(present)) {
        (Some(value), _) => Value::Inline { value, from },
        (None, Some(value)) => Value::Inline { value, from: env.0 },
        (None, None) => Value::Missing { what: missing },
    }
}

impl Inputs {
    pub fn parse(lookup: Lookup) -> Result<Self, Error> {
        let domain = input(lookup, "domain");
        let idp = IdpArgs {
            issuer: url(lookup, "issuer")?,
            // The client reads POLARS_CLOUD_DOMAIN too: a workflow that sets it gets its
            // token from the same deployment the client will talk to.
            domain: domain.clone().or_else(|| {
                lookup(vars::DOMAIN)
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
            }),
            token_url: url(lookup, "token-url")?,
            grant: choice::<GrantKind>(lookup, "grant")?,
            client_auth: choice::<ClientAuthKind>(lookup, "client-auth")?,
            scope: input(lookup, "scope"),
            audience: input(lookup, "audience"),
            ca_file: input(lookup, "ca-file").map(PathBuf::from),
            ..IdpArgs::default()
        };
        // The secret is taken verbatim: the credentials module trims trailing newlines only
        // and refuses line breaks inside.
        let credentials = Credentials {
            client_id: credential(
                input(lookup, "client-id"),
                "the `client-id` input",
                (vars::CLIENT_ID, lookup(vars::CLIENT_ID)),
                "client id: set the `client-id` input (or POLARS_CLOUD_CLIENT_ID)",
            ),
            client_secret: credential(
                lookup(&input_variable("client-secret")),
                "the `client-secret` input",
                (vars::CLIENT_SECRET, lookup(vars::CLIENT_SECRET)),
                "client secret: the `client-secret` input is empty and POLARS_CLOUD_CLIENT_SECRET is not set (a `secrets.*` expression is empty when the secret does not exist, or for a pull request from a fork)",
            ),
        };
        let retries = match input(lookup, "retries") {
            None => DEFAULT_RETRIES,
            Some(v) => v.parse().map_err(|_| {
                bad(
                    "retries",
                    &v,
                    "use a whole number such as 3 (0 disables retries)",
                )
            })?,
        };
        let github_oidc = match input(lookup, "client-assertion").as_deref() {
            None => None,
            Some("github-oidc") => Some(input(lookup, "oidc-audience")),
            Some(other) => {
                return Err(bad(
                    "client-assertion",
                    other,
                    "use github-oidc (the job's OIDC token; needs `permissions: id-token: write`)",
                ));
            }
        };
        if github_oidc.is_none()
            && let Some(a) = input(lookup, "oidc-audience")
        {
            return Err(bad(
                "oidc-audience",
                &a,
                "it is the audience of the job's OIDC token: set `client-assertion: github-oidc` too",
            ));
        }
        Ok(Self {
            github_oidc,
            idp,
            credentials,
            export_env: boolean(lookup, "export-env", true)?,
            token_file: boolean(lookup, "token-file", false)?,
            retries,
            domain,
            long_running: boolean(lookup, "long-running", false)?,
        })
    }
}

/// Where the token file goes: a fresh name directly under RUNNER_TEMP, which the runner
/// empties after the job, and never inside the workspace.
pub fn token_file_path(
    temp: Option<&Path>,
    workspace: Option<&Path>,
    tag: u64,
) -> Result<PathBuf, Error> {
    let temp = temp.ok_or(Error::NoRunnerTemp)?;
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if let Some(workspace) = workspace.filter(|w| real(temp).starts_with(real(w))) {
        return Err(Error::TempInWorkspace {
            temp: temp.to_path_buf(),
            workspace: workspace.to_path_buf(),
        });
    }
    Ok(temp.join(format!("polars-cloud-token-{tag:016x}")))
}

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
        Step::Post => post(&lookup, &mut out).await,
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

/// The inputs and the variables they fall back to, for the relay's stdin.
fn relay_inputs(lookup: Lookup) -> std::collections::BTreeMap<String, String> {
    INPUTS
        .iter()
        .map(|i| input_variable(i))
        .chain([vars::CLIENT_ID, vars::CLIENT_SECRET, vars::DOMAIN].map(String::from))
        .filter_map(|k| lookup(&k).map(|v| (k, v)))
        .collect()
}

/// Starts the relay (`github-action relay`) in its own session, so it outlives this
/// step, with the inputs on its stdin and none of our environment's secrets; answers
/// once it is serving.
async fn start_relay(lookup: Lookup<'_>, exe: &Path) -> anyhow::Result<RelayReady> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let temp = lookup("RUNNER_TEMP")
        .filter(|v| !v.is_empty())
        .ok_or(Error::NoRunnerTemp)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&temp).join("polars-cloud-auth-relay.log"))
        .context("failed to open the relay's log under RUNNER_TEMP")?;
    let keep = [
        "PATH",
        "HOME",
        "RUNNER_TEMP",
        "SSL_CERT_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        vars::LOG,
        vars::LOG_FORMAT,
    ];
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["github-action", "relay"])
        .env_clear()
        .envs(keep.iter().filter_map(|k| lookup(k).map(|v| (*k, v))))
        .env("TMPDIR", &temp)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().context("failed to start the relay")?;
    let inputs = serde_json::to_vec(&relay_inputs(lookup))?;
    let mut stdin = child.stdin.take().context("the relay has no stdin")?;
    stdin.write_all(&inputs).await?;
    drop(stdin);
    let stdout = child.stdout.take().context("the relay has no stdout")?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(DEADLINE + Duration::from_secs(10), read).await {
        Ok(Ok(n)) if n > 0 => Ok(serde_json::from_str(&line)
            .context("the relay's readiness line is not what it should be")?),
        _ => {
            let _ = child.start_kill();
            anyhow::bail!(
                "the relay did not start; see polars-cloud-auth-relay.log under RUNNER_TEMP"
            )
        }
    }
}

/// `github-action relay`: keep a token fresh for the later steps until SIGTERM (post).
async fn relay_daemon() -> anyhow::Result<()> {
    use std::io::Read;
    use std::sync::Arc;
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .context("failed to read the inputs on stdin")?;
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&raw).context("the inputs on stdin are not a JSON object")?;
    let lookup = |k: &str| map.get(k).cloned();
    let inputs = Inputs::parse(&lookup)?;
    let real_domain = inputs
        .idp
        .domain
        .clone()
        .unwrap_or_else(|| crate::source::DEFAULT_DOMAIN.to_string());
    let source = Arc::new(inputs.idp.source_with(inputs.credentials)?);
    let cancel = shutdown::on_signals();
    let tokens = retry::fetch_until(&source, DEADLINE, &Policy::default(), &cancel)
        .await
        .context("failed to obtain a Polars Cloud access token")?;
    let feed = crate::relay::local::Feed::Source(source.clone(), Policy::default());
    let local = crate::relay::local::Local::start(
        crate::relay::DEFAULT_DOMAIN,
        tokens.access,
        feed,
        cancel.clone(),
    )
    .await?;
    let ready = RelayReady {
        pid: std::process::id(),
        env: local
            .child_env(&real_domain)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
            .collect(),
    };
    println!("{}", serde_json::to_string(&ready)?);
    tracing::info!("relay serving the job's later steps");
    cancel.cancelled().await;
    if let Some(refresh) = source.refresh_token() {
        match source.revoke(&refresh.value, "refresh_token").await {
            Ok(()) => tracing::info!("the relay's session was revoked"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "could not revoke the relay's session"
            ),
        }
    }
    local.close();
    tracing::info!("relay stopped");
    Ok(())
}

/// Stops the relay that main started (only if that pid is still our relay).
#[cfg(unix)]
async fn stop_relay(pid: &str) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(n) = pid.parse::<i32>() else { return };
    let cmdline = std::fs::read(format!("/proc/{n}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains("relay");
    if !ours && cfg!(target_os = "linux") {
        tracing::info!(pid = n, "the relay is already gone");
        return;
    }
    let pid = Pid::from_raw(n);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            tracing::info!(pid = n, "relay stopped");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(pid = n, "the relay did not stop within 10s");
}

#[cfg(not(unix))]
async fn stop_relay(_pid: &str) {}

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

async fn post(lookup: Lookup<'_>, out: &mut impl Write) -> anyhow::Result<()> {
    let state = |name: &str| lookup(&format!("STATE_{name}")).filter(|v| !v.is_empty());
    if let Some(pid) = state(STATE_RELAY_PID) {
        stop_relay(&pid).await;
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
    let jwt = assertion::github_oidc_token(
        &http,
        lookup(assertion::GITHUB_OIDC_URL).as_deref(),
        lookup(assertion::GITHUB_OIDC_TOKEN).as_deref(),
        &audience,
    )
    .await
    .map_err(crate::source::FetchError::from)?;
    github::add_mask(out, jwt.expose_secret())?;
    Ok(idp.source_with_assertion(credentials, assertion::Assertion::Inline(jwt))?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Grant;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Inputs, Error> {
        let map = env(pairs);
        Inputs::parse(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn defaults_without_inputs() {
        let i = parse(&[]).unwrap();
        assert!(i.export_env && !i.token_file);
        assert_eq!(i.retries, DEFAULT_RETRIES);
        assert!(matches!(i.idp.grant().unwrap(), Grant::ServiceAccount));
        assert_eq!(
            i.idp.endpoints().unwrap().issuer.as_str(),
            "https://auth.prd.cloud.pola.rs/realms/Polars"
        );
        let err = i.credentials.load().unwrap_err().to_string();
        assert!(err.contains("`client-id` input"), "{err}");
    }

    #[test]
    fn client_assertion_takes_the_jobs_oidc_token_only() {
        let i = parse(&[("INPUT_CLIENT-ASSERTION", "github-oidc")]).unwrap();
        assert_eq!(i.github_oidc, Some(None));
        let i = parse(&[
            ("INPUT_CLIENT-ASSERTION", "github-oidc"),
            ("INPUT_OIDC-AUDIENCE", "https://kc/realms/r"),
        ])
        .unwrap();
        assert_eq!(i.github_oidc, Some(Some("https://kc/realms/r".into())));
        let e = parse(&[("INPUT_CLIENT-ASSERTION", "file")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("github-oidc"), "{e}");
        let e = parse(&[("INPUT_OIDC-AUDIENCE", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("client-assertion: github-oidc"), "{e}");
    }

    /// Without `id-token: write` the runner sets no request variables: the step says so
    /// before any request.
    #[tokio::test]
    async fn without_id_token_permission_the_error_names_it() {
        let map = env(&[
            ("INPUT_CLIENT-ASSERTION", "github-oidc"),
            ("INPUT_ISSUER", "http://127.0.0.1:9/realms/r"),
        ]);
        let lookup = |k: &str| map.get(k).cloned();
        let i = Inputs::parse(&lookup).unwrap();
        let mut out = Vec::new();
        let e = source(&lookup, i.idp, i.credentials, &i.github_oidc, &mut out)
            .await
            .err()
            .unwrap();
        let text = format!("{e:#}");
        assert!(text.contains("permissions: id-token: write"), "{text}");
        assert_eq!(crate::exit::code_for(&e), crate::exit::USAGE);
    }

    #[test]
    fn inputs_lists_exactly_what_parse_reads() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let lookup = |var: &str| {
            asked.borrow_mut().insert(var.to_string());
            None
        };
        Inputs::parse(&lookup).unwrap();
        let read: Vec<String> = asked
            .into_inner()
            .into_iter()
            .filter(|v| v.starts_with("INPUT_"))
            .collect();
        let mut listed: Vec<String> = INPUTS.iter().map(|i| input_variable(i)).collect();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn inputs_use_the_runners_variable_names() {
        let i = parse(&[
            ("INPUT_CLIENT-ID", " sa \n"),
            ("INPUT_CLIENT-SECRET", "s3cret\n"),
            ("INPUT_GRANT", "client-credentials"),
            ("INPUT_CLIENT-AUTH", "post"),
            ("INPUT_DOMAIN", "eu.cloud.example"),
            ("INPUT_SCOPE", "profile"),
            ("INPUT_AUDIENCE", "polars"),
            ("INPUT_EXPORT-ENV", "False"),
            ("INPUT_TOKEN-FILE", "TRUE"),
            ("INPUT_RETRIES", "0"),
            ("INPUT_CA-FILE", "/etc/ca.pem"),
        ])
        .unwrap();
        let (id, secret) = i.credentials.load().unwrap();
        assert_eq!((id.as_str(), secret.expose_secret()), ("sa", "s3cret"));
        assert!(matches!(
            i.idp.grant().unwrap(),
            Grant::ClientCredentials(crate::source::ClientAuth::Post)
        ));
        assert_eq!(i.domain.as_deref(), Some("eu.cloud.example"));
        assert_eq!(
            i.idp.endpoints().unwrap().issuer.as_str(),
            "https://auth.eu.cloud.example/realms/Polars"
        );
        assert_eq!(i.idp.scope.as_deref(), Some("profile"));
        assert_eq!(i.idp.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!i.export_env && i.token_file);
        assert_eq!(i.retries, 0);
    }

    #[test]
    fn credentials_and_the_domain_fall_back_to_the_environment() {
        let i = parse(&[
            ("INPUT_CLIENT-ID", ""),
            ("INPUT_CLIENT-SECRET", ""),
            ("POLARS_CLOUD_CLIENT_ID", "env-sa"),
            ("POLARS_CLOUD_CLIENT_SECRET", "env-secret"),
            ("POLARS_CLOUD_DOMAIN", "dev.example"),
        ])
        .unwrap();
        let (id, secret) = i.credentials.load().unwrap();
        assert_eq!(
            (id.as_str(), secret.expose_secret()),
            ("env-sa", "env-secret")
        );
        assert_eq!(
            i.idp.endpoints().unwrap().issuer.as_str(),
            "https://auth.dev.example/realms/Polars"
        );
        // Only a domain given as input is exported: one from the environment is there already.
        assert_eq!(i.domain, None);
    }

    #[test]
    fn bad_inputs_name_the_input_and_what_to_write() {
        let cases = [
            (
                "INPUT_GRANT",
                "password",
                "input 'grant' is 'password': use service-account or client-credentials",
            ),
            (
                "INPUT_CLIENT-AUTH",
                "jwt",
                "input 'client-auth' is 'jwt': use basic or post",
            ),
            (
                "INPUT_EXPORT-ENV",
                "yes",
                "input 'export-env' is 'yes': use true or false",
            ),
            (
                "INPUT_RETRIES",
                "-1",
                "input 'retries' is '-1': use a whole number",
            ),
            (
                "INPUT_ISSUER",
                "auth.example",
                "input 'issuer' is 'auth.example': not a URL",
            ),
        ];
        for (var, value, expected) in cases {
            let err = parse(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn secrets_are_checked_without_being_echoed() {
        let i = parse(&[
            ("INPUT_CLIENT-ID", "sa"),
            ("INPUT_CLIENT-SECRET", "abc\ndef"),
        ])
        .unwrap();
        let err = i.credentials.load().unwrap_err().to_string();
        assert_eq!(
            err,
            "the client secret from the `client-secret` input contains a line break or control character (only trailing newlines are trimmed)"
        );
        let i = parse(&[("INPUT_CLIENT-ID", "sa"), ("INPUT_CLIENT-SECRET", "  ")]).unwrap();
        let err = i.credentials.load().unwrap_err().to_string();
        assert!(
            err.starts_with("no client secret: the `client-secret` input is empty"),
            "{err}"
        );
        assert!(
            format!(
                "{:?}",
                parse(&[("INPUT_CLIENT-SECRET", "hunter2")]).unwrap()
            )
            .contains("redacted")
        );
    }

    #[test]
    fn the_summary_says_where_the_token_went() {
        let issuer = Url::parse("https://auth.example/realms/Polars").unwrap();
        let line = summary_line(&issuer, "2030-01-01T00:00:00Z", true, true, false);
        assert_eq!(
            line,
            "Polars Cloud access token from `https://auth.example/realms/Polars`, valid until 2030-01-01T00:00:00Z, exported as `POLARS_CLOUD_ACCESS_TOKEN` and written to a file under RUNNER_TEMP. It is not renewed: for steps that start after that, or run longer, set the input `long-running: true`."
        );
        assert!(
            summary_line(&issuer, "x", false, false, false)
                .contains("available as the step's `access-token` output.")
        );
        let relay = summary_line(&issuer, "x", true, false, true);
        assert!(
            relay.contains("kept fresh") && relay.contains("long-running: true"),
            "{relay}"
        );
    }

    #[test]
    fn the_token_file_goes_under_runner_temp_and_never_into_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("_temp");
        let workspace = dir.path().join("repo");
        std::fs::create_dir_all(&temp).unwrap();
        let path = token_file_path(Some(&temp), Some(&workspace), 0xab).unwrap();
        assert_eq!(path, temp.join("polars-cloud-token-00000000000000ab"));
        assert!(matches!(
            token_file_path(None, Some(&workspace), 1),
            Err(Error::NoRunnerTemp)
        ));
        let inside = workspace.join("tmp");
        std::fs::create_dir_all(&inside).unwrap();
        assert!(matches!(
            token_file_path(Some(&inside), Some(&workspace), 1),
            Err(Error::TempInWorkspace { .. })
        ));
    }
}
