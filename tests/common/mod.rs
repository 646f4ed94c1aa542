//! Shared harness for the integration tests: the real binary, and the real test identity
//! provider (`tests/idp`, oidc-provider mounted at Keycloak's paths) on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod keycloak;
mod login;
mod proc;
mod sidecar;
pub use login::Login;
pub use proc::Proc;
pub use sidecar::Sidecar;

pub const SA_ID: &str = "test-sa";
/// Distinctive, so a leak is easy to find in any output.
pub const SA_SECRET: &str = "s3cr3t-Zq8vXw-never-print-me";

/// The binary under test; `PCA_BIN` names a copy instead (a target dir shared with other
/// checkouts may have its binary replaced by their builds while the tests run).
pub fn bin() -> PathBuf {
    std::env::var_os("PCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_polars-cloud-auth")))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running test IdP; killed when dropped (it also ends with its stdin).
pub struct Idp {
    /// Killed on drop.
    _proc: Proc,
    pub issuer: String,
    pub port: u16,
}

pub struct IdpOptions {
    pub token_ttl: u64,
    pub refresh_ttl: u64,
    pub device_ttl: u64,
    pub device_interval: u64,
    /// Serve https with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            token_ttl: 300,
            refresh_ttl: 1800,
            device_ttl: 600,
            device_interval: 1,
            tls: None,
        }
    }
}

impl Idp {
    pub fn start() -> Self {
        Self::start_with(IdpOptions::default())
    }

    pub fn with_ttl(token_ttl: u64) -> Self {
        Self::start_with(IdpOptions {
            token_ttl,
            ..IdpOptions::default()
        })
    }

    pub fn start_with(o: IdpOptions) -> Self {
        if let Some(missing) = idp_missing() {
            panic!("{missing}");
        }
        let mut node = scrubbed("node");
        if let Some((cert, key)) = &o.tls {
            node.env("IDP_TLS_CERT", cert).env("IDP_TLS_KEY", key);
        }
        node.arg(repo().join("tests/idp/server.mjs"))
            .env("IDP_PORT", "0")
            .env("IDP_TOKEN_TTL", o.token_ttl.to_string())
            .env("IDP_REFRESH_TTL", o.refresh_ttl.to_string())
            .env("IDP_DEVICE_TTL", o.device_ttl.to_string())
            .env("IDP_DEVICE_INTERVAL", o.device_interval.to_string())
            .env(
                "IDP_SERVICE_ACCOUNTS",
                format!("{SA_ID}:{SA_SECRET},other-sa:other-secret"),
            )
            .stdin(Stdio::piped());
        let (proc, ready) = start_announcing(&mut node, "the test IdP");
        Self {
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            port: ready["port"].as_u64().unwrap() as u16,
            _proc: proc,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let reply = http(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            &body,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            (200..300).contains(&reply.status),
            "{method} {path}: {}",
            reply.head
        );
        serde_json::from_str(&reply.body).unwrap_or(Value::Null)
    }

    /// Queues faults for the next token-endpoint requests.
    pub fn faults(&self, faults: Value) {
        self.call(
            "POST",
            "/__test/faults",
            Some(&serde_json::json!({ "faults": faults })),
        );
    }

    /// Drops the faults still queued.
    pub fn clear_faults(&self) {
        self.call("DELETE", "/__test/faults", None);
    }

    /// Every token-endpoint and revocation request so far.
    pub fn requests(&self) -> Vec<Value> {
        match self.call("GET", "/__test/requests", None) {
            Value::Array(items) => items,
            Value::Object(mut o) => match o.remove("requests") {
                Some(Value::Array(items)) => items,
                other => panic!("unexpected requests reply: {other:?}"),
            },
            other => panic!("unexpected requests reply: {other:?}"),
        }
    }

    pub fn token_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["endpoint"] == "token")
            .collect()
    }

    pub fn revocations(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["endpoint"] == "revocation")
            .collect()
    }

    pub fn grant_types(&self) -> Vec<String> {
        self.token_requests()
            .iter()
            .map(|r| r["params"]["grant_type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// A refresh-token grant sent straight to the token endpoint, as anyone holding the
    /// token could: (status, raw reply).
    pub fn refresh_with(&self, refresh: &str) -> (u16, String) {
        let body = format!(
            "grant_type=refresh_token&client_id=PolarsCloud&refresh_token={}",
            url::form_urlencoded::byte_serialize(refresh.as_bytes()).collect::<String>()
        );
        let path = format!(
            "{}/protocol/openid-connect/token",
            self.issuer
                .split_once(&format!(":{}", self.port))
                .unwrap()
                .1
        );
        let reply = http(
            self.port,
            "POST",
            &path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &body,
        )
        .unwrap();
        (
            reply.status,
            format!("{}\r\n\r\n{}", reply.head, reply.body),
        )
    }

    pub fn set_secret(&self, id: &str, secret: &str) {
        self.call(
            "POST",
            "/__test/service-accounts",
            Some(&serde_json::json!({"id": id, "secret": secret})),
        );
    }
}

/// The binary with a clean environment: no inherited POLARS_* settings.
pub fn cmd(idp: &Idp) -> Command {
    cmd_for(&idp.issuer)
}

/// The binary with a clean environment, the test service account and `issuer`.
pub fn cmd_for(issuer: &str) -> Command {
    let mut c = bin_cmd();
    c.env("POLARS_CLOUD_ISSUER", issuer)
        .env("POLARS_CLOUD_CLIENT_ID", SA_ID)
        .env("POLARS_CLOUD_CLIENT_SECRET", SA_SECRET)
        .stdin(Stdio::null());
    c
}

/// The binary under test with a clean environment ([`scrubbed`]) and nothing else set.
pub fn bin_cmd() -> Command {
    scrubbed(bin())
}

/// `program` without the developer's settings: no inherited POLARS_CLOUD* variable (which
/// every mode reads) and no proxy (the tests talk to loopback peers). Every Command of the
/// tests starts here.
pub fn scrubbed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("POLARS_CLOUD") || k.to_ascii_uppercase().ends_with("_PROXY") {
            c.env_remove(&*k);
        }
    }
    c
}

