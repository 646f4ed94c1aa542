#!/usr/bin/env python3
"""Token engine benchmarks: prints figures, asserts nothing.

- cold `polars-cloud-auth token` against `curl` sending the same POST to the same local
  test IdP, side by side, as a ratio;
- sidecar steady-state RSS and CPU while idle between renewals;
- stripped release binary size.

Run: python3 benches/token_engine.py [--runs 40] [--idle 20]
(builds the release binary first; needs scripts/setup.sh to have run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "polars-cloud-auth"
SA_ID, SA_SECRET = "bench-sa", "bench-secret"


def start_idp(ttl: int) -> tuple[subprocess.Popen, str, int]:
    env = dict(os.environ, IDP_PORT="0", IDP_TOKEN_TTL=str(ttl),
               IDP_SERVICE_ACCOUNTS=f"{SA_ID}:{SA_SECRET}")
    p = subprocess.Popen(["node", str(ROOT / "tests/idp/server.mjs")], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    ready = json.loads(p.stdout.readline())
    return p, ready["issuer"], ready["port"]


def timed(cmd: list[str], env: dict, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out.append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"{cmd[0]} failed: {r.stderr.decode()}")
    return out


def proc_stat(pid: int) -> tuple[int, float]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return rss_kib, ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--idle", type=float, default=20.0)
    a = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    print(f"binary: {BIN.stat().st_size / 1024 / 1024:.2f} MiB stripped release "
          f"({os.uname().machine})")

    idp, issuer, port = start_idp(300)
    try:
        token_url = f"{issuer}/protocol/openid-connect/token"
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLARS_CLOUD")}
        env.update(POLARS_CLOUD_ISSUER=issuer, POLARS_CLOUD_CLIENT_ID=SA_ID,
                   POLARS_CLOUD_CLIENT_SECRET=SA_SECRET)
        ours = [str(BIN), "token"]
        curl = ["curl", "-sS", "--fail", "-X", "POST", token_url,
                "-d", "grant_type=password", "-d", "client_id=PolarsCloud",
                "-d", f"username={SA_ID}@sa.cloud.pola.rs", "-d", f"password={SA_SECRET}"]
        timed(ours, env, 3), timed(curl, env, 3)  # warm the IdP and the page cache
        t_ours, t_curl = [], []
        for _ in range(a.runs):  # interleaved, so drift hits both alike
            t_ours += timed(ours, env, 1)
            t_curl += timed(curl, env, 1)
        mo, mc = statistics.median(t_ours), statistics.median(t_curl)
        print(f"cold token, median of {a.runs}: polars-cloud-auth {mo * 1000:.1f} ms, "
              f"curl {mc * 1000:.1f} ms, ratio {mo / mc:.2f}x "
              f"(p90 {statistics.quantiles(t_ours, n=10)[-1] * 1000:.1f} ms vs "
              f"{statistics.quantiles(t_curl, n=10)[-1] * 1000:.1f} ms)")

        import shutil
        import socket

        def idle_sidecar(label: str, extra: list[str], tokdir: Path) -> None:
            s = socket.socket(); s.bind(("127.0.0.1", 0)); lport = s.getsockname()[1]; s.close()
            sc = subprocess.Popen([str(BIN), "sidecar", "--listen", f"127.0.0.1:{lport}",
                                   "--token-file", str(tokdir / "token"), *extra], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{lport}/healthz", timeout=1)
                        break
                    except OSError:
                        time.sleep(0.05)
                time.sleep(1.0)
                rss0, cpu0 = proc_stat(sc.pid)
                time.sleep(a.idle)
                rss1, cpu1 = proc_stat(sc.pid)
                print(f"sidecar idle{label}: RSS {rss1 / 1024:.2f} MiB (after start {rss0 / 1024:.2f} MiB), "
                      f"CPU {cpu1 - cpu0:.3f} s over {a.idle:.0f} s idle "
                      f"({(cpu1 - cpu0) / a.idle * 100:.3f}% of a core)")
            finally:
                sc.terminate(); sc.wait()

        base = Path(os.environ.get("TMPDIR", "/tmp")) / f"pca-bench-{os.getpid()}"
        try:
            idle_sidecar("", [], base / "plain")
            # With the relay: its TLS listener (a free port here; 443 in a pod), keys, CA
            # bundle and one client config directory.
            idle_sidecar(" with the relay", [
                "--client-config", str(base / "relay" / "client"),
                "--relay-state-dir", str(base / "relay" / "state"),
                "--relay-listen", "127.0.0.1:0",
            ], base / "relay")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    finally:
        idp.kill(); idp.wait()


if __name__ == "__main__":
    main()
