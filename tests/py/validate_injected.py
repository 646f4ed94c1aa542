"""Checks pods and workloads written by polars-cloud-auth (`inject` output, or pods the
webhook's JSON patch was applied to), in one process for many files:

- every object: kubernetes-validate in strict mode (unknown fields are errors) for
  Kubernetes 1.29 and the newest version kubernetes-validate bundles, and the metadata and
  env rules the API server applies beyond the schema;
- every injected pod template (annotation polars.cloud/injected): the token contract of
  the binary (k8s.token_contract_problems), and Pod Security "restricted" plus this
  project's hardening for the injected containers.

Usage: validate_injected.py FILE_OR_DIR...   Exit 0 when all is well, 1 with a list of
problems otherwise. The Rust integration tests (tests/webhook.rs, tests/inject.rs) run it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import k8s

INJECTED = "polars.cloud/injected"



def template(doc: dict) -> dict:
    """The pod (template) holding metadata and spec."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def contract_problems(doc: dict) -> list[str]:
    tpl = template(doc)
    meta = tpl.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = tpl["spec"]
    skipped = {n.strip() for n in annotations.get("polars.cloud/skip-containers", "").split(",")}
    checked = dict(spec)
    for field in ("initContainers", "containers"):
        checked[field] = [c for c in spec.get(field, []) if c["name"] not in skipped]
    problems = k8s.token_contract_problems(
        checked,
        secret_name=annotations.get("polars.cloud/secret-name", k8s.CREDENTIALS_SECRET),
        token_path=annotations.get("polars.cloud/token-path", k8s.TOKEN_PATH),
    )
    # Resources and image are the annotations' when given (k8s.py expects the defaults).
    if any(a in annotations for a in ("polars.cloud/cpu-request", "polars.cloud/memory-request",
                                      "polars.cloud/memory-limit")):
        problems = [p for p in problems if ": resources " not in p]
    for c in k8s.all_containers(spec):
        if k8s.is_token_container(c) or c["name"] in skipped:
            continue
        if any(m["name"] == "polars-cloud-credentials" for m in c.get("volumeMounts", [])):
            problems.append(f"{c['name']}: app container mounts the credentials")
    for c in k8s.all_containers(spec):
        if c["name"] in skipped and any(
                m["name"] == k8s.TOKEN_VOLUME for m in c.get("volumeMounts", [])):
            problems.append(f"{c['name']}: skipped but mounts the token volume")
    ours = dict(spec)
    ours["initContainers"] = [c for c in spec.get("initContainers", []) if k8s.is_token_container(c)]
    ours["containers"] = [c for c in spec.get("containers", []) if k8s.is_token_container(c)]
    problems += [f"restricted: {v}" for v in k8s.restricted_violations(ours)
                 if not v.startswith(("pod ", "volume "))]
    problems += [f"hardening: {p}" for p in k8s.hardening_problems(ours)]
    return problems


def check(path: Path) -> tuple[int, list[str]]:
    docs = []
    for doc in k8s.load_all(path.read_text()):
        # A v1 List (as `kubectl get -o yaml` prints) is checked item by item.
        docs += doc["items"] if (doc.get("apiVersion"), doc.get("kind")) == ("v1", "List") else [doc]
    problems = []
    for doc in docs:
        name = f"{path.name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name') or (doc.get('metadata') or {}).get('generateName')}"
        for version in k8s.kube_versions():
            try:
                k8s.validate(doc, version)
            except AssertionError as e:
                problems.append(f"{name}: {e}")
        named = doc
        meta = doc.get("metadata") or {}
        if not meta.get("name") and meta.get("generateName"):
            # The API server names the pod from generateName before it validates it.
            named = {**doc, "metadata": {**meta, "name": meta["generateName"] + "x7k2p"}}
        problems += [f"{name}: {p}" for p in k8s.metadata_problems(named)]
        if not k8s.has_pod_spec(doc):
            continue
        problems += [f"{name}: {p}" for p in k8s.env_problems(doc)]
        annotations = (template(doc).get("metadata") or {}).get("annotations") or {}
        if INJECTED in annotations:
            problems += [f"{name}: {p}" for p in contract_problems(doc)]
    return len(docs), problems


def main(argv: list[str]) -> int:
    files = []
    for arg in argv:
        p = Path(arg)
        files += sorted(p.glob("*.json")) + sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    if not files:
        print("no files to validate", file=sys.stderr)
        return 1
    total, problems = 0, []
    for f in files:
        n, found = check(f)
        total += n
        problems += found
    versions = " and ".join(k8s.kube_versions())
    if problems:
        print(f"{len(problems)} problem(s) in {total} object(s):", *problems, sep="\n  ")
        return 1
    print(f"ok: {total} object(s) in {len(files)} file(s) valid for Kubernetes {versions} (strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
