"""The chart, the webhook and `inject` against a real kube-apiserver (scripts/cluster.sh:
etcd + kube-apiserver on loopback, no kubelet, no controller manager), driven with the real
kubectl and Helm CLI.

- The chart is installed and upgraded with `helm` (its `lookup` of the TLS Secret runs
  against the API server); every object it renders is stored, i.e. accepted by the API
  server's own validation.
- The real `polars-cloud-auth webhook` runs on a loopback port; the chart's
  MutatingWebhookConfiguration (rules, selectors, policies as installed) is patched to
  reach it by `url` with a CA of the test's. Pods created through the API are mutated by
  it, then pass the built-in admission (ServiceAccount, PodSecurity "restricted" enforced in
  the namespace) and the API server's pod validation before they are stored.
- Without controllers nothing turns a Deployment, Job or CronJob into pods, so the tests
  do what the controllers would: create the pod from the stored template.
- Everything `inject` prints for tests/data/inject is applied with --dry-run=server.

The assertions about the injected pods are generic (our container, the token volume
mounted read-only in every app container with its env, the marker annotation, the API
server accepted it), so they hold as the injected spec grows.

Skipped unless the cluster's environment is set (scripts/cluster.sh env); under
POLARS_CLOUD_AUTH_SLOW=1 a missing cluster fails instead.
"""
from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

import cluster
import k8s

NS = k8s.NAMESPACE  # the release namespace
RELEASE = k8s.RELEASE
FULLNAME = f"{RELEASE}-polars-cloud-auth"
WEBHOOK_NAME = "inject.polars.cloud"
APPS = "apps"       # PodSecurity "restricted" enforced; gets the credentials Secret
TEAM_A = "team-a"   # the namespace of tests/data/inject/pod.yaml; gets the Secret too
OTHER = "other"     # no Secret copy, no PodSecurity labels
TOKEN_CONTAINERS = {"polars-cloud-auth", "polars-cloud-auth-init"}
INJECTED = "polars.cloud/injected"

