//! A running `login`, its output collected as it comes; killed when dropped ([`Proc`]).
//! The one driver of the suites that sign a person in (the test IdP's pages in
//! `login.rs`, Keycloak's own in `keycloak.rs`): start it, read the verification URL from
//! its prompt, have the URL approved, collect the end.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::{Proc, wait_for};

pub struct Login {
    proc: Proc,
}

impl Login {
    /// Starts `c`, a `login` command line.
    pub fn start(c: &mut Command) -> Self {
        Self {
            proc: Proc::spawn(c),
        }
    }

    /// The verification URL from the prompt.
    pub fn url(&self) -> String {
        wait_for(Duration::from_secs(20), || {
            self.proc
                .stderr()
                .lines()
                .find(|l| l.starts_with("    http"))
                .map(|l| l.trim().to_string())
        })
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Waits for the end (30 s at most): the status, stdout and stderr.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let status = self.proc.wait_timeout(Duration::from_secs(30));
        (status, self.proc.stdout(), self.proc.stderr())
    }
}
