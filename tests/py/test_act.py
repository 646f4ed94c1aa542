"""The GitHub Action (action.yml) end to end under nektos/act, a runner implementation that
runs workflows on this machine (the official runner must register with GitHub).

act 0.2.89 runs the job on the host (`-P ubuntu-latest=-self-hosted`, no Docker) with
Node 24 on PATH for `runs.using: node24` (both from scripts/act.sh, cached). Each test
writes a workflow into a temporary git repository holding a copy of the action, and runs
it against the test identity provider over https (short token lives) with the debug
binary (`binary-path`):

- `actions/checkout` first: act copies the local repository into the job's workspace
  instead of fetching it (no network), which is what `uses: ./` reads on the host;
- `uses: ./probe`, a tiny node24 action used before ours, whose main and post steps make
  an HTTPS request the way actions' HTTP clients do (a CONNECT tunnel through
  `https_proxy`/`HTTPS_PROXY`; `SSL_CERT_FILE`, when set, read as the trust store). Its
  post runs after ours (posts run in reverse order) with the job's environment;
- `uses: ./` (our action), later steps with the real polars-cloud client (the newest
  release, tests/py/clients.py) and a dump of their environment.

Harness quirks of act (not of the action): it passes its own environment into the steps,
so it runs under `env -i` with a minimal one; its cache server would listen on a
non-loopback address (`--no-cache-server`); its `--json` log carries masked values (our
tokens) in extra fields, so the tests read the text log, where no secret may appear.

Slow: runs under `scripts/test.sh --slow` (POLARS_CLOUD_AUTH_SLOW=1). The long-running job's
client runs POLARS_CLOUD_AUTH_ACT_LONG_RUN seconds (70 by default: several token lives).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import clients  # noqa: E402
import cluster  # noqa: E402
import idp_peer  # noqa: E402

SLOW = os.environ.get("POLARS_CLOUD_AUTH_SLOW") == "1"
BINARY = ROOT / "target" / "debug" / "polars-cloud-auth"
CLIENT = HERE / "client"
SECRET = "Zq9+UNIQUE/SECRET=77&x"
TOKEN_TTL = 20
SESSION_MAX = 45
LONG_RUN = float(os.environ.get("POLARS_CLOUD_AUTH_ACT_LONG_RUN", "70"))

pytestmark = pytest.mark.skipif(
    not SLOW, reason="slow: runs with scripts/test.sh --slow (POLARS_CLOUD_AUTH_SLOW=1)"
)

# The action used before ours. Its post step runs after ours, with the job's environment.
PROBE_ACTION = """\
name: probe
description: An HTTPS request in main and in post, as an action used before polars-cloud-auth.
inputs:
  url: {required: true}
  ca: {required: true}
runs:
  using: node24
  main: probe.js
  post: post.js
  post-if: always()
"""
PROBE_POST = "require('./probe.js');\n"
PROBE = r"""'use strict';
// An HTTPS GET the way actions' HTTP clients make it: a CONNECT tunnel through
// https_proxy/HTTPS_PROXY when set; SSL_CERT_FILE, when set, is the trust store (as for
// OpenSSL-based tools), else Node's roots; plus the test CA.
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const tls = require('node:tls');

const stage = process.env.STATE_probe_ran ? 'post' : 'main';
fs.appendFileSync(process.env.GITHUB_STATE, 'probe_ran=1\n');
const url = new URL(process.env.INPUT_URL);
const port = Number(url.port || 443);
const proxy = process.env.https_proxy || process.env.HTTPS_PROXY || '';

function tunnel() {
  if (!proxy) return Promise.resolve(net.connect(port, url.hostname));
  const p = new URL(proxy);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: p.hostname, port: p.port, method: 'CONNECT', path: `${url.hostname}:${port}` });
    req.on('connect', (res, socket) => (res.statusCode === 200 ? resolve(socket) : reject(new Error(`proxy said ${res.statusCode}`))));
    req.on('error', reject);
    req.end();
  });
}

async function main() {
  const bundle = process.env.SSL_CERT_FILE;
  const roots = bundle ? [fs.readFileSync(bundle, 'utf8')] : [...tls.rootCertificates];
  const ca = [...roots, fs.readFileSync(process.env.INPUT_CA, 'utf8')];
  const socket = await tunnel();
  const status = await new Promise((resolve, reject) => {
    const s = tls.connect({ socket, host: url.hostname, ca }, () => {
      s.write(`GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`);
    });
    let head = '';
    s.on('data', (d) => { head += d; });
    s.on('end', () => resolve(head.split(' ')[1]));
    s.on('error', reject);
  });
  console.log(`probe ${stage}: HTTPS ${status} (proxy: ${proxy ? 'yes' : 'no'}, SSL_CERT_FILE: ${bundle ? 'yes' : 'no'})`);
  if (status !== '200') process.exitCode = 1;
}

