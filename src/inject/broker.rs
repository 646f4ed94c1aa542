//! Broker-backed pods: our container gets its tokens from the cluster's token broker
//! (`crate::broker`), authenticating with the pod's projected service-account token, so
//! the pod mounts no credentials Secret and its namespace needs none.

use k8s_openapi::api::core::v1::EnvVar;

use super::projected_token::{self, Plan};
use crate::vars;

/// The projected token volume a broker-backed container presents.
pub const VOLUME: &str = "polars-cloud-broker-token";
/// Where our container sees it.
pub const DIR: &str = "/var/run/secrets/polars-cloud-broker";
/// The token's file name in [`DIR`].
pub const FILE: &str = "token";
/// The projected token's life: the API server's minimum, so a deleted pod's token is
/// trusted by the broker for at most this long after its last review.
pub const EXPIRATION_SECONDS: i64 = 600;

/// The broker the injector points pods at.
#[derive(Clone, Debug, PartialEq)]
pub struct Broker {
    /// Its token endpoint, e.g. `https://<release>-polars-cloud-auth-broker.<ns>.svc/token`.
    pub url: String,
    /// The CA its serving certificate is signed by (PEM), passed to our container as
    /// text so that no file needs mounting.
    pub ca_pem: String,
    /// The audience of the projected token.
    pub audience: String,
    pub expiration_seconds: i64,
    /// Pods are broker-backed unless they say otherwise (`polars.cloud/broker`).
    pub default_on: bool,
}

/// What our container gets in a broker-backed pod.
pub fn plan(b: &Broker) -> Plan {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    Plan {
        volume: projected_token::projected_token_volume(
            VOLUME,
            &b.audience,
            b.expiration_seconds,
            FILE,
        ),
        mount: projected_token::projected_token_mount(VOLUME, DIR),
        env: vec![
            env(vars::GRANT, "client-credentials"),
            env(vars::CLIENT_ASSERTION_FILE, &format!("{DIR}/{FILE}")),
            env(vars::TOKEN_URL, &b.url),
            env(vars::CA_PEM, &b.ca_pem),
        ],
    }
}

/// A broker URL must be https (the sidecar sends a credential to it).
pub fn check_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "'{s}' is not https: the broker is called with the pod's service-account token"
        ));
    }
    Ok(s.to_string())
}

/// The CA file's PEM text, checked to hold a certificate.
pub fn read_ca(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read '{}': {e}", path.display()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("'{}' holds no PEM certificate", path.display()));
    }
    Ok(text.trim().to_string() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_backed_container_presents_its_pods_token_and_trusts_the_brokers_ca() {
        let p = plan(&Broker {
            url: "https://b.ns.svc/token".into(),
            ca_pem: "PEM".into(),
            audience: "polars-cloud-auth".into(),
            expiration_seconds: 600,
            default_on: true,
        });
        let v = serde_json::to_value(&p.volume).unwrap();
        assert_eq!(
            v["projected"]["sources"][0]["serviceAccountToken"],
            serde_json::json!({"audience": "polars-cloud-auth", "expirationSeconds": 600, "path": "token"})
        );
        assert_eq!(p.mount.mount_path, DIR);
        assert_eq!(
            p.env_pairs(),
            [
                ("POLARS_CLOUD_GRANT".into(), "client-credentials".into()),
                (
                    "POLARS_CLOUD_CLIENT_ASSERTION_FILE".into(),
                    "/var/run/secrets/polars-cloud-broker/token".into()
                ),
                (
                    "POLARS_CLOUD_TOKEN_URL".into(),
                    "https://b.ns.svc/token".into()
                ),
                ("POLARS_CLOUD_CA_PEM".into(), "PEM".into()),
            ]
        );
    }

    #[test]
    fn the_broker_url_must_be_https() {
        assert!(check_url("https://b.ns.svc/token").is_ok());
        assert!(
            check_url("http://b.ns.svc/token")
                .unwrap_err()
                .contains("not https")
        );
        assert!(check_url("b.ns.svc").is_err());
    }
}
