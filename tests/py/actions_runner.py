"""What a GitHub Actions runner reads back from a step: the files behind GITHUB_ENV,
GITHUB_OUTPUT and GITHUB_STATE, shared by the suites that run the action's steps."""

from __future__ import annotations

from pathlib import Path


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


def post_env(job_env: dict[str, str], state: dict[str, str]) -> dict[str, str]:
    """What a runner adds for an action's post step: the job's environment as the earlier
    steps left it through GITHUB_ENV (actions/runner and act both hand it to post steps)
    and the action's GITHUB_STATE as STATE_* variables."""
    return {**job_env, **{f"STATE_{k}": v for k, v in state.items()}}
