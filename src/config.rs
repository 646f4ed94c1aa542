//! Settings: one set of argument groups, parsed from flags and their `POLARS_CLOUD_*`
//! twins by clap, from an optional YAML file by serde, and merged (flags and environment
//! win over the file; defaults apply last). The file's JSON Schema is derived from the
//! same types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::assertion::Assertion;
use crate::credentials::{self, Credentials};
use crate::inject;
use crate::renew::Policy;
use crate::sink::TokenFile;
use crate::source::{self, ClientAuth, Endpoints, Grant, HttpSettings};
use crate::values::{FileMode, Fraction, HumanDuration};
use crate::vars;

/// Which grant to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GrantKind {
    /// A Polars Cloud service account (password grant against the `PolarsCloud` client).
    ServiceAccount,
    /// OAuth2 client credentials, for other Keycloak realms.
    ClientCredentials,
}

/// How a client-credentials client authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthKind {
    /// HTTP Basic.
    Basic,
    /// In the request body.
    Post,
    /// A JWT client assertion (RFC 7523): --client-assertion-file or --client-key-file;
    /// implied by either.
    Assertion,
}

/// Log line format.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The identity provider and the credentials to present to it.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Identity provider")]
pub struct IdpArgs {
    /// Realm issuer URL [default: https://auth.{domain}/realms/Polars].
    #[arg(long, env = vars::ISSUER, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub issuer: Option<Url>,
    /// Polars Cloud domain, used when no issuer is given [default: prd.cloud.pola.rs].
    #[arg(long, env = vars::DOMAIN)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Token endpoint URL, overriding the one derived from the issuer.
    #[arg(long, env = vars::TOKEN_URL, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub token_url: Option<Url>,
    /// Grant to use [default: service-account].
    #[arg(long, env = vars::GRANT, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantKind>,
    /// How a client-credentials client authenticates [default: basic, or assertion with
    /// --client-assertion-file or --client-key-file].
    #[arg(long, env = vars::CLIENT_AUTH, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthKind>,
    /// Client id (a service account's id for the default grant). The secret is read only
    /// from POLARS_CLOUD_CLIENT_SECRET or a file, never from a flag.
    #[arg(long, env = vars::CLIENT_ID, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// File holding the client id (wins over POLARS_CLOUD_CLIENT_ID).
    #[arg(long, env = vars::CLIENT_ID_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_file: Option<PathBuf>,
    /// File holding the client secret, re-read at every renewal.
    #[arg(long, env = vars::CLIENT_SECRET_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Directory holding `client_id` and `client_secret` files, as a mounted Secret.
    #[arg(long, env = vars::CREDENTIALS_DIR, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    /// File holding a JWT that authenticates the client instead of a secret (a projected
    /// service-account token, a CI job's OIDC token), re-read at every request. For
    /// --grant client-credentials against a realm you control, not Polars Cloud's client.
    #[arg(long, env = vars::CLIENT_ASSERTION_FILE, value_name = "PATH", conflicts_with = "client_key_file")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_assertion_file: Option<PathBuf>,
    /// PEM private key (RSA: RS256, EC P-256: ES256) that signs a fresh 60-second JWT at
    /// every request (`private_key_jwt`), for --grant client-credentials; needs the client
    /// id.
    #[arg(long, env = vars::CLIENT_KEY_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// The `kid` header of the JWTs signed with --client-key-file (the key's id in the
    /// JWKS the realm knows).
    #[arg(long, env = vars::CLIENT_KEY_ID, value_name = "KID", requires = "client_key_file")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_id: Option<String>,
    /// `scope` parameter to send.
    #[arg(long, env = vars::SCOPE)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `audience` parameter to send.
    #[arg(long, env = vars::AUDIENCE)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Extra trusted CA certificates (PEM), on top of the system roots.
    #[arg(long, env = vars::CA_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Extra trusted CA certificates as PEM text, on top of the system roots and
    /// --ca-file (the injector passes the broker's CA this way: no file to mount).
    #[arg(long, env = vars::CA_PEM, value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Limit for one HTTP request [default: 10s].
    #[arg(long, env = vars::HTTP_TIMEOUT, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_timeout: Option<HumanDuration>,
}

