"""OCI image archives made without a Docker engine or a registry, for the real node
(scripts/node.sh, tests/py/test_node.py): `ctr images import` takes them.

* ``our_image``: our image, built by reading the final stage of the repository's
  ``Dockerfile`` (FROM scratch, COPY, ENV, USER, EXPOSE, ENTRYPOINT, CMD, LABEL) and
  carrying it out with local files in place of the build stage's: the binary and the CA
  roots. No instruction is left out silently: an unknown one is an error, so the image
  the suite runs cannot drift from the Dockerfile.
* ``pause``: the node's sandbox image (tools/node/pause.c, built by scripts/node.sh).
* ``app_image``: an app image with Python and one ``polars-cloud`` client (a venv), for
  the real client in real pods.

Archives are deterministic (sorted entries, time 0, root-owned unless told): the same
inputs give the same digests, so containerd shares layers between images.

    python3 tests/py/oci.py pause BINARY REF OUT
    python3 tests/py/oci.py ours BINARY REF OUT
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import stat
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[2]
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
# What the COPY --from=build sources of the Dockerfile are on this machine.
CA_ROOTS = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Entry:
    """One file, directory or symlink of a layer, at ``path`` (absolute, in the image)."""

    path: str
    source: Path | None = None  # a file to copy; None with data, or for a directory
    data: bytes | None = None
    mode: int = 0o644
    kind: str = "file"  # file, dir, symlink
    target: str = ""  # for a symlink
    uid: int = 0
    gid: int = 0


@dataclass
class Image:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    exposed: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    layers: list[list[Entry]] = field(default_factory=list)

    def config(self, diff_ids: list[str]) -> dict:
        cfg: dict = {"Env": self.env}
        if self.entrypoint is not None:
            cfg["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            cfg["Cmd"] = self.cmd
        if self.user:
            cfg["User"] = self.user
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.exposed:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed}
        if self.labels:
            cfg["Labels"] = self.labels
        return {
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "tests/py/oci.py"} for _ in diff_ids],
        }


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """A deterministic tar of the entries, with every parent directory listed first."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        rel = e.path.strip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_path.setdefault(parent, Entry(path="/" + parent, kind="dir", mode=0o755))
        by_path[rel] = e
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(by_path):
            e = by_path[rel]
            info = tarfile.TarInfo(rel + ("/" if e.kind == "dir" else ""))
            info.mtime = 0
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                data = e.data if e.data is not None else Path(e.source).read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(image: Image, ref: str, out: Path) -> str:
    """Writes an OCI image layout archive for ``ref``; returns the manifest digest."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    layers = []
    for entries in image.layers:
        data = layer_tar(entries)
        layers.append({"mediaType": LAYER_MEDIA, "digest": blob(data), "size": len(data)})
    config = json.dumps(image.config([layer["digest"] for layer in layers]), sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "config": {"mediaType": CONFIG_MEDIA, "digest": blob(config), "size": len(config)},
            "layers": layers,
        },
        sort_keys=True,
    ).encode()
    manifest_digest = blob(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    os.replace(tmp, out)
    return manifest_digest


# ---- the Dockerfile's final stage ---------------------------------------------------


@dataclass
class FinalStage:
    """What the last stage of a Dockerfile says the image is."""

    base: str
    copies: list[tuple[str, str, str]]  # (from stage, source, destination)
    env: list[str]
    user: str
    exposed: list[str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    labels: dict[str, str]


def _logical_lines(text: str) -> list[str]:
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    return lines


def _pairs(rest: str) -> dict[str, str]:
    out = {}
    for word in shlex.split(rest):
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE in the Dockerfile, got {word!r}")
        out[key] = value
    return out


def final_stage(dockerfile: Path) -> FinalStage:
    lines = _logical_lines(dockerfile.read_text())
    starts = [i for i, line in enumerate(lines) if line.split(None, 1)[0].upper() == "FROM"]
    if not starts:
        raise ValueError(f"{dockerfile}: no FROM")
    stage = lines[starts[-1] :]
    st = FinalStage(stage[0].split()[1], [], [], "", [], None, None, {})
    for line in stage[1:]:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "COPY":
            m = re.fullmatch(r"--from=(\S+)\s+(\S+)\s+(\S+)", rest)
            if not m:
                raise ValueError(f"{dockerfile}: COPY form not understood: {line!r}")
            st.copies.append((m.group(1), m.group(2), m.group(3)))
        elif word == "ENV":
            st.env += [f"{k}={v}" for k, v in _pairs(rest).items()]
        elif word == "LABEL":
            st.labels.update(_pairs(rest))
        elif word == "USER":
            st.user = rest
        elif word == "EXPOSE":
            st.exposed += [p if "/" in p else p + "/tcp" for p in rest.split()]
        elif word == "ENTRYPOINT":
            st.entrypoint = json.loads(rest)
        elif word == "CMD":
            st.cmd = json.loads(rest)
        else:
            raise ValueError(f"{dockerfile}: {word} in the final stage is not built by tests/py/oci.py")
    return st


def our_image(binary: Path, dockerfile: Path = ROOT / "Dockerfile") -> Image:
    """Our image, instruction by instruction from the Dockerfile's final stage, with the
    build stage's outputs taken from this machine: the static binary, and the CA roots."""
    st = final_stage(dockerfile)
    if st.base != "scratch":
        raise ValueError(f"{dockerfile}: the final stage must be FROM scratch, not {st.base}")
    local = {"/polars-cloud-auth": binary, str(CA_ROOTS): CA_ROOTS}
    entries = []
    for _stage, src, dst in st.copies:
        if src not in local:
            raise ValueError(f"{dockerfile}: no local file stands for COPY source {src}")
        path = Path(local[src])
        mode = 0o755 if os.access(path, os.X_OK) and path != CA_ROOTS else 0o644
        entries.append(Entry(path=dst, source=path, mode=mode))
    return Image(
        entrypoint=st.entrypoint,
        cmd=st.cmd,
        env=st.env,
        user=st.user,
        exposed=st.exposed,
        labels=st.labels,
        layers=[entries],
    )


