//! Pod injection: one pure function from a pod (its metadata and spec, typed by
//! k8s-openapi) and the settings to a JSON patch that gives the pod a fresh Polars Cloud
//! token file. The webhook and `inject` are two front ends over it.
//!
//! The patch is a list of targeted `add` operations rather than a diff of a re-serialized
//! pod, so fields that the k8s-openapi types do not know (a newer API server's) are never
//! dropped. Operations on existing containers come first, addressed by their original
//! index; insertions (our init container goes first) come after.

pub mod annotation;
pub mod broker;
mod containers;
mod patch;
pub mod projected_token;
pub mod quantity;
pub mod relay_pod;
pub mod settings;
pub mod workload;

pub use annotation::{INJECT_LABEL, INJECTED_ANNOTATION, opted_in};
pub use containers::{
    CONTAINER, CREDENTIALS_DIR, CREDENTIALS_VOLUME, ENTRYPOINT, INIT_CONTAINER, RUN_AS,
    SIDECAR_PORT, TOKEN_VOLUME,
};
pub use settings::{
    DEFAULT_SECRET_NAME, Mode, Settings, TokenPath, check, check_limits, default_image,
};

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::Token;
use json_patch::{Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, PodSpec, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::vars;
use annotation::{Effective, effective};
use containers::{Role, credentials_volume, env, memory_volume, token_container};
use patch::{add, pointer, push_list, to_value};

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
    check_pod(spec, ann, &mut warnings)?;
    let marked = ann.contains_key(INJECTED_ANNOTATION);
    let add_containers = ours_absent(spec, marked)?;
    let apps = app_containers(spec);
    check_skip(&apps, &skip)?;

    // The relay needs the pod's own network namespace and /etc/hosts.
    let relay_on = s.relay && !spec.host_network.unwrap_or(false);
    if s.relay && !relay_on {
        warnings.push(
            "hostNetwork pods get the token file only (no relay): their Polars Cloud client cannot renew its token; set polars.cloud/relay: \"false\" to silence this".into(),
        );
    }
    // With a client assertion, to the realm or to the broker, our container needs no
    // credentials Secret at all. A pod's own realm audience wins over the broker.
    let assertion = projected_token::plan(s.client_assertion_audience.as_deref())
        .or_else(|| s.broker.as_ref().filter(|b| b.default_on).map(broker::plan));
    check_volume_names(spec, marked, relay_on, assertion.as_ref())?;
    let sysctl = if relay_on && s.mode != Mode::InitOnly {
        relay_pod::sysctl(spec)?
    } else {
        None
    };
    if add_containers && s.mode != Mode::InitOnly {
        check_port(&apps)?;
    }

    let mut ops = Vec::new();
    // Existing containers first, by their original index, before any insertion.
    let served = serve_apps(&mut ops, &mut warnings, &s, &apps, &skip, relay_on)?;
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.fs_group)
        .is_some();
    add_volumes(&mut ops, spec, &s, assertion.as_ref(), relay_on, fs_group);
    if relay_on {
        add_relay_pod_settings(&mut ops, spec, sysctl.as_ref());
    }
    let relay_for = relay_on.then_some(served.as_slice());
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
        add_our_containers(&mut ops, spec, first, sidecar);
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
    } else if let Some(apps) = relay_for {
        // A later pass (another webhook added a container): our containers seed its config
        // directory too.
        reseed_our_containers(&mut ops, spec, apps);
    }
    if !marked {
        mark_injected(&mut ops, meta);
    }

    Ok(Outcome {
        patch: Patch(ops),
        mode: s.mode,
        warnings,
    })
}

/// An app container: its list (`initContainers` or `containers`), its index there, and
/// the container.
type App<'a> = (&'static str, usize, &'a Container);

fn is_ours(name: &str) -> bool {
    name == CONTAINER || name == INIT_CONTAINER
}

/// Refuses pods that are not for Linux or that share process namespaces (unless the
/// annotation accepts it), and warns about hostNetwork.
fn check_pod(
    spec: &PodSpec,
    ann: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), InjectError> {
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
    Ok(())
}

/// Whether our containers are still to be added: they are there on a second pass, and on
/// a first one their names must be free.
fn ours_absent(spec: &PodSpec, marked: bool) -> Result<bool, InjectError> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let main = spec.containers.as_slice();
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
    Ok(taken.is_none())
}

/// The app containers: every container but ours, with its list and index there.
fn app_containers(spec: &PodSpec) -> Vec<App<'_>> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let main = spec.containers.as_slice();
    init.iter()
        .enumerate()
        .map(|(i, c)| ("initContainers", i, c))
        .chain(main.iter().enumerate().map(|(i, c)| ("containers", i, c)))
        .filter(|(_, _, c)| !is_ours(&c.name))
        .collect()
}

