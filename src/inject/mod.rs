//! Pod injection: one pure function from a pod (its metadata and spec, typed by
//! k8s-openapi) and the settings to a JSON patch that gives the pod a fresh Polars Cloud
//! token file. The webhook and `inject` are two front ends over it.
//!
//! The patch is a list of targeted `add` operations rather than a diff of a re-serialized
//! pod, so fields that the k8s-openapi types do not know (a newer API server's) are never
//! dropped. Operations on existing containers come first, addressed by their original
//! index; insertions (our init container goes first) come after.

pub mod assertion;
pub mod broker;
pub mod quantity;
pub mod relay;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::ValueEnum;
use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    HTTPGetAction, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::values::{Fraction, HumanDuration};
use crate::vars;

/// The label a pod (template) carries to ask for a token. The webhook's objectSelector
/// matches it, so other pods never reach the webhook.
pub const INJECT_LABEL: &str = "polars.cloud/inject";
/// Set on injected pods (value: our version); a second pass then only adds what is
/// missing, which is nothing unless another webhook added a container since.
pub const INJECTED_ANNOTATION: &str = "polars.cloud/injected";

/// Per-pod overrides of the settings.
pub mod annotation {
    pub const SECRET_NAME: &str = "polars.cloud/secret-name";
    pub const TOKEN_PATH: &str = "polars.cloud/token-path";
    pub const MODE: &str = "polars.cloud/mode";
    pub const SKIP_CONTAINERS: &str = "polars.cloud/skip-containers";
    pub const IMAGE: &str = "polars.cloud/image";
    pub const CPU_REQUEST: &str = "polars.cloud/cpu-request";
    pub const MEMORY_REQUEST: &str = "polars.cloud/memory-request";
    pub const MEMORY_LIMIT: &str = "polars.cloud/memory-limit";
    pub const MIN_VALID: &str = "polars.cloud/min-valid";
    pub const RENEW_AT: &str = "polars.cloud/renew-at";
    pub const RELAY: &str = "polars.cloud/relay";
    pub const ALLOW_SHARED_PROCESSES: &str = "polars.cloud/allow-shared-processes";
    /// A projected service-account token for this audience authenticates the client
    /// instead of the credentials Secret (see `inject::assertion`).
    pub const CLIENT_ASSERTION_AUDIENCE: &str = "polars.cloud/client-assertion-audience";
    /// `"true"` or `"false"`: whether our container gets its tokens from the cluster's
    /// token broker (see `inject::broker`).
    pub const BROKER: &str = "polars.cloud/broker";

    /// Every annotation we read, for the warning about unknown ones.
    pub const ALL: [&str; 14] = [
        SECRET_NAME,
        TOKEN_PATH,
        MODE,
        SKIP_CONTAINERS,
        IMAGE,
        CPU_REQUEST,
        MEMORY_REQUEST,
        MEMORY_LIMIT,
        MIN_VALID,
        RENEW_AT,
        RELAY,
        ALLOW_SHARED_PROCESSES,
        CLIENT_ASSERTION_AUDIENCE,
        BROKER,
    ];
}

/// The in-memory volume holding the token file.
pub const TOKEN_VOLUME: &str = "polars-cloud-token";
/// The credentials Secret's volume, mounted into our container only.
pub const CREDENTIALS_VOLUME: &str = "polars-cloud-credentials";
/// Where our container reads the credentials (`client_id`, `client_secret`).
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/polars-cloud";
/// Our container: the native sidecar, the classic sidecar, or the init-only container.
pub const CONTAINER: &str = "polars-cloud-auth";
/// The init container that writes the first token before a classic sidecar.
pub const INIT_CONTAINER: &str = "polars-cloud-auth-init";
/// The sidecar's port for /healthz, /readyz and /metrics.
pub const SIDECAR_PORT: i32 = 8471;
const PORT_NAME: &str = "pca-http";
/// The binary inside the image (its ENTRYPOINT); exec probes need the path.
pub const ENTRYPOINT: &str = "/usr/local/bin/polars-cloud-auth";
/// The image's non-root user and group.
pub const RUN_AS: i64 = 65532;
/// The credentials Secret's default name.
pub const DEFAULT_SECRET_NAME: &str = "polars-cloud-credentials";

/// The default image of the injected containers: this very version.
pub fn default_image() -> String {
    format!("polars-cloud-auth:{}", env!("CARGO_PKG_VERSION"))
}

