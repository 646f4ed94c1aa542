"""A real kube-apiserver (scripts/cluster.sh) as a test peer: how the tests find it, drive
it with the real kubectl and Helm CLI, and run the real webhook binary behind it.

The tests use only POLARS_CLOUD_AUTH_KUBECONFIG (never a KUBECONFIG of their own), and
refuse a server that is not on loopback, so they can never touch a real cluster.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import k8s

SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
ENV_VARS = ("POLARS_CLOUD_AUTH_KUBECONFIG", "POLARS_CLOUD_AUTH_KUBECTL", "POLARS_CLOUD_AUTH_HELM")
HOW = 'scripts/cluster.sh start && eval "$(scripts/cluster.sh env)", or scripts/test.sh --slow'


def require(what: str) -> None:
    """Skip (quick runs) or fail (under POLARS_CLOUD_AUTH_SLOW=1) when a peer is missing."""
    if SLOW:
        pytest.fail(f"POLARS_CLOUD_AUTH_SLOW=1 but {what}; {HOW}", pytrace=False)
    pytest.skip(f"{what} (a slow suite: {HOW})")


def binary() -> Path:
    """The polars-cloud-auth binary cargo built (PCA_BIN names a copy instead)."""
    path = Path(os.environ.get("PCA_BIN") or k8s.REPO / "target" / "debug" / "polars-cloud-auth")
    if not path.is_file():
        require(f"no polars-cloud-auth binary at {path} (cargo build)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Kube:
    """kubectl and helm against the test cluster, with a private Helm home."""

    def __init__(self, kubeconfig: Path, kubectl: Path, helm: Path, home: Path):
        self.kubeconfig, self.kubectl, self.helm = kubeconfig, kubectl, helm
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_DATA_HOME": str(home / "helm-data"),
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def _run(self, tool: Path, args, input_: str | None, check: bool, timeout: int):
        out = subprocess.run([str(tool), *map(str, args)], input=input_, capture_output=True,
                             text=True, env=self.env, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{tool.name} {' '.join(map(str, args))} failed "
                                 f"({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def run(self, *args, input: str | None = None, check: bool = True, timeout: int = 60):
        return self._run(self.kubectl, args, input, check, timeout)

    def helm_run(self, *args, check: bool = True, timeout: int = 180):
        return self._run(self.helm, args, None, check, timeout)

    def get(self, *args) -> dict:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def create(self, obj: dict, *flags, check: bool = True):
        """`kubectl create -f -` of one object; the stored (or dry-run) object, or the
        CompletedProcess when check is False."""
        out = self.run("create", "-f", "-", "-o", "json", *flags, input=json.dumps(obj),
                       check=check)
        return json.loads(out.stdout) if check else out

    def apply(self, obj: dict, *flags) -> dict:
        return json.loads(self.run("apply", "-f", "-", "-o", "json", *flags,
                                   input=json.dumps(obj)).stdout)

    def namespace(self, name: str, labels: dict | None = None) -> None:
        """A namespace with the `default` ServiceAccount (no controller manager runs to
        create it, and the ServiceAccount admission plugin needs it for every pod)."""
        self.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels or {}}})
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name}})


def connect() -> Kube:
    """The running test cluster, checked to be the local one; skip or fail when absent."""
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        require(f"no test cluster in the environment ({', '.join(missing)} unset)")
    paths = {v: Path(os.environ[v]) for v in ENV_VARS}
    for var, path in paths.items():
        if not path.is_file():
            require(f"{var}={path} does not exist")
    config = yaml.safe_load(paths["POLARS_CLOUD_AUTH_KUBECONFIG"].read_text())
    for cluster in config["clusters"]:
        host = urlparse(cluster["cluster"]["server"]).hostname
        assert host == "127.0.0.1", f"refusing a Kubernetes API server that is not on loopback: {host}"
    home = Path(paths["POLARS_CLOUD_AUTH_KUBECONFIG"]).parent / "test-home"
    home.mkdir(exist_ok=True)
    kube = Kube(paths["POLARS_CLOUD_AUTH_KUBECONFIG"], paths["POLARS_CLOUD_AUTH_KUBECTL"],
                paths["POLARS_CLOUD_AUTH_HELM"], home)
    out = kube.run("get", "--raw", "/readyz", check=False, timeout=20)
    if out.returncode != 0:
        require(f"the test cluster does not answer: {out.stderr.strip()}")
    return kube


# --- TLS for webhooks the tests run ------------------------------------------------
def make_tls(directory: Path, ip: str = "127.0.0.1") -> dict[str, Path]:
    """A CA and a serving certificate for `ip` (the API server calls the webhook by the
    `url` the tests set, so the certificate names that address; the real node's peers
    listen on the node's bridge address)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, crt, ext = (directory / n for n in (
        "ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt", "ext"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj",
        "/CN=polars-cloud-auth webhook test CA")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={ip}")
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", crt)
    return {"ca": ca, "cert": crt, "key": key}


def https_get(url: str, ca: Path, timeout: float = 5) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Webhook:
    """The real `polars-cloud-auth webhook` on a loopback port."""

    def __init__(self, env: dict[str, str], tls: dict[str, Path], log: Path):
        self.port = free_port()
        self.tls = tls
        self.base = f"https://127.0.0.1:{self.port}"
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
                "POLARS_CLOUD_WEBHOOK_LISTEN": f"127.0.0.1:{self.port}",
                "POLARS_CLOUD_WEBHOOK_TLS_CERT": str(tls["cert"]),
                "POLARS_CLOUD_WEBHOOK_TLS_KEY": str(tls["key"]),
                "POLARS_CLOUD_WEBHOOK_SHUTDOWN_DELAY": "0s"}
        self.log = log
        self.proc = subprocess.Popen([str(binary()), "webhook"], env=full,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"webhook exited: {log.read_text()}"
            try:
                if https_get(self.base + "/readyz", tls["ca"], 1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"webhook not ready: {log.read_text()}"
            time.sleep(0.1)

    def reviews(self) -> dict[str, float]:
        """polars_cloud_auth_webhook_reviews_total by result."""
        _, text = https_get(self.base + "/metrics", self.tls["ca"])
        counts = {}
        for line in text.splitlines():
            if line.startswith("polars_cloud_auth_webhook_reviews_total{"):
                labels, value = line.rsplit(" ", 1)
                result = labels.split('result="', 1)[1].split('"', 1)[0]
                counts[result] = float(value)
        return counts

    def total(self) -> float:
        return sum(self.reviews().values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
