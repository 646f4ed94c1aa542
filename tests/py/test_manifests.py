"""The plain manifests in deploy/manifests: valid for Kubernetes 1.29 and the
newest version kubernetes-validate bundles (strict), Pod Security
"restricted", and faithful to the contract of the polars-cloud-auth binary."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import k8s

FILES = ("pod-init.yaml", "deployment-native-sidecar.yaml", "job.yaml", "secret.example.yaml")
WORKLOADS = ("pod-init.yaml", "deployment-native-sidecar.yaml", "job.yaml")
START_GATE = [k8s.ENTRYPOINT, "probe", "--wait", "120s", "--ready-url",
              f"http://127.0.0.1:{k8s.SIDECAR_PORT}/readyz", "--min-valid", "30s"]


def docs_of(name: str) -> list[dict]:
    return k8s.load_manifest(k8s.MANIFESTS / name)


def workload(name: str) -> dict:
    (doc,) = docs_of(name)
    return doc


def token_container(spec: dict) -> dict:
    ours = [c for c in k8s.all_containers(spec) if k8s.is_token_container(c)]
    assert len(ours) == 1, [c["name"] for c in ours]
    return ours[0]


def test_expected_files_and_nothing_else():
    present = sorted(p.name for p in k8s.MANIFESTS.iterdir() if p.suffix in (".yaml", ".yml"))
    assert present == sorted(FILES)


@pytest.mark.parametrize("version", k8s.kube_versions())
@pytest.mark.parametrize("name", FILES)
def test_valid_strict(name, version):
    docs = docs_of(name)
    assert docs, f"{name} is empty"
    for doc in docs:
        assert k8s.validate(doc, version) is None
        assert k8s.metadata_problems(doc) == []


def test_kubernetes_validate_cli_accepts_all_files():
    """The same check through the kubernetes-validate command line."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        found = shutil.which("kubernetes-validate")
        if not found:
            pytest.skip("the kubernetes-validate command is not installed")
        exe = Path(found)
    args = [str(exe), "--strict"]
    for version in k8s.kube_versions():
        args += ["-k", version]
    result = subprocess.run(args + [str(k8s.MANIFESTS / f) for f in FILES],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout and "WARN" not in result.stdout, result.stdout
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(FILES) * len(k8s.kube_versions()), result.stdout


@pytest.mark.parametrize("name", WORKLOADS)
def test_pod_security_restricted(name):
    spec = k8s.pod_spec(workload(name))
    assert k8s.restricted_violations(spec) == []
    assert k8s.hardening_problems(spec) == []
    assert spec.get("automountServiceAccountToken") is False
    assert k8s.env_problems(workload(name)) == []


@pytest.mark.parametrize("name", WORKLOADS)
def test_token_contract(name):
    spec = k8s.pod_spec(workload(name))
    assert k8s.token_contract_problems(spec) == []
    ours = token_container(spec)
    assert ours["name"] == "polars-cloud-auth"
    assert ours in spec["initContainers"], "the token container is an init container"
    assert ours["image"].split(":")[0] == k8s.IMAGE_NAME
    sc = ours.get("securityContext", {})
    uid = sc.get("runAsUser", spec["securityContext"].get("runAsUser"))
    assert uid == 65532
    token = k8s.volumes(spec)[k8s.TOKEN_VOLUME]
    assert token["emptyDir"]["medium"] == "Memory"
    # The credentials are readable by the token container's group only.
    creds = next(v for v in spec["volumes"] if "secret" in v)
    assert creds["secret"]["secretName"] == k8s.CREDENTIALS_SECRET
    assert creds["secret"].get("defaultMode", 0o644) & 0o007 == 0
    assert spec["securityContext"].get("fsGroup") == 65532


@pytest.mark.parametrize("name", ("pod-init.yaml", "job.yaml"))
def test_init_only(name):
    spec = k8s.pod_spec(workload(name))
    (init,) = spec["initContainers"]
    assert init["args"] == ["init"]
    assert "restartPolicy" not in init, "init-only: not a native sidecar"
    assert "command" not in init
    assert not any(k8s.is_token_container(c) for c in spec["containers"])
    assert spec["restartPolicy"] in ("Never", "OnFailure")


def test_pod_init_app_as_other_user_gets_readable_token():
    spec = k8s.pod_spec(workload("pod-init.yaml"))
    (app,) = spec["containers"]
    assert app["securityContext"]["runAsUser"] != spec["securityContext"]["runAsUser"]
    assert k8s.env_map(spec["initContainers"][0])["POLARS_CLOUD_TOKEN_FILE_MODE"] == "0644"


def test_job_is_a_job_that_completes():
    job = workload("job.yaml")
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec = k8s.pod_spec(job)
    # A long-running sidecar would keep the Job from completing.
    assert all(c.get("restartPolicy") != "Always" for c in spec["initContainers"])


def test_native_sidecar():
    deployment = workload("deployment-native-sidecar.yaml")
    assert deployment["kind"] == "Deployment"
    spec = k8s.pod_spec(deployment)
    sidecar = token_container(spec)
    assert sidecar in spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["sidecar"]
    assert "command" not in sidecar
    assert sidecar["lifecycle"]["postStart"]["exec"]["command"] == START_GATE
    assert "startupProbe" not in sidecar
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = sidecar[probe]["httpGet"]
        assert http["path"] == path
        assert k8s.container_port(sidecar, http["port"]) == k8s.SIDECAR_PORT
        assert http.get("scheme", "HTTP") == "HTTP"
    listen = k8s.env_map(sidecar).get("POLARS_CLOUD_LISTEN", "0.0.0.0:8471")
    assert listen.rsplit(":", 1)[1] == str(k8s.SIDECAR_PORT)
    # Selector matches the pod template.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_secret_example():
    (secret,) = docs_of("secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == k8s.CREDENTIALS_SECRET
    data = secret["stringData"]
    assert sorted(data) == sorted(k8s.CREDENTIALS_KEYS)
    for value in data.values():
        assert value.startswith("<") and value.endswith(">"), "placeholders only"


def test_workloads_refer_to_the_example_secret():
    (secret,) = docs_of("secret.example.yaml")
    for name in WORKLOADS:
        spec = k8s.pod_spec(workload(name))
        names = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert names == {secret["metadata"]["name"]}, name


def test_no_registry_host_names_in_deploy():
    for path in sorted(k8s.DEPLOY.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_text(errors="replace").lower()
            for host in k8s.REGISTRY_HOSTS:
                assert host not in text, f"{path.relative_to(k8s.REPO)} names {host}"
