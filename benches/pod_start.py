#!/usr/bin/env python3
"""Pod start overhead and per-pod memory of our container, on the real node.

    bash scripts/setup.sh
    sudo scripts/node.sh start && eval "$(scripts/node.sh env)"
    .venv/bin/python benches/pod_start.py [--rounds 10] [--memory-pods 20] [--settle 15]
    sudo scripts/node.sh stop

The same pod (an app container running the pause image, nothing else) is created through
the API server plain, injected secret-backed (native and classic mode) and injected
broker-backed (native), alternately, --rounds of each, on a kubelet that has run for at
least --settle seconds (a fresh kubelet delays new probes by a random part of their period
for its first 10 s). Our webhook admits the injected ones (tests/py/node_peer.World; the release build, as the webhook and the
broker); the IdP issues 300 s tokens. Every variant mounts the pod's service-account token,
as most pods do.

* apply -> app started: from just before the pod's POST to the API server, to the
  containerd event `/tasks/start` of the app container (containerd's clock, this machine);
* apply -> Ready: to the first watch event that shows the pod Ready (the kubelet's status
  update, as any controller would see it).

Then --memory-pods injected pods (native, secret-backed) run at once, and our container's
memory is read as the kubelet reads it (cgroup v1: usage minus inactive file, the
"working set"), with its RSS and private memory (smaps_rollup).

Prints JSON lines (`start` per variant with medians and ratios to plain, `idp_rtt`,
`memory`) and a table. scripts/test.sh --slow runs the quick form (--rounds 3
--memory-pods 5); the figures in docs/benchmarks.md are from the full form.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "py"))

import node_peer  # noqa: E402

NS = "pca-bench"
VARIANTS = [
    ("plain", None),
    ("native-secret", {"polars.cloud/mode": "native"}),
    ("native-broker", {"polars.cloud/mode": "native", "polars.cloud/broker": "true"}),
    ("classic-secret", {"polars.cloud/mode": "classic"}),
]


class Events:
    """`ctr events`: when each container's task started (containerd's own timestamps)."""

    def __init__(self, node: node_peer.Node) -> None:
        self.node = node
        self.starts: dict[str, float] = {}
        self.proc = subprocess.Popen([*node.ctr_argv, "events"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        from datetime import datetime

        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if " /tasks/start " not in line:
                continue
            stamp = " ".join(line.split()[:2])  # 2026-12-07 04:30:01.123456789
            day, clock = stamp.split(" ")
            whole, _, frac = clock.partition(".")
            t = datetime.fromisoformat(f"{day}T{whole}+00:00").timestamp() + float("0." + (frac or "0"))
            body = json.loads(line[line.index("{"):])
            self.starts[body["container_id"]] = t

    def stop(self) -> None:
        self.proc.terminate()


class Api:
    """Direct calls to the API server (no kubectl process in the timed path)."""

    def __init__(self, kubeconfig: Path) -> None:
        import yaml

        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.base = cluster["server"]
        ca = tempfile.NamedTemporaryFile(delete=False, suffix=".crt")
        import base64

        ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        ca.close()
        self.context = ssl.create_default_context(cafile=ca.name)
        self.token = cfg["users"][0]["user"]["token"]

    def request(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        return urllib.request.urlopen(req, context=self.context, timeout=30)


def pod(name: str, annotations: dict | None, image: str) -> dict:
    labels = {"bench": "pod-start"}
    if annotations is not None:
        labels["polars.cloud/inject"] = "true"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels,
                         "annotations": annotations or {}},
            # The service-account token is mounted, as in most pods: a pod with no volume
            # at all skips the kubelet's wait for mounted volumes (it checks every 300 ms),
            # which every injected pod pays for its token volume.
            "spec": {"terminationGracePeriodSeconds": 1,
                     "securityContext": {"runAsUser": 1000, "runAsGroup": 1000,
                                         "runAsNonRoot": True, "fsGroup": 2000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


def ready_watch(api: Api, name: str, out: dict) -> None:
    with api.request("GET", f"/api/v1/namespaces/{NS}/pods?watch=1&fieldSelector="
                            f"metadata.name={name}&timeoutSeconds=60") as r:
        for line in r:
            ev = json.loads(line)
            obj = ev.get("object", {})
            st = obj.get("status", {})
            if "ids" not in out:
                ids = {c["name"]: c["containerID"].split("://")[1]
                       for c in st.get("containerStatuses", []) if c.get("containerID")}
                if "app" in ids:
                    out["ids"] = ids
            if any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])):
                out["ready"] = time.time()
                out.setdefault("ids", {c["name"]: c["containerID"].split("://")[1]
                                       for c in st.get("containerStatuses", [])
                                       if c.get("containerID")})
                return


def one_start(world: node_peer.World, api: Api, events: Events, name: str,
              annotations: dict | None) -> dict:
    out: dict = {}
    watcher = threading.Thread(target=ready_watch, args=(api, name, out), daemon=True)
    watcher.start()
    time.sleep(0.3)  # the watch is open before the pod exists
    t0 = time.time()
    api.request("POST", f"/api/v1/namespaces/{NS}/pods", pod(name, annotations, world.pause)).read()
    watcher.join(60)
    assert "ready" in out, f"{name} not Ready in 60 s"
    app_id = out["ids"]["app"]
    deadline = time.time() + 5
    while app_id not in events.starts and time.time() < deadline:
        time.sleep(0.05)
    started = events.starts[app_id]
    api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}",
                {"gracePeriodSeconds": 0}).read()
    return {"started": started - t0, "ready": out["ready"] - t0}


def idp_rtt(world: node_peer.World, n: int = 7) -> float:
    """One token request to the IdP from the host (the sidecar's sign-in, minus TLS
    session reuse): the median of n, seconds."""
    import urllib.parse

    context = ssl.create_default_context(cafile=str(world.tls["ca"]))
    url = world.idp.issuer + "/protocol/openid-connect/token"
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": "PolarsCloud",
                                   "username": world.SA_ID + "@sa.cloud.pola.rs",
                                   "password": world.SECRET}).encode()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, data=form), context=context) as r:
            r.read()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def memory(world: node_peer.World, api: Api, count: int) -> dict:
    names = [f"mem-{i}" for i in range(count)]
    for n in names:
        api.request("POST", f"/api/v1/namespaces/{NS}/pods",
                    pod(n, {"polars.cloud/mode": "native"}, world.pause)).read()
    node = world.node
    node.wait(f"{count} pods Ready", lambda: sum(
        1 for p in node.kube.get("pods", "-n", NS)["items"]
        if p["metadata"]["name"] in names and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", []))) == count, timeout=300, every=1)
    time.sleep(10)
    figures = []
    for p in node.kube.get("pods", "-n", NS)["items"]:
        if p["metadata"]["name"] in names:
            figures.append(node.memory(p, "polars-cloud-auth"))
    for n in names:
        api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{n}", {"gracePeriodSeconds": 0}).read()

    def stat(key: str) -> dict:
        values = sorted(f[key] for f in figures)
        return {"median": round(statistics.median(values), 2), "max": round(values[-1], 2)}

    return {"pods": count, **{k: stat(k) for k in
                              ("working_set_mib", "cgroup_rss_mib", "rss_mib", "private_mib")},
            "limit_mib": figures[0]["limit_mib"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--memory-pods", type=int, default=20)
    ap.add_argument("--settle", type=float, default=15)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pca-bench-"))
    # The webhook and broker run the release build, as in a cluster.
    import os

    os.environ["PCA_BIN"] = str(node_peer.static_binary())
    world = node_peer.World(tmp, NS, "pcbench", ttl=300)
    node = world.node
    up = node.kube.get("node", node.name)["metadata"]["creationTimestamp"]
    from datetime import datetime

    age = time.time() - datetime.fromisoformat(up.replace("Z", "+00:00")).timestamp()
    if age < args.settle:
        time.sleep(args.settle - age)
    api = Api(node.kube.kubeconfig)
    events = Events(node)
    try:
        rtt = idp_rtt(world)
        print(json.dumps({"bench": "idp_rtt", "seconds": round(rtt, 4)}), flush=True)
        # One warm-up of each (first use of an image's snapshot, first TLS sessions).
        for v, ann in VARIANTS:
            one_start(world, api, events, f"warm-{v}", ann)
        runs: dict[str, list[dict]] = {v: [] for v, _ in VARIANTS}
        for i in range(args.rounds):
            order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
            for v, ann in order:
                runs[v].append(one_start(world, api, events, f"{v}-{i}", ann))
        base = {k: statistics.median(r[k] for r in runs["plain"]) for k in ("started", "ready")}
        rows = []
        for v, _ in VARIANTS:
            med = {k: statistics.median(r[k] for r in runs[v]) for k in ("started", "ready")}
            row = {"bench": "start", "variant": v, "rounds": args.rounds,
                   "started_median_s": round(med["started"], 3),
                   "ready_median_s": round(med["ready"], 3),
                   "started_vs_plain_s": round(med["started"] - base["started"], 3),
                   "started_ratio": round(med["started"] / base["started"], 2),
                   "ready_ratio": round(med["ready"] / base["ready"], 2),
                   "started_all_s": [round(r["started"], 3) for r in runs[v]]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.memory_pods:
            mem = memory(world, api, args.memory_pods)
            print(json.dumps({"bench": "memory", **mem}), flush=True)
        print()
        print(f"{'variant':16} {'apply->started':>15} {'vs plain':>9} {'apply->Ready':>13} {'ratio':>6}")
        for r in rows:
            print(f"{r['variant']:16} {r['started_median_s']:>14.3f}s {r['started_vs_plain_s']:>+8.3f}s "
                  f"{r['ready_median_s']:>12.3f}s {r['ready_ratio']:>6.2f}")
        print(f"IdP round trip (host, median): {rtt * 1000:.1f} ms")
    finally:
        events.stop()
        world.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
