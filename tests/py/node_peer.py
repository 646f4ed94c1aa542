"""The real node (scripts/node.sh) as a test peer: a kubelet, containerd 2 and runc running
the pods the API server stores, our image and app images imported as OCI archives
(tests/py/oci.py), and the peers the pods talk to on the node's bridge address.

What runs where:

* in pods on the node: our image (the static binary, as the Dockerfile builds it) as the
  injected sidecar or init container, and app images holding Python and a real
  `polars-cloud` client;
* on the host, reached by the pods at the node's bridge address (10.213.0.1) over https
  with a test CA: the test IdP (tests/idp) and the token broker (our binary). The broker
  is not run as the chart's pod: there is no kube-proxy here, so a pod cannot reach the
  API server's service address, and the broker needs the API server for TokenReview;
* on the host loopback: the API server, and our webhook (the chart's
  MutatingWebhookConfiguration, patched to reach it by URL, as tests/py/test_cluster.py
  does).

Pod logs are read from the kubelet's log files (the API server cannot reach the kubelet,
which listens on loopback only). Skipped unless the node's environment is set
(`eval "$(scripts/node.sh env)"`); under POLARS_CLOUD_AUTH_SLOW=1 a missing node fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import cluster
import k8s
import oci

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
HOW = 'sudo scripts/node.sh start && eval "$(scripts/node.sh env)", or scripts/test.sh --slow'
IMAGE_REPO = "localhost/polars-cloud-auth-test"
# Where the client scripts live in app images.
CLIENT_DIR = "/opt/pca-test"
# Runs tests/py/client/long_client.py, then (with PCA_HOLD=1) waits for SIGTERM, so that a
# Deployment's pod stays up after the run; SIGTERM ends it at once (PID 1 ignores signals
# it has no handler for).
# With PCA_PROCESSES=N, N client processes share the container (and its config directory).
RUNNER = f"""
import os, runpy, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.path[:0] = ["{CLIENT_DIR}/client"]
n = int(os.environ.get("PCA_PROCESSES", "1"))
code = 0
if n > 1:
    env = dict(os.environ, PCA_PROCESSES="1", PCA_HOLD="0")
    procs = [subprocess.Popen([sys.executable, "{CLIENT_DIR}/client/long_client.py", *sys.argv[1:]], env=env)
             for _ in range(n)]
    code = max(p.wait() for p in procs)