/// The token file.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Token file")]
pub struct FileArgs {
    /// Token file path [default: /var/run/polars-cloud/token].
    #[arg(
        long = "token-file",
        env = vars::ACCESS_TOKEN_PATH,
        value_name = "PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Token file mode, octal [default: 0640].
    #[arg(
        long = "file-mode",
        env = vars::TOKEN_FILE_MODE,
        value_name = "MODE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
}

/// Renewal timing and retries.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Renewal")]
pub struct RenewArgs {
    /// Renew after this fraction of the token's life [default: 0.8].
    #[arg(long, env = vars::RENEW_AT, value_name = "FRACTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Fraction>,
    /// Never renew more often than this [default: 1s].
    #[arg(long, env = vars::MIN_RENEW_INTERVAL, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_renew_interval: Option<HumanDuration>,
    /// Longest wait between retries after transient failures [default: 30s].
    #[arg(long, env = vars::MAX_BACKOFF, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<HumanDuration>,
    /// Wait between attempts after the credentials were rejected (sidecar) [default: 60s].
    #[arg(long, env = vars::REJECTED_RETRY, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_retry: Option<HumanDuration>,
    /// How long `token` and `init` keep retrying transient failures [default: 60s].
    #[arg(long, env = vars::TIMEOUT, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// The sidecar's HTTP surface.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Sidecar")]
pub struct ServeArgs {
    /// Address for /healthz, /readyz and /metrics [default: 0.0.0.0:8471].
    #[arg(long, env = vars::LISTEN, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub listen: Option<std::net::SocketAddr>,
    /// /readyz fails when the token on disk expires sooner than this [default: 30s].
    #[arg(long, env = vars::READY_MARGIN, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_margin: Option<HumanDuration>,
}

/// The relay: a pod-local token endpoint that the app's own client refreshes against
/// (see `relay`). On when at least one client config directory is given.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Relay (the app's client refreshes through us)")]
pub struct RelayArgs {
    /// An app's client config directory (its POLARS_CLOUD_CONFIG_DIR), to get a
    /// config.toml whose refresh token only the relay accepts; repeat or comma-separate.
    #[arg(
        long = "client-config",
        env = vars::RELAY_CLIENT_CONFIGS,
        value_name = "DIR",
        value_delimiter = ','
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_configs: Vec<PathBuf>,
    /// The private domain the apps are given as POLARS_CLOUD_DOMAIN; the relay serves
    /// auth.{domain} [default: polars-cloud-auth.internal].
    #[arg(long = "relay-domain", env = vars::RELAY_DOMAIN, value_parser = inject::check::domain)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "domain")]
    pub relay_domain: Option<String>,
    /// Where the relay keeps its CA and handle keys; mounted by our container only
    /// [default: /var/run/polars-cloud-auth].
    #[arg(
        long = "relay-state-dir",
        env = vars::RELAY_STATE_DIR,
        value_name = "DIR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "state-dir")]
    pub relay_state_dir: Option<PathBuf>,
    /// The CA bundle the apps trust (their SSL_CERT_FILE): the system roots plus the
    /// relay's CA [default: ca-bundle.pem beside the token file].
    #[arg(
        long = "relay-ca-bundle",
        env = vars::RELAY_CA_BUNDLE,
        value_name = "PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "ca-bundle")]
    pub relay_ca_bundle: Option<PathBuf>,
    /// Address of the relay's TLS listener (sidecar) [default: 127.0.0.1:443, the port
    /// the client always uses].
    #[arg(
        long = "relay-listen",
        env = vars::RELAY_LISTEN,
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    #[serde(rename = "listen")]
    pub relay_listen: Option<std::net::SocketAddr>,
}

impl RelayArgs {
    /// The relay's settings, or `None` when no client config directory was given.
    pub fn settings(&self, token_file: &TokenFile) -> Option<crate::relay::Settings> {
        if self.client_configs.is_empty() {
            return None;
        }
        use crate::relay;
        let bundle_dir = token_file.path().parent().unwrap_or(Path::new("/"));
        Some(relay::Settings {
            domain: self
                .relay_domain
                .clone()
                .unwrap_or_else(|| relay::DEFAULT_DOMAIN.to_string()),
            state_dir: self
                .relay_state_dir
                .clone()
                .unwrap_or_else(|| relay::DEFAULT_STATE_DIR.into()),
            client_configs: self.client_configs.clone(),
            ca_bundle: self
                .relay_ca_bundle
                .clone()
                .unwrap_or_else(|| bundle_dir.join(relay::CA_BUNDLE_FILE)),
            system_roots: std::env::var_os("SSL_CERT_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| relay::SYSTEM_ROOTS.into()),
            file_mode: token_file.mode(),
        })
    }

    pub fn listen(&self) -> std::net::SocketAddr {
        self.relay_listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 443)))
    }
}

