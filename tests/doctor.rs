//! `doctor` against real peers: each test injects one fault named in docs/doctor.md and
//! checks that doctor names it (its link fails, with the cause in the detail), exits 1,
//! and never prints the secret, a token or a refresh handle.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::common::*;
use polars_cloud_auth::relay::handle::HandleKey;
use polars_cloud_auth::sink::client_config::ClientConfig;
use serde_json::Value;

/// What one doctor run printed: the JSON report, the table, the exit code.
struct Run {
    json: Value,
    table: String,
    code: i32,
}

impl Run {
    /// (status, detail, fix) of one link.
    fn link(&self, name: &str) -> (String, String, String) {
        let f = self.json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["link"] == name)
            .unwrap_or_else(|| panic!("no link {name} in\n{}", self.table));
        let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
        (s("status"), s("detail"), s("fix"))
    }

    fn status(&self, name: &str) -> String {
        self.link(name).0
    }

    /// Every secret-bearing value stays out of both renderings.
    fn assert_no_leak(&self, secrets: &[&str]) {
        let json = self.json.to_string();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            assert_no_leak(s, &[&self.table, &json]);
        }
    }
}

/// Runs `doctor` twice with the same setup (JSON, then the table).
fn doctor(setup: impl Fn(&mut Command)) -> Run {
    let mut c = bin_cmd();
    c.arg("doctor");
    setup(&mut c);
    c.arg("--json");
    let out = run(&mut c);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "doctor printed no JSON:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let mut t = bin_cmd();
    t.arg("doctor");
    setup(&mut t);
    let table = run(&mut t);
    assert_eq!(table.status.code(), out.status.code());
    Run {
        json,
        table: text(&table.stdout) + &text(&table.stderr),
        code: out.status.code().unwrap_or(-1),
    }
}

fn sa(c: &mut Command, issuer: &str) {
    c.env("POLARS_CLOUD_ISSUER", issuer)
        .env("POLARS_CLOUD_CLIENT_ID", SA_ID)
        .env("POLARS_CLOUD_CLIENT_SECRET", SA_SECRET)
        .env("HOME", "/nonexistent-doctor-home");
}

/// A JWT with this `exp` (unsigned: doctor reads, never verifies).
fn jwt(exp: u64, iat: u64) -> String {
    use base64::Engine;
    let e = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        e(r#"{"alg":"RS256","typ":"JWT"}"#),
        e(&format!(r#"{{"exp":{exp},"iat":{iat},"sub":"x"}}"#)),
        e("signature-bytes-of-the-test-token")
    )
}

#[test]
fn a_healthy_service_account_passes_and_nothing_secret_is_printed() {
    require!(have_idp());
    let idp = Idp::start();
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    let mut init = cmd(&idp);
    init.arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &token);
    assert!(run(&mut init).status.success());
    let r = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &token);
    });
    for l in [
        "credentials",
        "idp",
        "clock",
        "grant",
        "token-file",
        "app-access",
    ] {
        assert_eq!(r.status(l), "ok", "{l}:\n{}", r.table);
    }
    assert_eq!(r.code, 0, "{}", r.table);
    assert_eq!(r.json["ok"], true);
    // The sign-in test leaves no session: its refresh token was revoked.
    assert_eq!(idp.revocations().len(), 2, "one per doctor run");
    let written = std::fs::read_to_string(&token).unwrap();
    r.assert_no_leak(&[SA_SECRET, written.trim()]);
    assert!(r.table.contains("every link holds"), "{}", r.table);
}

#[test]
fn a_wrong_secret_is_named_at_the_grant() {
    require!(have_idp());
    let idp = Idp::start();
    let wrong = "wr0ng-Secret-also-never-printed";
    let r = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_CLIENT_SECRET", wrong);
    });
    let (status, detail, fix) = r.link("grant");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("rejected"), "{detail}");
    assert!(fix.contains("secret"), "{fix}");
    assert_eq!(r.status("idp"), "ok");
    assert_eq!(r.code, 1);
    r.assert_no_leak(&[wrong, SA_SECRET]);
}

