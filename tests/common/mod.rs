//! Shared harness for the integration tests: the real binary, and the real test identity
//! provider (`tests/idp`, oidc-provider mounted at Keycloak's paths) on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// The running test IdP; killed when dropped.
pub struct Idp {
    child: Child,
    _stdin: ChildStdin,
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
        let dir = repo().join("tests/idp");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test IdP is not installed: run `npm ci --prefix tests/idp` (scripts/setup.sh does)"
        );
        let mut node = Command::new("node");
        if let Some((cert, key)) = &o.tls {
            node.env("IDP_TLS_CERT", cert).env("IDP_TLS_KEY", key);
        }
        let mut child = node
            .arg(dir.join("server.mjs"))
            .env("IDP_PORT", "0")
            .env("IDP_TOKEN_TTL", o.token_ttl.to_string())
            .env("IDP_REFRESH_TTL", o.refresh_ttl.to_string())
            .env("IDP_DEVICE_TTL", o.device_ttl.to_string())
            .env("IDP_DEVICE_INTERVAL", o.device_interval.to_string())
            .env(
                "IDP_SERVICE_ACCOUNTS",
                format!("{SA_ID}:{SA_SECRET},other-sa:other-secret"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start node: is Node.js installed?");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the test IdP did not start: {line:?}"));
        Self {
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            port: ready["port"].as_u64().unwrap() as u16,
            child,
            _stdin: stdin,
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        assert!(head.starts_with("HTTP/1.1 2"), "{method} {path}: {head}");
        // The hooks answer with small bodies; chunked encoding is unwrapped here.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        serde_json::from_str(&body).unwrap_or(Value::Null)
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
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, reply)
    }

    pub fn set_secret(&self, id: &str, secret: &str) {
        self.call(
            "POST",
            "/__test/service-accounts",
            Some(&serde_json::json!({"id": id, "secret": secret})),
        );
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with a clean environment: no inherited POLARS_* settings.
pub fn cmd(idp: &Idp) -> Command {
    cmd_for(&idp.issuer)
}

/// The binary with a clean environment, the test service account and `issuer`.
pub fn cmd_for(issuer: &str) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("POLARS_CLOUD") || k.ends_with("_PROXY") || k.ends_with("_proxy") {
            c.env_remove(k);
        }
    }
    c.env("POLARS_CLOUD_ISSUER", issuer)
        .env("POLARS_CLOUD_CLIENT_ID", SA_ID)
        .env("POLARS_CLOUD_CLIENT_SECRET", SA_SECRET)
        .stdin(Stdio::null());
    c
}

/// Drains a child's piped stderr on a thread of its own (a full pipe would block the
/// child) into a string the test can read at any time; the handle ends with the pipe.
pub fn capture_stderr(
    child: &mut Child,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    let mut pipe = child.stderr.take().expect("stderr must be piped");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    (text, reader)
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

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// The Python interpreter of the test venv, with polars-cloud installed.
pub fn python() -> PathBuf {
    let p = std::env::var_os("PCA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "no Python venv at {}: run scripts/setup.sh (or set PCA_PYTHON)",
        p.display()
    );
    p
}

/// Runs the real polars-cloud client (tests/py/client/check_client.py) with `env`, against
/// the local stand-in API; returns its JSON verdict.
pub fn real_client(env: &[(&str, &Path)], tokens: &[(&str, &str)]) -> Value {
    let mut c = Command::new(python());
    c.arg(repo().join("tests/py/client/check_client.py"));
    for (k, _) in std::env::vars() {
        if k.starts_with("POLARS_CLOUD") {
            c.env_remove(k);
        }
    }
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

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with the openssl
/// command: (ca.pem, cert.pem, key.pem).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS tests (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    sh(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=pca test CA",
            "-days",
            "2",
        ],
    ]
    .concat());
    sh(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}
