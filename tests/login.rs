//! The person's side end to end: `login` (device flow) against the real test IdP, approved
//! by submitting that server's own HTML forms (tests/idp/approve.mjs); `status`, `logout`
//! and `exec`; the real polars-cloud client as consumer; the terminal under a pty.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const PERSONAL_CONFIG: &str = "# my settings\ndomain = \"prd.cloud.pola.rs\" # keep\n\n[auth]\n# from an older login\naccess_token = \"stale\"\nrefresh_token = \"stale\"\n\n[profile]\nworkspace = \"ws\" # mine\n";

/// A home directory with the client's default config dir under it.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn config_dir(&self) -> PathBuf {
        self.path().join(".config/polars_cloud")
    }
    fn config_toml(&self) -> PathBuf {
        self.config_dir().join("config.toml")
    }
    fn legacy(&self, name: &str) -> PathBuf {
        self.config_dir().join(name)
    }
    fn token_file(&self) -> PathBuf {
        self.path().join(".polars/cloud_access_token")
    }
    fn auth(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.config_toml()).unwrap();
        let v: Value = toml_value(&text);
        (
            v["auth"]["access_token"].as_str().unwrap().to_string(),
            v["auth"]["refresh_token"].as_str().unwrap().to_string(),
        )
    }
}

/// The few `key = "value"` lines of `[auth]` (enough for what login writes).
fn toml_value(text: &str) -> Value {
    let mut out = json!({});
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_string();
            out[&table] = json!({});
        } else if let Some((k, v)) = line.split_once(" = ") {
            let v = v.split(" #").next().unwrap().trim().trim_matches('"');
            if table.is_empty() {
                out[k.trim()] = json!(v);
            } else {
                out[&table][k.trim()] = json!(v);
            }
        }
    }
    out
}

/// The binary for a person's commands: HOME in a temp dir, no display, no browser.
fn person(idp: &Idp, home: &Home) -> Command {
    let mut c = cmd(idp);
    c.env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("BROWSER");
    c
}

/// Approves (or with `--deny`, denies) the code through the IdP's own HTML pages.
fn approve(url: &str, extra: &[&str]) {
    let out = scrubbed("node")
        .arg(repo().join("tests/idp/approve.mjs"))
        .arg(url)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "approve.mjs {extra:?} failed: {}",
        text(&out.stderr)
    );
}

/// A full login approved as `alice`; the stderr of the run.
fn login(idp: &Idp, home: &Home) -> String {
    let run = Login::start(person(idp, home).args(["login", "--no-browser"]));
    approve(&run.url(), &[]);
    let (status, stdout, stderr) = run.finish();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stdout.is_empty(), "login wrote to stdout: {stdout}");
    stderr
}