#[test]
fn an_unreachable_identity_provider_is_named_and_the_grant_not_tried() {
    let port = free_port();
    let r = doctor(|c| sa(c, &format!("http://127.0.0.1:{port}/realms/Polars")));
    let (status, detail, fix) = r.link("idp");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("could not reach"), "{detail}");
    assert!(detail.to_lowercase().contains("refused"), "{detail}");
    assert!(fix.contains("HTTPS_PROXY"), "{fix}");
    assert_eq!(r.status("grant"), "skip");
    assert_eq!(r.status("clock"), "skip");
    assert_eq!(r.code, 1);
    r.assert_no_leak(&[SA_SECRET]);
}

#[test]
fn a_ca_that_does_not_verify_the_identity_provider_is_named() {
    require!(have_idp());
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(tmp.path());
    let idp = Idp::start_with(IdpOptions {
        tls: Some((cert, key)),
        ..IdpOptions::default()
    });
    assert!(idp.issuer.starts_with("https://"), "{}", idp.issuer);
    let other = tmp.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new().pem()).unwrap();
    let r = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_CA_FILE", &other);
    });
    let (status, detail, fix) = r.link("idp");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("could not reach"), "{detail}");
    assert!(fix.contains("POLARS_CLOUD_CA_FILE"), "{fix}");
    assert!(fix.contains("certificate does not verify"), "{fix}");
    assert_eq!(r.code, 1);
    // With the CA that signed it, the same setup holds.
    let good = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_CA_FILE", &ca);
    });
    assert_eq!(good.status("idp"), "ok", "{}", good.table);
    assert_eq!(good.status("grant"), "ok", "{}", good.table);
}

/// An HTTP peer whose clock is an hour behind ours: every answer carries that `Date`.
fn skewed_server(skew: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let date = httpdate::fmt_http_date(SystemTime::now() - skew);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
        }
    });
    port
}

#[test]
fn a_skewed_clock_is_named_against_the_identity_providers_date() {
    let port = skewed_server(Duration::from_secs(3600));
    let r = doctor(|c| {
        sa(c, &format!("http://127.0.0.1:{port}/realms/Polars"));
        c.arg("--no-grant");
    });
    let (status, detail, fix) = r.link("clock");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("ahead of the identity provider"),
        "{detail}"
    );
    let secs: u64 = detail
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!((3595..=3605).contains(&secs), "{detail}");
    assert!(fix.contains("NTP"), "{fix}");
    assert_eq!(r.code, 1);
}

#[test]
fn a_stale_a_missing_and_a_garbled_token_file_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let port = skewed_server(Duration::ZERO);
    let issuer = format!("http://127.0.0.1:{port}/realms/Polars");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = tmp.path().join("token");
    let stale = jwt(now - 100, now - 400);
    std::fs::write(&token, &stale).unwrap();
    let with_file = |path: PathBuf| {
        let issuer = issuer.clone();
        move |c: &mut Command| {
            sa(c, &issuer);
            c.arg("--no-grant")
                .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path);
        }
    };
    let r = doctor(with_file(token.clone()));
    let (status, detail, fix) = r.link("token-file");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("expired 10"), "{detail}");
    assert!(fix.contains("renewals stopped"), "{fix}");
    assert_eq!(r.code, 1);
    r.assert_no_leak(&[&stale]);

    let r = doctor(with_file(tmp.path().join("nothing-here")));
    let (status, detail, _) = r.link("token-file");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("no token file at"), "{detail}");

    std::fs::write(&token, "not a token").unwrap();
    let r = doctor(with_file(token.clone()));
    let (status, detail, _) = r.link("token-file");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("does not hold a JWT"), "{detail}");

    // Fresh: holds.
    std::fs::write(&token, jwt(now + 300, now)).unwrap();
    let r = doctor(with_file(token.clone()));
    assert_eq!(r.status("token-file"), "ok", "{}", r.table);
    assert_eq!(r.code, 0, "{}", r.table);
}

