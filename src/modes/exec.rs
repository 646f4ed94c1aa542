//! `exec -- CMD ARGS...`: run a command whose Polars Cloud client renews its token
//! through a relay of ours ([`crate::relay::local`]): a private config directory, and
//! `HTTPS_PROXY` to route its refreshes to the relay. The token comes from a stored file
//! when it stays valid long enough (the sidecar's file in a pod, login's files on a
//! laptop; login's session is used as it is), otherwise it is fetched with the
//! configured credentials. `--env-token` sets `POLARS_CLOUD_ACCESS_TOKEN` only. Signals
//! are passed on to the command, its exit status becomes ours, and it dies with us.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::cli::ExecArgs;
use crate::config::IdpArgs;
use crate::exit;
use crate::relay::local::{self, Feed};
use crate::renew::Policy;
use crate::sink::TokenFile;
use crate::sink::stored::{self, Stored, pick};
use crate::source::{DEFAULT_DOMAIN, TokenSource};
use crate::token::AccessToken;
use crate::vars;

/// Why the command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program does not exist (exit 127, as a shell does).
    #[error("command not found: '{program}'")]
    NotFound { program: String },
    /// The program exists but cannot be run (exit 126).
    #[error("cannot run '{program}'")]
    CannotRun {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl exit::KnownCode for Error {
    fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound { .. } => 127,
            Self::CannotRun { .. } => 126,
        }
    }
}

/// `polars-cloud-auth exec`.
pub fn command(args: ExecArgs) -> anyhow::Result<u8> {
    let (idp, renew, token_file) = (args.idp, args.renew, args.token_file);
    let places = stored::places(token_file.as_deref(), args.config_dir.as_deref(), &|k| {
        std::env::var_os(k)
    });
    let min_valid = args.min_valid.0;
    let command = args.command;
    let env_only = args.env_token;
    let mut code = exit::OK;
    super::current_thread(async {
        let policy = renew.policy();
        let (token, from) = token(&places, min_valid, &idp, renew.deadline(), &policy).await?;
        let mut env = ChildEnv::default();
        if env_only {
            env.set
                .insert(vars::ACCESS_TOKEN, token.secret().expose_secret().into());
            code = run(&command, &env).await?;
            return Ok(());
        }
        let feed = match from {
            From::Config(dir) => {
                // A person's login: the client renews with that session by itself.
                tracing::info!(dir = %dir.display(), "the command's client renews with the session that login stored");
                env.set.insert(vars::CONFIG_DIR, dir.into());
                code = run(&command, &env).await?;
                return Ok(());
            }
            From::File(file) => Feed::File(file),
            From::Fetched(source) => Feed::Source(source, policy),
        };
        if local::no_proxy_bypasses(std::env::var("NO_PROXY").ok().as_deref())
            || local::no_proxy_bypasses(std::env::var("no_proxy").ok().as_deref())
        {
            anyhow::bail!(
                "NO_PROXY=* would send the command's token requests around polars-cloud-auth; remove the '*', or use --env-token (one token, not renewed)"
            );
        }
        let cancel = CancellationToken::new();
        let domain = crate::relay::DEFAULT_DOMAIN;
        let relay = local::Local::start(domain, token, feed, cancel.clone()).await?;
        env.set
            .extend(relay.child_env(idp.domain.as_deref().unwrap_or(DEFAULT_DOMAIN)));
        let result = run(&command, &env).await;
        relay.close();
        code = result?;
        Ok(())
    })?;
    Ok(code)
}

/// Where the command's token came from.
enum From {
    /// A token file (the sidecar's): read again as it is renewed.
    File(TokenFile),
    /// Login's config.toml in this directory.
    Config(PathBuf),
    /// Fetched with these credentials, to be renewed by us.
    Fetched(Arc<TokenSource>),
}

/// What the command's environment gets and loses.
#[derive(Default)]
pub struct ChildEnv {
    pub set: BTreeMap<&'static str, OsString>,
}

/// A stored token valid long enough, or a fresh one.
async fn token(
    places: &[Stored],
    min_valid: Duration,
    idp: &IdpArgs,
    deadline: Duration,
    policy: &Policy,
) -> anyhow::Result<(AccessToken, From)> {
    let now = SystemTime::now();
    if let Some((token, place)) = pick(places, now, min_valid) {
        tracing::debug!(path = %place.path().display(), expires_in = token.remaining(now).as_secs(), "using the stored token");
        let from = match place {
            Stored::File(f) => From::File(f.clone()),
            Stored::Config(c) => {
                From::Config(c.path().parent().map(Path::to_path_buf).unwrap_or_default())
            }
        };
        return Ok((token, from));
    }
    let looked: Vec<String> = places
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let why = || {
        format!(
            "no stored token stays valid for {} (looked in {}), and none could be fetched",
            humantime::format_duration(min_valid),
            looked.join(", ")
        )
    };
    let source = Arc::new(idp.source().with_context(why)?);
    let cancel = cancel_on_signals();
    let tokens = crate::source::retry::fetch_until(&source, deadline, policy, &cancel)
        .await
        .with_context(why)?;
    Ok((tokens.access, From::Fetched(source)))
}

/// Cancellation for the fetch only: once the command runs, signals are forwarded instead.
fn cancel_on_signals() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    cancel
}