RESTRICTED_APP = {
    "runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def app_container(name: str = "app") -> dict:
    return {"name": name, "image": "busybox:1.36", "command": ["sleep", "3600"],
            "securityContext": copy.deepcopy(RESTRICTED_APP)}


def pod(name: str | None = None, *, labelled: bool = True, annotations: dict | None = None,
        namespace: str = APPS, generate_name: str | None = None, **spec) -> dict:
    meta: dict = {"namespace": namespace, "labels": {"app": "test"}}
    if name:
        meta["name"] = name
    if generate_name:
        meta["generateName"] = generate_name
    if labelled:
        meta["labels"][k8s.INJECT_LABEL] = "true"
    if annotations:
        meta["annotations"] = annotations
    body = {"containers": [app_container()], **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


# --- what an injected pod must look like (generic) -----------------------------------
def injection_problems(obj: dict, skipped: frozenset[str] = frozenset()) -> list[str]:
    """What is missing from an injected pod (or pod template), whatever else it gains."""
    meta, spec = obj.get("metadata") or {}, obj["spec"]
    problems = []
    if INJECTED not in (meta.get("annotations") or {}):
        problems.append(f"no {INJECTED} annotation")
    volumes = k8s.volumes(spec)
    token = volumes.get(k8s.TOKEN_VOLUME)
    if not token or "emptyDir" not in token:
        problems.append(f"no emptyDir volume {k8s.TOKEN_VOLUME}")
    if not any("secret" in v for v in volumes.values()):
        problems.append("no credentials Secret volume")
    secret_volumes = {n for n, v in volumes.items() if "secret" in v}
    ours = [c for c in k8s.all_containers(spec) if c["name"] in TOKEN_CONTAINERS]
    if not ours:
        problems.append("no token container")
    for c in ours:
        if not secret_volumes & set(k8s.mounts(c)):
            problems.append(f"{c['name']}: does not mount the credentials")
        if k8s.TOKEN_VOLUME not in k8s.mounts(c):
            problems.append(f"{c['name']}: does not mount the token volume")
    for c in k8s.all_containers(spec):
        if c["name"] in TOKEN_CONTAINERS or c["name"] in skipped:
            continue
        mount = k8s.mounts(c).get(k8s.TOKEN_VOLUME)
        if not mount or not mount.get("readOnly"):
            problems.append(f"{c['name']}: no read-only mount of {k8s.TOKEN_VOLUME}")
        env = k8s.env_map(c)
        path = env.get("POLARS_CLOUD_ACCESS_TOKEN_PATH")
        if not path or not mount or not path.startswith(mount["mountPath"].rstrip("/") + "/"):
            problems.append(f"{c['name']}: POLARS_CLOUD_ACCESS_TOKEN_PATH {path!r} is not "
                            "in the token mount")
        if secret_volumes & set(k8s.mounts(c)):
            problems.append(f"{c['name']}: app container mounts the credentials")
    return problems


def not_injected(obj: dict) -> bool:
    spec = obj["spec"]
    return (INJECTED not in (obj["metadata"].get("annotations") or {})
            and k8s.TOKEN_VOLUME not in k8s.volumes(spec)
            and not {c["name"] for c in k8s.all_containers(spec)} & TOKEN_CONTAINERS)


def init_names(spec: dict) -> list[str]:
    return [c["name"] for c in spec.get("initContainers", [])]


def names(spec: dict) -> list[str]:
    return [c["name"] for c in spec.get("containers", [])]


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kube() -> cluster.Kube:
    return cluster.connect()


@pytest.fixture(scope="module")
def release(kube, tmp_path_factory):
    """The chart installed, then upgraded, with the real Helm CLI. Returns what the tests
    compare: the TLS Secret and caBundle after install and after upgrade."""
    # A second run against the same cluster starts clean (namespaces are kept: without a
    # controller manager a deleted namespace stays Terminating).
    for ns in (APPS, TEAM_A, OTHER):
        kube.run("delete", "pods,deployments,statefulsets,daemonsets,replicasets,jobs,cronjobs",
                 "--all", "-n", ns, "--ignore-not-found", "--wait=false", check=False)
    for ns in (NS, "kube-system"):
        kube.run("delete", "pods", "-l", "app=test", "-n", ns, "--ignore-not-found",
                 "--wait=false", check=False)
    kube.namespace(APPS, {"pod-security.kubernetes.io/enforce": "restricted",
                          "pod-security.kubernetes.io/enforce-version": "latest"})
    kube.namespace(TEAM_A)
    kube.namespace(OTHER)
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(json.dumps({"credentials": {
        "clientId": "pca-cluster-test-id", "clientSecret": "pca-cluster-test-secret",
        "namespaces": [APPS, TEAM_A]}}))
    if kube.helm_run("status", RELEASE, "-n", NS, check=False).returncode == 0:
        kube.helm_run("uninstall", RELEASE, "-n", NS, "--wait")
    installed = kube.helm_run("install", RELEASE, k8s.CHART, "-n", NS, "--create-namespace",
                              "-f", values, "-o", "json")

    def state():
        secret = kube.get("secret", f"{FULLNAME}-tls", "-n", NS)
        config = kube.get("mutatingwebhookconfiguration", FULLNAME)
        return secret, config
    first = state()
    upgraded = kube.helm_run("upgrade", RELEASE, k8s.CHART, "-n", NS, "-f", values,
                             "-o", "json")
    second = state()
    return {"install": json.loads(installed.stdout), "upgrade": json.loads(upgraded.stdout),
            "before": first, "after": second, "values": values}


class Adder(http.server.BaseHTTPRequestHandler):
    """A second mutating webhook that adds a container (as a service mesh would), so the
    API server must reinvoke ours (reinvocationPolicy IfNeeded)."""

    def do_POST(self):  # noqa: N802 - the http.server interface
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        spec = request["object"]["spec"]
        patch = []
        if "added-later" not in names(spec):
            patch = [{"op": "add", "path": "/spec/containers/-", "value": app_container("added-later")}]
        response = {"uid": request["uid"], "allowed": True}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook(kube, release, tmp_path_factory):
    """Our webhook binary, with the environment of the chart's webhook container, reached
    by the API server through the chart's (patched) MutatingWebhookConfiguration; plus the
    second, container-adding webhook for the reinvocation test."""
    tmp = tmp_path_factory.mktemp("webhook")
    tls = cluster.make_tls(tmp / "tls")
    deployment = kube.get("deployment", FULLNAME, "-n", NS)
    (container,) = k8s.pod_spec(deployment)["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    server = cluster.Webhook(env, tls, tmp / "webhook.log")

    config = kube.get("mutatingwebhookconfiguration", FULLNAME)
    path = config["webhooks"][0]["clientConfig"]["service"]["path"]
    url = f"{server.base}{path}"
    server.url = url
    set_client(kube, url, tls["ca"])

    adder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Adder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    adder.socket = context.wrap_socket(adder.socket, server_side=True)
    threading.Thread(target=adder.serve_forever, daemon=True).start()
    kube.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        # Sorted after ours, so ours runs first and must be called again.
        "metadata": {"name": "zz-test-container-adder"},
        "webhooks": [{
            "name": "adder.test.polars.cloud", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail", "reinvocationPolicy": "Never",
            "clientConfig": {"url": f"https://127.0.0.1:{adder.server_address[1]}/add",
                             "caBundle": cluster.b64(tls["ca"])},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"test.polars.cloud/add-container": "true"}},
        }]})
    yield server
    kube.run("delete", "mutatingwebhookconfiguration", "zz-test-container-adder",
             "--ignore-not-found")
    adder.shutdown()
    server.stop()


