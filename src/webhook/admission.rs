//! The admission decision, apart from the transport: an AdmissionReview v1 in (bytes), an
//! AdmissionReview out. Converts the request, calls the pure [`inject`](crate::inject),
//! and turns an [`InjectError`](crate::inject::InjectError) into a denial whose message
//! is what `kubectl` shows.

use std::collections::HashMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, GroupVersionKind, Status, TypeMeta};
use serde::{Deserialize, Serialize};

use crate::inject::{self, Settings};

/// What became of a review, for the logs and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed with a patch that adds the token setup.
    Injected,
    /// Allowed without a patch: the pod had everything already.
    Unchanged,
    /// Allowed without a patch: not a pod creation, or the pod did not opt in.
    Skipped,
    /// Denied: the pod cannot be injected as it is.
    Denied,
    /// Not an AdmissionReview we can read (answered with HTTP 400 or 413).
    Invalid,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Injected,
        Verdict::Unchanged,
        Verdict::Skipped,
        Verdict::Denied,
        Verdict::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Unchanged => "unchanged",
            Verdict::Skipped => "skipped",
            Verdict::Denied => "denied",
            Verdict::Invalid => "invalid",
        }
    }
}

/// Why a request body is not a review we can answer. Answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("the body is not an AdmissionReview: {0}")]
    Decode(String),
    /// An AdmissionReview of another version.
    #[error(
        "AdmissionReview apiVersion '{0}' is not served; configure admissionReviewVersions: [\"v1\"]"
    )]
    Version(String),
    /// An AdmissionReview without a request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    pub response: AdmissionResponse,
    pub verdict: Verdict,
    /// `namespace/name` of the pod (or its generateName), for the logs.
    pub object: String,
    pub mode: Option<inject::Mode>,
    /// The denial message, for the logs.
    pub denial: Option<String>,
}

const V1: &str = "admission.k8s.io/v1";

/// An AdmissionReview with its `request` typed as asked. kube's `AdmissionReview` flattens
/// its `TypeMeta`, which makes serde buffer the whole review (pod included) before
/// decoding it; this envelope decodes the same JSON in one pass.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<R> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<R>,
}

/// What decides how to decode the rest; the object is skipped, not built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    kind: GroupVersionKind,
    operation: Operation,
    #[serde(default)]
    sub_resource: Option<String>,
}

/// Decodes an AdmissionReview v1 and decides. The request is decoded typed: a pod
/// creation as a k8s-openapi `Pod`, anything else as a `DynamicObject`.
pub fn review(body: &[u8], settings: &Settings) -> Result<Reviewed, ReviewError> {
    let decode = |e: serde_json::Error| ReviewError::Decode(e.to_string());
    let head: Envelope<Head> = serde_json::from_slice(body).map_err(decode)?;
    if head.api_version != V1 {
        return Err(ReviewError::Version(head.api_version));
    }
    let Some(h) = head.request else {
        return Err(ReviewError::NoRequest);
    };
    let types = TypeMeta {
        api_version: head.api_version,
        kind: head.kind,
    };
    let pod_creation = h.kind.group.is_empty()
        && h.kind.kind == "Pod"
        && h.operation == Operation::Create
        && h.sub_resource.is_none();
    if pod_creation {
        match serde_json::from_slice::<Envelope<AdmissionRequest<Pod>>>(body) {
            Ok(Envelope {
                request: Some(mut req),
                ..
            }) => {
                req.types = types;
                return Ok(decide(req, settings));
            }
            Ok(_) => return Err(ReviewError::NoRequest),
            Err(e) => {
                // Readable as a review but not as a pod: deny, saying why.
                let req = generic(body, types)?;
                let object = object_name(&req, req.object.as_ref().map(|o| &o.metadata));
                let res = AdmissionResponse::from(&req);
                return Ok(deny(res, format!("the pod cannot be read: {e}"), object));
            }
        }
    }
    // Anything else is allowed as it is; pods are mutable only at creation, and an update
    // that changed containers would be refused by the API server anyway.
    let req = generic(body, types)?;
    let object = object_name(&req, req.object.as_ref().map(|o| &o.metadata));
    Ok(Reviewed {
        response: AdmissionResponse::from(&req),
        verdict: Verdict::Skipped,
        object,
        mode: None,
        denial: None,
    })
}

fn generic(body: &[u8], types: TypeMeta) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    let env: Envelope<AdmissionRequest<DynamicObject>> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    let mut req = env.request.ok_or(ReviewError::NoRequest)?;
    req.types = types;
    Ok(req)
}

