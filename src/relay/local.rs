//! The relay for one child process (`exec`): a private directory with the child's
//! `config.toml` and legacy token files (rewritten at every renewal), the relay's keys and
//! the CA bundle; the CONNECT proxy that routes the child's token requests to the relay;
//! and a feed that keeps the relay's token fresh, from our own renewals or from a token
//! file someone else renews (a sidecar's).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::endpoint::Relay;
use super::{CLIENT_LEAD, Settings, auth_host, proxy};
use crate::renew::{self, Policy};
use crate::renewal::{self, Renewer};
use crate::sink::TokenFile;
use crate::source::{FetchError, TokenSource};
use crate::token::AccessToken;
use crate::vars;

/// Where the relay's token comes from.
pub enum Feed {
    /// Our own renewals with these credentials.
    Source(Arc<TokenSource>, Policy),
    /// A token file that another process keeps fresh; read again as its token nears
    /// the client's refresh.
    File(TokenFile),
}

/// A running relay for one child.
pub struct Local {
    dir: PathBuf,
    proxy: std::net::SocketAddr,
    settings: Settings,
    cancel: CancellationToken,
}

impl Local {
    /// Makes the private directory, seeds it with `first`, and starts the proxy and the
    /// feed. Everything stops with `cancel` (and the directory goes with [`Local::close`]).
    pub async fn start(
        domain: &str,
        first: AccessToken,
        feed: Feed,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let dir = private_dir().context("failed to make a private directory for the relay")?;
        let settings = Settings {
            domain: domain.to_string(),
            state_dir: dir.join("state"),
            client_configs: vec![dir.join("client")],
            ca_bundle: dir.join(super::CA_BUNDLE_FILE),
            system_roots: std::env::var_os(vars::SSL_CERT_FILE)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| super::SYSTEM_ROOTS.into()),
            file_mode: 0o600,
        };
        let prepared = Arc::new(
            super::prepare(&settings, &first, SystemTime::now())
                .context("failed to set up the relay for the command's client")?,
        );
        let (publish, current) = watch::channel(Some(first.clone()));
        let relay = Relay::new(prepared.clone(), current);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("failed to listen on loopback for the command's proxy")?;
        let addr = listener.local_addr()?;
        let upstream = proxy::Upstream::from_env(|k| std::env::var(k).ok());
        tokio::spawn(proxy::serve(
            listener,
            relay,
            auth_host(domain),
            upstream,
            cancel.clone(),
        ));
        let files = Files {
            prepared,
            settings: settings.clone(),
        };
        tokio::spawn(run_feed(feed, first, publish, files, cancel.clone()));
        tracing::debug!(proxy = %addr, dir = %dir.display(), "relay for the command started");
        Ok(Self {
            dir,
            proxy: addr,
            settings,
            cancel,
        })
    }

    /// The variables to set for the child; the caller also removes
    /// `POLARS_CLOUD_ACCESS_TOKEN` (it would win over config.toml and never be renewed).
    pub fn child_env(&self, real_domain: &str) -> BTreeMap<&'static str, OsString> {
        let mut env = BTreeMap::new();
        let proxy = OsString::from(format!("http://{}", self.proxy));
        env.insert(vars::HTTPS_PROXY, proxy.clone());
        env.insert("https_proxy", proxy);
        env.insert(
            vars::CONFIG_DIR,
            self.settings.client_configs[0].clone().into(),
        );
        env.insert(vars::DOMAIN, self.settings.domain.clone().into());
        env.insert(vars::SSL_CERT_FILE, self.settings.ca_bundle.clone().into());
        if std::env::var_os(vars::API_ADDR).is_none() {
            env.insert(vars::API_ADDR, format!("https://api.{real_domain}").into());
        }
        env
    }

    /// Stops the relay and removes its directory (keys and the child's config.toml).
    pub fn close(self) {
        self.cancel.cancel();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "failed to remove the relay's directory");
        }
    }
}