/// What to inject into pods: the defaults that a pod's `polars.cloud/*` annotations
/// override. Shared by `inject` and `webhook`.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Injection")]
pub struct InjectArgs {
    /// Image of the injected containers [default: polars-cloud-auth:<this version>].
    #[arg(long, env = vars::INJECT_IMAGE, value_name = "IMAGE", value_parser = inject::check::image)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credentials Secret (keys `client_id`, `client_secret`) in the pod's namespace
    /// [default: polars-cloud-credentials].
    #[arg(long, env = vars::INJECT_SECRET_NAME, value_name = "NAME", value_parser = inject::check::secret_name)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// How the token gets into pods [default: native].
    #[arg(long, env = vars::INJECT_MODE, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<inject::Mode>,
    /// Token file path in the pods; its directory becomes the token volume's mount point
    /// [default: /var/run/polars-cloud/token].
    #[arg(long, env = vars::INJECT_TOKEN_PATH, value_name = "PATH", value_parser = token_path)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
    /// CPU request of the injected containers [default: 5m].
    #[arg(long, env = vars::INJECT_CPU_REQUEST, value_name = "QUANTITY", value_parser = inject::check::quantity)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<String>,
    /// Memory request of the injected containers [default: 16Mi].
    #[arg(long, env = vars::INJECT_MEMORY_REQUEST, value_name = "QUANTITY", value_parser = inject::check::quantity)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<String>,
    /// Memory limit of the injected containers [default: 32Mi].
    #[arg(long, env = vars::INJECT_MEMORY_LIMIT, value_name = "QUANTITY", value_parser = inject::check::quantity)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// Polars Cloud domain of the injected containers (their POLARS_CLOUD_DOMAIN)
    /// [default: theirs].
    #[arg(long, env = vars::INJECT_DOMAIN, value_parser = inject::check::domain)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Issuer URL of the injected containers (their POLARS_CLOUD_ISSUER) [default: theirs].
    #[arg(long, env = vars::INJECT_ISSUER, value_name = "URL", value_parser = inject::check::issuer)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Let the app's Polars Cloud client renew its token through our container (the
    /// relay); `false` gives the app the token file only [default: true].
    #[arg(long, env = vars::INJECT_RELAY, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<bool>,
    /// Authenticate the injected containers' client with a projected service-account token
    /// for this audience (the realm's issuer URL) instead of the credentials Secret: a
    /// client assertion, for a confidential client in a realm you control (set --issuer too)
    /// [default: none, the Secret].
    #[arg(long, env = vars::INJECT_CLIENT_ASSERTION_AUDIENCE, value_name = "AUDIENCE", value_parser = inject::assertion::check_audience)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_assertion_audience: Option<String>,
    /// The token broker's endpoint: pods become broker-backed (a projected
    /// service-account token instead of the credentials Secret) [default: none].
    #[arg(long, env = vars::INJECT_BROKER_URL, value_name = "URL", value_parser = inject::broker::check_url)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
    /// The CA (PEM) of the broker's certificate; required with --broker-url.
    #[arg(long, env = vars::INJECT_BROKER_CA_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_ca_file: Option<PathBuf>,
    /// Whether pods are broker-backed unless their annotation polars.cloud/broker says
    /// otherwise [default: true with --broker-url].
    #[arg(long, env = vars::INJECT_BROKER, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<bool>,
    /// Audience of the projected token a broker-backed container presents
    /// [default: polars-cloud-auth].
    #[arg(long, env = vars::INJECT_BROKER_AUDIENCE, value_name = "AUDIENCE", value_parser = inject::assertion::check_audience)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_audience: Option<String>,
}

fn token_path(s: &str) -> Result<String, String> {
    inject::check::token_path(s).map(|p| p.as_str().to_string())
}

