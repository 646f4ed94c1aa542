//! Pods and the pod templates of workload manifests, for `inject`: finds the template of
//! each supported kind, runs [`inject`](super::inject) on it and applies the patch to the
//! document in place, so everything else in the document (fields unknown to k8s-openapi
//! included) stays as it was.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{InjectError, Mode, Settings, inject, opted_in};

/// Where the pod template of a supported kind is: `None` for other kinds.
pub fn template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(""),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some("/spec/template")
        }
        ("batch/v1", "Job") => Some("/spec/template"),
        ("batch/v1", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Kind/name`, as kubectl names objects.
    pub object: String,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The pod (template) got its token setup.
    Injected { mode: Mode, warnings: Vec<String> },
    /// It had everything already (injected before).
    Unchanged { mode: Mode, warnings: Vec<String> },
    /// It does not carry the label `polars.cloud/inject: "true"` (and `--all` is off).
    NotOptedIn,
    /// Not a kind with a pod template; passed through.
    OtherKind,
}

/// Why an object could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The injection refused the pod template.
    #[error("{object}: {reason}")]
    Inject { object: String, reason: InjectError },
    /// The pod template does not parse as one.
    #[error("{object}: {path} is not a valid pod template: {message}")]
    Malformed {
        object: String,
        path: String,
        message: String,
    },
    /// Internal: our own patch did not apply.
    #[error("{object}: failed to apply the injection patch: {message}")]
    Patch { object: String, message: String },
}

/// Injects every pod template in `doc` (a `v1` `List` holds several) that opts in, or
/// every one when `all` is set. Other documents are left untouched.
pub fn inject_document(
    doc: &mut Value,
    settings: &Settings,
    all: bool,
) -> Result<Vec<Report>, Error> {
    let field = |doc: &Value, key: &str| {
        doc.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field(doc, "apiVersion"), field(doc, "kind"));
    if api_version == "v1"
        && kind == "List"
        && let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut)
    {
        let mut reports = Vec::new();
        for item in items {
            reports.extend(inject_document(item, settings, all)?);
        }
        return Ok(reports);
    }
    let object = object_name(doc);
    let Some(ptr) = template_pointer(&api_version, &kind) else {
        return Ok(vec![Report {
            object,
            action: Action::OtherKind,
        }]);
    };
    let malformed = |path: &str, message: String| Error::Malformed {
        object: object.clone(),
        path: path.trim_start_matches('/').replace('/', "."),
        message,
    };
    let template = doc
        .pointer_mut(ptr)
        .filter(|t| t.is_object())
        .ok_or_else(|| malformed(ptr, "it is missing".into()))?;
    let spec_path = format!("{ptr}/spec");
    let spec: PodSpec = match template.get("spec") {
        Some(spec) => {
            let mut spec = spec.clone();
            quantities_as_strings(&mut spec);
            serde_json::from_value(spec).map_err(|e| malformed(&spec_path, e.to_string()))?
        }
        None => return Err(malformed(&spec_path, "it is missing".into())),
    };
    let meta: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| malformed(&format!("{ptr}/metadata"), e.to_string()))?,
        None => ObjectMeta::default(),
    };
    if !all && !opted_in(&meta) {
        return Ok(vec![Report {
            object,
            action: Action::NotOptedIn,
        }]);
    }
    let outcome = inject(&meta, &spec, settings).map_err(|reason| Error::Inject {
        object: object.clone(),
        reason,
    })?;
    let action = if outcome.patch.0.is_empty() {
        Action::Unchanged {
            mode: outcome.mode,
            warnings: outcome.warnings,
        }
    } else {
        if let Some(t) = template.as_object_mut() {
            t.entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()));
        }
        json_patch::patch(template, &outcome.patch.0).map_err(|e| Error::Patch {
            object: object.clone(),
            message: e.to_string(),
        })?;
        Action::Injected {
            mode: outcome.mode,
            warnings: outcome.warnings,
        }
    };
    Ok(vec![Report { object, action }])
}

/// `Kind/name` (or `Kind/generateName*`) of a document.
fn object_name(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| "(unnamed)".into());
    format!("{kind}/{name}")
}

/// kubectl accepts numbers for quantities (`cpu: 0.5`, `memory: 16777216`); k8s-openapi's
/// `Quantity` is a string. Turns such numbers into strings in a copy used for reading only.
fn quantities_as_strings(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), value) {
                    ("requests" | "limits" | "overhead", Value::Object(q)) => {
                        for n in q.values_mut() {
                            if let Value::Number(num) = n {
                                *n = Value::String(num.to_string());
                            }
                        }
                    }
                    ("sizeLimit", n @ Value::Number(_)) => {
                        *n = Value::String(n.to_string());
                    }
                    (_, value) => quantities_as_strings(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_as_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"unknown.example/x": "kept"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "futureField": {"kept": true},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": "app", "image": "busybox",
                        "resources": {"requests": {"cpu": 0.5, "memory": 16777216}},
                        "futureContainerField": 1
                    }]}
                }
            }
        })
    }

    #[test]
    fn injects_a_labelled_template_and_keeps_everything_else() {
        let mut doc = deployment(json!({"app": "web", "polars.cloud/inject": "true"}));
        let before = doc.clone();
        let reports = inject_document(&mut doc, &Settings::default(), false).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].object, "Deployment/web");
        assert!(matches!(
            reports[0].action,
            Action::Injected {
                mode: Mode::Native,
                ..
            }
        ));
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["name"], "polars-cloud-auth");
        // Unknown fields and number quantities are untouched.
        assert_eq!(doc["spec"]["futureField"], before["spec"]["futureField"]);
        assert_eq!(spec["containers"][0]["futureContainerField"], 1);
        assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], 0.5);
        assert_eq!(doc["metadata"], before["metadata"]);

        let once = doc.clone();
        let again = inject_document(&mut doc, &Settings::default(), false).unwrap();
        assert!(matches!(again[0].action, Action::Unchanged { .. }));
        assert_eq!(doc, once, "injecting twice equals injecting once");
    }

    #[test]
    fn unlabelled_templates_pass_unless_all() {
        let mut doc = deployment(json!({"app": "web"}));
        let before = doc.clone();
        let r = inject_document(&mut doc, &Settings::default(), false).unwrap();
        assert_eq!(r[0].action, Action::NotOptedIn);
        assert_eq!(doc, before);
        let r = inject_document(&mut doc, &Settings::default(), true).unwrap();
        assert!(matches!(r[0].action, Action::Injected { .. }));
    }

    #[test]
    fn a_template_without_metadata_gets_it_with_all() {
        let mut doc = json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "x"}]}
            }}}}
        });
        inject_document(&mut doc, &Settings::default(), true).unwrap();
        let t = &doc["spec"]["jobTemplate"]["spec"]["template"];
        assert_eq!(
            t["metadata"]["annotations"]["polars.cloud/injected"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            t["spec"]["containers"][0]["env"][0]["name"],
            "POLARS_CLOUD_ACCESS_TOKEN_PATH"
        );
    }

    #[test]
    fn other_kinds_and_lists() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let before = cm.clone();
        let r = inject_document(&mut cm, &Settings::default(), true).unwrap();
        assert_eq!(r[0].action, Action::OtherKind);
        assert_eq!(cm, before);
        // An unsupported version of a supported kind passes through too.
        let mut old = json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment"});
        let r = inject_document(&mut old, &Settings::default(), true).unwrap();
        assert_eq!(r[0].action, Action::OtherKind);

        let mut list = json!({"apiVersion": "v1", "kind": "List", "items": [
            cm, deployment(json!({"polars.cloud/inject": "true"}))
        ]});
        let r = inject_document(&mut list, &Settings::default(), false).unwrap();
        assert_eq!(r.len(), 2);
        assert!(list["items"][1]["spec"]["template"]["spec"]["initContainers"].is_array());
    }

    #[test]
    fn errors_name_the_object() {
        let mut doc = deployment(json!({"polars.cloud/inject": "true"}));
        doc["spec"]["template"]["metadata"]["annotations"] =
            json!({"polars.cloud/mode": "sometimes"});
        let e = inject_document(&mut doc, &Settings::default(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Deployment/web: annotation polars.cloud/mode: 'sometimes'"),
            "{e}"
        );

        let mut bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"},
            "spec": {"containers": "nope"}});
        let e = inject_document(&mut bad, &Settings::default(), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Pod/p-*: spec is not a valid pod template"),
            "{e}"
        );
        let mut none = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}, "spec": {}});
        let e = inject_document(&mut none, &Settings::default(), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.template is not a valid pod template: it is missing"),
            "{e}"
        );
    }
}