else:
    sys.argv = ["long_client.py"] + sys.argv[1:]
    try:
        runpy.run_path("{CLIENT_DIR}/client/long_client.py", run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    except BaseException:  # the client may panic at import (pyo3): the run still ends
        import traceback
        traceback.print_exc()
        code = 1
print("PCA-CLIENT-DONE", code, flush=True)
if os.environ.get("PCA_HOLD") == "1":
    while True:
        signal.pause()
sys.exit(code)
"""


def require(what: str) -> None:
    if SLOW:
        pytest.fail(f"POLARS_CLOUD_AUTH_SLOW=1 but {what}; {HOW}", pytrace=False)
    pytest.skip(f"{what} (a slow suite: {HOW})")


class Node:
    def __init__(self) -> None:
        missing = [v for v in ("POLARS_CLOUD_AUTH_NODE_NAME", "POLARS_CLOUD_AUTH_NODE_IP",
                               "POLARS_CLOUD_AUTH_NODE_DIR", "POLARS_CLOUD_AUTH_CTR")
                   if not os.environ.get(v)]
        if missing:
            require(f"no real node in the environment ({', '.join(missing)} unset)")
        self.kube = cluster.connect()
        self.name = os.environ["POLARS_CLOUD_AUTH_NODE_NAME"]
        self.ip = os.environ["POLARS_CLOUD_AUTH_NODE_IP"]
        self.dir = Path(os.environ["POLARS_CLOUD_AUTH_NODE_DIR"])
        self.ctr_argv = shlex.split(os.environ["POLARS_CLOUD_AUTH_CTR"])
        node = self.kube.get("node", self.name)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        if not ready or ready[0]["status"] != "True":
            require(f"node {self.name} is not Ready")

    # --- containerd ------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.ctr_argv, *args], capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {out.stderr}")
        return out

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def has_image(self, ref: str) -> bool:
        return ref in self.ctr("images", "ls", "-q").stdout.split()

    # --- pods ------------------------------------------------------------------------
    def pods(self, ns: str, selector: str) -> list[dict]:
        return self.kube.get("pods", "-n", ns, "-l", selector)["items"]

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120,
             every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(every)

    def log_dir(self, pod: dict, container: str) -> Path:
        m = pod["metadata"]
        return Path("/var/log/pods") / f"{m['namespace']}_{m['name']}_{m['uid']}" / container

    def logs(self, pod: dict, container: str, restart: int | None = None) -> str:
        """What the container wrote (the CRI log files, stream prefixes stripped)."""
        d = self.log_dir(pod, container)
        files = sorted(d.glob("*.log"), key=lambda p: int(p.stem.split(".")[0])) if d.exists() else []
        if restart is not None:
            files = [f for f in files if f.stem == str(restart)]
        lines = []
        for f in files:
            for line in f.read_text(errors="replace").splitlines():
                parts = line.split(" ", 3)
                lines.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(lines)

    def status(self, pod: dict, container: str) -> dict | None:
        st = pod.get("status", {})
        for c in st.get("initContainerStatuses", []) + st.get("containerStatuses", []):
            if c["name"] == container:
                return c
        return None

    def container_id(self, pod: dict, container: str) -> str:
        st = self.status(pod, container)
        assert st and st.get("containerID"), f"{container} has no container yet: {st}"
        return st["containerID"].split("://", 1)[1]

    def task_pid(self, container_id: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise AssertionError(f"no running task {container_id}")

    def memory(self, pod: dict, container: str) -> dict[str, float]:
        """The container's memory as the kubelet reads it (cgroup v1): working set (usage
        minus inactive file), RSS, and the process's private memory (smaps_rollup)."""
        cid = self.container_id(pod, container)
        pid = self.task_pid(cid)
        cg = None
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                cg = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        assert cg is not None and cg.exists(), f"no memory cgroup for {container}"
        usage = int((cg / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (cg / "memory.stat").read_text().splitlines())
        inactive = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        kb = {k.strip(): int(v.split()[0]) for k, v in
              (line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)}
        mib = 1024 * 1024
        return {
            "working_set_mib": (usage - inactive) / mib,
            "usage_mib": usage / mib,
            "cgroup_rss_mib": int(stat.get("total_rss", stat.get("rss", 0))) / mib,
            "rss_mib": kb.get("Rss", 0) / 1024,
            "private_mib": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024,
            "limit_mib": int((cg / "memory.limit_in_bytes").read_text()) / mib,
        }


def connect() -> Node:
    return Node()


# --- images --------------------------------------------------------------------------
def static_binary() -> Path:
    """Our binary as the image needs it (`scripts/node.sh binary`: release, statically
    linked; glibc, since no musl target can be installed here)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "node.sh"), "binary"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"scripts/node.sh binary failed:\n{out.stderr}")
    path = Path(out.stdout.strip().splitlines()[-1])
    kind = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout
    if kind and "statically linked" not in kind and "static-pie" not in kind:
        raise AssertionError(f"{path} is not a static binary: {kind}")
    return path


def digest12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def our_image(node: Node, workdir: Path) -> str:
    """Our image from the Dockerfile's final stage, imported; its reference."""
    binary = static_binary()
    ref = f"{IMAGE_REPO}/polars-cloud-auth:{digest12(binary)}"
    if not node.has_image(ref):
        archive = workdir / "polars-cloud-auth.oci.tar"
        oci.write_archive(oci.our_image(binary), ref, archive)
        node.import_image(archive)
    return ref


def client_files() -> list[oci.Entry]:
    """The client scripts (tests/py/client) and the runner. The venvs of tests/py/clients.py
    hold what the scripts import besides the client (cryptography, for the JWKS check)."""
    entries = [oci.Entry(path=f"{CLIENT_DIR}/run_client.py", data=RUNNER.encode())]
    for f in sorted((HERE / "client").glob("*.py")):
        entries.append(oci.Entry(path=f"{CLIENT_DIR}/client/{f.name}", source=f))
    return entries


def app_image(node: Node, venv: Path, version: str, workdir: Path) -> str:
    """An app image with Python, the venv holding polars-cloud `version`, and the client
    scripts; imported; its reference. The venv keeps its path (its python links to the
    interpreter's absolute path, which the image holds too)."""
    python_home = (venv / "bin" / "python").resolve().parent.parent
    files = client_files()
    key = hashlib.sha256()
    for e in files:
        key.update(e.path.encode() + (e.data or (e.source.read_bytes() if e.source and e.kind == "file" else b"")))
    key.update(str(venv).encode() + version.encode())
    ref = f"{IMAGE_REPO}/app:{version}-{key.hexdigest()[:8]}"
    if not node.has_image(ref):
        archive = workdir / f"app-{version}.oci.tar"
        image = oci.app_image(python_home, venv, files)
        image.entrypoint = [str(venv / "bin" / "python"), f"{CLIENT_DIR}/run_client.py"]
        oci.write_archive(image, ref, archive)
        node.import_image(archive)
        archive.unlink()
    return ref


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, ns: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "data": {k: b64(v) for k, v in data.items()}}


