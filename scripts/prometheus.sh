#!/usr/bin/env bash
# Prometheus and promtool for the monitoring tests, built from source with `go` (pinned in
# tools/prometheus/go.mod) and cached outside the repo, as scripts/cluster.sh does for the
# Kubernetes peers.
#
#   scripts/prometheus.sh build   build the binaries that are not cached yet
#   scripts/prometheus.sh path    print the path of the cached prometheus, then promtool
#   scripts/prometheus.sh crds    generate the Prometheus Operator's CRDs (ServiceMonitor,
#                                 PodMonitor, PrometheusRule) if not cached; print their directory
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

# The CRDs: controller-gen (pinned in tools/prometheus/crds/go.mod) over the operator's API
# types module, as the operator's own build makes them; nothing vendored.
CRD_MOD=tools/prometheus/crds
mod_version() { # module path, go.mod
  awk -v m="$1" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$2"
}
CRD_TYPES=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
CRD_VERSION=$(mod_version "$CRD_TYPES" "$CRD_MOD/go.mod")
CONTROLLER_GEN_VERSION=$(mod_version sigs.k8s.io/controller-tools "$CRD_MOD/go.mod")
CONTROLLER_GEN=$bin/controller-gen-$CONTROLLER_GEN_VERSION
CRD_DIR=$cache/crds/prometheus-operator-$CRD_VERSION

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

crds() {
  if [ -f "$CRD_DIR/monitoring.coreos.com_prometheusrules.yaml" ]; then
    echo "$CRD_DIR"
    return 0
  fi
  mkdir -p "$bin" "$cache/crds"
  local tmp start=$SECONDS
  tmp=$(mktemp -d "$cache/crds/.gen.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  if [ ! -x "$CONTROLLER_GEN" ]; then
    log "building controller-gen $CONTROLLER_GEN_VERSION"
    (cd "$CRD_MOD" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -ldflags="-s -w" \
      -o "$tmp/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
    mv "$tmp/controller-gen" "$CONTROLLER_GEN"
  fi
  (cd "$CRD_MOD" && GOFLAGS="-mod=readonly" "$CONTROLLER_GEN" crd:crdVersions=v1 \
    "paths=$CRD_TYPES/v1" "output:crd:dir=$tmp/all")
  mkdir -p "$tmp/out"
  local kind
  for kind in servicemonitors podmonitors prometheusrules; do
    mv "$tmp/all/monitoring.coreos.com_$kind.yaml" "$tmp/out/"
  done
  rm -rf "$CRD_DIR"
  mv "$tmp/out" "$CRD_DIR"
  log "generated the CRDs of $CRD_TYPES $CRD_VERSION in $((SECONDS - start)) s"
  echo "$CRD_DIR"
}

case "${1:-}" in
  build) build ;;
  crds) crds ;;
  path) echo "$PROMETHEUS"; echo "$PROMTOOL" ;;
  *)
    echo "usage: $0 build|path|crds" >&2
    exit 2
    ;;
esac
