//! When to renew and how long to wait after a failure: pure functions of the token, the
//! clock and a random draw, so every decision is unit-tested without sleeping.

use std::time::{Duration, SystemTime};

use crate::token::AccessToken;

/// How renewals and retries are spaced.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Renew when this fraction of the token's life has passed (0.8 by default).
    pub renew_at: f64,
    /// Up to this fraction of the life is taken off at random, so that many replicas
    /// started together do not renew together.
    pub jitter: f64,
    /// Never renew more often than this, whatever the token's life.
    pub min_interval: Duration,
    /// First retry delay after a transient failure; doubles each time.
    pub backoff_base: Duration,
    /// The longest wait between retries after transient failures.
    pub backoff_cap: Duration,
    /// The wait after the identity provider rejected the credentials (sidecar only):
    /// a rotated Secret may fix it, hammering the provider will not.
    pub rejected_retry: Duration,
    /// Renew at least this long before expiry, whatever `renew_at` says: the relay's
    /// clients ask for a new token when about 10 s are left, and must get a fresh one.
    pub lead: Duration,
    /// The earliest fraction of the life a lead may bring the renewal to ([`EARLIEST`]
    /// for every renewer of its own token; the broker's keepers go earlier, to stay
    /// ahead of the renewers they serve: `crate::broker::keeper::EARLIEST`).
    pub earliest: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            renew_at: 0.8,
            jitter: 0.1,
            min_interval: Duration::from_secs(1),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            rejected_retry: Duration::from_secs(60),
            lead: Duration::ZERO,
            earliest: EARLIEST,
        }
    }
}

/// The earliest point of a token's life at which a lead may bring its renewal: a token is
/// never renewed before half of its life has passed, so each token is renewed once and
/// the provider sees at most one request per half life, whatever the lead or the life.
pub const EARLIEST: f64 = 0.5;

/// How long to wait from `now` before renewing `token`: the one renewal rule, used by every
/// renewer (the sidecar, the broker's keepers, exec's feed).
///
/// The point is `renew_at` of the life (0.8), up to `jitter` of it earlier at random. A
/// `lead` brings it earlier, to `lead` before expiry, but never before [`EARLIEST`] of the
/// life: with tokens shorter than about twice the lead, the lead cannot be had, and
/// renewing every second would not give it either. A token already past its point (the
/// provider handed back the one we hold, or we are late) is asked for again after half of
/// what it has left, so repeated asks thin out instead of spinning. The
/// wait is never below `min_interval`, and never past the token's expiry unless that floor
/// pushes it there.
pub fn next_renewal(token: &AccessToken, now: SystemTime, policy: &Policy, draw: f64) -> Duration {
    let life = token.lifetime();
    let fraction = (policy.renew_at - policy.jitter * draw.clamp(0.0, 1.0)).clamp(0.05, 0.99);
    let planned = token.issued_at() + life.mul_f64(fraction);
    let earliest = token.issued_at() + life.mul_f64(policy.earliest.min(fraction));
    let led = token
        .expires_at()
        .checked_sub(policy.lead)
        .unwrap_or(earliest);
    let point = planned.min(led.max(earliest));
    let remaining = token.remaining(now);
    let wait = match point.duration_since(now) {
        Ok(wait) if !wait.is_zero() => wait.min(remaining),
        _ => remaining / 2,
    };
    wait.max(policy.min_interval)
}

/// The wait before retry number `attempt` (0 for the first) after a transient failure:
/// capped exponential backoff with full jitter, but not shorter than what the server
/// asked for with `Retry-After`. That is advice: it never stretches the wait past
/// `backoff_cap` (`--max-backoff`), so one `Retry-After: 100000` cannot park us for hours.
pub fn backoff(
    attempt: u32,
    retry_after: Option<Duration>,
    policy: &Policy,
    draw: f64,
) -> Duration {
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(policy.backoff_cap);
    let jittered = ceiling.mul_f64(draw.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) => jittered.max(asked.min(policy.backoff_cap)),
        None => jittered,
    }
}

/// [`backoff`] for a renewer that holds a token with `token_left` to live: the wait never
/// outlasts that token, so a healthy-again provider is asked before the file expires.
/// Once the token has expired (zero or none left), plain [`backoff`] spaces the retries.
pub fn retry_wait(
    attempt: u32,
    retry_after: Option<Duration>,
    policy: &Policy,
    draw: f64,
    token_left: Option<Duration>,
) -> Duration {
    let wait = backoff(attempt, retry_after, policy, draw);
    match token_left {
        Some(left) if !left.is_zero() => wait.min(left),
        _ => wait,
    }
}

