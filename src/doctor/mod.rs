//! `doctor`'s pure core: each link of the path from the credentials to the app's client
//! becomes a [`Finding`] (ok, warn, fail or skip, what was seen, what to fix), decided by
//! the functions here from facts that `modes::doctor` gathers; rendering the report as a
//! table or JSON is pure too. No finding ever holds a secret or a token: the facts
//! handed in are lengths, times, paths, modes and versions.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::relay::clients::{Family, Version};

/// The newest polars-cloud release whose behaviour was measured (docs/polars-cloud-client.md
/// §8); a newer one gets the best-known default family, `config-toml`.
pub const NEWEST_KNOWN: Version = Version(0, 12, 0);

/// A clock this far from the identity provider's is worth a warning...
pub const SKEW_WARN: Duration = Duration::from_secs(5);
/// ...and this far breaks things: the app's client sees fresh tokens as expired or
/// renews late, by as much as the default readiness margin.
pub const SKEW_FAIL: Duration = Duration::from_secs(30);

/// The links, in the order a token travels.
pub mod link {
    pub const CREDENTIALS: &str = "credentials";
    pub const IDP: &str = "idp";
    pub const BROKER: &str = "broker";
    pub const CLOCK: &str = "clock";
    pub const GRANT: &str = "grant";
    pub const TOKEN_FILE: &str = "token-file";
    pub const APP_ACCESS: &str = "app-access";
    pub const RELAY: &str = "relay";
    pub const HANDLE: &str = "handle";
    pub const CLIENT: &str = "client";
}

/// How one link holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works now, but something is off.
    Warn,
    /// Broken: the app gets no token, or will lose it.
    Fail,
    /// Not checked here (not configured, or an earlier link is broken).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub link: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(link: &'static str, detail: impl Into<String>) -> Self {
        Self::new(link, Status::Ok, detail, None)
    }

    pub fn skip(link: &'static str, detail: impl Into<String>) -> Self {
        Self::new(link, Status::Skip, detail, None)
    }

    pub fn warn(link: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(link, Status::Warn, detail, Some(fix.into()))
    }

    pub fn fail(link: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(link, Status::Fail, detail, Some(fix.into()))
    }

    fn new(
        link: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            link,
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// Where doctor runs, which decides what it can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// Our container in a pod (credentials or the relay configured by the injector): it
    /// sees the shared volumes and inspects them on the app containers' behalf.
    OurContainer,
    /// A workstation or CI job: `login`'s stores, or service-account variables.
    Laptop,
}

impl Place {
    fn describe(self) -> &'static str {
        match self {
            Self::OurContainer => {
                "in our container, looking at the shared volumes on the app's behalf"
            }
            Self::Laptop => "on this machine (login's stores or service-account variables)",
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub place: Place,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any link is broken (the exit code says so).
    pub fn broken(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// The report for people: one row per link, the fix under it.
    pub fn table(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.link.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        let _ = writeln!(out, "polars-cloud-auth doctor: {}", self.place.describe());
        let _ = writeln!(out);
        let _ = writeln!(out, "{:width$}  {:8}DETAIL", "LINK", "STATUS");
        for f in &self.findings {
            let _ = writeln!(out, "{:width$}  {:8}{}", f.link, f.status.label(), f.detail);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "{:width$}  {:8}fix: {fix}", "", "");
            }
        }
        let broken = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .count();
        let warned = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Warn)
            .count();
        let _ = writeln!(out);
        let _ = match (broken, warned) {
            (0, 0) => writeln!(out, "every link holds"),
            (0, w) => writeln!(out, "every link holds; {w} warning(s)"),
            (b, w) => writeln!(
                out,
                "{b} link(s) broken, {w} warning(s): fix the first FAIL first"
            ),
        };
        out
    }

    /// The report for scripts: `{"place", "ok", "findings": [{link, status, detail, fix}]}`.
    pub fn json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["ok"] = serde_json::Value::Bool(!self.broken());
        let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Signed seconds `server` is ahead of `local` (negative: behind).