fn device_polls(idp: &Idp) -> Vec<Value> {
    idp.token_requests()
        .into_iter()
        .filter(|r| r["params"]["grant_type"] == DEVICE_GRANT)
        .collect()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_stores_tokens_where_both_clients_look_and_the_real_client_uses_them() {
    if !(have_idp() && have_python()) {
        return;
    }
    let idp = Idp::start();
    let home = Home::new();
    std::fs::create_dir_all(home.config_dir()).unwrap();
    std::fs::write(home.config_toml(), PERSONAL_CONFIG).unwrap();

    let stderr = login(&idp, &home);
    assert!(stderr.contains("Signed in as alice."), "{stderr}");
    assert!(stderr.contains(&home.config_toml().display().to_string()));
    assert!(stderr.contains(&home.token_file().display().to_string()));

    // The device flow as the Polars Cloud client runs it, at the interval the realm set.
    let polls = device_polls(&idp);
    let (last, pending) = polls.split_last().unwrap();
    assert_eq!(last["status"], 200, "{polls:?}");
    for p in &polls {
        assert_eq!(p["params"]["client_id"], "PolarsCloud");
    }
    for p in pending {
        assert_eq!(p["status"], 400, "{polls:?}");
    }
    for pair in polls.windows(2) {
        let gap = pair[1]["time_ms"].as_f64().unwrap() - pair[0]["time_ms"].as_f64().unwrap();
        assert!(gap >= 900.0, "polled {gap} ms after the previous poll");
    }

    // config.toml: new tokens, the person's comments and keys kept, mode 0600.
    let (access, refresh) = home.auth();
    let config = std::fs::read_to_string(home.config_toml()).unwrap();
    assert_eq!(
        config,
        PERSONAL_CONFIG
            .replacen("\"stale\"", &format!("\"{access}\""), 1)
            .replacen("\"stale\"", &format!("\"{refresh}\""), 1)
    );
    let c = claims(&access);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["azp"], "PolarsCloud");
    // The seed's token file, and the token files of clients 0.6 to 0.11: bare tokens.
    assert_eq!(std::fs::read_to_string(home.token_file()).unwrap(), access);
    let legacy_access = home.legacy("cloud_access_token");
    let legacy_refresh = home.legacy("cloud_refresh_token");
    assert_eq!(std::fs::read_to_string(&legacy_access).unwrap(), access);
    assert_eq!(std::fs::read_to_string(&legacy_refresh).unwrap(), refresh);
    #[cfg(unix)]
    for path in [
        &home.config_toml(),
        &home.token_file(),
        &legacy_access,
        &legacy_refresh,
    ] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    let device_code = polls[0]["params"]["device_code"].as_str().unwrap();
    assert_no_leak(&access, &[&stderr]);
    assert_no_leak(&refresh, &[&stderr]);
    assert_no_leak(device_code, &[&stderr]);

    // The real polars-cloud 0.12 client reads what we wrote and sends our access token.
    let verdict = real_client(
        &[
            ("POLARS_CLOUD_CONFIG_DIR", &home.config_dir()),
            ("HOME", home.path()),
        ],
        &[],
    );
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["bearer"], access.as_str());
    assert_eq!(verdict["source"], "config");

    // The older clients' pair alone is usable too: 0.12 reads it the way they did (and
    // migrates it into a config.toml of its own).
    let older = tempfile::tempdir().unwrap();
    std::fs::copy(&legacy_access, older.path().join("cloud_access_token")).unwrap();
    std::fs::copy(&legacy_refresh, older.path().join("cloud_refresh_token")).unwrap();
    let verdict = real_client(
        &[
            ("POLARS_CLOUD_CONFIG_DIR", older.path()),
            ("HOME", home.path()),
        ],
        &[],
    );
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["bearer"], access.as_str());
    assert_eq!(verdict["source"], "file");
}

#[test]
fn login_print_prints_the_token_and_stores_nothing() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    let run = Login::start(person(&idp, &home).args(["login", "--no-browser", "--print"]));
    approve(&run.url(), &["--login", "bob"]);
    let (status, stdout, stderr) = run.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    let token = stdout.trim_end();
    assert_eq!(claims(token)["sub"], "bob");
    assert!(stderr.contains("Signed in as bob."), "{stderr}");
    assert!(!home.config_dir().exists() && !home.token_file().exists());
    assert_no_leak(token, &[&stderr]);
}

#[test]
fn login_moves_the_files_with_the_environment_and_flags() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let run = Login::start(
        person(&idp, &home)
            .args(["login", "--no-browser", "--path"])
            .arg(dir.path().join("flag/token"))
            .env(
                "POLARS_CLOUD_ACCESS_TOKEN_PATH",
                dir.path().join("env/token"),
            )
            .env("POLARS_CLOUD_CONFIG_DIR", dir.path().join("cfg")),
    );
    approve(&run.url(), &[]);
    let (status, _, stderr) = run.finish();
    assert!(status.success(), "{stderr}");
    assert!(dir.path().join("flag/token").exists());
    assert!(!dir.path().join("env/token").exists());
    assert!(dir.path().join("cfg/config.toml").exists());
    assert!(!home.config_dir().exists() && !home.token_file().exists());
}

#[test]
fn slow_down_widens_the_polling_interval_by_five_seconds() {
    require!(have_idp());
    let idp = Idp::start();
    idp.faults(json!([{
        "kind": "oauth_error", "status": 400, "error": "slow_down",
        "error_description": "Slow down", "grant_type": DEVICE_GRANT
    }]));
    let home = Home::new();
    let run = Login::start(person(&idp, &home).args(["login", "--no-browser"]));
    let url = run.url();
    wait_for(Duration::from_secs(10), || {
        run.stderr().contains("poll less often").then_some(())
    });
    assert!(run.stderr().contains("every 6s"), "{}", run.stderr());
    approve(&url, &[]);
    let (status, _, stderr) = run.finish();
    assert!(status.success(), "{stderr}");
    let polls = device_polls(&idp);
    assert_eq!(polls[0]["fault"], "oauth_error", "{polls:?}");
    assert!(polls.len() >= 2, "{polls:?}");
    let gap = polls[1]["time_ms"].as_f64().unwrap() - polls[0]["time_ms"].as_f64().unwrap();
    assert!(gap >= 6000.0, "polled again {gap} ms after slow_down");
}