/// How the token gets into the pod.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A native sidecar (Kubernetes >= 1.29): an init container with `restartPolicy:
    /// Always` whose startup probe holds back the app containers until a token exists.
    #[default]
    Native,
    /// An init container for the first token and a regular sidecar container that keeps
    /// it fresh, for clusters without native sidecars.
    Classic,
    /// One init container that fetches the token once, for work that ends before the
    /// token expires.
    InitOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Classic => "classic",
            Mode::InitOnly => "init-only",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("'{s}' is not a mode; use native, classic or init-only"))
    }
}

/// An absolute token file path with at least one directory (the volume's mount point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPath(String);

impl TokenPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{s}' is not an absolute file path below a directory; write e.g. /var/run/polars-cloud/token"
            )
        };
        let rest = s.strip_prefix('/').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(char::is_whitespace))
            || s.contains(':')
        {
            return Err(bad());
        }
        let path = Self(s.to_string());
        let dir = path.dir();
        let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        for ours in [
            CREDENTIALS_DIR,
            relay::CLIENT_DIR,
            crate::relay::DEFAULT_STATE_DIR,
        ] {
            if inside(dir, ours) || inside(ours, dir) {
                return Err(format!(
                    "'{s}' puts the token volume at {dir}, which overlaps polars-cloud-auth's mount {ours}; choose another directory"
                ));
            }
        }
        // A volume mounted there would hide the image's own files: programs (ours among
        // them), libraries, the CA bundle, or the kernel's interfaces.
        const SYSTEM: [&str; 12] = [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
            "/dev", "/sys", "/boot",
        ];
        if let Some(system) = SYSTEM.iter().find(|sys| inside(dir, sys)) {
            return Err(format!(
                "'{s}' puts the token volume at {dir}, inside {system}, where it would hide the image's own files; choose a directory such as /var/run/polars-cloud"
            ));
        }
        Ok(path)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory: the token volume's mount point.
    pub fn dir(&self) -> &str {
        self.0.rsplit_once('/').map_or("/", |(d, _)| d)
    }
}

impl Default for TokenPath {
    fn default() -> Self {
        Self(crate::sink::file::DEFAULT_POD_PATH.to_string())
    }
}

/// What to inject. The defaults come from the flags (or the webhook's environment);
/// a pod's annotations override them.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub image: String,
    pub secret_name: String,
    pub mode: Mode,
    pub token_path: TokenPath,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// `POLARS_CLOUD_DOMAIN` of our containers.
    pub domain: Option<String>,
    /// `POLARS_CLOUD_ISSUER` of our containers.
    pub issuer: Option<String>,
    /// The native sidecar's startup probe passes once the token is valid this long
    /// (`None`: the probe's default, 30 s but at most a tenth of the token's life).
    pub min_valid: Option<Duration>,
    /// `POLARS_CLOUD_RENEW_AT` of the sidecar (its own default when unset).
    pub renew_at: Option<f64>,
    /// The relay: the app's own client refreshes through our container (see
    /// `crate::relay`). Without it the app gets the token file only.
    pub relay: bool,
    /// The audience of a projected service-account token that authenticates our
    /// container's client (a client assertion) instead of the credentials Secret; for a
    /// confidential client in a realm the user controls (`POLARS_CLOUD_ISSUER`).
    pub client_assertion_audience: Option<String>,
    /// The token broker, when the cluster runs one: pods are then broker-backed (unless
    /// they opt out, or name their own client-assertion audience).
    pub broker: Option<broker::Broker>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: default_image(),
            secret_name: DEFAULT_SECRET_NAME.to_string(),
            mode: Mode::Native,
            token_path: TokenPath::default(),
            cpu_request: "5m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "32Mi".into(),
            domain: None,
            issuer: None,
            min_valid: None,
            renew_at: None,
            relay: true,
            client_assertion_audience: None,
            broker: None,
        }
    }
}

/// Checks of single values, shared by the annotations and the flags. Each returns why
/// the value is unusable, naming the value and what to write instead.
pub mod check {
    use super::*;

    pub fn image(s: &str) -> Result<String, String> {
        if s.is_empty() || s.contains(char::is_whitespace) || s.len() > 1024 {
            return Err(format!(
                "'{s}' is not an image reference; write e.g. polars-cloud-auth:{}",
                env!("CARGO_PKG_VERSION")
            ));
        }
        Ok(s.to_string())
    }

