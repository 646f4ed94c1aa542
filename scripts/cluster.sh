#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the slow tests: etcd and kube-apiserver
# (no kubelet, no controller manager: pods are admitted, validated and stored, never run),
# plus kubectl and the Helm CLI. Everything is built from source with `go` (pinned below and
# in tools/cluster/k8s/go.mod) and cached outside the repo.
#
#   scripts/cluster.sh build   build the binaries that are not cached yet
#   scripts/cluster.sh start   build if needed, start etcd + kube-apiserver, write a kubeconfig
#   scripts/cluster.sh env     print the environment of the running cluster (eval it)
#   scripts/cluster.sh stop    stop what start started (by the pids it wrote)
#
# The state (certificates, keys, token, kubeconfig, logs, etcd data) lives in
# $POLARS_CLOUD_AUTH_CLUSTER_DIR (default ${TMPDIR:-/tmp}/polars-cloud-auth-cluster-<checkout hash>).
# Every listener binds 127.0.0.1 on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v4.3.2
K8S_MOD=tools/cluster/k8s
# The versions of the k8s.io/kubernetes and etcd server modules pinned in go.mod.
mod_version() {
  awk -v m="$1" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' \
    "$K8S_MOD/go.mod"
}
K8S_VERSION=$(mod_version k8s.io/kubernetes)
ETCD_VERSION=$(mod_version go.etcd.io/etcd/server/v3)

cache=${XDG_CACHE_HOME:-$HOME/.cache}/polars-cloud-auth
bin=$cache/bin
# One per checkout, so worktrees testing at once do not share a cluster.
dir=${POLARS_CLOUD_AUTH_CLUSTER_DIR:-${TMPDIR:-/tmp}/polars-cloud-auth-cluster-$(pwd | sha256sum | cut -c1-8)}

APISERVER=$bin/kube-apiserver-$K8S_VERSION
KUBECTL=$bin/kubectl-$K8S_VERSION
ETCD=$bin/etcd-$ETCD_VERSION
# The node's parts (scripts/node.sh runs them): the same module, the same `go build`.
KUBELET=$bin/kubelet-$K8S_VERSION
CONTROLLER_MANAGER=$bin/kube-controller-manager-$K8S_VERSION
SCHEDULER=$bin/kube-scheduler-$K8S_VERSION
HELM=$bin/helm-$HELM_VERSION

# Only loopback is ever a target: keep any proxy setting away from our processes.
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy

log() { echo "cluster: $*" >&2; }