/// `skip-containers` may name app containers only.
fn check_skip(apps: &[App<'_>], skip: &BTreeSet<String>) -> Result<(), InjectError> {
    for name in skip {
        if !apps.iter().any(|(_, _, c)| &c.name == name) {
            let available: Vec<&str> = apps.iter().map(|(_, _, c)| c.name.as_str()).collect();
            return Err(InjectError::UnknownSkip {
                name: name.clone(),
                available: available.join(", "),
            });
        }
    }
    Ok(())
}

/// On a first pass, the names of our volumes must be free.
fn check_volume_names(
    spec: &PodSpec,
    marked: bool,
    relay_on: bool,
    assertion: Option<&projected_token::Plan>,
) -> Result<(), InjectError> {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mut ours = vec![
        TOKEN_VOLUME,
        match assertion {
            Some(plan) => plan.volume.name.as_str(),
            None => CREDENTIALS_VOLUME,
        },
    ];
    if relay_on {
        ours.extend([relay_pod::CLIENT_VOLUME, relay_pod::STATE_VOLUME]);
    }
    for name in ours {
        if !marked && volumes.iter().any(|v| v.name == name) {
            return Err(InjectError::VolumeTaken(name.to_string()));
        }
    }
    Ok(())
}

/// No app container may declare the sidecar's port.
fn check_port(apps: &[App<'_>]) -> Result<(), InjectError> {
    for (_, _, c) in apps {
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
    Ok(())
}

/// Gives each app container not skipped the token volume and its variable (and the
/// relay's, when on); answers the containers served.
fn serve_apps<'a>(
    ops: &mut Vec<PatchOperation>,
    warnings: &mut Vec<String>,
    s: &Settings,
    apps: &[App<'a>],
    skip: &BTreeSet<String>,
    relay_on: bool,
) -> Result<Vec<&'a Container>, InjectError> {
    let real_domain = s.domain.as_deref().unwrap_or(crate::source::DEFAULT_DOMAIN);
    let token_dir = s.token_path.dir();
    let mut served_apps: Vec<&Container> = Vec::new();
    for &(list, i, c) in apps {
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
            mounts_wanted.push(relay_pod::app_mount());
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
            ops,
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
            for (var, on_conflict) in relay_pod::app_env(&c.name, token_dir, real_domain) {
                match vars.iter().find(|v| v.name == var.name) {
                    None => new_vars.push(var),
                    Some(v) if v.value == var.value && v.value_from.is_none() => {}
                    Some(_) if on_conflict == relay_pod::OnConflict::KeepTheirs => {}
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
        push_list(ops, base("env"), c.env.is_none(), &new_vars);
        served_apps.push(c);
    }
    if served_apps.is_empty() {
        warnings.push(
            "no container of this pod gets the token: polars.cloud/skip-containers lists them all"
                .into(),
        );
    }

    Ok(served_apps)
}

/// The pod's new volumes: the token volume, the credentials Secret or the projected
/// token, and the relay's.
fn add_volumes(
    ops: &mut Vec<PatchOperation>,
    spec: &PodSpec,
    s: &Settings,
    assertion: Option<&projected_token::Plan>,
    relay_on: bool,
    fs_group: bool,
) {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mut new_volumes = Vec::new();
    if !volumes.iter().any(|v| v.name == TOKEN_VOLUME) {
        new_volumes.push(memory_volume(TOKEN_VOLUME));
    }
    match assertion {
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
        for v in relay_pod::volumes() {
            if !volumes.iter().any(|have| have.name == v.name) {
                new_volumes.push(v);
            }
        }
    }
    push_list(
        ops,
        pointer([Token::new("spec"), Token::new("volumes")]),
        spec.volumes.is_none(),
        &new_volumes,
    );
}

/// The relay's host alias, and the sysctl that lets our container bind port 443.
fn add_relay_pod_settings(
    ops: &mut Vec<PatchOperation>,
    spec: &PodSpec,
    sysctl: Option<&k8s_openapi::api::core::v1::Sysctl>,
) {
    if !relay_pod::has_host_alias(spec) {
        push_list(
            ops,
            pointer([Token::new("spec"), Token::new("hostAliases")]),
            spec.host_aliases.is_none(),
            &[relay_pod::host_alias()],
        );
    }
    if let Some(sysctl) = sysctl {
        let sc = pointer([Token::new("spec"), Token::new("securityContext")]);
        match &spec.security_context {
            None => ops.push(add(sc, json!({ "sysctls": [to_value(sysctl)] }))),
            Some(have) => push_list(
                ops,
                sc.with_trailing_token("sysctls"),
                have.sysctls.is_none(),
                std::slice::from_ref(sysctl),
            ),
        }
    }
}

/// Our first container goes first among the init containers; a classic sidecar goes
/// last among the containers.
fn add_our_containers(
    ops: &mut Vec<PatchOperation>,
    spec: &PodSpec,
    first: Container,
    sidecar: Option<Container>,
) {
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
}

/// A later pass: our containers seed the config directories of every served app.
fn reseed_our_containers(ops: &mut Vec<PatchOperation>, spec: &PodSpec, apps: &[&Container]) {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let main = spec.containers.as_slice();
    let want = relay_pod::our_env(apps);
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

/// The annotation that tells a second pass this pod is ours.
fn mark_injected(ops: &mut Vec<PatchOperation>, meta: &ObjectMeta) {
    let version = Value::String(env!("CARGO_PKG_VERSION").into());
    let ptr = pointer([Token::new("metadata"), Token::new("annotations")]);
    if meta.annotations.is_none() {
        ops.push(add(ptr, json!({ INJECTED_ANNOTATION: version })));
    } else {
        ops.push(add(ptr.with_trailing_token(INJECTED_ANNOTATION), version));
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

#[cfg(test)]
mod tests;
