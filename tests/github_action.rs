//! The GitHub Action run the way a runner runs it: `node action/main.js` and
//! `node action/post.js` with the runner's environment (INPUT_*, the file-command files,
//! RUNNER_TEMP, GITHUB_WORKSPACE, and for post the STATE_* variables the runner derives
//! from GITHUB_STATE), against the real test IdP; then the real polars-cloud client with
//! the environment GITHUB_ENV produced.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use polars_cloud_auth::modes::github_action::INPUTS;
use serde_json::{Value, json};

/// One entry of a file-command file.
#[derive(Debug)]
struct Entry {
    name: String,
    value: String,
    delimiter: String,
}

/// Parses a file-command file strictly: only the heredoc form `name<<DELIM`, value lines,
/// `DELIM`, each line ending in `\n`, no blank lines; the delimiter random-looking and not
/// inside the value. (The runner accepts more; we never write more.)
fn entries(text: &str) -> Vec<Entry> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "no final newline: {text:?}"
    );
    let mut lines = text.lines();
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let (name, delimiter) = line
            .split_once("<<")
            .unwrap_or_else(|| panic!("not a heredoc entry: {line:?}"));
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "bad name {name:?}"
        );
        let hex = delimiter
            .strip_prefix("ghadelimiter_")
            .unwrap_or_else(|| panic!("unexpected delimiter {delimiter:?}"));
        assert!(
            hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{delimiter}"
        );
        let mut value = Vec::new();
        loop {
            let l = lines
                .next()
                .unwrap_or_else(|| panic!("entry {name} has no closing delimiter"));
            if l == delimiter {
                break;
            }
            value.push(l);
        }
        let value = value.join("\n");
        assert!(!value.contains(delimiter));
        out.push(Entry {
            name: name.to_string(),
            value,
            delimiter: delimiter.to_string(),
        });
    }
    out
}

fn names(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

fn value<'a>(entries: &'a [Entry], name: &str) -> &'a str {
    &entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no entry {name} in {entries:?}"))
        .value
}

/// A step's result: its exit code, its log, and what it left in the file-command files.
struct Step {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    env: String,
    output: String,
    state: String,
    summary: String,
}

impl Step {
    fn log(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn no_files(&self) {
        assert_eq!(
            (
                self.env.as_str(),
                self.output.as_str(),
                self.state.as_str(),
                self.summary.as_str()
            ),
            ("", "", "", ""),
            "a failed step must hand nothing on"
        );
    }

    /// The one `::error::` line, unescaped.
    fn error(&self) -> String {
        let errors: Vec<&str> = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("::error::"))
            .collect();
        assert_eq!(errors.len(), 1, "log:\n{}", self.log());
        errors[0]
            .replace("%0A", "\n")
            .replace("%0D", "\r")
            .replace("%25", "%")
    }
}

/// A simulated runner: its directories, and `run` to execute a step of the action.
struct Runner {
    dir: tempfile::TempDir,
    steps: AtomicUsize,
}

impl Runner {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["_temp", "_tool", "_runner_file_commands", "work/repo/repo"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self {
            dir,
            steps: AtomicUsize::new(0),
        }
    }

    fn temp(&self) -> PathBuf {
        self.dir.path().join("_temp")
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("work/repo/repo")
    }

    fn tool_cache(&self) -> PathBuf {
        self.dir.path().join("_tool")
    }

    /// Runs `action/<script>` with the inputs the runner would pass (the `with:` values over
    /// action.yml's defaults) and `env`, with fresh file-command files as the runner makes
    /// them for every step.
    fn run(&self, script: &str, with: &[(&str, &str)], env: &[(&str, &str)]) -> Step {
        let n = self.steps.fetch_add(1, Ordering::Relaxed);
        let files = self.dir.path().join("_runner_file_commands");
        let file = |prefix: &str| {
            let p = files.join(format!("{prefix}{n}"));
            std::fs::write(&p, "").unwrap();
            p
        };
        let (env_file, output, state, summary) = (
            file("set_env_"),
            file("set_output_"),
            file("save_state_"),
            file("step_summary_"),
        );
        let mut c = scrubbed("node");
        c.arg(repo().join("action").join(script));
        // Beyond the common scrub: what a runner sets for a step of its own.
        for (k, _) in std::env::vars() {
            if ["INPUT_", "STATE_", "GITHUB_", "RUNNER_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                c.env_remove(k);
            }
        }
        let declared = action_inputs();
        for (name, spec) in &declared {
            if let Some(default) = spec.get("default").and_then(Value::as_str) {
                c.env(input_var(name), default);
            }
        }
        for (name, v) in with {
            assert!(
                declared.contains_key(*name),
                "input {name} is not declared in action.yml"
            );
            c.env(input_var(name), v);
        }
        c.env("GITHUB_ENV", &env_file)
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STATE", &state)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("GITHUB_WORKSPACE", self.workspace())
            .env("RUNNER_TEMP", self.temp())
            .env("RUNNER_TOOL_CACHE", self.tool_cache())
            .env("RUNNER_OS", "Linux")
            .env("RUNNER_ARCH", "X64")
            .env("GITHUB_ACTIONS", "true")
            .envs(env.iter().copied())
            .current_dir(self.workspace())
            .stdin(Stdio::null());
        let out = c.output().expect("failed to run node");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        Step {
            code: out.status.code(),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
            env: read(&env_file),
            output: read(&output),
            state: read(&state),
            summary: read(&summary),
        }
    }

