use super::http::parse_retry_after;
use super::*;
use crate::token::tests::jwt;

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn default_issuer_is_polars_realm() {
    let issuer = issuer_for_domain(DEFAULT_DOMAIN).unwrap();
    let e = Endpoints::new(issuer, None).unwrap();
    assert_eq!(
        e.token.as_str(),
        "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/token"
    );
    assert_eq!(
        e.device().as_str(),
        "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/auth/device"
    );
    assert_eq!(
        e.revocation().as_str(),
        "https://auth.prd.cloud.pola.rs/realms/Polars/protocol/openid-connect/revoke"
    );
}

#[test]
fn trailing_slash_on_issuer_is_ignored() {
    let e = Endpoints::new(
        Url::parse("http://127.0.0.1:9/realms/Polars/").unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(
        e.token.as_str(),
        "http://127.0.0.1:9/realms/Polars/protocol/openid-connect/token"
    );
}

#[test]
fn ca_pem_text_is_trusted_or_refused_with_its_variable_named() {
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["broker.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let with = |pem: &str| {
        http_client(&HttpSettings {
            ca_pem: Some(pem.into()),
            ..HttpSettings::default()
        })
    };
    assert!(with(&ca.pem()).is_ok());
    let e = with("not a certificate").unwrap_err().to_string();
    assert!(e.contains("POLARS_CLOUD_CA_PEM"), "{e}");
}

#[test]
fn plain_http_only_to_loopback() {
    for ok in [
        "http://127.0.0.1:8080/r",
        "http://localhost/r",
        "http://[::1]:1/r",
        "https://idp.example/r",
    ] {
        assert!(
            Endpoints::new(Url::parse(ok).unwrap(), None).is_ok(),
            "{ok}"
        );
    }
    let err = Endpoints::new(
        Url::parse("http://idp.example/realms/Polars").unwrap(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("use https"), "{err}");
    let err = Endpoints::new(
        Url::parse("https://idp.example/realms/Polars").unwrap(),
        Some(Url::parse("http://10.0.0.1/token").unwrap()),
    )
    .unwrap_err();
    assert!(matches!(err, EndpointError::PlainHttp(_)));
    assert!(Endpoints::new(Url::parse("ftp://127.0.0.1/x").unwrap(), None).is_err());
}

#[test]
fn a_keycloak_reply_gives_access_and_refresh_tokens() {
    let access = jwt(&serde_json::json!({"exp": 2_000_000_000u64, "iat": 1_999_999_700u64}));
    let body = serde_json::json!({
        "access_token": access, "expires_in": 300, "refresh_expires_in": 1800,
        "refresh_token": "r1", "token_type": "Bearer", "not-before-policy": 0,
        "session_state": "x", "scope": "profile email"
    });
    let t = classify(
        StatusCode::OK,
        None,
        body.to_string().as_bytes(),
        now(),
        &[],
    )
    .unwrap();
    assert_eq!(t.access.lifetime(), Duration::from_secs(300));
    assert_eq!(t.access.secret().expose_secret(), access);
    let r = t.refresh.unwrap();
    assert_eq!(r.value.expose_secret(), "r1");
    assert!(r.expires_at.is_some());
}

/// A token from a cache (the broker's) 200 s into its 300 s life is renewed 80% into
/// the 100 s it has left, not at once.
#[test]
fn a_token_well_into_its_life_counts_its_life_from_receipt() {
    let sent = now();
    let at = |d: i64| {
        (sent
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + d) as u64
    };
    let access = jwt(&serde_json::json!({"exp": at(100), "iat": at(-200)}));
    let body = serde_json::json!({"access_token": access, "expires_in": 100});
    let t = classify(StatusCode::OK, None, body.to_string().as_bytes(), sent, &[]).unwrap();
    assert_eq!(t.access.issued_at(), sent);
    let policy = crate::renew::Policy::default();
    let wait = crate::renew::next_renewal(&t.access, sent, &policy, 0.0);
    // 80% of the 99 to 100 s left (the claims are whole seconds).
    assert!((79.0..=80.0).contains(&wait.as_secs_f64()), "{wait:?}");
}

#[test]
fn opaque_tokens_use_expires_in() {
    let sent = now();
    let body = br#"{"access_token":"opaque","expires_in":60,"refresh_expires_in":0}"#;
    let t = classify(StatusCode::OK, None, body, sent, &[]).unwrap();
    assert_eq!(t.access.expires_at(), sent + Duration::from_secs(60));
    assert!(t.refresh.is_none());
    let err = classify(
        StatusCode::OK,
        None,
        br#"{"access_token":"opaque"}"#,
        sent,
        &[],
    )
    .unwrap_err();
    assert_eq!(err.class(), FailureClass::Transient);
}

#[test]
fn malformed_replies_are_transient() {
    for body in [
        &b"<html>oops</html>"[..],
        b"",
        br#"{"token_type":"Bearer"}"#,
        br#"{"access_token":""}"#,
        br#"[1]"#,
    ] {
        let err = classify(StatusCode::OK, None, body, now(), &[]).unwrap_err();
        assert!(matches!(err, FetchError::Malformed(_)), "{err:?}");
        assert_eq!(err.class(), FailureClass::Transient);
    }
}

#[test]
fn server_trouble_is_transient_and_keeps_retry_after() {
    for status in [500, 502, 503, 504, 429, 408] {
        let s = StatusCode::from_u16(status).unwrap();
        let err = classify(s, Some(Duration::from_secs(3)), b"busy", now(), &[]).unwrap_err();
        assert_eq!(err.class(), FailureClass::Transient, "{status}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }
}

#[test]
fn oauth_errors_are_permanent_with_a_hint() {
    let cases = [
        ("invalid_client", "client id or secret is wrong"),
        ("invalid_grant", "credentials were not accepted"),
        ("unauthorized_client", "check --grant"),
        ("invalid_scope", "check --scope"),
    ];
    for (error, hint) in cases {
        let body = serde_json::json!({"error": error, "error_description": "nope"}).to_string();
        let err = classify(StatusCode::BAD_REQUEST, None, body.as_bytes(), now(), &[]).unwrap_err();
        assert_eq!(err.class(), FailureClass::Permanent);
        let text = err.to_string();
        assert!(text.contains(error) && text.contains(hint), "{text}");
    }
    let err = classify(StatusCode::NOT_FOUND, None, b"Not Found", now(), &[]).unwrap_err();
    assert!(err.to_string().contains("realm name"), "{err}");
    assert_eq!(err.class(), FailureClass::Permanent);
}

#[test]
fn keycloaks_401_unauthorized_client_is_a_wrong_client_secret() {
    let body = br#"{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}"#;
    let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &[]).unwrap_err();
    assert!(
        err.to_string().contains("the client id or secret is wrong"),
        "{err}"
    );
    let body = br#"{"error":"unauthorized_client","error_description":"Client not allowed for direct access grants"}"#;
    let err = classify(StatusCode::BAD_REQUEST, None, body, now(), &[]).unwrap_err();
    assert!(err.to_string().contains("check --grant"), "{err}");
}

#[test]
fn echoed_secrets_are_scrubbed() {
    let body = br#"{"error":"invalid_grant","error_description":"bad password hunter2!"}"#;
    let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &["hunter2"]).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn an_echoed_form_body_or_basic_header_leaks_no_encoding_of_the_secret() {
    let secret = "Zq9+UNIQUE/SECRET=77&x y";
    let basic = basic_credential("cc", secret);
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let echoed = format!(
        "grant_type=password&password={form} lower={} pct={} auth=Basic {basic}",
        form.to_ascii_lowercase(),
        form.replace('+', "%20"),
    );
    let body = serde_json::json!({"error": "invalid_grant", "error_description": echoed});
    let err = classify(
        StatusCode::UNAUTHORIZED,
        None,
        body.to_string().as_bytes(),
        now(),
        &[secret, &basic],
    )
    .unwrap_err();
    let text = format!("{err} {err:?}");
    for leak in ["UNIQUE", "SECRET", &basic[..12]] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert!(text.contains("grant_type=password"), "{text}");
}

#[test]
fn a_secret_cut_by_the_length_limit_is_still_scrubbed() {
    let secret = "hunter2-UNIQUE";
    let description = format!("{}{secret}", "x".repeat(295));
    let body = serde_json::json!({"error": "invalid_grant", "error_description": description});
    let err = classify(
        StatusCode::UNAUTHORIZED,
        None,
        body.to_string().as_bytes(),
        now(),
        &[secret],
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter"), "{err}");
}

#[test]
fn a_redirect_is_reported_as_a_wrong_url_not_a_wrong_secret() {
    let err = classify(StatusCode::FOUND, None, b"", now(), &[]).unwrap_err();
    let err = with_grant_hint(err, &Grant::ServiceAccount, "my-sa");
    let text = err.to_string();
    assert!(text.contains("redirects"), "{text}");
    assert!(!text.contains("wrong client id or secret"), "{text}");
    assert_eq!(err.class(), FailureClass::Permanent);
}

#[test]
fn extreme_expiry_values_are_refused_or_ignored_not_a_panic() {
    let sent = now();
    for body in [
        r#"{"access_token":"opaque","expires_in":1e300}"#.to_string(),
        format!(
            r#"{{"access_token":"{}","expires_in":300}}"#,
            jwt(&serde_json::json!({"exp": 1e19}))
        ),
        format!(
            r#"{{"access_token":"{}","expires_in":300}}"#,
            jwt(&serde_json::json!({"exp": 1e300}))
        ),
    ] {
        let err = classify(StatusCode::OK, None, body.as_bytes(), sent, &[]).unwrap_err();
        assert!(
            matches!(&err, FetchError::Malformed(m) if m.contains("out of range")),
            "{err}"
        );
    }
    let body = br#"{"access_token":"opaque","expires_in":60,"refresh_token":"r","refresh_expires_in":1e300}"#;
    let t = classify(StatusCode::OK, None, body, sent, &[]).unwrap();
    assert_eq!(t.refresh.unwrap().expires_at, None);
}

#[test]
fn service_account_rejections_name_the_user_name() {
    let body = br#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#;
    let err = classify(StatusCode::UNAUTHORIZED, None, body, now(), &[]).unwrap_err();
    let err = with_grant_hint(err, &Grant::ServiceAccount, "my-sa");
    assert!(
        err.to_string().contains("'my-sa@sa.cloud.pola.rs'"),
        "{err}"
    );
}

/// A loopback server that answers one request with `reply` and hands the request back.
async fn one_shot(reply: &'static str) -> (Url, tokio::task::JoinHandle<String>) {
    let (issuer, task) = serve(vec![reply.to_string()]).await;
    (
        issuer,
        tokio::spawn(async { task.await.unwrap().remove(0) }),
    )
}

/// A loopback server that answers one request per reply, in order, then closes; hands
/// the requests back.
async fn serve(replies: Vec<String>) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = Url::parse(&format!("http://{addr}/realms/Polars")).unwrap();
    let task = tokio::spawn(async move {
        let mut requests = Vec::new();
        for reply in replies {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length || n == 0 {
                        break;
                    }
                }
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
            requests.push(String::from_utf8(request).unwrap());
        }
        requests
    });
    (issuer, task)
}

fn token_reply(expires_in: u64, refresh_expires_in: u64) -> String {
    let now = unix_now();
    let access = jwt(&serde_json::json!({"iat": now, "exp": now + expires_in}));
    let body = format!(
        r#"{{"access_token":"{access}","expires_in":{expires_in},"refresh_token":"r-1","refresh_expires_in":{refresh_expires_in}}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn grant_type(request: &str) -> &str {
    let body = request.split_once("\r\n\r\n").unwrap().1;
    body.split('&')
        .find_map(|kv| kv.strip_prefix("grant_type="))
        .unwrap()
}

/// Keycloak caps the refresh token at the session's max lifespan: near it, a new sign-in
/// beats a refresh that would bring a token cut short.
#[tokio::test]
async fn a_refresh_token_ending_before_a_new_access_token_would_is_not_used() {
    let (issuer, server) = serve(vec![
        token_reply(60, 600),
        token_reply(60, 30),
        token_reply(60, 600),
    ])
    .await;
    let source = source_at(issuer, Grant::ServiceAccount);
    for _ in 0..3 {
        source.fetch().await.unwrap();
    }
    let requests = server.await.unwrap();
    let grants: Vec<&str> = requests.iter().map(|r| grant_type(r)).collect();
    assert_eq!(grants, ["password", "refresh_token", "password"]);
}

fn source_at(issuer: Url, grant: Grant) -> TokenSource {
    let credentials = Credentials::from_sources(credentials::Sources {
        client_id: Some("cc".into()),
        client_secret: Some("cc-secret".into()),
        ..credentials::Sources::default()
    });
    TokenSource::new(
        http_client(&HttpSettings::default()).unwrap(),
        Settings {
            endpoints: Endpoints::new(issuer, None).unwrap(),
            grant,
            credentials,
            scope: None,
            audience: None,
        },
    )
}

fn refresh(value: &str) -> RefreshToken {
    RefreshToken {
        value: SecretString::from(value.to_string()),
        expires_at: None,
    }
}

#[tokio::test]
async fn revoke_posts_the_refresh_token_to_keycloaks_revocation_endpoint() {
    let (issuer, server) =
        one_shot("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let source = source_at(issuer, Grant::ServiceAccount);
    source
        .revoke(&refresh("r-1").value, "refresh_token")
        .await
        .unwrap();
    let request = server.await.unwrap();
    assert!(
        request.starts_with("POST /realms/Polars/protocol/openid-connect/revoke HTTP/1.1\r\n"),
        "{request}"
    );
    let body = request.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body,
        "token=r-1&token_type_hint=refresh_token&client_id=PolarsCloud"
    );
}

#[tokio::test]
async fn a_refused_revocation_is_permanent_and_scrubbed() {
    let (issuer, server) = one_shot(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 61\r\nconnection: close\r\n\r\n{\"error\":\"invalid_client\",\"error_description\":\"bad r-secret\"}",
    )
    .await;
    let source = source_at(issuer, Grant::ClientCredentials(ClientAuth::Basic));
    let err = source
        .revoke(&refresh("r-secret").value, "refresh_token")
        .await
        .unwrap_err();
    assert_eq!(err.class(), FailureClass::Permanent);
    let text = err.to_string();
    assert!(
        text.contains("invalid_client") && !text.contains("r-secret"),
        "{text}"
    );
    let request = server.await.unwrap();
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: basic "),
        "{request}"
    );
    assert!(!request.contains("client_secret="), "{request}");
}

fn form(request: &str) -> Vec<(String, String)> {
    let body = request.split_once("\r\n\r\n").unwrap().1;
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn assertion_source(issuer: Url, assertion: Assertion, client_id: Option<&str>) -> TokenSource {
    let credentials = Credentials::from_sources(credentials::Sources {
        client_id: client_id.map(str::to_string),
        ..credentials::Sources::default()
    });
    TokenSource::new(
        http_client(&HttpSettings::default()).unwrap(),
        Settings {
            endpoints: Endpoints::new(issuer, None).unwrap(),
            grant: Grant::ClientCredentials(ClientAuth::Assertion(assertion)),
            credentials,
            scope: Some("openid".into()),
            audience: None,
        },
    )
}

/// RFC 7523 section 2.2: the assertion and its type in the form, no secret anywhere,
/// the file read again for every request (grant, refresh, revocation).
#[tokio::test]
async fn an_assertion_file_is_sent_and_reread_for_grant_refresh_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "hdr.first-assertion.sig\n").unwrap();
    let (issuer, server) = serve(vec![
        token_reply(60, 600),
        token_reply(60, 600),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    ])
    .await;
    let source = assertion_source(issuer, Assertion::File(file.clone()), None);
    source.fetch().await.unwrap();
    std::fs::write(&file, "hdr.second-assertion.sig").unwrap();
    source.fetch().await.unwrap();
    source
        .revoke(&refresh("r-9").value, "refresh_token")
        .await
        .unwrap();
    let requests = server.await.unwrap();
    let forms: Vec<_> = requests.iter().map(|r| form(r)).collect();
    let get =
        |f: &Vec<(String, String)>, k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get(&forms[0], "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(get(&forms[0], "scope").as_deref(), Some("openid"));
    assert_eq!(
        get(&forms[1], "grant_type").as_deref(),
        Some("refresh_token")
    );
    for (f, jwt) in forms.iter().zip([
        "hdr.first-assertion.sig",
        "hdr.second-assertion.sig",
        "hdr.second-assertion.sig",
    ]) {
        assert_eq!(get(f, "client_assertion").as_deref(), Some(jwt), "{f:?}");
        assert_eq!(
            get(f, "client_assertion_type").as_deref(),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(get(f, "client_id"), None, "no client id was configured");
        assert_eq!(get(f, "client_secret"), None);
    }
    for r in &requests {
        assert!(!r.to_ascii_lowercase().contains("authorization:"), "{r}");
    }
}

/// `private_key_jwt`: a fresh JWT per request, its iss and sub the client id, its aud
/// the realm's issuer, and the client id in the form.
#[tokio::test]
async fn a_client_key_signs_a_fresh_assertion_for_every_request() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, crate::source::client_assertion::tests::EC_PKCS8).unwrap();
    let (issuer, server) = serve(vec![token_reply(60, 0), token_reply(60, 0)]).await;
    let source = assertion_source(
        issuer.clone(),
        Assertion::Key {
            path: key,
            kid: Some("k1".into()),
        },
        Some("workload"),
    );
    source.fetch().await.unwrap();
    source.grant().await.unwrap();
    let requests = server.await.unwrap();
    let mut jtis = Vec::new();
    for r in &requests {
        let f = form(r);
        let get = |k: &str| {
            f.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("client_id"), "workload");
        let jwt = get("client_assertion");
        let part = |i: usize| -> serde_json::Value {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        };
        assert_eq!(part(0)["alg"], "ES256");
        assert_eq!(part(0)["kid"], "k1");
        let claims = part(1);
        assert_eq!(claims["iss"], "workload");
        assert_eq!(claims["sub"], "workload");
        assert_eq!(claims["aud"], issuer.as_str().trim_end_matches('/'));
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        jtis.push(claims["jti"].clone());
    }
    assert_ne!(jtis[0], jtis[1]);
}

#[tokio::test]
async fn a_refused_assertion_is_scrubbed_and_says_what_the_realm_needs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU";
    std::fs::write(&file, jwt).unwrap();
    let body = format!(r#"{{"error":"invalid_client","error_description":"bad {jwt}"}}"#);
    let reply = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (issuer, _server) = serve(vec![reply]).await;
    let source = assertion_source(issuer, Assertion::File(file), Some("cc"));
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.class(), FailureClass::Permanent);
    let text = format!("{err} {err:?}");
    assert!(text.contains("Signed JWT - Federated"), "{text}");
    for part in jwt.split('.') {
        assert!(!text.contains(part), "{text}");
    }
}

#[tokio::test]
async fn a_missing_assertion_file_fails_before_any_request_naming_the_flag() {
    let source = assertion_source(
        Url::parse("http://127.0.0.1:9/realms/r").unwrap(),
        Assertion::File("/nonexistent/token".into()),
        None,
    );
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.class(), FailureClass::Permanent);
    assert_eq!(
        err.to_string(),
        "failed to read the client assertion file '/nonexistent/token' (--client-assertion-file)"
    );
    assert_eq!(
        crate::exit::code_for(&anyhow::Error::new(err)),
        crate::exit::USAGE
    );
}

