//! Logging to stderr (stdout belongs to tokens and generated output).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. The filter quiets the HTTP stack unless asked.
pub fn init(args: &LogArgs) {
    let level = args.log_level.clone().unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(format!(
        "{level},hyper=warn,h2=warn,rustls=warn,reqwest=warn"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match args.log_format.unwrap_or_default() {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