fn signed_secs(server: SystemTime, local: SystemTime) -> i64 {
    match server.duration_since(local) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The clock against the identity provider's `Date` header (1-second resolution, so a
/// second of difference is noise). `local` is when the answer arrived.
pub fn clock(date: Option<&str>, local: SystemTime, peer: &str) -> Finding {
    let Some(date) = date else {
        return Finding::skip(link::CLOCK, format!("{peer} sent no Date header"));
    };
    let Ok(server) = httpdate::parse_http_date(date.trim()) else {
        return Finding::skip(
            link::CLOCK,
            format!("{peer}'s Date header is not an HTTP date"),
        );
    };
    let skew = signed_secs(server, local);
    let size = Duration::from_secs(skew.unsigned_abs());
    let detail = match skew {
        0 => format!("this clock agrees with {peer}'s"),
        s if s > 0 => format!("this clock is {s} s behind {peer}'s"),
        s => format!("this clock is {} s ahead of {peer}'s", -s),
    };
    let fix = "sync this machine's clock (NTP; in a pod, the node's clock): tokens look expired or not yet valid by as much, and renewals come late";
    if size >= SKEW_FAIL {
        Finding::fail(link::CLOCK, detail, fix)
    } else if size >= SKEW_WARN {
        Finding::warn(link::CLOCK, detail, fix)
    } else {
        Finding::ok(link::CLOCK, detail)
    }
}

/// What the token file holds, as far as doctor could read it.
pub enum TokenFacts {
    Missing,
    Unreadable(String),
    NotAToken,
    /// Its `exp` and life (`exp - iat`, when it says).
    Token {
        expires_at: SystemTime,
        life: Duration,
    },
}

/// Whether the token file is there and fresh. `margin`: what `/readyz` asks (given, or
/// derived from the life as [`crate::renew::margin`] does).
pub fn token_file(
    path: &Path,
    facts: TokenFacts,
    now: SystemTime,
    margin: Option<Duration>,
    writer: &str,
) -> Finding {
    let p = path.display();
    match facts {
        TokenFacts::Missing => Finding::fail(
            link::TOKEN_FILE,
            format!("no token file at {p}"),
            format!("{writer} has not written one: see the grant link above and its log"),
        ),
        TokenFacts::Unreadable(why) => Finding::fail(
            link::TOKEN_FILE,
            format!("cannot read {p}: {why}"),
            "run doctor as the user that writes the file (in a pod: our container)",
        ),
        TokenFacts::NotAToken => Finding::fail(
            link::TOKEN_FILE,
            format!("{p} does not hold a JWT with an exp claim"),
            format!("something else writes this path; only {writer} should"),
        ),
        TokenFacts::Token { expires_at, life } => {
            let left = signed_secs(expires_at, now);
            if left <= 0 {
                return Finding::fail(
                    link::TOKEN_FILE,
                    format!("the token in {p} expired {} s ago", -left),
                    format!(
                        "renewals stopped: is {writer} running? see the grant link and its log"
                    ),
                );
            }
            let margin = crate::renew::margin(margin, life);
            let detail = format!("{p}: valid {left} s more (of a {} s life)", life.as_secs());
            if Duration::from_secs(left as u64) < margin {
                Finding::warn(
                    link::TOKEN_FILE,
                    detail,
                    format!(
                        "less than the {} s margin: renewals are late or failing; see {writer}'s log",
                        margin.as_secs()
                    ),
                )
            } else {
                Finding::ok(link::TOKEN_FILE, detail)
            }
        }
    }
}

/// Owner, group and permission bits of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Who the app runs as, when known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct App {
    pub uid: Option<u32>,
    /// Its primary and supplemental groups (a pod's fsGroup is added by the volume's
    /// set-group-id directory, see [`usable`]).
    pub gids: Vec<u32>,
}