def configmap(name: str, ns: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": data}


def results(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def token_container(pod: dict) -> dict:
    spec = pod["spec"]
    for c in spec.get("initContainers", []) + spec["containers"]:
        if k8s.is_token_container(c):
            return c
    raise AssertionError("no polars-cloud-auth container")


# --- the clients ---------------------------------------------------------------------
def client_venv(version: str) -> Path:
    """The venv of tests/py/clients.py for that release (cached, made on first use)."""
    import clients

    return clients.venv(version)


# --- peers on the host ---------------------------------------------------------------
class HostBroker:
    """The real `polars-cloud-auth broker` on the node's bridge address, with the API
    server's TokenReview (admin kubeconfig) and one credential for namespace `ns`."""

    def __init__(self, tmp: Path, node: Node, idp: Any, tls: dict[str, Path],
                 accounts: dict[str, str], ns: str) -> None:
        (account, secret_), = accounts.items()
        creds = tmp / "broker-credentials"
        creds.mkdir()
        (creds / "client_id").write_text(account)
        (creds / "client_secret").write_text(secret_)
        policy = tmp / "broker-policy.yaml"
        policy.write_text(json.dumps({"credentials": {"default": {"dir": str(creds)}},
                                      "grants": [{"namespace": ns, "credential": "default"}]}))
        self.port = cluster.free_port()
        self.url = f"https://{node.ip}:{self.port}/token"
        self.log = tmp / "broker.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "KUBECONFIG": str(node.kube.kubeconfig),
               "NO_PROXY": f"127.0.0.1,localhost,{node.ip}",
               "POLARS_CLOUD_BROKER_LISTEN": f"{node.ip}:{self.port}",
               "POLARS_CLOUD_BROKER_TLS_CERT": str(tls["cert"]),
               "POLARS_CLOUD_BROKER_TLS_KEY": str(tls["key"]),
               "POLARS_CLOUD_BROKER_POLICY": str(policy),
               "POLARS_CLOUD_BROKER_SHUTDOWN_DELAY": "0s",
               "POLARS_CLOUD_CA_FILE": str(tls["ca"]),
               "POLARS_CLOUD_ISSUER": idp.issuer}
        self.proc = subprocess.Popen([str(cluster.binary()), "broker"], env=env,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        node.wait("the broker ready", lambda: self.proc.poll() is not None or
                  _https_ok(f"https://{node.ip}:{self.port}/readyz", tls["ca"]), timeout=20)
        assert self.proc.poll() is None, f"broker exited: {self.log.read_text()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def _https_ok(url: str, ca: Path) -> bool:
    try:
        return cluster.https_get(url, ca, 1)[0] == 200
    except OSError:
        return False


def register_webhook(kube: cluster.Kube, release: str, ns: str, url: str, ca: Path) -> None:
    """The chart's MutatingWebhookConfiguration, limited to namespace `ns` and pointed at
    our webhook by URL."""
    docs = k8s.render({"webhook": {"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": ns}}}}, release=release, namespace=ns)
    (config,) = k8s.find(docs, "MutatingWebhookConfiguration")
    config = json.loads(json.dumps(config))
    config["webhooks"][0]["clientConfig"] = {"url": url, "caBundle": cluster.b64(ca)}
    kube.apply(config)


