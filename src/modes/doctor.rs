//! `doctor`: walks the path from the credentials to the app's client, link by link, and
//! says what holds and what to fix. This module gathers the facts (files, the identity
//! provider through the project's HTTP client, the relay, `/metrics`, a Python's
//! dist-info); `crate::doctor` decides and renders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;

use crate::cli::DoctorArgs;
use crate::config::IdpArgs;
use crate::doctor::{
    self, Access, App, Delivery, Failure, Finding, Meta, Place, Report, Seen, TokenFacts, link,
};
use crate::relay::clients::Version;
use crate::relay::handle::HandleKey;
use crate::sink::TokenFile;
use crate::sink::client_config::ClientConfig;
use crate::source::{BROKER_REFUSAL, FetchError};
use crate::vars;

/// Everything doctor looks at, resolved from the flags, the environment and the config
/// file as the other modes resolve them.
struct Plan {
    place: Place,
    idp: IdpArgs,
    broker: bool,
    token_file: TokenFile,
    /// The token file was named (flag, variable, config) or exists at the pod's path.
    token_file_named: bool,
    relay: Option<(crate::relay::Settings, SocketAddr)>,
    metrics: SocketAddr,
    ready_margin: Option<Duration>,
    app: App,
    python: Option<PathBuf>,
    client_version: Option<Version>,
    grant: bool,
}

/// `polars-cloud-auth doctor`.
pub fn command(args: DoctorArgs) -> anyhow::Result<u8> {
    let (idp, file_args, relay_args, serve) = (args.idp, args.file, args.relay, args.serve);
    let token_file = file_args.pod_token_file();
    let place = if idp.credentials_dir.is_some()
        || idp.client_assertion_file.is_some()
        || !relay_args.client_configs.is_empty()
    {
        Place::OurContainer
    } else {
        Place::Laptop
    };
    let listen = serve
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8471)));
    let plan = Plan {
        place,
        // What the injector gives a broker-backed container (inject::broker::plan).
        broker: idp.client_assertion_file.is_some()
            && idp.token_url.is_some()
            && idp.ca_pem.is_some(),
        token_file_named: file_args.path.is_some() || token_file.path().exists(),
        relay: relay_args
            .settings(&token_file)
            .map(|s| (s, loopback(relay_args.listen()))),
        token_file,
        metrics: loopback(listen),
        ready_margin: serve.ready_margin.map(|d| d.0),
        app: App {
            uid: args.app_uid,
            gids: args.app_gid,
        },
        python: args.python,
        client_version: args.client_version,
        grant: !args.no_grant,
        idp,
    };
    let report = super::current_thread(async move { Ok(walk(&plan).await) })?;
    if args.json {
        print!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.broken() {
        crate::exit::FAILURE
    } else {
        crate::exit::OK
    })
}

/// A listener's address as a client on this host reaches it.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

async fn walk(plan: &Plan) -> Report {
    let mut findings = Vec::new();
    let credentials = credentials(plan);
    let usable = credentials.status != doctor::Status::Fail;
    findings.push(credentials);
    let (reach, clock) = reach(plan).await;
    let reached = reach.status == doctor::Status::Ok;
    findings.push(reach);
    findings.push(clock);
    findings.push(if !plan.grant {
        Finding::skip(link::GRANT, "--no-grant: no sign-in tried")
    } else if !usable || !reached {
        Finding::skip(link::GRANT, "not tried: an earlier link is broken")
    } else if plan.place == Place::Laptop && no_service_account(&plan.idp) {
        Finding::skip(
            link::GRANT,
            "no service-account credentials to sign in with",
        )
    } else {
        grant(plan).await
    });
    findings.extend(token_files(plan));
    findings.extend(relay(plan).await);
    findings.push(client(plan).await);
    Report {
        place: plan.place,
        findings,
    }
}

fn no_service_account(idp: &IdpArgs) -> bool {
    idp.client_id.is_none()
        && idp.client_id_file.is_none()
        && idp.credentials_dir.is_none()
        && idp.client_assertion_file.is_none()
        && idp.client_key_file.is_none()
        && std::env::var_os(vars::CLIENT_SECRET).is_none()
}

