#!/usr/bin/env python3
"""Figures for the broker under forged tokens and short token lives (issue 18, items 6 and 7),
against the real kube-apiserver and the test IdP.

    bash scripts/setup.sh                      # .venv and the test IdP's node modules
    scripts/cluster.sh start && eval "$(scripts/cluster.sh env)"
    cargo build
    .venv/bin/python benches/broker_forged.py [--forged 3000] [--threads 16] [--window 60]
    PCA_BIN=/path/to/another/polars-cloud-auth .venv/bin/python benches/broker_forged.py
    scripts/cluster.sh stop

The broker runs as the chart's ServiceAccount with the chart's RBAC, set up as
tests/py/test_broker.py does (its helpers are imported from there). Prints, as JSON lines:

1. `forged`: --forged unique forged service-account tokens (a real pod-bound token's header
   and claims, each with its own `jti`; a third keep the cluster key's `kid`, a third name
   an unknown `kid`, a third have none; the real token's signature), sent from --threads
   threads. Figures: requests/s, the broker's TokenReviews (its counters), the API
   server's own apiserver_request_total for tokenreviews, the growth of the review cache,
   and the HTTP statuses.
2. `short_tokens`: a broker whose credentials' tokens live 20 s, and a broker-backed
   `exec` running `sleep --window`: the IdP's token requests per minute (both
   credentials together) and the broker's grants to exec per minute over the window.

Asserts nothing. Results: docs/security.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py"))

import cluster  # noqa: E402
import idp_peer  # noqa: E402
import test_broker as tb  # noqa: E402

M = "polars_cloud_auth_broker_"


def emit(what: str, **fields) -> None:
    print(json.dumps({"bench": what, **fields}), flush=True)


def b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def forged_run(kube, broker: tb.Broker, n: int, threads: int) -> None:
    tb.stored_pod(kube, "team-a", "bench-forge")
    real = tb.sa_token(kube, "team-a", "default", "bench-forge")
    header = json.loads(base64.urlsafe_b64decode(real.split(".")[0] + "=="))
    claims = tb.claims(real)
    signature = real.split(".")[2]

    def forge(i: int) -> str:
        head = dict(header)
        if i % 3 == 1:
            head["kid"] = f"rotated-{i}"
        elif i % 3 == 2:
            head.pop("kid", None)
        return f"{b64(head)}.{b64(dict(claims, jti=f'forged-{i}'))}.{signature}"

    tokens = [forge(i) for i in range(n)]
    before = broker.metrics()
    api_before = tb.apiserver_tokenreviews(kube)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        statuses = [s for s, _ in pool.map(broker.request, tokens)]
    elapsed = time.monotonic() - t0
    after = broker.metrics()

    def delta(k: str) -> float:
        return after.get(M + k, 0) - before.get(M + k, 0)

    reviews = sum(delta(f'token_reviews_total{{result="{r}"}}')
                  for r in ("authenticated", "refused", "failed"))
    emit("forged", tokens=n, threads=threads, seconds=round(elapsed, 2),
         per_second=round(n / elapsed), broker_reviews=reviews,
         apiserver_tokenreviews=tb.apiserver_tokenreviews(kube) - api_before,
         cache_growth=delta("token_reviews_cached"),
         statuses={str(s): statuses.count(s) for s in sorted(set(statuses))})
    status, _ = broker.request(real)
    emit("forged_then_genuine", status=status)


def short_run(kube, kubeconfig: Path, tmp: Path, window: int) -> None:
    idp = idp_peer.Idp(tb.SECRETS, ttl=20)
    creds = tb.credential_dirs(tmp, {"prod": "prod-sa", "batch": "batch-sa"})
    policy = tmp / "policy.yaml"
    tb.write_policy(policy, creds, tb.POLICY)
    broker = tb.Broker(tmp / "b", kubeconfig, idp.issuer, policy)
    try:
        tb.stored_pod(kube, "team-a", "bench-short")
        assertion = tmp / "sa-token"
        assertion.write_text(tb.sa_token(kube, "team-a", "default", "bench-short"))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("POLARS_CLOUD") and k.lower() not in
               ("https_proxy", "http_proxy", "all_proxy")}
        env.update(HOME=str(tmp), NO_PROXY="127.0.0.1,localhost",
                   POLARS_CLOUD_ISSUER=idp.issuer, POLARS_CLOUD_GRANT="client-credentials",
                   POLARS_CLOUD_TOKEN_URL=broker.base + "/token",
                   POLARS_CLOUD_CLIENT_ASSERTION_FILE=str(assertion),
                   POLARS_CLOUD_CA_PEM=broker.tls["ca"].read_text())
        idp_before = len(tb.token_requests(idp))
        granted = broker.metrics().get(tb.GRANTED, 0)
        subprocess.run([str(cluster.binary()), "exec", "--", "sleep", str(window)], env=env,
                       capture_output=True, timeout=window + 60, check=True)
        asks = broker.metrics()[tb.GRANTED] - granted
        idp_requests = len(tb.token_requests(idp)) - idp_before
        emit("short_tokens", ttl=20, window_s=window, credentials=2,
             idp_requests=idp_requests, idp_per_minute=round(idp_requests * 60 / window, 1),
             exec_asks=asks, exec_asks_per_minute=round(asks * 60 / window, 1))
    finally:
        broker.stop()
        idp.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--forged", type=int, default=3000)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--window", type=int, default=60)
    a = p.parse_args()
    kube = cluster.connect()
    emit("binary", path=str(cluster.binary()))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        kube.namespace(tb.NS)
        tb.install_chart(kube, tmp)
        kube.namespace("team-a")
        idp = idp_peer.Idp(tb.SECRETS, ttl=300)
        creds = tb.credential_dirs(tmp / "main", {"prod": "prod-sa", "batch": "batch-sa"})
        policy = tmp / "policy.yaml"
        tb.write_policy(policy, creds, tb.POLICY)
        kubeconfig = tb.kubeconfig_for(kube, tb.BROKER_SA, tb.NS, tmp / "broker.kubeconfig")
        broker = tb.Broker(tmp / "forged", kubeconfig, idp.issuer, policy)
        try:
            forged_run(kube, broker, a.forged, a.threads)
        finally:
            broker.stop()
            idp.stop()
        short_run(kube, kubeconfig, tmp / "short", a.window)


if __name__ == "__main__":
    main()
