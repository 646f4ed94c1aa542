//! Resolution: the merged argument groups turned into the settings the modes run with,
//! defaults applied and every value checked, with messages naming the flag, its variable
//! and the config file's key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::args::*;
use crate::inject;
use crate::renew::Policy;
use crate::sink::TokenFile;
use crate::source::client_assertion::Assertion;
use crate::source::credentials::{self, Credentials};
use crate::source::{self, ClientAuth, Endpoints, Grant, HttpSettings};
use crate::vars;

/// `flags` with every unset field taken from `file`.
pub fn overlay<T: Serialize + DeserializeOwned>(flags: &T, file: &T) -> Result<T, Error> {
    let mut merged = serde_json::to_value(file).map_err(Error::merge)?;
    let top = serde_json::to_value(flags).map_err(Error::merge)?;
    if let (Some(base), serde_json::Value::Object(over)) = (merged.as_object_mut(), top) {
        base.extend(over);
    }
    serde_json::from_value(merged).map_err(Error::merge)
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
            earliest: d.earliest,
        }
    }

    pub fn deadline(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(60))
    }
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
            Some(a) => inject::projected_token::check_audience(a).map_err(|e| {
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
                inject::projected_token::check_audience,
            )?,
            broker: self.broker_settings()?,
            issuer_ca_pem: self
                .issuer_ca_file
                .as_deref()
                .map(inject::broker::read_ca)
                .transpose()
                .map_err(|e| {
                    Error::Invalid(format!(
                        "--issuer-ca-file ({}): {e}",
                        vars::INJECT_ISSUER_CA_FILE
                    ))
                })?,
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
