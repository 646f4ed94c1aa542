//! The realm's endpoints, derived from its issuer as Keycloak lays them out, and the
//! transport check that keeps a secret off plain http.

use super::*;

/// The realm's issuer URL for a Polars Cloud domain.
pub fn issuer_for_domain(domain: &str) -> Result<Url, EndpointError> {
    let raw = format!("https://auth.{domain}/realms/Polars");
    Url::parse(&raw).map_err(|_| EndpointError::BadDomain(domain.to_string()))
}

/// The realm's endpoints, all under its issuer as Keycloak lays them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Url,
    pub token: Url,
}

impl Endpoints {
    /// Endpoints from an issuer, or a token URL given outright.
    pub fn new(issuer: Url, token_url: Option<Url>) -> Result<Self, EndpointError> {
        let issuer = Url::parse(issuer.as_str().trim_end_matches('/'))
            .map_err(|_| EndpointError::BadDomain(issuer.to_string()))?;
        let token = match token_url {
            Some(url) => url,
            None => join(&issuer, "protocol/openid-connect/token"),
        };
        check_transport(&issuer)?;
        check_transport(&token)?;
        Ok(Self { issuer, token })
    }

    /// The revocation endpoint (RFC 7009), Keycloak's path.
    pub fn revocation(&self) -> Url {
        join(&self.issuer, "protocol/openid-connect/revoke")
    }

    /// The device authorization endpoint (RFC 8628), Keycloak's path.
    pub fn device(&self) -> Url {
        join(&self.issuer, "protocol/openid-connect/auth/device")
    }
}

pub(super) fn join(base: &Url, tail: &str) -> Url {
    let mut url = base.clone();
    url.set_path(&format!("{}/{tail}", base.path().trim_end_matches('/')));
    url
}

/// Plain http would hand the secret to anyone on the path; only loopback is allowed.
pub(super) fn check_transport(url: &Url) -> Result<(), EndpointError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(EndpointError::PlainHttp(url.to_string())),
        other => Err(EndpointError::Scheme(other.to_string(), url.to_string())),
    }
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Why the endpoint settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The domain does not make a URL.
    #[error("'{0}' is not a usable domain or issuer URL")]
    BadDomain(String),
    /// http to a non-loopback host.
    #[error("refusing plain http to '{0}': use https (plain http is allowed only to loopback)")]
    PlainHttp(String),
    /// Neither http nor https.
    #[error("unsupported URL scheme '{0}' in '{1}': use https")]
    Scheme(String, String),
}
