"""Helpers to render and check the Kubernetes artefacts in deploy/.

Rendering uses real Helm: the Go code of Helm v4 (engine, schema validation,
lint) as shipped by the PyPI package helm-python-sdk, a ctypes binding to
libhelm_c. That package ships no `helm` executable; `Chart.render` is what
`helm template` does and `lint(..., strict=True)` is `helm lint --strict`.

Validation uses kubernetes-validate in strict mode (unknown fields are
errors) against Kubernetes 1.29 and the newest version the package bundles.
"""
from __future__ import annotations

import base64
import copy
import functools
import json
import re
import ssl
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = DEPLOY / "manifests"
CHART = DEPLOY / "helm" / "polars-cloud-auth"

RELEASE = "pca"
NAMESPACE = "polars-cloud-system"

# Kinds from CRDs have no schema in kubernetes-validate: they are checked by
# the tests that render them, not by it.
CRD_API_GROUPS = frozenset({"cert-manager.io"})

# --- contract of the polars-cloud-auth binary --------------------------------
IMAGE_NAME = "polars-cloud-auth"
ENTRYPOINT = "/usr/local/bin/polars-cloud-auth"
CREDENTIALS_SECRET = "polars-cloud-credentials"
CREDENTIALS_DIR = "/var/run/secrets/polars-cloud"
CREDENTIALS_KEYS = ("client_id", "client_secret")
TOKEN_VOLUME = "polars-cloud-token"
TOKEN_DIR = "/var/run/polars-cloud"
TOKEN_PATH = "/var/run/polars-cloud/token"
SIDECAR_PORT = 8471
WEBHOOK_PORT = 8443
INJECT_LABEL = "polars.cloud/inject"
INJECT_MODES = ("native", "classic", "init-only")
TOKEN_CONTAINER_ENV = frozenset({
    "POLARS_CLOUD_CREDENTIALS_DIR", "POLARS_CLOUD_ACCESS_TOKEN_PATH",
    "POLARS_CLOUD_TOKEN_FILE_MODE", "POLARS_CLOUD_LISTEN", "POLARS_CLOUD_DOMAIN",
    "POLARS_CLOUD_ISSUER", "POLARS_CLOUD_GRANT", "POLARS_CLOUD_LOG_FORMAT",
    "POLARS_CLOUD_RENEW_AT", "POLARS_CLOUD_RELAY_CLIENT_CONFIGS",
    "POLARS_CLOUD_CLIENT_ASSERTION_FILE",
})
WEBHOOK_ENV = frozenset({
    "POLARS_CLOUD_WEBHOOK_LISTEN", "POLARS_CLOUD_WEBHOOK_TLS_CERT",
    "POLARS_CLOUD_WEBHOOK_TLS_KEY", "POLARS_CLOUD_LOG_FORMAT",
    "POLARS_CLOUD_INJECT_IMAGE", "POLARS_CLOUD_INJECT_SECRET_NAME",
    "POLARS_CLOUD_INJECT_MODE", "POLARS_CLOUD_INJECT_TOKEN_PATH",
    "POLARS_CLOUD_INJECT_CPU_REQUEST", "POLARS_CLOUD_INJECT_MEMORY_REQUEST",
    "POLARS_CLOUD_INJECT_MEMORY_LIMIT", "POLARS_CLOUD_INJECT_DOMAIN",
    "POLARS_CLOUD_INJECT_ISSUER", "POLARS_CLOUD_INJECT_RELAY",
    "POLARS_CLOUD_INJECT_CLIENT_ASSERTION_AUDIENCE",
})
# Registry host names must never be written in deploy/.
REGISTRY_HOSTS = (
    "ghcr.io", "docker.io", "quay.io", "gcr.io", "registry.k8s.io", "k8s.gcr.io",
    "pkg.dev", "amazonaws.com", "azurecr.io", "pypi.org", "pythonhosted.org",
    "npmjs.org", "npmjs.com", "crates.io", "debian.org",
)


# --- tools -------------------------------------------------------------------
def helm_sdk():
    """The helm_python module, or skip the calling test when it is missing."""
    import pytest

    helm = pytest.importorskip(
        "helm_python", reason="helm-python-sdk (real Helm v4 via libhelm_c) is not installed"
    )
    return helm


