#!/usr/bin/env bash
# Webhook throughput over TLS from a loopback load generator.
#
# Builds the release binary, starts `polars-cloud-auth webhook` on 127.0.0.1 with a fresh
# self-signed CA and serving certificate (openssl), and drives POST /mutate with oha
# (a Rust HTTP load generator: `cargo install --locked oha`; not part of the test
# command) using a real AdmissionReview: tests/data/admission/create-generate-name.json,
# a ReplicaSet's pod that gets injected (the full path: decode, inject, JSON patch).
#
#   1. throughput: as many reviews as CONNECTIONS keep-alive connections can get answered;
#   2. latency at a fixed RATE reviews/s (1,000 by default).
#
# Settings (environment): DURATION (default 15s), CONNECTIONS (32), RATE (1000),
# HTTP (1.1 or 2; default 1.1), ADDR (127.0.0.1:18443). Only loopback is ever targeted.
# Results are recorded in docs/benchmarks.md, section "Webhook".
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
RATE=${RATE:-1000}
HTTP=${HTTP:-1.1}
ADDR=${ADDR:-127.0.0.1:18443}
SVC=pca-polars-cloud-auth.polars-cloud-system.svc
REVIEW=tests/data/admission/create-generate-name.json

case "$ADDR" in
  127.*|localhost:*|\[::1\]:*) ;;
  *) echo "ADDR must be a loopback address" >&2; exit 2 ;;
esac
command -v oha >/dev/null || { echo "oha is missing: cargo install --locked oha" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked --quiet
# A copy: a shared target directory may get another build's binary meanwhile.
bin="$work/polars-cloud-auth"
cp "${CARGO_TARGET_DIR:-target}/release/polars-cloud-auth" "$bin"

# A CA and a serving certificate for the Service name, ECDSA P-256 like the chart's.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -subj "/CN=bench CA" -days 1 -out "$work/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls.key" 2>/dev/null
openssl req -new -key "$work/tls.key" -subj "/CN=$SVC" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\n' "$SVC" > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null

env -u POLARS_CLOUD_LOG \
  POLARS_CLOUD_WEBHOOK_LISTEN="$ADDR" \
  POLARS_CLOUD_WEBHOOK_TLS_CERT="$work/tls.crt" \
  POLARS_CLOUD_WEBHOOK_TLS_KEY="$work/tls.key" \
  POLARS_CLOUD_WEBHOOK_SHUTDOWN_DELAY=0s \
  POLARS_CLOUD_LOG_FORMAT=json \
  "$bin" webhook 2>"$work/webhook.log" &
pid=$!

port=${ADDR##*:}
url="https://$SVC:$port/mutate"
common=(--no-tui --output-format json --cacert "$work/ca.crt" --connect-to "$SVC:$port:${ADDR%:*}:$port"
        -m POST -H "Content-Type: application/json" -D "$REVIEW")
[ "$HTTP" = 2 ] && common+=(--http2)

for _ in $(seq 100); do
  oha "${common[@]}" -n 1 "$url" >/dev/null 2>&1 && break
  sleep 0.1
done

summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
total = sum(codes.values())
errors = r.get("errorDistribution", {})
print(f"  requests: {total} ({ok} answered 200), errors: {sum(errors.values()) if errors else 0}")
print("  reviews/s: %.0f" % s["requestsPerSec"])
print("  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f" % (
    p["p50"] * 1e3, p["p90"] * 1e3, p["p99"] * 1e3, s["slowest"] * 1e3))
'
}

echo "polars-cloud-auth webhook benchmark: $(nproc) cores, HTTP/$HTTP over TLS, review $(basename "$REVIEW") ($(wc -c <"$REVIEW") bytes)"
echo "throughput: $CONNECTIONS connections for $DURATION"
oha "${common[@]}" -z "$DURATION" -c "$CONNECTIONS" "$url" | summary
echo "fixed rate: $RATE reviews/s for $DURATION ($CONNECTIONS connections)"
oha "${common[@]}" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction "$url" | summary

kill -TERM "$pid"
wait "$pid" || { echo "the webhook did not exit cleanly" >&2; exit 1; }
pid=""
grep -c '"pod injected"' "$work/webhook.log" | sed 's/^/webhook log lines "pod injected": /'
