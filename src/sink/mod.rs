//! Where tokens go: a file (atomically replaced) or standard output. The GitHub Actions
//! sinks live with that mode's file-command writer.

pub mod client_config;
pub mod file;

pub use file::TokenFile;
