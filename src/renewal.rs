//! The one renewal driver: fetch a token, hand it on, wait for its renewal point; on a
//! failure, back off (a transient one, never past the token in place) or wait long (a
//! rejection: a rotated Secret may fix it, hammering the provider will not). Every
//! renewer runs it: the sidecar, the broker's keepers and `exec`'s relay feed. What
//! differs between them is only where a token goes and what they count and log: their
//! [`Renewer`]. The timing is `crate::renew`'s pure functions.
//!
//! (`source::retry` is the other loop over a source: it gets one token before a deadline,
//! for the modes that end, and renews nothing.)

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::renew::{self, Policy};
use crate::shutdown::Hangup;
use crate::source::{FailureClass, FetchError, TokenSource};
use crate::token::{AccessToken, Tokens};

/// Where tokens come from: the token source, or a stand-in in tests.
pub trait Fetch {
    /// One attempt at a new token.
    fn fetch(&self) -> impl Future<Output = Result<Tokens, FetchError>> + Send;
}

impl Fetch for TokenSource {
    fn fetch(&self) -> impl Future<Output = Result<Tokens, FetchError>> + Send {
        TokenSource::fetch(self)
    }
}

/// One renewer's part: where a token goes, and what it counts and logs.
pub trait Renewer {
    /// Puts a new token where it goes. An error is retried with backoff, and the token
    /// in place stays.
    fn deliver(&mut self, token: &AccessToken) -> anyhow::Result<()>;

    /// The policy that times the renewal of `token` (the broker's keepers adjust the
    /// base to the token's life).
    fn policy(&self, base: &Policy, _token: &AccessToken) -> Policy {
        base.clone()
    }

    /// A token was delivered; the next renewal comes after `wait`.
    fn renewed(&mut self, _token: &AccessToken, _wait: Duration) {}

    /// A fetch failed; the next attempt comes after `wait`.
    fn fetch_failed(&mut self, _error: FetchError, _wait: Duration) {}

    /// A delivery failed; the next attempt comes after `wait`.
    fn deliver_failed(&mut self, _error: anyhow::Error, _wait: Duration) {}

    /// The clock (tests move it with tokio's paused time).
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// A uniform draw in [0, 1) for the jitter.
    fn draw(&self) -> f64 {
        renew::draw()
    }
}

/// Renews until `cancel`. With a `first` token in place, the first fetch comes at its
/// renewal point; without one, at once. With `hangup`, SIGHUP renews at once (the
/// sidecar: re-read the credentials now). Failures never end the loop.
pub async fn run<F, R>(
    source: &F,
    base: &Policy,
    first: Option<AccessToken>,
    renewer: &mut R,
    mut hangup: Option<Hangup>,
    cancel: &CancellationToken,
) where
    F: Fetch + ?Sized,
    R: Renewer,
{
    let mut attempt = 0u32;
    let point = |renewer: &R, token: &AccessToken| {
        renew::next_renewal(
            token,
            renewer.now(),
            &renewer.policy(base, token),
            renewer.draw(),
        )
    };
    let mut wait = first.as_ref().map(|t| point(renewer, t));
    let mut held = first;
    loop {
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = sighup(&mut hangup) => tracing::info!("SIGHUP: re-reading the credentials and renewing now"),
                _ = cancel.cancelled() => return,
            }
        }
        let result = tokio::select! {
            r = source.fetch() => r,
            _ = cancel.cancelled() => return,
        };
        wait = Some(match result {
            Ok(tokens) => match renewer.deliver(&tokens.access) {
                Ok(()) => {
                    attempt = 0;
                    let token = tokens.access;
                    let next = point(renewer, &token);
                    renewer.renewed(&token, next);
                    held = Some(token);
                    next
                }
                Err(e) => {
                    let next = renew::backoff(attempt, None, base, renewer.draw());
                    attempt = attempt.saturating_add(1);
                    renewer.deliver_failed(e, next);
                    next
                }
            },
            Err(e) => {
                let next = match e.class() {
                    FailureClass::Transient => {
                        let left = held.as_ref().map(|t| t.remaining(renewer.now()));
                        let next =
                            renew::retry_wait(attempt, e.retry_after(), base, renewer.draw(), left);
                        attempt = attempt.saturating_add(1);
                        next
                    }
                    FailureClass::Permanent => renew::after_rejection(base, renewer.draw()),
                };
                renewer.fetch_failed(e, next);
                next
            }
        });
    }
}