/// Whether the child's `NO_PROXY` would send its token requests around the proxy.
pub fn no_proxy_bypasses(no_proxy: Option<&str>) -> bool {
    no_proxy.is_some_and(|v| v.split(',').any(|p| p.trim() == "*"))
}

/// The private directories' names: this prefix, then the owner's pid and start time.
const DIR_PREFIX: &str = "polars-cloud-auth-exec-";

fn private_dir() -> std::io::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let me = Owner {
        pid,
        start: process_start(pid).unwrap_or(0),
        ns: pid_namespace().unwrap_or(0),
    };
    let dir = base.join(dir_name(&me, rand::random::<u32>()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir)?;
    remove_leftovers(&base, &dir);
    Ok(dir)
}

/// The process that made a private directory: its pid, when it started (with the pid,
/// one process even after the pid is reused) and its pid namespace (a pid means nothing
/// in another one, as when containers share a /tmp).
#[derive(Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start: u64,
    ns: u64,
}

/// The name of `owner`'s private directory. Pure.
fn dir_name(owner: &Owner, nonce: u32) -> String {
    format!(
        "{DIR_PREFIX}{}-{}-{}-{nonce:08x}",
        owner.pid, owner.start, owner.ns
    )
}

/// The owner a private directory's name gives; `None` for other names, and for those of
/// older releases (a pid and a random number only), which cannot be told apart from a
/// live run's. Pure.
fn dir_owner(name: &str) -> Option<Owner> {
    let parts: Vec<&str> = name.strip_prefix(DIR_PREFIX)?.split('-').collect();
    match parts[..] {
        [pid, start, ns, _] => Some(Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            ns: ns.parse().ok()?,
        }),
        _ => None,
    }
}

/// Our pid namespace's inode number (`/proc/self/ns/pid` reads `pid:[NUMBER]`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`, field 22):
/// with the pid it names one process, even after the pid is reused.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that made a private directory is gone (killed before it could
/// remove it). Only a process of our own pid namespace can be judged; without `/proc`
/// nothing is known, and nothing is removed.
fn owner_gone(owner: &Owner) -> bool {
    match pid_namespace() {
        Some(ns) if ns != 0 && ns == owner.ns => {}
        _ => return false,
    }
    process_start(owner.pid) != Some(owner.start)
}

/// Removes the private directories (keys, the child's config.toml) that runs killed
/// before they could clean up left in `base`: only real directories (no symlink is
/// followed), only those owned by the same user as `ours`, only when their owner is gone.
fn remove_leftovers(base: &std::path::Path, ours: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(me) = std::fs::symlink_metadata(ours).map(|m| m.uid()) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == ours {
                continue;
            }
            let Some(owner) = entry.file_name().to_str().and_then(dir_owner) else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_dir() || meta.uid() != me || !owner_gone(&owner) {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "removed the relay directory of an exec that was killed")
                }
                Err(e) => {
                    tracing::debug!(dir = %path.display(), error = %e, "failed to remove a leftover relay directory")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (base, ours);
}

/// The child's config directory, rewritten at every renewal (the legacy token files that
/// clients before 0.12 read again at every call).
struct Files {
    prepared: Arc<super::Prepared>,
    settings: Settings,
}

async fn run_feed(
    feed: Feed,
    first: AccessToken,
    publish: watch::Sender<Option<AccessToken>>,
    files: Files,
    cancel: CancellationToken,
) {
    let mut out = ToCommand {
        current: first.clone(),
        publish,
        files,
    };
    match feed {
        Feed::Source(source, policy) => {
            let policy = Policy {
                lead: CLIENT_LEAD,
                ..policy
            };
            renewal::run(
                source.as_ref(),
                &policy,
                Some(first),
                &mut out,
                None,
                &cancel,
            )
            .await
        }
        Feed::File(file) => follow_file(&file, &mut out, &cancel).await,
    }
}

/// Where the command's tokens go: the relay, and the child's files.
struct ToCommand {
    current: AccessToken,
    publish: watch::Sender<Option<AccessToken>>,
    files: Files,
}

