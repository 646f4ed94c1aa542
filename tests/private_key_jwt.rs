//! `private_key_jwt` (RFC 7523 client assertions signed with `--client-key-file`) with the
//! real binary against the fast test IdP (tests/idp, oidc-provider), which verifies the JWT
//! itself: signature against the client's registered JWKS, `iss`/`sub` = the client,
//! audience, expiry and single use of `jti`. The client `cc-pkjwt` registers the public
//! halves of tests/data/assertion/rsa.pem (kid `test-rsa`, RS256) and ec.pem (kid `test-ec`,
//! ES256); ec-sec1.pem is a P-256 key it does not know. The same keys against real Keycloak:
//! tests/keycloak.rs.

use std::process::Command;

use crate::common::*;
use serde_json::Value;

const CLIENT: &str = "cc-pkjwt";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `token --grant client-credentials --client-key-file FILE [--client-key-id KID]` as
/// `cc-pkjwt`, with no secret anywhere in its environment.
fn token_with_key(idp: &Idp, file: &str, kid: Option<&str>) -> Command {
    let mut c = cmd(idp);
    c.env_remove("POLARS_CLOUD_CLIENT_SECRET")
        .env("POLARS_CLOUD_CLIENT_ID", CLIENT)
        .args([
            "token",
            "--grant",
            "client-credentials",
            "--client-key-file",
        ])
        .arg(repo().join("tests/data/assertion").join(file));
    if let Some(kid) = kid {
        c.args(["--client-key-id", kid]);
    }
    c
}

fn header(jwt: &str) -> Value {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwt.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn rs256_and_es256_keys_get_a_token_from_an_idp_that_verifies_the_assertion() {
    require!(have_idp());
    let idp = Idp::start();
    let mut jtis = Vec::new();
    for (file, kid, alg) in [
        ("rsa.pem", "test-rsa", "RS256"),
        // The same RSA key in PKCS#1.
        ("rsa-pkcs1.pem", "test-rsa", "RS256"),
        ("ec.pem", "test-ec", "ES256"),
    ] {
        let out = run(&mut token_with_key(&idp, file, Some(kid)));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        let access = claims(text(&out.stdout).trim_end());
        assert_eq!(access["azp"], CLIENT, "{file}");
        assert_eq!(access["client_id"], CLIENT, "{file}");
        assert_eq!(access["iss"], idp.issuer.as_str());

        // What went over the wire: an assertion, no secret, no Basic header.
        let requests = idp.token_requests();
        let sent = requests.last().unwrap();
        assert_eq!(sent["status"], 200, "{sent}");
        let params = &sent["params"];
        assert_eq!(params["grant_type"], "client_credentials");
        assert_eq!(params["client_assertion_type"], JWT_BEARER);
        assert!(params.get("client_secret").is_none(), "{params}");
        assert_eq!(sent["basic"], false);
        let assertion = params["client_assertion"].as_str().unwrap();
        let head = header(assertion);
        assert_eq!(head["alg"], alg, "{file}");
        assert_eq!(head["kid"], kid, "{file}");
        let body = claims(assertion);
        assert_eq!(body["iss"], CLIENT);
        assert_eq!(body["sub"], CLIENT);
        assert!(
            body["exp"].as_f64().unwrap() > now_secs(),
            "the assertion must still be valid: {body}"
        );
        jtis.push(body["jti"].as_str().unwrap().to_string());
        assert_no_leak(assertion, &[&stderr]);
    }
    // A fresh assertion per request: oidc-provider refuses a `jti` it has seen.
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 3, "{jtis:?}");
}

/// Without --client-key-id the JWT has no `kid`; the IdP then tries the client's keys of
/// the JWT's algorithm.
#[test]
fn without_a_key_id_the_idp_finds_the_key_by_its_algorithm() {
    require!(have_idp());
    let idp = Idp::start();
    let out = run(&mut token_with_key(&idp, "ec.pem", None));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sent = &idp.token_requests()[0];
    let head = header(sent["params"]["client_assertion"].as_str().unwrap());
    assert_eq!(head["alg"], "ES256");
    assert!(head.get("kid").is_none(), "{head}");
}

#[test]
fn a_key_the_client_does_not_know_exits_3_naming_what_to_register() {
    require!(have_idp());
    let idp = Idp::start();
    // Another P-256 key, under the kid of the registered one: the signature does not verify.
    let mut logs = Vec::new();
    for kid in [Some("test-ec"), None] {
        let out = run(&mut token_with_key(&idp, "ec-sec1.pem", kid));
        let stderr = text(&out.stderr);
        logs.push(stderr.clone());
        assert_eq!(out.status.code(), Some(3), "{kid:?}: {stderr}");
        assert!(out.stdout.is_empty());
        assert!(
            stderr.contains("(401, invalid_client)")
                && stderr
                    .contains("the realm did not accept the JWT signed with --client-key-file")
                && stderr.contains("register its public key"),
            "{kid:?}: {stderr}"
        );
    }
    let requests = idp.token_requests();
    assert_eq!(
        requests.len(),
        2,
        "a rejection is not retried: {requests:?}"
    );
    let logs: Vec<&str> = logs.iter().map(String::as_str).collect();
    for r in &requests {
        assert_eq!(r["status"], 401, "{r}");
        assert_no_leak(r["params"]["client_assertion"].as_str().unwrap(), &logs);
    }
}
