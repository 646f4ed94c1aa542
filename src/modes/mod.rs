//! One module per mode; each is a thin driver over the token source and the sinks.

pub mod broker;
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