build() {
  if ! command -v go >/dev/null 2>&1; then
    log "the Go toolchain is needed to build the cluster's binaries (go on PATH)"
    return 1
  fi
  mkdir -p "$bin"
  rm -rf "$bin"/.build.*  # left by an interrupted build
  local tmp
  tmp=$(mktemp -d "$bin/.build.XXXXXX")
  # Lean builds: no DWARF or symbol tables, no local paths; one job per core.
  local flags=(-trimpath -p "$(nproc)")
  if [ ! -x "$APISERVER" ] || [ ! -x "$KUBECTL" ] || [ ! -x "$ETCD" ] || [ ! -x "$KUBELET" ] ||
    [ ! -x "$CONTROLLER_MANAGER" ] || [ ! -x "$SCHEDULER" ]; then
    log "building kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler $K8S_VERSION and etcd $ETCD_VERSION (first run: minutes)"
    # The version stamps upstream's hack/lib/version.sh sets (kubectl version, /version).
    local v=${K8S_VERSION#v} ldflags="-s -w" pkg key val
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      for key in gitVersion=$K8S_VERSION gitMajor=${v%%.*} gitMinor=$(echo "$v" | cut -d. -f2) \
        gitTreeState=clean; do
        val=${key#*=}
        ldflags+=" -X $pkg.${key%%=*}=$val"
      done
    done
    local start=$SECONDS
    (cd "$K8S_MOD" && GOFLAGS="-mod=readonly -buildvcs=false" go build "${flags[@]}" -ldflags="$ldflags" \
      -o "$tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler ./etcd)
    mv "$tmp/kube-apiserver" "$APISERVER"
    mv "$tmp/kubectl" "$KUBECTL"
    mv "$tmp/kubelet" "$KUBELET"
    mv "$tmp/kube-controller-manager" "$CONTROLLER_MANAGER"
    mv "$tmp/kube-scheduler" "$SCHEDULER"
    mv "$tmp/etcd" "$ETCD"
    log "built kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler, etcd in $((SECONDS - start)) s"
  fi
  if [ ! -x "$HELM" ]; then
    log "building helm $HELM_VERSION"
    local start=$SECONDS
    # `go install pkg@version` builds with Helm's own go.mod, exactly as released.
    GOBIN=$tmp GOFLAGS="-mod=mod -buildvcs=false" go install "${flags[@]}" \
      -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    mv "$tmp/helm" "$HELM"
    log "built helm in $((SECONDS - start)) s"
  fi
  rm -rf "$tmp"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A pid file's process is ours only while it still runs one of our binaries (a stale pid
# file may name a pid that was reused since).
running() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  local exe
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$exe" = "$(readlink -f "$APISERVER")" ] || [ "$exe" = "$(readlink -f "$ETCD")" ]
}

wait_for() { # what (its pid file and log are $dir/what.{pid,log}), seconds, command...
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! running "$dir/$what.pid" || [ $SECONDS -ge $deadline ]; then
      log "$what did not come up (within $secs s); its log:"
      tail -n 40 "$dir/$what.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

certs() {
  local d=$dir/pki
  mkdir -p "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 7 \
    -subj "/CN=polars-cloud-auth test cluster CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$d/apiserver.key" -out "$d/apiserver.csr" \
    -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -CAcreateserial -days 7 -extfile "$d/ext" -out "$d/apiserver.crt" 2>/dev/null
  # Service-account token signing (TokenRequest, the projected token volumes).
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  # The admin: a static bearer token in system:masters.
  openssl rand -hex 24 >"$d/admin.token"
  printf '%s,polars-cloud-auth-admin,polars-cloud-auth-admin,system:masters\n' \
    "$(cat "$d/admin.token")" >"$d/tokens.csv"
  chmod 600 "$d"/*.key "$d/admin.token" "$d/tokens.csv"
}

kubeconfig() { # port
  local d=$dir/pki
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: polars-cloud-auth-test
    cluster:
      server: https://127.0.0.1:$1
      certificate-authority-data: $(base64 -w0 "$d/ca.crt")
users:
  - name: admin
    user:
      token: $(cat "$d/admin.token")
contexts:
  - name: polars-cloud-auth-test
    context: {cluster: polars-cloud-auth-test, user: admin}
current-context: polars-cloud-auth-test
EOF
  chmod 600 "$dir/kubeconfig"
}

start() {
  if running "$dir/kube-apiserver.pid"; then
    log "already running (scripts/cluster.sh stop first); env in $dir/env"
    return 0
  fi
  build
  stop_quiet
  rm -rf "$dir"
  mkdir -p "$dir"
  chmod 700 "$dir"
  certs
  local etcd_port etcd_peer api_port t0=$SECONDS
  etcd_port=$(free_port)
  etcd_peer=$(free_port)
  api_port=$(free_port)

  "$ETCD" --data-dir "$dir/etcd" --listen-client-url "http://127.0.0.1:$etcd_port" \
    --listen-peer-url "http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  local d=$dir/pki
  # Service-account token discovery (/.well-known/openid-configuration, /openid/v1/jwks) is
  # the one thing open without credentials, as a cluster that federates its workloads'
  # identity exposes it; everything else still needs the admin token.
  cat >"$dir/authn.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
    - path: /.well-known/openid-configuration
    - path: /openid/v1/jwks
EOF
  # The issuer of new tokens is the API server's own loopback URL, so that a peer (Keycloak's
  # Kubernetes identity provider) can fetch its discovery and JWKS; the in-cluster name is
  # still accepted.
  local issuer=https://127.0.0.1:$api_port
  "$APISERVER" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --cert-dir="$dir/cert-dir" \
    --token-auth-file="$d/tokens.csv" --authentication-config="$dir/authn.yaml" \
    --authorization-mode=RBAC \
    --service-account-issuer="$issuer" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences="$issuer,https://kubernetes.default.svc.cluster.local" \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota,PodSecurity \
    --profiling=false --v=1 >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  wait_for kube-apiserver 120 curl -fsS --cacert "$d/ca.crt" \
    -H "Authorization: Bearer $(cat "$d/admin.token")" "https://127.0.0.1:$api_port/readyz"
  kubeconfig "$api_port"
  # Anonymous requests pass authentication only on the two discovery paths; this lets them
  # through authorization there too (the bootstrap role allows exactly those paths).
  "$KUBECTL" --kubeconfig "$dir/kubeconfig" create clusterrolebinding \
    polars-cloud-auth-issuer-discovery --clusterrole=system:service-account-issuer-discovery \
    --group=system:unauthenticated >/dev/null

  cat >"$dir/env" <<EOF
export POLARS_CLOUD_AUTH_KUBECONFIG=$dir/kubeconfig
export POLARS_CLOUD_AUTH_KUBECTL=$KUBECTL
export POLARS_CLOUD_AUTH_HELM=$HELM
export KUBECONFIG=$dir/kubeconfig
export NO_PROXY=127.0.0.1,localhost
export POLARS_CLOUD_AUTH_CLUSTER_ISSUER=$issuer
export POLARS_CLOUD_AUTH_CLUSTER_CA=$d/ca.crt
EOF
  log "kube-apiserver $K8S_VERSION ready on https://127.0.0.1:$api_port in $((SECONDS - t0)) s" \
    "(etcd 127.0.0.1:$etcd_port); eval \"\$(scripts/cluster.sh env)\""
}

env_() {
  if ! running "$dir/kube-apiserver.pid" || [ ! -f "$dir/env" ]; then
    log "no cluster is running in $dir (scripts/cluster.sh start)"
    return 1
  fi
  cat "$dir/env"
}

stop_one() { # name
  local pidfile=$dir/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$pidfile"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_quiet() {
  [ -d "$dir" ] || return 0
  stop_one kube-apiserver
  stop_one etcd
}

stop() {
  stop_quiet
  rm -f "$dir/env"
  log "stopped"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  env) env_ ;;
  stop) stop ;;
  *) echo "usage: scripts/cluster.sh build|start|env|stop" >&2; exit 2 ;;
esac
