"""Every claimed polars-cloud release in every delivery mode that runs outside a pod: the
REAL client (each release from PyPI in a venv of its own, tests/py/clients.py) calls the
API once a second through `exec` with credentials, `exec` next to a sidecar's token file,
and a later step of the GitHub Action with `long-running: true`, with the real binary and
the test IdP (20 s tokens, 30 s session maximum, so the run spans token lives and session
ends). The stand-in API accepts only tokens the IdP signed and that have not expired.

Quick (plain `scripts/test.sh`): the newest release of each behaviour family, 50 s.
Slow (POLARS_CLOUD_AUTH_SLOW=1): every release in tests/py/requirements-clients.txt, 100 s.
Injected pods: tests/py/test_long_running.py (slow, needs root), over the families.

The controls prove the matrix can fail: each family fails with what the old default gave
it (0.7 to 0.11: a config dir with config.toml alone; 0.12: config.toml with no route to
the relay, as init-only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import clients  # noqa: E402
import idp_peer  # noqa: E402
import person  # noqa: E402
from actions_runner import post_env, read_file_commands  # noqa: E402

SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
BINARY = ROOT / "target" / "debug" / "polars-cloud-auth"
LONG_CLIENT = HERE / "client" / "long_client.py"
SECRET = "Zq9+MATRIX/SECRET=41&y"
TOKEN_TTL = 20
SESSION_MAX = 30
QUICK_DURATION = float(os.environ.get("POLARS_CLOUD_AUTH_MATRIX_RUN", "50"))
SLOW_DURATION = float(os.environ.get("POLARS_CLOUD_AUTH_LONG_RUN", "100"))
MODES = ("exec", "exec-sidecar", "action")
# Runs at once in the slow matrix: all of them (2 cores suffice, the clients mostly sleep:
# 27 runs, 128 s measured).
SLOW_PARALLEL = int(os.environ.get("POLARS_CLOUD_AUTH_MATRIX_PARALLEL", "32"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARS_CLOUD")}
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "SSL_CERT_FILE"):
        env.pop(k, None)
    env.update(extra)
    return env


class Peers:
    """One IdP and one sidecar (its token file is what `exec-sidecar` follows)."""

    RENEW_AT = "0.25"

    def __init__(self, tmp: Path) -> None:
        if not BINARY.exists():
            pytest.fail(f"{BINARY} is missing: run cargo build first (scripts/test.sh does)")
        self.tmp = tmp
        self.idp = idp_peer.Idp({"test-sa": SECRET}, TOKEN_TTL, SESSION_MAX)
        self.jwks = f"{self.idp.issuer}/protocol/openid-connect/certs"
        self.creds = clean_env(
            POLARS_CLOUD_ISSUER=self.idp.issuer,
            POLARS_CLOUD_CLIENT_ID="test-sa",
            POLARS_CLOUD_CLIENT_SECRET=SECRET,
            HOME=str(tmp),
        )
        self.token_file = tmp / "sidecar" / "token"
        self.sidecar = subprocess.Popen(
            # Renewing at a quarter of the 20 s life leaves 15 s, as Keycloak's 300 s tokens
            # at the default 80% leave 60 s: `exec` hands each renewal on before a client
            # would refresh (at 5 to 10 s left; 0.10 and older cannot refresh through it).
            [str(BINARY), "sidecar", "--token-file", str(self.token_file), "--listen", "127.0.0.1:0",
             "--renew-at", self.RENEW_AT],
            env=self.creds, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(200):
            if self.token_file.exists():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the sidecar wrote no token file")

    def stop(self) -> str:
        self.sidecar.terminate()
        _, err = self.sidecar.communicate(timeout=20)
        self.idp.stop()
        return err.decode(errors="replace")


def wrapped_client(version: str, duration: float, out: Path, control: str | None = None) -> list[str]:
    """The client under `sh`: its environment and config dir are saved to `out` before and
    after the run, so the test can look for the secret and at the files. A control first
    takes from the client what the old default did not give it."""
    client = [str(clients.python(version)), str(LONG_CLIENT), "--duration", str(duration)]
    prelude = ""
    if control == "config-toml-only":
        # What the old default gave every client: config.toml, no legacy files.
        prelude = ('d=$(mktemp -d); cp "$POLARS_CLOUD_CONFIG_DIR/config.toml" "$d/"; '
                   'export POLARS_CLOUD_CONFIG_DIR="$d"; ')
    elif control == "no-relay-route":
        # config.toml with no way to the relay (init-only's situation).
        prelude = "unset HTTPS_PROXY https_proxy; "
    script = (
        f'{prelude}env > "$OUT/env"; '
        'cp -r "$POLARS_CLOUD_CONFIG_DIR" "$OUT/config-start" 2>/dev/null; '
        '"$@"; rc=$?; '
        'cp -r "$POLARS_CLOUD_CONFIG_DIR" "$OUT/config-end" 2>/dev/null; exit $rc'
    )
    return ["/bin/sh", "-c", script, "client", *client]


def run_mode(peers: Peers, version: str, mode: str, duration: float,
             control: str | None = None) -> dict[str, Any]:
    """One client release in one mode; answers what was seen."""
    out = Path(tempfile.mkdtemp(prefix=f"matrix-{version}-{mode}-", dir=peers.tmp))
    jwks = ["--jwks", peers.jwks]
    env = dict(peers.creds, OUT=str(out))
    log = ""
    if mode == "exec":
        argv = [str(BINARY), "exec", "--", *wrapped_client(version, duration, out, control), *jwks]
        p = subprocess.run(argv, env=env, capture_output=True, timeout=duration + 120)
    elif mode == "exec-sidecar":
        env.pop("POLARS_CLOUD_CLIENT_SECRET")  # only the sidecar's file
        argv = [str(BINARY), "exec", "--min-valid", "5s", "--token-file", str(peers.token_file),
                "--", *wrapped_client(version, duration, out, control), *jwks]
        p = subprocess.run(argv, env=env, capture_output=True, timeout=duration + 120)
    elif mode == "action":
        p, log = run_action(peers, version, duration, out, control)
    else:
        raise ValueError(mode)
    stdout, stderr = p.stdout.decode(), p.stderr.decode(errors="replace")
    results = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {"version": version, "mode": mode, "rc": p.returncode, "results": results,
            "log": stderr + log, "out": out}


def run_action(peers: Peers, version: str, duration: float, out: Path,
               control: str | None) -> tuple[subprocess.CompletedProcess, str]:
    """main with `long-running: true`; a later step that starts after the first token has
    expired runs the client; post stops the relay."""
    runner = out / "runner"
    temp = runner / "_temp"
    temp.mkdir(parents=True)
    files = {n: runner / n.lower() for n in ("GITHUB_ENV", "GITHUB_STATE", "GITHUB_OUTPUT",
                                             "GITHUB_STEP_SUMMARY")}
    for f in files.values():
        f.write_text("")

    def step_env(**extra: str) -> dict[str, str]:
        env = clean_env(RUNNER_TEMP=str(temp), GITHUB_WORKSPACE=str(runner / "work"),
                        HOME=str(peers.tmp), OUT=str(out))
        env.update({k: str(v) for k, v in files.items()})
        env.update(extra)
        return env

    inputs = {"INPUT_CLIENT-ID": "test-sa", "INPUT_CLIENT-SECRET": SECRET,
              "INPUT_ISSUER": peers.idp.issuer, "INPUT_EXPORT-ENV": "true",
              "INPUT_RETRIES": "2", "INPUT_LONG-RUNNING": "true"}
    main = subprocess.run([str(BINARY), "github-action", "main"], env=step_env(**inputs),
                          capture_output=True, timeout=60)
    log = main.stdout.decode() + main.stderr.decode(errors="replace")
    assert main.returncode == 0, log
    exported = read_file_commands(files["GITHUB_ENV"])
    state = read_file_commands(files["GITHUB_STATE"])
    try:
        time.sleep(TOKEN_TTL + 1)
        later = subprocess.run(
            [*wrapped_client(version, duration, out, control), "--jwks", peers.jwks],
            env=step_env(**exported), capture_output=True, timeout=duration + 120,
        )
    finally:
        # Post as the runner runs it: with the job's exports (actions_runner.post_env).
        post = subprocess.run([str(BINARY), "github-action", "post"],
                              env=step_env(**inputs, **post_env(exported, state)),
                              capture_output=True, timeout=60)
        post_log = post.stdout.decode() + post.stderr.decode(errors="replace")
        log += post_log
        assert post.returncode == 0 and "::warning::" not in post_log, post_log
        relay_log = temp / "polars-cloud-auth-relay.log"
        log += relay_log.read_text() if relay_log.exists() else ""
    return later, log


def check(seen: dict[str, Any], duration: float) -> dict[str, Any]:
    """What every (release, mode) must show; answers the figures for the report."""
    name = f"{seen['version']} {seen['mode']}"
    assert seen["rc"] == 0 and len(seen["results"]) == 1, (
        f"{name}: exit {seen['rc']} with {seen['results']}\n{seen['log'][-4000:]}")
    [r] = seen["results"]
    assert r["client_version"] == seen["version"], (name, r)
    assert r["failed"] == 0 and r["calls"] >= duration * 0.8, (name, r)
    assert r["outside"] == [], (name, r)
    assert r["bearers"] >= int(duration // TOKEN_TTL), (name, r)
    # The client secret is nowhere the app can see: its environment, its config dir
    # before and after, what it or we printed.
    out: Path = seen["out"]
    assert (out / "env").is_file(), name
    for p in out.rglob("*"):
        if p.is_file() and "runner" not in p.parts:
            assert SECRET.encode() not in p.read_bytes(), (name, p)
    assert SECRET not in seen["log"], name
    # The config dir holds the files of both generations, the legacy ones bare.
    end = out / "config-end"
    assert (end / "config.toml").is_file(), (name, sorted(os.listdir(end)))
    for legacy in ("cloud_access_token", "cloud_refresh_token"):
        text = (end / legacy).read_text()
        assert text and text == text.strip(), (name, legacy)
    family = clients.family_of(seen["version"])
    refreshed_at_relay = f"client_version={seen['version']}" in seen["log"]
    if family == "config-toml":
        # 0.12 refreshes through the relay, which logs who it is once.
        assert refreshed_at_relay, (name, seen["log"][-3000:])
    else:
        # Older clients never needed to refresh: the renewals kept their files fresh.
        assert not refreshed_at_relay, (name, seen["log"][-3000:])
    return {"calls": r["calls"], "ok": r["ok"], "bearers": r["bearers"]}


def check_control(seen: dict[str, Any], control: str) -> dict[str, Any]:
    """A control must fail."""
    [r] = seen["results"]
    assert r["client_version"] == seen["version"], r
    if control == "config-toml-only":
        assert r["ok"] == 0 and any("not found" in e for e in r["errors"]), r
    else:
        assert r["ok"] >= 1 and r["failed"] > 0, r
    return {"calls": r["calls"], "ok": r["ok"]}


def run_matrix(tmp: Path, versions: list[str], duration: float, parallel: int) -> None:
    with ThreadPoolExecutor(2) as ex:  # install (or find cached) before the clock matters
        list(ex.map(clients.venv, versions))
    peers = Peers(tmp)
    jobs: dict[tuple[str, str], Any] = {}
    controls: dict[tuple[str, str], Any] = {}
    try:
        with ThreadPoolExecutor(parallel) as ex:
            for v in versions:
                for mode in MODES:
                    jobs[(v, mode)] = ex.submit(run_mode, peers, v, mode, duration)
            for fam, v in clients.FAMILIES.items():
                if v not in versions:
                    continue
                if fam == "config-toml":
                    controls[(v, "no-relay-route")] = ex.submit(
                        run_mode, peers, v, "exec", TOKEN_TTL + 5, "no-relay-route")
                else:
                    controls[(v, "config-toml-only")] = ex.submit(
                        run_mode, peers, v, "exec", 5, "config-toml-only")
            seen = {k: f.result() for k, f in jobs.items()}
            seen_controls = {k: f.result() for k, f in controls.items()}
    finally:
        sidecar_log = peers.stop()
    assert SECRET not in sidecar_log
    figures = {f"{v} {mode}": check(s, duration) for (v, mode), s in seen.items()}
    figures.update({f"{v} control {c}": check_control(s, c) for (v, c), s in seen_controls.items()})
    print("\nclient matrix:", json.dumps(figures))
    report = os.environ.get("POLARS_CLOUD_AUTH_MATRIX_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=1))


def test_the_newest_release_of_each_family_works_in_every_mode_and_fails_in_the_old_default(tmp_path):
    run_matrix(tmp_path, list(clients.FAMILIES.values()), QUICK_DURATION, 12)


@pytest.mark.skipif(not SLOW, reason="slow: runs with scripts/test.sh --slow (POLARS_CLOUD_AUTH_SLOW=1)")
def test_every_claimed_release_works_in_every_mode(tmp_path):
    run_matrix(tmp_path, clients.ALL, SLOW_DURATION, SLOW_PARALLEL)


def test_the_release_list_is_grouped_in_families_and_a_newer_release_gets_the_newest():
    assert clients.ALL == sorted(clients.ALL, key=clients._version_key)
    assert set(clients.FAMILIES) == {"config-toml", "legacy-files", "legacy-builtin-roots"}
    assert clients.FAMILIES["config-toml"] == clients.ALL[-1]
    assert clients.family_of("0.13.0") == "config-toml"
    with pytest.raises(ValueError, match="older than every claimed family"):
        clients.family_of("0.6.3")
    with pytest.raises(ValueError, match="requirements-clients.txt"):
        clients.venv("0.1.0")


def test_when_renewals_come_late_0_11_refreshes_through_the_relay_and_0_10_cannot(tmp_path):
    """What an older client does when it must refresh: `exec` next to a sidecar that
    renews only at 80% of a 20 s life (4 s left, later than the clients' 5 to 9 s).
    0.11 refreshes through the relay with its handle and keeps working (the relay names
    it); 0.10 cannot complete the TLS handshake with the relay (built-in roots only), so
    its handle is never sent, and some calls fail; the relay says a client refused its
    CA, and `exec` warns that the file is renewed too late. Nothing reaches the IdP but
    our own renewals."""
    legacy, builtin = clients.FAMILIES["legacy-files"], clients.FAMILIES["legacy-builtin-roots"]
    peers = LatePeers(tmp_path)
    try:
        with ThreadPoolExecutor(2) as ex:
            runs = {v: ex.submit(run_mode, peers, v, "exec-sidecar", 30.0) for v in (legacy, builtin)}
            seen = {v: f.result() for v, f in runs.items()}
        requests = peers.idp.requests()
    finally:
        peers.stop()
    [r] = seen[legacy]["results"]
    assert r["failed"] == 0 and r["calls"] >= 24, r
    assert f"client_version={legacy}" in seen[legacy]["log"], seen[legacy]["log"][-3000:]
    assert "renewed later than" in seen[legacy]["log"]
    [r] = seen[builtin]["results"]
    assert r["failed"] > 0 and r["ok"] > 0, r
    assert "refused the relay's certificate" in seen[builtin]["log"], seen[builtin]["log"][-3000:]
    for q in requests:
        if q["path"].endswith("/token"):
            refresh = (q.get("params") or {}).get("refresh_token") or ""
            assert "pod-local refresh handle" not in jwt_payload(refresh), q


def jwt_payload(token: str) -> str:
    import base64

    try:
        part = token.split(".")[1]
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
    except (IndexError, ValueError):
        return ""


class LatePeers(Peers):
    """Peers whose sidecar renews at the default 80%: 4 s before a 20 s token ends."""

    RENEW_AT = "0.8"


def test_a_token_file_nobody_renews_gives_every_family_one_token_life(tmp_path):
    """`exec --token-file F` where F was written once (by `init`, no sidecar): the child's
    config directory has the files of both generations, but nothing renews them, so every
    family works for one token life and then fails (0.12 and 0.11 at their refresh, which
    the relay can only answer with the expired token; 0.10 at its own)."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first (scripts/test.sh does)")
    versions = list(clients.FAMILIES.values())
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(clients.venv, versions))
    idp = idp_peer.Idp({"test-sa": SECRET}, TOKEN_TTL, SESSION_MAX)
    try:
        env = clean_env(POLARS_CLOUD_ISSUER=idp.issuer, POLARS_CLOUD_CLIENT_ID="test-sa",
                        POLARS_CLOUD_CLIENT_SECRET=SECRET, HOME=str(tmp_path))
        token_file = tmp_path / "init" / "token"
        init = subprocess.run([str(BINARY), "init", "--token-file", str(token_file)], env=env,
                              capture_output=True, timeout=60)
        assert init.returncode == 0, init.stderr.decode()
        env.pop("POLARS_CLOUD_CLIENT_SECRET")

        def one(v: str) -> dict[str, Any]:
            out = tmp_path / v
            out.mkdir()
            argv = [str(BINARY), "exec", "--min-valid", "5s", "--token-file", str(token_file),
                    "--", *wrapped_client(v, TOKEN_TTL + 10, out),
                    "--jwks", f"{idp.issuer}/protocol/openid-connect/certs"]
            p = subprocess.run(argv, env=dict(env, OUT=str(out)), capture_output=True,
                               timeout=TOKEN_TTL + 120)
            [r] = [json.loads(x) for x in p.stdout.decode().splitlines() if x.startswith("{")]
            return r

        with ThreadPoolExecutor(len(versions)) as ex:
            seen = dict(zip(versions, ex.map(one, versions)))
    finally:
        idp.stop()
    for v, r in seen.items():
        assert r["client_version"] == v, r
        assert r["ok"] >= 5 and r["failed"] > 0 and r["first_error_at_s"] <= TOKEN_TTL, (v, r)
    print("\none token life:", json.dumps({v: (r["ok"], r["calls"]) for v, r in seen.items()}))