    /// The post step as the runner runs it: with the job's environment, which holds what
    /// main exported through GITHUB_ENV (actions/runner and act both hand it to post
    /// steps), and the STATE_* variables the runner derives from main's GITHUB_STATE.
    fn post(&self, main: &Step, with: &[(&str, &str)]) -> Step {
        let state: Vec<(String, String)> = job_env(&[main])
            .into_iter()
            .chain(
                entries(&main.state)
                    .into_iter()
                    .map(|e| (format!("STATE_{}", e.name), e.value)),
            )
            .collect();
        let env: Vec<(&str, &str)> = state
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.run("post.js", with, &env)
    }
}

/// The job's environment after `steps` (in order): each step's GITHUB_ENV entries over
/// the earlier ones, as the runner applies them to every later step, post steps included.
fn job_env(steps: &[&Step]) -> Vec<(String, String)> {
    let mut env = BTreeMap::new();
    for step in steps {
        for e in entries(&step.env) {
            env.insert(e.name, e.value);
        }
    }
    env.into_iter().collect()
}

fn input_var(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

fn action_yml() -> Value {
    let text = std::fs::read_to_string(repo().join("action.yml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn action_inputs() -> BTreeMap<String, Value> {
    action_yml()["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The usual `with:` for the test IdP's service account, and the binary under test.
fn with_sa(idp: &Idp) -> Vec<(&'static str, String)> {
    vec![
        ("binary-path", bin().to_string_lossy().into_owned()),
        ("issuer", idp.issuer.clone()),
        ("client-id", SA_ID.to_string()),
        ("client-secret", SA_SECRET.to_string()),
    ]
}

fn refs<'a>(with: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    with.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn set<'a>(
    with: &'a [(&'static str, String)],
    extra: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    let mut all: Vec<(&str, &str)> = refs(with)
        .into_iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .collect();
    all.extend_from_slice(extra);
    all
}

/// Every line of `log` that mentions `secret` is exactly the add-mask command for it.
fn only_masked(secret: &str, log: &str) {
    for line in log.lines().filter(|l| l.contains(secret)) {
        assert_eq!(
            line,
            format!("::add-mask::{secret}"),
            "secret outside add-mask"
        );
    }
}

#[test]
fn main_hands_the_token_on_and_post_revokes_and_deletes() {
    if !(have_idp() && have_python()) {
        return;
    }
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_sa(&idp);
    let inputs = set(&with, &[("token-file", "true")]);
    let main = runner.run("main.js", &inputs, &[]);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());

    // GITHUB_ENV and GITHUB_OUTPUT, exactly.
    let env = entries(&main.env);
    let output = entries(&main.output);
    let state = entries(&main.state);
    assert_eq!(
        names(&env),
        [
            "POLARS_CLOUD_ACCESS_TOKEN",
            "POLARS_CLOUD_ACCESS_TOKEN_PATH"
        ]
    );
    assert_eq!(names(&output), ["access-token", "expires-at", "token-file"]);
    assert_eq!(names(&state), ["binary", "refresh_token", "token_file"]);
    let delimiters: HashSet<&str> = [&env, &output, &state]
        .iter()
        .flat_map(|e| e.iter().map(|x| x.delimiter.as_str()))
        .collect();
    assert_eq!(delimiters.len(), 8, "every entry gets its own delimiter");

    let token = value(&env, "POLARS_CLOUD_ACCESS_TOKEN");
    assert_eq!(value(&output, "access-token"), token);
    let c = claims(token);
    assert_eq!(c["azp"], "PolarsCloud");
    assert_eq!(c["preferred_username"], format!("{SA_ID}@sa.cloud.pola.rs"));
    let expires_at = value(&output, "expires-at");
    let at = humantime::parse_rfc3339(expires_at).expect("expires-at is RFC 3339");
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == 20,
        "{expires_at}"
    );
    assert_eq!(
        at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        c["exp"].as_u64().unwrap()
    );

    // The token file: under RUNNER_TEMP, outside the workspace, the bare token, owner-only.
    let path = PathBuf::from(value(&output, "token-file"));
    assert_eq!(
        value(&env, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        path.to_str().unwrap()
    );
    assert_eq!(value(&state, "token_file"), path.to_str().unwrap());
    assert_eq!(path.parent().unwrap(), runner.temp());
    assert!(!path.starts_with(runner.workspace()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(
        std::fs::read_dir(runner.workspace()).unwrap().count(),
        0,
        "nothing is written into the workspace"
    );

    // The log: each secret only inside its add-mask command, the access token's first.
    let refresh = value(&state, "refresh_token").to_string();
    assert_eq!(
        main.stdout.lines().next(),
        Some(format!("::add-mask::{token}").as_str())
    );
    assert!(main.stdout.contains(&format!("::add-mask::{refresh}\n")));
    only_masked(token, &main.log());
    only_masked(&refresh, &main.log());
    assert_no_leak(token, &[&main.stderr, &main.summary]);
    assert_no_leak(&refresh, &[&main.stderr, &main.summary]);
    assert_no_leak(
        SA_SECRET,
        &[
            &main.log(),
            &main.env,
            &main.output,
            &main.state,
            &main.summary,
        ],
    );
    assert_eq!(main.summary.lines().count(), 1, "{}", main.summary);
    assert!(
        main.summary.contains(&format!("valid until {expires_at}")),
        "{}",
        main.summary
    );
    assert_eq!(value(&state, "binary"), bin().to_str().unwrap());

    // A later step: the real polars-cloud client with the environment GITHUB_ENV produced.
    let later: Vec<(&str, &str)> = env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    let verdict = real_client(&[], &later);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["bearer"], token);
    assert_eq!(verdict["source"], "env");

    // Post: the file is gone and the refresh token revoked.
    let post = runner.post(&main, &inputs);
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
    assert!(!path.exists(), "the token file must be deleted");
    let revocations = idp.revocations();
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    assert_eq!(revocations[0]["params"]["token"], refresh.as_str());
    assert_eq!(revocations[0]["params"]["client_id"], "PolarsCloud");
    assert_eq!(revocations[0]["status"], 200);
    let (status, reply) = idp.refresh_with(&refresh);
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("invalid_grant"), "{reply}");
    assert_no_leak(&refresh, &[&post.log()]);
    assert_no_leak(token, &[&post.log()]);
    assert!(
        post.stderr.contains("refresh token revoked"),
        "{}",
        post.stderr
    );
    post.no_files();
}

/// The control for the test above: without post, the refresh token main kept still works.
#[test]
fn without_post_the_refresh_token_stays_usable() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let main = runner.run("main.js", &refs(&with_sa(&idp)), &[]);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    let refresh = value(&entries(&main.state), "refresh_token").to_string();
    assert_eq!(idp.refresh_with(&refresh).0, 200);
}

#[test]
fn with_export_env_false_only_the_outputs_carry_the_token() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_sa(&idp);
    let inputs = set(&with, &[("export-env", "false")]);
    let main = runner.run("main.js", &inputs, &[]);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    assert_eq!(main.env, "");
    let output = entries(&main.output);
    assert_eq!(names(&output), ["access-token", "expires-at"]);
    assert_eq!(names(&entries(&main.state)), ["binary", "refresh_token"]);
    assert!(
        main.summary.contains("`access-token` output"),
        "{}",
        main.summary
    );
    assert_eq!(std::fs::read_dir(runner.temp()).unwrap().count(), 0);

    let post = runner.post(&main, &inputs);
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
    assert_eq!(
        idp.requests()
            .iter()
            .filter(|r| r["endpoint"] == "revocation")
            .count(),
        1
    );
}