impl InjectArgs {
    /// The broker the pods are pointed at, if any; its CA file is read now.
    fn broker_settings(&self) -> Result<Option<inject::broker::Broker>, Error> {
        let Some(url) = &self.broker_url else {
            if self.broker == Some(true) {
                return Err(Error::Invalid(
                    "--broker true (POLARS_CLOUD_INJECT_BROKER) needs --broker-url (POLARS_CLOUD_INJECT_BROKER_URL) and --broker-ca-file".into(),
                ));
            }
            return Ok(None);
        };
        let url = inject::broker::check_url(url).map_err(|e| {
            Error::Invalid(format!(
                "--broker-url (POLARS_CLOUD_INJECT_BROKER_URL): {e}"
            ))
        })?;
        let ca = self.broker_ca_file.as_deref().ok_or_else(|| {
            Error::Invalid(
                "--broker-url needs --broker-ca-file (POLARS_CLOUD_INJECT_BROKER_CA_FILE): the CA the broker's certificate is signed by".into(),
            )
        })?;
        let ca_pem = inject::broker::read_ca(ca).map_err(|e| {
            Error::Invalid(format!(
                "--broker-ca-file (POLARS_CLOUD_INJECT_BROKER_CA_FILE): {e}"
            ))
        })?;
        let audience = match &self.broker_audience {
            Some(a) => inject::assertion::check_audience(a).map_err(|e| {
                Error::Invalid(format!(
                    "--broker-audience (POLARS_CLOUD_INJECT_BROKER_AUDIENCE): {e}"
                ))
            })?,
            None => DEFAULT_BROKER_AUDIENCE.to_string(),
        };
        Ok(Some(inject::broker::Broker {
            url,
            ca_pem,
            audience,
            expiration_seconds: inject::broker::EXPIRATION_SECONDS,
            default_on: self.broker.unwrap_or(true),
        }))
    }

    /// The injection settings, every value checked (the config file's too).
    pub fn settings(&self) -> Result<inject::Settings, Error> {
        use inject::check;
        fn checked<T>(
            name: &str,
            env: &str,
            value: &Option<String>,
            check: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, Error> {
            value
                .as_deref()
                .map(|v| {
                    check(v).map_err(|e| {
                        Error::Invalid(format!(
                            "--{name} ({env}, or inject.{name} in the config file): {e}"
                        ))
                    })
                })
                .transpose()
        }
        let d = inject::Settings::default();
        let settings = inject::Settings {
            image: checked("image", vars::INJECT_IMAGE, &self.image, check::image)?
                .unwrap_or(d.image),
            secret_name: checked(
                "secret-name",
                vars::INJECT_SECRET_NAME,
                &self.secret_name,
                check::secret_name,
            )?
            .unwrap_or(d.secret_name),
            mode: self.mode.unwrap_or(d.mode),
            token_path: checked(
                "token-path",
                vars::INJECT_TOKEN_PATH,
                &self.token_path,
                check::token_path,
            )?
            .unwrap_or(d.token_path),
            cpu_request: checked(
                "cpu-request",
                vars::INJECT_CPU_REQUEST,
                &self.cpu_request,
                check::quantity,
            )?
            .unwrap_or(d.cpu_request),
            memory_request: checked(
                "memory-request",
                vars::INJECT_MEMORY_REQUEST,
                &self.memory_request,
                check::quantity,
            )?
            .unwrap_or(d.memory_request),
            memory_limit: checked(
                "memory-limit",
                vars::INJECT_MEMORY_LIMIT,
                &self.memory_limit,
                check::quantity,
            )?
            .unwrap_or(d.memory_limit),
            domain: checked("domain", vars::INJECT_DOMAIN, &self.domain, check::domain)?,
            issuer: checked("issuer", vars::INJECT_ISSUER, &self.issuer, check::issuer)?,
            min_valid: d.min_valid,
            renew_at: d.renew_at,
            relay: self.relay.unwrap_or(d.relay),
            client_assertion_audience: checked(
                "client-assertion-audience",
                vars::INJECT_CLIENT_ASSERTION_AUDIENCE,
                &self.client_assertion_audience,
                inject::assertion::check_audience,
            )?,
            broker: self.broker_settings()?,
        };
        if inject::check_limits(&settings).is_err() {
            return Err(Error::Invalid(format!(
                "the memory request {} is above the memory limit {}; raise --memory-limit (POLARS_CLOUD_INJECT_MEMORY_LIMIT) or lower --memory-request (POLARS_CLOUD_INJECT_MEMORY_REQUEST)",
                settings.memory_request, settings.memory_limit
            )));
        }
        Ok(settings)
    }
}

/// The admission webhook's HTTPS server.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Webhook")]
pub struct WebhookArgs {
    /// Address to serve HTTPS on: /mutate, /healthz, /readyz, /metrics
    /// [default: 0.0.0.0:8443].
    #[arg(long, env = vars::WEBHOOK_LISTEN, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub listen: Option<std::net::SocketAddr>,
    /// TLS certificate chain (PEM); re-read when it changes.
    #[arg(long, env = vars::WEBHOOK_TLS_CERT, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); re-read when it changes.
    #[arg(long, env = vars::WEBHOOK_TLS_KEY, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// After SIGTERM, keep serving this long with /readyz failing, so the API server stops
    /// sending reviews before the port closes [default: 5s].
    #[arg(
        long,
        env = vars::WEBHOOK_SHUTDOWN_DELAY,
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<HumanDuration>,
    /// Close a connection on which no byte moved for this long: silent after the TLS
    /// handshake, idle between requests (HTTP/1 keep-alive or HTTP/2), or stalled in a
    /// body [default: 20s].
    #[arg(
        long,
        env = vars::WEBHOOK_IDLE_TIMEOUT,
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// A request's headers, and then its body, must each arrive whole within this, however
    /// slowly they trickle in [default: 10s].
    #[arg(
        long,
        env = vars::WEBHOOK_REQUEST_TIMEOUT,
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<HumanDuration>,
    /// Open connections at most; new ones over the limit are closed at once
    /// [default: 256].
    #[arg(long, env = vars::WEBHOOK_MAX_CONNECTIONS, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<std::num::NonZeroUsize>,
}

impl WebhookArgs {
    /// The address, certificate and key; the last two are required.
    pub fn resolve(&self) -> Result<(std::net::SocketAddr, PathBuf, PathBuf), Error> {
        let missing = |flag: &str, env: &str| {
            Error::Invalid(format!(
                "the webhook needs a TLS {flag}: set --tls-{flag} or {env} (a PEM file)"
            ))
        };
        Ok((
            self.listen
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8443))),
            self.tls_cert
                .clone()
                .ok_or_else(|| missing("cert", vars::WEBHOOK_TLS_CERT))?,
            self.tls_key
                .clone()
                .ok_or_else(|| missing("key", vars::WEBHOOK_TLS_KEY))?,
        ))
    }
}

