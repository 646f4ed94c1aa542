//! The device authorization grant (RFC 8628), for people signing in from a terminal or a
//! notebook: ask the realm for a user code, let the person approve it in a browser
//! (possibly on a phone), and poll the token endpoint until it is approved, denied or
//! expired.
//!
//! The polling timing is a pure [`Schedule`], tested without a server; [`wait_for_tokens`]
//! only drives it.

use std::fmt;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::source::{self, Endpoints, FailureClass, FetchError};
use crate::token::Tokens;

/// The grant type of a device-code token request.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The audience the Polars Cloud client asks for at login.
pub const LOGIN_AUDIENCE: &str = "account";
/// The polling interval when the realm names none (RFC 8628 section 3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How much `slow_down` adds to the interval, for good (RFC 8628 section 3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest wait after failures to reach the realm.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the realm answered to the device authorization request.
#[derive(Clone)]
pub struct Authorization {
    /// Secret: whoever holds it gets the tokens once the code is approved.
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

impl Authorization {
    /// The URL to open: with the code filled in when the realm offers that.
    pub fn browser_url(&self) -> &str {
        self.verification_uri_complete
            .as_deref()
            .unwrap_or(&self.verification_uri)
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("device_code", &"[redacted]")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

/// The parameters of the device authorization request.
#[derive(Clone, Debug)]
pub struct Request {
    pub client_id: String,
    pub audience: Option<String>,
    pub scope: Option<String>,
}

impl Default for Request {
    /// What the Polars Cloud client itself sends.
    fn default() -> Self {
        Self {
            client_id: source::POLARS_CLIENT_ID.to_string(),
            audience: Some(LOGIN_AUDIENCE.to_string()),
            scope: None,
        }
    }
}

#[derive(Deserialize)]
struct AuthorizationReply {
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    verification_uri_complete: Option<String>,
    expires_in: Option<f64>,
    interval: Option<f64>,
}

/// Why the device login did not produce tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device authorization request failed.
    #[error("the device authorization request to {url} failed")]
    Authorize {
        url: String,
        #[source]
        source: FetchError,
    },
    /// The device authorization reply lacks something required.
    #[error("the device authorization reply from {url} is unusable: {reason}")]
    BadAuthorization { url: String, reason: String },
    /// The person pressed "deny" (or cancelled) in the browser.
    #[error("the sign-in was denied in the browser: run login again to retry")]
    Denied,
    /// Nobody approved the code in time.
    #[error("the code expired before it was approved: run login again")]
    Expired,
    /// The token endpoint refused the polling for another reason.
    #[error("the identity provider refused the device login")]
    Poll(#[source] FetchError),
    /// Ctrl-C (or SIGTERM) before the code was approved.
    #[error("login cancelled before the code was approved; nothing was stored")]
    Interrupted,
}

/// Asks the realm for a device code and user code.
pub async fn authorize(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    request: &Request,
) -> Result<Authorization, Error> {
    let url = endpoints.device();
    let mut form: Vec<(&str, &str)> = vec![("client_id", request.client_id.as_str())];
    if let Some(audience) = &request.audience {
        form.push(("audience", audience));
    }
    if let Some(scope) = &request.scope {
        form.push(("scope", scope));
    }
    let failed = |source| Error::Authorize {
        url: url.to_string(),
        source,
    };
    let reply = source::send(http.post(url.clone()).form(&form), url.as_str())
        .await
        .map_err(failed)?;
    if !reply.status.is_success() {
        return Err(failed(source::failure(
            reply.status,
            reply.retry_after,
            &reply.body,
            &[],
        )));
    }
    parse_authorization(&reply.body).map_err(|reason| Error::BadAuthorization {
        url: url.to_string(),
        reason,
    })
}

fn parse_authorization(body: &[u8]) -> Result<Authorization, String> {
    let reply: AuthorizationReply =
        serde_json::from_slice(body).map_err(|_| "not a JSON object".to_string())?;
    let present = |v: Option<String>, name: &str| {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("no {name}"))
    };
    let device_code = SecretString::from(present(reply.device_code, "device_code")?);
    let user_code = present(reply.user_code, "user_code")?;
    let verification_uri = present(reply.verification_uri, "verification_uri")?;
    let verification_uri_complete = reply
        .verification_uri_complete
        .filter(|s| !s.trim().is_empty());
    let expires_in = reply
        .expires_in
        .ok_or_else(|| "no expires_in".to_string())
        .and_then(|s| {
            crate::token::life(s).ok_or_else(|| format!("expires_in {s} is out of range"))
        })?;
    // A wild interval (1e300) is as good as none: the server's slow_down corrects us.
    let interval = reply
        .interval
        .filter(|s| *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= Duration::from_secs(3600))
        .unwrap_or(DEFAULT_INTERVAL);
    Ok(Authorization {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
    })
}

/// One poll's answer, reduced to what the schedule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `authorization_pending`: not approved yet.
    Pending,
    /// `slow_down`: polled too often.
    SlowDown,
    /// `access_denied`.
    Denied,
    /// `expired_token`.
    Expired,
    /// No answer, or the realm is overloaded: try again later.
    Transient { retry_after: Option<Duration> },
}

/// When to poll next: the interval the realm asked for, widened by `slow_down`, backed off
/// after transient failures, never past the code's expiry.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    expires_at: Instant,
    failures: u32,
}

