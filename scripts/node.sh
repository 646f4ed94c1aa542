#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine for the slow tests: the control
# plane of scripts/cluster.sh (etcd, kube-apiserver) plus kube-controller-manager,
# kube-scheduler, and a kubelet running pods with containerd 2 and runc. Pods run for
# real: images imported from OCI archives (nothing can be pulled here), the sandbox
# ("pause") image built locally from tools/node/pause.c, a CNI bridge that keeps every pod
# address on this machine.
#
#   scripts/node.sh build   build what is not cached yet (cluster.sh build, containerd, pause)
#   scripts/node.sh binary  build our binary as the image needs it; print its path
#   scripts/node.sh start   start the control plane and the node; needs root
#   scripts/node.sh env     print the running node's environment (eval it)
#   scripts/node.sh stop    stop everything start started and put the host back as it was
#
# Why containerd 2 (v2.4.x, built from the Go module proxy) and not Debian's containerd
# 1.6: kubelet 1.38 drops containerd 1.x, and 1.6 is past its end of life; containerd 2
# still supports cgroup v1 (which this machine has) until at least May 2029. runc comes
# from Debian (crun 1.8 refuses this machine's hybrid cgroups).
#
# What it changes on the host, and gives back at stop: the kubelet's kernel tunables
# (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
# kernel.keys.root_maxkeys, kernel.keys.root_maxbytes), a bridge (pca0) with 10.213.0.1/24,
# blackhole routes for the pod and service ranges (no pod or service address can leave by
# the default route), the cgroup /pca-node in each v1 hierarchy, and the fixed paths the
# kubelet, containerd and CNI use without a flag (removed when this script made them).
# The kubelet's iptables chains are off (makeIPTablesUtilChains: false), and pods get no
# default route: a pod reaches other pods and the bridge address, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

CONTAINERD_VERSION=v2.4.2
cache=${XDG_CACHE_HOME:-$HOME/.cache}/polars-cloud-auth
bin=$cache/bin
dir=${POLARS_CLOUD_AUTH_NODE_DIR:-${TMPDIR:-/tmp}/polars-cloud-auth-node-$(pwd | sha256sum | cut -c1-8)}
CONTAINERD=$bin/containerd-$CONTAINERD_VERSION
SHIM=$bin/containerd-shim-runc-v2-$CONTAINERD_VERSION
CTR=$bin/ctr-$CONTAINERD_VERSION
PAUSE=$bin/pause-$(sha256sum tools/node/pause.c | cut -c1-12)

NODE_NAME=pca-node
BRIDGE=pca0
BRIDGE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
# Blackholed on the host: a wider pod range, and the cluster's service range (there is no
# kube-proxy, so nothing must ever try the default route for a service address).
BLACKHOLES=(10.213.0.0/16 10.96.0.0/16)
CGROUP_ROOT=pca-node
SANDBOX_IMAGE=localhost/polars-cloud-auth-test/pause:1
TUNABLES=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Paths used without a flag: removed at stop when start made them.
FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /run/containerd /run/netns
  /var/lib/cni /etc/cni /opt/cni)

export NO_PROXY=127.0.0.1,localhost,$BRIDGE_IP no_proxy=127.0.0.1,localhost,$BRIDGE_IP
unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy

log() { echo "node: $*" >&2; }

build() {
  bash scripts/cluster.sh build
  # iptables: tests/py/test_node.py cuts one pod off the IdP with a rule in its namespace.
  if ! command -v runc >/dev/null 2>&1 || [ ! -x /usr/lib/cni/bridge ] || ! command -v ip >/dev/null 2>&1 \
      || ! command -v iptables >/dev/null 2>&1; then
    log "installing runc, containernetworking-plugins, iproute2 and iptables with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc containernetworking-plugins iproute2 iptables >/dev/null
  fi
  mkdir -p "$bin"
  if [ ! -x "$CONTAINERD" ] || [ ! -x "$SHIM" ] || [ ! -x "$CTR" ]; then
    log "building containerd $CONTAINERD_VERSION (first run: minutes)"
    local tmp start=$SECONDS
    tmp=$(mktemp -d "$bin/.build.XXXXXX")
    GOBIN=$tmp GOFLAGS="-mod=mod -buildvcs=false" go install -trimpath -p "$(nproc)" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
    mv "$tmp/containerd" "$CONTAINERD"
    mv "$tmp/containerd-shim-runc-v2" "$SHIM"
    mv "$tmp/ctr" "$CTR"
    rm -rf "$tmp"
    log "built containerd in $((SECONDS - start)) s"
  fi
  if [ ! -x "$PAUSE" ]; then
    cc -static -Os -o "$PAUSE.tmp" tools/node/pause.c
    mv "$PAUSE.tmp" "$PAUSE"
  fi
}

