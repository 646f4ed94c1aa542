//! Fetching with retries until a deadline: what `token`, `init` and the GitHub Action do.
//! Permanent failures end at once; transient ones are retried with backoff.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::exit::Interrupted;
use crate::renew::{self, Policy};
use crate::source::{FailureClass, FetchError, TokenSource};
use crate::token::Tokens;

/// The last failure after retrying for as long as allowed.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempt(s) over {}s", elapsed.as_secs())]
pub struct GaveUp {
    pub attempts: u32,
    pub elapsed: Duration,
    #[source]
    pub last: FetchError,
}

/// Fetches tokens, retrying transient failures until `deadline` has passed.
pub async fn fetch_until(
    source: &TokenSource,
    deadline: Duration,
    policy: &Policy,
    cancel: &CancellationToken,
) -> anyhow::Result<Tokens> {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let result = tokio::select! {
            r = source.fetch() => r,
            _ = cancel.cancelled() => return Err(Interrupted.into()),
        };
        let err = match result {
            Ok(tokens) => return Ok(tokens),
            Err(e) if e.class() == FailureClass::Permanent => return Err(e.into()),
            Err(e) => e,
        };
        let wait = renew::backoff(attempt, err.retry_after(), policy, renew::draw());
        let elapsed = started.elapsed();
        if elapsed + wait >= deadline {
            return Err(GaveUp {
                attempts: attempt + 1,
                elapsed,
                last: err,
            }
            .into());
        }
        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, attempt = attempt + 1, "token request failed, retrying");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(Interrupted.into()),
        }
        attempt += 1;
    }
}
