#!/usr/bin/env bash
# The test command: every suite, against the real parts installed by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== cargo test"
cargo test --locked --all-targets
echo "== test IdP self-test"
node --test tests/idp/selftest.mjs
echo "== Python suites (real polars-cloud client, Helm, Kubernetes schemas, linters)"
.venv/bin/pytest -q tests/py