/// Reads the first stdout line of `c` (a peer that announces itself with a JSON line, as
/// tests/idp and tests/github_oidc do) and returns the guard and that line.
pub fn start_announcing(c: &mut Command, what: &str) -> (Proc, Value) {
    let mut proc = Proc::spawn(c);
    let line = wait_for(Duration::from_secs(30), || {
        let out = proc.stdout();
        if let Some((line, _)) = out.split_once('\n') {
            return Some(line.to_string());
        }
        if let Some(status) = proc.exited() {
            proc.wait_timeout(Duration::from_secs(5));
            panic!(
                "{what} exited ({status}) before it was ready:\n{}",
                proc.stderr()
            );
        }
        None
    });
    let ready = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("{what} did not start: {line:?}\n{}", proc.stderr()));
    (proc, ready)
}

pub fn run(c: &mut Command) -> Output {
    c.output().expect("failed to run polars-cloud-auth")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails when `secret` appears in any of the outputs.
pub fn assert_no_leak(secret: &str, outputs: &[&str]) {
    for o in outputs {
        assert!(!o.contains(secret), "secret leaked into output:\n{o}");
    }
}

/// Decoded claims of a JWT.
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("not a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `f` until it returns Some or `limit` passes (a bound for a hang, not a timing claim).
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A reply of [`http`]: the status, the head (status line and headers) and the body,
/// already de-chunked.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 exchange on loopback `port` (`Connection: close`, so the reply ends with
/// the stream); the one raw HTTP writer of the tests, for peers' test hooks and requests a
/// client library would tidy up.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(stream, "{head}\r\n{body}")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the head"))?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let raw = &reply[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(raw)
    } else {
        raw.to_vec()
    };
    Ok(Reply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).unwrap_or(0);
        let tail = &rest[eol + 2..];
        if n == 0 || tail.len() < n {
            break;
        }
        out.extend_from_slice(&tail[..n]);
        rest = tail[n..].strip_prefix(b"\r\n").unwrap_or(&tail[n..]);
    }
    out
}

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let reply = http(port, "GET", path, &[], "").ok()?;
    Some((reply.status, reply.body))
}

// --- peers installed by scripts/setup.sh ------------------------------------------------
//
// A plain `cargo test` on a machine where scripts/setup.sh has not run skips the tests that
// need these, one line each; scripts/test.sh (CI) requires them.