    /// A Secret name is a DNS subdomain: lowercase letters, digits, '-' and '.'.
    pub fn secret_name(s: &str) -> Result<String, String> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(format!(
                "'{s}' is not a Secret name (lowercase letters, digits, '-' and '.'); write e.g. {DEFAULT_SECRET_NAME}"
            ));
        }
        Ok(s.to_string())
    }

    pub fn quantity(s: &str) -> Result<String, String> {
        super::quantity::parse(s).map(|_| s.to_string())
    }

    pub fn domain(s: &str) -> Result<String, String> {
        if s.is_empty()
            || s.contains("://")
            || s.contains(['/', ' '])
            || !s.contains('.')
            || s.len() > 253
        {
            return Err(format!(
                "'{s}' is not a domain name; write e.g. prd.cloud.pola.rs (no scheme, no path)"
            ));
        }
        Ok(s.to_string())
    }

    pub fn issuer(s: &str) -> Result<String, String> {
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
                Ok(s.to_string())
            }
            _ => Err(format!(
                "'{s}' is not an http(s) issuer URL; write e.g. https://auth.prd.cloud.pola.rs/realms/Polars"
            )),
        }
    }

    pub fn min_valid(s: &str) -> Result<Duration, String> {
        let d = s.parse::<HumanDuration>()?.0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "'{s}' is out of range; write a duration between 1s and 24h, e.g. 30s"
            ));
        }
        Ok(d)
    }

    pub fn renew_at(s: &str) -> Result<f64, String> {
        s.parse::<Fraction>().map(|f| f.0).map_err(|e| {
            format!("{e}; write the fraction of the token's life after which to renew, e.g. 0.8")
        })
    }

    pub fn mode(s: &str) -> Result<Mode, String> {
        Mode::parse(s)
    }

    pub fn switch(s: &str) -> Result<bool, String> {
        match s {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("'{s}' is neither \"true\" nor \"false\"")),
        }
    }

    pub fn token_path(s: &str) -> Result<TokenPath, String> {
        TokenPath::parse(s)
    }
}

/// Why a pod cannot be injected. The message is what `kubectl` shows the user: it says
/// what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    /// A per-pod annotation holds a value we cannot use.
    #[error("annotation {key}: {reason}")]
    Annotation { key: &'static str, reason: String },
    /// The memory request of our container exceeds its limit.
    #[error(
        "the memory request {request} of the polars-cloud-auth container is above its memory limit {limit}; raise the annotation polars.cloud/memory-limit or lower polars.cloud/memory-request"
    )]
    RequestAboveLimit { request: String, limit: String },
    /// `skip-containers` names a container the pod does not have.
    #[error(
        "annotation polars.cloud/skip-containers names '{name}', which is not a container of this pod (its containers: {available}); correct or remove that name"
    )]
    UnknownSkip { name: String, available: String },
    /// One of our volume names is already used by the pod.
    #[error(
        "the pod already has a volume named '{0}', a name polars-cloud-auth needs; rename that volume, or remove the label polars.cloud/inject if the pod brings its own token setup"
    )]
    VolumeTaken(String),
    /// One of our container names is already used by the pod.
    #[error(
        "the pod already has a container named '{0}', a name polars-cloud-auth needs; rename that container, or remove the label polars.cloud/inject if the pod brings its own token setup"
    )]
    ContainerTaken(String),
    /// An app container already mounts something where the token volume goes.
    #[error(
        "container '{container}' already mounts a volume at {path}, where the token volume goes; set the annotation polars.cloud/token-path to a file in another directory, or list the container in polars.cloud/skip-containers"
    )]
    MountPathTaken { container: String, path: String },
    /// An app container sets the token path variable to something else.
    #[error(
        "container '{container}' sets POLARS_CLOUD_ACCESS_TOKEN_PATH to '{found}' but the token file will be '{want}'; remove that variable, or set the annotation polars.cloud/token-path to '{found}'"
    )]
    EnvConflict {
        container: String,
        found: String,
        want: String,
    },
    /// An app container declares the sidecar's port.
    #[error(
        "container '{container}' uses port {port}, where the polars-cloud-auth sidecar listens; move that container to another port, or set the annotation polars.cloud/mode: init-only"
    )]
    PortTaken { container: String, port: i32 },
    /// An app container sets a variable the relay must set itself.
    #[error(
        "container '{container}' sets {name} to '{found}', but its Polars Cloud client must get '{want}' to renew its token through polars-cloud-auth; remove that variable, or set the annotation polars.cloud/relay: \"false\" (the container then gets the token file only)"
    )]
    RelayEnvConflict {
        container: String,
        name: &'static str,
        found: String,
        want: String,
    },
    /// The pod's sysctl keeps our container from binding port 443.
    #[error(
        "the pod sets the sysctl net.ipv4.ip_unprivileged_port_start to {found}, but polars-cloud-auth's relay needs it at most 443 to serve the app's token refreshes on port 443; lower it, or set the annotation polars.cloud/relay: \"false\""
    )]
    SysctlConflict { found: String },
    /// The pod shares process namespaces, so its other containers could read our
    /// container's files, the credentials among them, through /proc.
    #[error(
        "the pod sets {field}: true, so its other containers can read the polars-cloud-auth container's files, the client secret among them, through /proc/<pid>/root; remove {field}, or accept that risk with the annotation polars.cloud/allow-shared-processes: \"true\""
    )]
    SharedProcesses { field: &'static str },
    /// The pod is not for Linux.
    #[error(
        "the pod is for {0} (spec.os.name) but polars-cloud-auth runs on linux only; remove the label polars.cloud/inject"
    )]
    UnsupportedOs(String),
}