def test_what_login_stores_serves_every_family(tmp_path):
    """`login` (device flow, approved through the test IdP's own pages) stores config.toml
    and the legacy files; the newest release of each family signs in with them (each from
    a copy, as the clients write back). Refreshing by themselves needs a JWT refresh token
    (Keycloak's); the test IdP's are opaque, so the run stays within the first token."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first (scripts/test.sh does)")
    versions = list(clients.FAMILIES.values())
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(clients.venv, versions))
    idp = idp_peer.Idp({"test-sa": SECRET}, TOKEN_TTL, SESSION_MAX)
    try:
        env = clean_env(POLARS_CLOUD_ISSUER=idp.issuer, HOME=str(tmp_path))
        for k in person.NOT_A_DESKTOP:
            env.pop(k, None)
        person.login(BINARY, env, ROOT / "tests" / "idp" / "approve.mjs")
        stored = tmp_path / ".config" / "polars_cloud"
        assert {"config.toml", "cloud_access_token", "cloud_refresh_token"} <= set(os.listdir(stored))

        def one(v: str) -> dict[str, Any]:
            copy = tmp_path / f"config-{v}"
            shutil.copytree(stored, copy)
            p = subprocess.run(
                [str(clients.python(v)), str(LONG_CLIENT), "--duration", "5",
                 "--jwks", f"{idp.issuer}/protocol/openid-connect/certs"],
                env=dict(env, POLARS_CLOUD_CONFIG_DIR=str(copy)), capture_output=True,
                text=True, timeout=120)
            [r] = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            return r

        with ThreadPoolExecutor(len(versions)) as ex:
            seen = dict(zip(versions, ex.map(one, versions)))
    finally:
        idp.stop()
    for v, r in seen.items():
        assert r["client_version"] == v and r["failed"] == 0 and r["ok"] >= 4, (v, r)
