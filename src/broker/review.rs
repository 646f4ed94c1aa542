//! Who a sidecar is: its pod's projected service-account token, checked by the API
//! server (TokenReview), which also checks that the pod it is bound to still exists.
//!
//! Cheap checks come first and refuse without asking the API server: the token's own
//! claims (audience, expiry), then its signature against the cluster's service-account
//! keys ([`super::jwks`], refreshed on an unknown `kid` at most every [`KEYS_REFRESH`]).
//! A forged token costs the API server nothing; only genuinely signed tokens are
//! reviewed, at most [`REVIEW_BURST`] at once and [`REVIEW_RATE`] a second per service
//! account. A review is cached until the token's `exp` (at most [`MAX_CACHED`]), so the
//! API server sees one review per pod per token life, not one per request; a refusal of
//! a genuinely signed token (its pod deleted) is cached the same way. When the cache is
//! full, refusals and the soonest-expiring entries go first ([`evict`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};

use super::jwks::{Check, KeySet};
use super::policy::Identity;

/// A reviewed token is trusted this long at most, whatever its `exp`: the bound on how
/// long a deleted pod's token keeps working once reviewed.
pub const MAX_CACHED: Duration = Duration::from_secs(600);
/// Reviews kept at most; beyond, [`evict`] makes room.
const MAX_ENTRIES: usize = 200_000;
/// Expired entries are swept after this many insertions.
const SWEEP_EVERY: u64 = 1024;
/// Longer assertions are refused unread.
pub const MAX_TOKEN: usize = 16 * 1024;
/// The key set is fetched again (for a `kid` it does not hold) at most this often.
pub const KEYS_REFRESH: Duration = Duration::from_secs(10);
/// TokenReviews one service account may cause at once...
pub const REVIEW_BURST: u32 = 200;
/// ...and then per second.
pub const REVIEW_RATE: u32 = 20;
/// Service accounts whose review budget is tracked at most (idle ones are forgotten first).
const MAX_CALLERS: usize = 50_000;

const SA_PREFIX: &str = "system:serviceaccount:";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// Why a token gives no identity. The texts are what the sidecar logs: they say what to
/// change and never hold the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a JWT at all.
    #[error("the client assertion is not a JWT: send the pod's projected service-account token")]
    Malformed,
    /// A token for someone else.
    #[error(
        "the service-account token is for audience [{found}], not '{wanted}': use a projected token with audience '{wanted}' (the injector adds one)"
    )]
    Audience { found: String, wanted: String },
    /// Not signed by the cluster's service-account issuer: forged, or from another cluster.
    #[error(
        "the service-account token is not signed by this cluster's service-account issuer: send the pod's projected service-account token, unchanged"
    )]
    Signature,
    /// Its `exp` has passed.
    #[error(
        "the service-account token expired {ago}s ago: read the projected token file again at every use (the kubelet renews it)"
    )]
    Expired { ago: u64 },
    /// The API server said no.
    #[error("the Kubernetes API server did not accept the service-account token: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not as a service account.
    #[error("the token authenticates '{0}', not a service account")]
    NotServiceAccount(String),
    /// A service-account token not bound to a pod (a legacy Secret token, or a
    /// TokenRequest without a bound object).
    #[error(
        "the service-account token of {0} is not bound to a pod: use the pod's projected service-account token"
    )]
    NotBoundToPod(String),
}

/// The review could not be had now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The API server is unreachable or refuses the broker.
    #[error(
        "the token review failed: {0} (the broker needs `create` on tokenreviews.authentication.k8s.io, which the chart's ClusterRole grants)"
    )]
    Review(super::apiserver::CallError),
    /// One service account's new tokens are over its review budget.
    #[error(
        "too many new tokens of {0} to review at once (more than {REVIEW_BURST}, then {REVIEW_RATE} a second); retry shortly"
    )]
    Throttled(String),
}

