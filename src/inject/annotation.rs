//! The `polars.cloud/*` names a pod is labelled and annotated with, in one place, and
//! how a pod's annotations override the settings (with a did-you-mean for typos).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::{Mode, Settings, check, check_limits};
use super::{InjectError, projected_token};

/// What every label and annotation of ours starts with.
pub const PREFIX: &str = "polars.cloud/";
/// The label a pod (template) carries to ask for a token. The webhook's objectSelector
/// matches it, so other pods never reach the webhook.
pub const INJECT_LABEL: &str = "polars.cloud/inject";
/// Set on injected pods (value: our version); a second pass then only adds what is
/// missing, which is nothing unless another webhook added a container since.
pub const INJECTED_ANNOTATION: &str = "polars.cloud/injected";

// Per-pod overrides of the settings.
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

/// Whether the pod (template) asks for a token: label `polars.cloud/inject: "true"`.
pub fn opted_in(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "true")
}

/// The settings in effect for one pod, after its annotations.
pub(super) struct Effective {
    pub settings: Settings,
    pub skip: BTreeSet<String>,
    pub warnings: Vec<String>,
}

pub(super) fn effective(
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
    let mut s = defaults.clone();
    apply(ann, SECRET_NAME, check::secret_name, &mut s.secret_name)?;
    apply(ann, TOKEN_PATH, check::token_path, &mut s.token_path)?;
    apply(ann, MODE, check::mode, &mut s.mode)?;
    apply(ann, IMAGE, check::image, &mut s.image)?;
    apply(ann, CPU_REQUEST, check::quantity, &mut s.cpu_request)?;
    apply(ann, MEMORY_REQUEST, check::quantity, &mut s.memory_request)?;
    apply(ann, MEMORY_LIMIT, check::quantity, &mut s.memory_limit)?;
    apply(
        ann,
        MIN_VALID,
        |v| check::min_valid(v).map(Some),
        &mut s.min_valid,
    )?;
    apply(ann, RELAY, check::switch, &mut s.relay)?;
    apply(
        ann,
        CLIENT_ASSERTION_AUDIENCE,
        |v| projected_token::check_audience(v).map(Some),
        &mut s.client_assertion_audience,
    )?;
    match &mut s.broker {
        Some(b) => apply(ann, BROKER, check::switch, &mut b.default_on)?,
        None if get(ann, BROKER) == Some("true") => {
            return Err(InjectError::Annotation {
                key: BROKER,
                reason: "this injector knows no token broker: install the chart with broker.enabled=true, or give `inject` --broker-url and --broker-ca-file".into(),
            });
        }
        None => apply(ann, BROKER, check::switch, &mut false)?,
    }
    let mut renew_at = s.renew_at.unwrap_or_default();
    apply(ann, RENEW_AT, check::renew_at, &mut renew_at)?;
    if get(ann, RENEW_AT).is_some() {
        s.renew_at = Some(renew_at);
    }
    check_limits(&s)?;
    let skip = get(ann, SKIP_CONTAINERS)
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
        if key.starts_with(PREFIX) && key != INJECTED_ANNOTATION && !ALL.contains(&key.as_str()) {
            let hint = match closest(key) {
                Some(known) => format!("did you mean {known}?"),
                None => format!(
                    "known: {}",
                    ALL.map(|k| k.trim_start_matches(PREFIX)).join(", ")
                ),
            };
            warnings.push(format!(
                "annotation {key} is unknown and has no effect; {hint}"
            ));
        }
    }
    let unused = |key: &str| format!("annotation {key} has no effect in mode {}", s.mode.as_str());
    if s.mode != Mode::Native && get(ann, MIN_VALID).is_some() {
        warnings.push(unused(MIN_VALID));
    }
    if s.mode == Mode::InitOnly && get(ann, RENEW_AT).is_some() {
        warnings.push(unused(RENEW_AT));
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
    ALL.iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}
