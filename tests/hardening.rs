//! Regressions from an adversarial run (issue 12): hostile or broken identity-provider
//! replies, signals and resource limits, each against the real binary and the real test
//! IdP, each named after what it reproduces.
#![cfg(unix)]

mod relay_hostile;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};

/// An unsigned JWT with these claims (our tool reads `exp` only; the IdP's answers are
/// replaced by faults here).
fn jwt(claims: &Value) -> String {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc.encode(claims.to_string())
    )
}

/// A 200 token reply with this body, `n` times.
fn replies(body: Value, n: usize) -> Value {
    Value::Array(vec![
        json!({"kind": "status", "status": 200, "body": body});
        n
    ])
}

/// The exit was a normal one (no SIGABRT, no other signal).
fn assert_no_signal(what: &str, out: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        None,
        "{what} died of a signal: {:?}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(134), "{what} aborted");
}

/// `c` (the binary with its environment) run under `prlimit LIMIT`; add the arguments.
#[cfg(target_os = "linux")]
fn under_prlimit(limit: &str, c: &Command) -> Command {
    let mut p = scrubbed("prlimit");
    p.arg(limit).arg(c.get_program()).stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => p.env(k, v),
            None => p.env_remove(k),
        };
    }
    p
}

/// Item 3: `exp` of 1e19 or 1e300 and `expires_in` / `refresh_expires_in` of 1e300 used to
/// abort every mode with SIGABRT (exit 134).
#[test]
fn extreme_expiry_values_abort_no_mode() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let bodies = [
        json!({"access_token": jwt(&json!({"exp": 1e19})), "expires_in": 300}),
        json!({"access_token": jwt(&json!({"exp": 1e300})), "expires_in": 300}),
        json!({"access_token": "opaque-token", "expires_in": 1e300}),
        json!({"access_token": jwt(&json!({"exp": now_secs() + 300.0})), "expires_in": 300,
               "refresh_token": "r", "refresh_expires_in": 1e300}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        for mode in ["token", "init"] {
            idp.faults(replies(body.clone(), 40));
            let path = dir.path().join(format!("token-{i}-{mode}"));
            let out = run(cmd(&idp)
                .args([mode, "--timeout", "1s"])
                .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
            assert_no_signal(mode, &out);
            let stderr = text(&out.stderr);
            if i < 3 {
                assert_eq!(out.status.code(), Some(4), "{mode} {body}: {stderr}");
                assert!(stderr.contains("out of range"), "{mode} {body}: {stderr}");
            } else {
                // A wild refresh expiry is ignored, the access token is fine.
                assert_eq!(out.status.code(), Some(0), "{mode} {body}: {stderr}");
            }
            idp.clear_faults();
        }
    }

    // probe and exec read a token file holding such a token.
    for exp in [1e19, 1e300] {
        let path = dir.path().join("stored");
        std::fs::write(&path, jwt(&json!({"exp": exp}))).unwrap();
        let out = run(bin_cmd()
            .args(["probe", "--min-valid", "5s", "--token-file"])
            .arg(&path));
        assert_no_signal("probe", &out);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("out of range"),
            "{}",
            text(&out.stderr)
        );
        let out = run(cmd(&idp)
            .args(["exec", "--token-file"])
            .arg(&path)
            .args(["--", "true"]));
        assert_no_signal("exec", &out);
    }

    // The sidecar keeps the last good token and stays up.
    let path = dir.path().join("sidecar-token");
    let mut sidecar = Sidecar::start(&mut cmd(&idp), &path);
    sidecar.wait_renewals(1.0, Duration::from_secs(15));
    idp.faults(replies(bodies[0].clone(), 1));
    sidecar.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(15), || {
        sidecar.log().contains("out of range").then_some(())
    });
    assert!(sidecar.alive(), "{}", sidecar.log());
}