impl ToCommand {
    /// Takes `token` when it is newer than the one held; answers whether it was.
    fn take(&mut self, token: &AccessToken) -> bool {
        if token.expires_at() <= self.current.expires_at() {
            return false;
        }
        tracing::info!(
            expires_in = token.remaining(SystemTime::now()).as_secs(),
            "token renewed for the command"
        );
        self.publish.send_replace(Some(token.clone()));
        if let Err(e) = self
            .files
            .prepared
            .seed(&self.files.settings, token, SystemTime::now())
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "failed to rewrite the command's token files; clients before 0.12 keep the last token until they refresh through the relay"
            );
        }
        self.current = token.clone();
        true
    }
}

impl Renewer for ToCommand {
    fn deliver(&mut self, token: &AccessToken) -> anyhow::Result<()> {
        self.take(token);
        Ok(())
    }

    fn fetch_failed(&mut self, error: FetchError, wait: Duration) {
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::from(error)),
            retry_in_ms = wait.as_millis() as u64,
            "renewal for the command failed; the last token stays"
        );
    }
}

/// Follows a token file someone else renews (a sidecar's): read again when the client
/// will want a new token; a sidecar renews well before that. Reading a file is not a
/// renewal, so this is not the renewal driver: it only looks.
async fn follow_file(file: &TokenFile, out: &mut ToCommand, cancel: &CancellationToken) {
    let policy = Policy::default();
    let mut attempt = 0u32;
    let mut late_warned = false;
    loop {
        let wait = out
            .current
            .remaining(SystemTime::now())
            .saturating_sub(CLIENT_LEAD)
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        match file.read() {
            Ok(token) => {
                attempt = 0;
                // The file still holds the token we have: look again shortly.
                if !out.take(&token)
                    && !late_warned
                    && out.current.remaining(SystemTime::now()) < CLIENT_LEAD
                {
                    late_warned = true;
                    tracing::warn!(
                        lead_s = CLIENT_LEAD.as_secs(),
                        "the token file is renewed later than this before expiry: the command's client refreshes through the relay meanwhile, and polars-cloud 0.10 and older (which cannot) fail; renew the file earlier (--renew-at)"
                    );
                }
            }
            Err(e) => {
                let wait = renew::backoff(attempt, None, &policy, renew::draw());
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    retry_in_ms = wait.as_millis() as u64,
                    "renewal for the command failed; the last token stays"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_name_their_owner() {
        let owner = Owner {
            pid: 4242,
            start: 987654,
            ns: 4026531836,
        };
        let name = dir_name(&owner, 0xabc);
        assert_eq!(
            name,
            "polars-cloud-auth-exec-4242-987654-4026531836-00000abc"
        );
        assert_eq!(dir_owner(&name), Some(owner));
        // An older release's name: its owner cannot be judged, it stays.
        assert_eq!(dir_owner("polars-cloud-auth-exec-17-0000beef"), None);
        assert_eq!(dir_owner("polars-cloud-auth-exec-x-1-2-3"), None);
        assert_eq!(dir_owner("something-else-1-2-3-4"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_dead_owner_of_our_pid_namespace_is_gone() {
        let me = Owner {
            pid: std::process::id(),
            start: process_start(std::process::id()).unwrap(),
            ns: pid_namespace().unwrap(),
        };
        assert!(!owner_gone(&me));
        assert!(owner_gone(&Owner {
            start: me.start + 1,
            ..me
        }));
        assert!(!owner_gone(&Owner {
            start: me.start + 1,
            ns: me.ns + 1,
            ..me
        }));
    }

    #[test]
    fn only_a_wildcard_no_proxy_sends_the_token_requests_around_the_proxy() {
        assert!(no_proxy_bypasses(Some("localhost, *")));
        assert!(!no_proxy_bypasses(Some(".corp,127.0.0.1")));
        assert!(!no_proxy_bypasses(None));
    }
}
