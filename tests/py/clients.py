"""The polars-cloud client releases the tests claim, grouped in behaviour families, each
in a venv of its own (cached between runs).

    import clients
    clients.FAMILIES        # {"config-toml": "0.12.0", "legacy-files": "0.11.3", ...}
    clients.ALL             # every claimed release, oldest first
    clients.venv("0.11.3")  # Path of a venv whose bin/python imports that polars_cloud
    clients.family_of("0.9.0")

A family is a range of releases that authenticate the same way (docs/polars-cloud-client.md
has a section per family). The releases come from tests/py/requirements-clients.txt (one
exact pin a line); adding a release there adds it to `ALL` and to the slow matrix.

Venvs live under `$POLARS_CLOUD_AUTH_CLIENTS_CACHE`, else
`${XDG_CACHE_HOME:-~/.cache}/polars-cloud-auth/clients`, one directory per release, and are
rebuilt when the pinned requirements (or the Python) change. `root=` puts them elsewhere:
pods run by tests/py/kubelet.py cannot see /root, so their venvs live under the checkout.

Also a command: `python tests/py/clients.py install [VERSION...|--all|--quick]`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-clients.txt"
# What the harness (tests/py/client/*.py) imports besides the client: the JWKS check.
HARNESS_REQUIREMENTS = ("cryptography",)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _read_pins() -> list[str]:
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if name.strip() != "polars-cloud" or not sep:
            raise ValueError(f"{REQUIREMENTS}: expected 'polars-cloud==X.Y.Z', got {line!r}")
        pins.append(version.strip())
    return sorted(pins, key=_version_key)


ALL: list[str] = _read_pins()

# Family -> (oldest release in it, description). Ordered newest first; a release belongs
# to the first family whose oldest release it reaches.
_FAMILY_RANGES: list[tuple[str, str, str]] = [
    ("config-toml", "0.12.0",
     "reads config.toml [auth] once, refreshes through auth.<domain> (SSL_CERT_FILE honoured)"),
    ("legacy-files", "0.11.0",
     "re-reads cloud_access_token/cloud_refresh_token every call; refreshes through "
     "auth.<domain> (SSL_CERT_FILE honoured)"),
    ("legacy-builtin-roots", "0.7.0",
     "re-reads the legacy files every call; its HTTPS trusts built-in roots only"),
]


def family_of(version: str) -> str:
    """The family of a release; a release newer than all known ones is in the newest."""
    key = _version_key(version)
    for name, oldest, _ in _FAMILY_RANGES:
        if key >= _version_key(oldest):
            return name
    raise ValueError(f"polars-cloud {version} is older than every claimed family (0.7.0)")


def describe(family: str) -> str:
    return next(d for n, _, d in _FAMILY_RANGES if n == family)


# Family -> its newest claimed release (what the quick suite runs).
FAMILIES: dict[str, str] = {}
for _v in ALL:
    FAMILIES[family_of(_v)] = _v  # ALL is sorted: the last one wins
FAMILIES = {n: FAMILIES[n] for n, _, _ in _FAMILY_RANGES if n in FAMILIES}


def cache_root() -> Path:
    explicit = os.environ.get("POLARS_CLOUD_AUTH_CLIENTS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "polars-cloud-auth" / "clients"


def _key(version: str) -> str:
    pins = "\n".join([f"polars-cloud=={version}", *HARNESS_REQUIREMENTS])
    ident = f"{pins}\n{sys.version_info[:3]}\n{sys.base_prefix}"
    return hashlib.sha256(ident.encode()).hexdigest()


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def venv(version: str, root: Path | None = None) -> Path:
    """The venv of `version` (made once, then cached): `venv(v) / "bin" / "python"` imports
    polars_cloud `version` and the harness's needs. Safe from threads and processes."""
    if version not in ALL:
        raise ValueError(
            f"polars-cloud {version} is not claimed: add 'polars-cloud=={version}' to {REQUIREMENTS}"
        )
    root = root or cache_root()
    target = root / version
    stamp = target / ".polars-cloud-auth-key"
    key = _key(version)
    with _locks_guard:
        lock = _locks.setdefault(str(target), threading.Lock())
    with lock:
        if stamp.is_file() and stamp.read_text() == key:
            return target
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{version}.lock", "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            if stamp.is_file() and stamp.read_text() == key:
                return target
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
            pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q",
                   "--disable-pip-version-check"]
            out = subprocess.run([*pip, f"polars-cloud=={version}", *HARNESS_REQUIREMENTS],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise RuntimeError(
                    f"failed to install polars-cloud {version} into {target}:\n{out.stderr[-3000:]}"
                )
            # Readable by everyone: pods run their app as other users.
            for dirpath, dirnames, filenames in os.walk(target):
                for n in dirnames:
                    os.chmod(os.path.join(dirpath, n), 0o755)
            stamp.write_text(key)
    return target


def python(version: str, root: Path | None = None) -> Path:
    return venv(version, root) / "bin" / "python"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "install":
        print(__doc__, file=sys.stderr)
        return 2
    rest = argv[1:]
    if rest == ["--all"]:
        versions = ALL
    elif rest in ([], ["--quick"]):
        versions = list(FAMILIES.values())
    else:
        versions = rest
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        for v, path in zip(versions, ex.map(venv, versions)):
            print(f"polars-cloud {v} ({family_of(v)}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
