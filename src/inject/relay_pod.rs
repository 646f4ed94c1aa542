//! What the relay adds to a pod (see `crate::relay`): a writable config directory per app
//! container with the variables that point the app's client at it, a loopback host name
//! for the relay, the sysctl that lets our non-root container bind port 443, and our
//! container's private state volume. Pure: a pod and the settings in, values out.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostAlias, PodSpec, Sysctl, Volume, VolumeMount,
};

use super::InjectError;
use crate::relay::{self, CA_BUNDLE_FILE};
use crate::vars;

/// The app containers' config directories live below this (one volume, a directory each).
pub const CLIENT_DIR: &str = "/var/run/polars-cloud-client";
/// The volume of the app containers' config directories.
pub const CLIENT_VOLUME: &str = "polars-cloud-client";
/// Our container's private volume for the relay's keys.
pub const STATE_VOLUME: &str = "polars-cloud-auth-state";
/// The sysctl that lets an unprivileged process bind port 443 in the pod's network
/// namespace (a "safe" sysctl that Pod Security "restricted" allows).
pub const PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// The client always sends token requests to port 443.
pub const PORT: u16 = 443;

/// The config directory of one app container.
pub fn client_dir(container: &str) -> String {
    format!("{CLIENT_DIR}/{container}")
}

/// The CA bundle beside the token file.
pub fn ca_bundle(token_dir: &str) -> String {
    format!("{token_dir}/{CA_BUNDLE_FILE}")
}

/// How an app's own value of a variable we set is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Theirs wins (the API address: the app may know better).
    KeepTheirs,
    /// The relay cannot work with theirs: refuse with a message.
    Refuse,
}

/// The variables one app container gets, with how a conflicting value is treated.
pub fn app_env(container: &str, token_dir: &str, real_domain: &str) -> Vec<(EnvVar, OnConflict)> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    vec![
        (
            var(vars::CONFIG_DIR, client_dir(container)),
            OnConflict::Refuse,
        ),
        (
            var(vars::DOMAIN, relay::DEFAULT_DOMAIN.into()),
            OnConflict::Refuse,
        ),
        (
            var(vars::API_ADDR, format!("https://api.{real_domain}")),
            OnConflict::KeepTheirs,
        ),
        (
            var(vars::SSL_CERT_FILE, ca_bundle(token_dir)),
            OnConflict::Refuse,
        ),
    ]
}

/// The app container's mount of its config directories' volume (read-write: the client
/// writes its config.toml back after each refresh).
pub fn app_mount() -> VolumeMount {
    VolumeMount {
        name: CLIENT_VOLUME.into(),
        mount_path: CLIENT_DIR.into(),
        ..VolumeMount::default()
    }
}

/// Our container's mounts: the config directories (to seed them) and the state.
pub fn our_mounts() -> [VolumeMount; 2] {
    [
        app_mount(),
        VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: relay::DEFAULT_STATE_DIR.into(),
            ..VolumeMount::default()
        },
    ]
}

pub fn volumes() -> [Volume; 2] {
    [
        super::containers::memory_volume(CLIENT_VOLUME),
        super::containers::memory_volume(STATE_VOLUME),
    ]
}

/// Our container's variable naming the config directories to seed.
pub fn our_env(apps: &[&Container]) -> EnvVar {
    let dirs: Vec<String> = apps.iter().map(|c| client_dir(&c.name)).collect();
    EnvVar {
        name: vars::RELAY_CLIENT_CONFIGS.into(),
        value: Some(dirs.join(",")),
        value_from: None,
    }
}

/// The host alias that sends the client's token requests to our container.
pub fn host_alias() -> HostAlias {
    HostAlias {
        ip: "127.0.0.1".into(),
        hostnames: Some(vec![relay::auth_host(relay::DEFAULT_DOMAIN)]),
    }
}

/// Whether the pod already has our host alias.
pub fn has_host_alias(spec: &PodSpec) -> bool {
    let host = relay::auth_host(relay::DEFAULT_DOMAIN);
    spec.host_aliases
        .iter()
        .flatten()
        .any(|a| a.ip == "127.0.0.1" && a.hostnames.iter().flatten().any(|h| *h == host))
}

/// The sysctl to add, `None` when the pod already allows binding 443, or why the pod's
/// own setting rules it out.
pub fn sysctl(spec: &PodSpec) -> Result<Option<Sysctl>, InjectError> {
    let theirs = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.sysctls.as_ref())
        .and_then(|l| l.iter().find(|s| s.name == PORT_SYSCTL));
    match theirs {
        None => Ok(Some(Sysctl {
            name: PORT_SYSCTL.into(),
            value: PORT.to_string(),
        })),
        Some(s)
            if s.value
                .trim()
                .parse::<u32>()
                .is_ok_and(|v| v <= u32::from(PORT)) =>
        {
            Ok(None)
        }
        Some(s) => Err(InjectError::SysctlConflict {
            found: s.value.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctl_is_added_kept_or_refused() {
        let with = |v: &str| PodSpec {
            security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
                sysctls: Some(vec![Sysctl {
                    name: PORT_SYSCTL.into(),
                    value: v.into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(sysctl(&PodSpec::default()).unwrap().unwrap().value, "443");
        assert!(sysctl(&with("80")).unwrap().is_none());
        assert!(sysctl(&with("443")).unwrap().is_none());
        let e = sysctl(&with("1024")).unwrap_err().to_string();
        assert!(e.contains("1024") && e.contains(PORT_SYSCTL), "{e}");
    }
}