/// Whether `uid` with `gids` has `bits` (4 read, 2 write, 1 search) on `m`, as the kernel
/// decides (root passes).
fn allows(uid: u32, gids: &[u32], m: &Meta, bits: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let granted = if m.uid == uid {
        m.mode >> 6
    } else if gids.contains(&m.gid) {
        m.mode >> 3
    } else {
        m.mode
    };
    granted & bits == bits
}

/// What the app does with a file we give it, and so the access it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads it (the token file, the CA bundle): read on the file, search on its directory.
    Read,
    /// Reads it and, after a refresh through the relay, writes it back through a
    /// temporary file beside it (0.12's `config.toml`): write on the directory too.
    Replace,
    /// Reads it and writes it back in place (0.7 to 0.11's token files, opened with
    /// `O_TRUNC`): write on the file too.
    WriteInPlace,
}

impl Access {
    /// The bits needed on the file and on its directory.
    fn bits(self) -> (u32, u32) {
        match self {
            Access::Read => (4, 1),
            Access::Replace => (4, 3),
            Access::WriteInPlace => (6, 1),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Replace => "replace (write its directory)",
            Access::WriteInPlace => "write back",
        }
    }
}

fn groups(gids: &[u32]) -> String {
    if gids.is_empty() {
        return String::new();
    }
    let list: Vec<String> = gids.iter().map(u32::to_string).collect();
    format!(" (groups {})", list.join(","))
}

/// One file the app uses: its path, its and its directory's owner and mode, and what the
/// app does with it.
pub type Used<'a> = (&'a Path, Meta, Meta, Access);