/// The result of a successful injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What to add, relative to the pod (`/metadata`, `/spec`); empty when the pod already
    /// has everything.
    pub patch: Patch,
    /// The mode in effect for this pod.
    pub mode: Mode,
    /// Things the user should know that do not stop the injection (shown by kubectl as
    /// warnings).
    pub warnings: Vec<String>,
}

/// Whether the pod (template) asks for a token: label `polars.cloud/inject: "true"`.
pub fn opted_in(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "true")
}

/// The settings in effect for one pod, after its annotations.
struct Effective {
    settings: Settings,
    skip: BTreeSet<String>,
    warnings: Vec<String>,
}

fn effective(
    defaults: &Settings,
    ann: &BTreeMap<String, String>,
) -> Result<Effective, InjectError> {
    fn get<'a>(ann: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
        ann.get(key).map(|v| v.trim())
    }
    fn apply<T>(
        ann: &BTreeMap<String, String>,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
        slot: &mut T,
    ) -> Result<(), InjectError> {
        if let Some(v) = get(ann, key) {
            *slot = parse(v).map_err(|reason| InjectError::Annotation { key, reason })?;
        }
        Ok(())
    }
    use annotation as a;
    let mut s = defaults.clone();
    apply(ann, a::SECRET_NAME, check::secret_name, &mut s.secret_name)?;
    apply(ann, a::TOKEN_PATH, check::token_path, &mut s.token_path)?;
    apply(ann, a::MODE, check::mode, &mut s.mode)?;
    apply(ann, a::IMAGE, check::image, &mut s.image)?;
    apply(ann, a::CPU_REQUEST, check::quantity, &mut s.cpu_request)?;
    apply(
        ann,
        a::MEMORY_REQUEST,
        check::quantity,
        &mut s.memory_request,
    )?;
    apply(ann, a::MEMORY_LIMIT, check::quantity, &mut s.memory_limit)?;
    apply(
        ann,
        a::MIN_VALID,
        |v| check::min_valid(v).map(Some),
        &mut s.min_valid,
    )?;
    apply(ann, a::RELAY, check::switch, &mut s.relay)?;
    apply(
        ann,
        a::CLIENT_ASSERTION_AUDIENCE,
        |v| assertion::check_audience(v).map(Some),
        &mut s.client_assertion_audience,
    )?;
    match &mut s.broker {
        Some(b) => apply(ann, a::BROKER, check::switch, &mut b.default_on)?,
        None if get(ann, a::BROKER) == Some("true") => {
            return Err(InjectError::Annotation {
                key: a::BROKER,
                reason: "this injector knows no token broker: install the chart with broker.enabled=true, or give `inject` --broker-url and --broker-ca-file".into(),
            });
        }
        None => apply(ann, a::BROKER, check::switch, &mut false)?,
    }
    let mut renew_at = s.renew_at.unwrap_or_default();
    apply(ann, a::RENEW_AT, check::renew_at, &mut renew_at)?;
    if get(ann, a::RENEW_AT).is_some() {
        s.renew_at = Some(renew_at);
    }
    check_limits(&s)?;
    let skip = get(ann, a::SKIP_CONTAINERS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();

    let mut warnings = Vec::new();
    for key in ann.keys() {
        if key.starts_with("polars.cloud/")
            && key != INJECTED_ANNOTATION
            && !a::ALL.contains(&key.as_str())
        {
            let hint = match closest(key) {
                Some(known) => format!("did you mean {known}?"),
                None => format!(
                    "known: {}",
                    a::ALL
                        .map(|k| k.trim_start_matches("polars.cloud/"))
                        .join(", ")
                ),
            };
            warnings.push(format!(
                "annotation {key} is unknown and has no effect; {hint}"
            ));
        }
    }
    let unused = |key: &str| format!("annotation {key} has no effect in mode {}", s.mode.as_str());
    if s.mode != Mode::Native && get(ann, a::MIN_VALID).is_some() {
        warnings.push(unused(a::MIN_VALID));
    }
    if s.mode == Mode::InitOnly && get(ann, a::RENEW_AT).is_some() {
        warnings.push(unused(a::RENEW_AT));
    }
    Ok(Effective {
        settings: s,
        skip,
        warnings,
    })
}