/// The audience of the projected token a broker-backed sidecar presents: the default of
/// both the broker's --token-audience and the injector's --broker-audience.
pub const DEFAULT_BROKER_AUDIENCE: &str = "polars-cloud-auth";

/// The token broker (`polars-cloud-auth broker`).
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Broker")]
pub struct BrokerArgs {
    /// Address to serve HTTPS on: /token, /healthz, /readyz, /metrics
    /// [default: 0.0.0.0:8443].
    #[arg(long, env = vars::BROKER_LISTEN, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub listen: Option<std::net::SocketAddr>,
    /// TLS certificate chain (PEM); re-read when it changes.
    #[arg(long, env = vars::BROKER_TLS_CERT, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); re-read when it changes.
    #[arg(long, env = vars::BROKER_TLS_KEY, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The policy: which credentials exist (their mounted Secrets) and which service
    /// accounts receive which; re-read when it changes (the chart renders it).
    #[arg(long, env = vars::BROKER_POLICY, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Audience the sidecars' projected service-account tokens must carry
    /// [default: polars-cloud-auth].
    #[arg(
        long,
        env = vars::BROKER_TOKEN_AUDIENCE,
        value_name = "AUDIENCE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_audience: Option<String>,
    /// After SIGTERM, keep serving this long with /readyz failing [default: 5s].
    #[arg(
        long,
        env = vars::BROKER_SHUTDOWN_DELAY,
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<HumanDuration>,
}

impl BrokerArgs {
    /// The address, certificate, key and policy; all but the address are required.
    pub fn resolve(&self) -> Result<(std::net::SocketAddr, PathBuf, PathBuf, PathBuf), Error> {
        let missing = |flag: &str, env: &str, what: &str| {
            Error::Invalid(format!("the broker needs {what}: set --{flag} or {env}"))
        };
        Ok((
            self.listen
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8443))),
            self.tls_cert.clone().ok_or_else(|| {
                missing("tls-cert", vars::BROKER_TLS_CERT, "a TLS certificate (PEM)")
            })?,
            self.tls_key
                .clone()
                .ok_or_else(|| missing("tls-key", vars::BROKER_TLS_KEY, "a TLS key (PEM)"))?,
            self.policy
                .clone()
                .ok_or_else(|| missing("policy", vars::BROKER_POLICY, "a policy file"))?,
        ))
    }
}

