//! One shutdown path: SIGTERM or SIGINT cancels a token every loop selects on; a second
//! signal ends the process at once.

use tokio_util::sync::CancellationToken;

/// Spawns the signal listener and returns the token it cancels.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if signal().await.is_err() {
            return;
        }
        tracing::info!("signal received, shutting down (send another to abort)");
        cancel.cancel();
        if signal().await.is_ok() {
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
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