/// The known annotation a mistyped one most likely meant (a few edits away).
fn closest(key: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }
    annotation::ALL
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// The API server refuses a container whose memory request exceeds its limit; say so
/// before it does, naming the annotations.
pub fn check_limits(s: &Settings) -> Result<(), InjectError> {
    let request = quantity::parse(&s.memory_request).unwrap_or(0.0);
    let limit = quantity::parse(&s.memory_limit).unwrap_or(f64::INFINITY);
    if request > limit {
        return Err(InjectError::RequestAboveLimit {
            request: s.memory_request.clone(),
            limit: s.memory_limit.clone(),
        });
    }
    Ok(())
}

fn pointer<'t>(tokens: impl IntoIterator<Item = Token<'t>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // k8s-openapi types always serialize to JSON.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Adds what the pod lacks to get its token. Pure: the same pod and settings always
/// give the same patch, and a patched pod gives an empty one.
pub fn inject(
    meta: &ObjectMeta,
    spec: &PodSpec,
    defaults: &Settings,
) -> Result<Outcome, InjectError> {
    let empty = BTreeMap::new();
    let ann = meta.annotations.as_ref().unwrap_or(&empty);
    let Effective {
        settings: s,
        skip,
        mut warnings,
    } = effective(defaults, ann)?;
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        return Err(InjectError::UnsupportedOs(os.name.clone()));
    }
    let allow_shared = match ann.get(annotation::ALLOW_SHARED_PROCESSES) {
        Some(v) => check::switch(v.trim()).map_err(|reason| InjectError::Annotation {
            key: annotation::ALLOW_SHARED_PROCESSES,
            reason,
        })?,
        None => false,
    };
    for (field, set) in [
        ("spec.shareProcessNamespace", spec.share_process_namespace),
        ("spec.hostPID", spec.host_pid),
    ] {
        if set == Some(true) {
            if !allow_shared {
                return Err(InjectError::SharedProcesses { field });
            }
            warnings.push(format!(
                "{field} is true and polars.cloud/allow-shared-processes accepts it: the pod's other containers can read the client secret through /proc"
            ));
        }
    }
    if spec.host_network == Some(true) {
        warnings.push(format!(
            "hostNetwork pods get the sidecar's listener on the node's port {SIDECAR_PORT}: two such pods on one node collide; set polars.cloud/mode: init-only, or run the pod without hostNetwork"
        ));
    }
    let marked = ann.contains_key(INJECTED_ANNOTATION);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let main = spec.containers.as_slice();
    let is_ours = |name: &str| name == CONTAINER || name == INIT_CONTAINER;

    // Our containers are there (a second pass) or their names are taken.
    let ephemeral = spec.ephemeral_containers.as_deref().unwrap_or_default();
    let taken = init
        .iter()
        .chain(main)
        .map(|c| c.name.as_str())
        .chain(ephemeral.iter().map(|c| c.name.as_str()))
        .find(|n| is_ours(n));
    if let (Some(name), false) = (taken, marked) {
        return Err(InjectError::ContainerTaken(name.to_string()));
    }
    let add_containers = taken.is_none();

    // The app containers: every container but ours, with its list and index there.
    let apps = || {
        init.iter()
            .enumerate()
            .map(|(i, c)| ("initContainers", i, c))
            .chain(main.iter().enumerate().map(|(i, c)| ("containers", i, c)))
            .filter(|(_, _, c)| !is_ours(&c.name))
    };
    for name in &skip {
        if !apps().any(|(_, _, c)| &c.name == name) {
            let available: Vec<&str> = apps().map(|(_, _, c)| c.name.as_str()).collect();
            return Err(InjectError::UnknownSkip {
                name: name.clone(),
                available: available.join(", "),
            });
        }
    }

    // The relay needs the pod's own network namespace and /etc/hosts.
    let relay_on = s.relay && !spec.host_network.unwrap_or(false);
    if s.relay && !relay_on {
        warnings.push(
            "hostNetwork pods get the token file only (no relay): their Polars Cloud client cannot renew its token; set polars.cloud/relay: \"false\" to silence this".into(),
        );
    }
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    // With a client assertion, to the realm or to the broker, our container needs no
    // credentials Secret at all. A pod's own realm audience wins over the broker.
    let assertion = assertion::plan(s.client_assertion_audience.as_deref())
        .or_else(|| s.broker.as_ref().filter(|b| b.default_on).map(broker::plan));
    let mut ours = vec![
        TOKEN_VOLUME,
        match &assertion {
            Some(plan) => plan.volume.name.as_str(),
            None => CREDENTIALS_VOLUME,
        },
    ];
    if relay_on {
        ours.extend([relay::CLIENT_VOLUME, relay::STATE_VOLUME]);
    }
    for name in ours {
        if !marked && volumes.iter().any(|v| v.name == name) {
            return Err(InjectError::VolumeTaken(name.to_string()));
        }
    }
    let sysctl = if relay_on && s.mode != Mode::InitOnly {
        relay::sysctl(spec)?
    } else {
        None
    };
    let real_domain = s.domain.as_deref().unwrap_or(crate::source::DEFAULT_DOMAIN);

    if add_containers && s.mode != Mode::InitOnly {
        for (_, _, c) in apps() {
            if let Some(p) = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.container_port == SIDECAR_PORT)
            {
                return Err(InjectError::PortTaken {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
        }
    }

    let mut ops = Vec::new();
    let token_dir = s.token_path.dir();
    let mut served_apps: Vec<&Container> = Vec::new();
    // Existing containers first, by their original index, before any insertion.
    for (list, i, c) in apps() {
        if skip.contains(&c.name) {
            continue;
        }
        let base = |field: &'static str| {
            pointer([
                Token::new("spec"),
                Token::new(list),
                Token::from(i),
                Token::new(field),
            ])
        };
        let mut mounts_wanted = vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: token_dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }];
        if relay_on {
            mounts_wanted.push(relay::app_mount());
        }
        let existing = c.volume_mounts.as_deref().unwrap_or_default();
        let mut new_mounts = Vec::new();
        for mount in mounts_wanted {
            if existing.iter().any(|m| m.name == mount.name) {
                continue;
            }
            if existing
                .iter()
                .any(|m| m.mount_path.trim_end_matches('/') == mount.mount_path)
            {
                return Err(InjectError::MountPathTaken {
                    container: c.name.clone(),
                    path: mount.mount_path,
                });
            }
            new_mounts.push(mount);
        }
        push_list(
            &mut ops,
            base("volumeMounts"),
            c.volume_mounts.is_none(),
            &new_mounts,
        );

        let vars = c.env.as_deref().unwrap_or_default();
        let mut new_vars = Vec::new();
        match vars.iter().find(|v| v.name == vars::ACCESS_TOKEN_PATH) {
            Some(v)
                if v.value.as_deref() == Some(s.token_path.as_str()) && v.value_from.is_none() => {}
            Some(v) => {
                return Err(InjectError::EnvConflict {
                    container: c.name.clone(),
                    found: v.value.clone().unwrap_or_else(|| "(valueFrom)".into()),
                    want: s.token_path.as_str().to_string(),
                });
            }
            None => new_vars.push(env(vars::ACCESS_TOKEN_PATH, s.token_path.as_str())),
        }
        if relay_on {
            for (var, on_conflict) in relay::app_env(&c.name, token_dir, real_domain) {
                match vars.iter().find(|v| v.name == var.name) {
                    None => new_vars.push(var),
                    Some(v) if v.value == var.value && v.value_from.is_none() => {}
                    Some(_) if on_conflict == relay::OnConflict::KeepTheirs => {}
                    Some(v) => {
                        return Err(InjectError::RelayEnvConflict {
                            container: c.name.clone(),
                            name: relay_var_name(&var.name),
                            found: v.value.clone().unwrap_or_else(|| "(valueFrom)".into()),
                            want: var.value.unwrap_or_default(),
                        });
                    }
                }
            }
            if vars.iter().any(|v| v.name == crate::vars::ACCESS_TOKEN) {
                warnings.push(format!(
                    "container '{}' sets {}, which the Polars Cloud client prefers to everything else and never renews; remove it so the client renews through polars-cloud-auth",
                    c.name,
                    crate::vars::ACCESS_TOKEN
                ));
            }
        }
        push_list(&mut ops, base("env"), c.env.is_none(), &new_vars);
        served_apps.push(c);
    }
    if served_apps.is_empty() {
        warnings.push(
            "no container of this pod gets the token: polars.cloud/skip-containers lists them all"
                .into(),
        );
    }

    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.fs_group)
        .is_some();
    let mut new_volumes = Vec::new();
    if !volumes.iter().any(|v| v.name == TOKEN_VOLUME) {
        new_volumes.push(memory_volume(TOKEN_VOLUME));
    }
    match &assertion {
        Some(plan) => {
            if !volumes.iter().any(|v| v.name == plan.volume.name) {
                new_volumes.push(plan.volume.clone());
            }
        }
        None => {
            if !volumes.iter().any(|v| v.name == CREDENTIALS_VOLUME) {
                new_volumes.push(credentials_volume(&s.secret_name, fs_group));
            }
        }
    }
    if relay_on {
        for v in relay::volumes() {
            if !volumes.iter().any(|have| have.name == v.name) {
                new_volumes.push(v);
            }
        }
    }
    push_list(
        &mut ops,
        pointer([Token::new("spec"), Token::new("volumes")]),
        spec.volumes.is_none(),
        &new_volumes,
    );

    if relay_on {
        if !relay::has_host_alias(spec) {
            push_list(
                &mut ops,
                pointer([Token::new("spec"), Token::new("hostAliases")]),
                spec.host_aliases.is_none(),
                &[relay::host_alias()],
            );
        }
        if let Some(sysctl) = &sysctl {
            let sc = pointer([Token::new("spec"), Token::new("securityContext")]);
            match &spec.security_context {
                None => ops.push(add(sc, json!({ "sysctls": [to_value(sysctl)] }))),
                Some(have) => push_list(
                    &mut ops,
                    sc.with_trailing_token("sysctls"),
                    have.sysctls.is_none(),
                    std::slice::from_ref(sysctl),
                ),
            }
        }
    }
    let relay_for = relay_on.then_some(served_apps.as_slice());
    // A later pass (another webhook added a container): our containers seed its config
    // directory too.
    if let (false, Some(apps)) = (add_containers, relay_for) {
        let want = relay::our_env(apps);
        let lists = [("initContainers", init), ("containers", main)];
        for (list, containers) in lists {
            for (i, c) in containers
                .iter()
                .enumerate()
                .filter(|(_, c)| is_ours(&c.name))
            {
                let vars = c.env.as_deref().unwrap_or_default();
                if let Some((j, v)) = vars.iter().enumerate().find(|(_, v)| v.name == want.name)
                    && v.value != want.value
                {
                    ops.push(PatchOperation::Replace(ReplaceOperation {
                        path: pointer([
                            Token::new("spec"),
                            Token::new(list),
                            Token::from(i),
                            Token::new("env"),
                            Token::from(j),
                            Token::new("value"),
                        ]),
                        value: to_value(&want.value),
                    }));
                }
            }
        }
    }

    if add_containers {
        let ours = |role| token_container(&s, role, fs_group, relay_for, assertion.as_ref());
        let (first, sidecar) = match s.mode {
            Mode::Native => (ours(Role::NativeSidecar), None),
            Mode::Classic => (
                ours(Role::Init(INIT_CONTAINER)),
                Some(ours(Role::ClassicSidecar)),
            ),
            Mode::InitOnly => (ours(Role::Init(CONTAINER)), None),
        };
        let inits = pointer([Token::new("spec"), Token::new("initContainers")]);
        if spec.init_containers.is_none() {
            ops.push(add(inits, json!([to_value(&first)])));
        } else {
            ops.push(add(inits.with_trailing_token(0usize), to_value(&first)));
        }
        if let Some(sidecar) = sidecar {
            let ptr = pointer([
                Token::new("spec"),
                Token::new("containers"),
                Token::new("-"),
            ]);
            ops.push(add(ptr, to_value(&sidecar)));
        }
        if s.mode == Mode::Classic
            && spec
                .restart_policy
                .as_deref()
                .is_some_and(|p| p != "Always")
        {
            warnings.push(
                "the classic sidecar keeps running after the app containers finish, so this pod never completes; set the annotation polars.cloud/mode to native or init-only".into(),
            );
        }
    }

    if !marked {
        let version = Value::String(env!("CARGO_PKG_VERSION").into());
        let ptr = pointer([Token::new("metadata"), Token::new("annotations")]);
        if meta.annotations.is_none() {
            ops.push(add(ptr, json!({ INJECTED_ANNOTATION: version })));
        } else {
            ops.push(add(ptr.with_trailing_token(INJECTED_ANNOTATION), version));
        }
    }

    Ok(Outcome {
        patch: Patch(ops),
        mode: s.mode,
        warnings,
    })
}

