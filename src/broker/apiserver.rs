//! The one Kubernetes API call the broker makes: `POST .../tokenreviews`.
//!
//! Why not the `kube` client: it added 2.2 MiB to the one binary and 1.4 MiB to the RSS of
//! every sidecar (which never talks to the API server) against the sidecar's 8 MiB goal
//! (docs/benchmarks.md), for a single request with a bearer token. So this module finds
//! the API server as kube-rs does for the two cases the broker meets (in a pod: the
//! service-account mount and `KUBERNETES_SERVICE_HOST`; elsewhere: `KUBECONFIG`'s current
//! context with a token), and sends the review with the binary's own HTTP client, using
//! `k8s-openapi`'s types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenReview;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where a pod's service-account token, CA and namespace are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// A review is a small request to a nearby server: do not let one hang a sidecar's wait.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How the broker authenticates to the API server.
enum Credential {
    /// Re-read at every call: the kubelet rotates a projected token. A failed read keeps
    /// the last good token, as kube's token file does (the kubelet swaps the file).
    File {
        path: PathBuf,
        last: std::sync::Mutex<Option<SecretString>>,
    },
    Token(SecretString),
}

impl Credential {
    fn file(path: PathBuf) -> Self {
        Self::File {
            path,
            last: std::sync::Mutex::new(None),
        }
    }

    fn bearer(&self) -> Result<SecretString, CallError> {
        match self {
            Self::Token(t) => Ok(t.clone()),
            Self::File { path, last } => {
                let read = std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .map(|t| t.trim().to_string())
                    .and_then(|t| {
                        if t.is_empty() {
                            Err("the file is empty".to_string())
                        } else {
                            Ok(SecretString::from(t))
                        }
                    });
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                match (read, last.as_ref()) {
                    (Ok(token), _) => {
                        *last = Some(token.clone());
                        Ok(token)
                    }
                    (Err(e), Some(good)) => {
                        tracing::warn!(path = %path.display(), error = %e, "failed to read the broker's own token; using the last one read");
                        Ok(good.clone())
                    }
                    (Err(reason), None) => Err(CallError::OwnToken {
                        path: path.clone(),
                        reason,
                    }),
                }
            }
        }
    }
}

/// A boxed future, for the object-safe [`Cluster`].
pub type Call<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CallError>> + Send + 'a>>;

/// What the broker's reviewer asks of the cluster: its service-account signing keys and
/// a TokenReview. [`ApiServer`] asks the real API server; a test puts a stand-in here.
pub trait Cluster: Send + Sync {
    /// The service-account signing keys.
    fn jwks(&self) -> Call<'_, super::jwks::KeySet>;
    /// The API server's answer to `review`.
    fn review<'a>(&'a self, review: &'a TokenReview) -> Call<'a, TokenReview>;
}

impl Cluster for ApiServer {
    fn jwks(&self) -> Call<'_, super::jwks::KeySet> {
        Box::pin(ApiServer::jwks(self))
    }

    fn review<'a>(&'a self, review: &'a TokenReview) -> Call<'a, TokenReview> {
        Box::pin(ApiServer::review(self, review))
    }
}

/// Why a call to the API server (a TokenReview, or the service-account signing keys)
/// failed. Each message carries its cause once, in its text: callers log it with `%`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The broker's own token file could not be read, and no earlier token is kept.
    #[error("failed to read the broker's own token '{}': {reason}", path.display())]
    OwnToken { path: PathBuf, reason: String },
    /// The broker's own token cannot be sent as a header (a control character in it).
    #[error("the broker's own token is not a valid header value")]
    OwnTokenHeader,
    /// A path the broker asked for does not make a URL with the API server's.
    #[error("path '{path}': {reason}")]
    Path { path: String, reason: String },
    /// No answer: the connection, TLS or the timeout failed.
    #[error("the API server at {url} did not answer: {reason}")]
    Unreachable { url: url::Url, reason: String },
    /// The answer broke off while its body was read.
    #[error("the API server's answer broke off: {0}")]
    BrokenOff(String),
    /// The answer is over the size the broker reads.
    #[error("the API server's answer at {0} is over 1 MiB")]
    TooLarge(url::Url),
    /// An HTTP error status, with the `message` of the API server's `Status` when it sent one.
    #[error("the API server answered {status} at {url}{}", message_suffix(message))]
    Status {
        status: reqwest::StatusCode,
        url: url::Url,
        message: String,
    },
    /// A success status whose body is not a TokenReview.
    #[error("the API server's answer is not a TokenReview: {0}")]
    NotATokenReview(String),
    /// The discovery document or the key set is unusable.
    #[error(transparent)]
    KeySet(#[from] super::jwks::Error),
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The API server, found once at start.
pub struct ApiServer {
    http: reqwest::Client,
    reviews: url::Url,
    credential: Credential,
}

/// Why the API server cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a pod's service-account files nor a kubeconfig.
    #[error(
        "no Kubernetes API server: not in a pod (no {SERVICE_ACCOUNT_DIR}/token or KUBERNETES_SERVICE_HOST) and KUBECONFIG is not set"
    )]
    NotFound,
    /// A file named by the kubeconfig or the pod (its cause follows in the chain).
    #[error("failed to read '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig is not YAML, has no current context, or names no server.
    #[error("the kubeconfig '{}' is unusable: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    /// The API server's CA (file or inline data) is not PEM.
    #[error("the API server's CA is not PEM: {0}")]
    Ca(String),
    /// reqwest could not build the client (its cause follows in the chain).
    #[error("failed to set up the HTTP client for the API server")]
    Http(#[source] reqwest::Error),
}