impl Schedule {
    pub fn new(auth: &Authorization, received_at: Instant) -> Self {
        Self {
            // A zero interval would poll in a loop; one second is the least we do.
            interval: auth.interval.max(Duration::from_secs(1)),
            expires_at: received_at + auth.expires_in,
            failures: 0,
        }
    }

    /// The interval in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The wait before the first poll: nobody approves a code within the first interval.
    pub fn first(&self, now: Instant) -> Result<Duration, Error> {
        self.clamp(self.interval, now)
    }

    /// The wait before the next poll after `outcome`, or why to stop.
    pub fn after(&mut self, outcome: Outcome, now: Instant) -> Result<Duration, Error> {
        let wait = match outcome {
            Outcome::Denied => return Err(Error::Denied),
            Outcome::Expired => return Err(Error::Expired),
            Outcome::Pending => {
                self.failures = 0;
                self.interval
            }
            Outcome::SlowDown => {
                self.failures = 0;
                self.interval += SLOW_DOWN_STEP;
                self.interval
            }
            Outcome::Transient { retry_after } => {
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .interval
                    .saturating_mul(1 << self.failures.min(6))
                    .min(MAX_BACKOFF)
                    .max(self.interval);
                backoff.max(retry_after.unwrap_or_default())
            }
        };
        self.clamp(wait, now)
    }

    /// A wait that ends at the expiry at the latest; once expired, stop.
    fn clamp(&self, wait: Duration, now: Instant) -> Result<Duration, Error> {
        let left = self.expires_at.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::Expired);
        }
        Ok(wait.min(left))
    }
}

/// What one poll gave.
enum Poll {
    Tokens(Tokens),
    Continue(Outcome),
}

/// Reduces a token endpoint reply to the schedule's terms; other refusals end the login.
fn outcome(result: Result<Tokens, FetchError>) -> Result<Poll, Error> {
    let err = match result {
        Ok(tokens) => return Ok(Poll::Tokens(tokens)),
        Err(e) => e,
    };
    if err.class() == FailureClass::Transient {
        return Ok(Poll::Continue(Outcome::Transient {
            retry_after: err.retry_after(),
        }));
    }
    let code = match &err {
        FetchError::Rejected { error, .. } => error.as_deref(),
        _ => None,
    };
    Ok(Poll::Continue(match code {
        Some("authorization_pending") => Outcome::Pending,
        Some("slow_down") => Outcome::SlowDown,
        Some("access_denied") => Outcome::Denied,
        Some("expired_token") => Outcome::Expired,
        _ => return Err(Error::Poll(err)),
    }))
}

/// Polls the token endpoint until the code is approved, denied or expired, or `cancel`
/// fires. `on_poll` sees every outcome and the wait that follows (for progress output).
pub async fn wait_for_tokens(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    request: &Request,
    auth: &Authorization,
    received_at: Instant,
    cancel: &CancellationToken,
    mut on_poll: impl FnMut(Outcome, Duration),
) -> Result<Tokens, Error> {
    let mut schedule = Schedule::new(auth, received_at);
    let mut wait = schedule.first(Instant::now())?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        }
        let result = tokio::select! {
            r = poll(http, endpoints, request, auth) => r,
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        };
        let outcome = match outcome(result)? {
            Poll::Tokens(tokens) => return Ok(tokens),
            Poll::Continue(outcome) => outcome,
        };
        wait = schedule.after(outcome, Instant::now())?;
        tracing::debug!(
            ?outcome,
            wait_ms = wait.as_millis() as u64,
            "device code not approved yet"
        );
        on_poll(outcome, wait);
    }
}

