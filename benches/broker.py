#!/usr/bin/env python3
"""Figures for the token broker (`polars-cloud-auth broker`) against the real kube-apiserver.

    bash scripts/setup.sh                      # .venv and the test IdP's node modules
    scripts/cluster.sh start && eval "$(scripts/cluster.sh env)"
    .venv/bin/python benches/broker.py [--pods 1000] [--ttl 120] [--lives 4] \
        [--stagger 10] [--known 10000] [--duration 15] [--connections 32] [--rate 1000]
    scripts/cluster.sh stop

Needs oha (a Rust HTTP load generator: `cargo install --locked oha`; not part of the test
command) and openssl. Builds the release binary (`cargo build --release --locked`) and
runs a copy of it. Everything is on loopback: the broker, the test IdP
(tests/idp/server.mjs, token life --ttl) and the cluster's kube-apiserver. The broker
runs as the chart's ServiceAccount with the chart's RBAC, exactly as tests/py/test_broker.py
sets it up (its helpers are imported from there), and logs every grant as JSON lines to a
file (production sends the same lines to stdout).

Prints, as JSON lines:

1. `fleet`: --pods simulated broker-backed sidecars, each with its own pod stored in the
   API server and its own TokenRequest-bound token (audience polars-cloud-auth, 1 h),
   spread over two namespaces granted two credentials. Each asks for a token at start
   (staggered uniformly over --stagger seconds, like a rollout), then again when 80% of
   the received token's life (`expires_in`) has passed, for --lives IdP token lives.
   Figures: the IdP's token requests (from its /__test/requests log) per hour, and
   normalised to a 300 s token life, against the goal of about 15 per credential per
   broker replica per hour; broker requests/s; TokenReviews (the broker's counter and the
   API server's own apiserver_request_total) against pods x lives.
2. `throughput` and `fixed_rate`: oha against POST /token with one pod's token (a cached
   review), keep-alive, TLS verified against the test CA: --connections for --duration
   seconds, then a fixed --rate per second with latency correction (goal p99 <= 5 ms).
3. `rss`: a second broker's VmRSS/VmHWM right after start, and after its review cache was
   primed with 1,000 and then --known distinct pod-bound tokens (--known stored pods).

The default --ttl is 120 s: the broker's keeper renews at least 30 s before a token
expires (a third of the life for shorter tokens) and hands out only tokens with 20 s left
(a fifth), so short test lives renew earlier than the 80% of production's 300 s.

Setup times (pods and tokens created through the API with threads, the admin token from
the cluster's kubeconfig) are printed too. Asserts nothing. Results: docs/benchmarks.md,
section "Broker".
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import heapq
import http.client
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py"))

import cluster  # noqa: E402
import idp_peer  # noqa: E402
import test_broker as tb  # noqa: E402

# Two fleets of pods, each namespace granted one credential of the broker.
FLEET = {"bench-a": "prod", "bench-b": "batch"}
POLICY = {
    "credentials": {"prod": {"dir": "PROD"}, "batch": {"dir": "BATCH"}},
    "grants": [{"namespace": ns, "credential": c} for ns, c in FLEET.items()],
}
ACCOUNTS = {"prod": "prod-sa", "batch": "batch-sa"}
M = "polars_cloud_auth_broker_"


def emit(what: str, **fields) -> None:
    print(json.dumps({"bench": what, **fields}), flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid`, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(line.split()[1]) / 1024, 2)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Api:
    """The API server as the admin of the kubeconfig, over keep-alive connections (one per
    thread): creating thousands of pods and tokens with kubectl would measure kubectl."""

    def __init__(self, kubeconfig: Path):
        config = yaml.safe_load(kubeconfig.read_text())
        (c,) = config["clusters"]
        (u,) = config["users"]
        url = urllib.parse.urlparse(c["cluster"]["server"])
        assert url.hostname == "127.0.0.1", url
        self.host, self.port = url.hostname, url.port
        ca = base64.b64decode(c["cluster"]["certificate-authority-data"]).decode()
        self.context = ssl.create_default_context(cadata=ca)
        self.headers = {"Authorization": f"Bearer {u['user']['token']}",
                        "Content-Type": "application/json", "Accept": "application/json"}
        self.local = threading.local()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                   timeout=60)
                self.local.conn = conn
            try:
                conn.request(method, path, body=data, headers=self.headers)
                r = conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, raw = self.call(method, path, body)
        if status >= 300:
            raise AssertionError(f"{method} {path}: {status} {raw[:300]!r}")
        return json.loads(raw)

    def pod_token(self, ns: str, name: str) -> str:
        """A stored pod and a TokenRequest token bound to it (what the kubelet projects)."""
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
               "spec": {"serviceAccountName": "default",
                        "containers": [{"name": "app", "image": "busybox:1.36"}]}}
        status, raw = self.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
        if status == 409:  # from an earlier run: its uid is what the token binds to
            uid = self.json("GET", f"/api/v1/namespaces/{ns}/pods/{name}")["metadata"]["uid"]
        elif status >= 300:
            raise AssertionError(f"creating pod {ns}/{name}: {status} {raw[:300]!r}")
        else:
            uid = json.loads(raw)["metadata"]["uid"]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": [tb.AUD], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                               "name": name, "uid": uid}}}
        out = self.json("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", request)
        return out["status"]["token"]

    def token_reviews(self) -> float:
        """TokenReviews the API server itself counted (all clients, all codes)."""
        _, raw = self.call("GET", "/metrics")
        total = 0.0
        for line in raw.decode().splitlines():
            if line.startswith("apiserver_request_total{") and 'resource="tokenreviews"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def make_pods(api: Api, names: list[tuple[str, str]], threads: int = 16) -> tuple[list[str], float]:
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        tokens = list(pool.map(lambda nn: api.pod_token(*nn), names))
    return tokens, time.monotonic() - t0


def form(token: str) -> bytes:
    return urllib.parse.urlencode({"grant_type": "client_credentials",
                                   "client_assertion_type": tb.JWT_BEARER,
                                   "client_assertion": token}).encode()


class Client:
    """Token requests to the broker; `fresh` opens a TLS connection per request (a sidecar
    that asks every few minutes finds its last connection closed)."""

    def __init__(self, broker: tb.Broker, fresh: bool):
        self.port, self.fresh = broker.port, fresh
        self.context = broker.context
        self.local = threading.local()

    def post(self, token: str) -> tuple[int, dict]:
        conn = None if self.fresh else getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                               timeout=30)
            if not self.fresh:
                self.local.conn = conn
        try:
            conn.request("POST", "/token", body=form(token),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            r = conn.getresponse()
            body = r.read()
            return r.status, json.loads(body or b"{}")
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            conn.close()
            raise
        finally:
            if self.fresh:
                conn.close()


def idp_token_requests(idp: idp_peer.Idp, since_ms: float, until_ms: float) -> int:
    return sum(1 for q in idp.requests() if q["path"].endswith("/token")
               and since_ms <= q["time_ms"] <= until_ms)


def fleet(broker: tb.Broker, api: Api, idp: idp_peer.Idp, tokens: list[str], args) -> None:
    """The simulated sidecars: each asks at start, then at 80% of each answer's life."""
    client = Client(broker, fresh=True)
    heap: list[tuple[float, int]] = []
    lock = threading.Lock()
    wake = threading.Condition(lock)
    stats = {"requests": 0, "ok": 0, "failed": 0, "latency": [], "per_pod": [0] * len(tokens),
             "expires_in": [], "seconds": {}}
    start = time.monotonic() + 1
    end = start + args.stagger + args.lives * args.ttl
    for i in range(len(tokens)):
        heap.append((start + random.uniform(0, args.stagger), i))
    heapq.heapify(heap)

    def ask(i: int) -> None:
        t0 = time.monotonic()
        try:
            status, body = client.post(tokens[i])
        except Exception as e:  # noqa: BLE001 - counted as a failed request
            status, body = 0, {"error": repr(e)}
        t1 = time.monotonic()
        with lock:
            stats["requests"] += 1
            stats["per_pod"][i] += 1
            stats["latency"].append(t1 - t0)
            stats["seconds"][int(t0)] = stats["seconds"].get(int(t0), 0) + 1
            if status == 200:
                stats["ok"] += 1
                stats["expires_in"].append(body["expires_in"])
                due = t1 + 0.8 * body["expires_in"]
                if args.renewal == "jwt":
                    # The token engine's own rule (src/renew.rs next_renewal): 80% of the
                    # JWT's iat..exp less up to 10% jitter, at least 1 s from now.
                    c = tb.claims(body["access_token"])
                    target = c["iat"] + (0.8 - 0.1 * random.random()) * (c["exp"] - c["iat"])
                    due = t1 + max(1.0, target - time.time())
            else:
                stats["failed"] += 1
                if stats["failed"] <= 3:
                    print(f"sidecar {i}: {status} {body}", file=sys.stderr)
                due = t1 + 1
            if due < end:
                heapq.heappush(heap, (due, i))
                wake.notify()

    before = broker.metrics()
    api_before = api.token_reviews()
    wall_start = time.time() * 1000 + 1000
    cpu0 = cpu_seconds(broker.proc.pid)
    loads = []
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        next_load = start
        while True:
            now = time.monotonic()
            if now >= next_load:
                loads.append(loadavg())
                next_load = now + 60
            with lock:
                if now >= end:
                    break
                if heap and heap[0][0] <= now:
                    _, i = heapq.heappop(heap)
                    pool.submit(ask, i)
                    continue
                wait = min(heap[0][0] if heap else end, end) - now
                wake.wait(max(0.0, min(wait, 1.0)))
    wall_end = time.time() * 1000
    window = time.monotonic() - start
    cpu = cpu_seconds(broker.proc.pid) - cpu0
    after = broker.metrics()
    delta = lambda k: after.get(M + k, 0) - before.get(M + k, 0)  # noqa: E731
    idp_n = idp_token_requests(idp, wall_start, wall_end)
    credentials = len(POLICY["credentials"])
    per_hour = idp_n * 3600 / window
    lat = sorted(stats["latency"])
    pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 2)  # noqa: E731
    per_pod = stats["per_pod"]
    emit("fleet", pods=len(tokens), renewal=args.renewal, credentials=credentials,
         broker_replicas=1,
         idp_token_ttl_s=args.ttl, lives=args.lives, stagger_s=args.stagger,
         window_s=round(window, 1),
         broker_requests=stats["requests"], granted=stats["ok"], failed=stats["failed"],
         broker_requests_per_s=round(stats["requests"] / window, 2),
         broker_requests_peak_per_s=max(stats["seconds"].values()),
         requests_per_pod_min_mean_max=[min(per_pod), round(sum(per_pod) / len(per_pod), 2),
                                        max(per_pod)],
         expires_in_min_max=[min(stats["expires_in"]), max(stats["expires_in"])],
         latency_ms_p50_p99_max=[pct(0.5), pct(0.99), round(lat[-1] * 1e3, 2)],
         idp_token_requests=idp_n,
         idp_metric_delta=sum(v - before.get(k, 0) for k, v in after.items()
                              if k.startswith(M + "idp_requests_total")),
         idp_requests_per_hour=round(per_hour, 1),
         idp_requests_per_hour_at_300s=round(per_hour * args.ttl / 300, 1),
         idp_requests_per_token_life=round(idp_n / (window / args.ttl), 2),
         goal_per_hour_at_300s=15 * credentials * 1,
         token_reviews_authenticated=delta('token_reviews_total{result="authenticated"}'),
         token_reviews_cached=delta('token_reviews_total{result="cached"}'),
         token_reviews_failed=delta('token_reviews_total{result="failed"}')
         + delta('token_reviews_total{result="refused"}'),
         apiserver_tokenreviews=api.token_reviews() - api_before,
         pods_x_lives=len(tokens) * args.lives,
         broker_cpu_s=round(cpu, 2), broker_memory_mib=memory(broker.proc.pid),
         loadavg_per_minute=loads)


