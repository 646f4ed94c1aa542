"""The Dockerfile is linted with hadolint (no Docker engine runs on these machines, so the
image is not built here; the release workflow builds it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: run scripts/setup.sh"
    return found


def test_dockerfile_passes_hadolint():
    run = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    run = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert run.returncode != 0 and "DL3006" in run.stdout


def test_final_image_is_small_and_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert stages[-1] == "scratch"
    final = text[text.rindex("FROM ") :]
    user = re.search(r"^USER (\d+)", final, re.M)
    assert user and int(user.group(1)) != 0
    assert 'ENTRYPOINT ["/usr/local/bin/polars-cloud-auth"]' in final
