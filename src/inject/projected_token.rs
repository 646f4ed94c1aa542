//! Client assertions in pods: a projected service-account token, whose audience is the
//! realm, authenticates our container's client instead of a Secret (Keycloak's client
//! authenticator "Signed JWT - Federated" with a Kubernetes identity provider). The kubelet
//! writes and renews the token; only our container mounts it.
//!
//! The volume and mount are general (audience and lifetime are parameters) so that other
//! token consumers can reuse them.

use k8s_openapi::api::core::v1::{
    EnvVar, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};

use crate::vars;

/// The projected token volume of the client assertion.
pub const VOLUME: &str = "polars-cloud-assertion";
/// Where our container sees it.
pub const DIR: &str = "/var/run/secrets/polars-cloud-assertion";
/// The token's file name in [`DIR`].
pub const FILE: &str = "token";
/// The token's requested lifetime. Keycloak's Kubernetes identity provider refuses
/// assertions that live longer than an hour; the kubelet renews at 80 % of it.
pub const EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime the API server issues.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// A projected volume holding one service-account token for `audience`, renewed by the
/// kubelet, at `file` in the volume.
pub fn projected_token_volume(
    name: &str,
    audience: &str,
    expiration_seconds: i64,
    file: &str,
) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            // Only our container, running as its own non-root user, mounts it.
            default_mode: Some(0o444),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.into()),
                    expiration_seconds: Some(expiration_seconds.max(MIN_EXPIRATION_SECONDS)),
                    path: file.into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The read-only mount of such a volume at `dir`.
pub fn projected_token_mount(name: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// What our container gets for a client assertion with this audience.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub volume: Volume,
    pub mount: VolumeMount,
    /// The client-credentials grant, authenticated by the token file.
    pub env: Vec<EnvVar>,
}

/// The plan for `audience` (the `polars.cloud/client-assertion-audience` annotation, or
/// the injector's default), or none.
pub fn plan(audience: Option<&str>) -> Option<Plan> {
    let audience = audience?;
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    Some(Plan {
        volume: projected_token_volume(VOLUME, audience, EXPIRATION_SECONDS, FILE),
        mount: projected_token_mount(VOLUME, DIR),
        env: vec![
            env(vars::GRANT, "client-credentials"),
            env(vars::CLIENT_ASSERTION_FILE, &format!("{DIR}/{FILE}")),
        ],
    })
}

#[cfg(test)]
impl Plan {
    /// The variables as (name, value) pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }
}

/// An audience is what the token's `aud` claim will hold: Keycloak wants the realm's issuer
/// URL there.
pub fn check_audience(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 1024 || s.contains(char::is_whitespace) || s.contains(',') {
        return Err(format!(
            "'{s}' is not a token audience; write the realm's issuer URL, e.g. https://keycloak.example.com/realms/myrealm"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_projects_a_token_for_the_audience_and_points_the_client_at_it() {
        assert_eq!(plan(None), None);
        let p = plan(Some("https://kc.example/realms/r")).unwrap();
        let v = serde_json::to_value(&p.volume).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "polars-cloud-assertion",
                "projected": {"defaultMode": 0o444, "sources": [{"serviceAccountToken": {
                    "audience": "https://kc.example/realms/r",
                    "expirationSeconds": 3600,
                    "path": "token"
                }}]}
            })
        );
        assert_eq!(p.mount.mount_path, DIR);
        assert_eq!(p.mount.read_only, Some(true));
        assert_eq!(
            p.env_pairs(),
            [
                ("POLARS_CLOUD_GRANT".into(), "client-credentials".into()),
                (
                    "POLARS_CLOUD_CLIENT_ASSERTION_FILE".into(),
                    "/var/run/secrets/polars-cloud-assertion/token".into()
                ),
            ]
        );
    }

    #[test]
    fn the_volume_helper_takes_any_audience_and_lifetime_within_the_api_servers_range() {
        let v = projected_token_volume("broker-token", "polars-cloud-auth", 60, "t");
        let sat = v.projected.unwrap().sources.unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(sat.audience.as_deref(), Some("polars-cloud-auth"));
        assert_eq!(sat.expiration_seconds, Some(600));
        assert_eq!(sat.path, "t");
    }

    #[test]
    fn audiences_are_checked() {
        assert!(check_audience("https://kc/realms/r").is_ok());
        let e = check_audience("a b").unwrap_err();
        assert!(e.contains("issuer URL"), "{e}");
        assert!(check_audience("").is_err());
    }
}
