"""Runs a pod spec on this machine the way a kubelet would, close enough to measure what a
real workload sees.

Used only by benches/relay_pod.py (the relay's cost at the IdP per pod, with an IdP in
each pod's own network namespace). Every test of injected pods runs on the real node
instead (scripts/node.sh, tests/py/test_node.py); this benchmark has not been ported to it
yet.
 There is no container runtime here (no Docker engine, no kubelet),
so this is an emulation; what it reproduces, and what it does not, is listed here and
nothing else is claimed:

* one network namespace per pod (a holder process made by ``unshare --net``, loopback
  up), shared by its containers; the pod's ``securityContext.sysctls`` applied in it;
* ``/etc/hosts`` per pod with ``hostAliases`` appended, as the kubelet writes it;
* each container in its own mount namespace: a fresh ``/run`` (so ``/var/run``) tmpfs,
  the pod's volumes bind-mounted at their ``mountPath``, ``readOnly`` honoured, and
  ``readOnlyRootFilesystem`` by a read-only remount of ``/``;
* volumes: ``emptyDir`` (mode 0777; with ``fsGroup`` group-owned and setgid, as the
  kubelet's volume ownership does), ``secret`` (files at ``defaultMode``, group
  ``fsGroup`` when set) from data the test gives;
* the process runs with the container's (else the pod's) ``runAsUser``/``runAsGroup``,
  with ``fsGroup`` and ``supplementalGroups`` as supplementary groups, no capabilities
  and ``no_new_privs`` (``setpriv``); root when no user is set, as an image's default;
* ``env`` (plain values) only, in a clean environment;
* start order: init containers one by one; a native sidecar (``restartPolicy: Always``)
  is started and the next one waits until its ``startupProbe`` (exec) passes; then the
  regular containers all at once. Probes run inside the container's namespaces.

"Images" are not pulled: the container's root file system is this machine's, with an
image mapped to an executable (our image's ENTRYPOINT is bind-mounted from the built
binary) and ``/root/.pyenv`` made reachable for other users (the Python the app uses).
The ``Network`` can be made first, so that a peer of the test (the identity provider)
listens on the pod's loopback. Not emulated: cgroups and resource limits, restarts, readiness/liveness probes, image
file systems, service-account tokens, DNS. Needs root (CI runs as root), ``unshare``,
``nsenter``, ``setpriv`` (util-linux) and ``ip`` (iproute2).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ENTRYPOINT = "/usr/local/bin/polars-cloud-auth"


def available() -> str | None:
    """None when pods can run here, else why not."""
    if os.geteuid() != 0:
        return "the kubelet emulation needs root (unshare, mount namespaces, setpriv)"
    for tool in ("unshare", "nsenter", "setpriv", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"the kubelet emulation needs {tool} (util-linux / iproute2)"
    return None


class Network:
    """A pod's network namespace: a holder process made by ``unshare --net``, loopback up.
    Made before the pod when a peer (the identity provider) must listen in it first."""

    def __init__(self) -> None:
        why = available()
        if why:
            raise RuntimeError(why)
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(250):
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        else:
            raise RuntimeError("unshare --net did not make a network namespace")
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.run(["ip", "link", "set", "lo", "up"])

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        """Runs a command in the namespace (as root, host file system)."""
        return subprocess.run(
            ["nsenter", f"--net={self.path}", "--", *argv],
            check=kw.pop("check", True),
            capture_output=kw.pop("capture_output", True),
            **kw,
        )

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """A long-running peer (the identity provider) reachable on the pod's loopback."""
        return subprocess.Popen(["nsenter", f"--net={self.path}", "--", *argv], **kw)

    def close(self) -> None:
        if self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait(5)


