//! Who a sidecar is: its pod's projected service-account token, checked by the API
//! server (TokenReview), which also checks that the pod it is bound to still exists.
//!
//! A review is cached until the token's `exp` (at most [`MAX_CACHED`]), so the API server
//! sees one review per pod per token life, not one per request; a refusal is cached the
//! same way, so a refused token repeated cannot become a stream of reviews. Cheap checks on the
//! token's own claims (audience, expiry) come first and refuse without asking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};

use super::policy::Identity;

/// A reviewed token is trusted this long at most, whatever its `exp`: the bound on how
/// long a deleted pod's token keeps working once reviewed.
pub const MAX_CACHED: Duration = Duration::from_secs(600);
/// Reviews kept at most; beyond, new ones are not cached (still answered).
const MAX_ENTRIES: usize = 200_000;
/// Expired entries are swept after this many insertions.
const SWEEP_EVERY: u64 = 1024;
/// Longer assertions are refused unread.
pub const MAX_TOKEN: usize = 16 * 1024;

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

/// The review could not be had: the API server is unreachable or refuses the broker.
#[derive(Debug, thiserror::Error)]
#[error(
    "the token review failed: {0} (the broker needs `create` on tokenreviews.authentication.k8s.io, which the chart's ClusterRole grants)"
)]
pub struct Unavailable(pub String);

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
/// are kept too: a token the API server refused (its pod deleted, its signature wrong)
/// stays refused, and a client repeating it must not become a stream of reviews.
struct Cached {
    verdict: Result<Identity, Refusal>,
    until: SystemTime,
}

/// Reviews tokens through the API server, remembering the good ones.
pub struct Reviewer {
    api: super::apiserver::ApiServer,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// One review in flight per token: concurrent first requests wait for it.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    inserts: AtomicU64,
    /// Reviews sent to the API server, by outcome.
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    /// Answers from the cache.
    pub hits: AtomicU64,
}

impl Reviewer {
    pub fn new(api: super::apiserver::ApiServer, audience: String) -> Self {
        Self {
            api,
            audience,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            inserts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            hits: AtomicU64::new(0),
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

    async fn review(
        &self,
        token: &str,
        key: [u8; 32],
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Result<Identity, Refusal>, Unavailable> {
        let reviewed = self
            .api
            .review(&request(token, &self.audience))
            .await
            .map_err(|e| {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Unavailable(e)
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
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
            || cache.len() >= MAX_ENTRIES
        {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() < MAX_ENTRIES {
            cache.insert(key, Cached { verdict, until });
        }
    }
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
}
