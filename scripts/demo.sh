#!/usr/bin/env bash
# The main job, end to end, against the local test identity provider (oidc-provider at
# Keycloak's paths, started here): `init` writes a token, `sidecar` keeps it fresh through
# renewals, and the real polars-cloud client runs through `exec` for several token lives
# against a local stand-in of the Polars Cloud API, renewing through polars-cloud-auth.
# Nothing leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
printf '\033[1m== setup: test tools (npm, a Python venv with polars-cloud); the first run takes a few minutes\033[0m\n'
bash scripts/setup.sh
printf '\033[1m== building polars-cloud-auth (cargo build)\033[0m\n'
cargo build --locked
BIN=target/debug/polars-cloud-auth
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
at() { date -d "@$1" +%H:%M:%S 2>/dev/null || echo "$1"; }
claims() { cut -d. -f2 "$1" | tr '_-' '/+' | { b=$(cat); while [ $(( ${#b} % 4 )) -ne 0 ]; do b="$b="; done; echo "$b"; } | base64 -d 2>/dev/null; }

step "starting the test identity provider (tokens live 15 s so renewals show quickly)"
mkfifo "$work/idp.in"
IDP_TOKEN_TTL=15 IDP_SERVICE_ACCOUNTS="demo-sa:demo-secret" node tests/idp/server.mjs <"$work/idp.in" >"$work/idp.out" 2>"$work/idp.log" &
pids+=($!)
exec 3>"$work/idp.in"   # holding the fifo open keeps the IdP alive; it exits when we do
for _ in $(seq 100); do [ -s "$work/idp.out" ] && break; sleep 0.1; done
issuer=$(sed -n 's/.*"issuer":"\([^"]*\)".*/\1/p' "$work/idp.out")
echo "issuer: $issuer"

export POLARS_CLOUD_ISSUER="$issuer"
export POLARS_CLOUD_CLIENT_ID=demo-sa
export POLARS_CLOUD_CLIENT_SECRET=demo-secret
export POLARS_CLOUD_ACCESS_TOKEN_PATH="$work/shared/token"

step "init: fetch once into $POLARS_CLOUD_ACCESS_TOKEN_PATH, then exit"
$BIN init
ls -l "$POLARS_CLOUD_ACCESS_TOKEN_PATH"
echo "claims: $(claims "$POLARS_CLOUD_ACCESS_TOKEN_PATH")"

step "sidecar: keep the file fresh (HTTP on 127.0.0.1:18471)"
$BIN sidecar --listen 127.0.0.1:18471 --ready-margin 1s 2>"$work/sidecar.log" &
sidecar=$!
pids+=($sidecar)
seen=""
for _ in $(seq 200); do
  n=$(curl -s 127.0.0.1:18471/metrics | sed -n "s/^polars_cloud_auth_renewals_total //p" || true)
  if [ -n "$n" ] && [ "$n" != "$seen" ]; then
    seen=$n
    exp=$(claims "$POLARS_CLOUD_ACCESS_TOKEN_PATH" | sed -n 's/.*"exp":\([0-9]*\).*/\1/p')
    echo "$(date +%H:%M:%S) renewals: $n, the token on disk expires at $(at "$exp")"
  fi
  [ "${n:-0}" -ge 2 ] && break
  sleep 0.2
done
echo "readyz: $(curl -s 127.0.0.1:18471/readyz)"
curl -s 127.0.0.1:18471/metrics | grep -v '^#'

step "the real polars-cloud client, for 40 s (several token lives), through exec"
echo "exec follows the sidecar's token file; the client's refreshes go to exec's relay:"
echo "  polars-cloud-auth exec --token-file \$POLARS_CLOUD_ACCESS_TOKEN_PATH -- python job.py"
echo "$(date +%H:%M:%S) the job starts, calling the API once a second"
env -u POLARS_CLOUD_CLIENT_SECRET HOME="$work" $BIN exec --min-valid 5s --token-file "$POLARS_CLOUD_ACCESS_TOKEN_PATH" -- \
  .venv/bin/python tests/py/client/long_client.py --duration 40 --jwks "$issuer/protocol/openid-connect/certs" \
  2>"$work/exec.log" | .venv/bin/python -c '
import json, sys
v = json.load(sys.stdin)
print("calls: %d, failed: %d, distinct tokens the API saw: %d" % (v["calls"], v["failed"], v["bearers"]))
for e, n in v["errors"].items():
    print(f"  {n} x {e}")'
echo "$(date +%H:%M:%S) the job ended"

step "SIGTERM: the sidecar drains and exits 0"
kill -TERM "$sidecar"
wait "$sidecar" && echo "sidecar exit code: $?"
echo "sidecar log (no secrets, no tokens):"
sed 's/^/  /' "$work/sidecar.log"
