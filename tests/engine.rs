//! The token engine end to end: the real binary against the real test IdP
//! (oidc-provider at Keycloak's paths), and the real polars-cloud client as consumer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn token_stdout(out: &std::process::Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "stdout: {stdout:?}"
    );
    stdout.trim_end().to_string()
}

#[test]
fn token_sends_the_service_account_password_grant_exactly_as_the_client_does() {
    require!(have_idp());
    let idp = Idp::start();
    let out = run(cmd(&idp).arg("token"));
    let token = token_stdout(&out);
    let c = claims(&token);
    assert!(c["exp"].as_f64().unwrap() > now_secs() + 200.0, "{c}");
    assert_eq!(c["azp"], "PolarsCloud");

    let reqs = idp.token_requests();
    assert_eq!(reqs.len(), 1);
    let p = &reqs[0]["params"];
    assert_eq!(p["grant_type"], "password");
    assert_eq!(p["client_id"], "PolarsCloud");
    assert_eq!(p["username"], "test-sa@sa.cloud.pola.rs");
    assert_eq!(p["password"], SA_SECRET);
    assert_eq!(reqs[0]["basic"], false);
    assert!(
        reqs[0]["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/x-www-form-urlencoded")
    );
    assert_no_leak(SA_SECRET, &[&text(&out.stderr), &token]);
    assert_no_leak(&token, &[&text(&out.stderr)]);
}

#[test]
fn a_wrong_secret_fails_at_once_with_exit_3_and_names_the_cause() {
    require!(have_idp());
    let idp = Idp::start();
    let wrong = "wrong-secret-Kp2";
    let out = run(cmd(&idp)
        .arg("token")
        .env("POLARS_CLOUD_CLIENT_SECRET", wrong));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(stderr.contains("test-sa@sa.cloud.pola.rs"), "{stderr}");
    assert!(stderr.contains("POLARS_CLOUD_CLIENT_ID/SECRET"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_no_leak(wrong, &[&stderr]);
    // Permanent: no retry.
    assert_eq!(idp.token_requests().len(), 1);
}

#[test]
fn client_credentials_by_basic_and_by_post() {
    require!(have_idp());
    let idp = Idp::start();
    for (auth, id, secret, basic) in [
        ("basic", "cc-basic", "cc-basic-secret", true),
        ("post", "cc-post", "cc-post-secret", false),
    ] {
        let out = run(cmd(&idp)
            .args([
                "token",
                "--grant",
                "client-credentials",
                "--client-auth",
                auth,
            ])
            .args(["--scope", "profile", "--audience", "polars"])
            .env("POLARS_CLOUD_CLIENT_ID", id)
            .env("POLARS_CLOUD_CLIENT_SECRET", secret));
        let token = token_stdout(&out);
        assert_eq!(claims(&token)["sub"], id);
        let reqs = idp.token_requests();
        let last = reqs.last().unwrap();
        assert_eq!(last["params"]["grant_type"], "client_credentials");
        assert_eq!(last["params"]["scope"], "profile");
        assert_eq!(last["params"]["audience"], "polars");
        assert_eq!(last["basic"], basic, "{last}");
        if basic {
            assert_eq!(last["basic_client_id"], id);
            assert!(last["params"].get("client_secret").is_none());
        } else {
            assert_eq!(last["params"]["client_secret"], secret);
        }
        assert_no_leak(secret, &[&text(&out.stderr)]);
    }
}

#[test]
fn transient_failures_are_retried_until_a_token_comes() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([
        {"kind": "status", "status": 503, "retry_after": "1"},
        {"kind": "reset"},
        {"kind": "garbage"},
        {"kind": "no_access_token"},
        {"kind": "status", "status": 429},
        {"kind": "status", "status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
    ]));
    // Retry-After is honoured up to --max-backoff (advice, not an order).
    let out = run(cmd(&idp).args(["token", "--timeout", "60s", "--max-backoff", "1s"]));
    token_stdout(&out);
    assert_eq!(idp.token_requests().len(), 7);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("retrying"), "{stderr}");
    // Retry-After: 1 was honoured between the first and the second attempt.
    let reqs = idp.token_requests();
    let gap = reqs[1]["time_ms"].as_f64().unwrap() - reqs[0]["time_ms"].as_f64().unwrap();
    assert!(
        gap >= 950.0,
        "second attempt came {gap} ms after a Retry-After: 1"
    );
}