def set_client(kube, url: str, ca: Path, failure_policy: str | None = None) -> None:
    ops = [{"op": "replace", "path": "/webhooks/0/clientConfig",
            "value": {"url": url, "caBundle": cluster.b64(ca)}}]
    if failure_policy:
        ops.append({"op": "replace", "path": "/webhooks/0/failurePolicy",
                    "value": failure_policy})
    kube.run("patch", "mutatingwebhookconfiguration", FULLNAME, "--type=json",
             "-p", json.dumps(ops))


def stored(kube, obj: dict) -> dict:
    meta = obj["metadata"]
    return kube.get(obj["kind"].lower(), meta["name"], "-n", meta["namespace"])


# --- the cluster itself -----------------------------------------------------------------
def test_the_server_is_a_real_kube_apiserver(kube):
    version = json.loads(kube.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.37."), version
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    plugins = kube.run("get", "--raw", "/readyz?verbose").stdout
    assert "[+]poststarthook/rbac/bootstrap-roles ok" in plugins


def test_token_request_works(kube, release):
    """Service-account signing keys are configured: TokenRequest issues a JWT."""
    token = kube.run("create", "token", "default", "-n", APPS, "--duration=10m").stdout.strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["sub"] == f"system:serviceaccount:{APPS}:default"
    # scripts/cluster.sh makes the API server's own loopback URL the issuer, so that Keycloak
    # can fetch its discovery and JWKS (tests/assertion.rs).
    assert payload["iss"] == os.environ["POLARS_CLOUD_AUTH_CLUSTER_ISSUER"]
    assert payload["iss"].startswith("https://127.0.0.1:")


def test_the_api_server_validates_pods(kube, release):
    """The canaries: the API server rejects what these tests rely on it to reject (a probe
    on a regular init container; a non-restricted pod where "restricted" is enforced)."""
    bad = pod("probe-on-init", labelled=False, initContainers=[{
        **app_container("init"), "startupProbe": {"exec": {"command": ["true"]}}}])
    out = kube.create(bad, check=False)
    assert out.returncode != 0
    assert "startupProbe" in out.stderr and "restartPolicy" in out.stderr, out.stderr
    loose = pod("not-restricted", labelled=False)
    del loose["spec"]["containers"][0]["securityContext"]
    out = kube.create(loose, check=False)
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr, out.stderr


# --- the chart with the Helm CLI -------------------------------------------------------
def test_chart_installs_with_the_helm_cli(kube, release):
    info = release["install"]["info"]
    assert info["status"] == "deployed", info
    assert release["upgrade"]["info"]["status"] == "deployed"
    assert release["upgrade"]["version"] == 2
    stored_kinds = {
        "deployment": [FULLNAME], "service": [FULLNAME], "serviceaccount": [FULLNAME],
        "poddisruptionbudget": [FULLNAME], "secret": [f"{FULLNAME}-tls", k8s.CREDENTIALS_SECRET],
    }
    for kind, objs in stored_kinds.items():
        for name in objs:
            obj = kube.get(kind, name, "-n", NS)
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    for ns in (APPS, TEAM_A):
        secret = kube.get("secret", k8s.CREDENTIALS_SECRET, "-n", ns)
        assert sorted(secret["data"]) == sorted(k8s.CREDENTIALS_KEYS)
    webhook_config = release["before"][1]
    (hook,) = webhook_config["webhooks"]
    assert hook["name"] == WEBHOOK_NAME
    # The API server defaulted nothing away: the chart's selectors and policies as stored.
    assert hook["objectSelector"] == {"matchLabels": {k8s.INJECT_LABEL: "true"}}
    assert hook["failurePolicy"] == "Fail" and hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["clientConfig"]["caBundle"] == release["before"][0]["data"]["ca.crt"]


def test_helm_upgrade_keeps_the_certificate(release):
    """The chart's `lookup` of its TLS Secret, for real: neither the certificate nor the
    caBundle changes on `helm upgrade`."""
    (secret1, config1), (secret2, config2) = release["before"], release["after"]
    assert secret2["data"] == secret1["data"]
    assert config2["webhooks"][0]["clientConfig"]["caBundle"] == \
        config1["webhooks"][0]["clientConfig"]["caBundle"]


def test_helm_install_server_dry_run_of_another_release_is_valid(kube, release):
    out = kube.helm_run("install", "pca-dry", k8s.CHART, "-n", OTHER, "--dry-run=server",
                        "--set", "webhook.failurePolicy=Ignore")
    assert "STATUS: pending-install" in out.stdout, out.stdout


# --- pods through the webhook ------------------------------------------------------------
@pytest.mark.parametrize("mode", k8s.INJECT_MODES)
def test_pod_is_injected_and_stored(kube, webhook, mode):
    before = webhook.reviews().get("injected", 0)
    created = kube.create(pod(f"pod-{mode}", annotations={"polars.cloud/mode": mode}))
    got = stored(kube, created)
    assert injection_problems(got) == []
    spec = got["spec"]
    inits = {c["name"]: c for c in spec.get("initContainers", [])}
    if mode == "native":
        assert inits["polars-cloud-auth"]["restartPolicy"] == "Always"
        hook = inits["polars-cloud-auth"]["lifecycle"]["postStart"]["exec"]["command"]
        assert hook[1:4] == ["probe", "--wait", "120s"]
    elif mode == "classic":
        assert "polars-cloud-auth-init" in inits and "polars-cloud-auth" in names(spec)
    else:
        assert "restartPolicy" not in inits["polars-cloud-auth"]
        assert "polars-cloud-auth" not in names(spec)
    # The rest of the admission chain ran after us (the ServiceAccount plugin's volume).
    assert any(v["name"].startswith("kube-api-access-") for v in spec["volumes"])
    assert webhook.reviews().get("injected", 0) == before + 1


def test_injected_pod_carries_the_charts_injection_settings(kube, webhook):
    got = stored(kube, kube.create(pod("pod-settings")))
    deployment = kube.get("deployment", FULLNAME, "-n", NS)
    env = k8s.env_map(k8s.pod_spec(deployment)["containers"][0])
    (ours,) = [c for c in got["spec"]["initContainers"] if c["name"] == "polars-cloud-auth"]
    assert ours["image"] == env["POLARS_CLOUD_INJECT_IMAGE"]
    secrets = [v["secret"]["secretName"] for v in got["spec"]["volumes"] if "secret" in v]
    assert env["POLARS_CLOUD_INJECT_SECRET_NAME"] in secrets


def test_pod_with_init_containers_and_skipped_container(kube, webhook):
    obj = pod("pod-init", annotations={"polars.cloud/skip-containers": "helper"},
              initContainers=[app_container("migrate")])
    obj["spec"]["containers"].append(app_container("helper"))
    got = stored(kube, kube.create(obj))
    assert injection_problems(got, frozenset({"helper"})) == []
    inits = init_names(got["spec"])
    assert inits.index("migrate") > min(inits.index(n) for n in inits if n in TOKEN_CONTAINERS)
    (helper,) = [c for c in got["spec"]["containers"] if c["name"] == "helper"]
    assert k8s.TOKEN_VOLUME not in k8s.mounts(helper)


# Pod-level settings of the pod's own that the injection must merge with, where the API
# server has rules of its own (sysctl names unique and not net.* with hostNetwork, ...).
OWN_POD_SETTINGS = {
    "own-sysctls": {"securityContext": {"sysctls": [
        {"name": "kernel.shm_rmid_forced", "value": "1"},
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]}},
    "own-host-aliases": {"hostAliases": [
        {"ip": "127.0.0.1", "hostnames": ["auth.polars-cloud-auth.internal", "db.local"]}]},
    "host-network": {"hostNetwork": True},
    "fs-group": {"securityContext": {"fsGroup": 2000, "runAsNonRoot": True}},
    "own-volumes": {"volumes": [{"name": "scratch", "emptyDir": {}}]},
}


@pytest.mark.parametrize("case", OWN_POD_SETTINGS)
def test_pod_with_its_own_pod_settings(kube, webhook, case):
    obj = pod(f"pod-{case}", namespace=OTHER, **copy.deepcopy(OWN_POD_SETTINGS[case]))
    if case == "own-volumes":
        obj["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/tmp"}]
    got = stored(kube, kube.create(obj))
    assert injection_problems(got) == []
    # The pod's own entries are all kept.
    own = OWN_POD_SETTINGS[case]
    for key in ("hostAliases", "volumes"):
        for item in own.get(key, []):
            assert item in got["spec"][key], (key, item)
    for item in own.get("securityContext", {}).get("sysctls", []):
        assert item in got["spec"]["securityContext"]["sysctls"], item