class Container:
    def __init__(self, pod: "Pod", spec: dict[str, Any], init: bool) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = pod.dir / f"{self.name}.log"
        self.out_path = pod.dir / f"{self.name}.out"

    # --- identity
    def uid_gid_groups(self) -> tuple[int, int, list[int]]:
        psc = self.pod.spec.get("securityContext") or {}
        csc = self.spec.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser", 0))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", 0))
        groups = []
        if psc.get("fsGroup") is not None:
            groups.append(int(psc["fsGroup"]))
        groups += [int(g) for g in psc.get("supplementalGroups", [])]
        return int(uid), int(gid), groups

    def argv(self) -> list[str]:
        image = self.spec.get("image", "")
        command = self.spec.get("command")
        args = self.spec.get("args", [])
        if command:
            return list(command) + list(args)
        if image in self.pod.images:
            return [ENTRYPOINT] + list(args)
        raise ValueError(f"container {self.name}: image {image!r} has no command here")

    def env(self) -> dict[str, str]:
        out = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOSTNAME": self.pod.name}
        uid, _, _ = self.uid_gid_groups()
        out["HOME"] = "/root" if uid == 0 else "/tmp"
        for e in self.spec.get("env", []):
            if "value" in e:
                out[e["name"]] = str(e["value"])
            elif "valueFrom" in e:
                raise ValueError(f"container {self.name}: valueFrom is not emulated ({e['name']})")
        return out

    # --- the mount namespace script
    def setup_script(self) -> str:
        lines = ["set -e", "mount -t tmpfs -o mode=0755 tmpfs /run"]
        # The Python of the "image" lives under /root, which only root may traverse.
        if Path("/root/.pyenv").is_dir():
            lines += [
                "mkdir -p /run/.image-pyenv",
                "mount --bind /root/.pyenv /run/.image-pyenv",
                "mount -t tmpfs -o mode=0755 tmpfs /root",
                "mkdir -p /root/.pyenv",
                "mount --move /run/.image-pyenv /root/.pyenv",
            ]
        image = self.spec.get("image", "")
        if image in self.pod.images:
            lines += [
                "mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin",
                f"touch {ENTRYPOINT}",
                f"mount --bind {shlex.quote(self.pod.images[image])} {ENTRYPOINT}",
            ]
        for m in self.spec.get("volumeMounts", []):
            src = self.pod.volume_dirs[m["name"]]
            dst = m["mountPath"]
            lines.append(f"mkdir -p {shlex.quote(dst)}")
            lines.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
            if m.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {shlex.quote(dst)}")
        lines.append(f"mount --bind {shlex.quote(str(self.pod.hosts))} /etc/hosts")
        if (self.spec.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        return "\n".join(lines)

    def privileges(self) -> list[str]:
        uid, gid, groups = self.uid_gid_groups()
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
        cmd += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        cmd += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        return cmd

    def start(self) -> None:
        env = self.env()
        envs = [f"{k}={v}" for k, v in env.items()]
        inner = " ".join(
            shlex.quote(x)
            for x in self.privileges() + ["env", "-i", *envs, *self.argv()]
        )
        script = self.setup_script() + f"\ncd /\nexec {inner}\n"
        cmd = [
            "nsenter", f"--net={self.pod.network.path}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", script,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=open(self.out_path, "wb"),
            stderr=open(self.log_path, "wb"),
            start_new_session=True,
        )

    def exec(self, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
        """Runs a command inside the running container (a probe, `kubectl exec`)."""
        assert self.proc is not None
        inner = self.privileges() + ["env", "-i", *[f"{k}={v}" for k, v in self.env().items()], *argv]
        cmd = ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--", *inner]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def probe_passes(self) -> bool:
        """The start gate: the postStart exec hook (run to its end, as the kubelet does
        before it starts the next container), else the startupProbe."""
        hook = (self.spec.get("lifecycle") or {}).get("postStart")
        if hook:
            if not getattr(self, "hook_done", False):
                self.hook_done = self.exec(hook["exec"]["command"], timeout=130).returncode == 0
            return self.hook_done
        probe = self.spec.get("startupProbe")
        if not probe:
            return True
        command = probe["exec"]["command"]
        try:
            return self.exec(command, timeout=probe.get("timeoutSeconds", 5)).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")


class Pod:
    """One pod: ``Pod(manifest, images={...}, secrets={...}).start()``."""

    def __init__(
        self,
        manifest: dict[str, Any],
        *,
        images: dict[str, str],
        secrets: dict[str, dict[str, str]] | None = None,
        network: Network | None = None,
    ) -> None:
        why = available()
        if why:
            raise RuntimeError(why)
        self.own_network = network is None
        self.network = network or Network()
        self.manifest = manifest
        self.name: str = manifest["metadata"].get("name", "pod")
        self.spec: dict[str, Any] = manifest["spec"]
        self.images = images
        self.secrets = secrets or {}
        self.dir = Path(tempfile.mkdtemp(prefix=f"pod-{self.name}-"))
        os.chmod(self.dir, 0o700)  # the volumes' backing dirs are reachable by mounts only
        self.volume_dirs: dict[str, Path] = {}
        self.prepared = False
        self.containers: list[Container] = []
        self.hosts = self.dir / "hosts"

    def _volumes(self) -> None:
        psc = self.spec.get("securityContext") or {}
        fs_group = psc.get("fsGroup")
        root = self.dir / "volumes"
        root.mkdir()
        for v in self.spec.get("volumes", []):
            d = root / v["name"]
            d.mkdir()
            if "emptyDir" in v:
                os.chmod(d, 0o777)
                if fs_group is not None:
                    os.chown(d, 0, int(fs_group))
                    os.chmod(d, 0o2777)
            elif "secret" in v:
                name = v["secret"]["secretName"]
                data = self.secrets.get(name)
                if data is None:
                    raise ValueError(f"volume {v['name']}: no Secret {name!r} given to the pod")
                mode = v["secret"].get("defaultMode", 0o644)
                for key, value in data.items():
                    f = d / key
                    f.write_text(value)
                    if fs_group is not None:
                        os.chown(f, 0, int(fs_group))
                    os.chmod(f, mode)
                os.chmod(d, 0o755)
            else:
                raise ValueError(f"volume {v['name']}: only emptyDir and secret are emulated")
            self.volume_dirs[v["name"]] = d

    def _network(self) -> None:
        for s in (self.spec.get("securityContext") or {}).get("sysctls", []):
            self.network.run(["sysctl", "-q", "-w", f"{s['name']}={s['value']}"])
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        aliases = self.spec.get("hostAliases") or []
        if aliases:
            lines.append("\n# Entries added by HostAliases.")
            for a in aliases:
                lines.append(a["ip"] + "\t" + "\t".join(a.get("hostnames", [])))
        self.hosts.write_text("\n".join(lines) + "\n")
        os.chmod(self.hosts, 0o644)

    def prepare(self) -> "Pod":
        """The network namespace, /etc/hosts and volumes; containers start with start()."""
        self._network()
        self._volumes()
        self.prepared = True
        return self

    def start(self, startup_timeout: float = 60) -> "Pod":
        if not self.prepared:
            self.prepare()
        for spec in self.spec.get("initContainers", []):
            c = Container(self, spec, init=True)
            self.containers.append(c)
            c.start()
            assert c.proc is not None
            if spec.get("restartPolicy") == "Always":
                deadline = time.time() + startup_timeout
                while not c.probe_passes():
                    if not c.running():
                        raise RuntimeError(f"native sidecar {c.name} exited:\n{c.stderr()}")
                    if time.time() > deadline:
                        raise RuntimeError(f"startup probe of {c.name} never passed:\n{c.stderr()}")
                    time.sleep(1)
            else:
                rc = c.proc.wait(startup_timeout)
                if rc != 0:
                    raise RuntimeError(f"init container {c.name} exited {rc}:\n{c.stderr()}")
        for spec in self.spec.get("containers", []):
            c = Container(self, spec, init=False)
            self.containers.append(c)
            c.start()
        return self

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    def wait(self, name: str, timeout: float) -> int:
        c = self.container(name)
        assert c.proc is not None
        return c.proc.wait(timeout)

    def stop(self) -> None:
        for c in reversed(self.containers):
            c.stop()
        if self.own_network:
            self.network.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Pod":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