/// Set (to 1) by scripts/test.sh, which runs scripts/setup.sh first: a missing peer fails.
pub const REQUIRE_PEERS: &str = "POLARS_CLOUD_AUTH_REQUIRE_PEERS";

fn peers_required() -> bool {
    [REQUIRE_PEERS, "POLARS_CLOUD_AUTH_SLOW"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

/// Returns from the test unless every peer named is there: `require!(have_idp())`
/// skips it (one line on the terminal), or fails it when the peers are required
/// (`scripts/test.sh` sets that: CI never skips).
macro_rules! require {
    ($($have:expr),+ $(,)?) => {
        $(if !$have {
            return;
        })+
    };
}
pub(crate) use require;

/// True when `missing` is None; otherwise the test is skipped with one line on the
/// terminal (written past libtest's capture), or fails when the peers are required.
pub fn have(missing: Option<String>) -> bool {
    let Some(missing) = missing else {
        return true;
    };
    assert!(
        !peers_required(),
        "{missing} ({REQUIRE_PEERS}=1 or POLARS_CLOUD_AUTH_SLOW=1 requires it)"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    // One write, so the line does not interleave with libtest's.
    let line = format!("skipped {test}: {missing} (set {REQUIRE_PEERS}=1 to fail instead)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// What is missing for the test IdP (Node.js and tests/idp's node modules), if anything.
pub fn idp_missing() -> Option<String> {
    if let Some(m) = node_missing() {
        return Some(m);
    }
    let dir = repo().join("tests/idp/node_modules/oidc-provider");
    (!dir.exists()).then(|| {
        format!(
            "the test IdP is not installed ({} is missing): run scripts/setup.sh (or `npm ci --prefix tests/idp`)",
            dir.display()
        )
    })
}

/// Whether Node.js runs (the test IdP, the GitHub OIDC stand-in and the action need it).
pub fn node_missing() -> Option<String> {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "Node.js (`node`) is not installed: run scripts/setup.sh".to_string())
}

/// Skips (or fails, see [`have`]) unless the test IdP can run.
pub fn have_idp() -> bool {
    have(idp_missing())
}

/// Skips (or fails) unless Node.js runs.
pub fn have_node() -> bool {
    have(node_missing())
}

/// Skips (or fails) unless the test venv (the real polars-cloud client, Helm's renderer)
/// is there.
pub fn have_python() -> bool {
    have(python_missing())
}

fn python_path() -> PathBuf {
    std::env::var_os("PCA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

pub fn python_missing() -> Option<String> {
    let p = python_path();
    (!p.exists()).then(|| {
        format!(
            "no Python venv at {}: run scripts/setup.sh (or set PCA_PYTHON)",
            p.display()
        )
    })
}

/// The Python interpreter of the test venv, with polars-cloud installed.
pub fn python() -> PathBuf {
    if let Some(missing) = python_missing() {
        panic!("{missing}");
    }
    python_path()
}

/// Runs the real polars-cloud client (tests/py/client/check_client.py) with `env`, against
/// the local stand-in API; returns its JSON verdict.
pub fn real_client(env: &[(&str, &Path)], tokens: &[(&str, &str)]) -> Value {
    let mut c = scrubbed(python());
    c.arg(repo().join("tests/py/client/check_client.py"));
    for (k, v) in env {
        c.env(k, v);
    }
    for (k, v) in tokens {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = text(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "check_client.py printed no verdict\nstdout: {stdout}\nstderr: {}",
            text(&out.stderr)
        )
    })
}

// --- certificates --------------------------------------------------------------------------

/// A private test CA (rcgen, the one certificate generator of the Rust tests).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "polars-cloud-auth test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for `names` (DNS names or IP addresses) and its key (PEM),
    /// and the certificate's DER.
    pub fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        self.leaf_until(names, None)
    }

    /// [`TestCa::leaf`], valid until midnight UTC of `(year, month, day)` when given.
    pub fn leaf_until(
        &self,
        names: &[&str],
        until: Option<(i32, u8, u8)>,
    ) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if let Some((y, m, d)) = until {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A private CA and a server certificate for 127.0.0.1 and localhost signed by it, written
/// to `dir`: (ca.pem, cert.pem, key.pem).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf(&["127.0.0.1", "localhost"]);
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert).unwrap();
    std::fs::write(&paths.2, key).unwrap();
    paths
}
