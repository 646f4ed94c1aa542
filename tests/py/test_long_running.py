"""`exec` with the REAL polars-cloud 0.12 client for many token lives (every release in
every mode: tests/py/test_client_matrix.py; injected pods on a real kubelet:
tests/py/test_node.py; the GitHub Action's `long-running` relay under a real runner
implementation: tests/py/test_act.py, with its simulated remainder here).

The test identity provider runs on loopback with 20 s tokens and a 45 s session maximum,
so a 100 s run spans five token lives and at least two ends of the IdP session. The
client calls the API once a second; the stand-in API accepts only tokens the IdP signed
and that have not expired (tests/py/client/long_client.py).

Slow: runs under `scripts/test.sh --slow` (POLARS_CLOUD_AUTH_SLOW=1), which CI uses; the
duration can be set with POLARS_CLOUD_AUTH_LONG_RUN (seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import idp_peer  # noqa: E402
from actions_runner import post_env, read_file_commands  # noqa: E402

SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
BINARY = ROOT / "target" / "debug" / "polars-cloud-auth"
PYTHON = ROOT / ".venv" / "bin" / "python"
LONG_CLIENT = HERE / "client" / "long_client.py"
SECRET = "Zq9+UNIQUE/SECRET=77&x"
TOKEN_TTL = 20
SESSION_MAX = 45
DURATION = float(os.environ.get("POLARS_CLOUD_AUTH_LONG_RUN", "100"))

pytestmark = pytest.mark.skipif(
    not SLOW, reason="slow: runs with scripts/test.sh --slow (POLARS_CLOUD_AUTH_SLOW=1)"
)


def Idp(ttl: int | None = None) -> idp_peer.Idp:
    """The test IdP on this machine's loopback, with short tokens and sessions."""
    return idp_peer.Idp({"test-sa": SECRET}, ttl or TOKEN_TTL, SESSION_MAX)


def results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARS_CLOUD")}
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env.update(extra)
    return env