def oha(broker: tb.Broker, token: str, work: Path, args, rate: int | None) -> None:
    body = work / "form.txt"
    body.write_bytes(form(token))
    argv = [args.oha, "--no-tui", "--output-format", "json", "--cacert", str(broker.tls["ca"]),
            "-m", "POST", "-T", "application/x-www-form-urlencoded", "-D", str(body),
            "-z", f"{args.duration}s", "-c", str(args.connections)]
    if rate:
        argv += ["-q", str(rate), "--latency-correction"]
    before = broker.metrics()
    cpu0 = cpu_seconds(broker.proc.pid)
    lines0 = broker.log.read_bytes().count(b'"token granted"')
    out = subprocess.run([*argv, f"{broker.base}/token"], capture_output=True, text=True,
                         check=True)
    cpu = cpu_seconds(broker.proc.pid) - cpu0
    after = broker.metrics()
    r = json.loads(out.stdout)
    s, p = r["summary"], r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    delta = lambda k: after.get(M + k, 0) - before.get(M + k, 0)  # noqa: E731
    emit("fixed_rate" if rate else "throughput", connections=args.connections,
         duration_s=args.duration, rate=rate, requests_per_s=round(s["requestsPerSec"], 1),
         status=codes, errors=r.get("errorDistribution", {}),
         latency_ms={k: round(p[k] * 1e3, 2) for k in ("p50", "p90", "p99", "p99.9")
                     if p.get(k) is not None} | {"max": round(s["slowest"] * 1e3, 2)},
         token_reviews_authenticated=delta('token_reviews_total{result="authenticated"}'),
         token_reviews_cached=delta('token_reviews_total{result="cached"}'),
         broker_cpu_s=round(cpu, 2),
         grant_log_lines=broker.log.read_bytes().count(b'"token granted"') - lines0,
         broker_memory_mib=memory(broker.proc.pid), loadavg=loadavg())


