//! The names of the environment variables that form a contract with the outside: those
//! the Polars Cloud client reads (docs/polars-cloud-client.md) and those our own
//! containers are configured with by `inject`. One place, so the injector, `exec`, the
//! relay and the flags cannot drift apart.

/// The client's access token, read once at start and never refreshed.
pub const ACCESS_TOKEN: &str = "POLARS_CLOUD_ACCESS_TOKEN";
/// The token file of older clients (0.12 ignores it); our token file flag too.
pub const ACCESS_TOKEN_PATH: &str = "POLARS_CLOUD_ACCESS_TOKEN_PATH";
/// The client's config directory (`config.toml`).
pub const CONFIG_DIR: &str = "POLARS_CLOUD_CONFIG_DIR";
/// The client's domain: `auth.{domain}` is its identity provider, `api.{domain}` its API.
pub const DOMAIN: &str = "POLARS_CLOUD_DOMAIN";
/// The client's API base URL, which wins over the domain for the API.
pub const API_ADDR: &str = "POLARS_CLOUD_API_ADDR";
/// The service account's secret (never given to an app).
pub const CLIENT_SECRET: &str = "POLARS_CLOUD_CLIENT_SECRET";
/// The CA bundle of rustls, OpenSSL and Python clients alike.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
/// The proxy of https requests (reqwest, curl, Python).
pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
/// Our containers: the app config directories the relay seeds.
pub const RELAY_CLIENT_CONFIGS: &str = "POLARS_CLOUD_RELAY_CLIENT_CONFIGS";
/// The workload's own JWT that authenticates its client instead of a secret (a projected
/// service-account token); set by `inject` for the `client-assertion-audience` annotation.
pub const CLIENT_ASSERTION_FILE: &str = "POLARS_CLOUD_CLIENT_ASSERTION_FILE";
/// The private key that signs `private_key_jwt` client assertions.
pub const CLIENT_KEY_FILE: &str = "POLARS_CLOUD_CLIENT_KEY_FILE";
/// The `kid` of the JWTs signed with [`CLIENT_KEY_FILE`].
pub const CLIENT_KEY_ID: &str = "POLARS_CLOUD_CLIENT_KEY_ID";
/// The grant our containers use (`service-account`, `client-credentials`).
pub const GRANT: &str = "POLARS_CLOUD_GRANT";
/// Extra trusted CA certificates as PEM text (the broker's CA in broker-backed pods).
pub const CA_PEM: &str = "POLARS_CLOUD_CA_PEM";
/// The token endpoint, overriding the issuer's (the broker's, in broker-backed pods).
pub const TOKEN_URL: &str = "POLARS_CLOUD_TOKEN_URL";

// The flags' environment twins (clap's `env =`), group by group.

// Settings of the identity provider.
/// `--issuer`.
pub const ISSUER: &str = "POLARS_CLOUD_ISSUER";
/// `--client-auth`.
pub const CLIENT_AUTH: &str = "POLARS_CLOUD_CLIENT_AUTH";
/// `--client-id`.
pub const CLIENT_ID: &str = "POLARS_CLOUD_CLIENT_ID";
/// `--client-id-file`.
pub const CLIENT_ID_FILE: &str = "POLARS_CLOUD_CLIENT_ID_FILE";
/// `--client-secret-file`.
pub const CLIENT_SECRET_FILE: &str = "POLARS_CLOUD_CLIENT_SECRET_FILE";
/// `--credentials-dir`.
pub const CREDENTIALS_DIR: &str = "POLARS_CLOUD_CREDENTIALS_DIR";
/// `--scope`.
pub const SCOPE: &str = "POLARS_CLOUD_SCOPE";
/// `--audience`.
pub const AUDIENCE: &str = "POLARS_CLOUD_AUDIENCE";
/// `--ca-file`.
pub const CA_FILE: &str = "POLARS_CLOUD_CA_FILE";
/// `--http-timeout`.
pub const HTTP_TIMEOUT: &str = "POLARS_CLOUD_HTTP_TIMEOUT";

// Settings of the token file.
/// `--file-mode`.
pub const TOKEN_FILE_MODE: &str = "POLARS_CLOUD_TOKEN_FILE_MODE";

// Settings of renewal.
/// `--renew-at`.
pub const RENEW_AT: &str = "POLARS_CLOUD_RENEW_AT";
/// `--min-renew-interval`.
pub const MIN_RENEW_INTERVAL: &str = "POLARS_CLOUD_MIN_RENEW_INTERVAL";
/// `--max-backoff`.
pub const MAX_BACKOFF: &str = "POLARS_CLOUD_MAX_BACKOFF";
/// `--rejected-retry`.
pub const REJECTED_RETRY: &str = "POLARS_CLOUD_REJECTED_RETRY";
/// `--timeout`.
pub const TIMEOUT: &str = "POLARS_CLOUD_TIMEOUT";

// Settings of the sidecar.
/// `--listen`.
pub const LISTEN: &str = "POLARS_CLOUD_LISTEN";
/// `--ready-margin`.
pub const READY_MARGIN: &str = "POLARS_CLOUD_READY_MARGIN";

// Settings of the relay.
/// `--relay-domain`.
pub const RELAY_DOMAIN: &str = "POLARS_CLOUD_RELAY_DOMAIN";
/// `--relay-state-dir`.
pub const RELAY_STATE_DIR: &str = "POLARS_CLOUD_RELAY_STATE_DIR";
/// `--relay-ca-bundle`.
pub const RELAY_CA_BUNDLE: &str = "POLARS_CLOUD_RELAY_CA_BUNDLE";
/// `--relay-listen`.
pub const RELAY_LISTEN: &str = "POLARS_CLOUD_RELAY_LISTEN";

