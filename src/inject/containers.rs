//! Our containers and volumes, as templates: the names the pod gets, the native or classic
//! sidecar or init container, and the token and credentials volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::settings::Settings;
use super::{projected_token, relay_pod};
use crate::vars;

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
pub(super) const PORT_NAME: &str = "pca-http";
/// The binary inside the image (its ENTRYPOINT); exec probes need the path.
pub const ENTRYPOINT: &str = "/usr/local/bin/polars-cloud-auth";
/// The image's non-root user and group.
pub const RUN_AS: i64 = 65532;

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A small in-memory `emptyDir`: the token volume, and the relay's two.
pub(super) fn memory_volume(name: &str) -> Volume {
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
pub(super) fn credentials_volume(secret_name: &str, fs_group: bool) -> Volume {
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

/// How long the postStart hook waits for the first token before it fails (and the kubelet
/// restarts our container): the budget the startup probe had (120 periods of 1 s).
pub const START_WAIT: &str = "120s";

/// The native sidecar's postStart hook: `probe --wait`, which returns once the token file
/// holds a token valid for the pod's `min-valid`, and on failure quotes our `/readyz`.
pub(super) fn start_gate(s: &Settings) -> Vec<String> {
    let mut cmd = vec![
        ENTRYPOINT.to_string(),
        "probe".to_string(),
        "--wait".to_string(),
        START_WAIT.to_string(),
        "--ready-url".to_string(),
        format!("http://127.0.0.1:{SIDECAR_PORT}/readyz"),
    ];
    if let Some(d) = s.min_valid {
        cmd.push("--min-valid".to_string());
        cmd.push(humantime::format_duration(d).to_string());
    }
    cmd
}

pub(super) enum Role {
    NativeSidecar,
    ClassicSidecar,
    Init(&'static str),
}

pub(super) fn token_container(
    s: &Settings,
    role: Role,
    fs_group: bool,
    relay_for: Option<&[&Container]>,
    assertion: Option<&projected_token::Plan>,
) -> Container {
    let sidecar = !matches!(role, Role::Init(_));
    let mut vars = match assertion {
        Some(plan) => plan.env.clone(),
        None => vec![env(vars::CREDENTIALS_DIR, CREDENTIALS_DIR)],
    };
    // A container that talks to the identity provider trusts the issuer's CA when one is
    // set; a broker-backed one already trusts the broker's (its only peer).
    if let Some(pem) = &s.issuer_ca_pem
        && !vars.iter().any(|v| v.name == vars::CA_PEM)
    {
        vars.push(env(vars::CA_PEM, pem));
    }
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
        vars.push(relay_pod::our_env(apps));
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
        // A native sidecar's app starts when this hook returns: the moment our container
        // is ready (token on disk, relay up), with no probe period in between (a startup
        // probe would add up to its period). A classic sidecar is "started" only then, so
        // its first readiness probe finds it ready. A hook that fails (not ready within
        // START_WAIT) restarts our container, and the kubelet's FailedPostStartHook event
        // carries the reason.
        lifecycle: sidecar.then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(start_gate(s)),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
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
            .chain(relay_for.into_iter().flat_map(|_| relay_pod::our_mounts()))
            .collect(),
        ),
        ..Container::default()
    }
}