# Our binary as the image needs it: release, statically linked (the image is FROM
# scratch). The Dockerfile links it against musl; no musl target can be installed here
# (rustup's downloads are not reachable), so glibc is linked statically instead: the same
# code, another C library. A target directory of its own, so that it builds beside
# `cargo test` without waiting for its lock.
binary() {
  local target=x86_64-unknown-linux-gnu
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/image \
    cargo build --locked --release --quiet --target "$target" >&2
  echo "$PWD/target/image/$target/release/polars-cloud-auth"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A pid file's process is ours only while it still runs the binary it was started from.
running() { # pidfile binary
  local pid exe
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$exe" = "$(readlink -f "$2")" ]
}

wait_for() { # what binary seconds command...
  local what=$1 binary=$2 secs=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! running "$dir/$what.pid" "$binary" || [ $SECONDS -ge $deadline ]; then
      log "$what did not come up (within $secs s); its log:"
      tail -n 40 "$dir/$what.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# The host state start changes, saved once (a second start keeps the first record).
save_host() {
  [ -f "$dir/host.saved" ] && return 0
  : >"$dir/host.sysctl"
  local t p
  for t in "${TUNABLES[@]}"; do
    echo "$t=$(sysctl -n "$t")" >>"$dir/host.sysctl"
  done
  : >"$dir/host.paths"
  for p in "${FIXED_PATHS[@]}"; do
    [ -e "$p" ] || echo "$p" >>"$dir/host.paths"
  done
  touch "$dir/host.saved"
}

network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local r
  for r in "${BLACKHOLES[@]}"; do
    ip route replace blackhole "$r"
  done
  mkdir -p "$dir/cni"
  # No default route in pods (host-local gets no routes), no masquerade: a pod reaches
  # the other pods and the bridge address only.
  cat >"$dir/cni/10-pca.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pca",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.213.0.10", "gateway": "$BRIDGE_IP"}]],
        "dataDir": "$dir/cni-ipam"
      }
    }
  ]
}
EOF
}

cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    case "$h" in */unified/) continue ;; esac
    mkdir -p "$h$CGROUP_ROOT"
  done
}

