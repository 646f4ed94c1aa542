//! The token broker: the one place in a cluster that holds the Polars Cloud credentials.
//!
//! Broker-backed sidecars authenticate with their pod's projected service-account token
//! (audience [`crate::config::DEFAULT_BROKER_AUDIENCE`]) as an RFC 7523 client assertion on a
//! `client_credentials` request, the same request our binary sends to Keycloak with
//! `--client-assertion-file`. The broker has the API server review the token
//! ([`review`]), looks the service account up in its policy ([`policy`]) and answers with
//! the access token of that credential's one renewing session ([`keeper`]). It never
//! hands out a refresh token, and the app namespaces hold no Secret of ours.

pub mod api;
pub mod apiserver;
pub mod jwks;
pub mod keeper;
pub mod policy;
pub mod review;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::IdpArgs;
use crate::renew::Policy as RenewPolicy;
use crate::source::credentials::{Credentials, Sources};
use crate::token::AccessToken;
use keeper::Keeper;
use policy::{Identity, Policy};
use review::{Refusal, Reviewer};

/// The broker's token endpoint path.
pub const TOKEN_PATH: &str = "/token";
/// The policy file is looked at (one `stat`) at most this often.
const POLICY_CHECK: Duration = Duration::from_secs(1);

/// What the broker is started with.
pub struct Settings {
    pub policy_file: PathBuf,
    pub audience: String,
    /// The identity provider, shared by every credential; each credential brings its own
    /// `client_id` and `client_secret`.
    pub idp: IdpArgs,
    pub renew: RenewPolicy,
}

/// The answer to one token request.
pub enum Outcome {
    /// The caller's service account may have this credential's token.
    Granted {
        who: Identity,
        credential: String,
        token: AccessToken,
    },
    /// A refusal the sidecar must act on (OAuth error, HTTP 400 or 401 or 403).
    Refused {
        status: u16,
        error: &'static str,
        description: String,
        who: Option<Identity>,
    },
    /// Try again: the API server or the identity provider cannot answer now (HTTP 503).
    Unavailable { description: String },
}

/// Requests by outcome, for `/metrics`.
#[derive(Default)]
pub struct Counts {
    pub granted: AtomicU64,
    pub invalid_request: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub not_granted: AtomicU64,
    pub unavailable: AtomicU64,
    pub policy_reloads: AtomicU64,
    pub policy_reload_failures: AtomicU64,
}

/// The policy in force and a keeper per credential it names.
struct Loaded {
    policy: Arc<Policy>,
    keepers: BTreeMap<String, Arc<Keeper>>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// What tells a changed policy file (a ConfigMap volume swaps its `..data` link).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

pub struct Broker {
    settings: Settings,
    reviewer: Reviewer,
    loaded: Mutex<Loaded>,
    cancel: CancellationToken,
    pub counts: Counts,
}

/// Why the broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file is unreadable or invalid.
    #[error(transparent)]
    Policy(#[from] policy::Error),
    /// A credential's settings do not make a token source (its cause follows in the chain).
    #[error("failed to set up the token source of credential '{credential}'")]
    Source {
        credential: String,
        #[source]
        source: crate::config::Error,
    },
}

impl Broker {
    /// Loads the policy and starts a keeper per credential (each signs in once now).
    pub fn start(
        settings: Settings,
        api: impl apiserver::Cluster + 'static,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let stamp = stamp(&settings.policy_file);
        let policy = Policy::load(&settings.policy_file)?;
        let reviewer = Reviewer::new(api, settings.audience.clone());
        let broker = Self {
            reviewer,
            loaded: Mutex::new(Loaded {
                policy: Arc::new(Policy::default()),
                keepers: BTreeMap::new(),
                stamp,
                checked: Instant::now(),
            }),
            cancel,
            counts: Counts::default(),
            settings,
        };
        let keepers = broker.keepers_for(&policy, &BTreeMap::new())?;
        if let Ok(mut loaded) = broker.loaded.lock() {
            loaded.policy = Arc::new(policy);
            loaded.keepers = keepers;
        }
        Ok(broker)
    }

    /// The keepers `policy` needs: the ones already running for an unchanged credential,
    /// new ones for the rest.
    fn keepers_for(
        &self,
        policy: &Policy,
        running: &BTreeMap<String, (Arc<Keeper>, policy::CredentialSpec)>,
    ) -> Result<BTreeMap<String, Arc<Keeper>>, Error> {
        let mut keepers = BTreeMap::new();
        for (name, spec) in policy.credentials() {
            if let Some((keeper, old)) = running.get(name)
                && old == spec
            {
                keepers.insert(name.clone(), keeper.clone());
                continue;
            }
            let credentials = Credentials::from_sources(Sources {
                credentials_dir: Some(spec.dir.clone()),
                ..Sources::default()
            });
            let source = self
                .settings
                .idp
                .source_with(credentials)
                .map_err(|source| Error::Source {
                    credential: name.clone(),
                    source,
                })?;
            // The keeper adds its own lead for the token's life (keeper::lead); a fixed
            // one here would override it for short lives (issue 18, item 7).
            keepers.insert(
                name.clone(),
                Arc::new(Keeper::start(
                    name,
                    source,
                    self.settings.renew.clone(),
                    &self.cancel,
                )),
            );
        }
        Ok(keepers)
    }