def test_generate_name_pod(kube, webhook):
    got = kube.create(pod(generate_name="batch-"))
    assert got["metadata"]["name"].startswith("batch-") and got["metadata"]["name"] != "batch-"
    assert injection_problems(stored(kube, got)) == []


def test_server_dry_run_is_injected_and_not_stored(kube, webhook):
    before = webhook.reviews().get("injected", 0)
    got = kube.create(pod("pod-dry-run"), "--dry-run=server")
    assert injection_problems(got) == []
    assert webhook.reviews().get("injected", 0) == before + 1
    out = kube.run("get", "pod", "pod-dry-run", "-n", APPS, check=False)
    assert out.returncode != 0 and "NotFound" in out.stderr


def test_updates_of_injected_pods(kube, webhook):
    got = stored(kube, kube.create(pod("pod-update")))
    reviews = webhook.total()
    kube.run("label", "pod", "pod-update", "-n", APPS, "tier=web")
    kube.run("annotate", "pod", "pod-update", "-n", APPS, "example.com/note=updated")
    kube.run("set", "image", "pod/pod-update", "-n", APPS, "app=busybox:1.37")
    after = stored(kube, got)
    assert after["metadata"]["labels"]["tier"] == "web"
    assert after["spec"]["containers"][0]["image"] == "busybox:1.37"
    for field in ("initContainers", "volumes"):
        assert after["spec"][field] == got["spec"][field]
    assert injection_problems(after) == []
    # UPDATE is not in the rules: the API server did not even call the webhook.
    assert webhook.total() == reviews