/// Checks what the token says of itself; returns until when a good review may be cached.
pub fn precheck(token: &str, audience: &str, now: SystemTime) -> Result<SystemTime, Refusal> {
    // Not verified: the claims can only refuse; the API server's review accepts.
    let claims = crate::token::claims(token).map_err(|_| Refusal::Malformed)?;
    if !claims.aud.iter().any(|a| a == audience) {
        return Err(Refusal::Audience {
            found: claims.aud.join(", "),
            wanted: audience.to_string(),
        });
    }
    let cap = now + MAX_CACHED;
    match claims.exp.and_then(crate::token::unix_time) {
        Some(at) => match now.duration_since(at) {
            Ok(ago) => Err(Refusal::Expired { ago: ago.as_secs() }),
            Err(_) => Ok(at.min(cap)),
        },
        None => Ok(cap),
    }
}

/// The identity a successful review vouches for.
pub fn identity(status: &TokenReviewStatus, audience: &str) -> Result<Identity, Refusal> {
    if status.authenticated != Some(true) {
        return Err(Refusal::Unauthenticated(
            status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if let Some(auds) = &status.audiences
        && !auds.iter().any(|a| a == audience)
    {
        return Err(Refusal::Audience {
            found: auds.join(", "),
            wanted: audience.to_string(),
        });
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let Some((namespace, account)) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(Refusal::NotServiceAccount(username));
    };
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(POD_NAME))
        .and_then(|names| names.first())
        .filter(|p| !p.is_empty());
    let Some(pod) = pod else {
        return Err(Refusal::NotBoundToPod(format!("{namespace}/{account}")));
    };
    Ok(Identity {
        namespace: namespace.to_string(),
        service_account: account.to_string(),
        pod: pod.clone(),
    })
}

/// The review request for `token`.
pub fn request(token: &str, audience: &str) -> TokenReview {
    TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![audience.to_string()]),
        },
        status: None,
    }
}

/// A review's verdict, kept until the token's `exp` (at most [`MAX_CACHED`]). Refusals
/// are kept too: a genuinely signed token the API server refused (its pod deleted) stays
/// refused, and a client repeating it must not become a stream of reviews.
#[derive(Clone, Debug)]
pub struct Cached {
    pub verdict: Result<Identity, Refusal>,
    pub until: SystemTime,
}

