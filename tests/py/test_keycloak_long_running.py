"""The long-running client tests of tests/py/test_long_running.py against real Keycloak.

Runs in the Keycloak block of `scripts/test.sh --slow` (CI), which starts Keycloak and
sets POLARS_CLOUD_AUTH_KEYCLOAK_URL & co. (tests/py/keycloak_peer.py); skipped elsewhere.
Keycloak cuts tokens short near the session's max and ends the session under us; the
relay must carry the client across that all the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import keycloak_peer  # noqa: E402
import test_long_running as lr  # noqa: E402

TOKEN_LIFE = 20
SESSION_MAX = 40
DURATION = 70


@pytest.fixture()
def kc():
    peer = keycloak_peer.peer_or_skip()
    peer.reset()
    peer.realm({"accessTokenLifespan": TOKEN_LIFE, "ssoSessionMaxLifespan": SESSION_MAX,
                "ssoSessionIdleTimeout": SESSION_MAX})
    yield peer
    peer.reset()


def logins(peer) -> int:
    q = urllib.parse.urlencode({"type": "LOGIN", "max": "1000"})
    return len(peer.admin("GET", f"/events?{q}") or [])


def client(duration: float, jwks: str) -> list[str]:
    return [str(lr.PYTHON), str(lr.LONG_CLIENT), "--duration", str(duration), "--jwks", jwks]


def test_exec_carries_the_real_client_across_keycloaks_session_max(kc, tmp_path):
    if not lr.BINARY.exists():
        pytest.fail(f"{lr.BINARY} is missing: run cargo build first")
    jwks = f"{kc.issuer}/protocol/openid-connect/certs"
    env = lr.clean_env(HOME=str(tmp_path), **kc.service_account_env())
    before = logins(kc)
    out = subprocess.run([str(lr.BINARY), "exec", "--min-valid", "5s", "--", *client(DURATION, jwks)],
                         env=env, capture_output=True, timeout=DURATION + 120)
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 0, f"{out.stdout.decode()}\n{err[-4000:]}"
    [r] = lr.results(out.stdout.decode())
    assert r["failed"] == 0 and r["calls"] >= DURATION * 0.8, r
    assert r["bearers"] >= DURATION // TOKEN_LIFE, r
    # The session ended under us at least once: Keycloak saw a new sign-in.
    assert logins(kc) - before >= 2, "no new sign-in after the session's max"
    assert keycloak_peer.SA_SECRET not in err
    print("\nexec against Keycloak:", json.dumps(r))
