//! Regressions from the adversarial run of issue 18 against the relay and `exec`, where
//! another local user is the attacker: junk and slow requests, descriptor exhaustion,
//! the CA's name constraint, SIGKILL. Each runs the real binary and talks to it over
//! real sockets and TLS, as the app's client would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::*;

const AUTH_HOST: &str = "auth.polars-cloud-auth.internal";
const TOKEN_PATH: &str = "/realms/Polars/protocol/openid-connect/token";
/// A bound for a hang, no timing claim: far above what any answer takes here.
const BOUND: Duration = Duration::from_secs(60);

/// A token file holding an unsigned JWT valid for an hour (`exec` reads `exp` only).
fn token_file(dir: &Path) -> PathBuf {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({ "exp": now_secs() + 3600.0 });
    let jwt = format!(
        "{}.{}.c2ln",
        enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc.encode(claims.to_string())
    );
    let path = dir.join("token");
    std::fs::write(&path, jwt).unwrap();
    path
}

/// A running `exec` whose command prints its pid and relay settings, then sleeps.
struct Exec {
    proc: Proc,
    proxy: SocketAddr,
    child: i32,
    config_dir: PathBuf,
    tls: Arc<rustls::ClientConfig>,
}

/// The command `exec` runs in these tests: it says where its relay is, then waits.
const CHILD: &str =
    r#"echo "$$ $HTTPS_PROXY $POLARS_CLOUD_CONFIG_DIR $SSL_CERT_FILE"; exec sleep 600"#;

