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
ROOT="$PWD"
# shellcheck source=bench/lib.sh
source bench/lib.sh

# Server, echo responder and load tool, release builds.
BIN="${RTW_BIN:-target/release/realtime-web}"
ensure_release_bin "$BIN"
ECHO=target/release/examples/echo
if [[ ! -x "$ECHO" ]]; then
  cargo build --release --example echo
fi
SOAK="$ROOT/bench/.tools/target/release/rtw-soak"
build_tool soak "$SOAK"

# Each client is 1 socket here, 3 in the server (client + both ends of its core link).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((CLIENTS * 3 + 1024))
if [[ $(ulimit -n) -lt $need ]]; then
  echo "warning: ulimit -n is $(ulimit -n), below the $need this soak needs"
fi

start_work rtw-soak
DIR="$WORK"
MQTT=$(free_port)
HTTP=$(free_port)

RTW_MQTT__LISTEN="127.0.0.1:$MQTT" RTW_HTTP__LISTEN="127.0.0.1:$HTTP" RTW_STORAGE__DIR="$DIR" \
  RTW_LIMITS__MAX_CONNECTIONS_PER_IP=100000 \
  "$BIN" >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_port "$HTTP" 10 "$SERVER_PID" || true
"$ECHO" --port "$MQTT" --id soak-echo >"$DIR/echo.log" 2>&1 &
PIDS+=("$!")
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
