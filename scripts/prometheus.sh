#!/usr/bin/env bash
# Prometheus and promtool for the monitoring tests, built from source with `go` (pinned in
# tools/prometheus/go.mod) and cached outside the repo, as scripts/cluster.sh does for the
# Kubernetes peers.
#
#   scripts/prometheus.sh build   build the binaries that are not cached yet
#   scripts/prometheus.sh path    print the path of the cached prometheus, then promtool
#
# Built with -tags remove_all_sd: the cloud service discoveries are left out (the tests use
# static targets only), which makes the build several times smaller.
set -euo pipefail
cd "$(dirname "$0")/.."

MOD=tools/prometheus
VERSION=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3; exit }
  $1 == "github.com/prometheus/prometheus" { print $2; exit }' "$MOD/go.mod")

cache=${XDG_CACHE_HOME:-$HOME/.cache}/polars-cloud-auth
bin=$cache/bin
PROMETHEUS=$bin/prometheus-$VERSION
PROMTOOL=$bin/promtool-$VERSION

log() { echo "prometheus: $*" >&2; }

build() {
  if [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]; then
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    log "the Go toolchain is needed to build prometheus and promtool (go on PATH)"
    return 1
  fi
  mkdir -p "$bin"
  local tmp
  tmp=$(mktemp -d "$bin/.build-prometheus.XXXXXX")
  # Removed on any exit: an interrupted build leaves nothing half-written in the cache.
  trap 'rm -rf "$tmp"' RETURN
  log "building prometheus and promtool $VERSION (first run: minutes)"
  local start=$SECONDS pkg=github.com/prometheus/common/version
  # The version stamps upstream's .promu.yml sets (prometheus --version, /api/v1/status/buildinfo).
  local ldflags="-s -w -X $pkg.Version=${VERSION#v} -X $pkg.Revision=$VERSION -X $pkg.Branch=module"
  (cd "$MOD" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -p "$(nproc)" \
    -tags remove_all_sd -ldflags="$ldflags" -o "$tmp/" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool)
  mv "$tmp/prometheus" "$PROMETHEUS"
  mv "$tmp/promtool" "$PROMTOOL"
  log "built prometheus and promtool in $((SECONDS - start)) s"
}

case "${1:-}" in
  build) build ;;
  path) echo "$PROMETHEUS"; echo "$PROMTOOL" ;;
  *)
    echo "usage: $0 build|path" >&2
    exit 2
    ;;
esac