/// The credentials are present, readable and well-formed; nothing of them is shown but
/// where they come from and the client id.
fn credentials(plan: &Plan) -> Finding {
    let idp = &plan.idp;
    if let Err(e) = idp.grant() {
        return Finding::fail(
            link::CREDENTIALS,
            e.to_string(),
            "fix the grant settings named",
        );
    }
    if let Some(path) = idp.client_assertion_file.as_deref() {
        return assertion_file(path, plan.broker);
    }
    if let Some(path) = idp.client_key_file.as_deref() {
        return match std::fs::read_to_string(path) {
            Ok(t) if t.contains("PRIVATE KEY-----") => Finding::ok(
                link::CREDENTIALS,
                format!("a PEM private key in {} (not shown)", path.display()),
            ),
            Ok(_) => Finding::fail(
                link::CREDENTIALS,
                format!("{} holds no PEM private key", path.display()),
                "point --client-key-file (POLARS_CLOUD_CLIENT_KEY_FILE) at the client's PEM key",
            ),
            Err(e) => Finding::fail(
                link::CREDENTIALS,
                format!("cannot read {}: {e}", path.display()),
                "check the path and that this user may read it",
            ),
        };
    }
    if plan.place == Place::Laptop && no_service_account(idp) {
        return Finding::skip(
            link::CREDENTIALS,
            "no service-account credentials here (a person's machine uses `login`'s session)",
        );
    }
    let creds = idp.credentials();
    match creds.load() {
        Ok((id, _secret)) => Finding::ok(
            link::CREDENTIALS,
            format!(
                "client id {id} from {}; a secret from {} (not shown)",
                source_name(&creds.client_id),
                source_name(&creds.client_secret)
            ),
        ),
        Err(e) => Finding::fail(
            link::CREDENTIALS,
            format!("{:#}", anyhow::Error::from(e)),
            "in a pod: the Secret named by polars.cloud/secret-name must have the keys client_id and client_secret; elsewhere: POLARS_CLOUD_CLIENT_ID and POLARS_CLOUD_CLIENT_SECRET",
        ),
    }
}

fn source_name(v: &crate::source::credentials::Value) -> String {
    use crate::source::credentials::Value;
    match v {
        Value::Inline { from, .. } => (*from).to_string(),
        Value::File(p) => format!("'{}'", p.display()),
        Value::Missing { what } => (*what).to_string(),
    }
}

/// A client assertion file (a projected service-account token): a JWT that has not
/// expired. The kubelet renews it.
fn assertion_file(path: &Path, broker: bool) -> Finding {
    let what = if broker {
        "the pod's service-account token for the broker"
    } else {
        "the client assertion"
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Finding::fail(
                link::CREDENTIALS,
                format!("cannot read {what} at {}: {e}", path.display()),
                "the projected serviceAccountToken volume is missing: re-inject the pod (delete it so that its owner creates it again)",
            );
        }
    };
    match crate::token::claims(text.trim()) {
        Ok(c) => {
            let now = crate::token::unix_secs(SystemTime::now()) as f64;
            match c.exp {
                Some(exp) if exp <= now => Finding::fail(
                    link::CREDENTIALS,
                    format!(
                        "{what} at {} expired {} s ago",
                        path.display(),
                        (now - exp) as u64
                    ),
                    "the kubelet renews projected tokens: check the node's clock and the kubelet",
                ),
                _ => Finding::ok(
                    link::CREDENTIALS,
                    format!(
                        "{what} at {}: a JWT{} (not shown)",
                        path.display(),
                        c.exp
                            .map(|e| format!(", valid {} s more", (e - now) as u64))
                            .unwrap_or_default()
                    ),
                ),
            }
        }
        Err(_) => Finding::fail(
            link::CREDENTIALS,
            format!("{what} at {} is not a JWT", path.display()),
            "point POLARS_CLOUD_CLIENT_ASSERTION_FILE at a JWT",
        ),
    }
}