def kubernetes_validate():
    import pytest

    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    _cache_schemas(kv)
    return kv


def _cache_schemas(kv) -> None:
    """kubernetes-validate parses its 2 MB definitions file for every object it
    validates; parse each schema file once per test session instead (same
    result: the schemas are only read)."""
    utils = getattr(kv, "utils", None)
    original = getattr(utils, "schema_contents", None)
    if original is None:  # another kubernetes-validate layout: validate uncached
        return
    if not getattr(original, "_pca_cached", False):
        utils.schema_contents = functools.cache(utils.schema_contents)
        utils.schema_contents._pca_cached = True


@functools.cache
def kube_versions() -> tuple[str, ...]:
    """Kubernetes 1.29 and the newest version kubernetes-validate bundles."""
    from kubernetes_validate import utils

    return ("1.29.0", utils.latest_version())


# --- YAML --------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys, which the API server
    (strict field validation) and kubectl reject but PyYAML silently merges."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_all(text: str) -> list[dict]:
    """The documents of a YAML stream (empty ones dropped), duplicate keys refused."""
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


# --- rendering ---------------------------------------------------------------
def _freeze(values: dict | None) -> str:
    return json.dumps(values or {}, sort_keys=True)


@functools.cache
def _load_chart(path: str):
    return helm_sdk().Chart.load(path)


@functools.cache
def _render_cached(chart: str, frozen: str, release: str, namespace: str) -> tuple:
    rendered = _load_chart(chart).render(
        json.loads(frozen), name=release, namespace=namespace, is_install=True
    )
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in load_all(text):
            docs.append((template, doc))
    notes = next((t for k, t in rendered.items() if k.endswith("NOTES.txt")), "")
    return tuple(docs), notes


def render(values: dict | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE,
           chart: Path = CHART) -> list[dict]:
    """`helm template` of the chart: the parsed manifests (deep copies)."""
    docs, _ = _render_cached(str(chart), _freeze(values), release, namespace)
    return [copy.deepcopy(doc) for _, doc in docs]


def render_with_sources(values: dict | None = None, **kw) -> list[tuple[str, dict]]:
    chart = kw.pop("chart", CHART)
    docs, _ = _render_cached(str(chart), _freeze(values), kw.get("release", RELEASE),
                             kw.get("namespace", NAMESPACE))
    return [(t, copy.deepcopy(d)) for t, d in docs]