/// One device-code token request.
async fn poll(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    request: &Request,
    auth: &Authorization,
) -> Result<Tokens, FetchError> {
    let code = auth.device_code.expose_secret();
    let form = [
        ("grant_type", DEVICE_GRANT),
        ("device_code", code),
        ("client_id", request.client_id.as_str()),
    ];
    let url = endpoints.token.as_str();
    let reply = source::send(http.post(endpoints.token.clone()).form(&form), url).await?;
    source::classify(
        reply.status,
        reply.retry_after,
        &reply.body,
        reply.sent_at,
        &[code],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use std::time::SystemTime;

    fn auth(interval: u64, expires_in: u64) -> Authorization {
        Authorization {
            device_code: SecretString::from("dc"),
            user_code: "ABCD-EFGH".into(),
            verification_uri: "https://idp/device".into(),
            verification_uri_complete: None,
            expires_in: Duration::from_secs(expires_in),
            interval: Duration::from_secs(interval),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn polls_at_the_interval_while_pending() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&auth(3, 600), t0);
        assert_eq!(s.first(t0).unwrap(), secs(3));
        assert_eq!(s.after(Outcome::Pending, t0 + secs(3)).unwrap(), secs(3));
        assert_eq!(s.after(Outcome::Pending, t0 + secs(6)).unwrap(), secs(3));
    }

    #[test]
    fn slow_down_adds_five_seconds_for_good() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&auth(1, 600), t0);
        assert_eq!(s.after(Outcome::SlowDown, t0).unwrap(), secs(6));
        assert_eq!(s.after(Outcome::Pending, t0 + secs(6)).unwrap(), secs(6));
        assert_eq!(s.after(Outcome::SlowDown, t0 + secs(12)).unwrap(), secs(11));
        assert_eq!(s.interval(), secs(11));
    }

    #[test]
    fn transient_failures_back_off_and_honour_retry_after() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&auth(2, 600), t0);
        let transient = Outcome::Transient { retry_after: None };
        assert_eq!(s.after(transient, t0).unwrap(), secs(4));
        assert_eq!(s.after(transient, t0).unwrap(), secs(8));
        for _ in 0..10 {
            s.after(transient, t0).unwrap();
        }
        assert_eq!(s.after(transient, t0).unwrap(), MAX_BACKOFF);
        // A pending answer resets the backoff.
        assert_eq!(s.after(Outcome::Pending, t0).unwrap(), secs(2));
        let slow = Outcome::Transient {
            retry_after: Some(secs(30)),
        };
        assert_eq!(s.after(slow, t0).unwrap(), secs(30));
    }

    #[test]
    fn never_waits_past_the_expiry_and_stops_once_expired() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&auth(5, 12), t0);
        assert_eq!(s.after(Outcome::Pending, t0 + secs(10)).unwrap(), secs(2));
        assert!(matches!(
            s.after(Outcome::Pending, t0 + secs(12)),
            Err(Error::Expired)
        ));
        assert!(matches!(s.first(t0 + secs(13)), Err(Error::Expired)));
    }

    #[test]
    fn denial_and_expiry_stop_with_their_own_errors() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&auth(1, 600), t0);
        let denied = s.after(Outcome::Denied, t0).unwrap_err();
        assert!(matches!(denied, Error::Denied));
        assert!(denied.to_string().contains("run login again"), "{denied}");
        let expired = s.after(Outcome::Expired, t0).unwrap_err();
        assert_eq!(
            expired.to_string(),
            "the code expired before it was approved: run login again"
        );
    }

    #[test]
    fn a_zero_interval_still_waits_a_second() {
        let t0 = Instant::now();
        let s = Schedule::new(&auth(0, 600), t0);
        assert_eq!(s.first(t0).unwrap(), secs(1));
    }

    fn reply(status: u16, body: &str) -> Result<Tokens, FetchError> {
        let status = StatusCode::from_u16(status).unwrap();
        source::classify(status, None, body.as_bytes(), SystemTime::now(), &[])
    }

    #[test]
    fn token_endpoint_replies_map_to_outcomes() {
        let cases = [
            ("authorization_pending", Outcome::Pending),
            ("slow_down", Outcome::SlowDown),
            ("access_denied", Outcome::Denied),
            ("expired_token", Outcome::Expired),
        ];
        for (error, want) in cases {
            let body = serde_json::json!({ "error": error }).to_string();
            match outcome(reply(400, &body)).unwrap() {
                Poll::Continue(got) => assert_eq!(got, want, "{error}"),
                Poll::Tokens(_) => panic!("{error}"),
            }
        }
        match outcome(reply(503, "busy")).unwrap() {
            Poll::Continue(Outcome::Transient { .. }) => {}
            _ => panic!("503 is transient"),
        }
        let err = outcome(reply(400, r#"{"error":"invalid_grant"}"#)).err();
        assert!(matches!(err, Some(Error::Poll(_))), "{err:?}");
        let ok = r#"{"access_token":"opaque","expires_in":60,"refresh_token":"r"}"#;
        assert!(matches!(outcome(reply(200, ok)).unwrap(), Poll::Tokens(_)));
    }

    #[test]
    fn the_authorization_reply_is_read_with_defaults() {
        let body = br#"{"device_code":"dc","user_code":"WXYZ-1234","verification_uri":"https://i/device","verification_uri_complete":"https://i/device?user_code=WXYZ-1234","expires_in":600}"#;
        let a = parse_authorization(body).unwrap();
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        assert_eq!(a.browser_url(), "https://i/device?user_code=WXYZ-1234");
        assert!(!format!("{a:?}").contains("\"dc\""));
        let no_complete = br#"{"device_code":"dc","user_code":"W","verification_uri":"https://i/device","expires_in":5,"interval":2}"#;
        let a = parse_authorization(no_complete).unwrap();
        assert_eq!(a.browser_url(), "https://i/device");
        assert_eq!(a.interval, secs(2));
        let err = parse_authorization(br#"{"user_code":"W"}"#).unwrap_err();
        assert_eq!(err, "no device_code");
        assert!(parse_authorization(b"<html>").is_err());
    }
}
