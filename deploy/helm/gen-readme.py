#!/usr/bin/env python3
"""Regenerate the values table of the chart README from values.yaml comments.

Every key preceded by a `# -- description` comment (continued by further
comment lines) in values.yaml gets a row: key path, type, default, and
description. The table goes between the markers
`<!-- values-table:start -->` and `<!-- values-table:end -->` of README.md.

    python3 deploy/helm/gen-readme.py           # rewrite README.md
    python3 deploy/helm/gen-readme.py --check   # exit 1 when out of date

Needs PyYAML.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "polars-cloud-auth"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+|\"[^\"]+\"):(?:\s|$)")
_DOC = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^\s*#(?: ?(?P<text>.*))$")


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted key path, description) for each documented key, in file order."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None
    for line in values_text.splitlines():
        if m := _DOC.match(line):
            doc = [m.group("text").strip()]
            continue
        if doc is not None and (m := _MORE.match(line)):
            doc.append((m.group("text") or "").strip())
            continue
        m = _KEY.match(line)
        if not m:
            if not line.strip():
                doc = None
            continue
        indent = len(m.group("indent"))
        key = m.group("key").strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if doc is not None:
            rows.append((".".join(k for _, k in stack), " ".join(t for t in doc if t)))
        doc = None
    return rows


def _lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def _type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = [
        "| Key | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for path, description in documented_keys(values_text):
        value = _lookup(values, path)
        default = json.dumps(value, separators=(", ", ": "))
        lines.append(
            f"| `{path}` | {_type(value)} | `{_cell(default)}` | {_cell(description)} |"
        )
    return "\n".join(lines)


def render_readme(readme: str, values_text: str) -> str:
    head, sep, rest = readme.partition(START)
    if not sep or END not in rest:
        raise SystemExit(f"README.md lacks the markers {START} and {END}")
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    new = render_readme(readme, (CHART / "values.yaml").read_text())
    if "--check" in argv:
        if new != readme:
            print(f"{readme_path} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