    /// The policy in force, re-read first when the file changed (at most once per
    /// [`POLICY_CHECK`]). A file that no longer loads keeps the last good policy.
    fn current(&self) -> (Arc<Policy>, BTreeMap<String, Arc<Keeper>>) {
        let Ok(mut loaded) = self.loaded.lock() else {
            return (Arc::new(Policy::default()), BTreeMap::new());
        };
        if loaded.checked.elapsed() >= POLICY_CHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.settings.policy_file);
            if now != loaded.stamp {
                loaded.stamp = now;
                self.reload(&mut loaded);
            }
        }
        (loaded.policy.clone(), loaded.keepers.clone())
    }

    fn reload(&self, loaded: &mut Loaded) {
        let result = Policy::load(&self.settings.policy_file).and_then(|policy| {
            let running = loaded
                .keepers
                .iter()
                .filter_map(|(name, k)| {
                    let spec = loaded.policy.credentials().get(name)?.clone();
                    Some((name.clone(), (k.clone(), spec)))
                })
                .collect();
            self.keepers_for(&policy, &running)
                .map_err(|e| policy::Error::Invalid {
                    path: self.settings.policy_file.clone(),
                    message: e.to_string(),
                })
                .map(|keepers| (policy, keepers))
        });
        match result {
            Ok((policy, keepers)) => {
                self.counts.policy_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    credentials = policy.credentials().len(),
                    "broker policy reloaded"
                );
                loaded.policy = Arc::new(policy);
                loaded.keepers = keepers;
            }
            Err(e) => {
                self.counts
                    .policy_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "broker policy not reloaded; the last good one stays in force");
            }
        }
    }

    /// Answers one token request carrying `assertion`.
    pub async fn grant(&self, assertion: &str) -> Outcome {
        let who = match self.reviewer.verify(assertion).await {
            Ok(Ok(who)) => who,
            Ok(Err(refusal)) => return self.refused_token(refusal),
            Err(throttled @ review::Unavailable::Throttled(_)) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %throttled, "token review not sent");
                return Outcome::Unavailable {
                    description: throttled.to_string(),
                };
            }
            Err(unavailable) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %unavailable, "token review failed");
                return Outcome::Unavailable {
                    description: "the broker could not have the token reviewed by the Kubernetes API server; retry shortly".into(),
                };
            }
        };
        let (policy, keepers) = self.current();
        let credential = match policy.decide(&who) {
            Ok(c) => c.to_string(),
            Err(not) => {
                self.counts.not_granted.fetch_add(1, Ordering::Relaxed);
                return Outcome::Refused {
                    status: 403,
                    error: "access_denied",
                    description: not.to_string(),
                    who: Some(who),
                };
            }
        };
        let Some(keeper) = keepers.get(&credential) else {
            self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return Outcome::Unavailable {
                description: format!("credential '{credential}' is not ready"),
            };
        };
        match keeper.token(&credential).await {
            Ok(token) => {
                self.counts.granted.fetch_add(1, Ordering::Relaxed);
                Outcome::Granted {
                    who,
                    credential,
                    token,
                }
            }
            Err(e) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                Outcome::Unavailable {
                    description: e.to_string(),
                }
            }
        }
    }

    fn refused_token(&self, refusal: Refusal) -> Outcome {
        self.counts.unauthenticated.fetch_add(1, Ordering::Relaxed);
        Outcome::Refused {
            status: 401,
            error: "invalid_client",
            description: refusal.to_string(),
            who: None,
        }
    }

    /// A request that is not a client-assertion `client_credentials` request.
    pub fn invalid_request(&self, error: &'static str, description: String) -> Outcome {
        self.counts.invalid_request.fetch_add(1, Ordering::Relaxed);
        Outcome::Refused {
            // RFC 6749 section 5.2: a client that failed to authenticate gets 401.
            status: if error == "invalid_client" { 401 } else { 400 },
            error,
            description,
            who: None,
        }
    }

    pub fn reviewer(&self) -> &Reviewer {
        &self.reviewer
    }

    /// Each credential's keeper, for `/metrics`.
    pub fn keepers(&self) -> BTreeMap<String, Arc<Keeper>> {
        self.current().1
    }
}

#[cfg(test)]
mod tests;