#[test]
fn a_hanging_idp_times_out_and_is_retried() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([{"kind": "hang", "ms": 5000}]));
    let out = run(cmd(&idp).args(["token", "--http-timeout", "500ms", "--max-backoff", "100ms"]));
    token_stdout(&out);
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unreachable_idp_exits_4_after_the_deadline() {
    let port = free_port();
    let out = run(bin_cmd()
        .args(["token", "--timeout", "1s", "--max-backoff", "100ms"])
        .env(
            "POLARS_CLOUD_ISSUER",
            format!("http://127.0.0.1:{port}/realms/Polars"),
        )
        .env("POLARS_CLOUD_CLIENT_ID", SA_ID)
        .env("POLARS_CLOUD_CLIENT_SECRET", SA_SECRET));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("could not reach the identity provider"),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after"), "{stderr}");
    assert_no_leak(SA_SECRET, &[&stderr]);
}

#[test]
fn configuration_mistakes_exit_2_and_say_what_to_set() {
    require!(have_idp());
    let idp = Idp::start();
    let out = run(cmd(&idp).arg("token").env_remove("POLARS_CLOUD_CLIENT_ID"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("POLARS_CLOUD_CLIENT_ID"),
        "{}",
        text(&out.stderr)
    );

    let out = run(cmd(&idp).arg("token").env("POLARS_CLOUD_CLIENT_SECRET", ""));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("POLARS_CLOUD_CLIENT_SECRET is empty"));

    let out = run(cmd(&idp).args(["token", "--issuer", "http://idp.example/realms/Polars"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("use https"),
        "{}",
        text(&out.stderr)
    );

    let out = run(cmd(&idp).args(["token", "--credentials-dir", "/nonexistent/secret"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("'/nonexistent/secret/client_id'"),
        "{}",
        text(&out.stderr)
    );

    let out = run(cmd(&idp).args(["token", "--timeout", "soon"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("30s"), "{}", text(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "idp:\n  isuer: x\n").unwrap();
    let out = run(cmd(&idp).args(["token", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("isuer"), "{}", text(&out.stderr));
    assert_eq!(idp.token_requests().len(), 0);
}

#[test]
fn the_config_file_supplies_settings_and_flags_win() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "idp:\n  issuer: {}\n  grant: client-credentials\n  client-auth: post\n  scope: from-file\n",
            idp.issuer
        ),
    )
    .unwrap();
    let out = run(cmd(&idp)
        .env_remove("POLARS_CLOUD_ISSUER")
        .args(["token", "--scope", "from-flag", "--config"])
        .arg(&cfg)
        .env("POLARS_CLOUD_CLIENT_ID", "cc-post")
        .env("POLARS_CLOUD_CLIENT_SECRET", "cc-post-secret"));
    token_stdout(&out);
    let reqs = idp.token_requests();
    assert_eq!(reqs[0]["params"]["client_secret"], "cc-post-secret");
    assert_eq!(reqs[0]["params"]["scope"], "from-flag");
}

#[test]
fn credentials_from_a_mounted_secret_directory() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_id"), format!("{SA_ID}\n")).unwrap();
    std::fs::write(dir.path().join("client_secret"), format!("{SA_SECRET}\n")).unwrap();
    let out = run(cmd(&idp)
        .env_remove("POLARS_CLOUD_CLIENT_ID")
        .env_remove("POLARS_CLOUD_CLIENT_SECRET")
        .arg("token")
        .arg("--credentials-dir")
        .arg(dir.path()));
    token_stdout(&out);
}

#[cfg(unix)]
#[test]
fn init_writes_the_bare_token_with_mode_0640_creating_the_directory() {
    require!(have_idp());
    use std::os::unix::fs::PermissionsExt;
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared/token");
    let out = run(cmd(&idp)
        .arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(!token.contains('\n') && claims(&token)["exp"].is_number());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(out.stdout.is_empty());
    assert_no_leak(&token, &[&text(&out.stderr)]);
    assert_no_leak(SA_SECRET, &[&text(&out.stderr), &token]);
    // Only the token file is in the directory: no temp files, no secret copies.
    assert_eq!(
        std::fs::read_dir(dir.path().join("shared"))
            .unwrap()
            .count(),
        1
    );

    let out = run(cmd(&idp)
        .args(["init", "--file-mode", "0600", "--token-file"])
        .arg(&path));
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn init_fails_at_once_on_rejected_credentials_and_writes_nothing() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let out = run(cmd(&idp)
        .arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path)
        .env("POLARS_CLOUD_CLIENT_ID", "nobody"));
    assert_eq!(out.status.code(), Some(3));
    assert!(!path.exists());
}

/// A full disk, reproduced with a file-size limit: the write fails with EFBIG, the exit code
/// says the token file, and the previous token is still there, whole.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_exits_5_and_keeps_the_previous_token() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let out = run(cmd(&idp)
        .arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
    assert!(out.status.success());
    let before = std::fs::read_to_string(&path).unwrap();

    // SIGXFSZ ignored by the shell stays ignored across exec, so the write returns EFBIG.
    let mut c = cmd(&idp);
    let script = format!(
        "trap '' XFSZ; exec prlimit --fsize=64 {} init",
        bin().display()
    );
    c.env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path);
    let out = run(scrubbed("bash")
        .arg("-c")
        .arg(script)
        .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("failed to write token file '{}'", path.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind");
}

/// The postStart hook: `probe --wait` returns as soon as the token is on disk and the
/// sidecar's /readyz answers 200; a wait that runs out quotes what /readyz said.
#[test]
fn probe_wait_returns_once_the_token_is_written_and_the_sidecar_is_ready() {
    require!(have_idp());
    let idp = Idp::with_ttl(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    // A stand-in /readyz: 503 with the sidecar's rejection text until told otherwise.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let serving = ready.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && std::io::Read::read(&mut conn, &mut byte).unwrap_or(0) == 1
            {
                head.push(byte[0]);
            }
            let reply = if serving.load(std::sync::atomic::Ordering::SeqCst) {
                "HTTP/1.0 200 OK\r\n\r\nready\n".to_string()
            } else {
                "HTTP/1.0 503 Service Unavailable\r\n\r\nthe identity provider rejected the credentials: see this container's log\n".to_string()
            };
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    let url = format!("http://127.0.0.1:{port}/readyz");
    let wait = |limit: &str| {
        bin_cmd()
            .args([
                "probe",
                "--wait",
                limit,
                "--ready-url",
                &url,
                "--token-file",
            ])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Not ready: no token, and the sidecar reports a rejection; the message says both.
    let out = wait("300ms").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no valid token after 300ms"), "{err}");
    assert!(err.contains("rejected the credentials"), "{err}");
    // The token appears while the hook waits, then the sidecar turns ready: it returns.
    let hook = wait("20s");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        run(cmd(&idp)
            .arg("init")
            .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path))
        .status
        .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = hook.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: token valid for"));
    // Only plain http on loopback: a hook never reaches out of the pod.
    let out = run(bin_cmd().args([
        "probe",
        "--wait",
        "1s",
        "--ready-url",
        "https://example.com/readyz",
    ]));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("plain http URL on loopback"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn probe_checks_the_time_left() {
    require!(have_idp());
    let idp = Idp::with_ttl(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let probe = |min: &str| {
        run(bin_cmd()
            .args(["probe", "--min-valid", min, "--token-file"])
            .arg(&path))
    };
    let out = probe("5s");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("failed to read token file"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        run(cmd(&idp)
            .arg("init")
            .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path))
        .status
        .success()
    );
    assert_eq!(probe("30s").status.code(), Some(0));
    let out = probe("120s");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("less than the required 120s"),
        "{}",
        text(&out.stderr)
    );
}

/// A sidecar against the test IdP, with `extra` flags; credentials from `secret_dir`
/// (as a mounted Secret) instead of the environment when given.
fn sidecar(idp: &Idp, path: &Path, extra: &[&str], secret_dir: Option<&Path>) -> Sidecar {
    let mut c = cmd(idp);
    let mut args: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
    if let Some(dir) = secret_dir {
        c.env_remove("POLARS_CLOUD_CLIENT_SECRET")
            .env_remove("POLARS_CLOUD_CLIENT_ID");
        args.extend(["--credentials-dir".into(), dir.into()]);
    }
    Sidecar::start_with(&mut c, path, &args)
}

#[test]
fn sidecar_renews_by_refresh_token_serves_health_and_stops_on_sigterm() {
    require!(have_idp());
    let idp = Idp::with_ttl(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(&idp, &path, &[], None);
    wait_for(Duration::from_secs(20), || {
        (sc.metric("polars_cloud_auth_renewals_total")? >= 3.0).then_some(())
    });
    assert_eq!(http_get(sc.port, "/healthz").unwrap().0, 200);
    // With a 3 s token the default margin is a tenth of its life (issue 12, item 11): the
    // sidecar is ready between renewals, where a fixed 30 s could never be met.
    assert_eq!(sc.ready(), Some(200));
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(claims(&token)["exp"].as_f64().unwrap() > now_secs());
    let grants = idp.grant_types();
    assert_eq!(grants[0], "password");
    assert!(
        grants[1..].iter().all(|g| g == "refresh_token"),
        "{grants:?}"
    );
    let (code, stdout, stderr) = sc.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("token renewed") && stderr.contains("sidecar stopped"),
        "{stderr}"
    );
    assert_no_leak(SA_SECRET, &[&stderr]);
    assert_no_leak(&token, &[&stderr]);
    // The refresh tokens we presented stay in memory: not in logs, not next to the token.
    let reqs = idp.token_requests();
    let refresh = reqs[1]["params"]["refresh_token"].as_str().unwrap();
    assert_no_leak(refresh, &[&stderr]);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let content = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert_no_leak(refresh, &[&content]);
        assert_no_leak(SA_SECRET, &[&content]);
    }
}

#[test]
fn sidecar_is_ready_when_the_token_outlives_the_margin() {
    require!(have_idp());
    let idp = Idp::with_ttl(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(&idp, &path, &["--ready-margin", "10s"], None);
    wait_for(Duration::from_secs(20), || {
        (sc.ready()? == 200).then_some(())
    });
    let left = sc.metric("polars_cloud_auth_token_expiry_seconds").unwrap();
    assert!(left > 50.0 && left <= 60.0, "{left}");
    assert_eq!(sc.stop().0, Some(0));
}

#[test]
fn a_refused_refresh_token_falls_back_to_the_full_grant() {
    require!(have_idp());
    let idp = Idp::with_ttl(3);
    idp.faults(json!([{"kind": "oauth_error", "status": 400, "error": "invalid_grant", "grant_type": "refresh_token"}]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(&idp, &path, &[], None);
    wait_for(Duration::from_secs(20), || {
        (sc.metric("polars_cloud_auth_renewals_total")? >= 3.0).then_some(())
    });
    let grants = idp.grant_types();
    assert_eq!(
        &grants[..3],
        ["password", "refresh_token", "password"],
        "{grants:?}"
    );
    assert_eq!(
        sc.metric("polars_cloud_auth_failures_total{class=\"permanent\"}"),
        Some(0.0)
    );
    let (code, _, stderr) = sc.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // A session end is routine: logged as what it is, at INFO, with what the provider said
    // and without the advice to check the secret, which a failed sign-in keeps.
    let line = stderr
        .lines()
        .find(|l| l.contains("the identity provider ended the session"))
        .unwrap_or_else(|| panic!("no session-end line: {stderr}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("invalid_grant"), "{line}");
    assert!(stderr.contains("signed in again"), "{stderr}");
    assert!(!stderr.contains("check the client id"), "{stderr}");
}

#[test]
fn sidecar_keeps_the_last_token_on_rejection_and_recovers_when_the_secret_rotates() {
    require!(have_idp());
    let idp = Idp::with_ttl(4);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("client_id"), SA_ID).unwrap();
    std::fs::write(secrets.path().join("client_secret"), SA_SECRET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(
        &idp,
        &path,
        &["--rejected-retry", "500ms", "--ready-margin", "0s"],
        Some(secrets.path()),
    );
    wait_for(Duration::from_secs(20), || {
        (sc.ready()? == 200).then_some(())
    });
    let good = std::fs::read_to_string(&path).unwrap();

    // The secret is rotated at the IdP, refreshes are refused: the old secret is rejected.
    let rotated = "rotated-secret-Wm4";
    idp.set_secret(SA_ID, rotated);
    idp.faults(json!([
        {"kind": "oauth_error", "status": 400, "error": "invalid_grant", "grant_type": "refresh_token"},
    ]));
    wait_for(Duration::from_secs(20), || {
        (sc.ready()? == 503).then_some(())
    });
    // /readyz says why (the postStart hook quotes it when a pod cannot start).
    let (_, why) = http_get(sc.port, "/readyz").unwrap();
    assert!(
        why.contains("the identity provider rejected the credentials"),
        "{why}"
    );
    assert!(
        sc.metric("polars_cloud_auth_failures_total{class=\"permanent\"}")
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        good,
        "the last good token must stay"
    );

    // The Secret volume is updated: the next attempt reads the new value and recovers.
    std::fs::write(secrets.path().join("client_secret"), format!("{rotated}\n")).unwrap();
    wait_for(Duration::from_secs(20), || {
        (sc.ready()? == 200).then_some(())
    });
    assert_ne!(std::fs::read_to_string(&path).unwrap(), good);
    let (code, _, stderr) = sc.stop();
    assert_eq!(code, Some(0));
    assert!(stderr.contains("rejected"), "{stderr}");
    assert_no_leak(SA_SECRET, &[&stderr]);
    assert_no_leak(rotated, &[&stderr]);
}

/// Readers polling the file during many renewals never see it empty, partial or expired.
#[test]
fn a_concurrent_reader_never_sees_a_partial_or_expired_token() {
    require!(have_idp());
    let idp = Idp::with_ttl(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let sc = sidecar(
        &idp,
        &path,
        &["--renew-at", "0.1", "--min-renew-interval", "50ms"],
        None,
    );
    wait_for(Duration::from_secs(20), || path.exists().then_some(()));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, reads, path) = (stop.clone(), reads.clone(), path.clone());
            std::thread::spawn(move || {
                let mut distinct = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = std::fs::read_to_string(&path).expect("token file vanished");
                    assert!(!t.is_empty(), "empty token file");
                    let exp = claims(&t)["exp"].as_f64().expect("partial token");
                    assert!(exp > now_secs(), "expired token on disk");
                    distinct.insert(t);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                distinct.len()
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), || {
        (sc.metric("polars_cloud_auth_renewals_total")? >= 15.0).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 10, "the readers saw too few renewals");
    }
    assert!(reads.load(Ordering::Relaxed) > 1000);
    assert_eq!(sc.stop().0, Some(0));
}

#[test]
fn nothing_secret_in_debug_logs_or_json_logs() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let out = run(cmd(&idp)
        .args(["init", "--log-level", "trace", "--log-format", "json"])
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    let token = std::fs::read_to_string(&path).unwrap();
    assert_no_leak(SA_SECRET, &[&stderr]);
    assert_no_leak(&token, &[&stderr]);
}

#[test]
fn the_real_polars_cloud_client_authenticates_with_our_token() {
    if !(have_idp() && have_python()) {
        return;
    }
    let idp = Idp::start();
    let token = token_stdout(&run(cmd(&idp).arg("token")));
    let verdict = real_client(&[], &[("POLARS_CLOUD_ACCESS_TOKEN", &token)]);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["bearer"], token.as_str());
    assert_eq!(verdict["source"], "env");
}

#[test]
fn https_to_a_private_ca_needs_ca_file_or_ssl_cert_file() {
    require!(have_idp());
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let idp = Idp::start_with(IdpOptions {
        tls: Some((cert, key)),
        ..IdpOptions::default()
    });
    assert!(
        idp.issuer.starts_with("https://127.0.0.1:"),
        "{}",
        idp.issuer
    );

    // Not trusted: a transient failure (the CA may be fixed by a rollout), named clearly.
    let out = run(cmd(&idp).args(["token", "--timeout", "1s", "--max-backoff", "100ms"]));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).to_lowercase().contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    let out = run(cmd(&idp).args(["token", "--ca-file"]).arg(&ca));
    token_stdout(&out);
    let out = run(cmd(&idp).arg("token").env("SSL_CERT_FILE", &ca));
    token_stdout(&out);

    let out = run(cmd(&idp).args(["token", "--ca-file", "/nonexistent/ca.pem"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("failed to read CA file '/nonexistent/ca.pem'"));
}

/// A minimal CONNECT proxy on loopback that counts the tunnels it opened.
fn connect_proxy() -> (u16, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let upstream = std::net::TcpStream::connect(&target).unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                (&client)
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut a, mut b) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut a, &mut b));
                let (mut c, mut d) = (upstream, client);
                let _ = std::io::copy(&mut c, &mut d);
            });
        }
    });
    (port, tunnels)
}

#[test]
fn https_proxy_is_used_and_no_proxy_is_honoured() {
    require!(have_idp());
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let idp = Idp::start_with(IdpOptions {
        tls: Some((cert, key)),
        ..IdpOptions::default()
    });
    let (port, tunnels) = connect_proxy();
    let proxy = format!("http://127.0.0.1:{port}");
    let out = run(cmd(&idp)
        .args(["token", "--ca-file"])
        .arg(&ca)
        .env("HTTPS_PROXY", &proxy)
        .env("NO_PROXY", ""));
    token_stdout(&out);
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "the request did not go through the proxy"
    );

    let out = run(cmd(&idp)
        .args(["token", "--ca-file"])
        .arg(&ca)
        .env("HTTPS_PROXY", &proxy)
        .env("NO_PROXY", "127.0.0.1"));
    token_stdout(&out);
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "NO_PROXY was not honoured"
    );
}