# --- what containerd holds -----------------------------------------------------------
def _blob(node: Node, digest: str) -> bytes:
    out = subprocess.run([*node.ctr_argv, "content", "get", digest], capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _manifest(node: Node, ref: str) -> dict:
    for line in node.ctr("images", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            doc = json.loads(_blob(node, fields[2]))
            if "manifests" in doc:
                doc = json.loads(_blob(node, doc["manifests"][0]["digest"]))
            return doc
    raise AssertionError(f"containerd has no image {ref}")


def image_config(node: Node, ref: str) -> dict:
    return json.loads(_blob(node, _manifest(node, ref)["config"]["digest"]))


def image_files(node: Node, ref: str) -> list[str]:
    import io
    import tarfile

    names = []
    for layer in _manifest(node, ref)["layers"]:
        with tarfile.open(fileobj=io.BytesIO(_blob(node, layer["digest"]))) as tar:
            names += [m.name + ("/" if m.isdir() else "") for m in tar.getmembers()]
    return names


# --- a world for injected pods ------------------------------------------------------
class World:
    """The peers injected pods need, in namespace `ns`: our image and an app image
    imported, the test IdP (https, on the node's bridge address), the credentials Secret,
    the JWKS ConfigMap the app's verifier reads, the broker, and our webhook behind the
    chart's MutatingWebhookConfiguration (pods are broker-backed only when they ask)."""

    SA_ID, SECRET = "node-sa", "Node+Secret/7=&q"
    BROKER_SA_ID, BROKER_SECRET = "broker-sa", "Broker+Secret/8=&r"

    def __init__(self, tmp: Path, ns: str, release: str, ttl: int,
                 session_max: int | None = None, client: str = "0.12.0") -> None:
        import idp_peer

        self.node = node = connect()
        self.kube = kube = node.kube
        self.ns, self.release, self.tmp = ns, release, tmp
        self.ours = our_image(node, tmp)
        self.app = self.app_image(client)
        self.pause = f"{IMAGE_REPO}/pause:1"
        self.tls = cluster.make_tls(tmp / "tls", ip=node.ip)
        self.idp = idp_peer.Idp({self.SA_ID: self.SECRET, self.BROKER_SA_ID: self.BROKER_SECRET},
                                ttl, session_max, host=node.ip, tls=self.tls)
        # A namespace left by an earlier run is deleted first (its pods with it).
        if kube.run("get", "namespace", ns, check=False).returncode == 0:
            kube.run("delete", "namespace", ns, "--wait=false")
            node.wait("the old namespace gone", lambda: kube.run(
                "get", "namespace", ns, check=False).returncode != 0, timeout=120, every=1)
        kube.namespace(ns)
        kube.apply(secret("polars-cloud-credentials", ns,
                          {"client_id": self.SA_ID, "client_secret": self.SECRET}))
        kube.apply(configmap("pca-test-jwks", ns, {"jwks.json": self.idp.jwks()}))
        self.broker = HostBroker(tmp, node, self.idp, self.tls,
                                 {self.BROKER_SA_ID: self.BROKER_SECRET}, ns)
        webhook_tls = cluster.make_tls(tmp / "webhook-tls")
        # The injector's settings: the webhook's, and the offline `inject`'s (`inject`).
        self.inject_env = {
            "POLARS_CLOUD_INJECT_IMAGE": self.ours,
            "POLARS_CLOUD_INJECT_ISSUER": self.idp.issuer,
            "POLARS_CLOUD_INJECT_ISSUER_CA_FILE": str(self.tls["ca"]),
            "POLARS_CLOUD_INJECT_BROKER_URL": self.broker.url,
            "POLARS_CLOUD_INJECT_BROKER_CA_FILE": str(self.tls["ca"]),
            "POLARS_CLOUD_INJECT_BROKER": "false",
        }
        self.webhook = cluster.Webhook(self.inject_env, webhook_tls, tmp / "webhook.log")
        self.config_name = f"{release}-polars-cloud-auth"
        register_webhook(kube, release, ns, f"{self.webhook.base}/mutate", webhook_tls["ca"])

    def inject(self, doc: dict) -> dict:
        """`doc` as the offline `polars-cloud-auth inject --all` prints it, with the
        webhook's settings (JSON is YAML: the manifest goes in as JSON)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.inject_env}
        out = subprocess.run([str(cluster.binary()), "inject", "--all"], input=json.dumps(doc),
                             env=env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"inject failed: {out.stderr}")
        [injected] = k8s.load_all(out.stdout)
        return injected

    def app_image(self, version: str) -> str:
        """The app image for polars-cloud `version` (built and imported once)."""
        return app_image(self.node, client_venv(version), version, self.tmp)

    def stop(self) -> None:
        self.kube.run("delete", "namespace", self.ns, "--wait=false", check=False)
        self.kube.run("delete", "mutatingwebhookconfiguration", self.config_name, check=False)
        self.webhook.stop()
        self.broker.stop()
        self.idp.stop()
