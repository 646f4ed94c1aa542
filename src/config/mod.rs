//! Settings: one set of argument groups, parsed from flags and their `POLARS_CLOUD_*`
//! twins by clap, from an optional YAML file by serde, and merged (flags and environment
//! win over the file; defaults apply last). The file's JSON Schema is derived from the
//! same types.

mod args;
mod file;
mod resolve;

use std::path::PathBuf;

use crate::source::{self, credentials};

pub use args::{
    BrokerArgs, ClientAuthKind, DEFAULT_BROKER_AUDIENCE, FileArgs, GrantKind, IdpArgs, InjectArgs,
    LogArgs, LogFormat, RelayArgs, RenewArgs, ServeArgs, WebhookArgs,
};
pub use file::{ConfigFile, schema_json};
pub use resolve::overlay;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("failed to read config file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the schema (`polars-cloud-auth schema`).
    #[error("config file '{}' is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// Internal: merging flags over the file failed.
    #[error("failed to merge flags with the config file: {0}")]
    Merge(String),
    /// The endpoint settings are unusable.
    #[error(transparent)]
    Endpoint(#[from] source::EndpointError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Http(#[from] source::HttpError),
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// A setting that parses but makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    fn merge(e: serde_json::Error) -> Self {
        Self::Merge(e.to_string())
    }
}

#[cfg(test)]
mod tests;
