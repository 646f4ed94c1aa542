#!/usr/bin/env python3
"""Make the REAL `polars-cloud` 0.12.0 client authenticate against a local stand-in.

Run it with the environment a workload would have, e.g.

    POLARS_CLOUD_ACCESS_TOKEN=<jwt> .venv/bin/python tests/py/client/check_client.py
    POLARS_CLOUD_CONFIG_DIR=<dir with config.toml> .venv/bin/python tests/py/client/check_client.py

It

1. starts the stand-in API (tests/py/client/standin_api.py) on a free
   loopback port;
2. points the client at it with ``POLARS_CLOUD_API_ADDR=http://127.0.0.1:<port>``
   (the client accepts a plain-http URL there, no extra switch is needed) and
   routes every other HTTP(S) attempt of the client into the stand-in acting
   as a refusing proxy (``HTTP(S)_PROXY``/``ALL_PROXY`` = stand-in,
   ``NO_PROXY`` = loopback), so nothing can leave the machine;
3. calls the public ``polars_cloud.authenticate(interactive=False)`` - the
   client's own token discovery, no monkeypatching - in a worker thread with
   a timeout; ``interactive=False`` means a missing token raises instead of
   starting the browser/device login;
4. prints ONE JSON line on stdout:
   ``{"ok": true, "bearer": ..., "paths": [...], "source": "env|config|file|service_account"}``
   or ``{"ok": false, "error": ...}`` (exit status 1).

``source`` says where the bearer the stand-in received came from, found by
comparing it with what was in the environment / config dir before the run:
``env`` = POLARS_CLOUD_ACCESS_TOKEN, ``config`` = ``[auth] access_token`` of
``<config dir>/config.toml``, ``file`` = the legacy token file
``<config dir>/cloud_access_token`` (0.12 migrates it into config.toml and
deletes it).

With ``--token-endpoint`` the stand-in also plays the token endpoint on
``https://auth.<domain>`` (TLS with a throwaway CA made by the openssl CLI,
handed to the client as ``SSL_CERT_FILE``), so the client's refresh
(expired ``config.toml`` access token) and service-account login
(POLARS_CLOUD_CLIENT_ID/SECRET) can complete locally; the JSON then also
carries ``token_requests`` (the form fields the client posted) and
``source`` may be ``refresh`` or ``service_account``.  Without the flag those
attempts are refused and reported as ``outside``.

See docs/polars-cloud-client.md for the facts behind all this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from standin_api import USER_ME_PATH, StandInApi, make_token_endpoint_tls  # noqa: E402

EXPECTED_CLIENT_VERSION = "0.12.0"
DEFAULT_DOMAIN = "prd.cloud.pola.rs"  # polars_cloud/constants.py and the extension
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def config_dir() -> Path | None:
    """The directory polars-cloud 0.12 reads config.toml from.

    POLARS_CLOUD_CONFIG_DIR if set, else the platform config dir
    ($XDG_CONFIG_HOME or ~/.config on Linux) + "polars_cloud".
    """
    env = os.environ.get("POLARS_CLOUD_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "polars_cloud"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "polars_cloud" if home else None


def candidates() -> dict[str, str]:
    """What the workload environment offers, read BEFORE the client runs."""
    found: dict[str, str] = {}
    tok = os.environ.get("POLARS_CLOUD_ACCESS_TOKEN")
    if tok:
        found["env"] = tok
    cdir = config_dir()
    if cdir is not None:
        cfg = cdir / "config.toml"
        try:
            import tomllib

            data = tomllib.loads(cfg.read_text())
            access = (data.get("auth") or {}).get("access_token")
            if isinstance(access, str):
                found["config"] = access
        except (OSError, ValueError):
            pass
        legacy = cdir / "cloud_access_token"
        try:
            found["file"] = legacy.read_text().strip()
        except OSError:
            pass
    return found


def auth_host() -> str:
    """auth.<domain>: POLARS_CLOUD_DOMAIN, else `domain` in config.toml, else the default."""
    domain = os.environ.get("POLARS_CLOUD_DOMAIN")
    cdir = config_dir()
    if not domain and cdir is not None:
        try:
            import tomllib

            value = tomllib.loads((cdir / "config.toml").read_text()).get("domain")
            domain = value if isinstance(value, str) else None
        except (OSError, ValueError):
            pass
    return f"auth.{domain or DEFAULT_DOMAIN}"


def warnings_for_env() -> list[str]:
    notes = []
    if os.environ.get("POLARS_CLOUD_ACCESS_TOKEN_PATH"):
        notes.append(
            "POLARS_CLOUD_ACCESS_TOKEN_PATH is set but polars-cloud 0.12.0 never reads it"
        )
    return notes


def emit(result: dict[str, Any], real_stdout: int) -> None:
    line = (json.dumps(result, separators=(",", ":")) + "\n").encode()
    os.write(real_stdout, line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for the client (default 30)")
    ap.add_argument("--user-status", type=int, default=200,
                    help="HTTP status the stand-in answers GET /api/v1/user/me with "
                         "(for negative tests of the harness itself)")
    ap.add_argument("--token-endpoint", action="store_true",
                    help="also serve the token endpoint on https://auth.<domain> "
                         "(refresh and service-account login); needs the openssl CLI")
    args = ap.parse_args(argv)

    # Keep stdout for our single JSON line: anything the client (Python or
    # its Rust extension) prints goes to stderr instead.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    offered = candidates()
    warnings = warnings_for_env()
    t0 = time.monotonic()

    tls_kwargs: dict[str, Any] = {}
    if args.token_endpoint:
        host = auth_host()
        try:
            ctx, ca_file = make_token_endpoint_tls(host, tempfile.mkdtemp(prefix="pc-standin-tls-"))
        except Exception as exc:  # noqa: BLE001 - openssl missing or failing
            emit({"ok": False, "error": f"could not make the stand-in TLS certificate: {exc}"},
                 real_stdout)
            return 1
        tls_kwargs = {"token_endpoint_tls": ctx, "auth_host": host}
        os.environ["SSL_CERT_FILE"] = ca_file

    standin = StandInApi(user_status=args.user_status, **tls_kwargs).start()
    os.environ["POLARS_CLOUD_API_ADDR"] = standin.url
    for var in PROXY_VARS:
        os.environ[var] = standin.url
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = LOOPBACK_NO_PROXY

    outcome: dict[str, Any] = {}

    def run_client() -> None:
        try:
            import polars_cloud

            outcome["version"] = getattr(polars_cloud, "__version__", "?")
            polars_cloud.authenticate(interactive=False)
            outcome["done"] = True
        except BaseException as exc:  # noqa: BLE001 - report whatever the client raised
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            outcome["error"] = f"{type(exc).__name__}: {first}"[:2000]

    worker = threading.Thread(target=run_client, name="polars-cloud-auth", daemon=True)
    worker.start()
    worker.join(args.timeout)

    requests, outside = standin.snapshot()
    token_requests, issued = standin.token_snapshot()
    paths = [r["path"] for r in requests]
    me = [r for r in requests if r["path"].split("?", 1)[0] == USER_ME_PATH]
    bearer = None
    if me and (me[-1]["authorization"] or "").startswith("Bearer "):
        bearer = me[-1]["authorization"][len("Bearer "):]

    base: dict[str, Any] = {"paths": paths, "outside": outside,
                            "elapsed_s": round(time.monotonic() - t0, 3)}
    if args.token_endpoint:
        base["token_requests"] = token_requests
    if warnings:
        base["warnings"] = warnings

    def fail(msg: str) -> int:
        emit({"ok": False, "error": msg, **base}, real_stdout)
        return 1

    if worker.is_alive():
        rc = fail(f"timeout: the client did not finish authenticating within {args.timeout}s")
        os._exit(rc)  # the worker is stuck inside the extension; don't wait for it
    standin.stop()

    if outcome.get("version") not in (None, EXPECTED_CLIENT_VERSION):
        return fail(f"polars-cloud {outcome['version']} is installed, the harness is for "
                    f"{EXPECTED_CLIENT_VERSION}")
    if "error" in outcome:
        return fail(outcome["error"])
    if outside:
        return fail(f"the client tried to reach outside loopback: {outside}")
    if bearer is None:
        return fail("authenticate() returned but the stand-in saw no "
                    f"GET {USER_ME_PATH} with a bearer token")
    grant_source = {"refresh_token": "refresh", "password": "service_account"}
    if bearer in issued:
        source = grant_source.get(issued[bearer], issued[bearer])
    else:
        source = next((name for name, tok in offered.items() if tok == bearer), "other")
    emit({"ok": True, "bearer": bearer, "source": source, **base}, real_stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