#[cfg(unix)]
#[test]
fn a_token_file_the_apps_uid_cannot_read_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let port = skewed_server(Duration::ZERO);
    let issuer = format!("http://127.0.0.1:{port}/realms/Polars");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dir = tmp.path().join("token-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, jwt(now + 300, now)).unwrap();
    let mode = |m: u32| std::fs::set_permissions(&token, std::fs::Permissions::from_mode(m));
    let run_as = |uid: &str| {
        let (issuer, token, uid) = (issuer.clone(), token.clone(), uid.to_string());
        doctor(move |c| {
            sa(c, &issuer);
            c.args(["--no-grant", "--app-uid", &uid])
                .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &token);
        })
    };
    // 0640, owned by us, no fsGroup: another uid cannot read it.
    mode(0o640).unwrap();
    let r = run_as("4242");
    let (status, detail, fix) = r.link("app-access");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("uid 4242") && detail.contains("cannot read"),
        "{detail}"
    );
    assert!(fix.contains("fsGroup"), "{fix}");
    assert_eq!(r.code, 1);
    // 0644, as the injector writes it in pods without an fsGroup: any uid reads it.
    mode(0o644).unwrap();
    let r = run_as("4242");
    assert_eq!(r.status("app-access"), "ok", "{}", r.table);
    assert_eq!(r.code, 0, "{}", r.table);
}

/// Our container in an injected pod, run as the injector configures it: credentials from
/// a directory, the relay with one app config directory.
struct Pod {
    _idp: Idp,
    sidecar: Proc,
    tmp: tempfile::TempDir,
    env: Vec<(String, String)>,
    relay_port: u16,
    listen: u16,
}