def prime(broker: tb.Broker, tokens: list[str]) -> dict:
    client = Client(broker, fresh=False)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client.post, tokens))
    bad = [s for s, _ in results if s != 200]
    return {"primed": len(tokens), "not_200": len(bad), "s": round(time.monotonic() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--ttl", type=int, default=120, help="the IdP's access token life (s)")
    ap.add_argument("--lives", type=int, default=4)
    ap.add_argument("--stagger", type=float, default=10)
    ap.add_argument("--known", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--oha", default=shutil.which("oha") or str(Path.home() / ".cargo/bin/oha"))
    ap.add_argument("--renewal", choices=("received", "jwt"), default="received",
                    help="when a sidecar asks again: at 80%% of the answer's expires_in, or by "
                    "the token engine's rule on the JWT's iat and exp (src/renew.rs)")
    ap.add_argument("--skip", default="", help="comma-separated: fleet,oha,rss")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    assert Path(args.oha).is_file(), "oha is missing: cargo install --locked oha"

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="pca-broker-bench-"))
    # A copy: a shared target directory may get another build's binary meanwhile.
    shutil.copy(ROOT / "target" / "release" / "polars-cloud-auth", work / "polars-cloud-auth")
    os.environ["PCA_BIN"] = str(work / "polars-cloud-auth")
    version = subprocess.run([os.environ["PCA_BIN"], "--version"], capture_output=True,
                             text=True).stdout.strip()
    kube = cluster.connect()
    api = Api(kube.kubeconfig)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    emit("machine", cores=os.cpu_count(), cpu=cpu, kernel=os.uname().release,
         loadavg=loadavg(), broker=version, commit=commit,
         kube_apiserver=api.json("GET", "/version")["gitVersion"],
         oha=subprocess.run([args.oha, "--version"], capture_output=True,
                            text=True).stdout.strip(),
         python=sys.version.split()[0],
         node=subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip())

    kube.namespace(tb.NS)
    tb.install_chart(kube, work)
    for ns in FLEET:
        kube.namespace(ns)
    idp = idp_peer.Idp(tb.SECRETS, ttl=args.ttl)
    creds = tb.credential_dirs(work, ACCOUNTS)
    policy = work / "policy.yaml"
    tb.write_policy(policy, creds, POLICY)
    config = tb.kubeconfig_for(kube, tb.BROKER_SA, tb.NS, work / "broker.kubeconfig")
    brokers: list[tb.Broker] = []
    namespaces = list(FLEET)
    names = [(namespaces[i % 2], f"sidecar-{i:05d}") for i in range(max(args.pods, args.known))]
    try:
        tokens, took = make_pods(api, names[:args.pods])
        emit("setup", pods_and_tokens=len(tokens), seconds=round(took, 1),
             per_s=round(len(tokens) / took, 1), loadavg=loadavg())

        if not {"fleet", "oha"} <= skip:
            broker = tb.Broker(work / "fleet", config, idp.issuer, policy)
            brokers.append(broker)
            if "fleet" not in skip:
                fleet(broker, api, idp, tokens, args)
            if "oha" not in skip:
                oha(broker, tokens[0], work, args, None)
                oha(broker, tokens[0], work, args, args.rate)
            broker.stop()
            lines = broker.log.read_bytes().count(b'"token granted"')
            emit("broker_log", path_kind="file (production: stdout)", grant_lines=lines,
                 bytes=broker.log.stat().st_size)

        if "rss" not in skip:
            broker = tb.Broker(work / "rss", config, idp.issuer, policy)
            brokers.append(broker)
            time.sleep(2)
            emit("rss", known_pods=0, **memory(broker.proc.pid), loadavg=loadavg())
            first = tokens[:1000]
            emit("rss", known_pods=len(first), **prime(broker, first),
                 cached=broker.metrics()[M + "token_reviews_cached"],
                 **memory(broker.proc.pid), loadavg=loadavg())
            more, took = make_pods(api, names[len(tokens):args.known])
            emit("setup", pods_and_tokens=len(more), seconds=round(took, 1),
                 per_s=round(len(more) / max(took, 1e-9), 1), loadavg=loadavg())
            rest = tokens[1000:args.known] + more
            emit("rss", known_pods=len(first) + len(rest), **prime(broker, rest),
                 cached=broker.metrics()[M + "token_reviews_cached"],
                 **memory(broker.proc.pid), loadavg=loadavg())
    finally:
        for b in brokers:
            b.stop()
        idp.stop()
        # Pods only: without a controller manager a deleted namespace never goes away.
        for ns in FLEET:
            api.call("DELETE", f"/api/v1/namespaces/{ns}/pods")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