#[test]
fn transient_failures_are_retried_and_give_up_after_the_retries() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_sa(&idp);
    idp.faults(json!([{"kind": "status", "status": 503}, {"kind": "reset"}]));
    let main = runner.run("main.js", &refs(&with), &[]);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    assert_eq!(idp.token_requests().len(), 3);
    assert!(main.stderr.contains("retrying"), "{}", main.stderr);

    idp.faults(json!([
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 502},
        {"kind": "status", "status": 500},
    ]));
    let failed = runner.run("main.js", &set(&with, &[("retries", "1")]), &[]);
    assert_eq!(failed.code, Some(4), "log:\n{}", failed.log());
    assert_eq!(idp.token_requests().len(), 5);
    let error = failed.error();
    assert!(
        error.starts_with(
            "failed to obtain a Polars Cloud access token: gave up after 2 attempt(s)"
        ) && error.ends_with("the identity provider answered HTTP 502"),
        "{error}"
    );
    failed.no_files();
}

#[test]
fn a_wrong_secret_fails_at_once_and_post_has_nothing_to_do() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_sa(&idp);
    let wrong = "wrong-secret-Hx7-never-print";
    let inputs = set(&with, &[("client-secret", wrong)]);
    let main = runner.run("main.js", &inputs, &[]);
    assert_eq!(main.code, Some(3), "log:\n{}", main.log());
    assert_eq!(idp.token_requests().len(), 1, "a rejection is not retried");
    let error = main.error();
    assert!(
        error.contains("invalid_grant") && error.contains("'test-sa@sa.cloud.pola.rs'"),
        "{error}"
    );
    assert_no_leak(wrong, &[&main.log()]);
    main.no_files();

    let post = runner.post(&main, &inputs);
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
    assert!(
        post.stdout.contains("nothing to clean up"),
        "{}",
        post.stdout
    );
}

