//! The HTTP client (rustls, the system roots plus extra CAs, proxies from the
//! environment, no redirects) and one request sent and its reply read to the end.

use super::*;

/// HTTP client settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Extra trusted roots, PEM.
    pub ca_file: Option<PathBuf>,
    /// Extra trusted roots, PEM text.
    pub ca_pem: Option<String>,
    /// The limit for one request, connection included.
    pub timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Builds the HTTP client: rustls with the system roots plus `ca_file`, proxies from the
/// environment (`HTTPS_PROXY`, `NO_PROXY`), no redirects (a token endpoint that redirects
/// is a wrong URL, and a redirected POST would lose its body).
pub fn http_client(settings: &HttpSettings) -> Result<reqwest::Client, HttpError> {
    // reqwest's rustls takes the process default.
    crate::serve::tls::provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("polars-cloud-auth/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .timeout(settings.timeout);
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| HttpError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| HttpError::CaPem { path: path.clone() })?;
        if certs.is_empty() {
            return Err(HttpError::CaPem { path: path.clone() });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = &settings.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or(HttpError::CaPemText)?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(HttpError::Build)
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The CA file could not be read.
    #[error("failed to read CA file '{}'", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("CA file '{}' holds no PEM certificate", path.display())]
    CaPem { path: PathBuf },
    /// The CA text holds no PEM certificate.
    #[error("POLARS_CLOUD_CA_PEM (--ca-pem) holds no PEM certificate")]
    CaPemText,
    /// reqwest refused the configuration.
    #[error("failed to set up the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// A reply read to its end (at most [`MAX_REPLY`] bytes).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
    pub sent_at: SystemTime,
}

/// Sends a request to one of the realm's endpoints and reads the whole reply; only a failure
/// to get an answer is an error here.
pub(crate) async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<Reply, FetchError> {
    let sent_at = SystemTime::now();
    let mut response = request.send().await.map_err(|e| unreachable(url, &e))?;
    let status = response.status();
    let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, &e))? {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(FetchError::Malformed("reply larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        retry_after,
        body,
        sent_at,
    })
}

pub(super) fn unreachable(url: &str, e: &reqwest::Error) -> FetchError {
    let reason = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        format!("connection failed ({})", root_cause(e))
    } else {
        root_cause(e)
    };
    FetchError::Unreachable {
        url: url.to_string(),
        reason,
    }
}

pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

pub(super) fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}
