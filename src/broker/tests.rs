//! The broker's router, driven in-process (`tower::ServiceExt::oneshot`, as the webhook's
//! tests do), with a stand-in cluster behind the reviewer's seam ([`apiserver::Cluster`]):
//! every refusal the HTTP surface gives, without an API server. The real API server, IdP
//! and sidecars: `tests/py/test_broker.py` and the node.

use std::sync::atomic::AtomicUsize;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use tower::ServiceExt;

use super::apiserver::{Call, CallError, Cluster};
use super::jwks::{KeySet, tests as keys};
use super::*;
use crate::source::client_assertion::tests::{EC_PKCS8, RSA_PKCS8};

const AUD: &str = "polars-cloud-auth";

/// The cluster: one signing key, and TokenReviews answered from the token's `sub`.
struct StandIn {
    keys: KeySet,
    reviews: Arc<AtomicUsize>,
}

impl Cluster for StandIn {
    fn jwks(&self) -> Call<'_, KeySet> {
        let keys = self.keys.clone();
        Box::pin(async move { Ok(keys) })
    }

    fn review<'a>(&'a self, review: &'a TokenReview) -> Call<'a, TokenReview> {
        self.reviews.fetch_add(1, Ordering::Relaxed);
        let token = review.spec.token.clone();
        Box::pin(async move {
            let sub = crate::token::claims(&token)
                .ok()
                .and_then(|c| c.sub)
                .ok_or_else(|| CallError::NotATokenReview("no sub".into()))?;
            let mut extra = std::collections::BTreeMap::new();
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_string(),
                vec!["etl-7d9".to_string()],
            );
            Ok(TokenReview {
                status: Some(TokenReviewStatus {
                    authenticated: Some(true),
                    audiences: Some(vec![AUD.into()]),
                    user: Some(UserInfo {
                        username: Some(sub),
                        extra: Some(extra),
                        ..Default::default()
                    }),
                    error: None,
                }),
                ..review.clone()
            })
        })
    }
}

struct World {
    app: axum::Router,
    reviews: Arc<AtomicUsize>,
    key: crate::source::client_assertion::SigningKey,
    _dir: tempfile::TempDir,
    _cancel: CancellationToken,
}

/// A broker whose policy grants team-a/etl the credential `prod`; its keeper signs in to
/// an identity provider that is not there, so it has no token to hand out.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("prod");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_id"), "prod-sa").unwrap();
    std::fs::write(creds.join("client_secret"), "s3cret").unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "credentials:\n  prod: {{dir: {}}}\ngrants:\n  - namespace: team-a\n    serviceAccounts: [etl]\n    credential: prod\n",
            creds.display()
        ),
    )
    .unwrap();
    let key = keys::key(RSA_PKCS8);
    let reviews = Arc::new(AtomicUsize::new(0));
    let cluster = StandIn {
        keys: keys::set_of(&[(&key, Some("k1"))]),
        reviews: reviews.clone(),
    };
    let settings = Settings {
        policy_file: policy,
        audience: AUD.into(),
        idp: IdpArgs {
            issuer: Some("http://127.0.0.1:9/realms/Polars".parse().unwrap()),
            ..IdpArgs::default()
        },
        renew: RenewPolicy::default(),
    };
    let cancel = CancellationToken::new();
    let broker = Arc::new(Broker::start(settings, cluster, cancel.clone()).unwrap());
    let app = api::router(api::AppState {
        broker,
        shared: crate::serve::Shared::new("broker"),
    });
    World {
        app,
        reviews,
        key,
        _dir: dir,
        _cancel: cancel,
    }
}

fn sa_token(key: &crate::source::client_assertion::SigningKey, sub: &str) -> String {
    let exp = crate::token::unix_secs(SystemTime::now()) + 600;
    keys::signed(
        key,
        serde_json::json!({"alg": "RS256", "kid": "k1"}),
        serde_json::json!({"aud": [AUD], "exp": exp, "sub": sub}),
    )
}

fn form(assertion: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", assertion)
        .finish()
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, Option<String>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), cache)
}

fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post(TOKEN_PATH)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.into())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_refusal_of_the_token_endpoint_is_an_oauth_error_that_says_what_to_fix() {
    let w = world();
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    let (s, body, _) = send(&w.app, get("/healthz")).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));

    // Another grant.
    let (s, body, cache) = send(&w.app, post("grant_type=password&username=x")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("unsupported_grant_type") && body.contains("'password'"),
        "{body}"
    );
    assert_eq!(cache.as_deref(), Some("no-store"));

    // No client assertion: the client did not authenticate (RFC 6749: 401).
    let (s, body, _) = send(&w.app, post("grant_type=client_credentials")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body.contains("invalid_client") && body.contains("--client-assertion-file"),
        "{body}"
    );

    // Junk in place of a token: refused before any review.
    let (s, body, _) = send(&w.app, post(form("not.a.token"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");

    // Signed by another key under the cluster's key id: forged, never reviewed.
    let other = keys::key(EC_PKCS8);
    let forged = sa_token(&other, "system:serviceaccount:team-a:etl");
    let (s, body, _) = send(&w.app, post(form(&forged))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(w.reviews.load(Ordering::Relaxed), 0);

    // A real service account the policy does not name: 403, after one review.
    let stranger = sa_token(&w.key, "system:serviceaccount:team-b:web");
    let (s, body, _) = send(&w.app, post(form(&stranger))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("access_denied") && body.contains("team-b"),
        "{body}"
    );
    assert_eq!(w.reviews.load(Ordering::Relaxed), 1);
    // Asked again: the review is remembered.
    let (s, _, _) = send(&w.app, post(form(&stranger))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(w.reviews.load(Ordering::Relaxed), 1);

    // Granted by the policy, but the credential's keeper has no token (its identity
    // provider is not there): 503, retry shortly, and the keeper's reason.
    let etl = sa_token(&w.key, "system:serviceaccount:team-a:etl");
    let (s, body, cache) = send(&w.app, post(form(&etl))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("prod") && body.contains("retry"), "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));

    // A body over the limit.
    let (s, _, _) = send(&w.app, post(vec![b'a'; 64 * 1024])).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    // Every outcome is counted on /metrics, and no token or secret is in the text.
    let (s, metrics, _) = send(&w.app, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(metrics.contains("polars_cloud_auth_broker"), "{metrics}");
    for secret in ["s3cret", &etl, &stranger] {
        assert!(!metrics.contains(secret));
    }
}
