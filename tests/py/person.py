"""A person signing in: `polars-cloud-auth login --no-browser`, approved on the identity
provider's own pages by an approve script (tests/idp/approve.mjs for the test IdP,
tests/keycloak/approve.mjs for Keycloak), as the suites that need login's files do."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

# What a desktop session would add to a login: a browser to open, another config home.
NOT_A_DESKTOP = ("XDG_CONFIG_HOME", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER")


def login(binary: Path, env: dict[str, str], approve_script: Path,
          wrap: Callable[[list[str]], list[str]] = lambda argv: argv) -> str:
    """Runs login with `env` (its HOME gets the files), approves the code it prints with
    `approve_script`, and returns the verification URL it printed. `wrap` runs both
    commands in another setting (a mount namespace, say)."""
    env = {k: v for k, v in env.items() if k not in NOT_A_DESKTOP}
    proc = subprocess.Popen(wrap([str(binary), "login", "--no-browser"]), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    url = next((line.strip() for line in proc.stderr if line.startswith("    http")), None)
    if url is None:
        proc.kill()
        raise AssertionError(f"login printed no URL: {proc.stderr.read()}")
    approve = subprocess.run(wrap(["node", str(approve_script), url]), env=env,
                             capture_output=True, text=True, timeout=60)
    assert approve.returncode == 0, approve.stderr
    assert proc.wait(60) == 0, proc.stderr.read()
    return url
