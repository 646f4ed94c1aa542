//! `long-running: true`: the relay process later steps renew through, started by main
//! in a session of its own and stopped by post.

use super::*;

/// The relay's variables for the later steps, its readiness line on stdout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct RelayReady {
    pub(super) pid: u32,
    pub(super) env: std::collections::BTreeMap<String, String>,
}

/// The inputs and the variables they fall back to, for the relay's stdin.
pub(super) fn relay_inputs(lookup: Lookup) -> std::collections::BTreeMap<String, String> {
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
pub(super) async fn start_relay(lookup: Lookup<'_>, exe: &Path) -> anyhow::Result<RelayReady> {
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
pub(super) async fn relay_daemon() -> anyhow::Result<()> {
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

/// The variables of the relay's exports that every tool's HTTPS depends on.
const NETWORK: [&str; 3] = [vars::HTTPS_PROXY, "https_proxy", vars::SSL_CERT_FILE];

/// What post writes to GITHUB_ENV once the relay is gone, computed by main from the job's
/// environment before the relay's exports: the runner hands GITHUB_ENV to every later step,
/// post steps included, and the post steps of actions used before ours run after ours. So
/// the proxy variables go back to what the job had (in either spelling), or empty (curl,
/// Python, Go, Node's proxy agents and reqwest read an empty proxy variable as none), and `SSL_CERT_FILE` to
/// what the job had, or else to the system roots the relay's bundle was made from (an empty
/// `SSL_CERT_FILE` would make OpenSSL load no roots at all). The other exports
/// (POLARS_CLOUD_*) name the stopped relay; only Polars Cloud clients read them.
pub(super) fn network_after_relay(
    lookup: Lookup,
    exported: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    NETWORK
        .iter()
        .filter(|name| exported.contains_key(**name))
        .map(|name| {
            let before = match *name {
                vars::SSL_CERT_FILE => {
                    lookup(name).unwrap_or_else(|| crate::relay::SYSTEM_ROOTS.to_string())
                }
                // One spelling of the proxy was enough for the job's tools (and the relay's
                // upstream); an empty twin would hide it from those that read the other.
                _ => lookup(name)
                    .or_else(|| lookup(&name.to_ascii_uppercase()))
                    .or_else(|| lookup(&name.to_ascii_lowercase()))
                    .unwrap_or_default(),
            };
            (name.to_string(), before)
        })
        .collect()
}

/// Stops the relay that main started (only if that pid is still our relay).
#[cfg(unix)]
pub(super) async fn stop_relay(pid: &str) {
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
pub(super) async fn stop_relay(_pid: &str) {}