/// Item 3: the process holds the secret; a crash must not write it into a core file.
#[cfg(target_os = "linux")]
#[test]
fn a_crash_cannot_dump_core() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    // Started with core dumps allowed, as a node or a shell may be configured.
    let mut c = under_prlimit("--core=unlimited", &cmd(&idp));
    let mut sidecar = Sidecar::start(&mut c, &dir.path().join("t"));
    sidecar.wait_renewals(1.0, Duration::from_secs(15));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sidecar.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let soft = core.split_whitespace().nth(4).unwrap();
    assert_eq!(soft, "0", "{core}");
    assert!(sidecar.alive());
}

/// Item 4: `token` printed an already expired token and exited 0 (`init` refused it).
#[test]
fn token_prints_no_already_expired_token() {
    require!(have_idp());
    let idp = Idp::start();
    let expired = jwt(&json!({"exp": now_secs() - 100.0, "iat": now_secs() - 400.0}));
    idp.faults(replies(
        json!({"access_token": expired, "expires_in": 300}),
        1,
    ));
    let out = run(cmd(&idp).arg("token"));
    assert_no_signal("token", &out);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("already expired"),
        "{}",
        text(&out.stderr)
    );
}

/// Item 5: one `Retry-After: 100000` made the sidecar wait an hour while its token
/// expired in seconds.
#[test]
fn a_huge_retry_after_does_not_outlast_the_sidecars_token() {
    require!(have_idp());
    let idp = Idp::with_ttl(4);
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(&mut cmd(&idp), &dir.path().join("t"));
    sidecar.wait_renewals(1.0, Duration::from_secs(15));
    idp.faults(json!([{"kind": "status", "status": 503, "retry_after": "100000"}]));
    // The next renewal (at 80 % of 4 s) meets the 503; the one after it must come before
    // the token expires, not an hour later.
    sidecar.wait_renewals(2.0, Duration::from_secs(20));
    let faulted = idp
        .token_requests()
        .iter()
        .filter(|r| r["fault"] == "status")
        .count();
    assert_eq!(faulted, 1, "the 503 was not met:\n{}", sidecar.log());
}

/// Item 6: a 302 from the token endpoint was reported as a wrong client id or secret.
#[test]
fn a_redirecting_token_endpoint_is_named_as_a_wrong_url_not_a_wrong_secret() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([{"kind": "status", "status": 302,
        "headers": {"location": "https://login.example.invalid/"}}]));
    let out = run(cmd(&idp).arg("token"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("redirects"), "{stderr}");
    assert!(stderr.contains("--issuer"), "{stderr}");
    assert!(!stderr.contains("wrong client id or secret"), "{stderr}");
}