#[test]
fn bad_input_is_a_clear_error_annotation_and_leaks_nothing() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_sa(&idp);
    let unreachable = format!("http://127.0.0.1:{}/realms/Polars", free_port());
    let newline_secret = "first-half-Qm3\nsecond-half-Zr8";
    struct Case<'a>(&'a str, Vec<(&'a str, &'a str)>, i32, String);
    let cases = [
        Case(
            "missing client-id",
            set(&with, &[("client-id", "")]),
            2,
            "failed to obtain a Polars Cloud access token: no client id: set the `client-id` input (or POLARS_CLOUD_CLIENT_ID)".into(),
        ),
        Case(
            "empty secret",
            set(&with, &[("client-secret", "")]),
            2,
            "failed to obtain a Polars Cloud access token: no client secret: the `client-secret` input is empty and POLARS_CLOUD_CLIENT_SECRET is not set".into(),
        ),
        Case(
            "unknown grant",
            set(&with, &[("grant", "password")]),
            2,
            "input 'grant' is 'password': use service-account or client-credentials".into(),
        ),
        Case(
            "unreachable IdP",
            set(&with, &[("issuer", &unreachable), ("retries", "1")]),
            4,
            format!("failed to obtain a Polars Cloud access token: gave up after 2 attempt(s) over 0s: could not reach the identity provider at {unreachable}/protocol/openid-connect/token: connection failed"),
        ),
        Case(
            "secret with a newline",
            set(&with, &[("client-secret", newline_secret)]),
            2,
            "failed to obtain a Polars Cloud access token: the client secret from the `client-secret` input contains a line break or control character".into(),
        ),
    ];
    for Case(what, inputs, code, expected) in cases {
        let step = runner.run("main.js", &inputs, &[]);
        assert_eq!(step.code, Some(code), "{what}: log:\n{}", step.log());
        let error = step.error();
        assert!(error.starts_with(&expected), "{what}: {error}");
        assert_no_leak(SA_SECRET, &[&step.log()]);
        for half in newline_secret.split('\n') {
            assert_no_leak(half, &[&step.log()]);
        }
        step.no_files();
        // The failed main recorded nothing, so post has nothing to do.
        assert_eq!(runner.post(&step, &inputs).code, Some(0), "{what}");
    }
    assert_eq!(
        idp.token_requests().len(),
        0,
        "no input error reached the IdP"
    );
}

#[test]
fn the_credentials_fall_back_to_the_environment() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = [
        ("binary-path", bin().to_string_lossy().into_owned()),
        ("issuer", idp.issuer.clone()),
    ];
    let main = runner.run(
        "main.js",
        &refs(&with),
        &[
            ("POLARS_CLOUD_CLIENT_ID", SA_ID),
            ("POLARS_CLOUD_CLIENT_SECRET", SA_SECRET),
        ],
    );
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    assert_eq!(idp.token_requests()[0]["params"]["password"], SA_SECRET);
}

/// The wrapper without `binary-path`: it installs the release binary from a (file://)
/// mirror after checking SHA256SUMS, caches it, and runs it; a bad checksum stops it.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_wrapper_installs_a_verified_release_binary_and_refuses_a_bad_checksum() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let releases = tempfile::tempdir().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let dir = releases.path().join(format!("v{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let asset = "polars-cloud-auth-x86_64-unknown-linux-musl";
    std::os::unix::fs::symlink(bin(), dir.join(asset)).unwrap();
    let sum = scrubbed("sha256sum").arg(bin()).output().unwrap();
    let digest = text(&sum.stdout)[..64].to_string();
    let with = [
        ("issuer", idp.issuer.clone()),
        ("client-id", SA_ID.to_string()),
        ("client-secret", SA_SECRET.to_string()),
    ];
    let mirror = url::Url::from_directory_path(releases.path())
        .unwrap()
        .to_string();
    let env = [("POLARS_CLOUD_AUTH_RELEASES_URL", mirror.as_str())];

    std::fs::write(
        dir.join("SHA256SUMS"),
        format!("{}  {asset}\n", "0".repeat(64)),
    )
    .unwrap();
    let bad = runner.run("main.js", &refs(&with), &env);
    assert_eq!(bad.code, Some(1), "log:\n{}", bad.log());
    assert!(
        bad.error()
            .starts_with(&format!("failed to install polars-cloud-auth: checksum mismatch for {asset} of release v{version}")),
        "{}",
        bad.log()
    );
    assert_eq!(idp.token_requests().len(), 0);
    bad.no_files();

    std::fs::write(dir.join("SHA256SUMS"), format!("{digest}  {asset}\n")).unwrap();
    let main = runner.run("main.js", &refs(&with), &env);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    let cached = runner.tool_cache().join(format!(
        "polars-cloud-auth/{version}/x86_64-unknown-linux-musl/polars-cloud-auth"
    ));
    assert_eq!(
        value(&entries(&main.state), "binary"),
        cached.to_str().unwrap()
    );
    assert!(
        main.stdout.contains(&format!("SHA-256 {digest} verified")),
        "{}",
        main.stdout
    );
    let post = runner.post(&main, &refs(&with));
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
}