impl Pod {
    fn start(idp: Idp) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let creds = tmp.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("client_id"), SA_ID).unwrap();
        std::fs::write(creds.join("client_secret"), format!("{SA_SECRET}\n")).unwrap();
        let (listen, relay_port) = (free_port(), free_port());
        let p = |rel: &str| tmp.path().join(rel).display().to_string();
        let env: Vec<(String, String)> = [
            ("POLARS_CLOUD_ISSUER", idp.issuer.clone()),
            ("POLARS_CLOUD_CREDENTIALS_DIR", p("creds")),
            ("POLARS_CLOUD_ACCESS_TOKEN_PATH", p("token/token")),
            ("POLARS_CLOUD_RELAY_CLIENT_CONFIGS", p("client/app")),
            ("POLARS_CLOUD_RELAY_STATE_DIR", p("state")),
            (
                "POLARS_CLOUD_RELAY_LISTEN",
                format!("127.0.0.1:{relay_port}"),
            ),
            ("POLARS_CLOUD_LISTEN", format!("127.0.0.1:{listen}")),
            // As the injector sets it in a pod without an fsGroup.
            ("POLARS_CLOUD_TOKEN_FILE_MODE", "0644".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut c = bin_cmd();
        c.arg("sidecar").envs(env.iter().map(|(k, v)| (k, v)));
        let sidecar = Proc::spawn(&mut c);
        wait_for(Duration::from_secs(30), || {
            (http_get(listen, "/readyz").map(|(s, _)| s) == Some(200)).then_some(())
        });
        Self {
            _idp: idp,
            sidecar,
            tmp,
            env,
            relay_port,
            listen,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn doctor(&self, extra: &[(&str, &Path)], args: &[&str]) -> Run {
        doctor(|c| {
            c.env("HOME", "/nonexistent-doctor-home")
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            for (k, v) in extra {
                c.env(k, v);
            }
            c.args(args);
        })
    }

    /// Everything that would let someone act as the app.
    fn secrets(&self) -> Vec<String> {
        let config = ClientConfig::in_dir(&self.path("client/app"));
        let toml = std::fs::read_to_string(config.path()).unwrap();
        let handle = toml
            .lines()
            .find_map(|l| l.strip_prefix("refresh_token = \""))
            .map(|h| h.trim_end_matches('"').to_string())
            .unwrap();
        vec![
            SA_SECRET.to_string(),
            std::fs::read_to_string(self.path("token/token"))
                .unwrap()
                .trim()
                .to_string(),
            handle,
        ]
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.sidecar.stop(Duration::from_secs(10));
    }
}

/// One refresh at the relay with this client version header and the app's handle (from
/// its legacy refresh file): what an old client does, so `/metrics` shows it. (A refused
/// request is not counted: nobody may forge the versions the relay reports.)
fn refresh_at_relay(pod: &Pod, version: &str) {
    let handle = std::fs::read_to_string(pod.path("client/app/cloud_refresh_token")).unwrap();
    let bundle = std::fs::read(pod.path("token/ca-bundle.pem")).unwrap();
    let certs = reqwest::Certificate::from_pem_bundle(&bundle).unwrap();
    let host = "auth.polars-cloud-auth.internal";
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pod.relay_port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let status = rt.block_on(async {
        let client = reqwest::Client::builder()
            .tls_certs_only(certs)
            .no_proxy()
            .resolve(host, addr)
            .build()
            .unwrap();
        client
            .post(format!(
                "https://{host}:{}/realms/Polars/protocol/openid-connect/token",
                pod.relay_port
            ))
            .header("x-client-version", version)
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "PolarsCloud"),
                ("refresh_token", handle.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200, "the app's own handle is served");
}

#[cfg(unix)]
#[test]
fn our_container_in_a_pod_relay_faults_and_an_unserved_client_are_named() {
    require!(have_idp());
    let pod = Pod::start(Idp::start());
    let secrets = pod.secrets();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();

    // Healthy: every link holds; no client has refreshed yet.
    let r = pod.doctor(&[], &[]);
    for l in [
        "credentials",
        "idp",
        "clock",
        "grant",
        "token-file",
        "app-access",
        "relay",
        "handle",
    ] {
        assert_eq!(r.status(l), "ok", "{l}:\n{}", r.table);
    }
    assert_eq!(r.status("client"), "skip", "{}", r.table);
    assert_eq!(r.json["place"], "our-container");
    assert_eq!(r.code, 0, "{}", r.table);
    r.assert_no_leak(&secrets);

    // The relay down (nothing listens where it should).
    let down = free_port();
    let r = pod.doctor(&[], &["--relay-listen", &format!("127.0.0.1:{down}")]);
    let (status, detail, _) = r.link("relay");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("nothing answers as the relay"), "{detail}");
    assert_eq!(r.code, 1);

    // A CA bundle that does not verify the relay's certificate.
    let other = pod.path("other-bundle.pem");
    std::fs::write(&other, TestCa::new().pem()).unwrap();
    let r = pod.doctor(&[("POLARS_CLOUD_RELAY_CA_BUNDLE", &other)], &[]);
    let (status, detail, _) = r.link("relay");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("does not verify its certificate"),
        "{detail}"
    );
    // Doctor checks without a TLS alert, so the relay does not count it as a client
    // that refused its CA (which /metrics would show as version "<=0.10").
    let (_, metrics) = http_get(pod.listen, "/metrics").unwrap();
    assert!(!metrics.contains("version=\"<=0.10\""), "{metrics}");
    // The relay's connection limits show on the sidecar's /metrics (docs/operations.md).
    for name in [
        "polars_cloud_auth_relay_connections ",
        "polars_cloud_auth_relay_connections_refused_total ",
        "polars_cloud_auth_relay_request_body_timeouts_total ",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }

    // The token file made 0600 under a pod without an fsGroup: the app's uid cannot read
    // it (the sidecar re-applies its mode at the next renewal, minutes away).
    use std::os::unix::fs::PermissionsExt;
    let token = pod.path("token/token");
    let mode = |m| std::fs::set_permissions(&token, std::fs::Permissions::from_mode(m)).unwrap();
    assert_eq!(
        pod.doctor(&[], &["--app-uid", "4242"]).status("app-access"),
        "ok"
    );
    mode(0o600);
    let r = pod.doctor(&[], &["--app-uid", "4242"]);
    let (status, detail, _) = r.link("app-access");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("uid 4242") && detail.contains("token/token"),
        "{detail}"
    );
    mode(0o644);

    // An old client (0.6, no POLARS_CLOUD_API_ADDR) refreshing at the relay.
    refresh_at_relay(&pod, "0.6.3");
    let r = pod.doctor(&[], &[]);
    let (status, detail, fix) = r.link("client");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("polars-cloud 0.6.3") && detail.contains("not served"),
        "{detail}"
    );
    assert!(!detail.contains("refused its CA"), "{detail}");
    assert!(fix.contains("0.7 or later"), "{fix}");
    // A client the relay serves, told by flag: holds, and says which family.
    let r = pod.doctor(&[], &["--client-version", "0.11.3"]);
    let (status, detail, _) = r.link("client");
    assert_eq!(status, "ok", "{}", r.table);
    assert!(detail.contains("legacy-files"), "{detail}");
    // An unknown newer release gets the best-known default.
    let r = pod.doctor(&[], &["--client-version", "0.14.1"]);
    let (status, detail, _) = r.link("client");
    assert_eq!(status, "ok", "{}", r.table);
    assert!(detail.contains("treated as config-toml"), "{detail}");

    // A foreign handle in the app's config.toml (another pod's relay signed it).
    let config = ClientConfig::in_dir(&pod.path("client/app"));
    let foreign = HandleKey::generate().mint(SystemTime::now());
    let access = std::fs::read_to_string(pod.path("token/token")).unwrap();
    config
        .store_toml(&access.trim().to_string().into(), &foreign, 0o640)
        .unwrap();
    let r = pod.doctor(&[], &[]);
    let (status, detail, _) = r.link("handle");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("does not accept"), "{detail}");
    use secrecy::ExposeSecret;
    r.assert_no_leak(&[foreign.expose_secret()]);
    r.assert_no_leak(&secrets);
}