/// One GET to the identity provider (its discovery document) or the broker (its token
/// URL), through the client every mode uses (same CAs, proxy, timeout): any HTTP answer
/// means reachable; its `Date` gives the clock.
async fn reach(plan: &Plan) -> (Finding, Finding) {
    let which = if plan.broker { link::BROKER } else { link::IDP };
    let endpoints = match plan.idp.endpoints() {
        Ok(e) => e,
        Err(e) => {
            return (
                Finding::fail(which, e.to_string(), "fix the URL named"),
                Finding::skip(link::CLOCK, "no identity provider to compare with"),
            );
        }
    };
    let url = if plan.broker || plan.idp.token_url.is_some() {
        endpoints.token.to_string()
    } else {
        format!("{}/.well-known/openid-configuration", endpoints.issuer)
    };
    let http = match crate::source::http_client(&plan.idp.http()) {
        Ok(h) => h,
        Err(e) => {
            return (
                Finding::fail(
                    which,
                    format!("{:#}", anyhow::Error::from(e)),
                    "fix the CA setting named (--ca-file, POLARS_CLOUD_CA_FILE, POLARS_CLOUD_CA_PEM)",
                ),
                Finding::skip(link::CLOCK, "no identity provider reached"),
            );
        }
    };
    let proxy = proxy_for(&url);
    let peer = if plan.broker {
        "the broker"
    } else {
        "the identity provider"
    };
    match http.get(&url).send().await {
        Ok(reply) => {
            let at = SystemTime::now();
            let date = reply
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .map(str::to_string);
            (
                doctor::reachable(which, &url, Ok(reply.status().as_u16()), proxy.as_deref()),
                doctor::clock(date.as_deref(), at, peer),
            )
        }
        Err(e) => {
            let cause = root_cause(&e);
            let kind = doctor::failure_kind(e.is_timeout(), e.is_connect(), &cause);
            let reason = match kind {
                Failure::Timeout => "timed out".to_string(),
                _ => cause,
            };
            (
                doctor::reachable(which, &url, Err((kind, reason)), proxy.as_deref()),
                Finding::skip(link::CLOCK, format!("{peer} not reached")),
            )
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The proxy the client would use for `url` (without its password), from the variables
/// reqwest reads.
fn proxy_for(url: &str) -> Option<String> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| std::env::var(k.to_ascii_lowercase()).ok())
            .filter(|v| !v.is_empty())
    };
    let proxy = get(vars::HTTPS_PROXY).or_else(|| get("ALL_PROXY"))?;
    let host = url::Url::parse(url).ok()?.host_str()?.to_string();
    let bypass = get("NO_PROXY").is_some_and(|list| {
        list.split(',').map(str::trim).any(|n| {
            n == "*"
                || (!n.is_empty()
                    && (host == n.trim_start_matches('.')
                        || host.ends_with(&format!(".{}", n.trim_start_matches('.')))))
        })
    });
    (!bypass).then(|| doctor::redact_proxy(&proxy))
}

/// One real sign-in (or broker request) with the configured credentials; the session it
/// starts is revoked at once.
async fn grant(plan: &Plan) -> Finding {
    let source = match plan.idp.source() {
        Ok(s) => s,
        Err(e) => {
            return Finding::fail(
                link::GRANT,
                format!("{:#}", anyhow::Error::from(e)),
                "fix the setting named",
            );
        }
    };
    match source.fetch().await {
        Ok(tokens) => {
            let claims = crate::token::claims(tokens.access.secret().expose_secret()).ok();
            let who = claims
                .as_ref()
                .and_then(|c| c.preferred_username.clone().or_else(|| c.azp.clone()))
                .map(|w| format!(" for {w}"))
                .unwrap_or_default();
            if let Some(refresh) = tokens.refresh {
                // Leave no session behind; a failure here changes nothing for the app.
                let _ = source.revoke(&refresh.value, "refresh_token").await;
            }
            let what = if plan.broker {
                "the broker granted this service account a token"
            } else {
                "the identity provider issued a token"
            };
            Finding::ok(
                link::GRANT,
                format!(
                    "{what}{who}, valid {} s (not shown)",
                    tokens.access.lifetime().as_secs()
                ),
            )
        }
        Err(e) => {
            let broker_refused = matches!(&e, FetchError::Rejected { description: Some(d), .. } if d.starts_with(BROKER_REFUSAL));
            let fix = match &e {
                _ if broker_refused => {
                    "do what the broker says above; a service account it does not grant needs a grant for its namespace (and name) in the broker's policy (the chart's broker.grants); the broker's log has each refusal"
                }
                FetchError::Rejected { .. } if plan.broker => {
                    "see the broker's log; the pod's service-account token is refused"
                }
                FetchError::Rejected { .. } => {
                    "the secret or client id is wrong, or the service account was deleted: rotate the Secret (keys client_id, client_secret) or POLARS_CLOUD_CLIENT_SECRET"
                }
                FetchError::Unavailable { .. } => {
                    "the peer is overloaded or down: retry later; our container keeps retrying"
                }
                FetchError::Unreachable { .. } => "see the reachability link above",
                _ => "see the reason",
            };
            let detail = if broker_refused {
                format!("the broker refused: {}", e.refresh_refusal())
            } else if plan.broker {
                format!("the broker: {e}")
            } else {
                e.to_string()
            };
            Finding::fail(link::GRANT, detail, fix)
        }
    }
}

