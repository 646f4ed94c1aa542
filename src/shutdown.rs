//! One shutdown path: SIGTERM or SIGINT cancels a token every loop selects on; a second
//! signal ends the process at once.

use tokio_util::sync::CancellationToken;

/// The exit code of a process stopped by a signal before finishing (128 + SIGINT, as a
/// shell reports it); `exit::INTERRUPTED` documents it with the others.
pub const INTERRUPTED_CODE: u8 = 130;

/// Marks an error as an interruption (SIGINT or SIGTERM before the work was done).
#[derive(Debug, thiserror::Error)]
#[error("interrupted before a token was obtained")]
pub struct Interrupted;

/// Spawns the signal listener and returns the token it cancels.
///
/// It also takes SIGXFSZ away from its default action (end the process, leaving a
/// half-written temporary file and no message): with a handler installed, a write past
/// the file-size limit fails with EFBIG instead, which is reported like any write error.
pub fn on_signals() -> CancellationToken {
    catch_file_size_signal();
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if signal().await.is_err() {
            return;
        }
        tracing::info!("signal received, shutting down (send another to abort)");
        cancel.cancel();
        if signal().await.is_ok() {
            std::process::exit(i32::from(INTERRUPTED_CODE));
        }
    });
    token
}

#[cfg(unix)]
async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

#[cfg(unix)]
fn catch_file_size_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // tokio keeps the handler for the life of the process; the stream itself is not needed.
    let xfsz = SignalKind::from_raw(nix::sys::signal::Signal::SIGXFSZ as i32);
    if let Err(e) = signal(xfsz) {
        tracing::debug!(error = %e, "could not catch SIGXFSZ");
    }
}

#[cfg(not(unix))]
fn catch_file_size_signal() {}

/// SIGHUP for loops that give it a meaning (the sidecar renews at once). Creating it
/// replaces the default action, which would end the process without a word.
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                signal: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGHUP; never, where there is none.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Default for Hangup {
    fn default() -> Self {
        Self::new()
    }
}