#[test]
fn a_pod_without_the_relay_does_not_serve_the_apps_real_client() {
    require!(have_python());
    let tmp = tempfile::tempdir().unwrap();
    let port = skewed_server(Duration::ZERO);
    let creds = tmp.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_id"), SA_ID).unwrap();
    std::fs::write(creds.join("client_secret"), SA_SECRET).unwrap();
    let python = python();
    let r = doctor(|c| {
        c.env(
            "POLARS_CLOUD_ISSUER",
            format!("http://127.0.0.1:{port}/realms/Polars"),
        )
        .env("POLARS_CLOUD_CREDENTIALS_DIR", &creds)
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", tmp.path().join("token"))
        .arg("--no-grant")
        .arg("--python")
        .arg(&python);
    });
    let (status, detail, fix) = r.link("client");
    assert_eq!(status, "fail", "{}", r.table);
    // The venv's real polars-cloud, read from its dist-info.
    assert!(detail.contains("polars-cloud 0.12.0"), "{detail}");
    assert!(detail.contains("relay is off"), "{detail}");
    assert!(fix.contains("polars.cloud/relay"), "{fix}");
    assert_eq!(r.status("relay"), "skip");
}

/// The real broker (its API server unreachable: the refusal below is its own check,
/// before any token review) refusing a broker-backed container's token.
#[test]
fn a_broker_refusing_this_pods_token_is_named() {
    require!(have_idp());
    let idp = Idp::start();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(tmp.path());
    let creds = tmp.path().join("prod");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_id"), SA_ID).unwrap();
    std::fs::write(creds.join("client_secret"), SA_SECRET).unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "credentials:\n  prod: {{dir: {}}}\ngrants:\n  - {{namespace: team-a, credential: prod}}\n",
            creds.display()
        ),
    )
    .unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:{}'}}\nusers:\n- name: u\n  user: {{token: not-used}}\n",
            free_port()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut b = bin_cmd();
    b.arg("broker")
        .env("POLARS_CLOUD_BROKER_LISTEN", format!("127.0.0.1:{port}"))
        .env("POLARS_CLOUD_BROKER_TLS_CERT", &cert)
        .env("POLARS_CLOUD_BROKER_TLS_KEY", &key)
        .env("POLARS_CLOUD_BROKER_POLICY", &policy)
        .env("POLARS_CLOUD_ISSUER", &idp.issuer)
        .env("POLARS_CLOUD_BROKER_SHUTDOWN_DELAY", "0s")
        .env("KUBECONFIG", &kubeconfig);
    let mut broker = Proc::spawn(&mut b);
    wait_for(Duration::from_secs(30), || {
        assert!(broker.alive(), "the broker exited:\n{}", broker.stderr());
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // A service-account token for another audience than the broker's.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = {
        use base64::Engine;
        let e = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            e(r#"{"alg":"RS256","typ":"JWT"}"#),
            e(&format!(
                r#"{{"aud":["https://kubernetes.default.svc"],"exp":{},"iat":{now},"sub":"system:serviceaccount:team-a:etl"}}"#,
                now + 600
            )),
            e("signature-of-the-projected-token")
        )
    };
    let assertion_file = tmp.path().join("sa-token");
    std::fs::write(&assertion_file, &assertion).unwrap();
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let r = doctor(|c| {
        c.env("HOME", "/nonexistent-doctor-home")
            .env("POLARS_CLOUD_GRANT", "client-credentials")
            .env("POLARS_CLOUD_CLIENT_ASSERTION_FILE", &assertion_file)
            .env(
                "POLARS_CLOUD_TOKEN_URL",
                format!("https://127.0.0.1:{port}/token"),
            )
            .env("POLARS_CLOUD_CA_PEM", &ca_pem)
            .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", tmp.path().join("token"));
    });
    assert_eq!(r.status("credentials"), "ok", "{}", r.table);
    assert_eq!(r.status("broker"), "ok", "{}", r.table);
    let (status, detail, fix) = r.link("grant");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(
        detail.contains("polars-cloud-auth broker:") && detail.contains("audience"),
        "{detail}"
    );
    assert!(fix.contains("broker"), "{fix}");
    assert_eq!(r.code, 1);
    r.assert_no_leak(&[&assertion, SA_SECRET]);
    broker.stop(Duration::from_secs(10));
}

