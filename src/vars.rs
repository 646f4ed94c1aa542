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