def pause_image(binary: Path) -> Image:
    return Image(
        entrypoint=["/pause"],
        user="65535:65535",
        layers=[[Entry(path="/pause", source=binary, mode=0o755)]],
    )


# ---- an app image with Python and a polars-cloud client -----------------------------

# Not needed to run a client, and large: left out of app images.
SKIP_DIRS = {"__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
             "lib2to3", "pip", "setuptools", "pydoc_data"}


def tree(root: Path, skip: set[str] = SKIP_DIRS) -> list[Entry]:
    """Every file, directory and symlink under ``root``, at the same path in the image."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(path=str(p), kind="symlink", target=os.readlink(p), mode=0o777))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(path=str(p), kind="dir", mode=stat.S_IMODE(st.st_mode)))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(path=str(p), source=p, mode=stat.S_IMODE(st.st_mode)))
    return out


def shared_libraries(files: Iterable[Path]) -> list[Entry]:
    """The system libraries the ELF files load (ldd), at their real paths under /usr, with
    the names they are loaded by as symlinks beside them."""
    import subprocess

    names: set[Path] = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(/\S+) \(0x", line)
            if m:
                names.add(Path(m.group(1)))
    entries: dict[str, Entry] = {}
    for name in sorted(names):
        real = name.resolve()
        entries[str(real)] = Entry(path=str(real), source=real, mode=0o755)
        link = name.parent.resolve() / name.name
        if link != real:
            entries.setdefault(str(link), Entry(path=str(link), kind="symlink", target=str(real), mode=0o777))
    return list(entries.values())


def unused_polars_runtimes(venv: Path) -> set[str]:
    """polars installs two runtimes (32- and 64-bit row indices, about 200 MB each) and
    loads one: the client is imported once and /proc/self/maps says which; the other is
    left out of the image."""
    import subprocess

    present = {p.name for p in venv.glob("lib/python*/site-packages/_polars_runtime_*")
               if p.is_dir()}
    if len(present) < 2:
        return set()
    code = ("import polars_cloud, re; print(' '.join(sorted(set(re.findall("
            "r'(_polars_runtime_\\w+)/', open('/proc/self/maps').read())))))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    if not out:
        return set()
    return present - set(out)


def app_image(python_home: Path, venv: Path, extra: list[Entry]) -> Image:
    """Python (its stdlib, without site-packages), the system libraries it and the venv's
    extension modules load, one venv, and ``extra`` (the test's client scripts)."""
    base = [e for e in tree(python_home) if "/site-packages" not in e.path]
    skip = set(SKIP_DIRS) | unused_polars_runtimes(venv)
    packages = tree(venv, skip)
    elves = [Path(e.path) for e in base + packages if e.kind == "file" and e.path.endswith(".so")]
    elves.append(python_home / "bin" / "python3")
    libs = [e for e in shared_libraries(elves)
            if not e.path.startswith((str(python_home), str(venv)))]
    # Debian's merged /usr: /lib and /lib64 are links, and the loader is found at /lib64.
    links = [Entry(path="/lib", kind="symlink", target="usr/lib", mode=0o777),
             Entry(path="/lib64", kind="symlink", target="usr/lib64", mode=0o777),
             Entry(path="/usr/lib64/ld-linux-x86-64.so.2", kind="symlink",
                   target=str(Path("/lib64/ld-linux-x86-64.so.2").resolve()), mode=0o777),
             Entry(path="/tmp", kind="dir", mode=0o1777),
             # The system roots, as every app base image has them (the client's HTTPS
             # needs some: without any, 0.12 panics at import).
             Entry(path=str(CA_ROOTS), source=CA_ROOTS)]
    return Image(
        env=["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
        layers=[base + libs + links, packages, extra],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[1] not in ("pause", "ours"):
        print(__doc__.strip().splitlines()[-2:], file=sys.stderr)
        return 2
    kind, binary, ref, out = argv[1], Path(argv[2]), argv[3], Path(argv[4])
    image = pause_image(binary) if kind == "pause" else our_image(binary)
    print(write_archive(image, ref, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