#[test]
fn a_denied_code_exits_3_and_stores_nothing() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    let run = Login::start(person(&idp, &home).args(["login", "--no-browser"]));
    approve(&run.url(), &["--deny"]);
    let (status, stdout, stderr) = run.finish();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("denied in the browser"), "{stderr}");
    assert!(stderr.contains("run login again"), "{stderr}");
    assert!(stdout.is_empty());
    assert!(!home.config_dir().exists() && !home.token_file().exists());
}

#[test]
fn an_expired_code_exits_3_and_says_to_run_login_again() {
    require!(have_idp());
    let idp = Idp::start_with(IdpOptions {
        device_ttl: 2,
        ..IdpOptions::default()
    });
    let home = Home::new();
    let run = Login::start(person(&idp, &home).args(["login", "--no-browser"]));
    assert!(run.url().contains("user_code="));
    let (status, _, stderr) = run.finish();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the code expired before it was approved: run login again"),
        "{stderr}"
    );
    assert!(!home.config_dir().exists() && !home.token_file().exists());
}

#[cfg(unix)]
#[test]
fn login_opens_the_browser_named_by_browser_and_the_person_approves_there() {
    require!(have_idp());
    use std::os::unix::fs::PermissionsExt;
    let idp = Idp::start();
    let home = Home::new();
    // The "browser" records the URL it was given and approves the code in the IdP's pages.
    let browser = home.path().join("browser.sh");
    let seen = home.path().join("opened-url");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\nprintf %s \"$1\" > '{}'\nexec node '{}' \"$1\" 2>/dev/null\n",
            seen.display(),
            repo().join("tests/idp/approve.mjs").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = Login::start(person(&idp, &home).arg("login").env("BROWSER", &browser));
    let url = run.url();
    let (status, _, stderr) = run.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), url);
    assert!(home.config_toml().exists());
}