impl Exec {
    /// `exec` with private directories under `runtime`, started through `wrap` (prlimit).
    fn start(dir: &Path, runtime: &Path, wrap: impl FnOnce(Command) -> Command) -> Self {
        let mut c = bin_cmd();
        c.arg("exec")
            .arg("--token-file")
            .arg(token_file(dir))
            .args(["--", "sh", "-c", CHILD])
            .env("XDG_RUNTIME_DIR", runtime)
            .stdin(Stdio::null());
        let mut proc = Proc::spawn(&mut wrap(c));
        let line = wait_for(BOUND, || {
            assert!(proc.alive(), "exec exited: {}", proc.stderr());
            proc.stdout().lines().next().map(str::to_string)
        });
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [child, proxy, config_dir, bundle] = parts[..] else {
            panic!("unexpected child output {line:?}")
        };
        let proxy = proxy.trim_start_matches("http://").parse().unwrap();
        // The relay's CA is the bundle's last certificate (after the system roots).
        let bundle = std::fs::read_to_string(bundle).unwrap();
        let ca_pem = &bundle[bundle.rfind("-----BEGIN CERTIFICATE-----").unwrap()..];
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            proc,
            proxy,
            child: child.parse().unwrap(),
            config_dir: config_dir.into(),
            tls: Arc::new(tls),
        }
    }

    /// The handle the command's client refreshes with (the legacy refresh-token file).
    fn handle(&self) -> String {
        std::fs::read_to_string(self.config_dir.join("cloud_refresh_token")).unwrap()
    }

    /// A TLS stream to the relay, through the proxy's CONNECT, as the client opens it;
    /// the proxy and the handshake must answer within `limit`.
    fn connect_within(
        &self,
        limit: Duration,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut tcp = TcpStream::connect(self.proxy)?;
        tcp.set_read_timeout(Some(limit))?;
        tcp.set_write_timeout(Some(BOUND))?;
        write!(
            tcp,
            "CONNECT {AUTH_HOST}:443 HTTP/1.1\r\nhost: {AUTH_HOST}:443\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte)? == 0 {
                return Err(std::io::Error::other("the proxy closed the connection"));
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(std::io::Error::other(format!(
                "the proxy answered {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        let name = ServerName::try_from(AUTH_HOST).unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        tls.sock.set_read_timeout(Some(BOUND))?;
        Ok(tls)
    }

    fn connect(&self) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        self.connect_within(BOUND)
    }

    /// Sends a token request with `form` on a new connection that the client closes
    /// after the answer; returns the stream to read the answer from.
    fn send(
        &self,
        form: &str,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut s = self.connect()?;
        write!(
            s,
            "POST {TOKEN_PATH} HTTP/1.1\r\nhost: {AUTH_HOST}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{form}",
            form.len()
        )?;
        s.flush()?;
        Ok(s)
    }

    /// A refresh with the real handle, as the client sends it; the answer's status.
    fn refresh(&self) -> std::io::Result<u16> {
        let form = format!(
            "client_id=PolarsCloud&grant_type=refresh_token&refresh_token={}",
            self.handle()
        );
        status(&mut self.send(&form)?)
    }

    /// A refresh that succeeds, retrying (as the real client does) when the connection is
    /// closed before an answer; panics after [`BOUND`]. Returns the attempts it took.
    fn refresh_until_served(&self) -> usize {
        let start = std::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.refresh() {
                Ok(200) => return attempts,
                Ok(other) => panic!("a valid refresh was answered {other}"),
                Err(e) => assert!(
                    start.elapsed() < BOUND,
                    "no valid refresh answered within {BOUND:?} ({attempts} attempts): {e}\n{}",
                    self.proc.stderr()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A token request whose body never arrives in full: head and a few bytes, then
    /// silence.
    fn slow_body(
        &self,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut s = self.connect_within(Duration::from_secs(5))?;
        write!(
            s,
            "POST {TOKEN_PATH} HTTP/1.1\r\nhost: {AUTH_HOST}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ngrant_type=refresh"
        )?;
        s.flush()?;
        Ok(s)
    }
}

/// The status of the answer on `s`, read to its end.
fn status(s: &mut impl Read) -> std::io::Result<u16> {
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        // The relay closes without a close_notify after `connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))
}

/// Items 1 and 2: a valid refresh waited behind every junk request (27.6 s behind 120),
/// and behind every slow-body request that the attacker aborted (50 s after 200), each
/// taking the relay's 250 ms turn. A refused or unfinished request now never takes it.
#[test]
fn junk_and_aborted_slow_bodies_do_not_queue_ahead_of_a_real_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Exec::start(dir.path(), dir.path(), |c| c);
    assert_eq!(exec.refresh().unwrap(), 200);

    // 200 slow bodies, held until the relay reads them, then aborted. Each took a
    // 250 ms turn when its body broke off: 50 s for a refresh after them.
    let slow: Vec<_> = (0..200).filter_map(|_| exec.slow_body().ok()).collect();
    assert!(slow.len() >= 100, "only {} slow bodies got in", slow.len());
    std::thread::sleep(Duration::from_millis(500));
    drop(slow);
    exec.refresh_until_served();

    // 400 complete junk requests (a foreign handle), all sent before the real refresh:
    // 100 s of turns before it.
    let junk_form = "grant_type=refresh_token&refresh_token=junk";
    let mut junk = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = exec.send(junk_form) {
            junk.push(s);
        }
    }
    assert!(
        junk.len() >= 300,
        "only {} junk requests got in",
        junk.len()
    );
    exec.refresh_until_served();
    // Every junk request that got an answer was refused.
    for mut s in junk {
        if let Ok(code) = status(&mut s) {
            assert_eq!(code, 400);
        }
    }
}

/// `c` under `prlimit --nofile=N` (exec's descriptors).
fn nofile(n: u32) -> impl FnOnce(Command) -> Command {
    move |c| {
        let mut p = scrubbed("prlimit");
        p.arg(format!("--nofile={n}")).arg(c.get_program());
        p.args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => p.env(k, v),
                None => p.env_remove(k),
            };
        }
        p.stdin(Stdio::null());
        p
    }
}

/// Item 2: another user held about 1,010 slow-body connections against exec's 1,024
/// descriptors; valid refreshes timed out and exec logged 1,352 "accept failed". The
/// relay now has the shared server's bounds: a connection cap below the descriptor limit
/// (the rest closed at once) and a body deadline.
#[cfg(target_os = "linux")]
#[test]
fn slow_bodies_cannot_take_all_of_execs_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    // 400 descriptors: more than the relay's cap, fewer than the attacker's connections.
    let exec = Exec::start(dir.path(), dir.path(), nofile(400));
    assert_eq!(exec.refresh().unwrap(), 200);
    let mut held = Vec::new();
    let mut failed_in_a_row = 0;
    for _ in 0..600 {
        match exec.slow_body() {
            Ok(s) => {
                held.push(s);
                failed_in_a_row = 0;
            }
            // Closed at once over the cap (or, before the fix, never answered).
            Err(_) => failed_in_a_row += 1,
        }
        if failed_in_a_row > 20 {
            break;
        }
    }
    // The command's client still gets its refresh (once a slot is free again).
    exec.refresh_until_served();
    // The held connections are closed by the relay after the body deadline: a 408, or
    // the end of the stream.
    for s in &mut held {
        let code = status(s).ok();
        assert!(matches!(code, None | Some(408)), "{code:?}");
    }
    exec.refresh_until_served();
    let log = exec.proc.stderr();
    assert!(!log.contains("accept failed"), "{log}");
}