/// The token file (or, on a workstation without one, login's session in config.toml) and
/// who may read the files the app reads.
fn token_files(plan: &Plan) -> Vec<Finding> {
    let now = SystemTime::now();
    let writer = match plan.place {
        Place::OurContainer => "our container (polars-cloud-auth sidecar or init)",
        Place::Laptop => "polars-cloud-auth (login, init or sidecar)",
    };
    if plan.place == Place::Laptop && !plan.token_file_named {
        return vec![laptop_session(now)];
    }
    let path = plan.token_file.path();
    let facts = match plan.token_file.read() {
        Ok(t) => TokenFacts::Token {
            expires_at: t.expires_at(),
            life: t.lifetime(),
        },
        Err(crate::sink::file::Error::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            TokenFacts::Missing
        }
        Err(crate::sink::file::Error::Read { source, .. }) => {
            TokenFacts::Unreadable(source.to_string())
        }
        Err(_) => TokenFacts::NotAToken,
    };
    let file = doctor::token_file(path, facts, now, plan.ready_margin, writer);
    let mut paths = vec![(path.to_path_buf(), Access::Read)];
    if let Some((s, _)) = &plan.relay {
        paths.push((s.ca_bundle.clone(), Access::Read));
        for dir in &s.client_configs {
            let c = ClientConfig::in_dir(dir);
            paths.push((c.path().to_path_buf(), Access::Replace));
            paths.extend(
                c.legacy_paths()
                    .iter()
                    .map(|p| (p.to_path_buf(), Access::WriteInPlace)),
            );
        }
    }
    let metas: Vec<(PathBuf, Meta, Meta, Access)> = paths
        .into_iter()
        .filter_map(|(p, access)| {
            let f = meta(&p)?;
            let d = meta(p.parent()?)?;
            Some((p, f, d, access))
        })
        .collect();
    let refs: Vec<doctor::Used> = metas
        .iter()
        .map(|(p, f, d, a)| (p.as_path(), *f, *d, *a))
        .collect();
    let access = if refs.is_empty() {
        Finding::skip(link::APP_ACCESS, "no file to check")
    } else if plan.place == Place::Laptop && plan.app.uid.is_none() {
        // On a workstation the app runs as this user: try it.
        let opened: Vec<(&Path, Option<String>)> = refs
            .iter()
            .map(|(p, ..)| (*p, std::fs::File::open(p).err().map(|e| e.to_string())))
            .collect();
        doctor::readable_here(&opened)
    } else {
        doctor::usable(&plan.app, &refs)
    };
    vec![file, access]
}

#[cfg(unix)]
fn meta(p: &Path) -> Option<Meta> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Meta {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
    })
}

#[cfg(not(unix))]
fn meta(_: &Path) -> Option<Meta> {
    None
}

/// On a workstation: login's session in config.toml, which the client refreshes itself.
fn laptop_session(now: SystemTime) -> Finding {
    let env = |k: &str| std::env::var_os(k);
    let Ok(dir) = crate::sink::client_config::config_dir(None, &env) else {
        return Finding::skip(link::TOKEN_FILE, "no config directory (HOME unset)");
    };
    let config = ClientConfig::in_dir(&dir);
    match config.read() {
        Ok(Some(auth)) if auth.access_token.is_some() && auth.refresh_token.is_some() => {
            let left = auth
                .access_token
                .as_ref()
                .and_then(|t| crate::token::claims(t.expose_secret()).ok())
                .and_then(|c| c.exp)
                .map(|exp| exp - crate::token::unix_secs(now) as f64);
            Finding::ok(
                link::TOKEN_FILE,
                format!(
                    "login's session in {} ({}); the client refreshes it itself",
                    config.path().display(),
                    match left {
                        Some(l) if l > 0.0 => format!("access token valid {} s more", l as u64),
                        _ => "access token expired, refresh token present".to_string(),
                    }
                ),
            )
        }
        Ok(_) => Finding::skip(
            link::TOKEN_FILE,
            format!(
                "no login session in {} and no token file named",
                config.path().display()
            ),
        ),
        Err(e) => Finding::fail(
            link::TOKEN_FILE,
            format!("{:#}", anyhow::Error::from(e)),
            "run `polars-cloud-auth logout` and `login` again",
        ),
    }
}

