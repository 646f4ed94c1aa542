//! One module per mode; each is a thin driver over the token source and the sinks.

pub mod init;
pub mod inject;
pub mod probe;
pub mod sidecar;
pub mod token;
pub mod webhook;