containerd_config() {
  mkdir -p "$dir/containerd" "$dir/bin"
  ln -sf "$SHIM" "$dir/bin/containerd-shim-runc-v2"
  ln -sf "$(command -v runc)" "$dir/bin/runc"
  cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"

[grpc]
  address = "$dir/containerd/containerd.sock"

[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.runtime']
  # Root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj would fail every sandbox.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$SANDBOX_IMAGE"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
}

kubelet_config() { # port healthz-port
  : >"$dir/resolv.conf"
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only (the VM holds the memory controller there).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
# The kubelet's API on loopback only: no pod can reach it.
address: 127.0.0.1
port: $1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $2
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
makeIPTablesUtilChains: false
protectKernelDefaults: false
failSwapOn: false
# Nothing can be pulled: images imported by the tests must never be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
resolvConf: $dir/resolv.conf
serializeImagePulls: false
maxPods: 110
EOF
}

start() {
  if [ "$(id -u)" != 0 ]; then
    log "the node needs root (containerd, runc, network and mount namespaces)"
    return 1
  fi
  if running "$dir/kubelet.pid" "$bin/kubelet-$(k8s_version)"; then
    log "already running (scripts/node.sh stop first)"
    return 0
  fi
  build
  stop_quiet
  mkdir -p "$dir"
  chmod 700 "$dir"
  save_host
  local t0=$SECONDS
  bash scripts/cluster.sh start
  eval "$(bash scripts/cluster.sh env)"
  local v pki
  v=$(k8s_version)
  pki=$(dirname "$POLARS_CLOUD_AUTH_CLUSTER_CA")

  local cm_port sched_port
  cm_port=$(free_port)
  sched_port=$(free_port)
  "$bin/kube-controller-manager-$v" --kubeconfig="$KUBECONFIG" \
    --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --secure-port="$cm_port" --leader-elect=false \
    --root-ca-file="$POLARS_CLOUD_AUTH_CLUSTER_CA" \
    --service-account-private-key-file="$pki/sa.key" \
    --use-service-account-credentials=false --allocate-node-cidrs=false \
    --controllers='*,-node-ipam-controller' \
    --profiling=false --v=1 >"$dir/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"
  "$bin/kube-scheduler-$v" --kubeconfig="$KUBECONFIG" \
    --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false \
    --profiling=false --v=1 >"$dir/kube-scheduler.log" 2>&1 &
  echo $! >"$dir/kube-scheduler.pid"

  network
  cgroups
  containerd_config
  PATH="$dir/bin:$PATH" "$CONTAINERD" --config "$dir/containerd/config.toml" \
    >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  wait_for containerd "$CONTAINERD" 60 "$CTR" --address "$dir/containerd/containerd.sock" version
  pause_image

  local kport hport
  kport=$(free_port)
  hport=$(free_port)
  kubelet_config "$kport" "$hport"
  "$bin/kubelet-$v" --config="$dir/kubelet.yaml" --kubeconfig="$KUBECONFIG" \
    --root-dir="$dir/kubelet" --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP" \
    --v=1 >"$dir/kubelet.log" 2>&1 &
  echo $! >"$dir/kubelet.pid"
  wait_for kubelet "$bin/kubelet-$v" 120 \
    "$POLARS_CLOUD_AUTH_KUBECTL" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s

  cat >"$dir/env" <<EOF
$(bash scripts/cluster.sh env)
export POLARS_CLOUD_AUTH_NODE_NAME=$NODE_NAME
export POLARS_CLOUD_AUTH_NODE_IP=$BRIDGE_IP
export POLARS_CLOUD_AUTH_NODE_DIR=$dir
export POLARS_CLOUD_AUTH_CTR="$CTR --address $dir/containerd/containerd.sock --namespace k8s.io"
export POLARS_CLOUD_AUTH_NODE_LOGS=$dir/kubelet.log
export NO_PROXY=127.0.0.1,localhost,$BRIDGE_IP
EOF
  log "node $NODE_NAME ready in $((SECONDS - t0)) s (kubelet $v, containerd $CONTAINERD_VERSION," \
    "runc $(runc --version | awk 'NR==1 {print $3}')); eval \"\$(scripts/node.sh env)\""
}

k8s_version() {
  awk '$1 == "k8s.io/kubernetes" { print $2; exit }' tools/cluster/k8s/go.mod
}

# The sandbox image: one layer with the static pause binary, imported as an OCI archive.
pause_image() {
  local archive=$dir/pause.oci.tar
  python3 tests/py/oci.py pause "$PAUSE" "$SANDBOX_IMAGE" "$archive"
  "$CTR" --address "$dir/containerd/containerd.sock" --namespace k8s.io images import \
    --no-unpack=false "$archive" >/dev/null
}

env_() {
  if [ ! -f "$dir/env" ] || ! running "$dir/kubelet.pid" "$bin/kubelet-$(k8s_version)"; then
    log "no node is running in $dir (scripts/node.sh start)"
    return 1
  fi
  cat "$dir/env"
}

stop_one() { # name (its pid file is $dir/name.pid)
  local pidfile=$dir/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Every container's process, then the shims: what the kubelet leaves running when it stops.
stop_containers() {
  local sock=$dir/containerd/containerd.sock pid exe
  if [ -S "$sock" ] && running "$dir/containerd.pid" "$CONTAINERD"; then
    local ctr=("$CTR" --address "$sock" --namespace k8s.io) id
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
      "${ctr[@]}" containers rm "$id" >/dev/null 2>&1 || true
    done
  fi
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    [ "$exe" = "$(readlink -f "$SHIM")" ] && kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_under() { # path: every mount below it, deepest first
  local m
  awk -v d="$1" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

restore_host() {
  [ -f "$dir/host.saved" ] || return 0
  local line p h r
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null 2>&1 || true
  done <"$dir/host.sysctl"
  for r in "${BLACKHOLES[@]}"; do
    ip route del blackhole "$r" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # Network namespaces CNI made for our pods.
  for p in /run/netns/cni-*; do
    [ -e "$p" ] || continue
    umount "$p" 2>/dev/null || true
    rm -f "$p"
  done
  for h in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    [ -d "$h" ] || continue
    find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    unmount_under "$p"
    rm -rf "$p"
  done <"$dir/host.paths"
  # Log links the kubelet made into our directory, where /var/log/containers was there before.
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
  fi
  rm -f "$dir/host.saved"
}

stop_quiet() {
  [ -d "$dir" ] || return 0
  stop_one kubelet
  stop_containers
  stop_one containerd
  stop_one kube-scheduler
  stop_one kube-controller-manager
  unmount_under "$dir/"
  restore_host
  bash scripts/cluster.sh stop >/dev/null 2>&1 || true
}

stop() {
  stop_quiet
  rm -rf "$dir"
  log "stopped; host settings restored"
}

case "${1:-}" in
  build) build ;;
  binary) binary ;;
  start) start ;;
  env) env_ ;;
  stop) stop ;;
  *) echo "usage: scripts/node.sh build|binary|start|env|stop" >&2; exit 2 ;;
esac