/// The relay: answering on its address with a certificate that the app's CA bundle
/// verifies, and every app config directory holding a handle this container's key signed.
async fn relay(plan: &Plan) -> Vec<Finding> {
    let Some((s, addr)) = &plan.relay else {
        let why = match plan.place {
            Place::OurContainer => {
                "the relay is off (no POLARS_CLOUD_RELAY_CLIENT_CONFIGS): the app gets the bare token file only"
            }
            Place::Laptop => "no relay here (`exec` starts one for its command)",
        };
        return vec![Finding::skip(link::RELAY, why)];
    };
    let host = crate::relay::auth_host(&s.domain);
    let relay = relay_answers(s, &host, *addr).await;
    vec![relay, handles(s)]
}

async fn relay_answers(s: &crate::relay::Settings, host: &str, addr: SocketAddr) -> Finding {
    let bundle = s.ca_bundle.display();
    let pem = match std::fs::read(&s.ca_bundle) {
        Ok(p) => p,
        Err(e) => {
            return Finding::fail(
                link::RELAY,
                format!("cannot read the app's CA bundle {bundle}: {e}"),
                "our container writes it at start: restart it (the pod) and see its log",
            );
        }
    };
    let verifier = match Recording::new(&pem) {
        Some(v) => Arc::new(v),
        None => {
            return Finding::fail(
                link::RELAY,
                format!("the app's CA bundle {bundle} holds no usable PEM certificate"),
                "our container rewrites it at start: restart the pod",
            );
        }
    };
    // The app's view: only the bundle (its SSL_CERT_FILE), the relay's name, no proxy.
    let client = rustls::ClientConfig::builder_with_provider(crate::serve::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .and_then(|b| {
            let tls = b
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .no_proxy()
                .resolve(host, addr)
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())
        });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return Finding::fail(
                link::RELAY,
                format!("cannot set up a client: {e}"),
                "report this",
            );
        }
    };
    let url = format!("https://{host}:{}/", addr.port());
    let answer = client.get(&url).send().await;
    if let Some(e) = verifier.failure() {
        return Finding::fail(
            link::RELAY,
            format!(
                "the relay at {addr} answers, but {bundle} does not verify its certificate: {e}"
            ),
            "the relay's CA changed (its state volume was replaced) after the bundle was written: restart our container so that it writes both again",
        );
    }
    match answer {
        Ok(reply) => Finding::ok(
            link::RELAY,
            format!(
                "{host} at {addr} answers (HTTP {}) with a certificate that {bundle} verifies",
                reply.status().as_u16()
            ),
        ),
        Err(e) => Finding::fail(
            link::RELAY,
            format!("nothing answers as the relay at {addr}: {}", root_cause(&e)),
            "our container's sidecar is not running or not listening (init-only pods have no relay): see `kubectl describe pod` and its log; POLARS_CLOUD_RELAY_LISTEN sets the address",
        ),
    }
}

/// Checks the relay's certificate against the app's bundle as the app's client would,
/// but notes a failure instead of breaking off the handshake: the relay counts a client's
/// TLS alert as a client that does not trust its CA (`client_info{version="<=0.10"}`),
/// and doctor must not show up there as one.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    failed: std::sync::Mutex<Option<String>>,
}