/// Runs the command with `env` added to ours, less the client secret and any access
/// token of ours, passing signals on; answers its exit code (128 + the signal when a
/// signal ended it).
pub async fn run(command: &[OsString], env: &ChildEnv) -> anyhow::Result<u8> {
    let (program, args) = command.split_first().ok_or_else(|| {
        anyhow::anyhow!("no command given: polars-cloud-auth exec -- CMD ARGS...")
    })?;
    let name = program.to_string_lossy().into_owned();
    // Listen before the child exists, so no signal falls between the two.
    let mut signals = forward::Signals::new()?;
    let mut cmd = dying_with_us(program, args);
    cmd
        // The long-lived secret stays with us; the command gets only short-lived tokens.
        .env_remove(vars::CLIENT_SECRET)
        // An access token of ours would win over the renewed config.toml and die.
        .env_remove(vars::ACCESS_TOKEN)
        .envs(&env.set);
    let mut child = cmd
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                program: name.clone(),
            },
            _ => Error::CannotRun {
                program: name.clone(),
                source,
            },
        })
        .map_err(exit::Coded::new)?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            signal = signals.recv() => forward::to_child(&child, signal),
        }
    };
    Ok(exit_code(status))
}

/// The command, started so that it dies with us. A command outliving a SIGKILLed `exec`
/// would keep running with `HTTPS_PROXY` at a dead port that anyone may bind next. On
/// Linux it is started through ourselves ([`child`]), which sets the parent-death signal
/// and then becomes the command: setting it between fork and exec directly would take
/// unsafe code, which this crate forbids. `/proc/self/exe` is this very binary, even if
/// the file was replaced since.
fn dying_with_us(program: &OsString, args: &[OsString]) -> tokio::process::Command {
    #[cfg(target_os = "linux")]
    {
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg("exec-child")
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        cmd
    }
}

/// `exec-child PARENT -- COMMAND...`: asks for SIGKILL when the thread that started us
/// (exec's only one) ends, checks that `exec` did not die before that took effect, and
/// becomes the command. Set-uid commands lose the signal at exec (the kernel's rule).
pub fn child(args: crate::cli::ExecChildArgs) -> anyhow::Result<u8> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("exec-child needs a command"))?;
    #[cfg(target_os = "linux")]
    {
        use nix::sys::signal::Signal;
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .context("failed to ask for the parent-death signal")?;
        if nix::unistd::getppid().as_raw() != i32::try_from(args.parent).unwrap_or(-1) {
            // exec died before the signal was set: the command must not start orphaned.
            return Ok(u8::try_from(128 + Signal::SIGKILL as i32).unwrap_or(1));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = args.parent;
    let name = program.to_string_lossy().into_owned();
    #[cfg(unix)]
    let source = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(program).args(rest).exec()
    };
    #[cfg(not(unix))]
    let source = match std::process::Command::new(program).args(rest).status() {
        Ok(status) => return Ok(exit_code(status)),
        Err(e) => e,
    };
    Err(exit::Coded::new(match source.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { program: name },
        _ => Error::CannotRun {
            program: name,
            source,
        },
    })
    .into())
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(1);
        }
    }
    crate::exit::FAILURE
}

#[cfg(unix)]
mod forward {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::{Pid, getpgrp, tcgetpgrp};
    use tokio::signal::unix::{SignalKind, signal};

    /// The signals a supervisor passes on (SIGKILL and SIGSTOP cannot be caught).
    pub struct Signals {
        hup: tokio::signal::unix::Signal,
        int: tokio::signal::unix::Signal,
        quit: tokio::signal::unix::Signal,
        term: tokio::signal::unix::Signal,
        usr1: tokio::signal::unix::Signal,
        usr2: tokio::signal::unix::Signal,
    }

    impl Signals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self {
                hup: signal(SignalKind::hangup())?,
                int: signal(SignalKind::interrupt())?,
                quit: signal(SignalKind::quit())?,
                term: signal(SignalKind::terminate())?,
                usr1: signal(SignalKind::user_defined1())?,
                usr2: signal(SignalKind::user_defined2())?,
            })
        }

        pub async fn recv(&mut self) -> Signal {
            tokio::select! {
                _ = self.hup.recv() => Signal::SIGHUP,
                _ = self.int.recv() => Signal::SIGINT,
                _ = self.quit.recv() => Signal::SIGQUIT,
                _ = self.term.recv() => Signal::SIGTERM,
                _ = self.usr1.recv() => Signal::SIGUSR1,
                _ = self.usr2.recv() => Signal::SIGUSR2,
            }
        }
    }

    pub fn to_child(child: &tokio::process::Child, signal: Signal) {
        let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        // Ctrl-C and Ctrl-\ at a terminal reach the whole foreground process group, the
        // command included: passing them on would deliver them twice.
        if matches!(signal, Signal::SIGINT | Signal::SIGQUIT) && in_terminal_foreground() {
            return;
        }
        tracing::debug!(signal = signal.as_str(), "passing the signal on");
        let _ = kill(Pid::from_raw(pid), signal);
    }

    fn in_terminal_foreground() -> bool {
        tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == getpgrp())
    }
}

#[cfg(not(unix))]
mod forward {
    /// Without Unix signals only Ctrl-C exists, and the console delivers it to the command
    /// as well; there is nothing to pass on.
    pub struct Signals;
    pub enum Signal {}

    impl Signals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self)
        }
        pub async fn recv(&mut self) -> Signal {
            std::future::pending().await
        }
    }

    pub fn to_child(_child: &tokio::process::Child, signal: Signal) {
        match signal {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
        let not_found = exit::Coded::new(Error::NotFound {
            program: "x".into(),
        });
        let chain = anyhow::Error::new(not_found).context("exec failed");
        assert_eq!(exit::code_for(&chain), 127);
        assert_eq!(format!("{chain:#}"), "exec failed: command not found: 'x'");
    }
}
