//! A running `sidecar` and what the tests ask of it: its health endpoints, its metrics,
//! its log; killed and reaped on drop ([`Proc`]). The one wrapper of every suite (each
//! builds the command: the test IdP's, Keycloak's, a hostile environment's).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, http_get, wait_for};

pub struct Sidecar {
    proc: Proc,
    pub port: u16,
}

impl Sidecar {
    /// Starts `c` as `sidecar` on a free loopback port, writing `token`.
    pub fn start(c: &mut Command, token: &Path) -> Self {
        Self::start_with(c, token, &[] as &[&str])
    }

    /// [`Sidecar::start`] with the sidecar's `args`.
    pub fn start_with<A: AsRef<OsStr>>(c: &mut Command, token: &Path, args: &[A]) -> Self {
        let port = free_port();
        c.args(["sidecar", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", token);
        Self {
            proc: Proc::spawn(c),
            port,
        }
    }

    /// The value of the first sample of `name` on `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// The status of `/readyz`.
    pub fn ready(&self) -> Option<u16> {
        http_get(self.port, "/readyz").map(|(s, _)| s)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        self.proc.pid()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// Waits for `n` renewals, failing at once if the sidecar exits.
    pub fn wait_renewals(&mut self, n: f64, limit: Duration) {
        wait_for(limit, || {
            assert!(self.alive(), "the sidecar exited:\n{}", self.log());
            self.metric("polars_cloud_auth_renewals_total ")
                .filter(|r| *r >= n)
        });
    }

    #[cfg(unix)]
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.proc.signal(signal);
    }

    /// SIGTERM (SIGKILL after 30 s), then the exit code, stdout and stderr.
    pub fn stop(mut self) -> (Option<i32>, String, String) {
        let status = self.proc.stop(Duration::from_secs(30));
        (status.code(), self.proc.stdout(), self.proc.stderr())
    }
}
