"""The long-running client tests of tests/py/test_long_running.py against real Keycloak.

Runs in the Keycloak block of `scripts/test.sh --slow` (CI), which starts Keycloak and
sets POLARS_CLOUD_AUTH_KEYCLOAK_URL & co. (tests/py/keycloak_peer.py); skipped elsewhere.
Keycloak cuts tokens short near the session's max and ends the session under us; the
relay must carry the client across that all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import clients  # noqa: E402
import keycloak_peer  # noqa: E402
import person  # noqa: E402
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


# -- after `login`, each client family refreshes by itself against auth.<domain> ----------

LOGIN_DOMAIN = "pca-login.test"
# One loopback address of its own: the front listens there on 443 (TLS) and 80 (plain).
FRONT_ADDR = "127.0.0.86"
LOGIN_LIVES = 5


class AuthFront:
    """`auth.<LOGIN_DOMAIN>` for the clients: TLS on FRONT_ADDR:443 with a certificate from a
    CA made here, and plain HTTP on FRONT_ADDR:80 (the device page Keycloak links to: it
    sees plain HTTP behind the front, so the URLs it prints are http). Both carry bytes to
    Keycloak unchanged, so every token Keycloak issues here names one issuer,
    http://auth.<LOGIN_DOMAIN>/realms/Polars, whichever port asked.

    The clients resolve the name through /etc/hosts, which `in_namespace` replaces for
    the commands it runs (a mount namespace of their own: the machine's file is never
    touched). Needs root, as the node suite does; CI runs the slow suites as root."""

    def __init__(self, kc_base: str, tmp: Path) -> None:
        self.upstream = urllib.parse.urlsplit(kc_base)
        self.dir = tmp / "front"
        self.dir.mkdir()
        self.ca = self.dir / "ca.pem"
        host = f"auth.{LOGIN_DOMAIN}"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=pca login test CA", "-keyout",
             str(self.dir / "ca.key"), "-out", str(self.ca)], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={host}", "-keyout", str(self.dir / "key.pem"), "-out",
             str(self.dir / "req.pem")], check=True, capture_output=True)
        (self.dir / "ext.cnf").write_text(
            f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(self.dir / "req.pem"), "-CA", str(self.ca),
             "-CAkey", str(self.dir / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile",
             str(self.dir / "ext.cnf"), "-out", str(self.dir / "cert.pem")],
            check=True, capture_output=True)
        self.hosts = self.dir / "hosts"
        self.hosts.write_text(f"127.0.0.1 localhost\n{FRONT_ADDR} {host}\n")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.dir / "cert.pem", self.dir / "key.pem")
        self._stop = False
        self.listeners = []
        for port, tls in ((443, ctx), (80, None)):
            s = socket.create_server((FRONT_ADDR, port))
            s.settimeout(0.5)
            self.listeners.append(s)
            threading.Thread(target=self._accept, args=(s, tls), daemon=True).start()

    def _accept(self, listener, tls) -> None:
        while not self._stop:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._carry, args=(conn, tls), daemon=True).start()

    def _carry(self, conn, tls) -> None:
        try:
            conn.settimeout(30)
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            up = socket.create_connection((self.upstream.hostname, self.upstream.port), 10)
        except OSError:
            conn.close()
            return

        def pump(src, dst) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
        pump(conn, up)

    def in_namespace(self, argv: list[str]) -> list[str]:
        """`argv` run with this front's /etc/hosts (a private mount namespace)."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts), *argv]

    def stop(self) -> None:
        self._stop = True
        for s in self.listeners:
            s.close()


def refreshes(peer) -> list[dict]:
    q = urllib.parse.urlencode({"type": "REFRESH_TOKEN", "max": "1000"})
    return peer.admin("GET", f"/events?{q}") or []


