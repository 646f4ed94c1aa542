//! `probe`: an exec probe. Exit 0 when the token file holds a token valid long enough.

use std::time::{Duration, SystemTime};

use crate::cli::ProbeArgs;
use crate::config::{ConfigFile, overlay};
use crate::sink::TokenFile;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing or unreadable or holds no token.
    #[error(transparent)]
    File(#[from] crate::sink::file::Error),
    /// The token expires too soon.
    #[error("the token in '{path}' expires in {left}s, less than the required {need}s")]
    TooShort { path: String, left: u64, need: u64 },
}

/// `polars-cloud-auth probe`: a failed check is exit 1 with the reason on stderr.
pub fn command(args: ProbeArgs, file: &ConfigFile) -> anyhow::Result<u8> {
    let token_file = overlay(&args.file, &file.token_file)?.pod_token_file();
    match run(&token_file, args.min_valid.0) {
        Ok(left) => {
            println!("ok: token valid for {}s", left.as_secs());
            Ok(crate::exit::OK)
        }
        Err(e) => {
            eprintln!("not ready: {:#}", anyhow::Error::from(e));
            Ok(crate::exit::FAILURE)
        }
    }
}

pub fn run(file: &TokenFile, min_valid: Duration) -> Result<Duration, Error> {
    let token = file.read()?;
    let now = SystemTime::now();
    let min_valid = crate::renew::margin_for(token.lifetime(), min_valid);
    if token.valid_for(now, min_valid) {
        Ok(token.remaining(now))
    } else {
        Err(Error::TooShort {
            path: file.path().display().to_string(),
            left: token.remaining(now).as_secs(),
            need: min_valid.as_secs(),
        })
    }
}
