//! Conformance against a real Keycloak (tests/keycloak): the real binary's grants, renewal,
//! device flow, revocation and error classes against Keycloak's own replies.
//!
//! Keycloak is started once per suite by `scripts/test.sh --slow` (`scripts/keycloak.sh
//! start`), which sets `POLARS_CLOUD_AUTH_KEYCLOAK_URL` and the admin credentials; each test
//! puts the realm back to its baseline through the admin REST API first. By hand:
//!
//! ```sh
//! eval "$(scripts/keycloak.sh start)"
//! cargo test --test integration keycloak:: -- --ignored --test-threads=1
//! scripts/keycloak.sh stop
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const SA_USER: &str = "test-sa@sa.cloud.pola.rs";
const CI_CLIENT: &str = "ci-client";
const CI_SECRET: &str = "ci-s3cr3t-Zq8vXw-never-print-me";

/// The realm settings every test starts from (the file's values; see realm-polars.json).
fn baseline() -> Value {
    json!({
        "accessTokenLifespan": 20,
        "ssoSessionIdleTimeout": 300,
        "ssoSessionMaxLifespan": 600,
        "bruteForceProtected": false,
        "failureFactor": 3,
        "quickLoginCheckMilliSeconds": 1000,
        "minimumQuickLoginWaitSeconds": 60,
        "waitIncrementSeconds": 60,
        "permanentLockout": false,
        "eventsEnabled": true,
        // REFRESH_TOKEN is not saved by default.
        "enabledEventTypes": [
            "LOGIN", "LOGIN_ERROR", "REFRESH_TOKEN", "REFRESH_TOKEN_ERROR", "CLIENT_LOGIN",
            "CLIENT_LOGIN_ERROR", "LOGOUT", "LOGOUT_ERROR", "REVOKE_GRANT", "OAUTH2_DEVICE_AUTH",
            "OAUTH2_DEVICE_CODE_TO_TOKEN", "OAUTH2_DEVICE_CODE_TO_TOKEN_ERROR",
        ],
    })
}

/// The running Keycloak, from the environment `scripts/keycloak.sh start` prints.
struct Keycloak(crate::common::keycloak::KeycloakAdmin);

impl std::ops::Deref for Keycloak {
    type Target = crate::common::keycloak::KeycloakAdmin;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Keycloak {
    /// Connects and resets the realm to its baseline.
    fn get() -> Self {
        let kc = Self(crate::common::keycloak::KeycloakAdmin::from_env());
        kc.reset();
        kc
    }

    /// Changes realm settings (a partial representation).
    fn realm(&self, settings: Value) {
        self.admin("PUT", "", Some(settings));
    }

    fn client_uuid(&self, client_id: &str) -> String {
        let found = self.admin("GET", &format!("/clients?clientId={client_id}"), None);
        found[0]["id"].as_str().unwrap().to_string()
    }

    fn update_client(&self, client_id: &str, mut patch: Value) {
        patch["clientId"] = json!(client_id);
        let uuid = self.client_uuid(client_id);
        self.admin("PUT", &format!("/clients/{uuid}"), Some(patch));
    }

    fn user_id(&self, username: &str) -> String {
        let found = self.admin(
            "GET",
            &format!(
                "/users?exact=true&username={}",
                url::form_urlencoded::byte_serialize(username.as_bytes()).collect::<String>()
            ),
            None,
        );
        found[0]["id"].as_str().unwrap().to_string()
    }

    /// The brute-force detector's record of a user.
    fn brute_force(&self, username: &str) -> Value {
        let id = self.user_id(username);
        self.admin(
            "GET",
            &format!("/attack-detection/brute-force/users/{id}"),
            None,
        )
    }

    /// The user's events, oldest first, as their types (LOGIN, REFRESH_TOKEN, ...).
    fn event_types(&self, username: &str) -> Vec<String> {
        let id = self.user_id(username);
        self.events(&format!("user={id}&"))
    }

    /// All the realm's events since the reset, oldest first, as their types.
    fn all_event_types(&self) -> Vec<String> {
        self.events("")
    }

    fn events(&self, filter: &str) -> Vec<String> {
        let events = self.admin("GET", &format!("/events?{filter}max=1000"), None);
        let mut types: Vec<String> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        types.reverse();
        types
    }

    /// The realm back at its baseline: settings, client, no sessions, locks or events.
    fn reset(&self) {
        self.realm(baseline());
        self.update_client("PolarsCloud", json!({"directAccessGrantsEnabled": true}));
        let sa = self.user_id(SA_USER);
        self.admin(
            "PUT",
            &format!("/users/{sa}"),
            Some(json!({"enabled": true})),
        );
        self.admin("DELETE", "/attack-detection/brute-force/users", None);
        self.admin("DELETE", "/events", None);
        self.admin("POST", "/logout-all", None);
    }

    /// A refresh-token grant sent straight to the token endpoint, as anyone holding the
    /// token could.
    fn refresh_with(&self, refresh: &str) -> (u16, String) {
        self.form(
            "/realms/Polars/protocol/openid-connect/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "PolarsCloud"),
                ("refresh_token", refresh),
            ],
        )
    }
}

