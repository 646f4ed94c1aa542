#!/usr/bin/env python3
"""Figures for pods whose real polars-cloud client renews through the relay.

    sudo .venv/bin/python benches/relay_pod.py [--ttl 60] [--duration 300]

Runs two injected pods at once with tests/py/kubelet.py (root needed): one with one
client process and one with four processes sharing a config directory, each calling the
API once a second through the real polars-cloud 0.12 client, with the test IdP's token
life set to --ttl. Prints, per pod: the calls and failed calls; the token requests the
IdP received (and per pod-hour, and per token life); the relay's answered refreshes; and
our container's RSS and CPU (release binary when built, else debug). At Keycloak's 300 s
the sidecar renews at 80% of the life, so a pod costs 60/4 = 15 requests an hour; with a
shorter --ttl it renews 15 s before expiry instead (what the client needs), so the count
per token life is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py"))

import test_long_running as t  # noqa: E402


def rss_cpu(pid: int) -> tuple[float, float]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss / 1024, ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttl", type=int, default=60)
    ap.add_argument("--duration", type=float, default=300)
    args = ap.parse_args()
    release = ROOT / "target" / "release" / "polars-cloud-auth"
    if release.exists():
        t.BINARY = release
    t.TOKEN_TTL = args.ttl
    t.SESSION_MAX = 36000
    t.DURATION = args.duration
    samples: dict[str, list[tuple[float, float]]] = {}

    def sampler(name: str, stop: threading.Event) -> None:
        # Our container's process: the one running the binary with `sidecar`.
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    env = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                if cmd[:1] == [b"/usr/local/bin/polars-cloud-auth"] and b"sidecar" in cmd and f"HOSTNAME={name}".encode() in env:
                    samples.setdefault(name, []).append(rss_cpu(int(pid)))
            stop.wait(5)

    results = {}
    stop = threading.Event()
    pods = [("bench-1-process", 1), ("bench-4-processes", 4)]
    threads = [threading.Thread(target=sampler, args=(n, stop), daemon=True) for n, _ in pods]
    for th in threads:
        th.start()

    def one(name: str, n: int) -> None:
        results[name] = t.run_pod(name, "native", 1000, None, processes=n, duration=args.duration)

    runners = [threading.Thread(target=one, args=p) for p in pods]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    stop.set()
    print(f"binary: {t.BINARY}; token life {args.ttl} s; run {args.duration:.0f} s")
    for name, n in pods:
        seen = results[name]
        res = seen["results"]
        reqs = [q for q in seen["requests"] if q["path"].endswith("/token")]
        calls = sum(r["calls"] for r in res)
        failed = sum(r["failed"] for r in res)
        lives = args.duration / args.ttl
        rss = [s[0] for s in samples.get(name, [])]
        cpu = samples.get(name, [(0, 0)])
        line = {
            "pod": name,
            "client_processes": n,
            "calls": calls,
            "failed": failed,
            "idp_token_requests": len(reqs),
            "idp_requests_per_pod_hour": round(len(reqs) * 3600 / args.duration, 1),
            "idp_requests_per_token_life": round(len(reqs) / lives, 2),
            "sidecar_rss_mib_max": round(max(rss), 2) if rss else None,
            "sidecar_cpu_s": round(cpu[-1][1] - cpu[0][1], 3) if len(cpu) > 1 else None,
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