/// The wait after a rejection, with a little jitter so a fleet does not retry in step.
pub fn after_rejection(policy: &Policy, draw: f64) -> Duration {
    policy
        .rejected_retry
        .mul_f64(0.9 + 0.2 * draw.clamp(0.0, 1.0))
}

/// The readiness margin when none is given.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(30);

/// The margin a readiness check asks of a token of `lifetime`: the one given, else 30 s
/// but never more than a tenth of the life. A token is renewed when a fifth to three
/// tenths of its life are left, so with short tokens a fixed 30 s would fail between
/// renewals, and a token living less than 30 s would never pass at all.
pub fn margin(given: Option<Duration>, lifetime: Duration) -> Duration {
    given.unwrap_or_else(|| DEFAULT_MARGIN.min(lifetime.mul_f64(0.1)))
}

/// A uniform draw in [0, 1) for the functions above.
pub fn draw() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn token(issued: u64, life: u64) -> AccessToken {
        let at = UNIX_EPOCH + Duration::from_secs(issued);
        AccessToken::new("t".to_string().into(), at, at + Duration::from_secs(life))
    }

    fn secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn renews_at_eighty_percent_without_jitter() {
        let p = Policy::default();
        // Keycloak's default 300 s: renew 240 s after issue.
        assert_eq!(
            next_renewal(&token(1000, 300), secs(1000), &p, 0.0),
            Duration::from_secs(240)
        );
        // Asked later, the wait shrinks accordingly.
        assert_eq!(
            next_renewal(&token(1000, 300), secs(1100), &p, 0.0),
            Duration::from_secs(140)
        );
    }

    #[test]
    fn readiness_margins_shrink_with_short_tokens() {
        let life = |s| token(0, s).lifetime();
        assert_eq!(margin(None, life(300)), DEFAULT_MARGIN);
        assert_eq!(margin(None, life(40)), Duration::from_secs(4));
        assert_eq!(margin(None, life(3600)), DEFAULT_MARGIN);
        // A margin asked for is a margin kept.
        let asked = Duration::from_secs(120);
        assert_eq!(margin(Some(asked), life(300)), asked);
    }

    #[test]
    fn a_lead_brings_renewal_before_the_clients_refresh() {
        let p = Policy {
            lead: Duration::from_secs(15),
            ..Policy::default()
        };
        // Keycloak's 300 s: 80% comes first, the lead changes nothing.
        assert_eq!(
            next_renewal(&token(0, 300), secs(0), &p, 0.0),
            Duration::from_secs(240)
        );
        // 40 s tokens: 80% would leave 8 s, less than the client waits for.
        assert_eq!(
            next_renewal(&token(0, 40), secs(0), &p, 0.0),
            Duration::from_secs(25)
        );
        // Shorter than the lead: half the life, not a renewal every second.
        assert_eq!(
            next_renewal(&token(0, 10), secs(0), &p, 0.0),
            Duration::from_secs(5)
        );
    }

    /// Regression (issue 18, item 7): a lead longer than the life made every renewer ask
    /// once a second (the broker's forced 30 s lead with 20 s tokens).
    #[test]
    fn renewal_is_at_eighty_percent_and_once_per_life_for_every_life() {
        for life in [5u64, 20, 60, 300, 3600] {
            let l = Duration::from_secs(life);
            // No lead: exactly 80%.
            let plain = next_renewal(&token(0, life), secs(0), &Policy::default(), 0.0);
            assert_eq!(plain, l.mul_f64(0.8), "{life}s");
            // Any lead (the relay's 15 s, the broker's 30 s, one longer than the life)
            // and any jitter: between half and 80% of the life.
            for lead in [0u64, 15, 30, 100_000] {
                for draw in [0.0, 0.5, 1.0] {
                    let p = Policy {
                        lead: Duration::from_secs(lead),
                        ..Policy::default()
                    };
                    let wait = next_renewal(&token(0, life), secs(0), &p, draw);
                    assert!(
                        wait >= l / 2 && wait <= l.mul_f64(0.8),
                        "{life}s lead {lead}s draw {draw}: {wait:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_renewer_asks_at_most_twice_per_life_over_an_hour() {
        // Each renewal gets a fresh token of the same life; count the asks in an hour,
        // with the worst lead and jitter.
        for life in [5u64, 20, 60, 300, 3600] {
            let p = Policy {
                lead: Duration::from_secs(100_000),
                ..Policy::default()
            };
            let mut now = Duration::ZERO;
            let mut asks = 0u64;
            while now < Duration::from_secs(3600) {
                let issued = UNIX_EPOCH + now;
                let t = AccessToken::new(
                    "t".to_string().into(),
                    issued,
                    issued + Duration::from_secs(life),
                );
                now += next_renewal(&t, issued, &p, 1.0);
                asks += 1;
            }
            assert!(asks <= 3600 * 2 / life + 1, "{life}s: {asks} asks");
        }
    }

    #[test]
    fn the_same_token_handed_back_is_asked_for_again_less_and_less_often() {
        // exec's feed got back the token it holds (the broker had not renewed yet): the
        // next ask waits half of what is left, not the one-second floor.
        let p = Policy {
            lead: Duration::from_secs(15),
            ..Policy::default()
        };
        let held = token(0, 20);
        assert_eq!(
            next_renewal(&held, secs(10), &p, 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_renewal(&held, secs(19), &p, 0.0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn jitter_only_brings_renewal_earlier() {
        let p = Policy::default();
        let early = next_renewal(&token(0, 300), secs(0), &p, 0.999_999);
        assert!(
            early >= Duration::from_secs(209) && early < Duration::from_secs(240),
            "{early:?}"
        );
    }

    #[test]
    fn short_lives_still_renew_before_expiry() {
        let p = Policy::default();
        // A 4 s token (as the tests use) renews after 3.2 s.
        let wait = next_renewal(&token(0, 4), secs(0), &p, 0.0);
        assert_eq!(wait, Duration::from_millis(3200));
    }

    #[test]
    fn never_more_often_than_the_floor() {
        let p = Policy {
            min_interval: Duration::from_secs(5),
            ..Policy::default()
        };
        // Already past the renewal point: half of what is left, at least the floor.
        assert_eq!(
            next_renewal(&token(0, 300), secs(290), &p, 0.0),
            Duration::from_secs(5)
        );
        // A 2 s token cannot make us spin.
        assert_eq!(
            next_renewal(&token(0, 2), secs(0), &p, 0.0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_token_from_the_future_waits_at_most_its_remaining_life() {
        // Clock skew: iat ahead of our clock. Wait is bounded by the time to expiry.
        let p = Policy::default();
        let wait = next_renewal(&token(100, 300), secs(0), &p, 0.0);
        assert_eq!(wait, Duration::from_secs(340));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = Policy::default();
        assert_eq!(backoff(0, None, &p, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(1, None, &p, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, None, &p, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(10, None, &p, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, None, &p, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn backoff_has_full_jitter() {
        let p = Policy::default();
        assert_eq!(backoff(5, None, &p, 0.0), Duration::ZERO);
        assert_eq!(backoff(5, None, &p, 0.5), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_is_honoured() {
        let p = Policy::default();
        assert_eq!(
            backoff(0, Some(Duration::from_secs(7)), &p, 1.0),
            Duration::from_secs(7)
        );
        // A longer jittered wait is kept.
        assert_eq!(
            backoff(8, Some(Duration::from_secs(1)), &p, 1.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_huge_retry_after_is_bounded_by_max_backoff_and_the_tokens_life() {
        let p = Policy::default();
        let asked = Some(Duration::from_secs(100_000));
        assert_eq!(backoff(0, asked, &p, 0.0), Duration::from_secs(30));
        assert_eq!(
            retry_wait(0, asked, &p, 0.0, Some(Duration::from_secs(4))),
            Duration::from_secs(4)
        );
        // An expired token no longer bounds it; the cap still does.
        assert_eq!(
            retry_wait(0, asked, &p, 0.0, Some(Duration::ZERO)),
            Duration::from_secs(30)
        );
        assert_eq!(retry_wait(0, asked, &p, 0.0, None), Duration::from_secs(30));
    }

    #[test]
    fn rejections_wait_about_the_configured_interval() {
        let p = Policy::default();
        assert_eq!(after_rejection(&p, 0.0), Duration::from_secs(54));
        assert_eq!(after_rejection(&p, 1.0), Duration::from_secs(66));
    }
}