def test_after_login_each_family_refreshes_by_itself_for_five_token_lives(kc, tmp_path):
    """`login` as a person (device flow, approved on Keycloak's own pages), then the newest
    release of each family uses what it stored, as a laptop user would, for 5 token lives:
    the client refreshes by itself against https://auth.<domain> (Keycloak behind a TLS
    front with a test CA; `SSL_CERT_FILE` names that CA).

    0.11 and 0.12 make 0 failed calls. 0.7 to 0.10 trust only their built-in roots, so no
    test CA can stand in for the real Keycloak's public certificate: their own refresh
    cannot run here. What the test shows for them: the first life works from the legacy
    files `login` wrote, the refresh then fails on TLS (not on our files), and the refresh
    token in those files is one Keycloak accepts (refreshed here through the same front)."""
    if os.geteuid() != 0:
        pytest.fail("needs root (a mount namespace with its own /etc/hosts): run as root, as CI does")
    if not lr.BINARY.exists():
        pytest.fail(f"{lr.BINARY} is missing: run cargo build first")
    versions = list(clients.FAMILIES.values())
    for v in versions:
        clients.venv(v)
    kc.realm({"accessTokenLifespan": TOKEN_LIFE, "ssoSessionMaxLifespan": 600,
              "ssoSessionIdleTimeout": 300})
    front = AuthFront(kc.base_url, tmp_path)
    try:
        env = lr.clean_env(HOME=str(tmp_path), POLARS_CLOUD_DOMAIN=LOGIN_DOMAIN,
                           POLARS_CLOUD_CA_FILE=str(front.ca))
        for k in (*person.NOT_A_DESKTOP, "SSL_CERT_FILE"):
            env.pop(k, None)
        url = person.login(lr.BINARY, env, lr.ROOT / "tests" / "keycloak" / "approve.mjs",
                           wrap=front.in_namespace)
        assert f"auth.{LOGIN_DOMAIN}" in url, f"login's URL is not on the front: {url}"
        stored = tmp_path / ".config" / "polars_cloud"
        assert {"config.toml", "cloud_access_token", "cloud_refresh_token"} <= set(os.listdir(stored))
        before = len(refreshes(kc))
        duration = TOKEN_LIFE * LOGIN_LIVES
        # The stand-in API checks each bearer against Keycloak's keys.
        jwks = f"{kc.issuer}/protocol/openid-connect/certs"

        def run(v: str) -> subprocess.Popen:
            copy = tmp_path / f"config-{v}"
            shutil.copytree(stored, copy)
            argv = [str(clients.python(v)), str(lr.LONG_CLIENT), "--duration", str(duration),
                    "--jwks", jwks]
            return subprocess.Popen(
                front.in_namespace(argv),
                env=dict(env, POLARS_CLOUD_CONFIG_DIR=str(copy), SSL_CERT_FILE=str(front.ca)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        procs = {v: run(v) for v in versions}
        seen = {}
        for v, p in procs.items():
            out, err = p.communicate(timeout=duration + 120)
            [r] = lr.results(out)
            seen[v] = (r, err)
        refreshed = refreshes(kc)[: len(refreshes(kc)) - before]
        builtin = clients.FAMILIES["legacy-builtin-roots"]
        # The refresh token login wrote for 0.10 and older: Keycloak takes it.
        rt = (tmp_path / f"config-{builtin}" / "cloud_refresh_token").read_text()
        ours = subprocess.run(
            front.in_namespace(["curl", "-sS", "--cacert", str(front.ca), "-o", "/dev/null",
                                "-w", "%{http_code}", "-d", "grant_type=refresh_token",
                                "-d", "client_id=PolarsCloud", "--data-urlencode",
                                f"refresh_token={rt}",
                                f"https://auth.{LOGIN_DOMAIN}/realms/Polars/protocol/openid-connect/token"]),
            capture_output=True, text=True, timeout=30)
    finally:
        front.stop()
    for fam in ("config-toml", "legacy-files"):
        v = clients.FAMILIES[fam]
        r, err = seen[v]
        assert r["client_version"] == v, r
        assert r["failed"] == 0 and r["calls"] >= duration * 0.8, (v, r, err[-3000:])
        assert r["bearers"] >= LOGIN_LIVES, (v, r)
    # Each of the two refreshed by itself, 4 times or more, as the person alice.
    assert len(refreshed) >= 2 * (LOGIN_LIVES - 1), refreshed
    r, err = seen[builtin]
    # Its first life works from the files; its own refresh then fails on the test CA.
    assert r["client_version"] == builtin and r["ok"] >= 1 and r["failed"] > 0, (r, err[-3000:])
    assert all("InvalidCertificate" in e for e in r["errors"]), r["errors"]
    assert ours.stdout == "200", (ours.stdout, ours.stderr)
    print("\nafter login, 5 token lives:",
          json.dumps({v: {k: r[k] for k in ("calls", "ok", "failed", "bearers")}
                      for v, (r, _) in seen.items()}),
          f"keycloak refreshes: {len(refreshed)}")