/// Adds `items` to the list at `ptr`: the whole list when the pod has none, else each at
/// its end.
fn push_list<T: Serialize>(
    ops: &mut Vec<PatchOperation>,
    ptr: PointerBuf,
    absent: bool,
    items: &[T],
) {
    if items.is_empty() {
        return;
    }
    if absent {
        ops.push(add(ptr, to_value(&items)));
    } else {
        for item in items {
            ops.push(add(ptr.with_trailing_token("-"), to_value(item)));
        }
    }
}

/// The static name of a variable the relay sets, for the error message.
fn relay_var_name(name: &str) -> &'static str {
    use crate::vars;
    [
        vars::CONFIG_DIR,
        vars::DOMAIN,
        vars::API_ADDR,
        vars::SSL_CERT_FILE,
    ]
    .into_iter()
    .find(|v| *v == name)
    .unwrap_or("a variable")
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A small in-memory `emptyDir`: the token volume, and the relay's two.
fn memory_volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Secret files belong to root, and to the pod's fsGroup when it has one: then the group
/// may read, else everyone (only our container mounts the volume).
fn credentials_volume(secret_name: &str, fs_group: bool) -> Volume {
    Volume {
        name: CREDENTIALS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.into()),
            default_mode: Some(if fs_group { 0o440 } else { 0o444 }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

enum Role {
    NativeSidecar,
    ClassicSidecar,
    Init(&'static str),
}

fn token_container(
    s: &Settings,
    role: Role,
    fs_group: bool,
    relay_for: Option<&[&Container]>,
    assertion: Option<&assertion::Plan>,
) -> Container {
    let sidecar = !matches!(role, Role::Init(_));
    let mut vars = match assertion {
        Some(plan) => plan.env.clone(),
        None => vec![env(vars::CREDENTIALS_DIR, CREDENTIALS_DIR)],
    };
    vars.extend([
        env(vars::ACCESS_TOKEN_PATH, s.token_path.as_str()),
        // App containers usually run as other users; with an fsGroup the group suffices
        // (an emptyDir of such a pod is group-owned by it).
        env(
            vars::TOKEN_FILE_MODE,
            if fs_group { "0640" } else { "0644" },
        ),
    ]);
    if sidecar {
        vars.push(env(vars::LISTEN, &format!("0.0.0.0:{SIDECAR_PORT}")));
        if let Some(r) = s.renew_at {
            vars.push(env(vars::RENEW_AT, &r.to_string()));
        }
    }
    if let Some(d) = &s.domain {
        vars.push(env(vars::DOMAIN, d));
    }
    if let Some(apps) = relay_for {
        vars.push(relay::our_env(apps));
    }
    if let Some(i) = &s.issuer {
        vars.push(env(vars::ISSUER, i));
    }
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let (name, args) = match role {
        Role::NativeSidecar | Role::ClassicSidecar => (CONTAINER, "sidecar"),
        Role::Init(name) => (name, "init"),
    };
    Container {
        name: name.into(),
        image: Some(s.image.clone()),
        args: Some(vec![args.into()]),
        restart_policy: matches!(role, Role::NativeSidecar).then(|| "Always".into()),
        env: Some(vars),
        ports: sidecar.then(|| {
            vec![ContainerPort {
                name: Some(PORT_NAME.into()),
                container_port: SIDECAR_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        startup_probe: matches!(role, Role::NativeSidecar).then(|| Probe {
            exec: Some(ExecAction {
                command: Some(
                    [ENTRYPOINT.to_string(), "probe".to_string()]
                        .into_iter()
                        .chain(s.min_valid.into_iter().flat_map(|d| {
                            [
                                "--min-valid".to_string(),
                                humantime::format_duration(d).to_string(),
                            ]
                        }))
                        .collect(),
                ),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(120),
            ..Probe::default()
        }),
        readiness_probe: sidecar.then(|| http_probe("/readyz", 10)),
        liveness_probe: sidecar.then(|| Probe {
            failure_threshold: Some(3),
            ..http_probe("/healthz", 20)
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity(s.cpu_request.clone())),
                ("memory".into(), Quantity(s.memory_request.clone())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity(s.memory_limit.clone()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            vec![
                match assertion {
                    Some(plan) => plan.mount.clone(),
                    None => VolumeMount {
                        name: CREDENTIALS_VOLUME.into(),
                        mount_path: CREDENTIALS_DIR.into(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    },
                },
                VolumeMount {
                    name: TOKEN_VOLUME.into(),
                    mount_path: s.token_path.dir().into(),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(relay_for.into_iter().flat_map(|_| relay::our_mounts()))
            .collect(),
        ),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests;
