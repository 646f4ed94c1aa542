"""Injected pods on a real node: kubelet 1.37, containerd 2 and runc (scripts/node.sh)
running our image and the real polars-cloud client.

Everything a pod does here is the real thing: the API server admits the pods through our
webhook, Deployments and Jobs become pods through the controller manager and scheduler,
the kubelet runs them with containerd and runc (network namespace per pod from the CNI
bridge, volumes, uids and fsGroup, sysctls, hostAliases, native sidecar order, the
postStart hook, probes, restarts, SIGTERM on delete). The images are built here
(tests/py/oci.py): ours from the Dockerfile's final stage, an app image with Python and
polars-cloud. Only the peers run outside pods: the test IdP and the broker on the node's
bridge address, the webhook on loopback (see tests/py/node_peer.py for why).

The IdP issues 40 s tokens and ends every session after 90 s, so a 200 s run spans five
token lives and at least two session ends; each app calls the API once a second and the
stand-in API (inside the app container) accepts only tokens the IdP signed that have not
expired. Slow: `scripts/test.sh --slow` (POLARS_CLOUD_AUTH_SLOW=1);
POLARS_CLOUD_AUTH_LONG_RUN sets the run's length in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

import clients
import k8s
import node_peer
from node_peer import results, token_container

pytestmark = pytest.mark.skipif(
    not node_peer.SLOW, reason="slow: runs with scripts/test.sh --slow (POLARS_CLOUD_AUTH_SLOW=1)"
)

NS = "pca-node"
RELEASE = "pcn"
SA_ID, SECRET = node_peer.World.SA_ID, node_peer.World.SECRET
BROKER_SECRET = node_peer.World.BROKER_SECRET
# 40 s tokens: the shortest life at which the relay modes keep the legacy token files
# renewed 15 s before their end in a broker-backed pod too (docs/long-running.md, "Short
# token lives"); with 20 s tokens they are renewed at about 9 s left, inside the 0.7 to
# 0.11 clients' own refresh margin, and 0.10 (which cannot refresh through the relay)
# failed calls on a loaded node. The session maximum ends at least two sessions per pod.
TOKEN_TTL, SESSION_MAX = 40, 90
# Five token lives.
DURATION = float(os.environ.get("POLARS_CLOUD_AUTH_LONG_RUN", str(5 * TOKEN_TTL)))
CLIENT = clients.FAMILIES["config-toml"]  # the newest release
# Our long-running container's name in native and classic mode.
SIDECAR = "polars-cloud-auth"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = node_peer.World(tmp_path_factory.mktemp("node"), NS, RELEASE, TOKEN_TTL, SESSION_MAX,
                        client=CLIENT)
    yield {"node": w.node, "kube": w.kube, "idp": w.idp, "broker": w.broker,
           "webhook": w.webhook, "ours": w.ours, "app": w.app, "tmp": w.tmp, "world": w}
    w.stop()


def app_container(world, duration: float, hold: bool = True, read_only_root: bool = False,
                  client: str = CLIENT, processes: int = 1) -> dict:
    c = {
        "name": "app",
        "image": world["world"].app_image(client),
        "imagePullPolicy": "Never",
        "args": ["--duration", str(duration), "--jwks", "file:///etc/pca-test/jwks.json"],
        "env": [{"name": "PCA_HOLD", "value": "1" if hold else "0"},
                {"name": "PCA_PROCESSES", "value": str(processes)},
                {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "jwks", "mountPath": "/etc/pca-test", "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": read_only_root},
    }
    return c


def pod_template(world, name: str, annotations: dict, container: dict, run_as: int,
                 fs_group: int | None, restart: str = "Always") -> dict:
    security = {"runAsUser": run_as, "runAsGroup": run_as, "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"}}
    if fs_group is not None:
        security["fsGroup"] = fs_group
    return {
        "metadata": {"labels": {"app": name, "polars.cloud/inject": "true"},
                     "annotations": annotations},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 10,
            "automountServiceAccountToken": False,
            "securityContext": security,
            "containers": [container],
            "volumes": [{"name": "jwks", "configMap": {"name": "pca-test-jwks"}}],
        },
    }


def deployment(name: str, template: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": template}}


def job(name: str, template: dict) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 0, "template": template}}


# The long-running cases: (name, mode, backing, app uid, fsGroup, read-only root, client)
CASES = [
    ("native-secret", "native", "secret", 1000, 2000, False, CLIENT),
    ("native-secret-nofsgroup-ro", "native", "secret", 1001, None, True, CLIENT),
    ("classic-secret", "classic", "secret", 1000, 2000, False, CLIENT),
    ("native-broker", "native", "broker", 1002, 2000, False, CLIENT),
    ("classic-broker-nofsgroup", "classic", "broker", 1003, None, False, CLIENT),
]
# Every other release we claim (tests/py/requirements-clients.txt), in the default pod,
# secret-backed; the newest of each older family broker-backed too. One default serves
# them all: config.toml and the relay for 0.12, the legacy files beside it for the rest.
CASES += [(f"client-{v.replace('.', '-')}", "native", "secret", 1000, 2000, False, v)
          for v in clients.ALL if v != CLIENT]
CASES += [(f"client-{v.replace('.', '-')}-broker", "native", "broker", 1004, None, False, v)
          for v in clients.FAMILIES.values() if v != CLIENT]
# Four client processes in one container, sharing its config directory (their write-backs
# of config.toml must not collide: the relay answers one refresh at a time).
PROCESSES = {"native-4-processes": 4}
CASES += [("native-4-processes", "native", "secret", 1000, None, False, CLIENT)]
# Made by the offline `inject` (the webhook's settings, the same pure code) instead of the
# webhook: the template has no polars.cloud/inject label, so the webhook never sees it.
# The 0.11 family: what the offline path gives an older client must work too.
OFFLINE = "offline-inject-0-11"
CASES += [(OFFLINE, "native", "secret", 1000, 2000, False, clients.FAMILIES["legacy-files"])]


def the_pod(world, name: str) -> dict:
    pods = world["node"].pods(NS, f"app={name}")
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return running[0] if running else {}


@pytest.fixture(scope="module")
def long_run(world):
    """Every case as a Deployment at once, for DURATION; the sidecar of the first case is
    killed halfway (the kubelet must restart it, and the app must not notice)."""
    kube, node = world["kube"], world["node"]
    # Every app image first (building and importing one takes seconds): then the pods
    # start together.
    for *_, client in CASES:
        world["world"].app_image(client)
    for name, mode, backing, uid, fs_group, ro, client in CASES:
        annotations = {"polars.cloud/mode": mode}
        if backing == "broker":
            annotations["polars.cloud/broker"] = "true"
        app = app_container(world, DURATION, read_only_root=ro, client=client,
                            processes=PROCESSES.get(name, 1))
        template = pod_template(world, name, annotations, app, uid, fs_group)
        if name == OFFLINE:
            del template["metadata"]["labels"]["polars.cloud/inject"]
            kube.apply(world["world"].inject(deployment(name, template)))
        else:
            kube.apply(deployment(name, template))
    started = {}
    for name, *_ in CASES:
        started[name] = node.wait(f"{name}'s app running", lambda n=name: (
            (p := the_pod(world, n)) and (node.status(p, "app") or {}).get("state", {}).get("running")
            and p), timeout=180)
    # Halfway through the first case's own run (from its app's start, as the kubelet
    # reports it), not after all the others have started: else its client could be done
    # before the kill.
    killed = CASES[0][0]
    from datetime import datetime

    began = node.status(started[killed], "app")["state"]["running"]["startedAt"]
    late = time.time() - datetime.fromisoformat(began.replace("Z", "+00:00")).timestamp()
    assert late < DURATION / 2, f"the pods took {late:.0f}s to start: too late to kill halfway"
    time.sleep(DURATION / 2 - late)
    pod = the_pod(world, killed)
    ours = SIDECAR
    pid = node.task_pid(node.container_id(pod, ours))
    os.kill(pid, signal.SIGKILL)
    node.wait(f"{killed}'s sidecar restarted", lambda: (
        (st := node.status(the_pod(world, killed), ours)) and st.get("restartCount", 0) >= 1
        and st.get("state", {}).get("running")), timeout=60)
    out = {}
    for name, *_ in CASES:
        pod = node.wait(f"{name}'s client result", lambda n=name: (
            (p := the_pod(world, n)) and "PCA-CLIENT-DONE" in node.logs(p, "app") and p),
            timeout=DURATION + 120, every=1)
        out[name] = {"pod": pod, "results": results(node.logs(pod, "app")),
                     "result": results(node.logs(pod, "app"))[-1],
                     "ours": node.logs(pod, SIDECAR),
                     "memory": node.memory(pod, SIDECAR)}
        # A figure, not a check: our container after a run with the relay serving the
        # real client (docs/benchmarks.md, "Memory on a node").
        print(json.dumps({"case": name, **{k: round(v, 2) for k, v in out[name]["memory"].items()}}))
    return out


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_the_real_client_works_for_five_token_lives_in_a_real_pod(world, long_run, case):
    got = long_run[case]
    assert len(got["results"]) == PROCESSES.get(case, 1), got["results"]
    for r in got["results"]:
        assert r["failed"] == 0 and r["ok"] == r["calls"], r
        assert r["calls"] >= DURATION * 0.8, r
        # Five token lives: the client presented at least five different tokens.
        assert r["bearers"] >= 5, r
    r = got["result"]
    pod = got["pod"]
    # The pod is what the webhook (or, for OFFLINE, `inject`) made of the Deployment's
    # template, stored and run.
    assert pod["metadata"]["annotations"].get("polars.cloud/injected"), pod["metadata"]
    assert ("polars.cloud/inject" in pod["metadata"]["labels"]) == (case != OFFLINE)
    assert pod["spec"]["nodeName"] == world["node"].name
    name, mode, backing, uid, fs_group, ro, client = next(c for c in CASES if c[0] == case)
    assert r.get("client_version") == client, r
    ours = token_container(pod)
    if mode == "native":
        assert ours in pod["spec"]["initContainers"] and ours["restartPolicy"] == "Always"
    else:
        # The classic sidecar is a regular container, after an init container.
        assert ours["args"] == ["init"], ours
        assert "polars-cloud-auth" in [c["name"] for c in pod["spec"]["containers"]]
    mounts = {v["name"]: v for v in pod["spec"]["volumes"]}
    if backing == "broker":
        assert not any("secret" in v for v in mounts.values()), mounts
    else:
        assert any(v.get("secret", {}).get("secretName") == "polars-cloud-credentials"
                   for v in mounts.values()), mounts
    if client == CLIENT and mode == "native":
        # The relay served this client's refreshes and says which client it is (for the
        # first case, the sidecar restarted halfway: its new process has served since).
        import urllib.request

        ip = world["node"].wait("the pod's IP", lambda: the_pod(world, case)["status"].get("podIP"))
        with urllib.request.urlopen(f"http://{ip}:8471/metrics", timeout=5) as m:
            metrics = m.read().decode()
        assert f'version="{client}"' in metrics and 'served="true"' in metrics, metrics
    # Nothing of the credentials in the app's environment or output.
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    assert SECRET not in json.dumps(app) and BROKER_SECRET not in json.dumps(app)
    assert SECRET not in got["ours"] and BROKER_SECRET not in got["ours"]


def test_a_killed_sidecar_is_restarted_and_the_app_never_notices(world, long_run):
    got = long_run[CASES[0][0]]
    st = world["node"].status(world["node"].wait("pod", lambda: the_pod(world, CASES[0][0])),
                              SIDECAR)
    assert st["restartCount"] >= 1, st
    assert got["result"]["failed"] == 0, got["result"]


@pytest.mark.parametrize("case", ["classic-secret", "native-broker"])
def test_doctor_in_our_container_finds_every_link_holding(world, long_run, case):
    """`polars-cloud-auth doctor` run in our container of a pod that just served the real
    client for five token lives: in our image, with the process settings the webhook gave
    our container. Every link holds (the relay saw the 0.12 client, so `client` is known
    and served), and the output names no secret or token.

    `kubectl exec` goes API server -> kubelet, and this node's kubelet listens on loopback
    under a node name nothing resolves (scripts/node.sh): so the test asks containerd for
    the same thing kubectl exec ends in, a process in the running container
    (`ctr tasks exec`, which takes the container's user, environment and namespaces)."""
    name, mode, backing, uid, fs_group, ro, client = next(c for c in CASES if c[0] == case)
    node = world["node"]
    cid = node.container_id(the_pod(world, case), SIDECAR)
    out = node.ctr("tasks", "exec", "--exec-id", f"doctor-{case}", cid,
                   "/usr/local/bin/polars-cloud-auth", "doctor", "--app-uid", str(uid), "--json",
                   check=False)
    assert out.stdout.startswith("{"), (out.returncode, out.stdout, out.stderr)
    report = json.loads(out.stdout)
    print(f"\ndoctor in {case}:", json.dumps(report, indent=1))
    assert out.returncode == 0 and report["ok"], (out.returncode, report, out.stderr)
    assert report["place"] == "our-container", report
    links = {f["link"]: f for f in report["findings"]}
    holding = ["grant", "token-file", "app-access", "relay", "handle", "client"]
    holding.append("broker" if backing == "broker" else "idp")
    for link in holding:
        assert links[link]["status"] == "ok", (link, links)
    assert client in links["client"]["detail"], links["client"]
    text = out.stdout + out.stderr
    assert SECRET not in text and BROKER_SECRET not in text
    assert "eyJ" not in text, "a JWT in doctor's output"


def test_session_ends_are_routine_in_our_logs(world, long_run):
    """The IdP ended at least two sessions under every pod (45 s max in a 100 s run):
    our containers renewed across them with nothing logged above INFO, and no advice to
    check the secret."""
    sign_ins = [r for r in world["idp"].requests()
                if r["params"].get("grant_type") == "password"
                and r["params"].get("username", "").startswith(SA_ID + "@")]
    secret_backed = sum(1 for c in CASES if c[2] == "secret")
    # Each secret-backed pod: its first sign-in and one per session end (>= 2 in 100 s),
    # plus the classic init containers' own.
    assert len(sign_ins) >= 3 * secret_backed, len(sign_ins)
    for case, got in long_run.items():
        logs = got["ours"]
        assert logs.count("token renewed") >= 5, (case, logs[-2000:])
        # A renewal may meet a connection the IdP just closed (its keep-alive is 5 s, our
        # renewals come every 25 s): a transient failure, retried, and a warning
        # is right for it. Nothing else is above INFO.
        noisy = [line for line in logs.splitlines() if (" WARN " in line or " ERROR " in line)
                 and "could not reach the identity provider" not in line]
        assert not noisy, (case, noisy)
        assert "check the client id" not in logs, (case, logs[-2000:])


def watch_pod(kube, name: str, seen: list) -> tuple[subprocess.Popen, threading.Thread]:
    """`kubectl get --watch` of one pod, its events appended to `seen` by a thread. The
    caller stops it: terminating kubectl ends the thread (an idle watch never wakes it,
    and a kubectl left behind would outlive the suite)."""
    proc = subprocess.Popen([str(kube.kubectl), "get", "pod", name, "-n", NS, "--watch",
                             "-o", "json", "--output-watch-events"], env=kube.env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                seen.append(json.loads(line))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return proc, t


def test_pod_delete_sends_sigterm_and_our_container_exits_0_in_time(world, long_run):
    kube = world["kube"]
    name = CASES[1][0]
    pod = the_pod(world, name)
    pod_name = pod["metadata"]["name"]
    ours = SIDECAR
    seen: list = []
    proc, t = watch_pod(kube, pod_name, seen)
    time.sleep(1)
    kube.run("scale", "deployment", name, "-n", NS, "--replicas=0")
    began = time.monotonic()
    world["node"].wait("the pod gone", lambda: not any(
        p["metadata"]["name"] == pod_name for p in world["node"].pods(NS, f"app={name}")),
        timeout=40)
    took = time.monotonic() - began
    proc.terminate()
    proc.wait(timeout=10)
    t.join(timeout=10)
    finals = []
    for ev in seen:
        obj = ev.get("object", {})
        st = node_peer.Node.status(world["node"], obj, ours)
        term = (st or {}).get("state", {}).get("terminated")
        if term:
            finals.append(term)
    assert finals, f"no terminated state seen for {ours}: {[e.get('type') for e in seen]}"
    assert finals[-1]["exitCode"] == 0, finals[-1]
    assert took < 10, f"the pod took {took:.1f}s to go (grace period 10s)"


def completed_job(world, name: str, mode: str, duration: float) -> dict:
    """A Job whose app runs the real client for `duration` then exits: waits for the Job
    to complete (the controller's condition), returns its pod."""
    kube, node = world["kube"], world["node"]
    template = pod_template(world, name, {"polars.cloud/mode": mode},
                            app_container(world, duration, hold=False), 1000, 2000,
                            restart="Never")
    kube.apply(job(name, template))
    node.wait(f"the Job {name} complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in kube.get("job", name, "-n", NS).get("status", {}).get("conditions", [])),
        timeout=120, every=1)
    (pod,) = node.pods(NS, f"app={name}")
    r = results(node.logs(pod, "app"))[-1]
    assert r["failed"] == 0 and r["ok"] >= 1, r
    return pod


def test_a_job_with_our_native_sidecar_completes_when_its_app_exits(world):
    pod = completed_job(world, "job-native", "native", 5)
    ours = world["node"].status(pod, token_container(pod)["name"])
    assert ours["state"].get("terminated"), ours


def test_an_init_only_job_completes(world):
    completed_job(world, "job-init-only", "init-only", 3)


def test_the_image_the_suite_runs_is_the_dockerfiles(world):
    """The image containerd runs has the files, user, entrypoint, env, ports and labels
    the Dockerfile's final stage names (read from the imported image, not the builder)."""
    import oci

    node = world["node"]
    ref = world["ours"]
    cfg = node_peer.image_config(node, ref)
    stage = oci.final_stage(k8s.REPO / "Dockerfile")
    assert cfg["config"].get("User") == stage.user
    assert cfg["config"].get("Entrypoint") == stage.entrypoint
    assert cfg["config"].get("Cmd") == stage.cmd
    assert cfg["config"].get("Env") == stage.env
    assert sorted(cfg["config"].get("ExposedPorts", {})) == sorted(stage.exposed)
    assert cfg["config"].get("Labels", {}) == stage.labels
    files = node_peer.image_files(node, ref)
    assert sorted(f for f in files if not f.endswith("/")) == sorted(
        dst.lstrip("/") for _, _, dst in stage.copies)


def test_without_the_relay_no_client_finds_a_token_and_init_only_ends_with_the_first(world):
    """The controls, on the node: with `polars.cloud/relay: "false"` neither 0.12 nor 0.11
    finds a token (no release reads the token file); in init-only mode (nothing renews)
    the client works until its first token nears expiry, then fails."""
    kube, node = world["kube"], world["node"]
    legacy = clients.FAMILIES["legacy-files"]
    runs = {}
    for v in (CLIENT, legacy):
        tag = v.replace(".", "-")
        off = pod_template(world, f"off-{tag}", {"polars.cloud/relay": "false"},
                           app_container(world, 5, hold=False, client=v), 1000, 2000,
                           restart="Never")
        kube.apply(job(f"off-{tag}", off))
        init_only = pod_template(world, f"init-only-{tag}", {"polars.cloud/mode": "init-only"},
                                 app_container(world, TOKEN_TTL + 10, hold=False, client=v),
                                 1000, 2000, restart="Never")
        kube.apply(job(f"init-only-{tag}", init_only))
        runs[v] = (f"off-{tag}", f"init-only-{tag}")
    for v, (off, init_only) in runs.items():
        got, pods = {}, {}
        for name in (off, init_only):
            pods[name] = node.wait(f"{name}'s result", lambda n=name: (
                (ps := node.pods(NS, f"app={n}")) and "PCA-CLIENT-DONE" in node.logs(ps[0], "app")
                and ps[0]), timeout=TOKEN_TTL + 120, every=1)
            got[name] = results(node.logs(pods[name], "app"))[-1]
        r = got[off]
        assert r["client_version"] == v and r["ok"] == 0, r
        assert any("not found" in e for e in r["errors"]), r
        r = got[init_only]
        # Nothing renews: the client loses its token within the first token's life.
        assert r["client_version"] == v and r["failed"] > 0, r
        assert r["first_error_at_s"] <= TOKEN_TTL, r
        # And before that it used the token init wrote, when its first call came with more
        # of the token's life left than the client's refresh margin (~10 s for 0.12, 5 to
        # 9 s for 0.11): a busy node can start the app, or its Python, late.
        left = TOKEN_TTL - (r["started_at"] - finished_at(node.status(pods[init_only], SIDECAR)))
        print(f"\ninit-only {v}: first call with {left:.0f}s of the token left: {r}")
        if left >= 12:
            assert r["ok"] >= 1, (left, r)


def finished_at(status: dict) -> float:
    """When a terminated container finished (the kubelet's timestamp), in epoch seconds."""
    from datetime import datetime

    done = status["state"]["terminated"]["finishedAt"]
    return datetime.fromisoformat(done.replace("Z", "+00:00")).timestamp()


def token_exp(path: str) -> float | None:
    """The `exp` of the bare JWT in `path`, or None while it cannot be read."""
    import base64

    try:
        part = open(path).read().strip().split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["exp"])
    except (OSError, IndexError, ValueError, KeyError):
        return None


def test_while_the_idp_is_unreachable_0_11_refreshes_through_the_relay_until_its_token_ends(world):
    """An identity provider outage for one pod: just after our container renewed, its
    connections to the IdP are refused (an iptables rule in the pod's network namespace,
    nothing else changes), so the token ages into the 0.11 client's own refresh window
    (its last 5 to 9 s). The client then refreshes through the relay and writes both
    legacy files back in place, as the app's user, over files our container (another
    user) wrote. Every call until the token's end must succeed: a write-back it is refused
    fails the call with "Authentication token was not found" (what this test found, and
    `relay::legacy_mode` fixed). After the end, calls may fail: nothing can renew."""
    kube, node = world["kube"], world["node"]
    legacy = clients.FAMILIES["legacy-files"]
    name = "outage-0-11"
    # No fsGroup: the app reads our files as "other", the hardest case.
    template = pod_template(world, name, {"polars.cloud/mode": "native"},
                            app_container(world, 2 * TOKEN_TTL + 10, hold=False, client=legacy),
                            1000, None,
                            restart="Never")
    kube.apply(job(name, template))
    pod = node.wait(f"{name}'s app running", lambda: (
        (ps := node.pods(NS, f"app={name}")) and (node.status(ps[0], "app") or {}).get(
            "state", {}).get("running") and ps[0]), timeout=180)
    pid = node.task_pid(node.container_id(pod, SIDECAR))
    seen = f"/proc/{pid}/root/var/run/polars-cloud-client/app/cloud_access_token"
    # Just after a renewal: the legacy file holds a token with most of its life left.
    exp = node.wait("a freshly renewed token in the app's files", lambda: (
        (e := token_exp(seen)) and e - time.time() >= TOKEN_TTL - 3 and e), timeout=TOKEN_TTL + 10)
    port = str(world["idp"].port)
    rule = ["OUTPUT", "-d", node.ip, "-p", "tcp", "--dport", port, "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    netns = ["nsenter", "-t", str(pid), "-n", "--"]
    subprocess.run([*netns, "iptables", "-I", *rule], check=True)
    try:
        time.sleep(max(0.0, exp - time.time()) + 3)
    finally:
        subprocess.run([*netns, "iptables", "-D", *rule], check=False)
    pod = node.wait(f"{name}'s result", lambda: (
        (ps := node.pods(NS, f"app={name}")) and "PCA-CLIENT-DONE" in node.logs(ps[0], "app")
        and ps[0]), timeout=120, every=1)
    r = results(node.logs(pod, "app"))[-1]
    ours = node.logs(pod, SIDECAR)
    print(f"\noutage: token end {exp - r['started_at']:.1f}s into the run: {r}")
    assert r["client_version"] == legacy, r
    # The outage reached our container: its renewals failed while the token aged.
    assert "renewal failed" in ours, ours[-3000:]
    # The client refreshed through the relay (the relay names it at its first refresh).
    assert f"client_version={legacy}" in ours, ours[-3000:]
    # Every call before the token's end succeeded.
    before = int(exp - r["started_at"]) - 1
    assert r["ok"] >= before, (before, r)
    if r["first_error_at_s"] is not None:
        assert r["started_at"] + r["first_error_at_s"] >= exp - 1, r