/// Logging.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format [default: text].
    #[arg(long, global = true, env = vars::LOG_FORMAT, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `polars_cloud_auth=debug` [default: info].
    #[arg(long, global = true, env = vars::LOG, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// The YAML configuration file (`--config`): the same settings as the flags, by section.
/// The client secret is deliberately not a setting: it comes from the environment or a
/// file only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(title = "polars-cloud-auth configuration")]
pub struct ConfigFile {
    #[serde(default)]
    pub idp: IdpArgs,
    #[serde(default)]
    pub token_file: FileArgs,
    #[serde(default)]
    pub renewal: RenewArgs,
    #[serde(default)]
    pub sidecar: ServeArgs,
    #[serde(default)]
    pub relay: RelayArgs,
    #[serde(default)]
    pub log: LogArgs,
    #[serde(default)]
    pub inject: InjectArgs,
    #[serde(default)]
    pub webhook: WebhookArgs,
    #[serde(default)]
    pub broker: BrokerArgs,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// The JSON Schema of the configuration file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// `flags` with every unset field taken from `file`.
pub fn overlay<T: Serialize + DeserializeOwned>(flags: &T, file: &T) -> Result<T, Error> {
    let mut merged = serde_json::to_value(file).map_err(Error::merge)?;
    let top = serde_json::to_value(flags).map_err(Error::merge)?;
    if let (Some(base), serde_json::Value::Object(over)) = (merged.as_object_mut(), top) {
        base.extend(over);
    }
    serde_json::from_value(merged).map_err(Error::merge)
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("failed to read config file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the schema (`polars-cloud-auth schema`).
    #[error("config file '{}' is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// Internal: merging flags over the file failed.
    #[error("failed to merge flags with the config file: {0}")]
    Merge(String),
    /// The endpoint settings are unusable.
    #[error(transparent)]
    Endpoint(#[from] source::EndpointError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Http(#[from] source::HttpError),
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// A setting that parses but makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    fn merge(e: serde_json::Error) -> Self {
        Self::Merge(e.to_string())
    }
}

impl IdpArgs {
    pub fn endpoints(&self) -> Result<Endpoints, Error> {
        let issuer = match &self.issuer {
            Some(url) => url.clone(),
            None => {
                source::issuer_for_domain(self.domain.as_deref().unwrap_or(source::DEFAULT_DOMAIN))?
            }
        };
        Ok(Endpoints::new(issuer, self.token_url.clone())?)
    }

    pub fn grant(&self) -> Result<Grant, Error> {
        let assertion = match (&self.client_assertion_file, &self.client_key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "--client-assertion-file and --client-key-file are two ways to authenticate: give one".into(),
                ));
            }
            (Some(path), None) => Some(Assertion::File(path.clone())),
            (None, Some(path)) => Some(Assertion::Key {
                path: path.clone(),
                kid: self.client_key_id.clone().filter(|k| !k.is_empty()),
            }),
            (None, None) => None,
        };
        match (self.grant.unwrap_or(GrantKind::ServiceAccount), assertion) {
            (GrantKind::ServiceAccount, None) => Ok(Grant::ServiceAccount),
            (GrantKind::ServiceAccount, Some(_)) => Err(Error::Invalid(
                "--client-assertion-file and --client-key-file need --grant client-credentials (POLARS_CLOUD_GRANT) and a confidential client in a realm you control: Polars Cloud's service accounts sign in with their secret".into(),
            )),
            (GrantKind::ClientCredentials, assertion) => {
                let auth = match (self.client_auth, assertion) {
                    (None | Some(ClientAuthKind::Assertion), Some(a)) => ClientAuth::Assertion(a),
                    (None | Some(ClientAuthKind::Basic), None) => ClientAuth::Basic,
                    (Some(ClientAuthKind::Post), None) => ClientAuth::Post,
                    (Some(ClientAuthKind::Assertion), None) => {
                        return Err(Error::Invalid(
                            "--client-auth assertion needs --client-assertion-file or --client-key-file".into(),
                        ));
                    }
                    (Some(kind @ (ClientAuthKind::Basic | ClientAuthKind::Post)), Some(_)) => {
                        return Err(Error::Invalid(format!(
                            "--client-auth {} sends a client secret, but --client-assertion-file or --client-key-file is set: drop one",
                            if kind == ClientAuthKind::Basic { "basic" } else { "post" }
                        )));
                    }
                };
                Ok(Grant::ClientCredentials(auth))
            }
        }
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::from_sources(credentials::Sources {
            client_id: self.client_id.clone(),
            client_id_file: self.client_id_file.clone(),
            client_secret: std::env::var(vars::CLIENT_SECRET).ok(),
            client_secret_file: self.client_secret_file.clone(),
            credentials_dir: self.credentials_dir.clone(),
        })
    }

    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            ca_file: self.ca_file.clone(),
            ca_pem: self.ca_pem.clone().filter(|p| !p.trim().is_empty()),
            timeout: self
                .http_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
        }
    }

    /// The token source these settings describe.
    pub fn source(&self) -> Result<source::TokenSource, Error> {
        self.source_with(self.credentials())
    }

    /// The token source these settings describe, with credentials from elsewhere (the
    /// GitHub Action's inputs).
    pub fn source_with(&self, credentials: Credentials) -> Result<source::TokenSource, Error> {
        self.source_for(credentials, self.grant()?)
    }

    /// The token source for the client-credentials grant authenticated by an assertion
    /// obtained elsewhere (the GitHub Action's OIDC token).
    pub fn source_with_assertion(
        &self,
        credentials: Credentials,
        assertion: Assertion,
    ) -> Result<source::TokenSource, Error> {
        if self.grant == Some(GrantKind::ServiceAccount) {
            return Err(Error::Invalid(
                "a client assertion needs the client-credentials grant and a confidential client in a realm you control: Polars Cloud's service accounts sign in with their secret".into(),
            ));
        }
        self.source_for(
            credentials,
            Grant::ClientCredentials(ClientAuth::Assertion(assertion)),
        )
    }

    fn source_for(
        &self,
        credentials: Credentials,
        grant: Grant,
    ) -> Result<source::TokenSource, Error> {
        let settings = source::Settings {
            endpoints: self.endpoints()?,
            grant,
            credentials,
            scope: self.scope.clone().filter(|s| !s.is_empty()),
            audience: self.audience.clone().filter(|s| !s.is_empty()),
        };
        let http = source::http_client(&self.http())?;
        Ok(source::TokenSource::new(http, settings))
    }
}