/// Makes room in a full cache (`max` entries): expired entries go, then refusals, then
/// the accepted entries that expire soonest. Accepted entries are what keep the API
/// server quiet (one review per pod per token life), so they are the last to go.
pub fn evict<K: Clone + Eq + std::hash::Hash>(
    cache: &mut HashMap<K, Cached>,
    now: SystemTime,
    max: usize,
) {
    cache.retain(|_, c| c.until > now);
    if cache.len() < max {
        return;
    }
    cache.retain(|_, c| c.verdict.is_ok());
    if cache.len() < max {
        return;
    }
    // Keep the 90% that live longest, so the next evictions are rare.
    let keep = max - max / 10 - 1;
    let mut untils: Vec<SystemTime> = cache.values().map(|c| c.until).collect();
    let cut = untils.len() - keep;
    untils.select_nth_unstable(cut.saturating_sub(1));
    let threshold = untils[cut.saturating_sub(1)];
    let mut dropped = 0;
    cache.retain(|_, c| {
        if dropped < cut && c.until <= threshold {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

/// A token bucket per caller: at most `burst` at once, refilled at `rate` a second.
pub struct Budgets {
    burst: f64,
    rate: f64,
    max_callers: usize,
    buckets: HashMap<String, (f64, Instant)>,
}

impl Budgets {
    pub fn new(burst: u32, rate: u32, max_callers: usize) -> Self {
        Self {
            burst: burst.into(),
            rate: rate.into(),
            max_callers,
            buckets: HashMap::new(),
        }
    }

    /// Takes one from `caller`'s bucket; false when it is empty.
    pub fn take(&mut self, caller: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(caller) && self.buckets.len() >= self.max_callers {
            // Forget the callers whose bucket has refilled: they are owed nothing.
            let (burst, rate) = (self.burst, self.rate);
            self.buckets.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_callers {
                return false;
            }
        }
        let (left, at) = self
            .buckets
            .entry(caller.to_string())
            .or_insert((self.burst, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the signature check decided for one token.
enum Signed {
    Valid,
    Forged,
    /// No key set could be had: the API server's review decides alone.
    Unchecked,
}

/// The key set and when it was last asked for.
#[derive(Default)]
struct Keys {
    set: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
}

/// Reviews tokens through the API server, remembering the good ones.
pub struct Reviewer {
    api: Box<dyn super::apiserver::Cluster>,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// One review in flight per token: concurrent first requests wait for it.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    keys: Mutex<Keys>,
    /// One key-set fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    budgets: Mutex<Budgets>,
    inserts: AtomicU64,
    /// Reviews sent to the API server, by outcome.
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    /// Answers from the cache.
    pub hits: AtomicU64,
    /// Signature checks, by outcome.
    pub signed: AtomicU64,
    pub forged: AtomicU64,
    pub unchecked: AtomicU64,
    /// Reviews not sent because the caller's budget was spent.
    pub throttled: AtomicU64,
}

impl Reviewer {
    pub fn new(api: impl super::apiserver::Cluster + 'static, audience: String) -> Self {
        Self {
            api: Box::new(api),
            audience,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            keys: Mutex::new(Keys::default()),
            fetching: tokio::sync::Mutex::new(()),
            budgets: Mutex::new(Budgets::new(REVIEW_BURST, REVIEW_RATE, MAX_CALLERS)),
            inserts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            signed: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            unchecked: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Reviews held now.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Who `token` belongs to: from the cache, or asked of the API server.
    pub async fn verify(&self, token: &str) -> Result<Result<Identity, Refusal>, Unavailable> {
        let now = SystemTime::now();
        if token.len() > MAX_TOKEN {
            return Ok(Err(Refusal::Malformed));
        }
        let until = match precheck(token, &self.audience, now) {
            Ok(until) => until,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let key = digest(token);
        if let Some(verdict) = self.lookup(&key, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(verdict);
        }
        match self.signature(token).await {
            Signed::Valid => self.signed.fetch_add(1, Ordering::Relaxed),
            Signed::Unchecked => self.unchecked.fetch_add(1, Ordering::Relaxed),
            Signed::Forged => {
                self.forged.fetch_add(1, Ordering::Relaxed);
                return Ok(Err(Refusal::Signature));
            }
        };
        let gate = match self.inflight.lock() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let _turn = gate.lock().await;
        if let Some(verdict) = self.lookup(&key, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(verdict);
        }
        let verdict = self.review(token, key, until, now).await;
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(&key);
        }
        verdict
    }

    /// Checks the signature, fetching the key set first when there is none yet, or again
    /// (at most every [`KEYS_REFRESH`]) when the token names a key it does not hold.
    async fn signature(&self, token: &str) -> Signed {
        let held = self.keys.lock().ok().and_then(|k| k.set.clone());
        let first = held.as_ref().map(|set| set.check(token));
        match first {
            Some(Check::Valid) => return Signed::Valid,
            // A key of the set is named and did not make the signature.
            Some(Check::Invalid) if has_kid(token) => return Signed::Forged,
            _ => {}
        }
        // No set yet, or a key it does not hold: wait for the fetch under way or make one.
        // No kid and no key of the set verifies: refresh only when no fetch is under way.
        let _turn = if matches!(first, None | Some(Check::UnknownKey)) {
            self.fetching.lock().await
        } else {
            match self.fetching.try_lock() {
                Ok(turn) => turn,
                Err(_) => return Signed::Forged,
            }
        };
        let due = self
            .keys
            .lock()
            .ok()
            .is_some_and(|k| k.fetched.is_none_or(|at| at.elapsed() >= KEYS_REFRESH));
        if due {
            if let Ok(mut k) = self.keys.lock() {
                k.fetched = Some(Instant::now());
            }
            match self.api.jwks().await {
                Ok(set) => {
                    tracing::info!(keys = set.len(), "service-account signing keys fetched");
                    if let Ok(mut k) = self.keys.lock() {
                        k.set = Some(Arc::new(set));
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "the cluster's service-account signing keys could not be fetched; tokens go to TokenReview unchecked until they can (the broker's service account needs get on the non-resource URLs /.well-known/openid-configuration and /openid/v1/jwks, which the default ClusterRole system:service-account-issuer-discovery grants)"
                ),
            }
        }
        let set = self.keys.lock().ok().and_then(|k| k.set.clone());
        match set.map(|set| set.check(token)) {
            Some(Check::Valid) => Signed::Valid,
            Some(_) => Signed::Forged,
            None => Signed::Unchecked,
        }
    }

    async fn review(
        &self,
        token: &str,
        key: [u8; 32],
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Result<Identity, Refusal>, Unavailable> {
        let caller = crate::token::claims(token)
            .ok()
            .and_then(|c| c.sub)
            .unwrap_or_default();
        let allowed = self
            .budgets
            .lock()
            .map(|mut b| b.take(&caller, Instant::now()))
            .unwrap_or(true);
        if !allowed {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable::Throttled(caller));
        }
        let reviewed = self
            .api
            .review(&request(token, &self.audience))
            .await
            .map_err(|e| {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Unavailable::Review(e)
            })?;
        let verdict = identity(&reviewed.status.unwrap_or_default(), &self.audience);
        let counter = if verdict.is_ok() {
            &self.accepted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.remember(key, verdict.clone(), until, now);
        Ok(verdict)
    }

    fn lookup(&self, key: &[u8; 32], now: SystemTime) -> Option<Result<Identity, Refusal>> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.get(key)?;
        (hit.until > now).then(|| hit.verdict.clone())
    }

    fn remember(
        &self,
        key: [u8; 32],
        verdict: Result<Identity, Refusal>,
        until: SystemTime,
        now: SystemTime,
    ) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() >= MAX_ENTRIES {
            evict(&mut cache, now, MAX_ENTRIES);
        }
        cache.insert(key, Cached { verdict, until });
    }
}

/// Whether the token's header names its key.
fn has_kid(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Header {
        kid: Option<String>,
    }
    use base64::Engine as _;
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<Header>(&h).ok())
        .is_some_and(|h| h.kid.is_some())
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    const AUD: &str = "polars-cloud-auth";

    #[test]
    fn the_tokens_own_claims_refuse_early() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let good = jwt(serde_json::json!({"aud": [AUD], "exp": 1_000_300}));
        assert_eq!(
            precheck(&good, AUD, now),
            Ok(UNIX_EPOCH + Duration::from_secs(1_000_300))
        );
        // A single string audience is allowed (RFC 7519).
        let one = jwt(serde_json::json!({"aud": AUD, "exp": 2_000_000}));
        assert_eq!(precheck(&one, AUD, now), Ok(now + MAX_CACHED));
        let other =
            jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc"], "exp": 1_000_300}));
        let e = precheck(&other, AUD, now).unwrap_err().to_string();
        assert!(
            e.contains("https://kubernetes.default.svc") && e.contains("'polars-cloud-auth'"),
            "{e}"
        );
        let old = jwt(serde_json::json!({"aud": [AUD], "exp": 999_990}));
        assert_eq!(precheck(&old, AUD, now), Err(Refusal::Expired { ago: 10 }));
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c", &format!("x.{}.y", "e30")] {
            assert!(precheck(bad, AUD, now).is_err(), "{bad}");
        }
    }

    fn status(username: &str, pod: Option<&str>) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if let Some(p) = pod {
            extra.insert(POD_NAME.to_string(), vec![p.to_string()]);
        }
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![AUD.into()]),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(extra),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_review_gives_the_service_account_and_its_pod() {
        let s = status("system:serviceaccount:team-a:etl", Some("etl-7d9"));
        assert_eq!(
            identity(&s, AUD),
            Ok(Identity {
                namespace: "team-a".into(),
                service_account: "etl".into(),
                pod: "etl-7d9".into()
            })
        );
        let e = identity(&status("system:serviceaccount:team-a:etl", None), AUD).unwrap_err();
        assert!(
            e.to_string().contains("team-a/etl is not bound to a pod"),
            "{e}"
        );
        let e = identity(&status("alice", Some("p")), AUD).unwrap_err();
        assert_eq!(e, Refusal::NotServiceAccount("alice".into()));
        let mut other = status("system:serviceaccount:a:b", Some("p"));
        other.audiences = Some(vec!["api".into()]);
        assert!(matches!(
            identity(&other, AUD),
            Err(Refusal::Audience { .. })
        ));
        let denied = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, pod \"p\" not found]".into()),
            ..Default::default()
        };
        let e = identity(&denied, AUD).unwrap_err().to_string();
        assert!(e.contains("pod \"p\" not found"), "{e}");
        assert!(identity(&TokenReviewStatus::default(), AUD).is_err());
    }

    fn entry(ok: bool, until: u64) -> Cached {
        let who = Identity {
            namespace: "n".into(),
            service_account: "s".into(),
            pod: "p".into(),
        };
        Cached {
            verdict: if ok { Ok(who) } else { Err(Refusal::Malformed) },
            until: UNIX_EPOCH + Duration::from_secs(until),
        }
    }

    /// Regression (issue 18, item 6): 3,000 unique forged tokens filled the cache with
    /// refusals; a full cache then stopped caching, good reviews included.
    #[test]
    fn a_full_cache_drops_expired_then_refusals_then_the_soonest_to_expire() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut cache: HashMap<u32, Cached> = HashMap::new();
        for i in 0..10 {
            cache.insert(i, entry(true, 2_000 + u64::from(i)));
        }
        for i in 10..15 {
            cache.insert(i, entry(false, 5_000));
        }
        for i in 15..20 {
            cache.insert(i, entry(true, 900));
        }
        // Expired entries and refusals make room; every live good review stays.
        evict(&mut cache, now, 15);
        let mut left: Vec<u32> = cache.keys().copied().collect();
        left.sort();
        assert_eq!(left, (0..10).collect::<Vec<_>>());
        // Only good reviews left: the soonest to expire go, down to 90% of the bound.
        evict(&mut cache, now, 10);
        let mut left: Vec<u32> = cache.keys().copied().collect();
        left.sort();
        assert_eq!(left, (2..10).collect::<Vec<_>>());
        // Room already: nothing goes.
        evict(&mut cache, now, 100);
        assert_eq!(cache.len(), 8);
    }

    #[test]
    fn each_caller_has_its_own_review_budget() {
        let t0 = Instant::now();
        let mut b = Budgets::new(3, 2, 2);
        assert!((0..3).all(|_| b.take("a", t0)));
        assert!(!b.take("a", t0));
        // Another caller is not held back by the first.
        assert!(b.take("b", t0));
        // Half a second refills one at 2 a second.
        assert!(b.take("a", t0 + Duration::from_millis(500)));
        assert!(!b.take("a", t0 + Duration::from_millis(500)));
        // A third caller while two are tracked: "b" has refilled by then and is forgotten.
        let later = t0 + Duration::from_secs(1);
        assert!(b.take("c", later));
        // Two callers with spent budgets: a new one waits rather than grow the map.
        let now = later + Duration::from_millis(10);
        assert!((0..2).all(|_| b.take("c", now)));
        assert!(!b.take("d", now));
    }
}
