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
        }
    }
}

/// How long to wait from `now` before renewing `token`.
///
/// The target is `renew_at` of the life minus a random share of `jitter`; the result is
/// never below `min_interval`, and never past the instant the token expires unless the
/// floor itself pushes it there (a token living less than the floor).
pub fn next_renewal(token: &AccessToken, now: SystemTime, policy: &Policy, draw: f64) -> Duration {
    let life = token.lifetime().as_secs_f64();
    let fraction = (policy.renew_at - policy.jitter * draw.clamp(0.0, 1.0)).clamp(0.05, 0.99);
    let target = token.issued_at() + Duration::from_secs_f64(life * fraction);
    let wait = target.duration_since(now).unwrap_or_default();
    let remaining = token.remaining(now);
    wait.min(remaining)
        .min(remaining.saturating_sub(policy.lead))
        .max(policy.min_interval)
}

/// The wait before retry number `attempt` (0 for the first) after a transient failure:
/// capped exponential backoff with full jitter, but never shorter than what the server
/// asked for with `Retry-After`.
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
        Some(asked) => jittered.max(asked),
        None => jittered,
    }
}

/// The wait after a rejection, with a little jitter so a fleet does not retry in step.
pub fn after_rejection(policy: &Policy, draw: f64) -> Duration {
    policy
        .rejected_retry
        .mul_f64(0.9 + 0.2 * draw.clamp(0.0, 1.0))
}

/// The margin a readiness check can ask of `token`: `wanted`, but never more than a tenth
/// of the token's life. A token is renewed when a fifth to three tenths of its life are
/// left, so with short tokens a fixed margin (30 s) would fail between renewals, and a
/// token living less than the margin would never pass at all.
pub fn margin_for(lifetime: Duration, wanted: Duration) -> Duration {
    wanted.min(lifetime.mul_f64(0.1))
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
        let wanted = Duration::from_secs(30);
        assert_eq!(margin_for(token(0, 300).lifetime(), wanted), wanted);
        assert_eq!(
            margin_for(token(0, 40).lifetime(), wanted),
            Duration::from_secs(4)
        );
        assert_eq!(margin_for(token(0, 3600).lifetime(), wanted), wanted);
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
        // Shorter than the lead: the floor keeps the provider from being hammered.
        assert_eq!(
            next_renewal(&token(0, 10), secs(0), &p, 0.0),
            p.min_interval
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
        // Already past the renewal point: wait the floor, not zero.
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
    fn rejections_wait_about_the_configured_interval() {
        let p = Policy::default();
        assert_eq!(after_rejection(&p, 0.0), Duration::from_secs(54));
        assert_eq!(after_rejection(&p, 1.0), Duration::from_secs(66));
    }
}
