//! `polars-cloud-auth inject` over manifests of every supported kind (tests/data/inject):
//! the output is checked with kubernetes-validate (strict, Kubernetes 1.29 and the newest
//! bundled version) and the token contract; injecting twice equals injecting once; other
//! documents pass through unchanged; a refused object stops the whole run.

use crate::kube;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::common::{bin_cmd, have_python, repo, require};

fn data(name: &str) -> PathBuf {
    repo().join("tests/data/inject").join(name)
}

fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/data/inject"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `inject` with `args`, `stdin`, and no POLARS_CLOUD_* from the environment.
fn inject(args: &[&str], stdin: &[u8]) -> Output {
    let mut c = bin_cmd();
    c.arg("inject").args(args);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

fn template(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn every_supported_kind_is_injected_into_valid_manifests() {
    require!(have_python());
    let files = inputs();
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let out = inject(&args, b"");
    let yaml = ok(&out);
    let report = String::from_utf8_lossy(&out.stderr);

    let mut injected = Vec::new();
    let mut untouched = Vec::new();
    let originals: Vec<Value> = files
        .iter()
        .flat_map(|f| docs(&std::fs::read_to_string(f).unwrap()))
        .collect();
    let results = docs(&yaml);
    assert_eq!(
        results.len(),
        originals.len(),
        "one document out per document in"
    );
    let mut flat = Vec::new();
    for (before, after) in originals.iter().zip(&results) {
        if after["kind"] == "List" {
            flat.extend(
                before["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(after["items"].as_array().unwrap()),
            );
        } else {
            flat.push((before, after));
        }
    }
    for (before, after) in flat {
        let kind = after["kind"].as_str().unwrap().to_string();
        let name = after["metadata"]["name"].as_str().unwrap_or("").to_string();
        let marked = template_has_marker(after);
        if marked {
            injected.push(kind.clone());
            // Only the pod template changed.
            let (mut b, mut a) = (before.clone(), after.clone());
            strip_template(&mut b);
            strip_template(&mut a);
            assert_eq!(a, b, "{kind}/{name}: more than the pod template changed");
        } else {
            untouched.push(format!("{kind}/{name}"));
            assert_eq!(after, before, "{kind}/{name} must pass through unchanged");
        }
    }
    injected.sort();
    assert_eq!(
        injected,
        [
            "CronJob",
            "DaemonSet",
            "Deployment",
            "Deployment",
            "Job",
            "Job",
            "Pod",
            "ReplicaSet",
            "StatefulSet"
        ]
    );
    untouched.sort();
    assert_eq!(
        untouched,
        [
            "ConfigMap/web-config",
            "Deployment/unlabelled",
            "Service/web"
        ]
    );

    // What each fixture asks for.
    let find = |kind: &str, name: &str| {
        results
            .iter()
            .chain(
                results
                    .iter()
                    .filter(|d| d["kind"] == "List")
                    .flat_map(|d| d["items"].as_array().unwrap()),
            )
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    };
    let spec = |kind: &str, name: &str| template(find(kind, name))["spec"].clone();
    let s = spec("Deployment", "api");
    assert_eq!(
        names(&s["initContainers"]),
        ["polars-cloud-auth", "wait-for-db"]
    );
    assert_eq!(
        s["initContainers"][0]["lifecycle"]["postStart"]["exec"]["command"][7],
        "2m"
    );
    assert_eq!(s["containers"][0]["resources"]["requests"]["cpu"], 0.5);
    let s = spec("StatefulSet", "warehouse");
    assert_eq!(names(&s["initContainers"]), ["polars-cloud-auth-init"]);
    assert_eq!(names(&s["containers"]), ["warehouse", "polars-cloud-auth"]);
    let s = spec("DaemonSet", "node-agent");
    assert!(
        s["containers"][1].get("volumeMounts").is_none(),
        "exporter is skipped"
    );
    let s = spec("Job", "backfill");
    assert_eq!(s["initContainers"][0]["args"][0], "init");
    let s = spec("CronJob", "nightly");
    assert_eq!(s["initContainers"][0]["restartPolicy"], "Always");

    assert!(
        report.contains("Deployment/api injected (native)"),
        "{report}"
    );
    assert!(
        report.contains("StatefulSet/warehouse injected (classic)"),
        "{report}"
    );
    assert!(
        report.contains("Job/backfill injected (init-only)"),
        "{report}"
    );
    assert!(report.contains("Deployment/unlabelled skipped"), "{report}");
    assert!(
        report.contains("ConfigMap/web-config not a workload"),
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("injected.yaml");
    std::fs::write(&path, &yaml).unwrap();
    kube::validate(&[&path]);

    // Injecting twice equals injecting once, byte for byte.
    let twice = ok(&inject(&["-"], yaml.as_bytes()));
    assert_eq!(twice, yaml);
}

fn template_has_marker(doc: &Value) -> bool {
    if ![
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    ]
    .contains(&doc["kind"].as_str().unwrap_or(""))
    {
        return false;
    }
    template(doc)["metadata"]["annotations"]["polars.cloud/injected"].is_string()
}

fn strip_template(doc: &mut Value) {
    match doc["kind"].as_str().unwrap() {
        "Pod" => {
            doc["spec"] = Value::Null;
            doc["metadata"]["annotations"] = Value::Null;
        }
        "CronJob" => doc["spec"]["jobTemplate"]["spec"]["template"] = Value::Null,
        _ => doc["spec"]["template"] = Value::Null,
    }
}

#[test]
fn stdin_a_dash_and_a_file_give_the_same_output() {
    let text = std::fs::read(data("replicaset.yaml")).unwrap();
    let from_file = ok(&inject(&[data("replicaset.yaml").to_str().unwrap()], b""));
    assert_eq!(ok(&inject(&[], &text)), from_file);
    assert_eq!(ok(&inject(&["-"], &text)), from_file);
}

#[test]
fn all_injects_unlabelled_templates_too() {
    let out = ok(&inject(
        &["--all", data("mixed.yaml").to_str().unwrap()],
        b"",
    ));
    let d = docs(&out);
    let unlabelled = d
        .iter()
        .find(|d| d["metadata"]["name"] == "unlabelled")
        .unwrap();
    assert_eq!(
        names(&template(unlabelled)["spec"]["initContainers"]),
        ["polars-cloud-auth"]
    );
    assert!(d.iter().any(|d| d["kind"] == "ConfigMap"));
}

#[test]
fn flags_and_environment_set_the_defaults() {
    let out = bin_cmd()
        .args([
            "inject",
            "--mode",
            "init-only",
            "--image",
            "mirror.example/polars-cloud-auth:9",
        ])
        .arg(data("replicaset.yaml"))
        .env("POLARS_CLOUD_INJECT_SECRET_NAME", "from-env")
        .env("POLARS_CLOUD_INJECT_DOMAIN", "eu.cloud.example")
        .output()
        .unwrap();
    let d = docs(&ok(&out));
    let spec = &template(&d[0])["spec"];
    let ours = &spec["initContainers"][0];
    assert_eq!(ours["args"][0], "init");
    assert_eq!(ours["image"], "mirror.example/polars-cloud-auth:9");
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], "from-env");
    assert!(
        ours["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POLARS_CLOUD_DOMAIN" && e["value"] == "eu.cloud.example")
    );

    let bad = bin_cmd()
        .args([
            "inject",
            "--memory-request",
            "64Mi",
            "--memory-limit",
            "32Mi",
        ])
        .arg(data("replicaset.yaml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("memory request 64Mi is above the memory limit 32Mi"),
        "{err}"
    );
}

#[test]
fn a_refused_object_stops_the_run_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let clash = dir.path().join("clash.yaml");
    std::fs::write(
        &clash,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: clash}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata:\n      labels: {a: b, polars.cloud/inject: \"true\"}\n    spec:\n      containers:\n        - name: polars-cloud-auth\n          image: x\n",
    )
    .unwrap();
    let out = inject(
        &[clash.to_str().unwrap(), data("pod.yaml").to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clash.yaml: Deployment/clash: the pod already has a container named 'polars-cloud-auth'"),
        "{err}"
    );

    let out = inject(&[], b"apiVersion: v1\nkind: Pod\n  bad: [indent\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdin> is not valid YAML"));
    let out = inject(&["/nonexistent/manifest.yaml"], b"");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("failed to read '/nonexistent/manifest.yaml'")
    );
}
