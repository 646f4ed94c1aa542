"""The Helm chart deploy/helm/polars-cloud-auth, rendered and linted by real
Helm (v4 Go code through helm-python-sdk: `Chart.render` is `helm template`,
`lint(strict=True)` is `helm lint --strict`), with the default values and
with each documented option.

Every rendered object is validated by kubernetes-validate --strict for
Kubernetes 1.29 and the newest version it bundles, except the cert-manager
kinds (Issuer, Certificate): their CRDs are not bundled, so the cert-manager
tests below check those objects field by field instead.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import k8s

NS = k8s.NAMESPACE
FULLNAME = f"{k8s.RELEASE}-polars-cloud-auth"
CLIENT_ID = "pca-test-client-id-7f3a"
CLIENT_SECRET = "pca-test-client-secret-Zq9xW2"

# One values set per documented option (and a combination of many).
CASES: dict[str, dict] = {
    "default": {},
    "cert-manager": {"tls": {"certManager": {"enabled": True}}},
    "cert-manager-issuer": {"tls": {"certManager": {
        "enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}},
    "credentials": {"credentials": {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}},
    "credentials-namespaces": {"credentials": {
        "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
        "namespaces": ["team-a", "team-b", NS]}},
    "existing-secret": {"credentials": {"existingSecret": "my-polars-creds"}},
    "mode-native": {"injection": {"mode": "native"}},
    "mode-classic": {"injection": {"mode": "classic"}},
    "mode-init-only": {"injection": {"mode": "init-only"}},
    "failure-ignore": {"webhook": {"failurePolicy": "Ignore"}},
    "single-replica": {"replicas": 1},
    "three-replicas": {"replicas": 3, "podDisruptionBudget": {"minAvailable": "50%"}},
    "no-pdb": {"podDisruptionBudget": {"enabled": False}},
    "namespace-selector": {"webhook": {"namespaceSelector": {
        "matchLabels": {"polars.cloud/injection": "enabled"}}}},
    "excluded-namespaces": {"webhook": {"excludedNamespaces": ["kube-system", "monitoring"]}},
    "webhook-tuning": {"webhook": {"timeoutSeconds": 10, "reinvocationPolicy": "Never",
                                   "annotations": {"example.com/owner": "platform"}}},
    "image-digest": {"image": {"repository": "registry.example:5000/tools/polars-cloud-auth",
                               "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"}},
    "injection-options": {"injection": {
        "image": {"repository": "mirror/polars-cloud-auth", "tag": "0.2.0"},
        "secretName": "other-creds", "tokenPath": "/run/tokens/polars",
        "cpuRequest": "10m", "memoryRequest": "24Mi", "memoryLimit": "48Mi",
        "domain": "eu.cloud.example", "issuer": "https://auth.cloud.example/realms/x",
        "clientAssertionAudience": "https://auth.cloud.example/realms/x"}},
    "log-text": {"logFormat": "text"},
    "self-signed-validity": {"tls": {"selfSigned": {"validityDays": 30}},
                             "clusterDomain": "corp.internal"},
    "service-account-external": {"serviceAccount": {"create": False, "name": "webhooks"}},
    "scheduling": {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "node-role", "operator": "In", "values": ["system"]}]}]}}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system",
                         "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"a": "b"}}}],
        "priorityClassName": "system-cluster-critical"},
    "metadata": {"commonLabels": {"team": "platform"}, "podLabels": {"tier": "infra"},
                 "podAnnotations": {"prometheus.io/scrape": "true"},
                 "serviceAccount": {"annotations": {"example.com/role": "none"}},
                 "imagePullSecrets": [{"name": "regcred"}], "fullnameOverride": "pca-webhook",
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                               "limits": {"cpu": 1, "memory": "128Mi"}}},
    "everything": {
        "replicas": 3, "logFormat": "text",
        "credentials": {"secretName": "pc-creds", "clientId": CLIENT_ID,
                        "clientSecret": CLIENT_SECRET, "namespaces": ["team-a"]},
        "injection": {"mode": "classic", "domain": "cloud.example"},
        "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 30,
                    "namespaceSelector": {"matchExpressions": [
                        {"key": "polars", "operator": "Exists"}]}},
        "tls": {"certManager": {"enabled": True, "duration": "2160h", "renewBefore": "360h"}},
        "nameOverride": "pca"},
}

# Bad values: helm must reject them through values.schema.json, naming the field.
BAD_VALUES = {
    "unknown mode": ({"injection": {"mode": "sometimes"}}, "/injection/mode"),
    "negative replicas": ({"replicas": -1}, "/replicas"),
    "zero replicas": ({"replicas": 0}, "/replicas"),
    "replicas as string": ({"replicas": "two"}, "/replicas"),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown nested key": ({"webhook": {"failurepolicy": "Fail"}}, "failurepolicy"),
    "failurePolicy Sometimes": ({"webhook": {"failurePolicy": "Sometimes"}},
                                "/webhook/failurePolicy"),
    "reinvocationPolicy Always": ({"webhook": {"reinvocationPolicy": "Always"}},
                                  "/webhook/reinvocationPolicy"),
    "timeout over 30": ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    "bad memory limit": ({"injection": {"memoryLimit": "lots"}}, "/injection/memoryLimit"),
    "negative cpu request": ({"injection": {"cpuRequest": -1}}, "/injection/cpuRequest"),
    "bad webhook resources": ({"resources": {"limits": {"memory": "64 MB"}}},
                              "/resources/limits/memory"),
    "bad log format": ({"logFormat": "xml"}, "/logFormat"),
    "cert-manager enabled as string": ({"tls": {"certManager": {"enabled": "yes"}}},
                                       "/tls/certManager/enabled"),
    "issuerRef without name": ({"tls": {"certManager": {"issuerRef": {"kind": "Issuer"}}}},
                               "/tls/certManager/issuerRef"),
    "bad namespace name": ({"credentials": {"namespaces": ["Team_A"]}},
                           "/credentials/namespaces/0"),
    "inject label on webhook pods": ({"podLabels": {"polars.cloud/inject": "true"}},
                                     "/podLabels/polars.cloud~1inject"),
    "digest not a digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "relative token path": ({"injection": {"tokenPath": "token"}}, "/injection/tokenPath"),
    "selector operator": ({"webhook": {"namespaceSelector": {"matchExpressions": [
        {"key": "a", "operator": "Maybe"}]}}}, "/webhook/namespaceSelector/matchExpressions/0"),
}

# Combinations the schema allows but the templates refuse, with a message.
BAD_COMBINATIONS = {
    "existing secret and client id": (
        {"credentials": {"existingSecret": "x", "clientId": "a", "clientSecret": "b"}},
        "credentials.existingSecret"),
    "client id without secret": ({"credentials": {"clientId": "a"}}, "credentials.clientSecret"),
    "namespaces without credentials": ({"credentials": {"namespaces": ["team-a"]}},
                                       "credentials.namespaces"),
    "namespaces with existing secret": (
        {"credentials": {"existingSecret": "x", "namespaces": ["team-a"]}},
        "credentials.namespaces"),
}


@pytest.fixture(scope="session", autouse=True)
def _prerender():
    """Render and lint every case once, in parallel (libhelm_c releases the
    GIL); the tests then read the cached results."""
    k8s.helm_sdk()
    jobs = [(k8s.render, (values,), {}) for values in CASES.values()]
    jobs += [(k8s.lint, (values,), {"kube_version": v})
             for values in CASES.values() for v in k8s.kube_versions()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(f, *a, **kw) for f, a, kw in jobs]:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - reported again by the test itself
                pass


def docs(case: str = "default") -> list[dict]:
    return k8s.render(CASES[case])


def deployment(rendered: list[dict]) -> dict:
    return k8s.one(rendered, "Deployment")


def webhook_container(rendered: list[dict]) -> dict:
    (container,) = k8s.pod_spec(deployment(rendered))["containers"]
    return container


def webhook_env(rendered: list[dict]) -> dict:
    return k8s.env_map(webhook_container(rendered))


def mutating_webhook(rendered: list[dict]) -> dict:
    config = k8s.one(rendered, "MutatingWebhookConfiguration")
    (webhook,) = config["webhooks"]
    return webhook


def tls_secret(rendered: list[dict]) -> dict:
    return k8s.one([d for d in rendered if d.get("type") == "kubernetes.io/tls"], "Secret")


def values_yaml() -> dict:
    return yaml.safe_load((k8s.CHART / "values.yaml").read_text())


# --- the chart as a whole ----------------------------------------------------
def test_chart_metadata():
    chart = yaml.safe_load((k8s.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "polars-cloud-auth"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["type"] == "application"


def test_helm_cli(tmp_path):
    """helm-python-sdk is Helm v4 as a library; the helm command must accept the
    chart too: the one scripts/cluster.sh builds (POLARS_CLOUD_AUTH_HELM), else one
    on PATH. Under POLARS_CLOUD_AUTH_SLOW=1 a missing helm fails the test."""
    helm = os.environ.get("POLARS_CLOUD_AUTH_HELM") or shutil.which("helm")
    if not helm or not Path(helm).is_file():
        why = "no helm executable (POLARS_CLOUD_AUTH_HELM unset, none on PATH)"
        if os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1":
            pytest.fail(f"POLARS_CLOUD_AUTH_SLOW=1 but {why}: scripts/cluster.sh build", pytrace=False)
        pytest.skip(f"{why}; scripts/cluster.sh build makes one")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path / "config"),
           "HELM_DATA_HOME": str(tmp_path / "data")}
    run = lambda *a: subprocess.run([helm, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    version = run("version", "--template", "{{.Version}}")
    assert version.returncode == 0 and version.stdout.startswith("v"), version
    lint = run("lint", "--strict", str(k8s.CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = run("template", k8s.RELEASE, str(k8s.CHART), "--namespace", NS)
    assert template.returncode == 0, template.stderr
    kinds = sorted(k8s.kinds(k8s.load_all(template.stdout)))
    assert kinds == sorted(k8s.kinds(docs())), kinds
    bad = run("template", k8s.RELEASE, str(k8s.CHART), "--set", "injection.mode=sometimes")
    assert bad.returncode != 0
    assert "injection" in bad.stderr and "mode" in bad.stderr, bad.stderr


def test_helm_sdk_is_real_helm():
    helm = k8s.helm_sdk()
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()
    assert Path(helm.library_path).exists()


@pytest.mark.parametrize("version", k8s.kube_versions())
@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case, version):
    report = k8s.lint(CASES[case], kube_version=version)
    assert report["total_charts_linted"] == 1
    assert k8s.lint_problems(report) == []


@pytest.mark.parametrize("version", k8s.kube_versions())
@pytest.mark.parametrize("case", CASES)
def test_rendered_objects_are_valid(case, version):
    skipped = set()
    rendered = docs(case)
    for doc in rendered:
        if k8s.validate(doc, version):
            skipped.add(doc["kind"])
        assert k8s.metadata_problems(doc) == []
    # Only cert-manager's kinds may go unvalidated (checked by their own tests).
    assert skipped <= {"Issuer", "Certificate"}
    if CASES[case].get("tls", {}).get("certManager", {}).get("enabled"):
        assert "Certificate" in skipped


@pytest.mark.parametrize("case", CASES)
def test_expected_kinds(case):
    rendered = docs(case)
    merged = k8s.helm_sdk().Chart.load(str(k8s.CHART)).merge_values(CASES[case])
    want = {"Deployment", "Service", "MutatingWebhookConfiguration"}
    if merged["serviceAccount"]["create"]:
        want.add("ServiceAccount")
    if merged["podDisruptionBudget"]["enabled"] and merged["replicas"] > 1:
        want.add("PodDisruptionBudget")
    cert_manager = merged["tls"]["certManager"]
    if cert_manager["enabled"]:
        want.add("Certificate")
        if not cert_manager["issuerRef"]:
            want.add("Issuer")
    if not cert_manager["enabled"] or merged["credentials"]["clientId"]:
        want.add("Secret")
    assert set(k8s.kinds(rendered)) == want
    # No RBAC at all: the webhook never calls the Kubernetes API.
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(
        k8s.kinds(rendered))


@pytest.mark.parametrize("case", CASES)
def test_namespaced_objects_live_in_the_release_namespace(case):
    merged_namespaces = CASES[case].get("credentials", {}).get("namespaces", [])
    for doc in docs(case):
        if doc["kind"] == "MutatingWebhookConfiguration":
            assert "namespace" not in doc["metadata"]
        elif doc["kind"] == "Secret" and doc["metadata"]["namespace"] != NS:
            assert doc["metadata"]["namespace"] in merged_namespaces
        else:
            assert doc["metadata"]["namespace"] == NS, doc["kind"]


@pytest.mark.parametrize("case", CASES)
def test_webhook_pods_are_restricted(case):
    spec = k8s.pod_spec(deployment(docs(case)))
    assert k8s.restricted_violations(spec) == []
    assert k8s.hardening_problems(spec) == []
    assert k8s.env_problems(deployment(docs(case))) == []
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == 65532
    # The webhook's own pods never ask for injection.
    labels = deployment(docs(case))["spec"]["template"]["metadata"]["labels"]
    assert k8s.INJECT_LABEL not in labels


@pytest.mark.parametrize("case", CASES)
def test_webhook_env_is_in_the_contract(case):
    env = webhook_env(docs(case))
    assert set(env) <= k8s.WEBHOOK_ENV
    assert env["POLARS_CLOUD_INJECT_MODE"] in k8s.INJECT_MODES
    container = webhook_container(docs(case))
    assert container["args"] == ["webhook"]
    assert "command" not in container, "the image ENTRYPOINT runs the binary"


# --- Deployment, Service, PDB, ServiceAccount ------------------------------
def test_deployment_defaults():
    rendered = docs()
    dep = deployment(rendered)
    assert dep["metadata"]["name"] == FULLNAME
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = k8s.pod_spec(dep)
    container = webhook_container(rendered)
    assert container["image"] == "polars-cloud-auth:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("https", k8s.WEBHOOK_PORT)
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):
        http = container[probe]["httpGet"]
        assert http["scheme"] == "HTTPS"
        assert http["path"] == path
        assert k8s.container_port(container, http["port"]) == k8s.WEBHOOK_PORT
    env = k8s.env_map(container)
    assert env["POLARS_CLOUD_WEBHOOK_LISTEN"] == f"0.0.0.0:{k8s.WEBHOOK_PORT}"
    assert env["POLARS_CLOUD_LOG_FORMAT"] == "json"
    # TLS files come from the TLS Secret, mounted read-only.
    mount = k8s.mounts(container)["tls"]
    assert mount["readOnly"] is True
    assert env["POLARS_CLOUD_WEBHOOK_TLS_CERT"] == mount["mountPath"] + "/tls.crt"
    assert env["POLARS_CLOUD_WEBHOOK_TLS_KEY"] == mount["mountPath"] + "/tls.key"
    assert k8s.volumes(spec)["tls"]["secret"]["secretName"] == tls_secret(rendered)["metadata"][
        "name"]
    # Replicas prefer different nodes.
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] == selector


def test_default_injection_env():
    env = webhook_env(docs())
    assert env == env | {
        "POLARS_CLOUD_INJECT_IMAGE": "polars-cloud-auth:0.1.0",
        "POLARS_CLOUD_INJECT_SECRET_NAME": k8s.CREDENTIALS_SECRET,
        "POLARS_CLOUD_INJECT_MODE": "native",
        "POLARS_CLOUD_INJECT_TOKEN_PATH": k8s.TOKEN_PATH,
        "POLARS_CLOUD_INJECT_CPU_REQUEST": "5m",
        "POLARS_CLOUD_INJECT_MEMORY_REQUEST": "8Mi",
        "POLARS_CLOUD_INJECT_MEMORY_LIMIT": "32Mi",
    }
    assert "POLARS_CLOUD_INJECT_DOMAIN" not in env
    assert "POLARS_CLOUD_INJECT_ISSUER" not in env
    assert "POLARS_CLOUD_INJECT_CLIENT_ASSERTION_AUDIENCE" not in env


@pytest.mark.parametrize("mode", k8s.INJECT_MODES)
def test_injection_mode(mode):
    assert webhook_env(docs(f"mode-{mode}"))["POLARS_CLOUD_INJECT_MODE"] == mode


def test_injection_options():
    env = webhook_env(docs("injection-options"))
    assert env["POLARS_CLOUD_INJECT_IMAGE"] == "mirror/polars-cloud-auth:0.2.0"
    assert env["POLARS_CLOUD_INJECT_SECRET_NAME"] == "other-creds"
    assert env["POLARS_CLOUD_INJECT_TOKEN_PATH"] == "/run/tokens/polars"
    assert env["POLARS_CLOUD_INJECT_CPU_REQUEST"] == "10m"
    assert env["POLARS_CLOUD_INJECT_MEMORY_REQUEST"] == "24Mi"
    assert env["POLARS_CLOUD_INJECT_MEMORY_LIMIT"] == "48Mi"
    assert env["POLARS_CLOUD_INJECT_DOMAIN"] == "eu.cloud.example"
    assert env["POLARS_CLOUD_INJECT_ISSUER"] == "https://auth.cloud.example/realms/x"
    assert env["POLARS_CLOUD_INJECT_CLIENT_ASSERTION_AUDIENCE"] == "https://auth.cloud.example/realms/x"
    # The webhook itself keeps the chart's image.
    assert webhook_container(docs("injection-options"))["image"] == "polars-cloud-auth:0.1.0"


def test_numeric_quantities_become_strings():
    values = {"injection": {"cpuRequest": 0.5, "memoryRequest": 16777216}}
    env = webhook_env(k8s.render(values))
    assert env["POLARS_CLOUD_INJECT_CPU_REQUEST"] == "0.5"
    assert env["POLARS_CLOUD_INJECT_MEMORY_REQUEST"] == "16777216"


def test_image_digest():
    rendered = docs("image-digest")
    ref = "registry.example:5000/tools/polars-cloud-auth@sha256:" + "a" * 64
    assert webhook_container(rendered)["image"] == ref
    assert webhook_container(rendered)["imagePullPolicy"] == "Always"
    assert webhook_env(rendered)["POLARS_CLOUD_INJECT_IMAGE"] == ref


def test_image_tag_override_applies_to_injection():
    env = webhook_env(k8s.render({"image": {"tag": "0.3.1"}}))
    assert env["POLARS_CLOUD_INJECT_IMAGE"] == "polars-cloud-auth:0.3.1"


def test_log_format_text():
    assert webhook_env(docs("log-text"))["POLARS_CLOUD_LOG_FORMAT"] == "text"


def test_service_targets_the_webhook_port():
    rendered = docs()
    service = k8s.one(rendered, "Service")
    assert service["metadata"]["name"] == FULLNAME
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    assert k8s.container_port(webhook_container(rendered), port["targetPort"]) == 8443
    labels = deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("case,replicas", [("default", 2), ("three-replicas", 3)])
def test_pdb_with_several_replicas(case, replicas):
    rendered = docs(case)
    assert deployment(rendered)["spec"]["replicas"] == replicas
    pdb = k8s.one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == CASES[case].get(
        "podDisruptionBudget", {}).get("minAvailable", 1)
    assert pdb["spec"]["selector"] == deployment(rendered)["spec"]["selector"]


@pytest.mark.parametrize("case", ["single-replica", "no-pdb"])
def test_no_pdb(case):
    assert k8s.find(docs(case), "PodDisruptionBudget") == []


def test_service_account_without_api_access():
    rendered = docs()
    sa = k8s.one(rendered, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert k8s.pod_spec(deployment(rendered))["serviceAccountName"] == sa["metadata"]["name"]


def test_external_service_account():
    rendered = docs("service-account-external")
    assert k8s.find(rendered, "ServiceAccount") == []
    assert k8s.pod_spec(deployment(rendered))["serviceAccountName"] == "webhooks"


def test_scheduling_options():
    spec = k8s.pod_spec(deployment(docs("scheduling")))
    assert spec["affinity"] == CASES["scheduling"]["affinity"], "affinity replaces the default"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == CASES["scheduling"]["tolerations"]
    assert spec["topologySpreadConstraints"] == CASES["scheduling"]["topologySpreadConstraints"]
    assert spec["priorityClassName"] == "system-cluster-critical"


def test_metadata_options():
    rendered = docs("metadata")
    for doc in rendered:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]
        assert doc["metadata"]["name"].startswith("pca-webhook")
    dep = deployment(rendered)
    template = dep["spec"]["template"]["metadata"]
    assert template["labels"]["tier"] == "infra"
    assert template["annotations"] == {"prometheus.io/scrape": "true"}
    assert "tier" not in dep["spec"]["selector"]["matchLabels"]
    assert k8s.pod_spec(dep)["imagePullSecrets"] == [{"name": "regcred"}]
    assert webhook_container(rendered)["resources"] == CASES["metadata"]["resources"]
    sa = k8s.one(rendered, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"example.com/role": "none"}


def test_common_labels_cannot_change_the_selector():
    values = {"commonLabels": {"app.kubernetes.io/name": "other", "team": "x"},
              "podLabels": {"app.kubernetes.io/component": "other"}}
    rendered = k8s.render(values)
    dep = deployment(rendered)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "polars-cloud-auth"
    assert labels["app.kubernetes.io/component"] == "webhook"
    assert labels["team"] == "x"


def test_component_labels():
    for doc in docs("credentials-namespaces"):
        want = "credentials" if doc.get("type") == "Opaque" else "webhook"
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == want, doc["kind"]


def test_long_release_name_gives_valid_names():
    release = "a-release-name-that-is-long-enough-to-need-truncation"
    assert len(release) <= 53
    rendered = k8s.render({"tls": {"certManager": {"enabled": True}}}, release=release)
    rendered += k8s.render({}, release=release)
    for doc in rendered:
        assert k8s.metadata_problems(doc) == []
    service = k8s.one(k8s.render({}, release=release), "Service")
    assert mutating_webhook(k8s.render({}, release=release))["clientConfig"]["service"][
        "name"] == service["metadata"]["name"]


# --- MutatingWebhookConfiguration --------------------------------------------
def test_mutating_webhook_defaults():
    rendered = docs()
    config = k8s.one(rendered, "MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == FULLNAME
    webhook = mutating_webhook(rendered)
    assert len(webhook["name"].split(".")) >= 3, "webhook names must be fully qualified"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["timeoutSeconds"] == 5
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["objectSelector"] == {"matchLabels": {k8s.INJECT_LABEL: "true"}}
    assert webhook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""],
                                 "apiVersions": ["v1"], "resources": ["pods"],
                                 "scope": "Namespaced"}]
    service = k8s.one(rendered, "Service")
    assert webhook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"], "namespace": NS, "path": "/mutate", "port": 443}


def test_default_namespace_selector_excludes_release_namespace_and_kube_system():
    selector = mutating_webhook(docs())["namespaceSelector"]
    assert selector == {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": [NS, "kube-system"]}]}


def test_excluded_namespaces():
    (expr,) = mutating_webhook(docs("excluded-namespaces"))["namespaceSelector"]["matchExpressions"]
    assert expr["values"] == [NS, "kube-system", "monitoring"]


def test_release_namespace_is_not_listed_twice():
    values = {"webhook": {"excludedNamespaces": [NS, "kube-system"]}}
    (expr,) = mutating_webhook(k8s.render(values))["namespaceSelector"]["matchExpressions"]
    assert expr["values"] == [NS, "kube-system"]


@pytest.mark.parametrize("case", ["namespace-selector", "everything"])
def test_custom_namespace_selector_is_used_verbatim(case):
    assert mutating_webhook(docs(case))["namespaceSelector"] == \
        CASES[case]["webhook"]["namespaceSelector"]


def test_failure_policy_ignore():
    assert mutating_webhook(docs("failure-ignore"))["failurePolicy"] == "Ignore"


def test_webhook_tuning():
    rendered = docs("webhook-tuning")
    webhook = mutating_webhook(rendered)
    assert webhook["timeoutSeconds"] == 10
    assert webhook["reinvocationPolicy"] == "Never"
    config = k8s.one(rendered, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {"example.com/owner": "platform"}


# --- TLS: chart-generated ------------------------------------------------------
def service_names(namespace: str = NS, name: str = FULLNAME, domain: str = "cluster.local"):
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.{domain}"]


@pytest.mark.parametrize("case", ["default", "self-signed-validity"])
def test_ca_bundle_signs_the_serving_certificate(case):
    rendered = docs(case)
    webhook = mutating_webhook(rendered)
    ca_pem = k8s.b64decode(webhook["clientConfig"]["caBundle"])
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert len(k8s.pem_certificates(ca_pem)) == 1
    secret = tls_secret(rendered)
    data = {k: k8s.b64decode(v) for k, v in secret["data"].items()}
    assert sorted(data) == ["ca.crt", "tls.crt", "tls.key"]
    assert data["ca.crt"] == ca_pem
    assert b"PRIVATE KEY" in data["tls.key"]
    assert b"PRIVATE KEY" not in data["ca.crt"], "the CA key is not stored"
    domain = CASES[case].get("clusterDomain", "cluster.local")
    names = service_names(domain=domain)
    cert = k8s.decode_certificate(data["tls.crt"])
    assert {v for t, v in cert["subjectAltName"] if t == "DNS"} == set(names)
    assert f"{FULLNAME}.{NS}.svc" in {v for t, v in cert["subjectAltName"]}
    # A client that trusts only the caBundle accepts the server for each name
    # (the API server calls <svc>.<ns>.svc) ...
    for name in names:
        k8s.tls_handshake(ca_pem, data["tls.crt"], data["tls.key"], name)
    # ... and for no other.
    with pytest.raises(ssl.SSLCertVerificationError):
        k8s.tls_handshake(ca_pem, data["tls.crt"], data["tls.key"], f"{FULLNAME}.other.svc")


def test_certificate_validity_follows_values():
    import datetime as dt

    def days(case):
        cert = k8s.decode_certificate(k8s.b64decode(tls_secret(docs(case))["data"]["tls.crt"]))
        parse = lambda s: dt.datetime.strptime(s, "%b %d %H:%M:%S %Y %Z")  # noqa: E731
        return (parse(cert["notAfter"]) - parse(cert["notBefore"])).days

    assert 3649 <= days("default") <= 3651
    assert 29 <= days("self-signed-validity") <= 31


def test_a_foreign_ca_is_rejected():
    """Certificates of two renders do not trust each other: the test above
    really checks the signature."""
    one, two = docs("default"), docs("self-signed-validity")
    ca_two = k8s.b64decode(mutating_webhook(two)["clientConfig"]["caBundle"])
    data = {k: k8s.b64decode(v) for k, v in tls_secret(one)["data"].items()}
    with pytest.raises(ssl.SSLCertVerificationError):
        k8s.tls_handshake(ca_two, data["tls.crt"], data["tls.key"], f"{FULLNAME}.{NS}.svc")


LOOKUP = 'lookup "v1" "Secret" .Release.Namespace $secretName'


def chart_with_existing_secret(tmp_path: Path, secret: dict) -> Path:
    """A copy of the chart whose `lookup` of the TLS Secret returns `secret`,
    as it does on `helm upgrade` against a cluster."""
    copy = tmp_path / "polars-cloud-auth"
    shutil.copytree(k8s.CHART, copy)
    helpers = copy / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    assert text.count(LOOKUP) == 1, "the TLS Secret lookup moved: update this test"
    helpers.write_text(text.replace(LOOKUP, "fromJson `%s`" % json.dumps(secret)))
    return copy


def test_upgrade_reuses_the_existing_certificate(tmp_path):
    installed = docs()
    secret = tls_secret(installed)
    upgraded = k8s.render_fresh({}, chart_with_existing_secret(tmp_path, secret))
    assert tls_secret(upgraded)["data"] == secret["data"]
    assert mutating_webhook(upgraded)["clientConfig"]["caBundle"] == \
        mutating_webhook(installed)["clientConfig"]["caBundle"]


def test_certificate_is_remade_for_other_names(tmp_path):
    secret = tls_secret(docs())
    secret["metadata"]["annotations"]["polars.cloud/tls-hosts"] = "old-name.other.svc"
    upgraded = k8s.render_fresh({}, chart_with_existing_secret(tmp_path, secret))
    assert tls_secret(upgraded)["data"]["tls.crt"] != secret["data"]["tls.crt"]


def test_incomplete_secret_is_replaced(tmp_path):
    secret = tls_secret(docs())
    del secret["data"]["ca.crt"]
    upgraded = k8s.render_fresh({}, chart_with_existing_secret(tmp_path, secret))
    assert sorted(tls_secret(upgraded)["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert tls_secret(upgraded)["data"]["tls.crt"] != secret["data"]["tls.crt"]


# --- TLS: cert-manager -----------------------------------------------------------
@pytest.mark.parametrize("case", ["cert-manager", "cert-manager-issuer"])
def test_cert_manager(case):
    rendered = docs(case)
    cert = k8s.one(rendered, "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["namespace"] == NS
    assert set(cert["spec"]["dnsNames"]) == set(service_names())
    assert cert["spec"]["commonName"] == f"{FULLNAME}.{NS}.svc"
    assert "server auth" in cert["spec"]["usages"]
    assert cert["spec"]["duration"] == "8760h" and cert["spec"]["renewBefore"] == "720h"
    # The Deployment mounts the Secret cert-manager writes, and the chart
    # writes none itself.
    assert [d for d in rendered if d.get("type") == "kubernetes.io/tls"] == []
    volume = k8s.volumes(k8s.pod_spec(deployment(rendered)))["tls"]
    assert volume["secret"]["secretName"] == cert["spec"]["secretName"]
    # cainjector fills the caBundle from that Certificate.
    config = k8s.one(rendered, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NS}/{cert['metadata']['name']}"
    assert "caBundle" not in mutating_webhook(rendered)["clientConfig"]
    issuers = k8s.find(rendered, "Issuer")
    ref = cert["spec"]["issuerRef"]
    if case == "cert-manager":
        (issuer,) = issuers
        assert issuer["apiVersion"] == "cert-manager.io/v1"
        assert issuer["spec"] == {"selfSigned": {}}
        assert ref == {"name": issuer["metadata"]["name"], "kind": "Issuer",
                       "group": "cert-manager.io"}
    else:
        assert issuers == []
        assert ref == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_cert_manager_durations():
    cert = k8s.one(docs("everything"), "Certificate")
    assert (cert["spec"]["duration"], cert["spec"]["renewBefore"]) == ("2160h", "360h")


# --- credentials -----------------------------------------------------------------
def credential_secrets(rendered):
    return [d for d in rendered if d["kind"] == "Secret" and d.get("type") == "Opaque"]


def test_no_credentials_secret_by_default():
    assert credential_secrets(docs()) == []
    assert "create secret generic polars-cloud-credentials" in k8s.render_notes({})


@pytest.mark.parametrize("case,namespaces", [
    ("credentials", [NS]),
    ("credentials-namespaces", [NS, "team-a", "team-b"]),
    ("everything", [NS, "team-a"]),
])
def test_credentials_secret_in_every_namespace(case, namespaces):
    rendered = docs(case)
    secrets = credential_secrets(rendered)
    name = CASES[case]["credentials"].get("secretName", k8s.CREDENTIALS_SECRET)
    assert sorted(s["metadata"]["namespace"] for s in secrets) == sorted(namespaces)
    for secret in secrets:
        assert secret["metadata"]["name"] == name
        assert {k: k8s.b64decode(v).decode() for k, v in secret["data"].items()} == {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert webhook_env(rendered)["POLARS_CLOUD_INJECT_SECRET_NAME"] == name


@pytest.mark.parametrize("case", ["credentials", "credentials-namespaces", "everything"])
def test_secret_values_appear_only_in_the_credentials_secrets(case):
    rendered = docs(case)
    needles = []
    for value in (CLIENT_ID, CLIENT_SECRET):
        needles += [value, base64.b64encode(value.encode()).decode()]
    for doc in rendered:
        if doc in credential_secrets(rendered):
            continue
        text = json.dumps(doc)
        for needle in needles:
            assert needle not in text, f"{doc['kind']}/{doc['metadata']['name']} leaks it"
    notes = k8s.render_notes(CASES[case])
    assert not any(n in notes for n in needles)


def test_set_file_trailing_newline_is_dropped():
    values = {"credentials": {"clientId": "id\n", "clientSecret": "secret\n"}}
    (secret,) = credential_secrets(k8s.render(values))
    assert k8s.b64decode(secret["data"]["client_secret"]) == b"secret"
    assert k8s.b64decode(secret["data"]["client_id"]) == b"id"


def test_existing_secret():
    rendered = docs("existing-secret")
    assert credential_secrets(rendered) == []
    assert webhook_env(rendered)["POLARS_CLOUD_INJECT_SECRET_NAME"] == "my-polars-creds"


def test_injection_secret_name_wins():
    values = {"credentials": {"existingSecret": "mine"}, "injection": {"secretName": "theirs"}}
    assert webhook_env(k8s.render(values))["POLARS_CLOUD_INJECT_SECRET_NAME"] == "theirs"


# --- values, schema, README --------------------------------------------------------
@pytest.mark.parametrize("what", BAD_VALUES)
def test_schema_rejects_bad_values(what):
    helm = k8s.helm_sdk()
    values, field = BAD_VALUES[what]
    chart = helm.Chart.load(str(k8s.CHART))
    # helm template / install / upgrade
    with pytest.raises(helm.HelmValuesError) as excinfo:
        chart.render(values, name=k8s.RELEASE, namespace=NS)
    message = str(excinfo.value)
    assert "values don't meet the specifications of the schema" in message
    assert field in message, message
    # helm lint --strict
    report = k8s.lint(values, kube_version=k8s.kube_versions()[0])
    assert any(field in e for e in report["errors"]), report


@pytest.mark.parametrize("what", BAD_COMBINATIONS)
def test_templates_reject_bad_combinations(what):
    helm = k8s.helm_sdk()
    values, field = BAD_COMBINATIONS[what]
    helm.Chart.load(str(k8s.CHART)).validate_schema(values)  # the schema allows it
    with pytest.raises(helm.HelmError) as excinfo:
        k8s.render_fresh(values, k8s.CHART)
    assert field in str(excinfo.value), str(excinfo.value)


def test_default_values_pass_the_schema():
    k8s.helm_sdk().Chart.load(str(k8s.CHART)).validate_schema(values_yaml())


def test_schema_is_strict():
    schema = json.loads((k8s.CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(values_yaml())
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and \
                    node.get("additionalProperties") is not False and path != "/podLabels":
                loose.append(path)
            for key, child in node.get("properties", {}).items():
                walk(child, f"{path}/{key}")
    walk(schema, "")
    assert loose == []
    props = schema["properties"]
    assert props["injection"]["properties"]["mode"]["enum"] == list(k8s.INJECT_MODES)
    assert props["webhook"]["properties"]["failurePolicy"]["enum"] == ["Fail", "Ignore"]
    for key in ("cpuRequest", "memoryRequest", "memoryLimit"):
        assert "pattern" in props["injection"]["properties"][key]


def load_readme_generator():
    path = k8s.DEPLOY / "helm" / "gen-readme.py"
    spec = importlib.util.spec_from_file_location("gen_readme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_table_keys() -> list[str]:
    readme = (k8s.CHART / "README.md").read_text()
    table = readme.split("<!-- values-table:start -->")[1].split("<!-- values-table:end -->")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, re.M)


def test_readme_documents_every_value():
    keys = readme_table_keys()
    assert len(keys) == len(set(keys))
    for top in values_yaml():
        assert any(k == top or k.startswith(top + ".") for k in keys), f"{top} not in README"

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in keys:
                yield from leaves(value, path + ".")
            else:
                yield path

    undocumented = [p for p in leaves(values_yaml()) if p not in keys]
    assert undocumented == []


def test_readme_table_is_up_to_date():
    gen = load_readme_generator()
    readme = (k8s.CHART / "README.md").read_text()
    assert gen.render_readme(readme, (k8s.CHART / "values.yaml").read_text()) == readme, \
        "run deploy/helm/gen-readme.py"


def test_readme_says_no_rbac_is_needed():
    readme = (k8s.CHART / "README.md").read_text()
    assert "## RBAC" in readme
    assert "never calls the\nKubernetes API" in readme


def test_notes():
    notes = k8s.render_notes({})
    assert 'polars.cloud/inject: "true"' in notes
    assert f"every namespace except {NS}, kube-system" in notes
    notes = k8s.render_notes(CASES["credentials-namespaces"])
    assert f"The chart created it in: {NS}, team-a, team-b" in notes


def test_no_registry_host_in_rendered_output():
    for case in CASES:
        text = json.dumps(docs(case)).lower()
        for host in k8s.REGISTRY_HOSTS:
            assert host not in text, (case, host)
