use std::path::Path;
use std::time::Duration;

use url::Url;

use super::*;
use crate::inject;
use crate::source::client_assertion::Assertion;
use crate::source::credentials::{self, Credentials};
use crate::source::{ClientAuth, Grant};
use crate::values::FileMode;

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let file = IdpArgs {
        domain: Some("file.example".into()),
        scope: Some("from-file".into()),
        ..IdpArgs::default()
    };
    let flags = IdpArgs {
        scope: Some("from-flag".into()),
        ..IdpArgs::default()
    };
    let merged = overlay(&flags, &file).unwrap();
    assert_eq!(merged.scope.as_deref(), Some("from-flag"));
    assert_eq!(merged.domain.as_deref(), Some("file.example"));
    assert_eq!(
        merged.endpoints().unwrap().token.as_str(),
        "https://auth.file.example/realms/Polars/protocol/openid-connect/token"
    );
}

#[test]
fn the_yaml_file_parses_and_refuses_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "idp:\n  issuer: http://127.0.0.1:9/realms/Polars\n  grant: client-credentials\ntoken-file:\n  path: /tmp/t\n  mode: \"0600\"\nrenewal:\n  renew-at: 0.5\n  timeout: 2m\n",
    )
    .unwrap();
    let c = ConfigFile::load(&path).unwrap();
    assert_eq!(c.token_file.mode, Some(FileMode(0o600)));
    assert_eq!(c.renewal.policy().renew_at, 0.5);
    assert_eq!(c.renewal.deadline(), Duration::from_secs(120));
    std::fs::write(&path, "idp:\n  isuer: x\n").unwrap();
    let err = ConfigFile::load(&path).unwrap_err().to_string();
    assert!(err.contains("isuer"), "{err}");
    std::fs::write(&path, "renewal:\n  renew-at: 2\n").unwrap();
    assert!(ConfigFile::load(&path).is_err());
}

#[test]
fn source_with_uses_the_given_credentials() {
    let idp = IdpArgs {
        issuer: Some(Url::parse("http://127.0.0.1:9/realms/Polars").unwrap()),
        client_id: Some("ignored".into()),
        ..IdpArgs::default()
    };
    let given = Credentials::from_sources(credentials::Sources {
        client_id: Some("from-input".into()),
        client_secret: Some("s".into()),
        ..credentials::Sources::default()
    });
    let source = idp.source_with(given).unwrap();
    assert_eq!(
        source.settings().credentials.load().unwrap().0,
        "from-input"
    );
    assert_eq!(
        source.settings().endpoints.token.as_str(),
        "http://127.0.0.1:9/realms/Polars/protocol/openid-connect/token"
    );
}

#[test]
fn an_assertion_file_or_client_key_implies_assertion_client_auth() {
    let cc = |f: fn(&mut IdpArgs)| {
        let mut idp = IdpArgs {
            grant: Some(GrantKind::ClientCredentials),
            ..IdpArgs::default()
        };
        f(&mut idp);
        idp.grant()
    };
    let g = cc(|i| i.client_assertion_file = Some("/t".into())).unwrap();
    assert!(
        matches!(&g, Grant::ClientCredentials(ClientAuth::Assertion(Assertion::File(p))) if p == Path::new("/t")),
        "{g:?}"
    );
    let g = cc(|i| {
        i.client_key_file = Some("/k.pem".into());
        i.client_key_id = Some("kid-1".into());
    })
    .unwrap();
    assert!(
        matches!(&g, Grant::ClientCredentials(ClientAuth::Assertion(Assertion::Key { kid: Some(k), .. })) if k == "kid-1"),
        "{g:?}"
    );
    assert!(matches!(
        cc(|_| {}).unwrap(),
        Grant::ClientCredentials(ClientAuth::Basic)
    ));
    let e = cc(|i| i.client_auth = Some(ClientAuthKind::Assertion)).unwrap_err();
    assert!(
        e.to_string().contains("needs --client-assertion-file"),
        "{e}"
    );
    let e = cc(|i| {
        i.client_auth = Some(ClientAuthKind::Post);
        i.client_assertion_file = Some("/t".into());
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("--client-auth post sends a client secret"),
        "{e}"
    );
    let e = IdpArgs {
        client_assertion_file: Some("/t".into()),
        ..IdpArgs::default()
    }
    .grant()
    .unwrap_err();
    assert!(
        e.to_string().contains("need --grant client-credentials"),
        "{e}"
    );
}

#[test]
fn injection_settings_from_the_file_are_checked_like_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "inject:\n  mode: init-only\n  memory-limit: 64Mi\n").unwrap();
    let file = ConfigFile::load(&path).unwrap();
    let flags = InjectArgs {
        secret_name: Some("from-flag".into()),
        ..InjectArgs::default()
    };
    let s = overlay(&flags, &file.inject).unwrap().settings().unwrap();
    assert_eq!(s.mode, inject::Mode::InitOnly);
    assert_eq!(s.memory_limit, "64Mi");
    assert_eq!(s.secret_name, "from-flag");
    std::fs::write(&path, "inject:\n  cpu-request: lots\n").unwrap();
    let file = ConfigFile::load(&path).unwrap();
    let e = file.inject.settings().unwrap_err().to_string();
    assert!(e.contains("inject.cpu-request in the config file"), "{e}");
    let e = InjectArgs {
        memory_request: Some("1Gi".into()),
        ..InjectArgs::default()
    }
    .settings()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("memory request 1Gi is above the memory limit 32Mi"),
        "{e}"
    );
}

/// Issue 20, item 4: a flag left unset never erases the file's value, for every group.
/// `overlay` lays the flags' JSON over the file's: an unset flag must be absent from it.
/// So no group argument may have a clap default (it would be set), and a group with
/// nothing set must serialize to nothing (no `null`, no `false`).
#[test]
fn a_flag_left_unset_never_erases_the_files_value_in_any_group() {
    use clap::Args;
    fn check<T: Args + Default + serde::Serialize>(group: &'static str) {
        let cmd = T::augment_args(clap::Command::new(group));
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_default_values().is_empty(),
                "{group}: --{} has a clap default, so leaving it unset would erase the file's value",
                arg.get_id()
            );
        }
        let unset = serde_json::to_value(T::default()).unwrap();
        assert_eq!(
            unset,
            serde_json::json!({}),
            "{group}: unset fields must not serialize (skip_serializing_if)"
        );
    }
    check::<IdpArgs>("idp");
    check::<FileArgs>("token-file");
    check::<RenewArgs>("renewal");
    check::<ServeArgs>("sidecar");
    check::<RelayArgs>("relay");
    check::<InjectArgs>("inject");
    check::<WebhookArgs>("webhook");
    check::<BrokerArgs>("broker");
    check::<LogArgs>("log");
    // And through overlay: a file value survives flags with nothing set.
    let file = RenewArgs {
        renew_at: Some(crate::values::Fraction(0.5)),
        ..RenewArgs::default()
    };
    let merged = overlay(&RenewArgs::default(), &file).unwrap();
    assert_eq!(merged.policy().renew_at, 0.5);
}
