//! Fetching with retries until a deadline: what `token`, `init` and the GitHub Action do.
//! Permanent failures end at once; transient ones are retried with backoff.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::renew::{self, Policy};
use crate::shutdown::Interrupted;
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
    fetch_at_most(source, u32::MAX, deadline, policy, cancel).await
}

/// Below this much time left, another attempt is not worth starting.
const LEAST_ATTEMPT: Duration = Duration::from_millis(50);

/// [`fetch_until`], but giving up after `attempts` attempts too (the GitHub Action's
/// `retries` input is `attempts - 1`).
///
/// `deadline` is a deadline: each attempt is cut off at it (however long `--http-timeout`
/// would allow), and a backoff or `Retry-After` that would pass it is shortened to half
/// the time left, so the attempts go on until the deadline instead of stopping early.
pub async fn fetch_at_most(
    source: &TokenSource,
    attempts: u32,
    deadline: Duration,
    policy: &Policy,
    cancel: &CancellationToken,
) -> anyhow::Result<Tokens> {
    let started = Instant::now();
    let ends = started.checked_add(deadline);
    let left = || {
        ends.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        })
    };
    let mut attempt = 0u32;
    loop {
        let result = tokio::select! {
            r = source.fetch() => r,
            _ = tokio::time::sleep(left()) => Err(FetchError::Unreachable {
                url: source.settings().endpoints.token.to_string(),
                reason: format!("no answer before the --timeout of {}s", deadline.as_secs()),
            }),
            _ = cancel.cancelled() => return Err(Interrupted.into()),
        };
        let err = match result {
            Ok(tokens) => return Ok(tokens),
            Err(e) if e.class() == FailureClass::Permanent => return Err(e.into()),
            Err(e) => e,
        };
        let mut wait = renew::backoff(attempt, err.retry_after(), policy, renew::draw());
        let remaining = left();
        if wait + LEAST_ATTEMPT > remaining {
            wait = remaining / 2;
        }
        if attempt + 1 >= attempts || remaining.saturating_sub(wait) < LEAST_ATTEMPT {
            return Err(GaveUp {
                attempts: attempt + 1,
                elapsed: started.elapsed(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::credentials::{Credentials, Sources};
    use crate::source::{Endpoints, Grant, HttpSettings, Settings, http_client};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback token endpoint that answers every request with 503 and counts them.
    async fn always_unavailable() -> (url::Url, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let issuer = url::Url::parse(&format!("http://{addr}/realms/Polars")).unwrap();
        (issuer, count)
    }

    #[tokio::test]
    async fn gives_up_after_the_allowed_attempts() {
        let (issuer, count) = always_unavailable().await;
        let source = TokenSource::new(
            http_client(&HttpSettings::default()).unwrap(),
            Settings {
                endpoints: Endpoints::new(issuer, None).unwrap(),
                grant: Grant::ServiceAccount,
                credentials: Credentials::from_sources(Sources {
                    client_id: Some("sa".into()),
                    client_secret: Some("secret".into()),
                    ..Sources::default()
                }),
                scope: None,
                audience: None,
            },
        );
        let policy = Policy {
            backoff_base: Duration::from_millis(1),
            ..Policy::default()
        };
        let cancel = CancellationToken::new();
        let err = fetch_at_most(&source, 3, Duration::from_secs(60), &policy, &cancel)
            .await
            .unwrap_err();
        let gave_up = err.downcast_ref::<GaveUp>().expect("a GaveUp error");
        assert_eq!(gave_up.attempts, 3);
        assert!(matches!(
            gave_up.last,
            FetchError::Unavailable { status: 503, .. }
        ));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }
}
