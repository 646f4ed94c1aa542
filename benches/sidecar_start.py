#!/usr/bin/env python3
"""Sidecar start: how long until a broker-backed sidecar has its first token on disk, next
to a sidecar that signs in to the identity provider itself. Prints figures, asserts nothing.

Both are the real release binary's `sidecar`, started fresh each run, timed from spawn to
the token file's appearance (polled every 5 ms). The broker-backed one presents a
TokenRequest-bound service-account token to a running broker, which has the real
kube-apiserver review it (the review is new for every run: a fresh token each time) and
answers from its credential's held token; the other signs in with the password grant. The
identity provider is the test IdP (tests/idp) on loopback in both cases.

Run (needs the test cluster and the test IdP's node modules):
    bash scripts/cluster.sh start && eval "$(bash scripts/cluster.sh env)"
    python3 benches/sidecar_start.py [--runs 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "py"))

import cluster  # noqa: E402
import idp_peer  # noqa: E402
import test_broker as tb  # noqa: E402


def first_token(env: dict[str, str], token: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([os.environ["PCA_BIN"], "sidecar"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not token.exists():
            if proc.poll() is not None:
                raise SystemExit(f"sidecar exited with {proc.returncode}")
            if time.perf_counter() - started > 30:
                raise SystemExit("no token within 30 s")
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    os.environ["PCA_BIN"] = str(ROOT / "target" / "release" / "polars-cloud-auth")
    kube = cluster.connect()
    tmp = Path(tempfile.mkdtemp(prefix="pca-sidecar-start-"))
    kube.namespace(tb.NS)
    tb.install_chart(kube, tmp)
    kube.namespace("team-a")
    idp = idp_peer.Idp(tb.SECRETS, ttl=300)
    creds = tb.credential_dirs(tmp, {"prod": "prod-sa", "batch": "batch-sa"})
    policy = tmp / "policy.yaml"
    tb.write_policy(policy, creds, tb.POLICY)
    broker = tb.Broker(tmp, tb.kubeconfig_for(kube, tb.BROKER_SA, tb.NS, tmp / "kubeconfig"),
                       idp.issuer, policy)
    tb.stored_pod(kube, "team-a", "start-1")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "127.0.0.1,localhost",
            "POLARS_CLOUD_ISSUER": idp.issuer, "POLARS_CLOUD_LOG_FORMAT": "json"}
    brokered, direct = [], []
    try:
        for i in range(args.runs):
            run = tmp / f"run-{i}"
            run.mkdir()
            assertion = run / "sa-token"
            assertion.write_text(tb.sa_token(kube, "team-a", "default", "start-1"))
            env = dict(base, POLARS_CLOUD_GRANT="client-credentials",
                       POLARS_CLOUD_TOKEN_URL=broker.base + "/token",
                       POLARS_CLOUD_CLIENT_ASSERTION_FILE=str(assertion),
                       POLARS_CLOUD_CA_PEM=broker.tls["ca"].read_text(),
                       POLARS_CLOUD_ACCESS_TOKEN_PATH=str(run / "b" / "token"),
                       POLARS_CLOUD_LISTEN=f"127.0.0.1:{cluster.free_port()}")
            brokered.append(first_token(env, run / "b" / "token"))
            env = dict(base, POLARS_CLOUD_CLIENT_ID="prod-sa",
                       POLARS_CLOUD_CLIENT_SECRET=tb.SECRETS["prod-sa"],
                       POLARS_CLOUD_ACCESS_TOKEN_PATH=str(run / "d" / "token"),
                       POLARS_CLOUD_LISTEN=f"127.0.0.1:{cluster.free_port()}")
            direct.append(first_token(env, run / "d" / "token"))
    finally:
        broker.stop()
        idp.stop()
        kube.helm_run("uninstall", tb.RELEASE, "-n", tb.NS, check=False)
    load = os.getloadavg()[0]

    def show(what: str, xs: list[float]) -> None:
        xs = sorted(xs)
        p90 = xs[int(0.9 * (len(xs) - 1))]
        print(f"{what}: median {statistics.median(xs) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
              f"min {xs[0] * 1000:.1f} ms over {len(xs)} runs")

    print(f"sidecar start to first token on disk (release binary, load average {load:.2f}):")
    show("  broker-backed (TokenReview on the real API server, then the held token)", brokered)
    show("  signing in itself (password grant at the test IdP)", direct)


if __name__ == "__main__":
    main()