fn decide(req: AdmissionRequest<Pod>, settings: &Settings) -> Reviewed {
    let res = AdmissionResponse::from(&req);
    let object = object_name(&req, req.object.as_ref().map(|p| &p.metadata));
    let Some(pod) = req.object else {
        return deny(
            res,
            "the admission request has no pod object".into(),
            object,
        );
    };
    if !inject::opted_in(&pod.metadata) {
        return allow(res, Verdict::Skipped, object, None);
    }
    let spec = pod.spec.unwrap_or_default();
    match inject::inject(&pod.metadata, &spec, settings) {
        Ok(outcome) => {
            let mut res = res;
            if !outcome.warnings.is_empty() {
                res.warnings = Some(outcome.warnings);
            }
            if outcome.patch.0.is_empty() {
                return allow(res, Verdict::Unchanged, object, Some(outcome.mode));
            }
            match res.clone().with_patch(outcome.patch) {
                Ok(res) => allow(res, Verdict::Injected, object, Some(outcome.mode)),
                Err(e) => deny(res, format!("failed to encode the patch: {e}"), object),
            }
        }
        Err(e) => deny(res, e.to_string(), object),
    }
}

fn allow(
    response: AdmissionResponse,
    verdict: Verdict,
    object: String,
    mode: Option<inject::Mode>,
) -> Reviewed {
    Reviewed {
        response,
        verdict,
        object,
        mode,
        denial: None,
    }
}

fn deny(res: AdmissionResponse, message: String, object: String) -> Reviewed {
    let mut res = res.deny(&message);
    res.result = Status::failure(&message, "BadRequest").with_code(400);
    Reviewed {
        response: res,
        verdict: Verdict::Denied,
        object,
        mode: None,
        denial: Some(message),
    }
}

fn object_name<T: kube::core::Resource>(
    req: &AdmissionRequest<T>,
    meta: Option<&ObjectMeta>,
) -> String {
    let name = Some(req.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| meta.and_then(|m| m.name.clone()))
        .or_else(|| {
            meta.and_then(|m| m.generate_name.as_ref())
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| "(unnamed)".into());
    match &req.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name,
    }
}

/// The AdmissionReview that answers, as JSON. kube-core serializes the patch bytes as an
/// array of numbers, which Go's decoder accepts; this sends what Go itself sends for
/// `[]byte` (and what the Kubernetes documentation shows): a base64 string, a quarter of
/// the size. It also skips the detour through `serde_json::Value`.
pub fn encode(res: &AdmissionResponse) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'a str,
        kind: &'a str,
        response: Response<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        uid: &'a str,
        allowed: bool,
        status: &'a Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "HashMap::is_empty")]
        audit_annotations: &'a HashMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnings: Option<&'a Vec<String>>,
    }
    let patch = res
        .patch
        .as_ref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    serde_json::to_vec(&Review {
        api_version: V1,
        kind: "AdmissionReview",
        response: Response {
            uid: &res.uid,
            allowed: res.allowed,
            status: &res.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &res.audit_annotations,
            warnings: res.warnings.as_ref(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn request(operation: &str, kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": null,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        })
    }

    fn response(r: &Reviewed) -> Value {
        let review: Value = serde_json::from_slice(&encode(&r.response).unwrap()).unwrap();
        review["response"].clone()
    }

    #[test]
    fn an_opted_in_pod_gets_a_json_patch() {
        let body = request(
            "CREATE",
            "Pod",
            pod(json!({"polars.cloud/inject": "true"}), json!({})),
        );
        let r = review(&body, &Settings::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Injected);
        assert_eq!(r.object, "team-a/web-*");
        let res = response(&r);
        assert_eq!(res["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(res["allowed"], true);
        assert_eq!(res["patchType"], "JSONPatch");
        let review: Value = serde_json::from_slice(&encode(&r.response).unwrap()).unwrap();
        let patch = base64::engine::general_purpose::STANDARD
            .decode(review["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        assert!(!patch.0.is_empty());
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
    }

    #[test]
    fn other_requests_are_allowed_unchanged() {
        let s = Settings::default();
        let labelled = pod(json!({"polars.cloud/inject": "true"}), json!({}));
        for body in [
            request("CREATE", "Pod", pod(json!({}), json!({}))),
            request("UPDATE", "Pod", labelled.clone()),
            request("DELETE", "Pod", Value::Null),
            request(
                "CREATE",
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
            ),
        ] {
            let r = review(&body, &s).unwrap();
            assert_eq!(r.verdict, Verdict::Skipped);
            let res = response(&r);
            assert_eq!(res["allowed"], true);
            assert!(res.get("patch").is_none());
        }
    }

    #[test]
    fn conflicts_are_denied_with_the_message() {
        let body = request(
            "CREATE",
            "Pod",
            pod(
                json!({"polars.cloud/inject": "true"}),
                json!({"polars.cloud/mode": "sometimes"}),
            ),
        );
        let r = review(&body, &Settings::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Denied);
        let res = response(&r);
        assert_eq!(res["allowed"], false);
        assert_eq!(res["status"]["code"], 400);
        assert!(
            res["status"]["message"]
                .as_str()
                .unwrap()
                .contains("use native, classic or init-only")
        );
    }

    #[test]
    fn unreadable_bodies_are_errors() {
        let s = Settings::default();
        assert!(matches!(review(b"{", &s), Err(ReviewError::Decode(_))));
        assert!(matches!(review(b"[]", &s), Err(ReviewError::Decode(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#;
        assert!(matches!(review(v1beta1, &s), Err(ReviewError::Version(_))));
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(review(empty, &s), Err(ReviewError::NoRequest)));
    }
}