impl FileArgs {
    /// The token file of the pod modes (`init`, `sidecar`, `probe`): by default
    /// `/var/run/polars-cloud/token`, mode 0640 (owner and a pod's fsGroup may read).
    pub fn pod_token_file(&self) -> TokenFile {
        self.token_file(Path::new(crate::sink::file::DEFAULT_POD_PATH), 0o640)
    }

    pub fn token_file(&self, default_path: &Path, default_mode: u32) -> TokenFile {
        TokenFile::new(
            self.path
                .clone()
                .unwrap_or_else(|| default_path.to_path_buf()),
            self.mode.map(|m| m.0).unwrap_or(default_mode),
        )
    }
}

impl RenewArgs {
    pub fn policy(&self) -> Policy {
        let d = Policy::default();
        Policy {
            renew_at: self.renew_at.map(|f| f.0).unwrap_or(d.renew_at),
            jitter: d.jitter,
            min_interval: self
                .min_renew_interval
                .map(|x| x.0)
                .unwrap_or(d.min_interval),
            backoff_base: d.backoff_base,
            backoff_cap: self.max_backoff.map(|x| x.0).unwrap_or(d.backoff_cap),
            rejected_retry: self.rejected_retry.map(|x| x.0).unwrap_or(d.rejected_retry),
            lead: d.lead,
        }
    }

    pub fn deadline(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = IdpArgs {
            domain: Some("file.example".into()),
            scope: Some("from-file".into()),
            ..IdpArgs::default()
        };
        let flags = IdpArgs {
            scope: Some("from-flag".into()),
            ..IdpArgs::default()
        };
        let merged = overlay(&flags, &file).unwrap();
        assert_eq!(merged.scope.as_deref(), Some("from-flag"));
        assert_eq!(merged.domain.as_deref(), Some("file.example"));
        assert_eq!(
            merged.endpoints().unwrap().token.as_str(),
            "https://auth.file.example/realms/Polars/protocol/openid-connect/token"
        );
    }

