use super::*;
use crate::source::Grant;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<Inputs, Error> {
    let map = env(pairs);
    Inputs::parse(&|k: &str| map.get(k).cloned())
}

#[test]
fn defaults_without_inputs() {
    let i = parse(&[]).unwrap();
    assert!(i.export_env && !i.token_file);
    assert_eq!(i.retries, DEFAULT_RETRIES);
    assert!(matches!(i.idp.grant().unwrap(), Grant::ServiceAccount));
    assert_eq!(
        i.idp.endpoints().unwrap().issuer.as_str(),
        "https://auth.prd.cloud.pola.rs/realms/Polars"
    );
    let err = i.credentials.load().unwrap_err().to_string();
    assert!(err.contains("`client-id` input"), "{err}");
}

#[test]
fn client_assertion_takes_the_jobs_oidc_token_only() {
    let i = parse(&[("INPUT_CLIENT-ASSERTION", "github-oidc")]).unwrap();
    assert_eq!(i.github_oidc, Some(None));
    let i = parse(&[
        ("INPUT_CLIENT-ASSERTION", "github-oidc"),
        ("INPUT_OIDC-AUDIENCE", "https://kc/realms/r"),
    ])
    .unwrap();
    assert_eq!(i.github_oidc, Some(Some("https://kc/realms/r".into())));
    let e = parse(&[("INPUT_CLIENT-ASSERTION", "file")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("github-oidc"), "{e}");
    let e = parse(&[("INPUT_OIDC-AUDIENCE", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("client-assertion: github-oidc"), "{e}");
}

/// Without `id-token: write` the runner sets no request variables: the step says so
/// before any request.
#[tokio::test]
async fn without_id_token_permission_the_error_names_it() {
    let map = env(&[
        ("INPUT_CLIENT-ASSERTION", "github-oidc"),
        ("INPUT_ISSUER", "http://127.0.0.1:9/realms/r"),
    ]);
    let lookup = |k: &str| map.get(k).cloned();
    let i = Inputs::parse(&lookup).unwrap();
    let mut out = Vec::new();
    let e = source(&lookup, i.idp, i.credentials, &i.github_oidc, &mut out)
        .await
        .err()
        .unwrap();
    let text = format!("{e:#}");
    assert!(text.contains("permissions: id-token: write"), "{text}");
    assert_eq!(crate::exit::code_for(&e), crate::exit::USAGE);
}

#[test]
fn inputs_lists_exactly_what_parse_reads() {
    let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let lookup = |var: &str| {
        asked.borrow_mut().insert(var.to_string());
        None
    };
    Inputs::parse(&lookup).unwrap();
    let read: Vec<String> = asked
        .into_inner()
        .into_iter()
        .filter(|v| v.starts_with("INPUT_"))
        .collect();
    let mut listed: Vec<String> = INPUTS.iter().map(|i| input_variable(i)).collect();
    listed.sort();
    assert_eq!(read, listed);
}

#[test]
fn inputs_use_the_runners_variable_names() {
    let i = parse(&[
        ("INPUT_CLIENT-ID", " sa \n"),
        ("INPUT_CLIENT-SECRET", "s3cret\n"),
        ("INPUT_GRANT", "client-credentials"),
        ("INPUT_CLIENT-AUTH", "post"),
        ("INPUT_DOMAIN", "eu.cloud.example"),
        ("INPUT_SCOPE", "profile"),
        ("INPUT_AUDIENCE", "polars"),
        ("INPUT_EXPORT-ENV", "False"),
        ("INPUT_TOKEN-FILE", "TRUE"),
        ("INPUT_RETRIES", "0"),
        ("INPUT_CA-FILE", "/etc/ca.pem"),
    ])
    .unwrap();
    let (id, secret) = i.credentials.load().unwrap();
    assert_eq!((id.as_str(), secret.expose_secret()), ("sa", "s3cret"));
    assert!(matches!(
        i.idp.grant().unwrap(),
        Grant::ClientCredentials(crate::source::ClientAuth::Post)
    ));
    assert_eq!(i.domain.as_deref(), Some("eu.cloud.example"));
    assert_eq!(
        i.idp.endpoints().unwrap().issuer.as_str(),
        "https://auth.eu.cloud.example/realms/Polars"
    );
    assert_eq!(i.idp.scope.as_deref(), Some("profile"));
    assert_eq!(i.idp.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert!(!i.export_env && i.token_file);
    assert_eq!(i.retries, 0);
}

#[test]
fn credentials_and_the_domain_fall_back_to_the_environment() {
    let i = parse(&[
        ("INPUT_CLIENT-ID", ""),
        ("INPUT_CLIENT-SECRET", ""),
        ("POLARS_CLOUD_CLIENT_ID", "env-sa"),
        ("POLARS_CLOUD_CLIENT_SECRET", "env-secret"),
        ("POLARS_CLOUD_DOMAIN", "dev.example"),
    ])
    .unwrap();
    let (id, secret) = i.credentials.load().unwrap();
    assert_eq!(
        (id.as_str(), secret.expose_secret()),
        ("env-sa", "env-secret")
    );
    assert_eq!(
        i.idp.endpoints().unwrap().issuer.as_str(),
        "https://auth.dev.example/realms/Polars"
    );
    // Only a domain given as input is exported: one from the environment is there already.
    assert_eq!(i.domain, None);
}

#[test]
fn bad_inputs_name_the_input_and_what_to_write() {
    let cases = [
        (
            "INPUT_GRANT",
            "password",
            "input 'grant' is 'password': use service-account or client-credentials",
        ),
        (
            "INPUT_CLIENT-AUTH",
            "jwt",
            "input 'client-auth' is 'jwt': use basic or post",
        ),
        (
            "INPUT_EXPORT-ENV",
            "yes",
            "input 'export-env' is 'yes': use true or false",
        ),
        (
            "INPUT_RETRIES",
            "-1",
            "input 'retries' is '-1': use a whole number",
        ),
        (
            "INPUT_ISSUER",
            "auth.example",
            "input 'issuer' is 'auth.example': not a URL",
        ),
    ];
    for (var, value, expected) in cases {
        let err = parse(&[(var, value)]).unwrap_err().to_string();
        assert!(err.starts_with(expected), "{err}");
    }
}

#[test]
fn secrets_are_checked_without_being_echoed() {
    let i = parse(&[
        ("INPUT_CLIENT-ID", "sa"),
        ("INPUT_CLIENT-SECRET", "abc\ndef"),
    ])
    .unwrap();
    let err = i.credentials.load().unwrap_err().to_string();
    assert_eq!(
        err,
        "the client secret from the `client-secret` input contains a line break or control character (only trailing newlines are trimmed)"
    );
    let i = parse(&[("INPUT_CLIENT-ID", "sa"), ("INPUT_CLIENT-SECRET", "  ")]).unwrap();
    let err = i.credentials.load().unwrap_err().to_string();
    assert!(
        err.starts_with("no client secret: the `client-secret` input is empty"),
        "{err}"
    );
    assert!(
        format!(
            "{:?}",
            parse(&[("INPUT_CLIENT-SECRET", "hunter2")]).unwrap()
        )
        .contains("redacted")
    );
}

#[test]
fn the_summary_says_where_the_token_went() {
    let issuer = Url::parse("https://auth.example/realms/Polars").unwrap();
    let line = summary_line(&issuer, "2030-01-01T00:00:00Z", true, true, false);
    assert_eq!(
        line,
        "Polars Cloud access token from `https://auth.example/realms/Polars`, valid until 2030-01-01T00:00:00Z, exported as `POLARS_CLOUD_ACCESS_TOKEN` and written to a file under RUNNER_TEMP. It is not renewed: for steps that start after that, or run longer, set the input `long-running: true`."
    );
    assert!(
        summary_line(&issuer, "x", false, false, false)
            .contains("available as the step's `access-token` output.")
    );
    let relay = summary_line(&issuer, "x", true, false, true);
    assert!(
        relay.contains("kept fresh") && relay.contains("long-running: true"),
        "{relay}"
    );
}

#[test]
fn the_token_file_goes_under_runner_temp_and_never_into_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join("_temp");
    let workspace = dir.path().join("repo");
    std::fs::create_dir_all(&temp).unwrap();
    let path = token_file_path(Some(&temp), Some(&workspace), 0xab).unwrap();
    assert_eq!(path, temp.join("polars-cloud-token-00000000000000ab"));
    assert!(matches!(
        token_file_path(None, Some(&workspace), 1),
        Err(Error::NoRunnerTemp)
    ));
    let inside = workspace.join("tmp");
    std::fs::create_dir_all(&inside).unwrap();
    assert!(matches!(
        token_file_path(Some(&inside), Some(&workspace), 1),
        Err(Error::TempInWorkspace { .. })
    ));
}

/// After post, later steps get the job's own proxy and trust store back: an unset proxy
/// becomes empty (no proxy), an unset SSL_CERT_FILE the system roots the relay's bundle was
/// made from; variables the relay did not export are left alone.
#[test]
fn the_network_after_the_relay_is_the_jobs_own() {
    let exported: std::collections::BTreeMap<String, String> = [
        ("HTTPS_PROXY", "http://127.0.0.1:4000"),
        ("https_proxy", "http://127.0.0.1:4000"),
        ("SSL_CERT_FILE", "/tmp/relay/ca-bundle.pem"),
        ("POLARS_CLOUD_CONFIG_DIR", "/tmp/relay/client"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let unset = env(&[]);
    let after = network_after_relay(&|k: &str| unset.get(k).cloned(), &exported);
    assert_eq!(
        after,
        [
            ("HTTPS_PROXY", ""),
            ("SSL_CERT_FILE", crate::relay::SYSTEM_ROOTS),
            ("https_proxy", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    );
    let job = env(&[
        ("HTTPS_PROXY", "http://proxy.corp:3128"),
        ("SSL_CERT_FILE", "/etc/corp/roots.pem"),
    ]);
    let after = network_after_relay(&|k: &str| job.get(k).cloned(), &exported);
    assert_eq!(after["HTTPS_PROXY"], "http://proxy.corp:3128");
    assert_eq!(after["https_proxy"], "http://proxy.corp:3128");
    assert_eq!(after["SSL_CERT_FILE"], "/etc/corp/roots.pem");
}
