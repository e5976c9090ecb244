#!/usr/bin/env bash
# Bounded soak: a thousand mixed clients against one realtime-web for a set time.
#
#   bench/soak.sh                # 10 minutes, 1,000 clients
#   bench/soak.sh 120            # 2 minutes
#   bench/soak.sh 120 2000       # 2 minutes, 2,000 clients
#
# Clients (bench/soak, see its src/main.rs): MQTT 3.1.1 and 5 over TCP, MQTT 3.1.1 over
# WebSocket, SSE readers publishing over HTTP, RPC callers answered by the echo example. Each
# MQTT client publishes QoS 1 (some QoS 2) once a second and subscribes to its neighbour's
# topic. Reported: messages lost (acknowledged to the publisher, never delivered; must be 0),
# errors, reconnects, RPC latency, and the server's RSS every 10 s (from /proc/PID/status).
# Exits non-zero if anything acknowledged was lost.
#
# Everything runs on 127.0.0.1 with fresh ports and a temporary storage directory; the server
# and the echo responder are killed by PID at the end (trap). Bounds: the load's own duration,
# plus `timeout` around it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS="${1:-600}"
CLIENTS="${2:-1000}"
TOOLS="$PWD/bench/.tools"
mkdir -p "$TOOLS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Server, echo responder and load tool, release builds.
BIN="${RTW_BIN:-target/release/realtime-web}"
if [[ ! -x "$BIN" ]]; then
  cargo build --release --bin realtime-web
fi
ECHO=target/release/examples/echo
if [[ ! -x "$ECHO" ]]; then
  cargo build --release --example echo
fi
CARGO_TARGET_DIR="$TOOLS/target" cargo build --release --locked --quiet --manifest-path bench/soak/Cargo.toml
SOAK="$TOOLS/target/release/rtw-soak"

# Each client is 1 socket here, 3 in the server (client + both ends of its core link).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((CLIENTS * 3 + 1024))
if [[ $(ulimit -n) -lt $need ]]; then
  echo "warning: ulimit -n is $(ulimit -n), below the $need this soak needs"
fi

DIR="$(mktemp -d /tmp/rtw-soak.XXXXXX)"
MQTT=$(free_port)
HTTP=$(free_port)
SERVER_PID=""
ECHO_PID=""
cleanup() {
  [[ -n "$ECHO_PID" ]] && kill "$ECHO_PID" 2>/dev/null || true
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

RTW_MQTT__LISTEN="127.0.0.1:$MQTT" RTW_HTTP__LISTEN="127.0.0.1:$HTTP" RTW_STORAGE__DIR="$DIR" \
  RTW_LIMITS__MAX_CONNECTIONS_PER_IP=100000 \
  "$BIN" >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null && break
  sleep 0.05
done
"$ECHO" --port "$MQTT" --id soak-echo >"$DIR/echo.log" 2>&1 &
ECHO_PID=$!
sleep 1

echo "realtime-web $($BIN --version 2>/dev/null || echo) pid $SERVER_PID on mqtt $MQTT http $HTTP; $(nproc) cores"
set +e
timeout --kill-after=10 $((SECS + 240)) \
  "$SOAK" --mqtt "$MQTT" --http "$HTTP" --pid "$SERVER_PID" --clients "$CLIENTS" --secs "$SECS"
rc=$?
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "the server died during the soak; its log:"
  tail -50 "$DIR/server.log"
  exit 1
fi
echo "server log: $(grep -c ' ERROR ' "$DIR/server.log" || true) ERROR lines, $(grep -c ' WARN ' "$DIR/server.log" || true) WARN lines"
grep -E ' (ERROR|WARN) ' "$DIR/server.log" | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -5 || true
exit "$rc"
