//! `probe`: an exec probe. Exit 0 when the token file holds a token valid long enough.
//!
//! With `--wait` it is the injected sidecar's postStart hook: the kubelet starts the next
//! container only when the hook returns, so returning the moment the token is on disk
//! gates the app on the token itself, with no probe period in between.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use url::Url;

use crate::cli::ProbeArgs;
use crate::sink::TokenFile;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing or unreadable or holds no token.
    #[error(transparent)]
    File(#[from] crate::sink::file::Error),
    /// The token expires too soon.
    #[error("the token in '{path}' expires in {left}s, less than the required {need}s")]
    TooShort { path: String, left: u64, need: u64 },
}

/// How often `--wait` looks at the token file (a stat and a small read) and asks the
/// sidecar's `/readyz` on loopback: the wait ends within this of the sidecar being ready.
const POLL: Duration = Duration::from_millis(10);

/// `polars-cloud-auth probe`: a failed check is exit 1 with the reason on stderr.
pub fn command(args: ProbeArgs) -> anyhow::Result<u8> {
    let token_file = args.file.pod_token_file();
    let min_valid = args.min_valid.map(|d| d.0);
    let result = match args.wait {
        None => run(&token_file, min_valid).map_err(|e| format!("{:#}", anyhow::Error::from(e))),
        Some(wait) => {
            let ready = args.ready_url.map(ReadyUrl::parse).transpose()?;
            wait_for(&token_file, min_valid, wait.0, ready.as_ref())
        }
    };
    match result {
        Ok(left) => {
            println!("ok: token valid for {}s", left.as_secs());
            Ok(crate::exit::OK)
        }
        Err(e) => {
            eprintln!("not ready: {e}");
            Ok(crate::exit::FAILURE)
        }
    }
}

/// Waits until the file holds a token valid long enough and, with `ready`, the sidecar
/// says it is ready (its own token, the relay up, the credentials not rejected), or until
/// `wait` has passed: then the error names the last reason.
fn wait_for(
    file: &TokenFile,
    min_valid: Option<Duration>,
    wait: Duration,
    ready: Option<&ReadyUrl>,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let why = match run(file, min_valid) {
            Ok(left) => match ready.map(ReadyUrl::get) {
                None => return Ok(left),
                Some(Ok(())) => return Ok(left),
                Some(Err(said)) => format!("the sidecar's /readyz says: {said}"),
            },
            Err(e) => {
                let mut why = format!("{:#}", anyhow::Error::from(e));
                if let Some(Err(said)) = ready.map(ReadyUrl::get) {
                    why.push_str(&format!("; the sidecar's /readyz says: {said}"));
                }
                why
            }
        };
        if start.elapsed() >= wait {
            return Err(format!(
                "no valid token after {}: {why}",
                humantime::format_duration(wait)
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The sidecar's `/readyz`, on loopback: asked with a minimal HTTP/1.0 GET (a hook must
/// start and finish fast; no TLS, no proxy, no redirects).
struct ReadyUrl {
    addr: String,
    path: String,
}

impl ReadyUrl {
    fn parse(url: Url) -> anyhow::Result<Self> {
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() != "http" || !loopback {
            anyhow::bail!(
                "--ready-url must be a plain http URL on loopback (the sidecar's /readyz in the same pod), not '{url}'"
            );
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => unreachable!("checked above"),
        };
        Ok(Self {
            addr: format!("{host}:{}", url.port_or_known_default().unwrap_or(80)),
            path: url.path().to_string(),
        })
    }

    /// Ok for 200; else the status and body in one line, or why there was no answer.
    fn get(&self) -> Result<(), String> {
        let ask = || -> std::io::Result<Result<(), String>> {
            let addr = self.addr.parse().or_else(|_| {
                std::net::ToSocketAddrs::to_socket_addrs(&self.addr)?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))
            })?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            // One write: a server may answer (and close) on the first segment it reads.
            let request = format!("GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", self.path, self.addr);
            s.write_all(request.as_bytes())?;
            let mut reply = Vec::new();
            s.take(4096).read_to_end(&mut reply)?;
            let reply = String::from_utf8_lossy(&reply);
            let status = reply.lines().next().unwrap_or_default().trim().to_string();
            let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
            Ok((status.split_whitespace().nth(1) == Some("200"))
                .then_some(())
                .ok_or(format!("{status}: {body}")))
        };
        ask().unwrap_or_else(|e| Err(format!("no answer ({e})")))
    }
}

pub fn run(file: &TokenFile, min_valid: Option<Duration>) -> Result<Duration, Error> {
    let token = file.read()?;
    let now = SystemTime::now();
    let min_valid = crate::renew::margin(min_valid, token.lifetime());
    if token.valid_for(now, min_valid) {
        Ok(token.remaining(now))
    } else {
        Err(Error::TooShort {
            path: file.path().display().to_string(),
            left: token.remaining(now).as_secs(),
            need: min_valid.as_secs(),
        })
    }
}
