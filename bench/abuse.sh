#!/usr/bin/env bash
# bench/abuse.sh: replays the abuse loads of issue 19 against realtime-web, each bounded in time,
# and prints, per load, the server's peak resident memory (VmHWM), its memory and threads
# afterwards, and a bystander MQTT client's round-trip time (QoS 1 to itself every 20 ms)
# quiet and under the load. CI does not run it; results go in BENCHMARKS.md.
#
# Loads (SECS seconds each, default 10; CONC concurrent attackers, default 32):
#   1-props      300 QoS 1 PUBLISHes with ~1 MB of user properties, 1-byte payload, a subscriber
#   1-props-64k  the same with 60 KB of properties (within the default limits)
#   3-mqtt-pw    CONC threads of MQTT 5 CONNECTs with wrong passwords for 40 password-file users,
#                from rotating 127.0.0.x addresses (so per-address throttling does not hide it)
#   3-http-pw    the same over HTTP Basic
#   4-bodies     300 unauthenticated POSTs declaring 1 MiB and sending all but one byte, held
#   6-polls      CONC callers looping long polls of 32 new filters each
#
# Usage: bench/abuse.sh [load …]      (all loads by default)
# Env: RTW_BIN (default: $CARGO_TARGET_DIR or target, release/realtime-web, built if missing),
#      SECS, CONC.
# Installs what it needs on Debian (python3, python3-paho-mqtt) when missing. Loopback only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
pick_rtw_bin
SECS="${SECS:-10}"
CONC="${CONC:-32}"
LOADS=("$@")
[[ ${#LOADS[@]} -gt 0 ]] || LOADS=(1-props 1-props-64k 3-mqtt-pw 3-http-pw 4-bodies 6-polls)
PY="$ROOT/bench/abuse.py"

die() { echo "abuse.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
ensure_paho
ensure_release_bin "$BIN"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_work rtw-abuse
SERVER_PID=""
SAMPLER_PID=""
stop_both() { stop_pids "$SAMPLER_PID" "$SERVER_PID"; }
ON_EXIT=stop_both

# --- credentials -------------------------------------------------------------------------------
SECRET="abuse-bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
USERS=()
for i in $(seq 1 40); do
  "$BIN" passwd "$WORK/passwd" "user$i" --password "pw-$i-$RANDOM" >/dev/null
  USERS+=("user$i")
done
USER_LIST="$(IFS=,; echo "${USERS[*]}")"
TOKEN="$(RTW_AUTH__JWT_SECRET="$SECRET" "$BIN" token --subject bench --publish '#' \
  --subscribe '#' --ttl 1h)"

start_server() {
  MQTT_PORT="$(free_port)"; HTTP_PORT="$(free_port)"
  mkdir -p "$WORK/data"
  RTW_MQTT__LISTEN="127.0.0.1:$MQTT_PORT" RTW_HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
    RTW_STORAGE__DIR="$WORK/data" RTW_AUTH__JWT_SECRET="$SECRET" \
    RTW_AUTH__PASSWORD_FILE="$WORK/passwd" RTW_LOG__LEVEL=warn \
    "$BIN" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$HTTP_PORT" 10 "$SERVER_PID" && wait_port "$MQTT_PORT" 10 "$SERVER_PID" && return
  die "server did not start: $(cat "$WORK/server.log")"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  rm -rf "$WORK/data"
}

status() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }

# Samples the server's thread count every 0.2 s; the peak is in $WORK/threads.
sample_threads() {
  local peak=0 t
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    t="$(status Threads 2>/dev/null || echo 0)"
    (( t > peak )) && peak=$t && echo "$peak" > "$WORK/threads"
    sleep 0.2
  done
}

load() {
  case "$1" in
    1-props) python3 "$PY" props "$MQTT_PORT" "$TOKEN" 300 1000000 ;;
    1-props-64k) python3 "$PY" props "$MQTT_PORT" "$TOKEN" 300 60000 ;;
    3-mqtt-pw) python3 "$PY" mqtt-pw "$MQTT_PORT" "$USER_LIST" "$CONC" "$SECS" ;;
    3-http-pw) python3 "$PY" http-pw "$HTTP_PORT" "$USER_LIST" "$CONC" "$SECS" ;;
    4-bodies) python3 "$PY" bodies "$HTTP_PORT" 300 "$SECS" ;;
    6-polls) python3 "$PY" polls "$HTTP_PORT" "$TOKEN" "$CONC" "$SECS" ;;
    *) die "unknown load $1" ;;
  esac
}

echo "abuse.sh: $(date -u +%FT%TZ) $(uname -m), $(nproc) cores, binary $BIN"
echo "load | outcome | peak RSS MiB | RSS after MiB | peak threads | bystander RTT ms quiet (median/p99/max) | under load (median/p99/max)"
for l in "${LOADS[@]}"; do
  start_server
  echo 0 > "$WORK/threads"
  sample_threads & SAMPLER_PID=$!
  quiet="$(python3 "$PY" bystander "$MQTT_PORT" "$TOKEN" 3)"
  python3 "$PY" bystander "$MQTT_PORT" "$TOKEN" "$SECS" > "$WORK/busy" &
  by=$!
  outcome="$(timeout $(( SECS * 3 + 60 )) bash -c "$(declare -f load die); PY='$PY' MQTT_PORT=$MQTT_PORT HTTP_PORT=$HTTP_PORT TOKEN='$TOKEN' USER_LIST='$USER_LIST' CONC=$CONC SECS=$SECS load $l" 2>&1 | tail -1)"
  wait "$by" || true
  sleep 3
  hwm=$(( $(status VmHWM) / 1024 )); rss=$(( $(status VmRSS) / 1024 ))
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  q="$(echo "$quiet" | awk '{print $2"/"$3"/"$4}')"
  b="$(awk '{print $2"/"$3"/"$4" ("$5" samples, "$6")"}' "$WORK/busy")"
  echo "$l | $outcome | $hwm | $rss | $(cat "$WORK/threads") | $q | $b"
  stop_server
done
