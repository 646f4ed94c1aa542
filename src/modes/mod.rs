//! One module per mode; each is a thin driver over the token source and the sinks.

pub mod github_action;
pub mod init;
pub mod probe;
pub mod sidecar;
pub mod token;
