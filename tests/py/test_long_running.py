"""Injected pods whose REAL polars-cloud client runs for many token lives (0.12 in the
pods below; the newest release of every behaviour family in
test_injected_pods_serve_every_client_family, from tests/py/clients.py).

The pod spec is what `polars-cloud-auth inject` writes (the webhook calls the same
function); tests/py/kubelet.py runs it as a kubelet would (network and mount namespaces,
uids, fsGroup, hostAliases, sysctls, native-sidecar start order). The test identity
provider runs on the pod's loopback with 20 s tokens and a 45 s session maximum, so a
100 s run spans five token lives and at least two ends of the IdP session. The app's
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import clients  # noqa: E402
import idp_peer  # noqa: E402
import kubelet  # noqa: E402

SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
BINARY = ROOT / "target" / "debug" / "polars-cloud-auth"
PYTHON = ROOT / ".venv" / "bin" / "python"
# The family venvs of the pods' apps: under the checkout, since the emulated containers
# cannot see /root (tests/py/kubelet.py), where the default cache is.
POD_CLIENTS = ROOT / "target" / "py-clients"
LONG_CLIENT = HERE / "client" / "long_client.py"
SECRET = "Zq9+UNIQUE/SECRET=77&x"
TOKEN_TTL = 20
SESSION_MAX = 45
DURATION = float(os.environ.get("POLARS_CLOUD_AUTH_LONG_RUN", "100"))

pytestmark = pytest.mark.skipif(
    not SLOW, reason="slow: runs with scripts/test.sh --slow (POLARS_CLOUD_AUTH_SLOW=1)"
)


def require_peers() -> None:
    why = kubelet.available()
    if why:
        pytest.fail(why)
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first (scripts/test.sh does)")


def Idp(net: kubelet.Network | None = None, ttl: int | None = None) -> idp_peer.Idp:
    """The test IdP with short tokens and sessions: inside a pod's network namespace when
    given one, else on this machine's loopback (for `exec` and the action, which run
    outside pods)."""
    return idp_peer.Idp({"test-sa": SECRET}, ttl or TOKEN_TTL, SESSION_MAX, net)


def app_container(name: str, duration: float, jwks: str, processes: int = 1,
                  python: Path = PYTHON) -> dict[str, Any]:
    client = [str(python), str(LONG_CLIENT), "--duration", str(duration), "--jwks", jwks]
    if processes == 1:
        command = client
    else:
        # Several client processes in one container, sharing its config directory.
        one = " ".join(client)
        command = ["/bin/sh", "-c", " & ".join([one] * processes) + " & wait"]
    return {"name": name, "image": "python:3.12-slim", "command": command}


def injected(manifest: dict[str, Any], issuer: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(BINARY), "inject", "--issuer", issuer, "-"],
        input=yaml.safe_dump(manifest).encode(),
        capture_output=True,
        check=True,
    )
    return yaml.safe_load(out.stdout)


def pod_manifest(
    name: str,
    containers: list[dict[str, Any]],
    mode: str,
    run_as: int,
    fs_group: int | None,
) -> dict[str, Any]:
    security: dict[str, Any] = {"runAsUser": run_as, "runAsGroup": run_as}
    if fs_group is not None:
        security["fsGroup"] = fs_group
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"polars.cloud/inject": "true"},
            "annotations": {"polars.cloud/mode": mode, "polars.cloud/min-valid": "10s"},
        },
        "spec": {"securityContext": security, "containers": containers},
    }


def jwt_payload(token: str | None) -> str:
    import base64

    try:
        part = (token or "").split(".")[1]
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
    except (IndexError, ValueError):
        return ""


def results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_pod(
    name: str,
    mode: str,
    run_as: int,
    fs_group: int | None,
    processes: int = 1,
    duration: float = DURATION,
    annotations: dict[str, str] | None = None,
    ttl: int | None = None,
    python: Path = PYTHON,
):
    """Runs one injected pod to the end of its app container; returns what was seen."""
    net = kubelet.Network()
    idp = Idp(net, ttl)
    try:
        jwks = f"{idp.issuer}/protocol/openid-connect/certs"
        manifest = pod_manifest(
            name, [app_container("app", duration, jwks, processes, python)], mode, run_as, fs_group
        )
        manifest["metadata"]["annotations"].update(annotations or {})
        spec = injected(manifest, idp.issuer)
        images = {c["image"]: str(BINARY) for c in spec["spec"]["initContainers"]}
        creds = {"client_id": "test-sa", "client_secret": SECRET}
        pod = kubelet.Pod(
            spec, images=images, secrets={"polars-cloud-credentials": creds}, network=net
        )
        try:
            pod.start()
            rc = pod.wait("app", duration + 90)
            app = pod.container("app")
            # Our container is still up: what its /metrics says about the app's client.
            scrape = net.run(["curl", "-sf", "http://127.0.0.1:8471/metrics"], check=False)
            return {
                "metrics": scrape.stdout.decode(errors="replace"),
                "rc": rc,
                "results": results(app.stdout()),
                "app_stderr": app.stderr(),
                "ours": {c.name: c.stderr() for c in pod.containers if c.name != "app"},
                "requests": idp.requests(),
                "spec": spec,
                "files": snapshot(pod, "app"),
            }
        finally:
            pod.cleanup()
    finally:
        idp.stop()
        net.close()


def snapshot(pod: kubelet.Pod, container: str) -> dict[str, bytes]:
    """Every file the container can see through its volumes."""
    out: dict[str, bytes] = {}
    spec = next(c for c in pod.spec["containers"] + pod.spec.get("initContainers", []) if c["name"] == container)
    for m in spec.get("volumeMounts", []):
        root = pod.volume_dirs[m["name"]]
        for p in root.rglob("*"):
            if p.is_file():
                out[f"{m['mountPath']}/{p.relative_to(root)}"] = p.read_bytes()
    return out


def check(seen: dict[str, Any], processes: int = 1) -> dict[str, Any]:
    """The assertions every run must pass; returns figures for the report."""
    res = seen["results"]
    assert seen["rc"] == 0 and len(res) == processes, (
        f"app exited {seen['rc']} with {res}\n--- app stderr\n{seen['app_stderr'][-3000:]}"
        + "".join(f"\n--- {k}\n{v[-3000:]}" for k, v in seen["ours"].items())
    )
    for r in res:
        assert r["failed"] == 0 and r["calls"] >= DURATION * 0.8, r
        assert r["outside"] == [], r
        # The client really moved through tokens: one per life at least.
        assert r["bearers"] >= int(DURATION // TOKEN_TTL), r
    token_requests = [q for q in seen["requests"] if q["path"].endswith("/token")]
    grants = [q["params"].get("grant_type") for q in token_requests]
    # The IdP session ended (SSO Session Max) at least once: a new password grant.
    assert grants.count("password") >= 2, grants
    # The app's handles never reach the IdP (they are worth nothing there anyway).
    for q in token_requests:
        assert "pod-local refresh handle" not in jwt_payload(q["params"].get("refresh_token")), q
    # The app container never holds the client secret: not in its environment, its
    # files or what it printed.
    app = next(c for c in seen["spec"]["spec"]["containers"] if c["name"] == "app")
    assert all(SECRET not in str(e.get("value", "")) for e in app.get("env", []))
    for path, data in seen["files"].items():
        assert SECRET.encode() not in data, path
    assert SECRET not in seen["app_stderr"]
    for text in seen["ours"].values():
        assert SECRET not in text
    return {
        "calls": sum(r["calls"] for r in res),
        "failed": sum(r["failed"] for r in res),
        "idp_token_requests": len(token_requests),
        "password_grants": grants.count("password"),
        "refreshes": grants.count("refresh_token"),
    }


# (name, mode, app uid, fsGroup, client processes in the app container)
PODS = [
    ("native-uid1000", "native", 1000, None, 1),
    ("native-fsgroup", "native", 1000, 2000, 1),
    ("classic-uid1000", "classic", 1000, None, 1),
    ("classic-fsgroup", "classic", 1000, 2000, 1),
    ("native-4-processes", "native", 1000, None, 4),
]


def test_injected_pods_keep_their_real_client_working_across_token_lives_and_session_ends():
    """Five pods at once (the run takes one DURATION): native and classic, with and
    without fsGroup, and one with four client processes sharing a config directory."""
    require_peers()
    with ThreadPoolExecutor(len(PODS)) as ex:
        futures = {name: ex.submit(run_pod, name, mode, uid, fsg, n) for name, mode, uid, fsg, n in PODS}
        seen = {name: f.result() for name, f in futures.items()}
    figures = {}
    for name, mode, uid, fsg, n in PODS:
        figures[name] = check(seen[name], processes=n)
    # One IdP session per pod, not per process: four processes cost the IdP what one
    # does (the same renewal schedule; allow one renewal of difference for timing).
    one, four = figures["native-uid1000"], figures["native-4-processes"]
    assert abs(four["idp_token_requests"] - one["idp_token_requests"]) <= 2, figures
    print("\nlong-running pods:", json.dumps(figures))


def test_injected_pods_serve_every_client_family():
    """One native pod per behaviour family (the newest release of each), at once, for
    DURATION: the sidecar's renewals rewrite the legacy token files that 0.7 to 0.11 read
    at every call, beside the config.toml 0.12 refreshes from; 0 failed calls for all."""
    require_peers()
    pythons = {v: clients.python(v, root=POD_CLIENTS) for v in clients.FAMILIES.values()}
    with ThreadPoolExecutor(len(pythons)) as ex:
        futures = {v: ex.submit(run_pod, f"family-{v.replace('.', '-')}", "native", 1000, None,
                                python=py) for v, py in pythons.items()}
        seen = {v: f.result() for v, f in futures.items()}
    figures = {}
    for family, v in clients.FAMILIES.items():
        figures[v] = check(seen[v])
        [r] = seen[v]["results"]
        assert r["client_version"] == v, r
        files = seen[v]["files"]
        for legacy in ("cloud_access_token", "cloud_refresh_token"):
            [data] = [d for p, d in files.items() if p.endswith("/" + legacy)]
            assert data and data == data.strip(), (v, legacy)
        relay_log = "".join(seen[v]["ours"].values())
        refreshed = f"client_version={v}" in relay_log
        assert refreshed == (family == "config-toml"), (v, relay_log[-2000:])
        # The sidecar tells a later `doctor` which client it served: 0.12 refreshes
        # through it; the older families never needed to (their files were fresh).
        info = f'polars_cloud_auth_client_info{{version="{v}",family="{family}",served="true"}} 1'
        assert "# TYPE polars_cloud_auth_client_info gauge" in seen[v]["metrics"], seen[v]["metrics"]
        assert (info in seen[v]["metrics"]) == (family == "config-toml"), seen[v]["metrics"]
    print("\nlong-running pods per family:", json.dumps(figures))


def test_without_the_relay_the_client_finds_no_token_and_init_only_ends_with_the_first_token():
    """The controls, and init-only's documented limit, for 0.12 and 0.11 (the two families
    that refresh): with `polars.cloud/relay: "false"` the client finds no token at all (no
    release reads the token file); in init-only mode (no sidecar to renew the files or
    answer refreshes) it works until its first token nears expiry, then fails."""
    require_peers()
    pythons = {"0.12.0": PYTHON,
               clients.FAMILIES["legacy-files"]: clients.python(clients.FAMILIES["legacy-files"],
                                                                root=POD_CLIENTS)}
    with ThreadPoolExecutor(2 * len(pythons)) as ex:
        off = {v: ex.submit(run_pod, f"relay-off-{v.replace('.', '-')}", "native", 1000, None,
                            duration=5, annotations={"polars.cloud/relay": "false"}, python=py)
               for v, py in pythons.items()}
        init_only = {v: ex.submit(run_pod, f"init-only-{v.replace('.', '-')}", "init-only", 1000,
                                  None, duration=TOKEN_TTL + 10, python=py)
                     for v, py in pythons.items()}
        off = {v: f.result() for v, f in off.items()}
        init_only = {v: f.result() for v, f in init_only.items()}
    for v in pythons:
        [r] = off[v]["results"]
        assert r["client_version"] == v and r["ok"] == 0, r
        assert any("not found" in e for e in r["errors"]), r
        [r] = init_only[v]["results"]
        assert r["client_version"] == v and r["ok"] >= 5 and r["failed"] > 0, r
        assert r["first_error_at_s"] <= TOKEN_TTL, r


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


def read_file_commands(path: Path) -> dict[str, str]:
    """A GITHUB_ENV / GITHUB_STATE file as the runner reads it (heredoc entries)."""
    out: dict[str, str] = {}
    lines = path.read_text().split("\n") if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line:
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1 : j])
            i = j + 1
        elif "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
            i += 1
        else:
            i += 1
    return out


def test_github_action_long_running_serves_a_later_step_that_starts_after_expiry(tmp_path):
    """The action's main step with `long-running: true`; a later step starting after the
    first token expired runs the real client for DURATION (across session ends); the post
    step stops the relay and revokes its session. The default export is the control: the
    same later step fails with the exported token."""
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
        time.sleep(TOKEN_TTL + 1)
        r = later_step(exported, DURATION)
        assert r["failed"] == 0 and r["calls"] >= DURATION * 0.8, r
        assert r["bearers"] >= int(DURATION // TOKEN_TTL), r
        config_dir = Path(exported["POLARS_CLOUD_CONFIG_DIR"])
        assert SECRET.encode() not in (config_dir / "config.toml").read_bytes()

        post = subprocess.run(
            [str(BINARY), "github-action", "post"],
            env=step_env(**inputs, **{f"STATE_{k}": v for k, v in state.items()}),
            capture_output=True, timeout=60,
        )
        assert post.returncode == 0, post.stderr.decode()
        assert not Path(f"/proc/{pid}").exists(), "the relay still runs after post"
        assert not config_dir.exists(), "the relay's directory outlived post"
        revokes = [q for q in idp.requests() if q["path"].endswith("/revoke")]
        assert len(revokes) >= 2, revokes  # main's session, and the relay's own
        relay_log = (temp / "polars-cloud-auth-relay.log").read_text()
        assert SECRET not in relay_log
    finally:
        idp.stop()