// Settings of injection (`inject` and `webhook`).
/// `--image`.
pub const INJECT_IMAGE: &str = "POLARS_CLOUD_INJECT_IMAGE";
/// `--secret-name`.
pub const INJECT_SECRET_NAME: &str = "POLARS_CLOUD_INJECT_SECRET_NAME";
/// `--mode`.
pub const INJECT_MODE: &str = "POLARS_CLOUD_INJECT_MODE";
/// `--token-path`.
pub const INJECT_TOKEN_PATH: &str = "POLARS_CLOUD_INJECT_TOKEN_PATH";
/// `--cpu-request`.
pub const INJECT_CPU_REQUEST: &str = "POLARS_CLOUD_INJECT_CPU_REQUEST";
/// `--memory-request`.
pub const INJECT_MEMORY_REQUEST: &str = "POLARS_CLOUD_INJECT_MEMORY_REQUEST";
/// `--memory-limit`.
pub const INJECT_MEMORY_LIMIT: &str = "POLARS_CLOUD_INJECT_MEMORY_LIMIT";
/// `--domain`.
pub const INJECT_DOMAIN: &str = "POLARS_CLOUD_INJECT_DOMAIN";
/// `--issuer`.
pub const INJECT_ISSUER: &str = "POLARS_CLOUD_INJECT_ISSUER";
/// `--relay`.
pub const INJECT_RELAY: &str = "POLARS_CLOUD_INJECT_RELAY";
/// `--client-assertion-audience`.
pub const INJECT_CLIENT_ASSERTION_AUDIENCE: &str = "POLARS_CLOUD_INJECT_CLIENT_ASSERTION_AUDIENCE";
/// `--broker-url`.
pub const INJECT_BROKER_URL: &str = "POLARS_CLOUD_INJECT_BROKER_URL";
/// `--broker-ca-file`.
pub const INJECT_BROKER_CA_FILE: &str = "POLARS_CLOUD_INJECT_BROKER_CA_FILE";
/// `--issuer-ca-file`.
pub const INJECT_ISSUER_CA_FILE: &str = "POLARS_CLOUD_INJECT_ISSUER_CA_FILE";
/// `--broker`.
pub const INJECT_BROKER: &str = "POLARS_CLOUD_INJECT_BROKER";
/// `--broker-audience`.
pub const INJECT_BROKER_AUDIENCE: &str = "POLARS_CLOUD_INJECT_BROKER_AUDIENCE";

// Settings of the webhook.
/// `--listen`.
pub const WEBHOOK_LISTEN: &str = "POLARS_CLOUD_WEBHOOK_LISTEN";
/// `--tls-cert`.
pub const WEBHOOK_TLS_CERT: &str = "POLARS_CLOUD_WEBHOOK_TLS_CERT";
/// `--tls-key`.
pub const WEBHOOK_TLS_KEY: &str = "POLARS_CLOUD_WEBHOOK_TLS_KEY";
/// `--shutdown-delay`.
pub const WEBHOOK_SHUTDOWN_DELAY: &str = "POLARS_CLOUD_WEBHOOK_SHUTDOWN_DELAY";
/// `--idle-timeout`.
pub const WEBHOOK_IDLE_TIMEOUT: &str = "POLARS_CLOUD_WEBHOOK_IDLE_TIMEOUT";
/// `--request-timeout`.
pub const WEBHOOK_REQUEST_TIMEOUT: &str = "POLARS_CLOUD_WEBHOOK_REQUEST_TIMEOUT";
/// `--max-connections`.
pub const WEBHOOK_MAX_CONNECTIONS: &str = "POLARS_CLOUD_WEBHOOK_MAX_CONNECTIONS";

// Settings of the broker.
/// `--listen`.
pub const BROKER_LISTEN: &str = "POLARS_CLOUD_BROKER_LISTEN";
/// `--tls-cert`.
pub const BROKER_TLS_CERT: &str = "POLARS_CLOUD_BROKER_TLS_CERT";
/// `--tls-key`.
pub const BROKER_TLS_KEY: &str = "POLARS_CLOUD_BROKER_TLS_KEY";
/// `--policy`.
pub const BROKER_POLICY: &str = "POLARS_CLOUD_BROKER_POLICY";
/// `--token-audience`.
pub const BROKER_TOKEN_AUDIENCE: &str = "POLARS_CLOUD_BROKER_TOKEN_AUDIENCE";
/// `--shutdown-delay`.
pub const BROKER_SHUTDOWN_DELAY: &str = "POLARS_CLOUD_BROKER_SHUTDOWN_DELAY";

// Settings of logging.
/// `--log-format`.
pub const LOG_FORMAT: &str = "POLARS_CLOUD_LOG_FORMAT";
/// `--log-level`.
pub const LOG: &str = "POLARS_CLOUD_LOG";

// Settings of single commands, and the global --config.
/// `--config`.
pub const AUTH_CONFIG: &str = "POLARS_CLOUD_AUTH_CONFIG";
/// `--min-valid`.
pub const MIN_VALID: &str = "POLARS_CLOUD_MIN_VALID";
/// `--env-token`.
pub const EXEC_ENV_TOKEN: &str = "POLARS_CLOUD_EXEC_ENV_TOKEN";