async fn sighup(hangup: &mut Option<Hangup>) {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    /// A clock that follows tokio's (paused) time.
    #[derive(Clone)]
    struct Clock {
        start: tokio::time::Instant,
    }

    impl Clock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_000_000) + self.start.elapsed()
        }
    }

    /// Issues tokens of `life` at the clock's now; fails when the script says so.
    struct Issuer {
        clock: Clock,
        life: Duration,
        script: Mutex<Vec<Option<FetchError>>>,
        fetched_at: Arc<Mutex<Vec<SystemTime>>>,
    }

    impl Fetch for Issuer {
        fn fetch(&self) -> impl Future<Output = Result<Tokens, FetchError>> + Send {
            let now = self.clock.now();
            self.fetched_at.lock().unwrap().push(now);
            let failure = self.script.lock().unwrap().pop().flatten();
            let life = self.life;
            async move {
                match failure {
                    Some(e) => Err(e),
                    None => Ok(Tokens {
                        access: AccessToken::new("t".to_string().into(), now, now + life),
                        refresh: None,
                    }),
                }
            }
        }
    }

    struct Recorder {
        clock: Clock,
        draw: f64,
        policy: fn(&Policy, &AccessToken) -> Policy,
        delivered: Vec<AccessToken>,
        waits: Vec<Duration>,
    }

    impl Renewer for Recorder {
        fn deliver(&mut self, token: &AccessToken) -> anyhow::Result<()> {
            self.delivered.push(token.clone());
            Ok(())
        }
        fn policy(&self, base: &Policy, token: &AccessToken) -> Policy {
            (self.policy)(base, token)
        }
        fn fetch_failed(&mut self, _error: FetchError, wait: Duration) {
            self.waits.push(wait);
        }
        fn now(&self) -> SystemTime {
            self.clock.now()
        }
        fn draw(&self) -> f64 {
            self.draw
        }
    }

    fn unreachable() -> FetchError {
        FetchError::Unreachable {
            url: "https://idp.invalid/token".into(),
            reason: "connection refused".into(),
        }
    }

    /// Runs the driver over `lives` token lives; answers when each token was fetched
    /// and the tokens delivered.
    async fn drive(
        life: Duration,
        lives: u32,
        draw: f64,
        policy: fn(&Policy, &AccessToken) -> Policy,
        script: Vec<Option<FetchError>>,
    ) -> (Vec<SystemTime>, Recorder) {
        let clock = Clock {
            start: tokio::time::Instant::now(),
        };
        let fetched_at = Arc::new(Mutex::new(Vec::new()));
        let issuer = Issuer {
            clock: clock.clone(),
            life,
            script: Mutex::new(script.into_iter().rev().collect()),
            fetched_at: fetched_at.clone(),
        };
        let mut recorder = Recorder {
            clock,
            draw,
            policy,
            delivered: Vec::new(),
            waits: Vec::new(),
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let window = life * lives;
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            stop.cancel();
        });
        run(
            &issuer,
            &Policy::default(),
            None,
            &mut recorder,
            None,
            &cancel,
        )
        .await;
        let at = fetched_at.lock().unwrap().clone();
        (at, recorder)
    }

    const LIVES_S: [u64; 7] = [5, 12, 20, 45, 300, 900, 3600];

    fn with_lead(base: &Policy, _: &AccessToken) -> Policy {
        Policy {
            lead: crate::relay::CLIENT_LEAD,
            ..base.clone()
        }
    }

    fn plain(base: &Policy, _: &AccessToken) -> Policy {
        base.clone()
    }

    /// The property: for every renewer's policy and any life from 5 s to 1 h, each token
    /// is renewed once (one fetch per token, never a spin), within its band of the life:
    /// 70 to 80% for a plain token file; 50 to 80% with the relay's lead (earlier for
    /// short tokens, never before half); 40 to 65% for the broker's keepers (ahead of the
    /// renewers they serve). The bands are written out here, not read from the code.
    #[tokio::test(start_paused = true)]
    async fn every_renewer_renews_each_token_once_within_its_band() {
        type Rule = fn(&Policy, &AccessToken) -> Policy;
        let policies: [(&str, Rule, f64, f64); 3] = [
            ("sidecar, token file only", plain, 0.7, 0.8),
            ("relay modes (sidecar, exec)", with_lead, 0.5, 0.8),
            (
                "broker keeper",
                |base, token| crate::broker::keeper::keeper_policy(base, token.lifetime()),
                0.4,
                0.65,
            ),
        ];
        for (name, policy, low, high) in policies {
            for secs in LIVES_S {
                for draw in [0.0, 0.37, 0.99] {
                    let life = Duration::from_secs(secs);
                    let (at, rec) = drive(life, 12, draw, policy, vec![]).await;
                    // One fetch per delivered token: no failure, so no fetch without one.
                    assert_eq!(at.len(), rec.delivered.len(), "{name} {secs}s");
                    assert!(
                        rec.delivered.len() >= 12,
                        "{name} {secs}s: {}",
                        rec.delivered.len()
                    );
                    for pair in rec.delivered.windows(2) {
                        let (held, next) = (&pair[0], &pair[1]);
                        let into = next
                            .issued_at()
                            .duration_since(held.issued_at())
                            .unwrap()
                            .as_secs_f64();
                        let (lo, hi) = (low * secs as f64, high * secs as f64);
                        assert!(
                            into >= lo - 0.01 && into <= hi + 0.01,
                            "{name}, {secs}s, draw {draw}: renewed {into:.2}s into the life, outside {lo:.2}..{hi:.2}"
                        );
                    }
                }
            }
        }
    }

    /// Transient failures back off but never wait past the token in place; a rejection
    /// waits the long `rejected_retry`; a success after failures goes back to the plan.
    #[tokio::test(start_paused = true)]
    async fn failures_back_off_within_the_held_token_and_rejections_wait_long() {
        let life = Duration::from_secs(20);
        let script = vec![
            None,
            Some(unreachable()),
            Some(unreachable()),
            Some(unreachable()),
            Some(unreachable()),
            Some(unreachable()),
            Some(unreachable()),
            None,
        ];
        let (at, rec) = drive(life, 3, 0.99, plain, script).await;
        assert_eq!(rec.waits.len(), 6);
        // Renewal at 70% (14 s), then six failures: no wait started while the first
        // token lived ends after it (the last retries come at its expiry at the latest,
        // then back off plainly), and the success after them is delivered.
        let first = rec.delivered[0].expires_at();
        for pair in at.windows(2) {
            if pair[0] < first {
                assert!(
                    pair[1] <= first,
                    "{:?} -> {:?}, expiry {first:?}",
                    pair[0],
                    pair[1]
                );
            }
        }
        assert!(rec.delivered.len() >= 2, "{}", rec.delivered.len());
        assert_eq!(rec.delivered[1].issued_at(), at[7]);
        let rejected = vec![
            None,
            Some(FetchError::Rejected {
                status: 401,
                error: Some("invalid_grant".into()),
                description: None,
                hint: String::new(),
            }),
        ];
        let (at, rec) = drive(Duration::from_secs(300), 1, 0.5, plain, rejected).await;
        assert_eq!(rec.waits.len(), 1);
        assert_eq!(rec.waits[0], Duration::from_secs(60), "{:?}", rec.waits);
        assert_eq!(at.len(), 3, "{at:?}");
    }
}