#[test]
fn the_wrappers_own_tests_pass() {
    require!(have_node());
    let out = scrubbed("node")
        .args(["--test", "action/"])
        .current_dir(repo())
        .output()
        .expect("failed to run node");
    assert!(
        out.status.success(),
        "node --test action/ failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn action_yml_declares_what_the_binary_and_wrapper_read() {
    let action = action_yml();
    assert_eq!(action["runs"]["using"], "node24");
    assert_eq!(action["runs"]["post-if"], "always()");
    for entry in ["main", "post"] {
        let file = action["runs"][entry].as_str().unwrap();
        assert!(repo().join(file).is_file(), "{file}");
    }
    let declared: Vec<String> = action_inputs().into_keys().collect();
    let mut read: Vec<String> = INPUTS.iter().map(|s| s.to_string()).collect();
    read.extend(["version".to_string(), "binary-path".to_string()]);
    read.sort();
    assert_eq!(declared, read);
    for (name, spec) in action_inputs() {
        assert!(
            spec["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert_ne!(
            spec["required"], true,
            "{name}: inputs fall back or default"
        );
    }
    let outputs: Vec<&String> = action["outputs"].as_object().unwrap().keys().collect();
    assert_eq!(outputs, ["access-token", "expires-at", "token-file"]);
}

// --- client-assertion: github-oidc -----------------------------------------------------------
//
// GitHub's own ID-token service only answers jobs running on GitHub, so it cannot be used
// here: `tests/github_oidc/server.mjs` stands in for it (the per-job request URL and bearer
// the runner sets as ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN, RS256 JWTs with GitHub's claim
// shape, its discovery document and JWKS, over HTTPS on loopback). What checks the token
// is real: Keycloak, whose OIDC identity provider ("supportsClientAssertions") verifies it
// for a client with the authenticator "Signed JWT - Federated" (FederatedJWTClientAuthenticator
// in Keycloak 26.7: it looks the identity provider up by the token's `iss`, the client by
// its attributes `jwt.credential.issuer` = the provider's alias and `jwt.credential.sub` =
// the token's `sub`, then checks signature against the provider's JWKS, audience = the
// realm's issuer URL, expiry, a single use of `jti`, and `iat` at most 300 s ago).

/// The job's `sub` on the main branch of the stand-in's repository.
const GITHUB_SUB: &str = "repo:octo-org/octo-repo:ref:refs/heads/main";

/// The running stand-in of GitHub's ID-token service; ends with its stdin ([`Proc`]).
struct GithubOidc {
    _proc: Proc,
    issuer: String,
    request_url: String,
    request_token: String,
    hooks_port: u16,
}

impl GithubOidc {
    /// Serves https with `cert`/`key` (PEM files).
    fn start(cert: &Path, key: &Path) -> Self {
        let mut c = scrubbed("node");
        c.arg(repo().join("tests/github_oidc/server.mjs"))
            .env("GH_OIDC_TLS_CERT", cert)
            .env("GH_OIDC_TLS_KEY", key)
            .stdin(Stdio::piped());
        let (proc, ready) = start_announcing(&mut c, "the GitHub OIDC stand-in");
        let s = |k: &str| ready[k].as_str().unwrap().to_string();
        Self {
            issuer: s("issuer"),
            request_url: s("request_url"),
            request_token: s("request_token"),
            hooks_port: ready["hooks_port"].as_u64().unwrap() as u16,
            _proc: proc,
        }
    }

    /// What the runner sets for a job with `permissions: id-token: write`.
    fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("ACTIONS_ID_TOKEN_REQUEST_URL", self.request_url.as_str()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                self.request_token.as_str(),
            ),
        ]
    }

    fn requests(&self) -> Vec<Value> {
        let (status, body) = http_get(self.hooks_port, "/__test/requests").unwrap();
        assert_eq!(status, 200);
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Signs the next tokens with a key the JWKS does not list (or not).
    fn forge(&self, on: bool) {
        let (status, _) = http_get(
            self.hooks_port,
            &format!("/__test/forge?value={}", on as u8),
        )
        .unwrap();
        assert_eq!(status, 200);
    }

    fn set_ref(&self, r: &str) {
        let (status, _) = http_get(self.hooks_port, &format!("/__test/ref?value={r}")).unwrap();
        assert_eq!(status, 200);
    }
}

/// The `with:` of a job that authenticates a client-credentials client with its OIDC token.
fn with_github_oidc(issuer: &str, ca_file: Option<&Path>) -> Vec<(&'static str, String)> {
    let mut with = vec![
        ("binary-path", bin().to_string_lossy().into_owned()),
        ("issuer", issuer.to_string()),
        ("grant", "client-credentials".to_string()),
        ("client-assertion", "github-oidc".to_string()),
    ];
    if let Some(ca) = ca_file {
        with.push(("ca-file", ca.to_string_lossy().into_owned()));
    }
    with
}

const NO_ID_TOKEN: &str = "the job's OIDC token is not available (ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set): grant the job `permissions: id-token: write`";

/// A job without `permissions: id-token: write` gets no ACTIONS_ID_TOKEN_REQUEST_* variables:
/// the documented error and exit code 2, nothing handed on, nothing sent.
#[test]
fn github_oidc_without_the_id_token_permission_fails_with_the_documented_error() {
    require!(have_idp());
    let idp = Idp::start();
    let runner = Runner::new();
    let with = with_github_oidc(&idp.issuer, None);
    let step = runner.run("main.js", &refs(&with), &[]);
    assert_eq!(step.code, Some(2), "log:\n{}", step.log());
    assert_eq!(step.error(), NO_ID_TOKEN);
    step.no_files();
    assert_eq!(idp.token_requests().len(), 0);
    assert_eq!(runner.post(&step, &refs(&with)).code, Some(0));
}

use crate::common::keycloak::KeycloakAdmin;

/// The realm's latest client-login event: (type, clientId, error).
fn last_client_event(kc: &KeycloakAdmin) -> (String, String, String) {
    let events = kc.admin(
        "GET",
        "/events?type=CLIENT_LOGIN&type=CLIENT_LOGIN_ERROR&max=1",
        None,
    );
    let e = &events[0];
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    (s("type"), s("clientId"), s("error"))
}

/// What the admin of a self-hosted realm sets up for GitHub: an OpenID Connect identity
/// provider imported from the issuer's discovery document (as the admin console's "Discovery
/// endpoint" does) with "Supports client assertions" on, and a client whose authenticator is
/// "Signed JWT - Federated" with the job's subject. Returns the client id.
fn github_federated_client(kc: &KeycloakAdmin, gh: &GithubOidc) -> String {
    let alias = "github-actions";
    // Keycloak itself fetches the discovery document, over TLS, trusting the peers' CA.
    let imported = kc.admin(
        "POST",
        "/identity-provider/import-config",
        Some(json!({
            "providerId": "oidc",
            "fromUrl": format!("{}/.well-known/openid-configuration", gh.issuer),
        })),
    );
    assert_eq!(imported["issuer"], gh.issuer.as_str(), "{imported}");
    assert_eq!(
        imported["jwksUrl"],
        format!("{}/.well-known/jwks", gh.issuer),
        "{imported}"
    );
    assert_eq!(imported["useJwksUrl"], "true", "{imported}");
    assert_eq!(imported["validateSignature"], "true", "{imported}");
    let mut config = imported.as_object().unwrap().clone();
    config.insert("supportsClientAssertions".into(), json!("true"));
    // A leftover from an earlier run is replaced.
    kc.call(
        "DELETE",
        &format!("/identity-provider/instances/{alias}"),
        None,
    );
    kc.admin(
        "POST",
        "/identity-provider/instances",
        Some(json!({"alias": alias, "providerId": "oidc", "enabled": true, "config": config})),
    );
    let client_id = "gha-deploy";
    kc.federated_client(client_id, alias, GITHUB_SUB);
    client_id.to_string()
}

/// End to end: the action's main step, as a runner runs it with `id-token: write`, fetches
/// the job's OIDC token from the stand-in of GitHub's service, masks it, and Keycloak (real)
/// verifies it as the client's assertion and issues a token for that client; no secret
/// anywhere. Then the controls: another branch's token (another `sub`), a token for another
/// audience, a wrong request bearer, and no `id-token: write`.
#[test]
#[ignore = "needs Keycloak: scripts/test.sh --slow"]
fn github_oidc_token_gets_a_keycloak_token_for_the_federated_client() {
    let kc = KeycloakAdmin::from_env();
    let tls = PathBuf::from(std::env::var("POLARS_CLOUD_AUTH_KEYCLOAK_PEER_TLS").expect(
        "POLARS_CLOUD_AUTH_KEYCLOAK_PEER_TLS is not set: scripts/keycloak.sh start prints it",
    ));
    let gh = GithubOidc::start(&tls.join("cert.pem"), &tls.join("key.pem"));
    let client_id = github_federated_client(&kc, &gh);
    let runner = Runner::new();
    // The binary fetches the OIDC token over TLS from the stand-in: `ca-file` is its CA (on
    // GitHub the system roots trust token.actions.githubusercontent.com).
    let ca = tls.join("ca.pem");
    let with = with_github_oidc(&kc.issuer(), Some(&ca));
    let inputs = refs(&with);

    let main = runner.run("main.js", &inputs, &gh.env());
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    // One request to the ID-token service, with the runner's bearer, for the realm.
    let requests = gh.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["authorized"], true);
    assert_eq!(requests[0]["apiVersion"], "2.0");
    assert_eq!(requests[0]["audience"], kc.issuer().as_str());
    let oidc = requests[0]["token"].as_str().unwrap().to_string();
    let oidc_claims = claims(&oidc);
    assert_eq!(oidc_claims["iss"], gh.issuer.as_str());
    assert_eq!(oidc_claims["sub"], GITHUB_SUB);
    assert_eq!(oidc_claims["aud"], kc.issuer().as_str());

    // Keycloak's token, for the federated client, handed on.
    let env = entries(&main.env);
    assert_eq!(names(&env), ["POLARS_CLOUD_ACCESS_TOKEN"]);
    let token = value(&env, "POLARS_CLOUD_ACCESS_TOKEN");
    assert_eq!(value(&entries(&main.output), "access-token"), token);
    let access = claims(token);
    assert_eq!(access["iss"], kc.issuer().as_str());
    assert_eq!(access["azp"], client_id.as_str());
    assert_eq!(
        access["preferred_username"],
        format!("service-account-{client_id}")
    );

    // The OIDC token is masked, before the access token, and appears nowhere else.
    let mask = format!("::add-mask::{oidc}");
    assert_eq!(
        main.stdout.lines().next(),
        Some(mask.as_str()),
        "{}",
        main.stdout
    );
    only_masked(&oidc, &main.log());
    only_masked(token, &main.log());
    assert_no_leak(
        &oidc,
        &[
            &main.stderr,
            &main.env,
            &main.output,
            &main.state,
            &main.summary,
        ],
    );
    let post = runner.post(&main, &inputs);
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
    assert_no_leak(&oidc, &[&post.log()]);

    // Another branch: a valid token from the same issuer, but no client has its `sub`.
    gh.set_ref("refs/heads/feature");
    let other = runner.run("main.js", &inputs, &gh.env());
    assert_eq!(other.code, Some(3), "log:\n{}", other.log());
    let refused = gh.requests().last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        claims(&refused)["sub"],
        "repo:octo-org/octo-repo:ref:refs/heads/feature"
    );
    let error = other.error();
    assert!(error.contains("invalid_client"), "{error}");
    assert_eq!(
        last_client_event(&kc),
        (
            "CLIENT_LOGIN_ERROR".into(),
            String::new(),
            "client_not_found".into()
        )
    );
    only_masked(&refused, &other.log());
    other.no_files();
    gh.set_ref("refs/heads/main");

    // A token for another audience (GitHub's default, the owner's URL): refused.
    let wrong_aud = [
        inputs.clone(),
        vec![("oidc-audience", "https://github.com/octo-org")],
    ]
    .concat();
    let other = runner.run("main.js", &wrong_aud, &gh.env());
    assert_eq!(other.code, Some(3), "log:\n{}", other.log());
    assert_eq!(
        gh.requests().last().unwrap()["audience"],
        "https://github.com/octo-org"
    );
    assert_eq!(
        last_client_event(&kc),
        (
            "CLIENT_LOGIN_ERROR".into(),
            client_id.clone(),
            "invalid_client_credentials".into()
        )
    );
    other.no_files();

    // The right claims, signed by a key the issuer's JWKS does not list: refused.
    gh.forge(true);
    let other = runner.run("main.js", &inputs, &gh.env());
    assert_eq!(other.code, Some(3), "log:\n{}", other.log());
    let forged = gh.requests().last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(claims(&forged)["sub"], GITHUB_SUB);
    assert_eq!(claims(&forged)["aud"], kc.issuer().as_str());
    assert!(
        other.error().contains("invalid_client"),
        "{}",
        other.error()
    );
    other.no_files();
    gh.forge(false);

    // The control for all three: the main branch, the realm's audience, the issuer's key.
    let again = runner.run("main.js", &inputs, &gh.env());
    assert_eq!(again.code, Some(0), "log:\n{}", again.log());
    assert_eq!(
        last_client_event(&kc),
        ("CLIENT_LOGIN".into(), client_id.clone(), String::new())
    );

    // A request bearer the service refuses (an expired job's): no token, exit 2.
    let stale = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", gh.request_url.as_str()),
        (
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "not-this-jobs-request-token",
        ),
    ];
    let other = runner.run("main.js", &inputs, &stale);
    assert_eq!(other.code, Some(2), "log:\n{}", other.log());
    assert_eq!(gh.requests().last().unwrap()["status"], 401);
    assert!(other.error().contains("HTTP 401"), "{}", other.error());
    other.no_files();

    // No `id-token: write`: the documented error, nothing asked of either service.
    let before = gh.requests().len();
    let other = runner.run("main.js", &inputs, &[]);
    assert_eq!(other.code, Some(2), "log:\n{}", other.log());
    assert_eq!(other.error(), NO_ID_TOKEN);
    other.no_files();
    assert_eq!(gh.requests().len(), before);
}