def test_exec_keeps_its_child_working_across_token_lives_and_session_ends(tmp_path):
    """`exec` with service-account credentials (it renews itself) and `exec` next to a
    sidecar's token file (it follows the file), each running the real client for
    DURATION; the child holds neither the secret nor anything the IdP accepts."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first")
    idp = Idp()
    sidecar = None
    try:
        jwks = f"{idp.issuer}/protocol/openid-connect/certs"
        client = [str(PYTHON), str(LONG_CLIENT), "--duration", str(DURATION), "--jwks", jwks]
        base = clean_env(
            POLARS_CLOUD_ISSUER=idp.issuer,
            POLARS_CLOUD_CLIENT_ID="test-sa",
            POLARS_CLOUD_CLIENT_SECRET=SECRET,
            HOME=str(tmp_path),
        )
        token_file = tmp_path / "sidecar" / "token"
        sidecar = subprocess.Popen(
            [str(BINARY), "sidecar", "--token-file", str(token_file), "--listen", "127.0.0.1:0"],
            env=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(100):
            if token_file.exists():
                break
            time.sleep(0.1)
        # The child of the second exec gets no credentials at all: only the file.
        file_env = {k: v for k, v in base.items() if k != "POLARS_CLOUD_CLIENT_SECRET"}
        runs = {
            "credentials": subprocess.Popen(
                [str(BINARY), "exec", "--", *client],
                env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            ),
            "token-file": subprocess.Popen(
                [str(BINARY), "exec", "--min-valid", "5s", "--token-file", str(token_file), "--", *client],
                env=file_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            ),
        }
        figures = {}
        for name, p in runs.items():
            out, err = p.communicate(timeout=DURATION + 90)
            text = err.decode(errors="replace")
            assert p.returncode == 0, f"{name}: exit {p.returncode}\n{out.decode()}\n{text[-4000:]}"
            [r] = results(out.decode())
            assert r["failed"] == 0 and r["calls"] >= DURATION * 0.8, (name, r)
            assert r["bearers"] >= int(DURATION // TOKEN_TTL), (name, r)
            assert SECRET not in text and SECRET not in out.decode()
            figures[name] = r
        grants = [q["params"].get("grant_type") for q in idp.requests() if q["path"].endswith("/token")]
        assert grants.count("password") >= 3, grants  # the session ended for both renewers
        print("\nexec:", json.dumps(figures))
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(10)
        idp.stop()


def test_github_action_long_running_what_act_cannot_show(tmp_path):
    """The action's steps run by hand, for what tests/py/test_act.py (the action under act)
    cannot show: the default export's token fails a later step after its life (the control
    for `long-running`); the relay's process environment and the client's config.toml hold
    no secret; post, run as the runner runs it (with the job's exported environment), stops
    the relay, removes its directory, revokes both sessions and gives the later post steps
    the job's network back."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first")
    idp = Idp()
    try:
        jwks = f"{idp.issuer}/protocol/openid-connect/certs"
        runner = tmp_path / "runner"
        temp = runner / "_temp"
        temp.mkdir(parents=True)
        files = {n: runner / n.lower() for n in ("GITHUB_ENV", "GITHUB_STATE", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")}

        def step_env(**extra: str) -> dict[str, str]:
            env = clean_env(RUNNER_TEMP=str(temp), GITHUB_WORKSPACE=str(runner / "work"), HOME=str(tmp_path))
            env.update({k: str(v) for k, v in files.items()})
            env.update(extra)
            return env

        inputs = {
            "INPUT_CLIENT-ID": "test-sa",
            "INPUT_CLIENT-SECRET": SECRET,
            "INPUT_ISSUER": idp.issuer,
            "INPUT_EXPORT-ENV": "true",
            "INPUT_RETRIES": "2",
        }
        def main(long_running: bool) -> tuple[str, dict[str, str]]:
            for f in files.values():
                f.write_text("")
            out = subprocess.run(
                [str(BINARY), "github-action", "main"],
                env=step_env(**inputs, **{"INPUT_LONG-RUNNING": str(long_running).lower()}),
                capture_output=True, timeout=60,
            )
            log = out.stdout.decode() + out.stderr.decode()
            assert out.returncode == 0, log
            assert SECRET not in log
            return log, read_file_commands(files["GITHUB_ENV"])

        def later_step(exported: dict[str, str], duration: float) -> dict[str, Any]:
            out = subprocess.run(
                [str(PYTHON), str(LONG_CLIENT), "--duration", str(duration), "--jwks", jwks],
                env=step_env(**exported), capture_output=True, timeout=duration + 90,
            )
            [r] = results(out.stdout.decode())
            return r

        # The control: the default export is one token; a later step after its expiry fails.
        log, exported = main(long_running=False)
        assert "POLARS_CLOUD_ACCESS_TOKEN" in exported
        assert "long-running: true" in files["GITHUB_STEP_SUMMARY"].read_text()
        assert "long-running: true" in log
        time.sleep(TOKEN_TTL + 1)
        r = later_step(exported, 3)
        assert r["ok"] == 0 and any("expired" in e for e in r["errors"]), r

        # long-running: the later step starts after the first token's life and runs on.
        log, exported = main(long_running=True)
        assert "POLARS_CLOUD_ACCESS_TOKEN" not in exported, exported
        assert {"POLARS_CLOUD_CONFIG_DIR", "POLARS_CLOUD_DOMAIN", "HTTPS_PROXY", "SSL_CERT_FILE"} <= set(exported)
        state = read_file_commands(files["GITHUB_STATE"])
        pid = int(state["relay_pid"])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert SECRET.encode() not in environ, "the relay's environment holds the secret"
        # A later step that starts after the first token's life and runs across several
        # lives is tests/py/test_act.py's long-running job, under a real runner (act).
        r = later_step(exported, 3)
        assert r["failed"] == 0 and r["calls"] >= 2, r
        config_dir = Path(exported["POLARS_CLOUD_CONFIG_DIR"])
        assert SECRET.encode() not in (config_dir / "config.toml").read_bytes()

        # Post as the runner runs it: with the job's environment (main's exports).
        post_files = {n: runner / f"post-{n.lower()}" for n in files}
        for f in post_files.values():
            f.write_text("")
        post = subprocess.run(
            [str(BINARY), "github-action", "post"],
            env=step_env(**inputs, **post_env(exported, state),
                         **{k: str(v) for k, v in post_files.items()}),
            capture_output=True, timeout=60,
        )
        post_log = post.stdout.decode() + post.stderr.decode()
        assert post.returncode == 0, post_log
        assert "::warning::" not in post_log, post_log
        assert not Path(f"/proc/{pid}").exists(), "the relay still runs after post"
        assert not config_dir.exists(), "the relay's directory outlived post"
        revokes = [q for q in idp.requests() if q["path"].endswith("/revoke")]
        assert len(revokes) == 2, revokes  # main's session, and the relay's own
        assert state["refresh_token"] in [q["params"].get("token") for q in revokes]
        # The post steps of actions used before ours run after it, with the job's
        # environment as our post left it: no dead proxy, no missing trust store.
        after = {**exported, **read_file_commands(post_files["GITHUB_ENV"])}
        assert after["HTTPS_PROXY"] == after["https_proxy"] == "", after
        assert Path(after["SSL_CERT_FILE"]).is_file(), after
        relay_log = (temp / "polars-cloud-auth-relay.log").read_text()
        assert SECRET not in relay_log
    finally:
        idp.stop()