def test_reinvocation_covers_a_container_added_by_a_later_webhook(kube, webhook):
    obj = pod("pod-reinvoked")
    obj["metadata"]["labels"]["test.polars.cloud/add-container"] = "true"
    before = webhook.total()
    got = stored(kube, kube.create(obj))
    assert "added-later" in names(got["spec"])
    assert injection_problems(got) == []  # the added container has the mount and env
    assert webhook.total() == before + 2  # first call, then the reinvocation


def test_denied_pod_shows_the_webhooks_message(kube, webhook):
    out = kube.create(pod("pod-denied", annotations={"polars.cloud/mode": "sidecar"}),
                      check=False)
    assert out.returncode != 0
    assert f'admission webhook "{WEBHOOK_NAME}" denied the request' in out.stderr, out.stderr
    assert "polars.cloud/mode" in out.stderr and "native" in out.stderr
    assert kube.run("get", "pod", "pod-denied", "-n", APPS, check=False).returncode != 0


def test_object_selector_keeps_unlabelled_pods_away(kube, webhook):
    reviews = webhook.total()
    got = stored(kube, kube.create(pod("pod-unlabelled", labelled=False)))
    assert not_injected(got)
    assert webhook.total() == reviews


@pytest.mark.parametrize("namespace", [NS, "kube-system"])
def test_namespace_selector_skips_excluded_namespaces(kube, webhook, namespace):
    kube.namespace(namespace)
    reviews = webhook.total()
    got = stored(kube, kube.create(pod(f"pod-excluded-{namespace}", namespace=namespace)))
    assert not_injected(got)
    assert webhook.total() == reviews


