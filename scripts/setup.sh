#!/usr/bin/env bash
# Installs what the tests and the demo need, on a fresh machine of this project's kind
# (Rust toolchain present). Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# The test identity provider (oidc-provider), exactly as locked.
# Keyed on the lock file's content, not its timestamp: a checkout touching it is no reason
# to reinstall under running tests.
stamp=tests/idp/node_modules/.lock.sha
want=$(sha256sum tests/idp/package-lock.json | cut -d' ' -f1)
if [ ! -d tests/idp/node_modules/oidc-provider ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# Python side: the real polars-cloud client, Helm, Kubernetes schemas, linters.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum tests/py/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
  echo "$want" > "$stamp"
fi
echo "setup: done"