    #[test]
    fn the_yaml_file_parses_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "idp:\n  issuer: http://127.0.0.1:9/realms/Polars\n  grant: client-credentials\ntoken-file:\n  path: /tmp/t\n  mode: \"0600\"\nrenewal:\n  renew-at: 0.5\n  timeout: 2m\n",
        )
        .unwrap();
        let c = ConfigFile::load(&path).unwrap();
        assert_eq!(c.token_file.mode, Some(FileMode(0o600)));
        assert_eq!(c.renewal.policy().renew_at, 0.5);
        assert_eq!(c.renewal.deadline(), Duration::from_secs(120));
        std::fs::write(&path, "idp:\n  isuer: x\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("isuer"), "{err}");
        std::fs::write(&path, "renewal:\n  renew-at: 2\n").unwrap();
        assert!(ConfigFile::load(&path).is_err());
    }

    #[test]
    fn source_with_uses_the_given_credentials() {
        let idp = IdpArgs {
            issuer: Some(Url::parse("http://127.0.0.1:9/realms/Polars").unwrap()),
            client_id: Some("ignored".into()),
            ..IdpArgs::default()
        };
        let given = Credentials::from_sources(credentials::Sources {
            client_id: Some("from-input".into()),
            client_secret: Some("s".into()),
            ..credentials::Sources::default()
        });
        let source = idp.source_with(given).unwrap();
        assert_eq!(
            source.settings().credentials.load().unwrap().0,
            "from-input"
        );
        assert_eq!(
            source.settings().endpoints.token.as_str(),
            "http://127.0.0.1:9/realms/Polars/protocol/openid-connect/token"
        );
    }

    #[test]
    fn an_assertion_file_or_client_key_implies_assertion_client_auth() {
        let cc = |f: fn(&mut IdpArgs)| {
            let mut idp = IdpArgs {
                grant: Some(GrantKind::ClientCredentials),
                ..IdpArgs::default()
            };
            f(&mut idp);
            idp.grant()
        };
        let g = cc(|i| i.client_assertion_file = Some("/t".into())).unwrap();
        assert!(
            matches!(&g, Grant::ClientCredentials(ClientAuth::Assertion(Assertion::File(p))) if p == Path::new("/t")),
            "{g:?}"
        );
        let g = cc(|i| {
            i.client_key_file = Some("/k.pem".into());
            i.client_key_id = Some("kid-1".into());
        })
        .unwrap();
        assert!(
            matches!(&g, Grant::ClientCredentials(ClientAuth::Assertion(Assertion::Key { kid: Some(k), .. })) if k == "kid-1"),
            "{g:?}"
        );
        assert!(matches!(
            cc(|_| {}).unwrap(),
            Grant::ClientCredentials(ClientAuth::Basic)
        ));
        let e = cc(|i| i.client_auth = Some(ClientAuthKind::Assertion)).unwrap_err();
        assert!(
            e.to_string().contains("needs --client-assertion-file"),
            "{e}"
        );
        let e = cc(|i| {
            i.client_auth = Some(ClientAuthKind::Post);
            i.client_assertion_file = Some("/t".into());
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("--client-auth post sends a client secret"),
            "{e}"
        );
        let e = IdpArgs {
            client_assertion_file: Some("/t".into()),
            ..IdpArgs::default()
        }
        .grant()
        .unwrap_err();
        assert!(
            e.to_string().contains("need --grant client-credentials"),
            "{e}"
        );
    }

    #[test]
    fn injection_settings_from_the_file_are_checked_like_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "inject:\n  mode: init-only\n  memory-limit: 64Mi\n").unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let flags = InjectArgs {
            secret_name: Some("from-flag".into()),
            ..InjectArgs::default()
        };
        let s = overlay(&flags, &file.inject).unwrap().settings().unwrap();
        assert_eq!(s.mode, inject::Mode::InitOnly);
        assert_eq!(s.memory_limit, "64Mi");
        assert_eq!(s.secret_name, "from-flag");
        std::fs::write(&path, "inject:\n  cpu-request: lots\n").unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let e = file.inject.settings().unwrap_err().to_string();
        assert!(e.contains("inject.cpu-request in the config file"), "{e}");
        let e = InjectArgs {
            memory_request: Some("1Gi".into()),
            ..InjectArgs::default()
        }
        .settings()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("memory request 1Gi is above the memory limit 32Mi"),
            "{e}"
        );
    }
}
