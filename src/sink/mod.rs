//! Where tokens go: a file (atomically replaced), standard output, or GitHub Actions'
//! file commands (`github`).

pub mod client_config;
pub mod file;
pub mod github;
pub mod stored;

pub use file::TokenFile;