/// Keycloak locks a user after a few refused passwords, for the right one too: an
/// unchanged refused secret is not sent again, a rotated one is.
#[tokio::test]
async fn a_refused_service_account_secret_is_not_sent_again_until_it_changes() {
    let refused = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 72\r\nconnection: close\r\n\r\n{\"error\":\"invalid_grant\",\"error_description\":\"Invalid user credentials\"}";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "wrong-secret").unwrap();
    let (issuer, server) = one_shot(refused).await;
    let source = TokenSource::new(
        http_client(&HttpSettings::default()).unwrap(),
        Settings {
            endpoints: Endpoints::new(issuer.clone(), None).unwrap(),
            grant: Grant::ServiceAccount,
            credentials: Credentials::from_sources(credentials::Sources {
                client_id: Some("sa".into()),
                client_secret_file: Some(secret_file.clone()),
                ..credentials::Sources::default()
            }),
            scope: None,
            audience: None,
        },
    );
    let first = source.fetch().await.unwrap_err();
    assert_eq!(first.class(), FailureClass::Permanent);
    assert!(server.await.unwrap().contains("password=wrong-secret"));
    // The one-shot server is gone: a second request would be `Unreachable`.
    let again = source.fetch().await.unwrap_err();
    assert!(
        matches!(&again, FetchError::Rejected { error: Some(e), .. } if e == "invalid_grant"),
        "{again:?}"
    );
    assert!(
        again
            .to_string()
            .contains("not sent again until it changes"),
        "{again}"
    );
    assert!(!again.to_string().contains("wrong-secret"), "{again}");
    // A rotated secret goes out (and finds no server: proof that it was sent).
    std::fs::write(&secret_file, "rotated-secret").unwrap();
    let rotated = source.fetch().await.unwrap_err();
    assert!(
        matches!(rotated, FetchError::Unreachable { .. }),
        "{rotated:?}"
    );
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    let v = reqwest::header::HeaderValue::from_static("7");
    assert_eq!(parse_retry_after(Some(&v)), Some(Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let v = reqwest::header::HeaderValue::from_str(&later).unwrap();
    let d = parse_retry_after(Some(&v)).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    let v = reqwest::header::HeaderValue::from_static("soon");
    assert_eq!(parse_retry_after(Some(&v)), None);
}