#[test]
fn status_shows_subject_and_expiry_without_secrets() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    let out = run(person(&idp, &home).arg("status"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("run `polars-cloud-auth login`"));

    login(&idp, &home);
    let (access, refresh) = home.auth();
    let out = run(person(&idp, &home).arg("status"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(&home.config_toml().display().to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains(&home.token_file().display().to_string()),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("access token   alice, expires ").count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains(", in 4m"), "{stdout}");
    assert!(stdout.contains("refresh token  present"), "{stdout}");
    assert_no_leak(&access, &[&stdout, &text(&out.stderr)]);
    assert_no_leak(&refresh, &[&stdout, &text(&out.stderr)]);
}

#[test]
fn logout_revokes_the_session_and_removes_what_login_stored() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    std::fs::create_dir_all(home.config_dir()).unwrap();
    std::fs::write(home.config_toml(), PERSONAL_CONFIG).unwrap();
    login(&idp, &home);
    let (_, refresh) = home.auth();

    let out = run(person(&idp, &home).arg("logout"));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the session was revoked"), "{stderr}");
    let revocations = idp.revocations();
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    let p = &revocations[0]["params"];
    assert_eq!(p["token"], refresh.as_str());
    assert_eq!(p["token_type_hint"], "refresh_token");
    assert_eq!(p["client_id"], "PolarsCloud");
    // The session is gone at the realm: the refresh token no longer works.
    let (status, body) = idp.refresh_with(&refresh);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    // The person's other settings stay; the tokens and the token file are gone.
    let config = std::fs::read_to_string(home.config_toml()).unwrap();
    assert!(!config.contains("access_token") && !config.contains("refresh_token"));
    assert!(config.contains("workspace = \"ws\" # mine"), "{config}");
    assert!(!home.token_file().exists());
    assert!(!home.legacy("cloud_access_token").exists());
    assert!(!home.legacy("cloud_refresh_token").exists());
    assert_no_leak(&refresh, &[&stderr]);

    let out = run(person(&idp, &home).arg("logout"));
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("Not signed in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn logout_removes_the_files_even_when_the_realm_is_down_and_says_so() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    login(&idp, &home);
    idp.faults(json!([{"kind": "status", "status": 503, "endpoint": "revocation"}]));
    let out = run(person(&idp, &home).arg("logout"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("could not be revoked"), "{stderr}");
    assert!(!home.config_toml().exists() && !home.token_file().exists());
}

#[test]
fn logout_with_a_broken_config_toml_still_revokes_and_removes_the_other_files() {
    require!(have_idp());
    let idp = Idp::start();
    let home = Home::new();
    login(&idp, &home);
    let (_, refresh) = home.auth();
    let broken = format!(
        "{}\n[auth\n",
        std::fs::read_to_string(home.config_toml()).unwrap()
    );
    std::fs::write(home.config_toml(), &broken).unwrap();
    let out = run(person(&idp, &home).arg("logout"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("is not valid TOML"), "{stderr}");
    assert!(stderr.contains("the session was revoked"), "{stderr}");
    // Revoked with the older clients' copy of the refresh token.
    let revoked = idp.revocations();
    assert_eq!(revoked[0]["params"]["token"], refresh.as_str());
    assert!(!home.legacy("cloud_access_token").exists());
    assert!(!home.legacy("cloud_refresh_token").exists());
    assert!(!home.token_file().exists());
    assert_eq!(std::fs::read_to_string(home.config_toml()).unwrap(), broken);
    assert_no_leak(&refresh, &[&stderr]);
}

#[test]
fn exec_env_token_gives_the_real_client_the_sidecar_files_token_through_the_environment() {
    if !(have_idp() && have_python()) {
        return;
    }
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let out = run(cmd(&idp).arg("init").arg("--token-file").arg(&file));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = std::fs::read_to_string(&file).unwrap();

    let out = run(cmd(&idp)
        .env("HOME", dir.path())
        .arg("exec")
        .arg("--env-token")
        .arg("--token-file")
        .arg(&file)
        .arg("--")
        .arg(python())
        .arg(repo().join("tests/py/client/check_client.py")));
    let verdict: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}\n{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{verdict}");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["bearer"], stored.as_str());
    assert_eq!(verdict["source"], "env");
    // The file's token was valid: exec asked the realm for nothing.
    assert_eq!(idp.token_requests().len(), 1);
}

#[test]
fn exec_fetches_a_token_when_the_stored_one_is_too_close_to_expiry() {
    require!(have_idp());
    let idp = Idp::with_ttl(20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let out = run(cmd(&idp).arg("init").arg("--token-file").arg(&file));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = std::fs::read_to_string(&file).unwrap();
    let seen = dir.path().join("seen");
    let out = run(cmd(&idp)
        .arg("exec")
        .arg("--env-token")
        .arg("--token-file")
        .arg(&file)
        .args(["--min-valid", "1m", "--", "sh", "-c"])
        .arg(format!(
            "printf %s \"$POLARS_CLOUD_ACCESS_TOKEN\" > '{}'; [ -z \"$POLARS_CLOUD_CLIENT_SECRET\" ] || exit 9",
            seen.display()
        )));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fresh = std::fs::read_to_string(&seen).unwrap();
    assert_ne!(fresh, stored);
    assert_eq!(claims(&fresh)["azp"], "PolarsCloud");
    assert_eq!(idp.grant_types(), ["password", "password"]);
    assert_no_leak(SA_SECRET, &[&text(&out.stderr), &text(&out.stdout)]);
}

#[test]
fn exec_without_a_stored_token_or_credentials_says_what_to_set() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(cmd(&idp)
        .env("HOME", dir.path())
        .env_remove("POLARS_CLOUD_CLIENT_SECRET")
        .args(["exec", "--", "true"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no stored token stays valid for 30s"),
        "{stderr}"
    );
    assert!(stderr.contains("POLARS_CLOUD_CLIENT_SECRET"), "{stderr}");
}

#[test]
fn exec_exits_with_the_commands_status() {
    require!(have_idp());
    let idp = Idp::start();
    let home = tempfile::tempdir().unwrap();
    let cases: [(&[&str], i32); 4] = [
        (&["sh", "-c", "exit 7"], 7),
        (&["false"], 1),
        (&["sh", "-c", "kill -KILL $$"], 137),
        (&["no-such-command-here"], 127),
    ];
    for (command, code) in cases {
        let out = run(cmd(&idp)
            .env("HOME", home.path())
            .args(["exec", "--"])
            .args(command));
        assert_eq!(
            out.status.code(),
            Some(code),
            "{command:?}: {}",
            text(&out.stderr)
        );
    }
    // Nothing is stored, so each run fetched exactly one token.
    assert_eq!(idp.token_requests().len(), 4);
}

#[cfg(unix)]
#[test]
fn exec_passes_sigterm_on_and_exits_with_the_commands_answer() {
    require!(have_idp());
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut c = cmd(&idp);
    c.env("HOME", dir.path())
        .args(["exec", "--", "sh", "-c"])
        .arg(format!(
            "trap 'echo got-term; exit 42' TERM; touch '{}'; while :; do sleep 0.05; done",
            ready.display()
        ));
    let mut child = Proc::spawn(&mut c);
    wait_for(Duration::from_secs(20), || ready.exists().then_some(()));
    child.terminate();
    let status = child.wait_timeout(Duration::from_secs(10));
    assert_eq!(status.code(), Some(42));
    let out = child.stdout();
    assert_eq!(out, "got-term\n");
}

#[cfg(unix)]
mod terminal {
    //! The terminal experience under a real pty: what a person sees, and Ctrl-C.
    use super::*;
    use expectrl::session::OsSession;
    use expectrl::{ControlCode, Expect, Session};

    fn session(c: Command) -> OsSession {
        let mut s = Session::spawn(c).unwrap();
        s.set_expect_timeout(Some(Duration::from_secs(20)));
        s
    }

    /// Reads a QR code drawn with half blocks, light on dark (a filled half is a light
    /// module), the way a phone camera sees it on a dark terminal.
    fn decode_qr(screen: &str) -> String {
        let rows: Vec<Vec<char>> = screen
            .lines()
            .map(|l| l.trim_end_matches('\r').chars().collect::<Vec<_>>())
            .filter(|l| !l.is_empty() && l.iter().all(|c| " ▀▄█".contains(*c)))
            .collect();
        let width = rows.iter().map(Vec::len).max().unwrap();
        let scale = 4;
        let light = |x: usize, y: usize| {
            let c = rows[y / 2].get(x).copied().unwrap_or(' ');
            if y.is_multiple_of(2) {
                c == '█' || c == '▀'
            } else {
                c == '█' || c == '▄'
            }
        };
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(
            width * scale,
            rows.len() * 2 * scale,
            |x, y| if light(x / scale, y / scale) { 255 } else { 0 },
        );
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "no QR code found in:\n{screen}");
        grids[0].decode().unwrap().1
    }

    fn exit_status(s: &OsSession) -> String {
        let status = s.get_process().wait().unwrap();
        format!("{status:?}")
    }

    #[test]
    fn login_shows_url_code_and_qr_and_ctrl_c_stops_it_with_130() {
        require!(have_idp());
        let idp = Idp::start();
        let home = Home::new();
        let mut c = person(&idp, &home);
        c.args(["login", "--no-browser"]).stdin(Stdio::inherit());
        let mut s = session(c);
        let url = s
            .expect(expectrl::Regex(r"http://\S+user_code=[A-Z]{4}-[A-Z]{4}"))
            .unwrap();
        let url = String::from_utf8_lossy(url.get(0).unwrap()).into_owned();
        let code = url.rsplit('=').next().unwrap().to_string();
        s.expect(format!("this code:  {code}")).unwrap();
        s.expect("scan this QR code with your phone:").unwrap();
        let shown = s.expect("Waiting for approval").unwrap();
        // What the terminal shows is a QR code a phone reads as the URL.
        assert_eq!(decode_qr(&String::from_utf8_lossy(shown.before())), url);
        s.expect("press Ctrl-C to cancel").unwrap();
        s.send(ControlCode::EndOfText).unwrap();
        s.expect("login cancelled before the code was approved; nothing was stored")
            .unwrap();
        let status = exit_status(&s);
        assert!(status.contains(", 130)"), "{status}");
        assert!(!home.config_dir().exists() && !home.token_file().exists());
    }

    #[test]
    fn exec_delivers_ctrl_c_to_the_command_once() {
        require!(have_idp());
        let idp = Idp::start();
        let home = Home::new();
        let mut c = person(&idp, &home);
        c.args(["exec", "--", "sh", "-c"])
            .arg(
                "n=0; trap 'n=$((n+1))' INT; echo ready; \
                 while [ $n -eq 0 ]; do sleep 0.05; done; sleep 0.5; echo \"interrupts: $n\"; exit 3",
            )
            .stdin(Stdio::inherit());
        let mut s = session(c);
        s.expect("ready").unwrap();
        s.send(ControlCode::EndOfText).unwrap();
        s.expect("interrupts: 1").unwrap();
        let status = exit_status(&s);
        assert!(status.contains(", 3)"), "{status}");
    }
}