fn kc_cmd(kc: &Keycloak) -> Command {
    cmd_for(&kc.issuer())
}

fn assert_exit(out: &std::process::Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    if code != 0 {
        assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    }
    assert_no_leak(SA_SECRET, &[&stderr]);
    assert_no_leak(CI_SECRET, &[&stderr]);
    stderr
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn token_prints_a_keycloak_access_token_for_the_service_account() {
    let kc = Keycloak::get();
    let out = run(kc_cmd(&kc).args(["token", "--log-level", "trace"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = text(&out.stdout);
    let token = token.trim_end();
    let c = claims(token);
    assert_eq!(c["iss"], kc.issuer().as_str());
    assert_eq!(c["azp"], "PolarsCloud");
    assert_eq!(c["preferred_username"], SA_USER);
    assert_eq!(c["typ"], "Bearer");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 20);
    assert_no_leak(SA_SECRET, &[&stderr, token]);
    assert_no_leak(token, &[&stderr]);
    assert_eq!(kc.event_types(SA_USER), ["LOGIN"]);
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn init_writes_keycloaks_token_to_the_file_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let kc = Keycloak::get();
    kc.realm(json!({"accessTokenLifespan": 45}));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/token");
    let out = run(kc_cmd(&kc).arg("init").arg("--token-file").arg(&path));
    assert_exit(&out, 0);
    let token = std::fs::read_to_string(&path).unwrap();
    let c = claims(&token);
    assert_eq!(c["preferred_username"], SA_USER);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 45);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn client_credentials_works_with_basic_and_post_client_auth() {
    let kc = Keycloak::get();
    for auth in ["basic", "post"] {
        let out = run(client_credentials(kc_cmd(&kc), "--client-auth", auth)
            .env("POLARS_CLOUD_CLIENT_ID", CI_CLIENT)
            .env("POLARS_CLOUD_CLIENT_SECRET", CI_SECRET));
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{auth}: {stderr}");
        let c = claims(text(&out.stdout).trim_end());
        assert_eq!(c["azp"], CI_CLIENT, "{auth}");
        assert_eq!(
            c["preferred_username"], "service-account-ci-client",
            "{auth}"
        );
        assert_no_leak(CI_SECRET, &[&stderr]);
    }
    // Both were client logins at the realm, and nothing else.
    assert_eq!(kc.client_logins(CI_CLIENT), 2);
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn a_wrong_client_secret_for_client_credentials_exits_3_naming_the_credentials() {
    let kc = Keycloak::get();
    for auth in ["basic", "post"] {
        let out = run(client_credentials(kc_cmd(&kc), "--client-auth", auth)
            .env("POLARS_CLOUD_CLIENT_ID", CI_CLIENT)
            .env("POLARS_CLOUD_CLIENT_SECRET", "not-the-ci-secret"));
        let stderr = assert_exit(&out, 3);
        // Keycloak says 401 unauthorized_client here, not RFC 6749's invalid_client.
        assert!(
            stderr.contains("401, unauthorized_client"),
            "{auth}: {stderr}"
        );
        assert!(
            stderr.contains("the client id or secret is wrong"),
            "{auth}: {stderr}"
        );
        assert_no_leak("not-the-ci-secret", &[&stderr]);
    }
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn a_wrong_password_exits_3_naming_the_keycloak_user() {
    let kc = Keycloak::get();
    let out = run(kc_cmd(&kc)
        .arg("token")
        .env("POLARS_CLOUD_CLIENT_SECRET", "wrong-Zq8vXw"));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(stderr.contains("Invalid user credentials"), "{stderr}");
    assert!(stderr.contains(SA_USER), "{stderr}");
    assert_no_leak("wrong-Zq8vXw", &[&stderr]);
    assert_eq!(kc.event_types(SA_USER), ["LOGIN_ERROR"]);
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn a_client_without_direct_access_grants_exits_3_and_names_the_grant() {
    let kc = Keycloak::get();
    kc.update_client("PolarsCloud", json!({"directAccessGrantsEnabled": false}));
    let out = run(kc_cmd(&kc).arg("token"));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("400, unauthorized_client"), "{stderr}");
    assert!(
        stderr.contains("Client not allowed for direct access grants"),
        "{stderr}"
    );
    assert!(stderr.contains("check --grant"), "{stderr}");
    kc.update_client("PolarsCloud", json!({"directAccessGrantsEnabled": true}));
    assert_exit(&run(kc_cmd(&kc).arg("token")), 0);
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn an_unknown_realm_exits_3_and_names_the_realm() {
    let kc = Keycloak::get();
    let out = run(kc_cmd(&kc)
        .arg("token")
        .env("POLARS_CLOUD_ISSUER", format!("{}/realms/Nope", kc.base)));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("404"), "{stderr}");
    assert!(stderr.contains("Realm does not exist"), "{stderr}");
    assert!(stderr.contains("realm name"), "{stderr}");
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn a_disabled_user_exits_3_with_keycloaks_reason() {
    let kc = Keycloak::get();
    let out = run(kc_cmd(&kc)
        .arg("init")
        .arg("--token-file")
        .arg(tempfile::tempdir().unwrap().path().join("token"))
        .env("POLARS_CLOUD_CLIENT_ID", "disabled-sa"));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(stderr.contains("Account disabled"), "{stderr}");
    assert!(stderr.contains("disabled-sa@sa.cloud.pola.rs"), "{stderr}");

    // A user disabled while a sidecar would use it: the same answer.
    let sa = kc.user_id(SA_USER);
    kc.admin(
        "PUT",
        &format!("/users/{sa}"),
        Some(json!({"enabled": false})),
    );
    let stderr = assert_exit(&run(kc_cmd(&kc).arg("token")), 3);
    assert!(stderr.contains("Account disabled"), "{stderr}");
}

/// A sidecar against Keycloak, its credentials from `secrets` (as a mounted Secret).
fn sidecar(kc: &Keycloak, path: &Path, secrets: &Path, extra: &[&str]) -> Sidecar {
    let mut c = kc_cmd(kc);
    c.env_remove("POLARS_CLOUD_CLIENT_ID")
        .env_remove("POLARS_CLOUD_CLIENT_SECRET");
    let mut args: Vec<std::ffi::OsString> = vec!["--ready-margin".into(), "0s".into()];
    args.extend(extra.iter().map(Into::into));
    args.extend([
        "--token-file".into(),
        path.into(),
        "--credentials-dir".into(),
        secrets.into(),
    ]);
    Sidecar::start_with(&mut c, path, &args)
}

fn secrets_dir(secret: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_id"), format!("{SA_ID}\n")).unwrap();
    std::fs::write(dir.path().join("client_secret"), format!("{secret}\n")).unwrap();
    dir
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn sidecar_refreshes_then_signs_in_again_when_the_session_reaches_its_max() {
    let kc = Keycloak::get();
    // 6 s tokens in sessions that end 16 s after sign-in, whatever the refreshes.
    kc.realm(json!({
        "accessTokenLifespan": 6,
        "ssoSessionIdleTimeout": 60,
        "ssoSessionMaxLifespan": 16,
    }));
    let secrets = secrets_dir(SA_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(&kc, &path, secrets.path(), &[]);

    // Watch the file: each token's session id (sid) and expiry, as a reader sees them.
    let mut sessions: Vec<(String, Vec<String>)> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(token) = std::fs::read_to_string(&path) {
            let c = claims(&token);
            // Refreshing near the session's max would bring tokens cut short by its end
            // (to 3.5 s or less here); a second of slack for a slow answer on a busy machine.
            let life = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
            assert!(life >= 5, "a token cut short by the session's end: {c}");
            let sid = c["sid"].as_str().unwrap().to_string();
            let jti = c["jti"].as_str().unwrap().to_string();
            match sessions.last_mut() {
                Some((s, jtis)) if *s == sid => {
                    if !jtis.contains(&jti) {
                        jtis.push(jti);
                    }
                }
                _ => sessions.push((sid, vec![jti])),
            }
        }
        // Done once a second session has been refreshed as well.
        if sessions.len() >= 2 && sessions[1].1.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts: Vec<usize> = sessions.iter().map(|(_, j)| j.len()).collect();
    assert!(
        sessions.len() >= 2 && counts[0] >= 2 && counts[1] >= 2,
        "tokens per session: {counts:?}"
    );
    let (code, _, stderr) = sc.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_leak(SA_SECRET, &[&stderr]);

    // Keycloak's own record: a sign-in, refreshes in that session, then a new sign-in.
    let types = kc.event_types(SA_USER);
    let logins: Vec<usize> = (0..types.len()).filter(|&i| types[i] == "LOGIN").collect();
    assert!(logins.len() >= 2, "{types:?}");
    assert_eq!(logins[0], 0, "{types:?}");
    let refreshes = types[..logins[1]]
        .iter()
        .filter(|t| *t == "REFRESH_TOKEN")
        .count();
    assert!(refreshes >= 1, "{types:?}");
    assert!(!types.contains(&"LOGIN_ERROR".to_string()), "{types:?}");
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn sidecar_signs_in_again_when_keycloak_ends_the_session_under_it() {
    let kc = Keycloak::get();
    kc.realm(json!({"accessTokenLifespan": 6}));
    let secrets = secrets_dir(SA_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(&kc, &path, secrets.path(), &[]);
    let sid = |path: &Path| {
        let token = std::fs::read_to_string(path).ok()?;
        claims(&token)["sid"].as_str().map(str::to_string)
    };
    let first = wait_for(Duration::from_secs(20), || sid(&path));
    // An admin signs the user out: the refresh token the sidecar holds is dead.
    let user = kc.user_id(SA_USER);
    kc.admin("POST", &format!("/users/{user}/logout"), None);
    let second = wait_for(Duration::from_secs(20), || {
        sid(&path).filter(|s| *s != first)
    });
    assert_ne!(first, second);
    assert_eq!(sc.ready(), Some(200));
    assert_eq!(
        sc.metric("polars_cloud_auth_failures_total{class=\"permanent\"}"),
        Some(0.0)
    );
    let (code, _, stderr) = sc.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // A session end is routine: said as such, with no advice to check the secret (that is
    // kept for a sign-in that fails).
    assert!(
        stderr.contains("the identity provider ended the session"),
        "{stderr}"
    );
    assert!(stderr.contains("signed in again"), "{stderr}");
    assert!(!stderr.contains("check the client id"), "{stderr}");
    // The refused refresh is not the user's event: its session, which named the user, is gone.
    let types = kc.all_event_types();
    let error = types
        .iter()
        .position(|t| t == "REFRESH_TOKEN_ERROR")
        .unwrap_or_else(|| panic!("no refused refresh: {types:?}"));
    assert_eq!(types[0], "LOGIN", "{types:?}");
    assert_eq!(
        types.get(error + 1).map(String::as_str),
        Some("LOGIN"),
        "{types:?}"
    );
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn login_is_approved_through_keycloaks_pages_and_logout_revokes_the_session() {
    let kc = Keycloak::get();
    let home = tempfile::tempdir().unwrap();
    let person = |c: &mut Command| {
        c.env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("BROWSER")
            .env_remove("POLARS_CLOUD_CLIENT_ID")
            .env_remove("POLARS_CLOUD_CLIENT_SECRET");
    };
    let mut c = kc_cmd(&kc);
    person(&mut c);
    let login = Login::start(c.args(["login", "--no-browser"]));
    let url = login.url();
    assert!(
        url.starts_with(&format!("{}/device?user_code=", kc.issuer())),
        "{url}"
    );
    let approve = scrubbed("node")
        .arg(repo().join("tests/keycloak/approve.mjs"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    let (status, _, stderr) = login.finish();
    assert!(status.success(), "{stderr}");

    let config = std::fs::read_to_string(home.path().join(".config/polars_cloud/config.toml"))
        .unwrap_or_else(|e| panic!("no config.toml ({e}): {stderr}"));
    let field = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {name} in config.toml"))
    };
    let (access, refresh) = (field("access_token"), field("refresh_token"));
    let c = claims(&access);
    assert_eq!(c["preferred_username"], "alice");
    assert_eq!(c["azp"], "PolarsCloud");
    assert_no_leak(&access, &[&stderr]);
    assert_no_leak(&refresh, &[&stderr]);
    // The stored refresh token is live at the realm (Keycloak does not rotate it here).
    let (code, body) = kc.refresh_with(&refresh);
    assert_eq!(code, 200, "{body}");

    let mut c = kc_cmd(&kc);
    person(&mut c);
    let out = run(c.arg("logout"));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the session was revoked"), "{stderr}");
    let (code, body) = kc.refresh_with(&refresh);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    let alice = kc.user_id("alice");
    let sessions = kc.admin("GET", &format!("/users/{alice}/sessions"), None);
    assert_eq!(sessions, json!([]), "Keycloak still holds alice's session");
}

#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn brute_force_detection_never_locks_the_account_for_init_or_a_sidecar_with_a_wrong_secret() {
    let kc = Keycloak::get();
    // Three failures lock the user; two within a second do too.
    kc.realm(json!({
        "bruteForceProtected": true,
        "permanentLockout": false,
        "failureFactor": 3,
        "quickLoginCheckMilliSeconds": 1000,
        "minimumQuickLoginWaitSeconds": 60,
        "waitIncrementSeconds": 60,
    }));
    let wrong = "wrong-Zq8vXw-brute";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let out = run(kc_cmd(&kc)
        .arg("init")
        .arg("--token-file")
        .arg(&path)
        .env("POLARS_CLOUD_CLIENT_SECRET", wrong));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("Invalid user credentials"), "{stderr}");
    assert_no_leak(wrong, &[&stderr]);
    let record = kc.brute_force(SA_USER);
    assert_eq!(record["numFailures"], 1, "{record}");
    assert_eq!(record["disabled"], false, "{record}");

    // Not a quick second failure.
    std::thread::sleep(Duration::from_millis(1500));
    let secrets = secrets_dir(wrong);
    let sc = sidecar(&kc, &path, secrets.path(), &["--rejected-retry", "300ms"]);
    // Many rejected rounds of the renewal loop.
    wait_for(Duration::from_secs(30), || {
        (sc.metric("polars_cloud_auth_failures_total{class=\"permanent\"}")? >= 6.0).then_some(())
    });
    assert_eq!(sc.ready(), Some(503));
    let record = kc.brute_force(SA_USER);
    assert_eq!(
        record["disabled"], false,
        "the sidecar locked the account: {record}"
    );
    assert_eq!(record["numFailures"], 2, "{record}");

    // The Secret is fixed: the sidecar signs in at its next round, the account is unlocked.
    std::fs::write(secrets.path().join("client_secret"), SA_SECRET).unwrap();
    wait_for(Duration::from_secs(30), || {
        (sc.ready()? == 200).then_some(())
    });
    assert_eq!(
        claims(&std::fs::read_to_string(&path).unwrap())["preferred_username"],
        SA_USER
    );
    let (code, _, stderr) = sc.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("not sent again until it changes"),
        "{stderr}"
    );
    assert_no_leak(wrong, &[&stderr]);
    assert_no_leak(SA_SECRET, &[&stderr]);
    let record = kc.brute_force(SA_USER);
    assert_eq!(record["disabled"], false, "{record}");
    assert_exit(&run(kc_cmd(&kc).arg("token")), 0);
}

// --- client assertions (RFC 7523): no secret anywhere ----------------------------------------

const PKJWT_CLIENT: &str = "pkjwt-client";

/// The binary with no client id and no secret anywhere in its environment.
fn assertion_cmd(kc: &Keycloak) -> Command {
    let mut c = kc_cmd(kc);
    c.env_remove("POLARS_CLOUD_CLIENT_ID")
        .env_remove("POLARS_CLOUD_CLIENT_SECRET");
    c
}

/// `token --grant client-credentials FLAG VALUE` on `c`.
fn client_credentials(mut c: Command, flag: &str, value: impl AsRef<std::ffi::OsStr>) -> Command {
    c.args(["token", "--grant", "client-credentials", flag])
        .arg(value);
    c
}

/// `private_key_jwt`: the realm import registers the public keys of tests/data/assertion
/// (`jwks.string`, kids `test-rsa` and `test-ec`) on a client whose authenticator is "Signed
/// JWT"; the binary signs a fresh JWT per request with the private key.
#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn private_key_jwt_gets_a_token_with_rs256_and_es256_keys() {
    let kc = Keycloak::get();
    let keys = repo().join("tests/data/assertion");
    for (file, kid) in [
        ("rsa.pem", "test-rsa"),
        ("ec.pem", "test-ec"),
        ("ec.pem", ""),
    ] {
        let mut c = client_credentials(assertion_cmd(&kc), "--client-key-file", keys.join(file));
        c.env("POLARS_CLOUD_CLIENT_ID", PKJWT_CLIENT);
        if !kid.is_empty() {
            c.args(["--client-key-id", kid]);
        }
        let out = run(&mut c);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{file} {kid}: {stderr}");
        let token = claims(text(&out.stdout).trim_end());
        assert_eq!(token["azp"], PKJWT_CLIENT, "{file}");
        assert_eq!(token["preferred_username"], "service-account-pkjwt-client");
    }
    // Three client logins, each with its own assertion (Keycloak refuses a reused jti).
    assert_eq!(kc.client_logins(PKJWT_CLIENT), 3);
}

/// A key the realm does not know is refused with Keycloak's own answer, exit 3, and a hint
/// naming what to register.
#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn private_key_jwt_with_an_unregistered_key_exits_3() {
    let kc = Keycloak::get();
    let out = run(client_credentials(
        assertion_cmd(&kc),
        "--client-key-file",
        repo().join("tests/data/assertion/ec-sec1.pem"),
    )
    .env("POLARS_CLOUD_CLIENT_ID", PKJWT_CLIENT));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("--client-key-file"), "{stderr}");
    assert!(
        stderr.contains("invalid_client") || stderr.contains("unauthorized_client"),
        "{stderr}"
    );
}

/// The cluster that `scripts/cluster.sh start` runs, from the environment it prints.
struct Cluster {
    kubectl: String,
    issuer: String,
}

impl Cluster {
    fn get() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: this test needs the real kube-apiserver too; run `eval \"$(scripts/cluster.sh env)\"` (scripts/test.sh --slow starts both)")
            })
        };
        var("POLARS_CLOUD_AUTH_KUBECONFIG");
        Self {
            kubectl: var("POLARS_CLOUD_AUTH_KUBECTL"),
            issuer: var("POLARS_CLOUD_AUTH_CLUSTER_ISSUER"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = scrubbed(&self.kubectl)
            .args(args)
            .env(
                "KUBECONFIG",
                std::env::var("POLARS_CLOUD_AUTH_KUBECONFIG").unwrap(),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

/// Sets up what an admin of a self-hosted realm sets up: a Kubernetes identity provider
/// trusting the cluster's issuer, and a client whose authenticator is "Signed JWT -
/// Federated" with the service account's subject. Returns the client id.
fn federated_client(kc: &Keycloak, cluster: &Cluster, subject: &str) -> String {
    let alias = "test-cluster";
    let idp = json!({
        "alias": alias,
        "providerId": "kubernetes",
        "enabled": true,
        "config": {"issuer": cluster.issuer},
    });
    let bearer = format!("Bearer {}", kc.admin_token());
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    // A leftover from an earlier run of this test is replaced.
    kc.http(
        "DELETE",
        &format!("/admin/realms/Polars/identity-provider/instances/{alias}"),
        &headers,
        "",
    );
    kc.admin("POST", "/identity-provider/instances", Some(idp));
    let client_id = "k8s-workload";
    kc.federated_client(client_id, alias, subject);
    client_id.to_string()
}

/// End to end with both real peers and no secret anywhere: the real API server issues a
/// service-account token (TokenRequest, audience the realm), Keycloak's Kubernetes identity
/// provider verifies it against the API server's own discovery document and JWKS, and the
/// binary turns it into a Keycloak access token with `--client-assertion-file`.
#[test]
#[ignore = "needs Keycloak and the kube-apiserver: scripts/test.sh --slow"]
fn a_kubernetes_service_account_token_gets_a_keycloak_token_with_no_secret() {
    let kc = Keycloak::get();
    let cluster = Cluster::get();
    let ns = "assertion-e2e";
    let sa = "workload";
    let _ = scrubbed(&cluster.kubectl)
        .args(["create", "namespace", ns])
        .env(
            "KUBECONFIG",
            std::env::var("POLARS_CLOUD_AUTH_KUBECONFIG").unwrap(),
        )
        .output();
    let _ = scrubbed(&cluster.kubectl)
        .args(["create", "serviceaccount", sa, "-n", ns])
        .env(
            "KUBECONFIG",
            std::env::var("POLARS_CLOUD_AUTH_KUBECONFIG").unwrap(),
        )
        .output();
    let subject = format!("system:serviceaccount:{ns}:{sa}");
    let client_id = federated_client(&kc, &cluster, &subject);
    let token_for = |audience: &str| {
        cluster
            .kubectl(&[
                "create",
                "token",
                sa,
                "-n",
                ns,
                "--audience",
                audience,
                "--duration=10m",
            ])
            .trim()
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let sa_token = token_for(&kc.issuer());
    let sa_claims = claims(&sa_token);
    assert_eq!(sa_claims["iss"], cluster.issuer.as_str());
    assert_eq!(sa_claims["sub"], subject.as_str());
    std::fs::write(&file, format!("{sa_token}\n")).unwrap();

    // No client id, no secret: the assertion names the client.
    let out = run(&mut client_credentials(
        assertion_cmd(&kc),
        "--client-assertion-file",
        &file,
    ));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let access = claims(text(&out.stdout).trim_end());
    assert_eq!(access["azp"], client_id.as_str());
    assert_eq!(access["iss"], kc.issuer().as_str());
    assert_no_leak(&sa_token, &[&stderr]);

    // With the client id given it must match; a mismatched one is refused.
    let out = run(
        client_credentials(assertion_cmd(&kc), "--client-assertion-file", &file)
            .env("POLARS_CLOUD_CLIENT_ID", &client_id),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A token for another audience is refused: Keycloak checks that it was meant for it.
    std::fs::write(&file, token_for("https://somewhere-else.example")).unwrap();
    let out = run(&mut client_credentials(
        assertion_cmd(&kc),
        "--client-assertion-file",
        &file,
    ));
    let stderr = assert_exit(&out, 3);
    assert!(stderr.contains("Signed JWT - Federated"), "{stderr}");

    // The file is read again at every use: a fresh token from the API server works again.
    std::fs::write(&file, token_for(&kc.issuer())).unwrap();
    let out = run(&mut client_credentials(
        assertion_cmd(&kc),
        "--client-assertion-file",
        &file,
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
}