def test_pod_in_a_namespace_without_the_secret_copy(kube, webhook):
    """The Secret is not needed to admit the pod (the kubelet would wait for it)."""
    got = stored(kube, kube.create(pod("pod-other", namespace=OTHER)))
    assert injection_problems(got) == []


# --- workloads: their stored templates, and pods made from them as a controller would ----
def owner(obj: dict, controller_kind: str) -> list[dict]:
    return [{"apiVersion": obj["apiVersion"], "kind": controller_kind,
             "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}]


def pod_from_template(template: dict, namespace: str, prefix: str, owners: list[dict]) -> dict:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta.update({"namespace": namespace, "generateName": prefix, "ownerReferences": owners})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": copy.deepcopy(template["spec"])}


def labelled_template(restart: str = "Always") -> dict:
    return {"metadata": {"labels": {"app": "work", k8s.INJECT_LABEL: "true"}},
            "spec": {"restartPolicy": restart, "containers": [app_container()]}}


def test_deployment_pods_are_injected(kube, webhook):
    dep = kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": APPS},
                       "spec": {"selector": {"matchLabels": {"app": "work"}},
                                "template": labelled_template()}})
    # The webhook handles pods only: the stored template is as written.
    assert not_injected(dep["spec"]["template"])
    got = kube.create(pod_from_template(dep["spec"]["template"], APPS, "web-",
                                        owner(dep, "Deployment")))
    assert injection_problems(stored(kube, got)) == []


def test_job_pods_are_injected(kube, webhook):
    job = kube.create({"apiVersion": "batch/v1", "kind": "Job",
                       "metadata": {"name": "batch", "namespace": APPS},
                       "spec": {"template": labelled_template("Never")}})
    template = job["spec"]["template"]
    # The API server added the Job's selector labels to the template.
    assert "batch.kubernetes.io/controller-uid" in template["metadata"]["labels"]
    got = stored(kube, kube.create(pod_from_template(template, APPS, "batch-",
                                                     owner(job, "Job"))))
    assert injection_problems(got) == []
    assert got["spec"]["restartPolicy"] == "Never"


def test_cronjob_pods_are_injected(kube, webhook):
    cron = kube.create({"apiVersion": "batch/v1", "kind": "CronJob",
                        "metadata": {"name": "nightly", "namespace": APPS},
                        "spec": {"schedule": "0 3 * * *", "jobTemplate": {
                            "spec": {"template": labelled_template("OnFailure")}}}})
    job_template = cron["spec"]["jobTemplate"]
    job = kube.create({"apiVersion": "batch/v1", "kind": "Job",
                       "metadata": {"name": "nightly-1", "namespace": APPS,
                                    "ownerReferences": owner(cron, "CronJob")},
                       "spec": copy.deepcopy(job_template["spec"])})
    got = stored(kube, kube.create(pod_from_template(job["spec"]["template"], APPS,
                                                     "nightly-1-", owner(job, "Job"))))
    assert injection_problems(got) == []


# --- webhook down --------------------------------------------------------------------------
@pytest.fixture
def webhook_down(kube, webhook):
    """The configuration points at a loopback port nobody listens on; restored after."""
    yield lambda policy: set_client(kube, f"https://127.0.0.1:{cluster.free_port()}/mutate",
                                    webhook.tls["ca"], policy)
    set_client(kube, webhook.url, webhook.tls["ca"], "Fail")


