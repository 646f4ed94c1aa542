//! Exit codes, documented in the README. The first error in the chain that we know
//! decides the code.

use std::process::ExitCode;

use crate::source::{FailureClass, FetchError};

/// Success.
pub const OK: u8 = 0;
/// Any other failure (a probe that finds no valid token, a `doctor` that finds a broken
/// link, an unexpected I/O error).
pub const FAILURE: u8 = 1;
/// Bad usage or configuration: a flag, the config file, missing credentials, an unusable
/// webhook certificate.
pub const USAGE: u8 = 2;
/// The identity provider rejected the credentials or the request.
pub const REJECTED: u8 = 3;
/// The identity provider could not be reached or kept failing until the deadline.
pub const UNREACHABLE: u8 = 4;
/// The token file could not be written.
pub const TOKEN_FILE: u8 = 5;
/// Stopped by a signal before finishing.
pub const INTERRUPTED: u8 = crate::shutdown::INTERRUPTED_CODE;

/// A failure that decides its own exit code. A mode whose failures have codes of their
/// own (`exec` answers 126 and 127 as a shell does) implements this for its error enum
/// and hands the error up as [`Coded`], so this module knows error kinds, never modes.
pub trait KnownCode: std::error::Error + Send + Sync + 'static {
    fn exit_code(&self) -> u8;
}

/// Carries a [`KnownCode`] error up an `anyhow` chain, where [`code_for`] finds it. It
/// shows and chains as the error it carries.
pub struct Coded(Box<dyn KnownCode>);

impl Coded {
    pub fn new(error: impl KnownCode) -> Self {
        Self(Box::new(error))
    }
}

impl std::fmt::Debug for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Coded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The exit code for an error chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return match (e, e.class()) {
                (FetchError::Credentials(_) | FetchError::Assertion(_), _) => USAGE,
                (_, FailureClass::Permanent) => REJECTED,
                (_, FailureClass::Transient) => UNREACHABLE,
            };
        }
        if cause.is::<crate::config::Error>()
            || cause.is::<crate::source::credentials::Error>()
            || cause.is::<crate::serve::tls::Error>()
        {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<crate::source::device::Error>() {
            use crate::source::device::Error as D;
            match e {
                D::Denied | D::Expired => return REJECTED,
                D::Interrupted => return INTERRUPTED,
                // The FetchError further down the chain decides.
                D::Authorize { .. } | D::Poll(_) => continue,
                D::BadAuthorization { .. } => return UNREACHABLE,
            }
        }
        if cause.is::<crate::sink::file::Error>() || cause.is::<crate::sink::client_config::Error>()
        {
            return TOKEN_FILE;
        }
        if let Some(e) = cause.downcast_ref::<Coded>() {
            return e.0.exit_code();
        }
        if cause.is::<crate::shutdown::Interrupted>() {
            return INTERRUPTED;
        }
    }
    FAILURE
}

/// Turns a code into what `main` returns.
pub fn to_exit_code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::device;

    #[test]
    fn device_login_outcomes_have_their_codes() {
        let code = |e: device::Error| code_for(&anyhow::Error::from(e).context("login failed"));
        assert_eq!(code(device::Error::Denied), REJECTED);
        assert_eq!(code(device::Error::Expired), REJECTED);
        assert_eq!(code(device::Error::Interrupted), INTERRUPTED);
        let unreachable = FetchError::Unreachable {
            url: "http://127.0.0.1:9".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            code(device::Error::Authorize {
                url: "u".into(),
                source: unreachable
            }),
            UNREACHABLE
        );
        let rejected = FetchError::Rejected {
            status: 400,
            error: Some("invalid_grant".into()),
            description: None,
            hint: String::new(),
        };
        assert_eq!(code(device::Error::Poll(rejected)), REJECTED);
    }
}