/// Whether the app may use each file as it does: decided for the app's uid when known,
/// else from the bits that every container of the pod has (others; or the group of an
/// fsGroup volume, whose directory carries the set-group-id bit).
pub fn usable(app: &App, files: &[Used]) -> Finding {
    if files.is_empty() {
        return Finding::skip(link::APP_ACCESS, "no file to check");
    }
    let names = files
        .iter()
        .map(|(p, ..)| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let hint = "give the pod an fsGroup (the injector then writes files 0640 for that group), or let the injector write 0644 (no fsGroup); POLARS_CLOUD_TOKEN_FILE_MODE of our container sets the mode, and our container gives the files the app writes back write access for their readers";
    match app.uid {
        Some(uid) => {
            for (path, file, dir, access) in files {
                let mut gids = app.gids.clone();
                // A pod's fsGroup: the volume's group, which every container has.
                if dir.mode & 0o2000 != 0 {
                    gids.push(dir.gid);
                }
                let (on_file, on_dir) = access.bits();
                if !allows(uid, &gids, dir, on_dir) || !allows(uid, &gids, file, on_file) {
                    return Finding::fail(
                        link::APP_ACCESS,
                        format!(
                            "uid {uid}{} cannot {} {} (owner {}:{}, mode {:04o}; directory {}:{}, mode {:04o})",
                            groups(&app.gids),
                            access.verb(),
                            path.display(),
                            file.uid,
                            file.gid,
                            file.mode & 0o7777,
                            dir.uid,
                            dir.gid,
                            dir.mode & 0o7777
                        ),
                        hint,
                    );
                }
            }
            Finding::ok(link::APP_ACCESS, format!("uid {uid} can use {names}"))
        }
        None => {
            // The bits of a class (others: shift 0; group: shift 3) on every file and
            // its directory.
            let granted = |shift: u32| {
                files.iter().all(|(_, f, d, a)| {
                    let (on_file, on_dir) = a.bits();
                    (f.mode >> shift) & on_file == on_file && (d.mode >> shift) & on_dir == on_dir
                })
            };
            if granted(0) {
                return Finding::ok(link::APP_ACCESS, format!("any uid can use {names}"));
            }
            let fs_group = files
                .iter()
                .all(|(_, f, d, _)| d.mode & 0o2000 != 0 && f.gid == d.gid);
            if fs_group && granted(3) {
                let gid = files[0].2.gid;
                return Finding::ok(
                    link::APP_ACCESS,
                    format!("every container of the pod (fsGroup {gid}) can use {names}"),
                );
            }
            Finding::warn(
                link::APP_ACCESS,
                format!(
                    "{names}: not usable by every uid as the app uses them, and no fsGroup volume"
                ),
                "pass --app-uid (and --app-gid) to check the app's user",
            )
        }
    }
}

/// Whether this user could open each file (`None`: it could), for an app that runs as
/// this user (a workstation).
pub fn readable_here(opened: &[(&Path, Option<String>)]) -> Finding {
    match opened.iter().find_map(|(p, e)| e.as_ref().map(|e| (p, e))) {
        Some((path, e)) => Finding::fail(
            link::APP_ACCESS,
            format!("this user cannot read {}: {e}", path.display()),
            "run the app as the user that wrote the file, or give the file a mode it can read (--file-mode)",
        ),
        None => Finding::ok(
            link::APP_ACCESS,
            format!(
                "this user can read {}",
                opened
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// How the app is given its token, which decides the client families served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// config.toml through the relay plus the legacy files (pod `native`/`classic`,
    /// `exec`, the action's `long-running`).
    Relay,
    /// The bare token file only (a pod with `polars.cloud/relay: "false"`).
    TokenFileOnly,
    /// A workstation: `login`'s stores, or `exec`.
    Laptop,
}

/// Where the client's version came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The client versions the relay saw refreshing (`/metrics`), and whether some client
    /// broke off the handshake (0.10 and older).
    Relay {
        versions: Vec<Version>,
        untrusting: bool,
    },
    /// Found in (or told by) this source: `--client-version`, a Python's dist-info.
    Told { version: Version, from: String },
    /// Not known, and why.
    Unknown(String),
}

/// Which client version the app has, and whether its delivery serves it.
pub fn client(seen: Seen, delivery: Delivery) -> Finding {
    let (versions, from) = match seen {
        Seen::Told { version, from } => (vec![version], from),
        Seen::Relay {
            versions,
            untrusting,
        } => {
            let mut versions = versions;
            if versions.is_empty() && untrusting {
                // The relay only knows "0.10 or older": the oldest of them decides.
                versions.push(Version(0, 7, 0));
            }
            if versions.is_empty() {
                return Finding::skip(
                    link::CLIENT,
                    "no client has refreshed through the relay yet (0.12 refreshes near its first token's end; 0.7 to 0.11 use the legacy files and show only if they try)",
                );
            }
            let from = if untrusting {
                "the relay's /metrics (a client refused its CA: 0.10 or older)"
            } else {
                "the relay's /metrics"
            };
            (versions, from.to_string())
        }
        Seen::Unknown(why) => {
            return match delivery {
                Delivery::TokenFileOnly => Finding::warn(
                    link::CLIENT,
                    format!(
                        "the relay is off, so the app gets the bare token file only; client version unknown, {why}"
                    ),
                    "no polars-cloud release reads the bare token file: unless the app reads it itself, turn the relay on (drop the annotation polars.cloud/relay: \"false\")",
                ),
                _ => Finding::skip(link::CLIENT, format!("client version unknown: {why}")),
            };
        }
    };
    let mut worst: Option<Finding> = None;
    for v in versions {
        let f = one_client(v, &from, delivery);
        let rank = |s: Status| match s {
            Status::Fail => 3,
            Status::Warn => 2,
            Status::Ok => 1,
            Status::Skip => 0,
        };
        if worst
            .as_ref()
            .is_none_or(|w| rank(f.status) > rank(w.status))
        {
            worst = Some(f);
        }
    }
    worst.unwrap_or_else(|| Finding::skip(link::CLIENT, "no client version"))
}

fn one_client(v: Version, from: &str, delivery: Delivery) -> Finding {
    let family = Family::of(v);
    let newer = if v > NEWEST_KNOWN {
        format!(
            ", newer than {NEWEST_KNOWN}, the newest measured: treated as {}",
            family.name()
        )
    } else {
        String::new()
    };
    let about = format!("polars-cloud {v} ({}{newer}; from {from})", family.name());
    match delivery {
        Delivery::TokenFileOnly => Finding::fail(
            link::CLIENT,
            format!(
                "{about}: the relay is off, and no polars-cloud release reads the bare token file"
            ),
            "turn the relay on (drop the annotation polars.cloud/relay: \"false\"); it serves 0.7 and later",
        ),
        Delivery::Relay | Delivery::Laptop if family.served_by_relay_modes() => Finding::ok(
            link::CLIENT,
            format!("{about}: served; it {}", family.note()),
        ),
        Delivery::Relay | Delivery::Laptop => Finding::fail(
            link::CLIENT,
            format!("{about}: not served; it {}", family.note()),
            "upgrade polars-cloud to 0.7 or later; until then `polars-cloud-auth exec --env-token` gives it one token life",
        ),
    }
}

/// The `polars_cloud_auth_client_info` samples of a `/metrics` text: the versions seen,
/// and whether a client refused the relay's CA (`version="<=0.10"`).
pub fn client_info(metrics: &str) -> (Vec<Version>, bool) {
    let mut versions = Vec::new();
    let mut untrusting = false;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("polars_cloud_auth_client_info{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        if value.trim() != "1" {
            continue;
        }
        let version = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("version=\""))
            .and_then(|v| v.strip_suffix('"'));
        match version {
            Some("<=0.10") => untrusting = true,
            Some(v) => versions.extend(Version::parse(v)),
            None => {}
        }
    }
    (versions, untrusting)
}

/// How a request failed, as far as the message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connect,
    Tls,
    Other,
}

