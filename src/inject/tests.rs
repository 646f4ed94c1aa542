use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;

/// Runs the injection on a pod given as JSON and returns the patched pod.
fn run(pod: &Value, settings: &Settings) -> Result<(Value, Outcome), InjectError> {
    let meta: ObjectMeta = serde_json::from_value(pod["metadata"].clone()).unwrap();
    let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).unwrap();
    let outcome = inject(&meta, &spec, settings)?;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &outcome.patch.0).unwrap();
    Ok((patched, outcome))
}

fn injected(pod: &Value) -> Value {
    run(pod, &Settings::default()).unwrap().0
}

fn err(pod: &Value) -> String {
    run(pod, &Settings::default()).unwrap_err().to_string()
}

fn pod(annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": {"polars.cloud/inject": "true"},
            "annotations": annotations,
        },
        "spec": spec,
    })
}

fn app() -> Value {
    json!({"containers": [{"name": "app", "image": "busybox"}]})
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// Init containers, then containers, of a pod spec.
fn all_containers(spec: &Value) -> Vec<&Value> {
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect()
}

fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[test]
fn native_sidecar_by_default() {
    let (p, outcome) = run(&pod(json!({}), app()), &Settings::default()).unwrap();
    assert_eq!(outcome.mode, Mode::Native);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let spec = &p["spec"];
    assert_eq!(names(&spec["initContainers"]), ["polars-cloud-auth"]);
    let ours = &spec["initContainers"][0];
    assert_eq!(ours["restartPolicy"], "Always");
    assert_eq!(ours["args"], json!(["sidecar"]));
    assert!(
        ours.get("command").is_none(),
        "the image ENTRYPOINT runs the binary"
    );
    assert_eq!(ours["image"], default_image());
    // The app waits for the postStart hook, which returns once the token is on disk; no
    // startup probe (its period would delay every pod start).
    assert_eq!(
        ours["lifecycle"]["postStart"]["exec"]["command"],
        json!([
            ENTRYPOINT,
            "probe",
            "--wait",
            "120s",
            "--ready-url",
            "http://127.0.0.1:8471/readyz"
        ])
    );
    assert!(ours.get("startupProbe").is_none());
    assert_eq!(ours["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(ours["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(ours["ports"][0]["containerPort"], 8471);
    assert_eq!(
        ours["resources"],
        json!({"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}})
    );
    assert_eq!(
        ours["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 65532,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}
        })
    );
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_CREDENTIALS_DIR"),
        Some(CREDENTIALS_DIR)
    );
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        Some("/var/run/polars-cloud/token")
    );
    assert_eq!(env_of(ours, "POLARS_CLOUD_TOKEN_FILE_MODE"), Some("0644"));
    assert_eq!(env_of(ours, "POLARS_CLOUD_LISTEN"), Some("0.0.0.0:8471"));
    assert_eq!(env_of(ours, "POLARS_CLOUD_DOMAIN"), None);
    assert_eq!(
        ours["volumeMounts"],
        json!([
            {"name": "polars-cloud-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true},
            {"name": "polars-cloud-token", "mountPath": "/var/run/polars-cloud"},
            {"name": "polars-cloud-client", "mountPath": "/var/run/polars-cloud-client"},
            {"name": "polars-cloud-auth-state", "mountPath": "/var/run/polars-cloud-auth"}
        ])
    );
    // The app container: the token volume read-only and the path, never the credentials.
    let app = &spec["containers"][0];
    assert_eq!(
        app["volumeMounts"],
        json!([
            {"name": "polars-cloud-token", "mountPath": "/var/run/polars-cloud", "readOnly": true},
            {"name": "polars-cloud-client", "mountPath": "/var/run/polars-cloud-client"}
        ])
    );
    assert_eq!(
        env_of(app, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        Some("/var/run/polars-cloud/token")
    );
    // The relay: the client's config directory, the private domain whose auth host is
    // our container, the real API, and the bundle that trusts the relay.
    assert_eq!(
        env_of(app, "POLARS_CLOUD_CONFIG_DIR"),
        Some("/var/run/polars-cloud-client/app")
    );
    assert_eq!(
        env_of(app, "POLARS_CLOUD_DOMAIN"),
        Some("polars-cloud-auth.internal")
    );
    assert_eq!(
        env_of(app, "POLARS_CLOUD_API_ADDR"),
        Some("https://api.prd.cloud.pola.rs")
    );
    assert_eq!(
        env_of(app, "SSL_CERT_FILE"),
        Some("/var/run/polars-cloud/ca-bundle.pem")
    );
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_RELAY_CLIENT_CONFIGS"),
        Some("/var/run/polars-cloud-client/app")
    );
    assert_eq!(
        spec["hostAliases"],
        json!([{"ip": "127.0.0.1", "hostnames": ["auth.polars-cloud-auth.internal"]}])
    );
    assert_eq!(
        spec["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "443"}])
    );
    let memory = json!({"medium": "Memory", "sizeLimit": "1Mi"});
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "polars-cloud-token", "emptyDir": memory},
            {"name": "polars-cloud-credentials",
             "secret": {"secretName": "polars-cloud-credentials", "defaultMode": 0o444}},
            {"name": "polars-cloud-client", "emptyDir": memory},
            {"name": "polars-cloud-auth-state", "emptyDir": memory}
        ])
    );
    assert_eq!(
        p["metadata"]["annotations"]["polars.cloud/injected"],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn classic_mode_adds_an_init_container_and_a_sidecar() {
    let (p, outcome) = run(
        &pod(json!({"polars.cloud/mode": "classic"}), app()),
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(outcome.mode, Mode::Classic);
    assert_eq!(
        names(&p["spec"]["initContainers"]),
        ["polars-cloud-auth-init"]
    );
    assert_eq!(
        names(&p["spec"]["containers"]),
        ["app", "polars-cloud-auth"]
    );
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["args"], json!(["init"]));
    assert!(init.get("restartPolicy").is_none());
    assert!(init.get("startupProbe").is_none() && init.get("ports").is_none());
    assert_eq!(env_of(init, "POLARS_CLOUD_LISTEN"), None);
    let sidecar = &p["spec"]["containers"][1];
    assert_eq!(sidecar["args"], json!(["sidecar"]));
    assert!(sidecar.get("restartPolicy").is_none());
    assert!(sidecar.get("startupProbe").is_none());
    // Started (and so first probed for readiness) only once ready.
    assert_eq!(
        sidecar["lifecycle"]["postStart"]["exec"]["command"]
            .as_array()
            .unwrap()[1..4],
        [json!("probe"), json!("--wait"), json!("120s")]
    );
    assert!(init.get("lifecycle").is_none());
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "pca-http");
    // Only the app container gets the read-only mount.
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["readOnly"],
        true
    );
}