main().catch((e) => {
  console.log(`::error::probe ${stage}: HTTPS failed: ${e.message}`);
  process.exitCode = 1;
});
"""


def act_tools() -> tuple[Path, Path]:
    """act and the directory of Node 24's `node` (scripts/act.sh builds them once)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "act.sh"), "env"],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"scripts/act.sh env failed:\n{out.stderr}"
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    return Path(env["POLARS_CLOUD_AUTH_ACT"]), Path(env["POLARS_CLOUD_AUTH_NODE24_BIN"])


class Job:
    """A temporary repository with the action, the probe and a workflow; `run` runs it
    under act and returns (exit code, text log, wall time in seconds)."""

    def __init__(self, tmp: Path, idp: idp_peer.Idp, ca: Path) -> None:
        self.tmp, self.idp, self.ca = tmp, idp, ca
        self.repo = tmp / "repo"
        self.out = tmp / "out"
        self.out.mkdir()
        (self.repo / "probe").mkdir(parents=True)
        shutil.copy(ROOT / "action.yml", self.repo / "action.yml")
        shutil.copytree(ROOT / "action", self.repo / "action")
        (self.repo / "probe" / "action.yml").write_text(PROBE_ACTION)
        (self.repo / "probe" / "probe.js").write_text(PROBE)
        (self.repo / "probe" / "post.js").write_text(PROBE_POST)
        git = lambda *a: subprocess.run(["git", "-C", str(self.repo), *a], check=True,  # noqa: E731
                                        capture_output=True)
        git("init", "-q", "-b", "main")
        git("remote", "add", "origin", "https://github.com/example/polars-cloud-auth.git")
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "action")
        self.secrets = tmp / "secrets"
        self.secrets.write_text(f'POLARS_CLOUD_CLIENT_SECRET="{SECRET}"\n')
        self.secrets.chmod(0o600)
        self.home = tmp / "home"
        self.home.mkdir()
        self.python = clients.venv(clients.ALL[-1]) / "bin" / "python"

    def workflow(self, long_running: bool, later: list[str]) -> str:
        url = f"{self.idp.issuer}/.well-known/openid-configuration"
        steps = "\n".join(f"      - run: {s}" for s in later)
        return f"""\
name: act
on: push
jobs:
  job:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: ./probe
        with:
          url: {url}
          ca: {self.ca}
      - id: polars
        uses: ./
        with:
          binary-path: {BINARY}
          issuer: {self.idp.issuer}
          ca-file: {self.ca}
          client-id: test-sa
          client-secret: ${{{{ secrets.POLARS_CLOUD_CLIENT_SECRET }}}}
          retries: "2"
          long-running: {str(long_running).lower()}
      - run: echo "outputs token=${{{{ steps.polars.outputs.access-token }}}} expires=${{{{ steps.polars.outputs.expires-at }}}}"
{steps}
      - run: env > {self.out}/later-step.env
"""

    def run(self, workflow: str) -> tuple[int, str, float]:
        act, node24 = act_tools()
        wf = self.repo / ".github" / "workflows" / "act.yml"
        wf.parent.mkdir(parents=True, exist_ok=True)
        wf.write_text(workflow)
        minimal = [f"PATH={node24}:/usr/local/bin:/usr/bin:/bin", f"HOME={self.home}", "LANG=C.UTF-8"]
        start = time.monotonic()
        p = subprocess.run(
            ["env", "-i", *minimal, str(act), "push", "-W", str(wf),
             "-P", "ubuntu-latest=-self-hosted", "--no-cache-server",
             "--secret-file", str(self.secrets), "--var-file", "/dev/null",
             "--env-file", "/dev/null"],
            cwd=self.repo, stdin=subprocess.DEVNULL, capture_output=True, timeout=LONG_RUN + 600,
        )
        wall = time.monotonic() - start
        log = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        (self.out / "act.log").write_text(log)
        return p.returncode, log, wall

    def later_env(self) -> dict[str, str]:
        lines = (self.out / "later-step.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


def revocations(idp: idp_peer.Idp) -> list[dict[str, Any]]:
    return [q for q in idp.requests() if q["path"].endswith("/revoke")]


def relays_under(tmp: Path) -> list[int]:
    """The pids of our relays (`github-action relay`) whose RUNNER_TEMP is under `tmp`: the
    ones this test's job started, and no other process."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if b"github-action\0relay" not in (p / "cmdline").read_bytes():
                continue
            if f"\0RUNNER_TEMP={tmp}/".encode() not in b"\0" + (p / "environ").read_bytes():
                continue
        except OSError:
            continue
        pids.append(int(p.name))
    return pids


def assert_probe_worked(log: str) -> None:
    """The probe's main step (before ours) and its post step (after ours) both reached the
    IdP over HTTPS."""
    assert "probe main: HTTPS 200" in log, log[-6000:]
    assert "probe post: HTTPS 200" in log, log[-6000:]
    assert "HTTPS failed" not in log, log[-6000:]


@pytest.fixture
def peers(tmp_path):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run cargo build first")
    tls = cluster.make_tls(tmp_path / "tls")
    idp = idp_peer.Idp({"test-sa": SECRET}, TOKEN_TTL, SESSION_MAX, tls=tls)
    try:
        yield idp, tls["ca"]
    finally:
        idp.stop()
        for pid in relays_under(tmp_path):  # a job that failed before its post step
            os.kill(pid, signal.SIGTERM)


def test_act_short_job_masks_hands_on_and_revokes(tmp_path, peers):
    """(a) masking, outputs, the real client in a later step, post revocation; (c) the
    later step's environment; (d) the earlier action's post; (e) the IdP's revocations."""
    idp, ca = peers
    job = Job(tmp_path, idp, ca)
    client = f"{job.python} {CLIENT / 'check_client.py'} > {job.out}/client.json"
    code, log, wall = job.run(job.workflow(False, [client]))
    assert code == 0, log[-8000:]
    verdict = json.loads((job.out / "client.json").read_text().splitlines()[-1])
    assert verdict["ok"] is True and verdict["source"] == "env", verdict
    token = verdict["bearer"]
    # Masked: the token and the secret appear nowhere in the text log.
    assert SECRET not in log
    assert token not in log
    assert "outputs token=***" in log, log[-6000:]
    assert "expires=20" in log  # the expiry is not a secret
    env = job.later_env()
    assert env["POLARS_CLOUD_ACCESS_TOKEN"] == token
    assert not [k for k in env if k.startswith(("INPUT_", "STATE_"))], sorted(env)
    assert SECRET not in (job.out / "later-step.env").read_text()
    assert {k for k in env if k.startswith("POLARS_CLOUD")} == {"POLARS_CLOUD_ACCESS_TOKEN"}
    assert_probe_worked(log)
    revoked = revocations(idp)
    assert [r["status"] for r in revoked] == [200], revoked
    print(f"\nact short job: wall {wall:.1f} s, 1 client call ok, {len(revoked)} revocation")


def test_act_long_running_job_keeps_a_later_step_working(tmp_path, peers):
    """(b) `long-running: true`: a later step that starts after the first token expired
    runs the real client across several token lives and session ends with 0 failed calls;
    (c) what that step's environment holds; (d) the earlier action's post after ours;
    (e) both sessions revoked."""
    idp, ca = peers
    job = Job(tmp_path, idp, ca)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(idp.jwks())
    client = (f"{job.python} {CLIENT / 'long_client.py'} --duration {LONG_RUN} "
              f"--jwks file://{jwks} > {job.out}/long.json")
    code, log, wall = job.run(job.workflow(True, [f"sleep {TOKEN_TTL + 1}", client]))
    assert code == 0, log[-8000:]
    r = json.loads((job.out / "long.json").read_text().splitlines()[-1])
    assert r["failed"] == 0 and r["calls"] >= LONG_RUN * 0.8, r
    assert r["bearers"] >= int(LONG_RUN // TOKEN_TTL), r
    assert SECRET not in log
    env = job.later_env()
    assert "POLARS_CLOUD_ACCESS_TOKEN" not in env
    assert {k for k in env if k.startswith("POLARS_CLOUD")} == {
        "POLARS_CLOUD_CONFIG_DIR", "POLARS_CLOUD_DOMAIN", "POLARS_CLOUD_API_ADDR"}, sorted(env)
    assert env["HTTPS_PROXY"].startswith("http://127.0.0.1:")
    assert not [k for k in env if k.startswith(("INPUT_", "STATE_"))], sorted(env)
    assert SECRET not in (job.out / "later-step.env").read_text()
    assert "could not revoke" not in log, log[-6000:]
    assert not relays_under(tmp_path), "the relay outlived the job"
    assert_probe_worked(log)
    revoked = revocations(idp)
    assert len(revoked) == 2 and all(q["status"] == 200 for q in revoked), revoked
    print(f"\nact long-running job: wall {wall:.1f} s, client {r['calls']} calls, "
          f"{r['failed']} failed, {r['bearers']} tokens, {len(revoked)} revocations")
