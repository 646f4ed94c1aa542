//! The argument groups, low-level as the user writes them: clap reads them from flags and
//! their `POLARS_CLOUD_*` twins, serde from the config file's sections, and schemars
//! derives the file's schema from them. Every field is optional here; `resolve` applies
//! the defaults and checks.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::inject;
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
    /// Memory request of the injected containers [default: 8Mi].
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
    /// A CA (PEM) our containers trust for the identity provider besides the image's roots
    /// (a private CA, or a TLS-inspecting egress proxy): set as their POLARS_CLOUD_CA_PEM.
    /// Broker-backed containers trust the broker's CA instead [default: the image's roots].
    #[arg(long, env = vars::INJECT_ISSUER_CA_FILE, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_ca_file: Option<PathBuf>,
    /// Let the app's Polars Cloud client renew its token through our container (the
    /// relay); `false` gives the app the token file only [default: true].
    #[arg(long, env = vars::INJECT_RELAY, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<bool>,
    /// Authenticate the injected containers' client with a projected service-account token
    /// for this audience (the realm's issuer URL) instead of the credentials Secret: a
    /// client assertion, for a confidential client in a realm you control (set --issuer too)
    /// [default: none, the Secret].
    #[arg(long, env = vars::INJECT_CLIENT_ASSERTION_AUDIENCE, value_name = "AUDIENCE", value_parser = inject::projected_token::check_audience)]
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
    #[arg(long, env = vars::INJECT_BROKER_AUDIENCE, value_name = "AUDIENCE", value_parser = inject::projected_token::check_audience)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_audience: Option<String>,
}

fn token_path(s: &str) -> Result<String, String> {
    inject::check::token_path(s).map(|p| p.as_str().to_string())
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