impl Recording {
    fn new(pem: &[u8]) -> Option<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return None;
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::serve::tls::provider(),
        )
        .build()
        .ok()?;
        Some(Self {
            inner,
            failed: std::sync::Mutex::new(None),
        })
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().ok()?.clone()
    }
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Err(e) = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) && let Ok(mut failed) = self.failed.lock()
        {
            *failed = Some(e.to_string());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Every app config directory holds a refresh handle that this container's key signed.
fn handles(s: &crate::relay::Settings) -> Finding {
    let key_path = s.state_dir.join(crate::relay::HANDLE_KEY);
    let key = match std::fs::read_to_string(&key_path) {
        Ok(t) => match HandleKey::from_text(&t) {
            Some(k) => k,
            None => {
                return Finding::fail(
                    link::HANDLE,
                    format!("{} is not a handle key", key_path.display()),
                    "delete it and restart our container: it makes a new key and new handles",
                );
            }
        },
        Err(e) => {
            return Finding::skip(
                link::HANDLE,
                format!(
                    "cannot read the relay's key {} ({e}): run doctor in our container",
                    key_path.display()
                ),
            );
        }
    };
    for dir in &s.client_configs {
        let config = ClientConfig::in_dir(dir);
        let handle = match config.read() {
            Ok(Some(auth)) => auth.refresh_token,
            Ok(None) => None,
            Err(e) => {
                return Finding::fail(
                    link::HANDLE,
                    format!("{:#}", anyhow::Error::from(e)),
                    "delete the file; our container writes it again at its next renewal",
                );
            }
        };
        match handle {
            None => {
                return Finding::fail(
                    link::HANDLE,
                    format!("{} holds no refresh token", config.path().display()),
                    "our container seeds it at start and at every renewal: see its log",
                );
            }
            Some(h) if !key.verify_secret(&h) => {
                return Finding::fail(
                    link::HANDLE,
                    format!(
                        "{} holds a refresh token that this container's relay does not accept (another pod's, or a copied file): the app's client gets invalid_grant at its next refresh",
                        config.path().display()
                    ),
                    "delete the file (our container writes one of its own at its next renewal); if it comes back, the app's image or another writer puts it there",
                );
            }
            Some(_) => {}
        }
        let legacy = config
            .read_legacy()
            .ok()
            .flatten()
            .and_then(|a| a.refresh_token);
        if legacy.as_ref().is_some_and(|h| !key.verify_secret(h)) {
            return Finding::fail(
                link::HANDLE,
                format!(
                    "{} holds a refresh token that this container's relay does not accept",
                    config.legacy_paths()[1].display()
                ),
                "our container replaces it at its next renewal; if it stays, another writer puts it there",
            );
        }
    }
    Finding::ok(
        link::HANDLE,
        format!(
            "the config.toml of {} app config director{} holds this container's handle",
            s.client_configs.len(),
            if s.client_configs.len() == 1 {
                "y"
            } else {
                "ies"
            }
        ),
    )
}

/// Which client the app has: told, read from a Python's dist-info, or seen by the relay.
async fn client(plan: &Plan) -> Finding {
    let delivery = match (&plan.relay, plan.place) {
        (Some(_), _) => Delivery::Relay,
        (None, Place::OurContainer) => Delivery::TokenFileOnly,
        (None, Place::Laptop) => Delivery::Laptop,
    };
    let seen = if let Some(v) = plan.client_version {
        Seen::Told {
            version: v,
            from: "--client-version".to_string(),
        }
    } else if let Some(python) = plan
        .python
        .clone()
        .or_else(|| (plan.place == Place::Laptop).then(|| PathBuf::from("python3")))
    {
        python_client(&python).await
    } else if plan.relay.is_some() {
        relay_metrics(plan.metrics).await
    } else {
        Seen::Unknown(
            "not visible here: pass --client-version, or --python where the app's Python runs"
                .to_string(),
        )
    };
    doctor::client(seen, delivery)
}

/// The polars-cloud version in `python`'s environment (its dist-info).
async fn python_client(python: &Path) -> Seen {
    const PROBE: &str = "import importlib.metadata as m\ntry:\n    print(m.version('polars-cloud'))\nexcept m.PackageNotFoundError:\n    print('none')";
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg(PROBE)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(o)) if o.status.success() => o,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            return Seen::Unknown(format!(
                "{} did not run (pass --python or --client-version)",
                python.display()
            ));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match Version::parse(&text) {
        Some(version) => Seen::Told {
            version,
            from: format!("{}'s packages", python.display()),
        },
        None => Seen::Unknown(format!(
            "polars-cloud is not installed for {}",
            python.display()
        )),
    }
}

/// The versions our sidecar's relay has seen (`polars_cloud_auth_client_info`).
async fn relay_metrics(addr: SocketAddr) -> Seen {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Seen::Unknown(e.to_string()),
    };
    let url = format!("http://{addr}/metrics");
    let text = match client.get(&url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return Seen::Unknown(format!("{url} did not answer ({})", root_cause(&e))),
    };
    let (versions, untrusting) = doctor::client_info(&text);
    Seen::Relay {
        versions,
        untrusting,
    }
}