#[test]
fn a_workstation_after_login_reports_the_session_and_the_installed_client() {
    require!(have_python());
    let tmp = tempfile::tempdir().unwrap();
    let port = skewed_server(Duration::ZERO);
    let config_home = tmp.path().join("config");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // What `login` stores: config.toml with the access and refresh tokens.
    let (access, refresh) = (jwt(now + 300, now), jwt(now + 36000, now));
    ClientConfig::in_dir(&config_home.join("polars_cloud"))
        .store_toml(&access.clone().into(), &refresh.clone().into(), 0o600)
        .unwrap();
    let python = python();
    let r = doctor(|c| {
        c.env("HOME", tmp.path())
            .env("XDG_CONFIG_HOME", &config_home)
            .env(
                "POLARS_CLOUD_ISSUER",
                format!("http://127.0.0.1:{port}/realms/Polars"),
            )
            .arg("--python")
            .arg(&python);
    });
    assert_eq!(r.json["place"], "laptop");
    assert_eq!(r.status("credentials"), "skip", "{}", r.table);
    assert_eq!(r.status("grant"), "skip", "{}", r.table);
    let (status, detail, _) = r.link("token-file");
    assert_eq!(status, "ok", "{}", r.table);
    assert!(detail.contains("login's session"), "{detail}");
    let (status, detail, _) = r.link("client");
    assert_eq!(status, "ok", "{}", r.table);
    assert!(
        detail.contains("polars-cloud 0.12.0 (config-toml"),
        "{detail}"
    );
    assert_eq!(r.code, 0, "{}", r.table);
    r.assert_no_leak(&[&access, &refresh]);
}

#[test]
fn a_dead_proxy_is_named_as_the_route_without_its_password() {
    require!(have_idp());
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(tmp.path());
    let idp = Idp::start_with(IdpOptions {
        tls: Some((cert, key)),
        ..IdpOptions::default()
    });
    let proxy_port = free_port();
    let password = "pr0xy-Pa55word-never-shown";
    let r = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_CA_FILE", &ca).env(
            "HTTPS_PROXY",
            format!("http://user:{password}@127.0.0.1:{proxy_port}"),
        );
    });
    let (status, detail, fix) = r.link("idp");
    assert_eq!(status, "fail", "{}", r.table);
    assert!(detail.contains("could not reach"), "{detail}");
    assert!(
        fix.contains(&format!("through the proxy http://127.0.0.1:{proxy_port}")),
        "{fix}"
    );
    r.assert_no_leak(&[password, SA_SECRET]);
    // NO_PROXY naming the host: direct again, and it holds.
    let r = doctor(|c| {
        sa(c, &idp.issuer);
        c.env("POLARS_CLOUD_CA_FILE", &ca)
            .env(
                "HTTPS_PROXY",
                format!("http://user:{password}@127.0.0.1:{proxy_port}"),
            )
            .env("NO_PROXY", "127.0.0.1");
    });
    let (status, detail, _) = r.link("idp");
    assert_eq!(status, "ok", "{}", r.table);
    assert!(detail.contains("directly"), "{detail}");
}