/// The parts of a kubeconfig the broker reads.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<ContextRef>>,
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    token: Option<String>,
    /// kubectl writes `tokenFile`.
    #[serde(alias = "tokenFile")]
    token_file: Option<PathBuf>,
}

impl ApiServer {
    /// `KUBECONFIG` when set (a list of files, as kubectl and kube read it), else the
    /// pod's service account.
    pub fn infer() -> Result<Self, Error> {
        match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            Some(list) => Self::from_kubeconfigs(&kubeconfig_paths(&list)),
            None => Self::in_cluster(),
        }
    }

    /// In a pod: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service-account mount.
    pub fn in_cluster() -> Result<Self, Error> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| Error::NotFound)?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let token = dir.join("token");
        if !token.exists() {
            return Err(Error::NotFound);
        }
        let ca = read(&dir.join("ca.crt"))?;
        // An IPv6 address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Self::new(
            &format!("https://{host}:{port}"),
            &ca,
            Credential::file(token),
        )
        .map_err(|e| match e {
            Error::Kubeconfig { message, .. } => Error::Ca(message),
            e => e,
        })
    }

    /// The current context of a kubeconfig, authenticated by a token.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, Error> {
        Self::from_kubeconfigs(&[path.to_path_buf()])
    }

    /// The current context of the kubeconfigs `paths`, merged as kubectl merges the
    /// `KUBECONFIG` list: files that do not exist are skipped, the first file to set
    /// `current-context` (or to name a context, cluster or user) wins, and relative
    /// `certificate-authority` and `tokenFile` paths are relative to the folder of the
    /// file that holds them.
    pub fn from_kubeconfigs(paths: &[PathBuf]) -> Result<Self, Error> {
        let Some(first) = paths.first() else {
            return Err(Error::NotFound);
        };
        let mut existing: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
        if existing.is_empty() {
            // None there: reading the first says which and why.
            existing.push(first);
        }
        let shown = if paths.len() == 1 {
            first.to_path_buf()
        } else {
            PathBuf::from(std::env::join_paths(paths).unwrap_or_default())
        };
        let bad = |message: String| Error::Kubeconfig {
            path: shown.clone(),
            message,
        };
        let mut config = Kubeconfig {
            current_context: None,
            contexts: Vec::new(),
            clusters: Vec::new(),
            users: Vec::new(),
        };
        for path in existing {
            let text = read(path)?;
            let mut one: Kubeconfig =
                serde_saphyr::from_str(&text).map_err(|e| Error::Kubeconfig {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            let dir = path.parent().unwrap_or(Path::new("."));
            for c in &mut one.clusters {
                if let Some(ca) = &mut c.value.certificate_authority {
                    *ca = dir.join(&*ca);
                }
            }
            for u in &mut one.users {
                if let Some(file) = &mut u.value.token_file {
                    *file = dir.join(&*file);
                }
            }
            config.current_context = config.current_context.or(one.current_context);
            config.contexts.extend(one.contexts);
            config.clusters.extend(one.clusters);
            config.users.extend(one.users);
        }
        let current = config
            .current_context
            .ok_or_else(|| bad("no current-context".into()))?;
        let context = config
            .contexts
            .into_iter()
            .find(|c| c.name == current)
            .ok_or_else(|| bad(format!("no context named '{current}'")))?
            .value;
        let cluster = config
            .clusters
            .into_iter()
            .find(|c| c.name == context.cluster)
            .ok_or_else(|| bad(format!("no cluster named '{}'", context.cluster)))?
            .value;
        let user = config
            .users
            .into_iter()
            .find(|u| u.name == context.user)
            .ok_or_else(|| bad(format!("no user named '{}'", context.user)))?
            .value;
        let ca = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|_| bad("certificate-authority-data is not base64".into()))?;
                String::from_utf8(bytes)
                    .map_err(|_| bad("certificate-authority-data is not PEM".into()))?
            }
            (None, Some(file)) => read(file)?,
            (None, None) => String::new(),
        };
        let credential = match (user.token, user.token_file) {
            (Some(t), _) => Credential::Token(t.into()),
            (None, Some(file)) => Credential::file(file),
            (None, None) => {
                return Err(bad(format!(
                    "user '{}' has no token or tokenFile: the broker authenticates with a bearer token",
                    context.user
                )));
            }
        };
        Self::new(&cluster.server, &ca, credential).map_err(|e| match e {
            Error::Kubeconfig { message, .. } => bad(message),
            e => e,
        })
    }

    fn new(server: &str, ca: &str, credential: Credential) -> Result<Self, Error> {
        let bad = |message: String| Error::Kubeconfig {
            path: PathBuf::new(),
            message,
        };
        let base = url::Url::parse(server).map_err(|e| bad(format!("server '{server}': {e}")))?;
        if base.scheme() != "https" {
            return Err(bad(format!(
                "server '{server}' is not https: the broker sends its token there"
            )));
        }
        let reviews = base
            .join(REVIEW_PATH)
            .map_err(|e| bad(format!("server '{server}': {e}")))?;
        crate::serve::tls::provider(); // reqwest's rustls takes the process default
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!(
                "polars-cloud-auth-broker/",
                env!("CARGO_PKG_VERSION")
            ))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT);
        if !ca.trim().is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::Ca("no certificate in it".into()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: builder.build().map_err(Error::Http)?,
            reviews,
            credential,
        })
    }

    /// The keys that sign the cluster's service-account tokens: the discovery document's
    /// `jwks_uri`, fetched from the API server (which serves both to service accounts by
    /// default: the `system:service-account-issuer-discovery` ClusterRole).
    pub async fn jwks(&self) -> Result<super::jwks::KeySet, CallError> {
        use super::jwks;
        let path = match self.get(jwks::DISCOVERY_PATH).await {
            Ok(body) => jwks::jwks_path(&body)?,
            Err(e) => {
                tracing::debug!(error = %e, "no OIDC discovery document; trying the default key set path");
                jwks::JWKS_PATH.to_string()
            }
        };
        let body = self.get(&path).await?;
        Ok(jwks::parse(&body)?)
    }

    /// A GET on the API server with the broker's credential, the body at most 1 MiB.
    async fn get(&self, path: &str) -> Result<Vec<u8>, CallError> {
        const MAX: usize = 1 << 20;
        let url = self.reviews.join(path).map_err(|e| CallError::Path {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let mut response = self
            .http
            .get(url.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization()?)
            .send()
            .await
            .map_err(|e| CallError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::BrokenOff(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX {
                return Err(CallError::TooLarge(url));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(CallError::Status {
                status,
                url,
                message: String::new(),
            });
        }
        Ok(body)
    }

    fn authorization(&self) -> Result<reqwest::header::HeaderValue, CallError> {
        let bearer = self.credential.bearer()?;
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", bearer.expose_secret()))
                .map_err(|_| CallError::OwnTokenHeader)?;
        auth.set_sensitive(true);
        Ok(auth)
    }

    /// Sends a TokenReview and returns the API server's answer.
    pub async fn review(&self, review: &TokenReview) -> Result<TokenReview, CallError> {
        let response = self
            .http
            .post(self.reviews.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization()?)
            .json(review)
            .send()
            .await
            .map_err(|e| CallError::Unreachable {
                url: self.reviews.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::BrokenOff(e.to_string()))?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct Status {
                message: Option<String>,
            }
            let message = serde_json::from_slice::<Status>(&body)
                .ok()
                .and_then(|s| s.message)
                .unwrap_or_default();
            return Err(CallError::Status {
                status,
                url: self.reviews.clone(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| CallError::NotATokenReview(e.to_string()))
    }
}

/// The files of a `KUBECONFIG` list (`:`-separated, `;` on Windows), empty entries left out.
pub fn kubeconfig_paths(list: &std::ffi::OsStr) -> Vec<PathBuf> {
    std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_kubeconfigs_current_context_gives_server_and_token() {
        let d = tempfile::tempdir().unwrap();
        let ok = "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: 'https://127.0.0.1:6443'}\nusers:\n- name: u\n  user: {token: abc}\n";
        let api = ApiServer::from_kubeconfig(&write(d.path(), ok)).unwrap();
        assert_eq!(
            api.reviews.as_str(),
            "https://127.0.0.1:6443/apis/authentication.k8s.io/v1/tokenreviews"
        );
        for (text, want) in [
            (
                ok.replace("current-context: c", "current-context: x"),
                "no context named 'x'",
            ),
            (ok.replace("{token: abc}", "{username: a}"), "has no token"),
            (ok.replace("https://", "http://"), "is not https"),
            (
                ok.replace(
                    "{server: 'https://127.0.0.1:6443'}",
                    "{server: 'https://127.0.0.1:6443', certificate-authority-data: '!!'}",
                ),
                "not base64",
            ),
            ("[".to_string(), "is unusable"),
        ] {
            let e = ApiServer::from_kubeconfig(&write(d.path(), &text))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want) && e.contains("kubeconfig"), "{e}");
        }
    }

    /// Regression (issue 18, item 12): KUBECONFIG was taken as one path.
    #[test]
    fn a_kubeconfig_list_is_merged_as_kubectl_merges_it() {
        let d = tempfile::tempdir().unwrap();
        let users = d.path().join("users.yaml");
        std::fs::write(&users, "users:\n- name: u\n  user: {token: first}\n").unwrap();
        let main = d.path().join("main.yaml");
        std::fs::write(
            &main,
            "current-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: 'https://127.0.0.1:6443'}\nusers:\n- name: u\n  user: {token: second}\n",
        )
        .unwrap();
        let list = std::env::join_paths([&users, &d.path().join("missing.yaml"), &main]).unwrap();
        let paths = kubeconfig_paths(&list);
        assert_eq!(paths.len(), 3);
        let api = ApiServer::from_kubeconfigs(&paths).unwrap();
        assert_eq!(api.reviews.host_str(), Some("127.0.0.1"));
        // The first file to name user 'u' wins.
        use secrecy::ExposeSecret as _;
        assert_eq!(api.credential.bearer().unwrap().expose_secret(), "first");
        // Nothing there: the error names the file.
        let none = [d.path().join("nope.yaml")];
        let e = ApiServer::from_kubeconfigs(&none)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope.yaml"), "{e}");
    }

    /// Regression (issue 18, item 12): relative `certificate-authority` and `tokenFile`
    /// were read from the working directory, and a failed token read failed the review.
    #[test]
    fn relative_paths_are_the_kubeconfigs_and_a_failed_token_read_keeps_the_last() {
        use secrecy::ExposeSecret as _;
        let d = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["kube".into()]).unwrap();
        std::fs::write(d.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(d.path().join("token"), "tok-1\n").unwrap();
        let text = "current-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.pem}\nusers:\n- name: u\n  user: {tokenFile: token}\n";
        let api = ApiServer::from_kubeconfig(&write(d.path(), text)).unwrap();
        assert_eq!(api.credential.bearer().unwrap().expose_secret(), "tok-1");
        // The kubelet-style swap: for a moment the file is gone, then a new token.
        std::fs::remove_file(d.path().join("token")).unwrap();
        assert_eq!(api.credential.bearer().unwrap().expose_secret(), "tok-1");
        std::fs::write(d.path().join("token"), "tok-2").unwrap();
        assert_eq!(api.credential.bearer().unwrap().expose_secret(), "tok-2");
        // Never read at all: the error names the file, and holds no token.
        std::fs::remove_file(d.path().join("token")).unwrap();
        let fresh = ApiServer::from_kubeconfig(&write(d.path(), text)).unwrap();
        let e = fresh.credential.bearer().unwrap_err().to_string();
        assert!(
            e.contains(&*d.path().join("token").to_string_lossy()),
            "{e}"
        );
    }
}
