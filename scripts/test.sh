#!/usr/bin/env bash
# The test command: every suite, against the real parts installed by scripts/setup.sh.
#
#   scripts/test.sh          the quick suites (a few minutes)
#   scripts/test.sh --slow   also the suites against slow real peers (Keycloak, a real
#                            kube-apiserver with the Helm CLI, a real node (kubelet,
#                            containerd, runc: needs root), long-running clients);
#                            CI runs this. POLARS_CLOUD_AUTH_SLOW=1 does the same.
set -euo pipefail
cd "$(dirname "$0")/.."
slow=${POLARS_CLOUD_AUTH_SLOW:-0}
for arg in "$@"; do
  case "$arg" in
    --slow) slow=1 ;;
    *) echo "usage: scripts/test.sh [--slow]" >&2; exit 2 ;;
  esac
done
export POLARS_CLOUD_AUTH_SLOW=$slow
bash scripts/setup.sh
export POLARS_CLOUD_AUTH_REQUIRE_PEERS=1  # setup ran: a test missing a peer fails, never skips (tests/common)
export PATH="$PWD/.venv/bin:$PATH"

peer_build_pid=
if [ "$slow" = 1 ]; then
  # The slow peers' Go builds (kube binaries, etcd, Helm, containerd; cached, so a no-op
  # after the first run) go on at low priority while the suites below run: the long-running
  # suites mostly wait, so on a fresh machine this hides most of the build.
  peer_build_log=$(mktemp)
  # Our image's static binary too (a target directory of its own: no wait on cargo test's).
  # act and Node 24 (scripts/act.sh) and prometheus with promtool (scripts/prometheus.sh)
  # are built in the same background job.
  nice -n 19 bash -c 'bash scripts/act.sh build && bash scripts/node.sh build &&
    bash scripts/node.sh binary && bash scripts/prometheus.sh build' \
    >"$peer_build_log" 2>&1 &
  peer_build_pid=$!
  trap '[ -z "$peer_build_pid" ] || kill "$peer_build_pid" 2>/dev/null || true' EXIT
fi
wait_for_peer_build() {
  [ -n "$peer_build_pid" ] || return 0
  if ! wait "$peer_build_pid"; then
    echo "scripts/node.sh build failed:" >&2
    cat "$peer_build_log" >&2
    return 1
  fi
  cat "$peer_build_log"
  peer_build_pid=
}

echo "== cargo test"
cargo test --locked --all-targets
echo "== test IdP self-test"
node --test tests/idp/selftest.mjs
echo "== Python suites (real polars-cloud client, Helm, Kubernetes schemas, linters)"
py_args=()
if [ "$slow" = 1 ]; then
  # The suites that need a slow peer run in that peer's block below (markers:
  # tests/py/conftest.py).
  py_args=(-m "not act and not keycloak and not cluster and not prometheus and not node")
fi
.venv/bin/pytest -q tests/py "${py_args[@]}"

if [ "$slow" = 1 ]; then
  echo "== slow suites (POLARS_CLOUD_AUTH_SLOW=1)"
  # Each slow peer adds its block here: install or start it (cached), run its suite.

  echo "== the GitHub Action under nektos/act (scripts/act.sh, tests/py/test_act.py; docs/github-action.md)"
  wait_for_peer_build   # started above; cached; the first run builds from source (see the README)
  .venv/bin/pytest -q -s tests/py -m act

  echo "== real kube-apiserver and Keycloak (scripts/cluster.sh, scripts/keycloak.sh; tests/cluster/README.md, tests/keycloak/README.md)"
  # A subshell of its own: one cluster and one Keycloak for the block, both stopped by the
  # trap whatever happens. The cluster starts first: Keycloak trusts its CA, so that its
  # Kubernetes identity provider can fetch the API server's JWKS (client assertions, end to
  # end in tests/keycloak.rs).
  (
    POLARS_CLOUD_AUTH_KEYCLOAK_RUN=$(mktemp -d)
    export POLARS_CLOUD_AUTH_KEYCLOAK_RUN
    trap 'bash scripts/keycloak.sh stop || true; rm -rf "$POLARS_CLOUD_AUTH_KEYCLOAK_RUN"; bash scripts/cluster.sh stop || true' EXIT
    bash scripts/cluster.sh start
    eval "$(bash scripts/cluster.sh env)"
    kc_env=$(POLARS_CLOUD_AUTH_KEYCLOAK_TRUSTSTORE=$POLARS_CLOUD_AUTH_CLUSTER_CA bash scripts/keycloak.sh start)
    eval "$kc_env"
    echo "== Keycloak conformance (tests/keycloak.rs, real Keycloak, and the cluster for client assertions)"
    cargo test --locked --test integration keycloak:: -- --ignored --test-threads=1
    echo "== GitHub Action with client-assertion: github-oidc (tests/github_action.rs: the action wrapper, a stand-in of GitHub's ID-token service, real Keycloak)"
    cargo test --locked --test integration github_action:: -- --ignored --test-threads=1
    .venv/bin/pytest -q tests/py -m keycloak
    # Suites that need Keycloak too run here; they find it through the same variables
    # (tests/py/keycloak_peer.py).
    echo "== real kube-apiserver, kubectl and Helm CLI"
    .venv/bin/pytest -q tests/py -m cluster
  )

  echo "== Prometheus: promtool rule tests, the Operator's CRDs on a real kube-apiserver, a real Prometheus scraping webhook, broker and sidecar (scripts/prometheus.sh, tests/py/test_monitoring.py, docs/operations.md)"
  # prometheus and promtool were built (cached) with the other peers above; a control
  # plane of its own, stopped by the trap.
  (
    trap 'bash scripts/cluster.sh stop || true' EXIT
    bash scripts/cluster.sh start
    eval "$(bash scripts/cluster.sh env)"
    .venv/bin/pytest -q tests/py -m prometheus
  )

  echo "== a real node: kubelet, containerd 2 and runc running our image (scripts/node.sh, tests/py/test_node.py)"
  # A subshell of its own: a fresh control plane with the node, stopped (and the host's
  # settings restored) by the trap whatever happens.
  (
    trap 'bash scripts/node.sh stop || true' EXIT
    bash scripts/node.sh start
    eval "$(bash scripts/node.sh env)"
    .venv/bin/pytest -q tests/py -m node
    echo "== pod start and per-pod memory on the real node, quick form (benches/pod_start.py; full form in docs/benchmarks.md)"
    .venv/bin/python benches/pod_start.py --rounds 3 --memory-pods 5
  )
fi
