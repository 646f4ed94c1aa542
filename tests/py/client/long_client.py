#!/usr/bin/env python3
"""A long-running workload with the REAL `polars-cloud` client (any release from 0.7.0 on:
run it with the Python of a venv from tests/py/clients.py).

It calls the API once per `--interval` for `--duration` seconds, the way a Polars job
keeps using its client for hours, and prints one JSON line with what happened:

    {"calls": 120, "ok": 120, "failed": 0, "errors": {}, "bearers": 9,
     "client_version": "0.12.0", ...}

The workload's environment is used as given (a pod's, `exec`'s child's, a CI step's),
with one exception: `POLARS_CLOUD_API_ADDR` is pointed at a local stand-in of the API
(tests/py/client/standin_api.py), because the real API is not reachable from here. With
`--jwks URL` the stand-in accepts only bearers that the identity provider signed and that
have not expired, as the real API would; every other request is a failed call.

The client authenticates once (`polars_cloud.authenticate`), then each call is again
`authenticate(interactive=False)`, which reuses the client's in-memory tokens (it does not
re-read config.toml or the environment; see docs/polars-cloud-client.md) and refreshes them
through the client's own logic, then sends `GET /api/v1/user/me` with the bearer.

Exit status: 0 when every call succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from standin_api import USER_ME_PATH, StandInApi  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--jwks", help="the IdP's JWKS URL: only its valid tokens are accepted")
    ap.add_argument("--call-timeout", type=float, default=30.0)
    ap.add_argument("--ready-file", help="touched once the first call has succeeded")
    args = ap.parse_args()

    verify = None
    if args.jwks:
        from jwks import Verifier

        verify = Verifier(args.jwks)
    api = StandInApi(verify=verify).start()
    os.environ["POLARS_CLOUD_API_ADDR"] = api.url
    # The stand-in is on loopback: never through a proxy, whatever the workload has.
    no_proxy = os.environ.get("NO_PROXY", os.environ.get("no_proxy", ""))
    os.environ["NO_PROXY"] = ",".join(x for x in [no_proxy, "127.0.0.1", "localhost"] if x)

    import polars_cloud as pc
    from importlib.metadata import version

    client_version = version("polars-cloud")

    calls = ok = 0
    errors: dict[str, int] = {}
    first_error_at: float | None = None
    started = time.time()
    deadline = started + args.duration
    while True:
        t0 = time.time()
        if t0 >= deadline:
            break
        result: dict[str, object] = {}

        def call() -> None:
            try:
                pc.authenticate(interactive=False)
                result["ok"] = True
            except BaseException as e:  # noqa: BLE001 - the client raises several kinds
                result["error"] = f"{type(e).__name__}: {e}".strip()

        th = threading.Thread(target=call, daemon=True)
        th.start()
        th.join(args.call_timeout)
        calls += 1
        if result.get("ok"):
            ok += 1
            if args.ready_file and ok == 1:
                Path(args.ready_file).touch()
        else:
            err = str(result.get("error", f"timed out after {args.call_timeout}s"))[:300]
            errors[err] = errors.get(err, 0) + 1
            if first_error_at is None:
                first_error_at = round(t0 - started, 1)
        time.sleep(max(0.0, args.interval - (time.time() - t0)))

    requests, outside = api.snapshot()
    bearers = {r["authorization"] for r in requests if r["path"] == USER_ME_PATH}
    # The API saw each call; a call counts as ok only if the client returned AND the
    # stand-in accepted its bearer (authenticate() raises on a 401).
    out = {
        "calls": calls,
        "ok": ok,
        "failed": calls - ok,
        "errors": errors,
        "first_error_at_s": first_error_at,
        "bearers": len(bearers),
        "outside": outside,
        "elapsed_s": round(time.time() - started, 1),
        # Wall clock of the first call (epoch seconds): a test can place the run in a
        # token's life.
        "started_at": round(started, 1),
        "client_version": client_version,
    }
    api.stop()
    print(json.dumps(out), flush=True)
    return 0 if calls and ok == calls and not outside else 1


if __name__ == "__main__":
    sys.exit(main())
