//! One module per mode; each is a thin driver over the token source and the sinks.

pub mod broker;
pub mod doctor;
pub mod exec;
pub mod github_action;
pub mod init;
pub mod inject;
pub mod login;
pub mod logout;
pub mod probe;
pub mod sidecar;
pub mod status;
pub mod token;
pub mod webhook;

/// The token modes are I/O-bound and small: one thread keeps memory low.
pub(crate) fn current_thread<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// The servers (webhook, broker) take requests from many clients at once: use the cores.
/// The future gets the cancellation token of the one shutdown path.
pub(crate) fn multi_thread<T, F, Fut>(f: F) -> anyhow::Result<T>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move { f(crate::shutdown::on_signals()).await })
}