def test_webhook_down_with_failure_policy_fail(kube, webhook_down):
    webhook_down("Fail")
    out = kube.create(pod("pod-down-fail"), check=False)
    assert out.returncode != 0
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in out.stderr, out.stderr
    # Pods that do not ask for a token are not affected.
    assert not_injected(kube.create(pod("pod-down-unlabelled", labelled=False)))


def test_webhook_down_with_failure_policy_ignore(kube, webhook_down):
    webhook_down("Ignore")
    got = stored(kube, kube.create(pod("pod-down-ignore")))
    assert not_injected(got)


# --- `inject` output, applied with --dry-run=server ----------------------------------------
INJECT_INPUTS = sorted((k8s.REPO / "tests" / "data" / "inject").glob("*.yaml"))


def inject(path: Path, *args: str) -> str:
    out = subprocess.run([str(cluster.binary()), "inject", *args, str(path)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("path", INJECT_INPUTS, ids=lambda p: p.name)
@pytest.mark.parametrize("flags", [[], ["--all", "--mode", "classic"], ["--all", "--mode", "init-only"]],
                         ids=["default", "classic-all", "init-only-all"])
def test_inject_output_is_accepted_by_the_api_server(kube, webhook, path, flags):
    text = inject(path, *flags)
    out = kube.run("apply", "--dry-run=server", "-n", TEAM_A, "-f", "-", "-o", "json",
                   input=text)
    answer = json.loads(out.stdout)
    items = answer["items"] if answer.get("kind") == "List" else [answer]
    sent = [i for d in k8s.load_all(text)
            for i in (d["items"] if d.get("kind") == "List" else [d])]
    assert len(items) == len(sent)
    for doc, got in zip(sent, items):
        assert (got["kind"], got["metadata"].get("name")) == (doc["kind"], doc["metadata"].get("name"))
        if not k8s.has_pod_spec(doc):
            continue
        tpl_sent = doc if doc["kind"] == "Pod" else _template(doc)
        tpl_got = got if got["kind"] == "Pod" else _template(got)
        if INJECTED in ((tpl_sent.get("metadata") or {}).get("annotations") or {}):
            skipped = frozenset(
                n.strip() for n in tpl_sent["metadata"]["annotations"].get(
                    "polars.cloud/skip-containers", "").split(",") if n.strip())
            assert injection_problems(tpl_got, skipped) == [], (path.name, doc["kind"])
            # Our webhook saw an injected pod and added nothing.
            assert init_names(tpl_got["spec"]) == init_names(tpl_sent["spec"])
            assert names(tpl_got["spec"]) == names(tpl_sent["spec"])


def _template(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


@pytest.mark.parametrize("kind", ["deployment.yaml", "job.yaml", "cronjob.yaml"])
def test_injected_workloads_are_stored_as_injected(kube, webhook, kind):
    """Not only a dry run: the stored template of an `inject`ed workload is injected."""
    text = inject(k8s.REPO / "tests" / "data" / "inject" / kind)
    applied = json.loads(kube.run("apply", "-n", OTHER, "-f", "-", "-o", "json",
                                  input=text).stdout)
    items = applied["items"] if applied.get("kind") == "List" else [applied]
    checked = 0
    for got in items:
        if not k8s.has_pod_spec(got):
            continue
        tpl = _template(got)
        if INJECTED in ((tpl.get("metadata") or {}).get("annotations") or {}):
            again = stored(kube, {"kind": got["kind"], "metadata": {
                "name": got["metadata"]["name"], "namespace": OTHER}})
            skipped = frozenset(n.strip() for n in tpl["metadata"]["annotations"].get(
                "polars.cloud/skip-containers", "").split(",") if n.strip())
            assert injection_problems(_template(again), skipped) == []
            checked += 1
    assert checked >= 1


# --- the plain manifests of deploy/manifests -------------------------------------------------
@pytest.mark.parametrize("path", sorted(k8s.MANIFESTS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_manifests_are_accepted_by_the_api_server(kube, release, path):
    text = path.read_text()
    out = kube.run("apply", "--dry-run=server", "-n", TEAM_A, "-f", "-", "-o", "json", input=text)
    answer = json.loads(out.stdout)
    items = answer["items"] if answer.get("kind") == "List" else [answer]
    assert sorted(k8s.kinds(items)) == sorted(k8s.kinds(k8s.load_all(text)))