#[test]
fn init_only_mode_adds_one_init_container() {
    let (p, _) = run(
        &pod(json!({"polars.cloud/mode": "init-only"}), app()),
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(names(&p["spec"]["initContainers"]), ["polars-cloud-auth"]);
    assert_eq!(names(&p["spec"]["containers"]), ["app"]);
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["args"], json!(["init"]));
    assert!(init.get("ports").is_none() && init.get("readinessProbe").is_none());
}

#[test]
fn the_mode_setting_is_the_default_for_pods_without_the_annotation() {
    let s = Settings {
        mode: Mode::InitOnly,
        ..Settings::default()
    };
    let (p, _) = run(&pod(json!({}), app()), &s).unwrap();
    assert_eq!(p["spec"]["initContainers"][0]["args"], json!(["init"]));
}

#[test]
fn a_second_pass_adds_nothing_in_every_mode() {
    for mode in ["native", "classic", "init-only"] {
        let once = injected(&pod(json!({"polars.cloud/mode": mode}), app()));
        let (twice, outcome) = run(&once, &Settings::default()).unwrap();
        assert!(outcome.patch.0.is_empty(), "{mode}: {:?}", outcome.patch);
        assert_eq!(twice, once);
    }
}

#[test]
fn a_reinvocation_serves_containers_added_since() {
    let mut once = injected(&pod(json!({}), app()));
    once["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "x", "env": [{"name": "A", "value": "1"}]}));
    let (twice, _) = run(&once, &Settings::default()).unwrap();
    let late = &twice["spec"]["containers"][1];
    assert_eq!(late["env"][0]["name"], "A");
    assert_eq!(
        env_of(late, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        Some("/var/run/polars-cloud/token")
    );
    assert_eq!(
        env_of(late, "POLARS_CLOUD_CONFIG_DIR"),
        Some("/var/run/polars-cloud-client/late")
    );
    // Our container now seeds the late container's config directory too.
    assert_eq!(
        env_of(
            &twice["spec"]["initContainers"][0],
            "POLARS_CLOUD_RELAY_CLIENT_CONFIGS"
        ),
        Some("/var/run/polars-cloud-client/app,/var/run/polars-cloud-client/late")
    );
    // A third pass has nothing left to do.
    let (_, again) = run(&twice, &Settings::default()).unwrap();
    assert!(again.patch.0.is_empty(), "{:?}", again.patch);
    assert_eq!(
        names(&twice["spec"]["initContainers"]),
        ["polars-cloud-auth"]
    );
}

#[test]
fn existing_init_containers_and_volumes_are_kept_and_ours_go_first() {
    let spec = json!({
        "initContainers": [{"name": "migrate", "image": "m",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "env": [{"name": "X", "value": "y"}]}],
        "containers": [{"name": "app", "image": "a",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {}}]
    });
    let p = injected(&pod(json!({"team": "a"}), spec));
    let s = &p["spec"];
    assert_eq!(
        names(&s["initContainers"]),
        ["polars-cloud-auth", "migrate"]
    );
    assert_eq!(
        names(&s["volumes"]),
        [
            "data",
            "polars-cloud-token",
            "polars-cloud-credentials",
            "polars-cloud-client",
            "polars-cloud-auth-state"
        ]
    );
    let migrate = &s["initContainers"][1];
    assert_eq!(
        names(&migrate["volumeMounts"]),
        ["data", "polars-cloud-token", "polars-cloud-client"]
    );
    assert_eq!(
        names(&migrate["env"])[..2],
        ["X", "POLARS_CLOUD_ACCESS_TOKEN_PATH"]
    );
    assert_eq!(
        names(&s["containers"][0]["volumeMounts"]),
        ["data", "polars-cloud-token", "polars-cloud-client"]
    );
    assert_eq!(p["metadata"]["annotations"]["team"], "a");
}

#[test]
fn pods_without_annotations_get_the_marker() {
    let mut p = pod(json!({}), app());
    p["metadata"].as_object_mut().unwrap().remove("annotations");
    let p = injected(&p);
    assert_eq!(
        p["metadata"]["annotations"],
        json!({"polars.cloud/injected": env!("CARGO_PKG_VERSION")})
    );
}

#[test]
fn skipped_containers_get_nothing() {
    let spec = json!({"containers": [
        {"name": "app", "image": "a"}, {"name": "proxy", "image": "p"}, {"name": "log", "image": "l"}
    ]});
    let p = injected(&pod(
        json!({"polars.cloud/skip-containers": "proxy, log"}),
        spec,
    ));
    let c = &p["spec"]["containers"];
    assert!(c[0]["volumeMounts"].is_array());
    assert!(c[1].get("volumeMounts").is_none() && c[1].get("env").is_none());
    assert!(c[2].get("volumeMounts").is_none());

    let (_, outcome) = run(
        &pod(json!({"polars.cloud/skip-containers": "app"}), app()),
        &Settings::default(),
    )
    .unwrap();
    assert!(
        outcome.warnings[0].contains("no container"),
        "{:?}",
        outcome.warnings
    );
}

#[test]
fn an_fs_group_narrows_the_file_modes() {
    let mut spec = app();
    spec["securityContext"] = json!({"fsGroup": 2000});
    let p = injected(&pod(json!({}), spec));
    let ours = &p["spec"]["initContainers"][0];
    assert_eq!(env_of(ours, "POLARS_CLOUD_TOKEN_FILE_MODE"), Some("0640"));
    assert_eq!(p["spec"]["volumes"][1]["secret"]["defaultMode"], 0o440);
}

#[test]
fn annotations_override_the_settings() {
    let s = Settings {
        domain: Some("eu.cloud.example".into()),
        issuer: Some("https://auth.cloud.example/realms/x".into()),
        ..Settings::default()
    };
    let (p, outcome) = run(
        &pod(
            json!({
                "polars.cloud/secret-name": "team-creds",
                "polars.cloud/token-path": "/run/tokens/polars",
                "polars.cloud/image": "mirror.example:5000/polars-cloud-auth@sha256:abc",
                "polars.cloud/cpu-request": "10m",
                "polars.cloud/memory-request": "24Mi",
                "polars.cloud/memory-limit": "48Mi",
                "polars.cloud/min-valid": "2m",
                "polars.cloud/renew-at": "0.5",
            }),
            app(),
        ),
        &s,
    )
    .unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let ours = &p["spec"]["initContainers"][0];
    assert_eq!(
        ours["image"],
        "mirror.example:5000/polars-cloud-auth@sha256:abc"
    );
    assert_eq!(
        ours["resources"],
        json!({"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "48Mi"}})
    );
    assert_eq!(ours["lifecycle"]["postStart"]["exec"]["command"][7], "2m");
    assert_eq!(env_of(ours, "POLARS_CLOUD_RENEW_AT"), Some("0.5"));
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_DOMAIN"),
        Some("eu.cloud.example")
    );
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_ISSUER"),
        Some("https://auth.cloud.example/realms/x")
    );
    assert_eq!(
        env_of(ours, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        Some("/run/tokens/polars")
    );
    assert_eq!(ours["volumeMounts"][1]["mountPath"], "/run/tokens");
    assert_eq!(
        p["spec"]["volumes"][1]["secret"]["secretName"],
        "team-creds"
    );
    let app = &p["spec"]["containers"][0];
    assert_eq!(app["volumeMounts"][0]["mountPath"], "/run/tokens");
    assert_eq!(
        env_of(app, "POLARS_CLOUD_ACCESS_TOKEN_PATH"),
        Some("/run/tokens/polars")
    );
}

#[test]
fn an_app_container_that_already_names_the_token_path_keeps_it() {
    let spec = json!({"containers": [{"name": "app", "image": "a",
        "env": [{"name": "POLARS_CLOUD_ACCESS_TOKEN_PATH", "value": "/var/run/polars-cloud/token"}]}]});
    let p = injected(&pod(json!({}), spec));
    let env = p["spec"]["containers"][0]["env"].as_array().unwrap();
    let named = |n: &str| env.iter().filter(|e| e["name"] == n).count();
    assert_eq!(named("POLARS_CLOUD_ACCESS_TOKEN_PATH"), 1);
    assert_eq!(named("POLARS_CLOUD_CONFIG_DIR"), 1);
}

#[test]
fn conflicts_are_refused_saying_what_to_fix() {
    let taken_volume = pod(
        json!({}),
        json!({"containers": [{"name": "app", "image": "a"}],
               "volumes": [{"name": "polars-cloud-token", "emptyDir": {}}]}),
    );
    let e = err(&taken_volume);
    assert!(
        e.contains("volume named 'polars-cloud-token'") && e.contains("rename"),
        "{e}"
    );

    let taken_container = pod(
        json!({}),
        json!({"containers": [{"name": "polars-cloud-auth", "image": "a"}]}),
    );
    assert!(err(&taken_container).contains("container named 'polars-cloud-auth'"));

    let mount = pod(
        json!({}),
        json!({"containers": [{"name": "app", "image": "a",
            "volumeMounts": [{"name": "run", "mountPath": "/var/run/polars-cloud/"}]}]}),
    );
    let e = err(&mount);
    assert!(
        e.contains("container 'app' already mounts a volume at /var/run/polars-cloud"),
        "{e}"
    );
    assert!(e.contains("polars.cloud/token-path"), "{e}");

    let env = pod(
        json!({}),
        json!({"containers": [{"name": "app", "image": "a",
            "env": [{"name": "POLARS_CLOUD_ACCESS_TOKEN_PATH", "value": "/tmp/t"}]}]}),
    );
    let e = err(&env);
    assert!(
        e.contains("'/tmp/t'") && e.contains("polars.cloud/token-path"),
        "{e}"
    );

    let port = pod(
        json!({}),
        json!({"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8471}]}]}),
    );
    assert!(err(&port).contains("port 8471"));
    // init-only runs no server, so the port is free to use.
    let mut init_only = port.clone();
    init_only["metadata"]["annotations"]["polars.cloud/mode"] = json!("init-only");
    assert!(run(&init_only, &Settings::default()).is_ok());

    let skip = pod(json!({"polars.cloud/skip-containers": "sidecar"}), app());
    let e = err(&skip);
    assert!(
        e.contains("'sidecar'") && e.contains("its containers: app"),
        "{e}"
    );

    let windows = pod(
        json!({}),
        json!({"os": {"name": "windows"}, "containers": [{"name": "app", "image": "a"}]}),
    );
    assert!(err(&windows).contains("linux only"));
}

#[test]
fn malformed_annotations_are_refused_naming_annotation_and_value() {
    let cases = [
        (
            "polars.cloud/mode",
            "sometimes",
            "native, classic or init-only",
        ),
        (
            "polars.cloud/secret-name",
            "Team_Creds",
            "not a Secret name",
        ),
        ("polars.cloud/token-path", "token", "absolute file path"),
        ("polars.cloud/token-path", "/token", "below a directory"),
        (
            "polars.cloud/token-path",
            "/var/run/secrets/polars-cloud/t",
            "overlaps",
        ),
        ("polars.cloud/image", "", "image reference"),
        ("polars.cloud/cpu-request", "lots", "quantity"),
        ("polars.cloud/memory-limit", "-1Mi", "negative"),
        ("polars.cloud/min-valid", "soon", "duration"),
        ("polars.cloud/min-valid", "0s", "between 1s and 24h"),
        ("polars.cloud/renew-at", "2", "fraction"),
    ];
    for (key, value, hint) in cases {
        let e = err(&pod(json!({ key: value }), app()));
        assert!(e.starts_with(&format!("annotation {key}: ")), "{e}");
        assert!(e.contains(hint), "{key}={value}: {e}");
    }
    let e = err(&pod(
        json!({"polars.cloud/memory-request": "64Mi", "polars.cloud/memory-limit": "32Mi"}),
        app(),
    ));
    assert!(
        e.contains("request 64Mi") && e.contains("limit 32Mi"),
        "{e}"
    );
}

#[test]
fn warnings_for_unknown_annotations_and_classic_jobs() {
    let mut spec = app();
    spec["restartPolicy"] = json!("Never");
    let (_, outcome) = run(
        &pod(
            json!({"polars.cloud/mode": "classic", "polars.cloud/secretname": "x"}),
            spec,
        ),
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(outcome.warnings.len(), 2, "{:?}", outcome.warnings);
    assert_eq!(
        outcome.warnings[0],
        "annotation polars.cloud/secretname is unknown and has no effect; did you mean polars.cloud/secret-name?"
    );
    assert!(outcome.warnings[1].contains("never completes"));
}

#[test]
fn opt_in_needs_the_label_true() {
    let mut meta = ObjectMeta::default();
    assert!(!opted_in(&meta));
    meta.labels = Some(BTreeMap::from([(INJECT_LABEL.into(), "false".into())]));
    assert!(!opted_in(&meta));
    meta.labels = Some(BTreeMap::from([(INJECT_LABEL.into(), "true".into())]));
    assert!(opted_in(&meta));
}

#[test]
fn unknown_annotations_far_from_any_known_one_list_the_known_ones() {
    let (_, outcome) = run(
        &pod(json!({"polars.cloud/owner": "team-a"}), app()),
        &Settings::default(),
    )
    .unwrap();
    let w = &outcome.warnings[0];
    assert!(w.contains("known: secret-name, token-path, mode,"), "{w}");
    assert!(w.len() < 256, "kubectl may truncate longer warnings: {w}");
}

#[test]
fn relay_conflicts_are_refused_and_the_relay_can_be_switched_off() {
    let with_env = |name: &str, value: &str| {
        pod(
            json!({}),
            json!({"containers": [{"name": "app", "image": "a",
                "env": [{"name": name, "value": value}]}]}),
        )
    };
    let e = err(&with_env("SSL_CERT_FILE", "/etc/corp.pem"));
    assert!(
        e.contains("SSL_CERT_FILE") && e.contains("polars.cloud/relay"),
        "{e}"
    );
    let e = err(&with_env("POLARS_CLOUD_DOMAIN", "dev.cloud.pola.rs"));
    assert!(e.contains("POLARS_CLOUD_DOMAIN"), "{e}");
    // The app's own API address wins.
    let p = injected(&with_env("POLARS_CLOUD_API_ADDR", "https://api.example"));
    assert_eq!(
        env_of(&p["spec"]["containers"][0], "POLARS_CLOUD_API_ADDR"),
        Some("https://api.example")
    );
    // A pod's port sysctl above 443 rules the relay out.
    let mut high = pod(json!({}), app());
    high["spec"]["securityContext"] =
        json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "1024"}]});
    assert!(err(&high).contains("ip_unprivileged_port_start"));
    // Off: the token file only, as before the relay.
    let p = injected(&pod(json!({"polars.cloud/relay": "false"}), app()));
    assert_eq!(
        env_of(&p["spec"]["containers"][0], "POLARS_CLOUD_CONFIG_DIR"),
        None
    );
    assert!(p["spec"].get("hostAliases").is_none());
    assert_eq!(names(&p["spec"]["volumes"]).len(), 2);
    let e = err(&pod(json!({"polars.cloud/relay": "maybe"}), app()));
    assert!(e.contains("polars.cloud/relay"), "{e}");
}

#[test]
fn host_network_pods_get_no_relay_and_a_warning() {
    let mut p = pod(json!({}), app());
    p["spec"]["hostNetwork"] = json!(true);
    let (p, outcome) = run(&p, &Settings::default()).unwrap();
    assert!(p["spec"].get("hostAliases").is_none());
    assert!(
        outcome.warnings.iter().any(|w| w.contains("hostNetwork")),
        "{:?}",
        outcome.warnings
    );
}

#[test]
fn init_only_pods_get_the_relay_files_but_no_port_sysctl() {
    let p = injected(&pod(json!({"polars.cloud/mode": "init-only"}), app()));
    assert!(p["spec"]["securityContext"].get("sysctls").is_none());
    assert_eq!(
        env_of(
            &p["spec"]["initContainers"][0],
            "POLARS_CLOUD_RELAY_CLIENT_CONFIGS"
        ),
        Some("/var/run/polars-cloud-client/app")
    );
}

/// Every variable the injector gives our containers is read by an argument of the mode
/// that container runs (clap's `env`), so a renamed flag cannot leave a dead variable. It
/// covers every kind of pod: credentials Secret, client assertion, broker-backed, and the
/// settings that add variables (domain, issuer, renew-at).
#[test]
fn our_containers_get_only_variables_their_mode_reads() {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let reads = |mode: &str| -> BTreeSet<String> {
        let sub = cli.find_subcommand(mode).unwrap();
        sub.get_arguments()
            .chain(cli.get_arguments())
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    };
    let full = Settings {
        domain: Some("dev.example".into()),
        issuer: Some("https://auth.dev.example/realms/Polars".into()),
        renew_at: Some(0.5),
        ..Settings::default()
    };
    let kinds = [
        ("secret", json!({}), full.clone()),
        (
            "assertion",
            json!({"polars.cloud/client-assertion-audience": "https://kc.example/realms/x"}),
            full.clone(),
        ),
        (
            "broker",
            json!({}),
            Settings {
                domain: full.domain.clone(),
                renew_at: full.renew_at,
                ..with_broker(true)
            },
        ),
    ];
    let mut seen = BTreeSet::new();
    for (kind, annotations, settings) in &kinds {
        for mode in ["native", "classic", "init-only"] {
            let mut annotations = annotations.clone();
            annotations["polars.cloud/mode"] = json!(mode);
            let (p, _) = run(&pod(annotations, app()), settings).unwrap();
            let ours = p["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(p["spec"]["containers"].as_array().unwrap())
                .filter(|c| c["name"].as_str().unwrap().starts_with("polars-cloud-auth"));
            for c in ours {
                let subcommand = c["args"][0].as_str().unwrap();
                let known = reads(subcommand);
                for e in c["env"].as_array().unwrap() {
                    let name = e["name"].as_str().unwrap();
                    assert!(
                        known.contains(name),
                        "{kind} {mode}: `{subcommand}` reads no {name}"
                    );
                    seen.insert(name.to_string());
                }
            }
        }
    }
    // The kinds above reach every variable the injector can set.
    for var in [
        crate::vars::TOKEN_URL,
        crate::vars::CA_PEM,
        crate::vars::CLIENT_ASSERTION_FILE,
        crate::vars::GRANT,
        crate::vars::CREDENTIALS_DIR,
        crate::vars::ISSUER,
        crate::vars::DOMAIN,
        crate::vars::RENEW_AT,
        crate::vars::RELAY_CLIENT_CONFIGS,
    ] {
        assert!(seen.contains(var), "no pod got {var}: {seen:?}");
    }
}

#[test]
fn shared_process_namespaces_are_refused_unless_accepted() {
    for field in ["shareProcessNamespace", "hostPID"] {
        let mut p = pod(json!({}), app());
        p["spec"][field] = json!(true);
        let e = err(&p);
        assert!(e.contains(field) && e.contains("client secret"), "{e}");
        let mut ok = pod(
            json!({"polars.cloud/allow-shared-processes": "true"}),
            app(),
        );
        ok["spec"][field] = json!(true);
        let (_, outcome) = run(&ok, &Settings::default()).unwrap();
        assert!(
            outcome.warnings.iter().any(|w| w.contains("/proc")),
            "{:?}",
            outcome.warnings
        );
    }
}

#[test]
fn token_paths_that_would_hide_system_files_or_ours_are_refused() {
    for bad in [
        "/usr/local/bin/token",
        "/etc/ssl/token",
        "/proc/x/token",
        "/dev/shm/token",
        "/var/run/polars-cloud-auth/token",
        "/var/run/polars-cloud-client/token",
        "/var/run/secrets/polars-cloud/token",
    ] {
        assert!(TokenPath::parse(bad).is_err(), "{bad}");
    }
    for good in [
        "/var/run/polars-cloud/token",
        "/run/tokens/polars",
        "/tmp/t/token",
    ] {
        assert!(TokenPath::parse(good).is_ok(), "{good}");
    }
}

/// A client assertion replaces the credentials Secret: a projected service-account token
/// for the audience, mounted into our containers only, and the variables that point the
/// client at it; no Secret volume anywhere.
#[test]
fn a_client_assertion_audience_projects_a_token_into_our_containers_only() {
    let audience = "https://kc.example/realms/mine";
    for mode in ["native", "classic", "init-only"] {
        let ann = json!({
            "polars.cloud/client-assertion-audience": audience,
            "polars.cloud/mode": mode,
        });
        let (p, outcome) = run(&pod(ann, app()), &Settings::default()).unwrap();
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        let spec = &p["spec"];
        let volumes = spec["volumes"].as_array().unwrap();
        assert!(
            !names(&spec["volumes"]).contains(&CREDENTIALS_VOLUME),
            "{mode}"
        );
        let projected = volumes
            .iter()
            .find(|v| v["name"] == projected_token::VOLUME)
            .unwrap();
        assert_eq!(
            projected["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            audience
        );
        let ours: Vec<&Value> = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
            .collect();
        for c in ours {
            let mounts = names(&c["volumeMounts"]);
            if c["name"] == "app" {
                assert!(
                    !mounts.contains(&projected_token::VOLUME),
                    "the app must not see it"
                );
                continue;
            }
            assert!(mounts.contains(&projected_token::VOLUME), "{mode} {c}");
            assert!(!mounts.contains(&CREDENTIALS_VOLUME), "{mode} {c}");
            assert_eq!(env_of(c, "POLARS_CLOUD_GRANT"), Some("client-credentials"));
            assert_eq!(
                env_of(c, "POLARS_CLOUD_CLIENT_ASSERTION_FILE"),
                Some("/var/run/secrets/polars-cloud-assertion/token")
            );
            assert_eq!(env_of(c, "POLARS_CLOUD_CREDENTIALS_DIR"), None);
        }
        // A second pass adds nothing.
        let (_, again) = run(&p, &Settings::default()).unwrap();
        assert!(again.patch.0.is_empty(), "{mode}: {:?}", again.patch);
    }
}

#[test]
fn a_bad_client_assertion_audience_is_refused_and_a_typo_gets_did_you_mean() {
    let e = err(&pod(
        json!({"polars.cloud/client-assertion-audience": "two words"}),
        app(),
    ));
    assert!(
        e.starts_with("annotation polars.cloud/client-assertion-audience:")
            && e.contains("issuer URL"),
        "{e}"
    );
    let (_, outcome) = run(
        &pod(
            json!({"polars.cloud/client-assertion-audiense": "x"}),
            app(),
        ),
        &Settings::default(),
    )
    .unwrap();
    assert!(
        outcome.warnings[0].ends_with("did you mean polars.cloud/client-assertion-audience?"),
        "{:?}",
        outcome.warnings
    );
}

#[test]
fn the_client_assertion_audience_can_be_the_injectors_default() {
    let s = Settings {
        client_assertion_audience: Some("https://kc.example/realms/r".into()),
        ..Settings::default()
    };
    let (p, _) = run(&pod(json!({}), app()), &s).unwrap();
    assert!(names(&p["spec"]["volumes"]).contains(&projected_token::VOLUME));
}

fn with_broker(default_on: bool) -> Settings {
    Settings {
        broker: Some(broker::Broker {
            url: "https://pca-broker.pca.svc:443/token".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            audience: "polars-cloud-auth".into(),
            expiration_seconds: broker::EXPIRATION_SECONDS,
            default_on,
        }),
        ..Settings::default()
    }
}

/// A broker-backed pod mounts no Secret of ours: our containers present the pod's
/// projected token to the broker, trusting its CA; the relay is unchanged.
#[test]
fn a_broker_backed_pod_mounts_no_secret_and_presents_its_projected_token() {
    for mode in ["native", "classic", "init-only"] {
        let (p, outcome) = run(
            &pod(json!({"polars.cloud/mode": mode}), app()),
            &with_broker(true),
        )
        .unwrap();
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        let spec = &p["spec"];
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v.get("secret").is_none()),
            "{mode}: {}",
            spec["volumes"]
        );
        let projected = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == broker::VOLUME)
            .unwrap();
        assert_eq!(
            projected["projected"]["sources"][0]["serviceAccountToken"],
            json!({"audience": "polars-cloud-auth", "expirationSeconds": 600, "path": "token"})
        );
        let all = all_containers(spec);
        for c in all {
            let mounts = names(&c["volumeMounts"]);
            if c["name"] == "app" {
                assert!(!mounts.contains(&broker::VOLUME), "the app must not see it");
                if mode != "init-only" {
                    // The relay is there as without the broker.
                    assert_eq!(
                        env_of(c, "POLARS_CLOUD_DOMAIN"),
                        Some("polars-cloud-auth.internal")
                    );
                }
                continue;
            }
            assert!(mounts.contains(&broker::VOLUME), "{mode} {c}");
            assert_eq!(env_of(c, "POLARS_CLOUD_GRANT"), Some("client-credentials"));
            assert_eq!(
                env_of(c, "POLARS_CLOUD_TOKEN_URL"),
                Some("https://pca-broker.pca.svc:443/token")
            );
            assert_eq!(
                env_of(c, "POLARS_CLOUD_CLIENT_ASSERTION_FILE"),
                Some("/var/run/secrets/polars-cloud-broker/token")
            );
            assert!(
                env_of(c, "POLARS_CLOUD_CA_PEM")
                    .unwrap()
                    .contains("BEGIN CERTIFICATE")
            );
            assert_eq!(env_of(c, "POLARS_CLOUD_CREDENTIALS_DIR"), None);
        }
        let (_, again) = run(&p, &with_broker(true)).unwrap();
        assert!(again.patch.0.is_empty(), "{mode}: {:?}", again.patch);
    }
}

#[test]
fn pods_opt_in_and_out_of_the_broker_and_its_absence_is_explained() {
    let secret = |p: &Value| names(&p["spec"]["volumes"]).contains(&CREDENTIALS_VOLUME);
    let (p, _) = run(
        &pod(json!({"polars.cloud/broker": "false"}), app()),
        &with_broker(true),
    )
    .unwrap();
    assert!(secret(&p));
    let (p, _) = run(
        &pod(json!({"polars.cloud/broker": "true"}), app()),
        &with_broker(false),
    )
    .unwrap();
    assert!(!secret(&p) && names(&p["spec"]["volumes"]).contains(&broker::VOLUME));
    let (p, _) = run(&pod(json!({}), app()), &with_broker(false)).unwrap();
    assert!(secret(&p));
    // A pod's own realm audience wins over the broker.
    let (p, _) = run(
        &pod(
            json!({"polars.cloud/client-assertion-audience": "https://kc.example/realms/r"}),
            app(),
        ),
        &with_broker(true),
    )
    .unwrap();
    assert!(names(&p["spec"]["volumes"]).contains(&projected_token::VOLUME));
    assert!(!names(&p["spec"]["volumes"]).contains(&broker::VOLUME));
    let e = err(&pod(json!({"polars.cloud/broker": "true"}), app()));
    assert!(
        e.contains("knows no token broker") && e.contains("broker.enabled"),
        "{e}"
    );
    // "false" without a broker is no error.
    assert!(
        run(
            &pod(json!({"polars.cloud/broker": "false"}), app()),
            &Settings::default()
        )
        .is_ok()
    );
}

/// An issuer behind a private CA: our containers that talk to the identity provider trust
/// it through POLARS_CLOUD_CA_PEM; a broker-backed one keeps the broker's CA (its only
/// peer); the app containers never get it.
#[test]
fn the_issuer_ca_reaches_our_containers_that_talk_to_the_identity_provider() {
    const ISSUER_CA: &str = "-----BEGIN CERTIFICATE-----\nISSUER\n-----END CERTIFICATE-----\n";
    for mode in ["native", "classic", "init-only"] {
        let s = Settings {
            issuer_ca_pem: Some(ISSUER_CA.into()),
            ..Settings::default()
        };
        let (p, _) = run(&pod(json!({"polars.cloud/mode": mode}), app()), &s).unwrap();
        let spec = &p["spec"];
        let all = all_containers(spec);
        for c in all {
            let want = (c["name"] != "app").then_some(ISSUER_CA);
            assert_eq!(env_of(c, "POLARS_CLOUD_CA_PEM"), want, "{mode} {c}");
        }
        let broker = Settings {
            issuer_ca_pem: Some(ISSUER_CA.into()),
            ..with_broker(true)
        };
        let (p, _) = run(&pod(json!({"polars.cloud/mode": mode}), app()), &broker).unwrap();
        let ours = &p["spec"]["initContainers"][0];
        let pems: Vec<&Value> = ours["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["name"] == "POLARS_CLOUD_CA_PEM")
            .collect();
        assert_eq!(pems.len(), 1, "{mode}: {pems:?}");
        assert!(
            pems[0]["value"].as_str().unwrap().contains("MIIB"),
            "{mode}"
        );
    }
}