/// Item 7: an IdP echoing the request leaked the form-encoded secret (`%2B`, `+` for a
/// space) and Basic's base64 of `id:secret`.
#[test]
fn an_idp_echoing_the_request_leaks_no_encoding_of_the_secret() {
    require!(have_idp());
    let idp = Idp::start();
    let secret = "Zq9+UNIQUE/SECRET=77&x y";
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc("cc-basic"),
        enc(secret)
    ));
    let cases: [(&str, &[&str]); 3] = [
        (SA_ID, &[]),
        (
            "cc-basic",
            &["--grant", "client-credentials", "--client-auth", "basic"],
        ),
        (
            "cc-post",
            &["--grant", "client-credentials", "--client-auth", "post"],
        ),
    ];
    for (id, args) in cases {
        idp.faults(json!([{"kind": "echo"}]));
        let out = run(cmd(&idp)
            .arg("token")
            .args(args)
            .env("POLARS_CLOUD_CLIENT_ID", id)
            .env("POLARS_CLOUD_CLIENT_SECRET", secret)
            .env("POLARS_CLOUD_LOG", "trace"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        // The echo did arrive (the request body is quoted), with the secret scrubbed.
        assert!(stderr.contains("request body: grant_type="), "{stderr}");
        for leak in [
            "UNIQUE",
            &enc(secret),
            &enc(secret).replace('+', "%20"),
            &basic,
        ] {
            assert!(!stderr.contains(leak), "{id}: {leak} leaked:\n{stderr}");
        }
    }
}

/// Item 14: one attempt could run the full `--http-timeout` past `--timeout`: an answer
/// 5 s late was taken with `--timeout 2s`.
#[test]
fn timeout_cuts_off_an_attempt_at_the_deadline() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([{"kind": "hang", "ms": 5000, "then": "answer"}]));
    let out = run(cmd(&idp).args(["token", "--timeout", "2s", "--http-timeout", "10s"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(stderr.contains("--timeout"), "{stderr}");
}

/// Item 14: retries stopped at 65-90 % of the budget: a `Retry-After` longer than the time
/// left ended the run at once although the IdP would answer a moment later.
#[test]
fn timeout_retries_until_the_deadline_not_short_of_it() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([{"kind": "status", "status": 503, "retry_after": "10"}]));
    let out = run(cmd(&idp).args(["token", "--timeout", "3s"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(idp.token_requests().len(), 2);
}

/// Item 12: a file-size limit (SIGXFSZ) killed `init` with no message and left a partial
/// temporary file.
#[cfg(target_os = "linux")]
#[test]
fn a_file_size_limit_is_a_reported_write_error_not_a_silent_death() {
    require!(have_idp());
    use std::os::unix::process::ExitStatusExt;
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    // SIGXFSZ at its default action here (no shell ignores it for us).
    let out = run(under_prlimit("--fsize=64", &cmd(&idp))
        .arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed: {:?}", out.status);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Item 12: SIGKILL mid-write left temporary files holding token data, and nothing ever
/// removed them.
#[test]
fn init_removes_temporary_files_that_killed_writers_left() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let stale = dir.path().join(".token.4242.0badf00d.tmp");
    std::fs::write(&stale, "eyJ-half-a-token").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let out = run(cmd(&idp)
        .arg("init")
        .env("POLARS_CLOUD_ACCESS_TOKEN_PATH", &path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stale.exists(), "the stale temporary file is still there");
    assert!(path.exists());
}

/// Item 13: the sidecar's log lines for write and credential-read failures dropped the OS
/// error.
#[test]
fn sidecar_failure_logs_name_the_os_error() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(&idp);
    c.env_remove("POLARS_CLOUD_CLIENT_SECRET").env(
        "POLARS_CLOUD_CLIENT_SECRET_FILE",
        dir.path().join("missing-secret"),
    );
    // The token file's parent is a regular file: EEXIST from creating it.
    std::fs::write(dir.path().join("file"), "").unwrap();
    let sidecar = Sidecar::start(&mut c, &dir.path().join("t"));
    wait_for(Duration::from_secs(15), || {
        sidecar.log().contains("token renewal failed").then_some(())
    });
    let log = sidecar.log();
    assert!(log.contains("No such file or directory"), "{log}");
    drop(sidecar);

    let sidecar = Sidecar::start(&mut cmd(&idp), &dir.path().join("file/token"));
    wait_for(Duration::from_secs(15), || {
        sidecar
            .log()
            .contains("token file write failed")
            .then_some(())
    });
    let log = sidecar.log();
    assert!(log.contains("File exists (os error 17)"), "{log}");
}

/// Item 15: SIGHUP ended the sidecar silently (the default action). It now means: read
/// the credentials again and renew now.
#[test]
fn sighup_makes_the_sidecar_renew_now_instead_of_killing_it() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(&mut cmd(&idp), &dir.path().join("t"));
    sidecar.wait_renewals(1.0, Duration::from_secs(15));
    sidecar.signal(nix::sys::signal::Signal::SIGHUP);
    // A 300 s token would not be renewed for four minutes otherwise.
    sidecar.wait_renewals(2.0, Duration::from_secs(15));
    assert!(sidecar.alive(), "{}", sidecar.log());
    assert!(sidecar.log().contains("SIGHUP"), "{}", sidecar.log());
}