/// Sorts a request error by its root cause's text (rustls and the resolver say what
/// happened; the kinds reqwest tells apart do not separate TLS from a refused connection).
pub fn failure_kind(is_timeout: bool, is_connect: bool, cause: &str) -> Failure {
    let c = cause.to_ascii_lowercase();
    if is_timeout {
        Failure::Timeout
    } else if c.contains("certificate") || c.contains("unknownissuer") || c.contains("tls") {
        Failure::Tls
    } else if is_connect {
        Failure::Connect
    } else {
        Failure::Other
    }
}

/// Whether the identity provider (or broker) answered at all.
pub fn reachable(
    which: &'static str,
    url: &str,
    answer: Result<u16, (Failure, String)>,
    proxy: Option<&str>,
) -> Finding {
    let route = match proxy {
        Some(p) => format!("through the proxy {p}"),
        None => "directly (no proxy)".to_string(),
    };
    let peer = if which == link::BROKER {
        "the broker"
    } else {
        "the identity provider"
    };
    match answer {
        Ok(status) => Finding::ok(which, format!("{url} answered HTTP {status}, {route}")),
        Err((kind, reason)) => {
            let fix = match kind {
                Failure::Tls => format!(
                    "{peer}'s certificate does not verify against the system roots and the extra CAs: set POLARS_CLOUD_CA_FILE (--ca-file) to the CA that signed it{}",
                    if which == link::BROKER {
                        " (for the broker the injector passes POLARS_CLOUD_CA_PEM: re-inject the pod after the broker's CA changed)"
                    } else {
                        ""
                    }
                ),
                Failure::Timeout => format!(
                    "no answer in time: check the network path, a NetworkPolicy or firewall, and HTTPS_PROXY/NO_PROXY (now: {route})"
                ),
                Failure::Connect => format!(
                    "check the URL (POLARS_CLOUD_ISSUER, POLARS_CLOUD_DOMAIN, POLARS_CLOUD_TOKEN_URL), DNS, egress rules, and HTTPS_PROXY/NO_PROXY (now: {route})"
                ),
                Failure::Other => {
                    "see the reason; check the URL and the proxy settings".to_string()
                }
            };
            Finding::fail(which, format!("could not reach {url}: {reason}"), fix)
        }
    }
}

/// A proxy URL without its user and password, for the report.
pub fn redact_proxy(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "(an unparsable HTTPS_PROXY)".to_string(),
    }
}

#[cfg(test)]
mod tests;