/// An earlier action's post step (posts run in reverse order, so after ours) with the job's
/// environment: an HTTPS request to `url` the way most tools make it (the proxy from
/// `https_proxy`/`HTTPS_PROXY`, and `SSL_CERT_FILE`, when set, read as the trust store),
/// trusting `ca` for the test server. Returns the probe's exit and its output.
fn earlier_actions_post(job_env: &[(String, String)], url: &str, ca: &Path) -> (bool, String) {
    const PROBE: &str = r#"
import os, ssl, sys, urllib.request
bundle = os.environ.get("SSL_CERT_FILE")
if bundle:
    with open(bundle) as f:
        assert "BEGIN CERTIFICATE" in f.read(), f"SSL_CERT_FILE {bundle} holds no certificate"
context = ssl.create_default_context(cafile=sys.argv[2])
with urllib.request.urlopen(sys.argv[1], context=context, timeout=10) as reply:
    print(reply.status)
"#;
    let out = scrubbed(python())
        .args(["-c", PROBE, url])
        .arg(ca)
        .envs(job_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// The revocation requests of a test IdP that serves https only, trusting `ca`.
fn tls_revocations(idp: &Idp, ca: &Path) -> Vec<Value> {
    const READ: &str = r#"
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
print(urllib.request.urlopen(sys.argv[1], context=context, timeout=10).read().decode())
"#;
    let out = scrubbed(python())
        .args(["-c", READ])
        .arg(format!("https://127.0.0.1:{}/__test/requests", idp.port))
        .arg(ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = match reply {
        Value::Object(mut o) => o.remove("requests").unwrap_or(Value::Null),
        other => other,
    };
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["endpoint"] == "revocation")
        .cloned()
        .collect()
}

/// Issue 18 item 10: with `long-running: true` post ran with the job's exported
/// environment (HTTPS_PROXY to the relay, SSL_CERT_FILE its CA bundle), stopped the relay
/// first, and then failed to revoke main's session ("No CA certificates were loaded from
/// the system"); the post steps of actions used before ours, which run after ours, were
/// left a dead proxy and a deleted bundle. Now post revokes first and hands later steps
/// the network the job had before main.
#[test]
fn long_running_post_revokes_and_leaves_later_post_steps_a_working_network() {
    if !(have_idp() && have_python()) {
        return;
    }
    let runner = Runner::new();
    let (ca, cert, key) = test_pki(runner.dir.path());
    let idp = Idp::start_with(IdpOptions {
        tls: Some((cert, key)),
        ..IdpOptions::default()
    });
    let url = format!("{}/.well-known/openid-configuration", idp.issuer);
    let with = with_sa(&idp);
    let ca_file = ca.to_string_lossy().into_owned();
    let inputs = set(&with, &[("long-running", "true"), ("ca-file", &ca_file)]);
    let main = runner.run("main.js", &inputs, &[]);
    assert_eq!(main.code, Some(0), "log:\n{}", main.log());
    let exported = job_env(&[&main]);
    let names: Vec<&str> = exported.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"HTTPS_PROXY") && names.contains(&"SSL_CERT_FILE"),
        "{names:?}"
    );
    // The control: while the relay runs, a later step's HTTPS goes through it.
    let (ok, log) = earlier_actions_post(&exported, &url, &ca);
    assert!(ok, "through the relay: {log}");

    let post = runner.post(&main, &inputs);
    assert_eq!(post.code, Some(0), "log:\n{}", post.log());
    assert!(!post.stdout.contains("::warning::"), "log:\n{}", post.log());
    let refresh = value(&entries(&main.state), "refresh_token").to_string();
    let revocations = tls_revocations(&idp, &ca);
    assert_eq!(
        revocations.len(),
        2,
        "main's session and the relay's: {revocations:?}"
    );
    assert!(
        revocations.iter().all(|r| r["status"] == 200),
        "{revocations:?}"
    );
    assert!(
        revocations
            .iter()
            .any(|r| r["params"]["token"] == refresh.as_str()),
        "main's refresh token was not revoked: {revocations:?}"
    );
    assert_no_leak(&refresh, &[&post.log(), &post.env]);
    assert_no_leak(SA_SECRET, &[&post.log(), &post.env]);

    // The earlier action's post step, after ours, with the job's environment as it is now.
    let (ok, log) = earlier_actions_post(&job_env(&[&main, &post]), &url, &ca);
    assert!(ok, "after our post: {log}");
}