/// Whether process `pid` is gone (or a zombie no one reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Item 4: SIGKILL of exec left its command running with HTTPS_PROXY at a dead port,
/// and the private directory with the CA key, the handle key and config.toml in /tmp.
#[cfg(target_os = "linux")]
#[test]
fn sigkill_of_exec_takes_its_command_and_the_next_run_removes_the_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut exec = Exec::start(dir.path(), runtime.path(), |c| c);
    let private = exec.config_dir.parent().unwrap().to_path_buf();
    assert!(private.join("state/ca.key").exists());
    exec.proc.signal(nix::sys::signal::Signal::SIGKILL);
    exec.proc.wait_timeout(BOUND);
    wait_for(BOUND, || gone(exec.child).then_some(()));
    // The directory is still there (nothing could remove it)...
    assert!(private.exists());
    // ...until the next exec starts.
    let out = run(bin_cmd()
        .arg("exec")
        .arg("--token-file")
        .arg(token_file(dir.path()))
        .args(["--", "true"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!private.exists(), "{} is still there", private.display());
    // A live run's directory, a symlink and another name are left alone.
    let live = Exec::start(dir.path(), runtime.path(), |c| c);
    let live_dir = live.config_dir.parent().unwrap().to_path_buf();
    let target = tempfile::tempdir().unwrap();
    let link = runtime
        .path()
        .join("polars-cloud-auth-exec-999999-1-1-00000000");
    std::os::unix::fs::symlink(target.path(), &link).unwrap();
    let out = run(bin_cmd()
        .arg("exec")
        .arg("--token-file")
        .arg(token_file(dir.path()))
        .args(["--", "true"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(live_dir.exists());
    assert!(link.symlink_metadata().is_ok() && target.path().exists());
    drop(live);
}

/// Item 4, the other order: the command's own exit code and output are as before.
#[test]
fn exec_still_runs_the_command_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin_cmd()
        .arg("exec")
        .arg("--token-file")
        .arg(token_file(dir.path()))
        .args([
            "--",
            "sh",
            "-c",
            "echo \"$1\"; exit 7",
            "sh",
            "--an-argument",
        ])
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "--an-argument\n");
    let out = run(bin_cmd()
        .arg("exec")
        .arg("--token-file")
        .arg(token_file(dir.path()))
        .args(["--", "no-such-command-here"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("command not found: 'no-such-command-here'"),
        "{}",
        text(&out.stderr)
    );
}

/// The webhook's Service name, which its test certificate is for.
const SVC: &str = "pca-polars-cloud-auth.polars-cloud-system.svc";

/// Item 9: 30 TLS connections that sent most of a 3 MiB review and stalled were all
/// still open 40 s later, although their body deadline had fired: hyper waited for the
/// rest of a body no one would read. A connection answered `connection: close` is now
/// closed by the server once the answer is out.
#[test]
fn webhook_connections_whose_body_timed_out_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf(&[SVC]);
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let port = free_port();
    let mut c = bin_cmd();
    c.arg("webhook")
        .env("POLARS_CLOUD_WEBHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .env("POLARS_CLOUD_WEBHOOK_TLS_CERT", dir.path().join("tls.crt"))
        .env("POLARS_CLOUD_WEBHOOK_TLS_KEY", dir.path().join("tls.key"))
        .env("POLARS_CLOUD_WEBHOOK_REQUEST_TIMEOUT", "2s")
        // Far beyond the bound below: only the body deadline may close these.
        .env("POLARS_CLOUD_WEBHOOK_IDLE_TIMEOUT", "600s")
        .stdin(Stdio::null());
    let mut hook = Proc::spawn(&mut c);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    let connect = |alpn: &[u8]| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(BOUND))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from(SVC).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        std::io::Result::Ok(tls)
    };
    let get = |path: &str| -> Option<String> {
        let mut s = connect(b"http/1.1").ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {SVC}\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    wait_for(BOUND, || {
        assert!(hook.alive(), "{}", hook.stderr());
        get("/healthz").filter(|a| a.starts_with("HTTP/1.1 200"))
    });
    let size = 3 * 1024 * 1024;
    // Over HTTP/2 too: a stream whose body stalls after the first window.
    let mut stalled: Vec<_> = (0..5)
        .map(|_| {
            let mut s = connect(b"h2").unwrap();
            s.write_all(&h2_stalled_post(size)).unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    stalled.extend((0..30).map(|_| {
            let mut s = connect(b"http/1.1").unwrap();
            write!(
                s,
                "POST /mutate HTTP/1.1\r\nhost: {SVC}\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
            )
            .unwrap();
            // Most of the body; a writer the server stops reading blocks, and gives up.
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..(size / chunk.len()) - 1 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = s.flush();
            s
        }));
    // Each is closed by the server: its read ends (an answer and EOF, or a reset)
    // instead of blocking until the bound.
    for mut s in stalled {
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "a stalled connection is still open after {BOUND:?}"
            ),
        }
    }
    // And the open-connections gauge is back down (the metrics request itself is one).
    let metrics = wait_for(BOUND, || {
        get("/metrics").filter(|m| m.contains("polars_cloud_auth_webhook_connections 1\n"))
    });
    assert!(
        metrics.contains("polars_cloud_auth_webhook_request_body_timeouts_total"),
        "{metrics}"
    );
    assert!(hook.alive());
}

/// An HTTP/2 connection's first bytes: the preface, empty settings, and a POST /mutate
/// stream that declares `size` bytes and sends 60 KiB of them (within the first window),
/// then nothing more. HPACK literals without indexing, so no table is needed.
fn h2_stalled_post(size: usize) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut block = Vec::new();
    let size = size.to_string();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/mutate"),
        (":authority", SVC),
        ("content-type", "application/json"),
        ("content-length", size.as_str()),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    frame(&mut out, 1, 0x4, 1, &block);
    for _ in 0..4 {
        frame(&mut out, 0, 0, 1, &[b' '; 15 * 1024]);
    }
    out
}

/// A leaf for `names` signed with the relay CA's key in `state` (as anyone holding the
/// key could), written to `dir`: (cert, key).
fn leaf_from_relay_ca(
    state: &Path,
    dir: &Path,
    label: &str,
    names: &[rcgen::SanType],
) -> (PathBuf, PathBuf) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(state.join("ca.key")).unwrap()).unwrap();
    // The CA's subject, as the relay writes it (rcgen here reads no certificates).
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("polars-cloud-auth relay CA ({AUTH_HOST})"),
    );
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names.to_vec();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("leaf {label}"));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{label}.pem")),
        dir.join(format!("{label}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// `openssl verify` of `cert` against the relay's CA alone.
fn openssl_verifies(state: &Path, cert: &Path) -> (bool, String) {
    let out = run(scrubbed("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(state.join("ca.pem"))
        .arg(cert));
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Item 3: the relay CA's name constraint limited DNS names only; a leaf it signed for
/// `IP:127.0.0.1`, `IP:10.1.2.3` or `email:a@b.c` verified, and curl and Python accepted
/// it for `https://127.0.0.1`. Every address and e-mail is now outside the constraint.
#[test]
fn the_relay_ca_signs_for_no_address_and_no_mailbox() {
    use rcgen::SanType;
    let dir = tempfile::tempdir().unwrap();
    let exec = Exec::start(dir.path(), dir.path(), |c| c);
    let state = exec.config_dir.parent().unwrap().join("state");
    let ip = |s: &str| SanType::IpAddress(s.parse().unwrap());
    let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
    let email = |s: &str| SanType::Rfc822Name(s.try_into().unwrap());
    // The control: the relay's own name verifies.
    let (ours, ours_key) = leaf_from_relay_ca(&state, dir.path(), "ours", &[dns(AUTH_HOST)]);
    let (ok, why) = openssl_verifies(&state, &ours);
    assert!(ok, "{why}");
    let refused = [
        ("ip4-loopback", vec![ip("127.0.0.1")]),
        ("ip4-private", vec![ip("10.1.2.3")]),
        ("ip6-loopback", vec![ip("::1")]),
        ("email", vec![email("a@b.c")]),
        ("dns-other", vec![dns("example.com")]),
        ("ours-and-ip", vec![dns(AUTH_HOST), ip("127.0.0.1")]),
    ];
    for (label, names) in &refused {
        let (cert, _) = leaf_from_relay_ca(&state, dir.path(), label, names);
        let (ok, why) = openssl_verifies(&state, &cert);
        assert!(!ok, "{label} verified: {why}");
        assert!(why.contains("violation"), "{label}: {why}");
    }

    // Real TLS clients against a server with such a leaf at https://127.0.0.1.
    let (cert, key) = leaf_from_relay_ca(&state, dir.path(), "ip-serving", &[ip("127.0.0.1")]);
    let serve = |cert: &Path, key: &Path| {
        let port = free_port();
        let server = Proc::spawn(
            scrubbed("openssl")
                .args(["s_server", "-quiet", "-www", "-accept"])
                .arg(port.to_string())
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .stdin(Stdio::piped()),
        );
        wait_for(BOUND, || TcpStream::connect(("127.0.0.1", port)).ok());
        (server, port)
    };
    let ca = state.join("ca.pem");
    let (_server, port) = serve(&cert, &key);
    let out = run(scrubbed("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg(format!("https://127.0.0.1:{port}/")));
    assert_eq!(out.status.code(), Some(60), "curl: {}", text(&out.stderr));
    let python = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        try:\n\
        \x20   ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=20), server_hostname='127.0.0.1')\n\
        \x20   print('accepted')\n\
        except ssl.SSLCertVerificationError as e:\n\
        \x20   print('refused', e.verify_message)\n";
    let out = run(scrubbed("python3")
        .args(["-c", python])
        .arg(&ca)
        .arg(port.to_string()));
    let said = text(&out.stdout);
    assert!(
        said.starts_with("refused"),
        "python: {said} {}",
        text(&out.stderr)
    );
    // The control: the same clients accept the relay's own name.
    let (_server, port) = serve(&ours, &ours_key);
    let out = run(scrubbed("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{AUTH_HOST}:{port}:127.0.0.1"))
        .arg(format!("https://{AUTH_HOST}:{port}/")));
    assert_eq!(out.status.code(), Some(0), "curl: {}", text(&out.stderr));
}

/// Items 1 and 2, at the root: exec's CONNECT proxy asked nothing of its callers, so any
/// local user reached the relay (and could open tunnels that hold our descriptors). It
/// now serves only connections whose other end runs as exec's own user. Needs root (to
/// be another user); skipped otherwise.
#[cfg(target_os = "linux")]
#[test]
fn another_user_cannot_use_execs_proxy() {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    if !root {
        eprintln!("skipped: needs root, to connect as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = Exec::start(dir.path(), dir.path(), |c| c);
    let curl = |as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = scrubbed("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            scrubbed("curl")
        };
        c.args(["--silent", "--show-error", "--max-time", "20", "--insecure"])
            .arg("--proxy")
            .arg(format!("http://{}", exec.proxy))
            .arg(format!("https://{AUTH_HOST}/"));
        run(&mut c)
    };
    // Our own user reaches the relay (its answer to a GET is a 404 with an OAuth error).
    let ours = curl(false);
    assert_eq!(ours.status.code(), Some(0), "{}", text(&ours.stderr));
    assert!(text(&ours.stdout).contains("invalid_request"));
    // Another user gets no tunnel.
    let theirs = curl(true);
    assert_ne!(theirs.status.code(), Some(0), "{}", text(&theirs.stdout));
    assert!(!text(&theirs.stdout).contains("invalid_request"));
    // And exec still serves its command.
    assert_eq!(exec.refresh().unwrap(), 200);
}

/// A kept-alive connection to the relay waited idle for our server's header deadline
/// (10 s), and a client refreshing every 10 s (20 s tokens) now and then reused it just as
/// it closed: a reset instead of its token (seen once in 2,700 calls of the client
/// matrix). Every answer now closes its connection, so a client never reuses one.
#[test]
fn every_relay_answer_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Exec::start(dir.path(), dir.path(), |c| c);
    let form = format!(
        "client_id=PolarsCloud&grant_type=refresh_token&refresh_token={}",
        exec.handle()
    );
    // As the client sends it: HTTP/1.1, keep-alive by default.
    let mut s = exec.connect().unwrap();
    write!(
        s,
        "POST {TOKEN_PATH} HTTP/1.1\r\nhost: {AUTH_HOST}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    s.flush().unwrap();
    // The answer, and then the end of the connection.
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => panic!("{e}"),
    }
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}