def render_notes(values: dict | None = None, *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> str:
    return _render_cached(str(CHART), _freeze(values), release, namespace)[1]


def render_fresh(values: dict | None, chart: Path, *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> list[dict]:
    """Render without any cache (for charts copied and edited by a test)."""
    rendered = helm_sdk().Chart.load(str(chart)).render(
        values or {}, name=release, namespace=namespace, is_install=True)
    return [d for k, t in sorted(rendered.items()) if not k.endswith("NOTES.txt")
            for d in load_all(t)]


@functools.cache
def _lint_cached(chart: str, frozen: str, kube_version: str, namespace: str) -> str:
    report = helm_sdk().lint(chart, json.loads(frozen), strict=True, namespace=namespace,
                             kube_version=kube_version)
    return json.dumps(report)


def lint(values: dict | None = None, *, kube_version: str, namespace: str = NAMESPACE,
         chart: Path = CHART) -> dict:
    """`helm lint --strict` of the chart: {"messages": [...], "errors": [...]}."""
    if not kube_version.startswith("v"):
        kube_version = "v" + kube_version
    return json.loads(_lint_cached(str(chart), _freeze(values), kube_version, namespace))


def lint_problems(report: dict) -> list[str]:
    """Lint findings that fail `--strict` (warnings and errors)."""
    found = [f"{m['path']}: {m['error']}" for m in report.get("messages", [])
             if m.get("severity", 0) >= 2]
    return found + [e for e in report.get("errors", []) if e not in " ".join(found)]


# --- selecting objects -------------------------------------------------------
def load_manifest(path: Path) -> list[dict]:
    return load_all(path.read_text())


def kinds(docs: Iterable[dict]) -> list[str]:
    return [d["kind"] for d in docs]


def find(docs: Iterable[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: Iterable[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    """The pod spec of a Pod or of a workload's pod template."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                "ReplicationController"}:
        return doc["spec"]["template"]["spec"]
    raise KeyError(f"{kind} has no pod spec")


def has_pod_spec(doc: dict) -> bool:
    return doc["kind"] in {"Pod", "CronJob", "Deployment", "StatefulSet", "DaemonSet",
                           "ReplicaSet", "Job", "ReplicationController"}


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def env_map(container: dict) -> dict[str, Any]:
    """name -> value of a container's env (valueFrom entries map to None)."""
    env = {}
    for item in container.get("env", []):
        assert item["name"] not in env, f"duplicate env {item['name']} in {container['name']}"
        env[item["name"]] = item.get("value")
    return env


def mounts(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec.get("volumes", [])}


def container_port(container: dict, port: int | str) -> int:
    """Resolve a probe's port (number or name) to the container port number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise KeyError(f"container {container['name']} has no port named {port}")


# --- validation --------------------------------------------------------------
def api_group(doc: dict) -> str:
    api_version = doc["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def validate(doc: dict, version: str) -> str | None:
    """kubernetes-validate --strict of one object; returns why it was skipped.

    Objects of CRD_API_GROUPS are skipped (their CRDs are not bundled); any
    other unknown kind is an error, as is any schema violation.
    """
    kv = kubernetes_validate()
    if api_group(doc) in CRD_API_GROUPS:
        return f"{doc['apiVersion']} {doc['kind']} comes from a CRD unknown to kubernetes-validate"
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata'].get('name')} is invalid for Kubernetes "
            f"{version} (strict): {path}: {e.message}") from None
    except kv.SchemaNotFoundError as e:
        raise AssertionError(e.message) from None
    return None


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose names must be DNS labels (<= 63), not just subdomains.
_LABEL_NAMED = {"Service", "Namespace"}


def _qualified_name_problems(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        problems.append(f"key prefix {prefix!r} is not a DNS subdomain")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        problems.append(f"key name {name!r} is not a qualified name")
    return problems


def metadata_problems(doc: dict) -> list[str]:
    """What the API server's ObjectMeta validation would reject (schemas don't check it)."""
    meta = doc.get("metadata", {})
    problems = []
    # A pod created by a controller has only generateName; the API server adds a suffix.
    name = meta.get("name") or (meta.get("generateName", "") + "x")
    if doc["kind"] in _LABEL_NAMED:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            problems.append(f"name {name!r} is not a DNS label")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"name {name!r} is not a DNS subdomain")
    ns = meta.get("namespace")
    if ns is not None and (len(ns) > 63 or not _DNS_LABEL.match(ns)):
        problems.append(f"namespace {ns!r} is not a DNS label")
    for key, value in (meta.get("labels") or {}).items():
        problems += [f"label {p}" for p in _qualified_name_problems(key)]
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"label {key}={value!r}: invalid value")
    for key, value in (meta.get("annotations") or {}).items():
        problems += [f"annotation {p}" for p in _qualified_name_problems(key)]
        if not isinstance(value, str):
            problems.append(f"annotation {key} is not a string")
    if has_pod_spec(doc) and doc["kind"] not in ("Pod", "CronJob"):
        template_meta = {"name": "template", **doc["spec"]["template"].get("metadata", {})}
        problems += [f"pod template {p}"
                     for p in metadata_problems({"kind": "Pod", "metadata": template_meta})]
    return [f"{doc['kind']}/{name}: {p}" for p in problems]


def env_problems(doc: dict) -> list[str]:
    """Env values must be strings; names must be unique per container."""
    problems = []
    for c in all_containers(pod_spec(doc)):
        seen = set()
        for item in c.get("env", []):
            if item["name"] in seen:
                problems.append(f"{c['name']}: duplicate env {item['name']}")
            seen.add(item["name"])
            if "value" in item and not isinstance(item["value"], str):
                problems.append(f"{c['name']}: env {item['name']} is not a string")
    return problems


# --- Pod Security Standards --------------------------------------------------
_RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def restricted_violations(spec: dict) -> list[str]:
    """Violations of the Pod Security Standard "restricted" (which includes
    "baseline") by a pod spec, as the PodSecurity admission plugin checks it."""
    v = []
    psc = spec.get("securityContext", {}) or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            v.append(f"pod {field} is true")
    for vol in spec.get("volumes", []):
        types = set(vol) - {"name"}
        if not types <= _RESTRICTED_VOLUME_TYPES:
            v.append(f"volume {vol['name']} has type {sorted(types)}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        v.append("pod seccompProfile is Unconfined")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser is 0")
    if (psc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t",
                                                            "container_init_t",
                                                            "container_kvm_t"):
        v.append("pod seLinuxOptions.type not allowed")
    for sysctl in psc.get("sysctls", []) or []:
        v.append(f"pod sysctl {sysctl.get('name')} set")
    for c in all_containers(spec) + list(spec.get("ephemeralContainers", [])):
        name = c["name"]
        sc = c.get("securityContext", {}) or {}
        if sc.get("privileged"):
            v.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{name}: allowPrivilegeEscalation is not false")
        run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            v.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsNonRoot") is False:
            v.append(f"{name}: runAsNonRoot is false")
        if sc.get("runAsUser") == 0:
            v.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault/Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            v.append(f"{name}: adds capabilities {caps.get('add')}")
        if sc.get("procMount") not in (None, "Default"):
            v.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            v.append(f"{name}: appArmorProfile Unconfined")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                v.append(f"{name}: hostPort {port['hostPort']}")
    return v


def hardening_problems(spec: dict) -> list[str]:
    """What this project asks beyond "restricted": a read-only root filesystem
    everywhere, and memory limits plus cpu/memory requests on every container."""
    problems = []
    for c in all_containers(spec):
        sc = c.get("securityContext", {}) or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem is not true")
        res = c.get("resources", {}) or {}
        for key in ("cpu", "memory"):
            if key not in (res.get("requests") or {}):
                problems.append(f"{c['name']}: no {key} request")
        if "memory" not in (res.get("limits") or {}):
            problems.append(f"{c['name']}: no memory limit")
    return problems


# --- the token contract ------------------------------------------------------
def is_token_container(c: dict) -> bool:
    image = c.get("image", "")
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0] == IMAGE_NAME


def _uid(c: dict, spec: dict) -> int | None:
    return (c.get("securityContext") or {}).get(
        "runAsUser", (spec.get("securityContext") or {}).get("runAsUser"))


def token_contract_problems(spec: dict, secret_name: str = CREDENTIALS_SECRET,
                            token_path: str = TOKEN_PATH) -> list[str]:
    """Check a pod spec that gets its token from polars-cloud-auth against the
    contract of the binary (volumes, mounts, env, args, resources)."""
    p = []
    token_dir = token_path.rsplit("/", 1)[0]
    vols = volumes(spec)
    token_vol = vols.get(TOKEN_VOLUME)
    if not token_vol or (token_vol.get("emptyDir") or {}).get("medium") != "Memory":
        p.append(f"no in-memory emptyDir volume {TOKEN_VOLUME}")
    cred_vols = [n for n, v in vols.items()
                 if (v.get("secret") or {}).get("secretName") == secret_name]
    if len(cred_vols) != 1:
        p.append(f"expected one volume of Secret {secret_name}, found {cred_vols}")
    cred_vol = cred_vols[0] if cred_vols else None
    ours = [c for c in all_containers(spec) if is_token_container(c)]
    apps = [c for c in all_containers(spec) if not is_token_container(c)]
    if not ours:
        return p + ["no polars-cloud-auth container"]
    for c in ours:
        n = c["name"]
        if "command" in c:
            p.append(f"{n}: sets command; the image ENTRYPOINT is {ENTRYPOINT}: set only args")
        args = c.get("args") or []
        if not args or args[0] not in ("init", "sidecar"):
            p.append(f"{n}: args {args} are not init or sidecar")
        env = env_map(c)
        if set(env) - TOKEN_CONTAINER_ENV:
            p.append(f"{n}: env not in the contract: {sorted(set(env) - TOKEN_CONTAINER_ENV)}")
        if env.get("POLARS_CLOUD_CREDENTIALS_DIR") != CREDENTIALS_DIR:
            p.append(f"{n}: POLARS_CLOUD_CREDENTIALS_DIR is not {CREDENTIALS_DIR}")
        if env.get("POLARS_CLOUD_ACCESS_TOKEN_PATH") != token_path:
            p.append(f"{n}: POLARS_CLOUD_ACCESS_TOKEN_PATH is not {token_path}")
        if env.get("POLARS_CLOUD_GRANT") not in (None, "service-account", "client-credentials"):
            p.append(f"{n}: POLARS_CLOUD_GRANT {env['POLARS_CLOUD_GRANT']!r} is unknown")
        m = mounts(c)
        if not cred_vol or m.get(cred_vol, {}).get("mountPath") != CREDENTIALS_DIR \
                or m.get(cred_vol, {}).get("readOnly") is not True:
            p.append(f"{n}: credentials not mounted read-only at {CREDENTIALS_DIR}")
        tm = m.get(TOKEN_VOLUME, {})
        if tm.get("mountPath") != token_dir or tm.get("readOnly"):
            p.append(f"{n}: {TOKEN_VOLUME} not mounted writable at {token_dir}")
        res = c.get("resources") or {}
        want = {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}}
        if res != want:
            p.append(f"{n}: resources {res} are not {want}")
        others = {_uid(a, spec) for a in apps} - {_uid(c, spec)}
        # With a pod fsGroup the emptyDir belongs to that group, which every container has,
        # so 0640 is enough; without one, other users need 0644.
        fs_group = (spec.get("securityContext") or {}).get("fsGroup") is not None
        wanted = ("0640", "0644") if fs_group else ("0644",)
        if others and env.get("POLARS_CLOUD_TOKEN_FILE_MODE") not in wanted:
            p.append(f"{n}: app containers run as other users {others} but "
                     f"POLARS_CLOUD_TOKEN_FILE_MODE is not {' or '.join(wanted)}")
    for c in apps:
        n = c["name"]
        if cred_vol and cred_vol in mounts(c):
            p.append(f"{n}: app container mounts the credentials")
        tm = mounts(c).get(TOKEN_VOLUME, {})
        if tm.get("mountPath") != token_dir or tm.get("readOnly") is not True:
            p.append(f"{n}: {TOKEN_VOLUME} not mounted read-only at {token_dir}")
        if env_map(c).get("POLARS_CLOUD_ACCESS_TOKEN_PATH") != token_path:
            p.append(f"{n}: POLARS_CLOUD_ACCESS_TOKEN_PATH is not {token_path}")
    return p


# --- TLS ---------------------------------------------------------------------
def b64decode(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def pem_certificates(pem: bytes) -> list[bytes]:
    """DER bytes of each certificate in a PEM bundle (fails on anything else)."""
    text = pem.decode("ascii")
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\s+(.*?)\s+-----END CERTIFICATE-----",
                        text, re.S)
    return [ssl.PEM_cert_to_DER_cert(
        f"-----BEGIN CERTIFICATE-----\n{b}\n-----END CERTIFICATE-----\n") for b in blocks]


def decode_certificate(pem: bytes) -> dict:
    """subject, issuer, subjectAltName etc. of a PEM certificate (stdlib ssl)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        return ssl._ssl._test_decode_cert(f.name)  # noqa: SLF001 - stdlib, no other decoder


def tls_handshake(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, server_name: str) -> None:
    """A TLS handshake, in memory, between a server using cert/key and a client
    that trusts only ca_pem and checks server_name, like the API server calling
    the webhook. Raises ssl.SSLError (e.g. SSLCertVerificationError) if the CA
    does not sign the certificate or the name does not match."""
    with tempfile.TemporaryDirectory() as d:
        cert_file, key_file = Path(d, "tls.crt"), Path(d, "tls.key")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("TLS handshake did not finish")
