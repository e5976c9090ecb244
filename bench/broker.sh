#!/usr/bin/env bash
# Bounded MQTT broker benchmark: realtime-web vs Mosquitto, loopback only.
#
#   bench/broker.sh              both brokers (builds target/release/realtime-web if missing)
#   bench/broker.sh --peer-only  Mosquitto only (realtime-web columns print "-")
#   bench/broker.sh --quick      10x smaller counts, 1,000 connections, 1 run (smoke test)
#   bench/broker.sh --help
#
# Scenarios (see bench/README.md):
#   a  1 -> 1  QoS 0   delivered msgs/s at the subscriber
#   b  1 -> 1  QoS 1   delivered msgs/s
#   c  1 -> 50 QoS 0   delivered msgs/s (sum over the 50 subscribers)
#   d  1 -> 50 QoS 1   delivered msgs/s
#   e  idle connections: broker VmRSS growth / N  (bytes per connection)
#   f  connection storm: N clients released at once, CONNACKs per second
#
# Load generator: bench/loadgen (rtw-loadgen, rumqttc 0.25 + raw MQTT for the
# connection scenarios), built once into bench/.tools/target. The crates.io
# tools were reviewed and not used: mqtt-benchmark 0.2.4 only publishes (it
# cannot measure what subscribers receive) and mqttwrk 0.2.0, its latest
# release, looks unmaintained (still on rumqttc 0.20 and the deprecated
# structopt) and has no connection-storm measurement and no machine-readable
# output.
#
# Every step is bounded: fixed message/connection counts, `timeout` around each
# load run and broker start, and each broker is killed by PID on exit (trap).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/bench/.tools"
LOADGEN="$TOOLS/target/release/rtw-loadgen"
RTW_BIN="${RTW_BIN:-$ROOT/target/release/realtime-web}"

# Base loopback ports; each broker start takes the next one (see next_port).
MOSQ_PORT="${MOSQ_PORT:-21883}"
RTW_MQTT_PORT="${RTW_MQTT_PORT:-22883}"
RTW_HTTP_PORT="${RTW_HTTP_PORT:-23880}"

# Workload sizes (override from the environment).
PAYLOAD="${PAYLOAD:-100}"
MSGS_A="${MSGS_A:-200000}"   # 1->1  QoS0
MSGS_B="${MSGS_B:-100000}"   # 1->1  QoS1
MSGS_C="${MSGS_C:-20000}"    # 1->50 QoS0 (x50 deliveries)
MSGS_D="${MSGS_D:-10000}"    # 1->50 QoS1 (x50 deliveries)
FANOUT="${FANOUT:-50}"
CONNS="${CONNS:-10000}"      # scenarios e and f
IDLE_CONCURRENCY="${IDLE_CONCURRENCY:-64}"  # e: connection set-ups in flight
STORM_CONN_TIMEOUT="${STORM_CONN_TIMEOUT:-60}"  # f: per-client limit, seconds
RUNS="${RUNS:-3}"            # runs per scenario and broker; the median is reported
STEP_TIMEOUT="${STEP_TIMEOUT:-120}"  # seconds, per load-generator run
SCENARIOS="${SCENARIOS:-a,b,c,d,e,f}"

PEER_ONLY=0
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --peer-only) PEER_ONLY=1 ;;
    --quick) MSGS_A=20000 MSGS_B=10000 MSGS_C=2000 MSGS_D=1000 CONNS=1000 RUNS=1 ;;
    --runs) RUNS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

WORK="$(mktemp -d /tmp/rtw-bench.XXXXXX)"
BROKER_PID=""
stop_broker() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
cleanup() { stop_broker; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

ensure_mosquitto() {
  command -v mosquitto >/dev/null && return
  log "installing mosquitto (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
  # The package may start the system service on 1883: we do not need it.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    as_root systemctl stop mosquitto 2>/dev/null || true
  elif command -v service >/dev/null; then
    as_root service mosquitto stop >/dev/null 2>&1 || true
  fi
}

ensure_loadgen() {
  local newest
  newest="$(find "$ROOT/bench/loadgen/src" "$ROOT/bench/loadgen/Cargo.toml" "$ROOT/bench/loadgen/Cargo.lock" -newer "$LOADGEN" 2>/dev/null | head -1 || true)"
  if [[ -x "$LOADGEN" && -z "$newest" ]]; then return; fi
  log "building bench/loadgen into bench/.tools/target (once)"
  mkdir -p "$TOOLS"
  CARGO_TARGET_DIR="$TOOLS/target" timeout 1800 \
    cargo build --release --locked --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
}

ensure_rtw() {
  [[ $PEER_ONLY -eq 1 ]] && return
  if [[ ! -x "$RTW_BIN" ]]; then
    log "building realtime-web (release)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin realtime-web)
  fi
  [[ -x "$RTW_BIN" ]] || die "no realtime-web binary at $RTW_BIN (use --peer-only to bench Mosquitto alone)"
}

# --- brokers -----------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  local i
  for i in $(seq 1 $(( $2 * 10 ))); do
    port_open "$1" && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Every broker start uses the next port (base, base+1, ...): after a run with
# 10,000 connections the old client sockets sit in TIME-WAIT for 60 s, and
# reusing the same destination port made the next connection storm 5-10x
# slower (measured). Fresh ports keep runs independent.
PORT_SEQ=0
next_port() { # base -> first free port at base+PORT_SEQ.., sets NEXT_PORT
  local p
  for _ in $(seq 1 100); do
    p=$(( $1 + PORT_SEQ )); PORT_SEQ=$(( PORT_SEQ + 1 ))
    port_open "$p" || { NEXT_PORT="$p"; return 0; }
  done
  die "no free port near $1"
}

start_broker() { # name -> sets BROKER_PID, BROKER_PORT
  local name="$1" dir="$WORK/$1-$RANDOM"
  mkdir -p "$dir"
  case "$name" in
    mosquitto)
      next_port "$MOSQ_PORT"; BROKER_PORT="$NEXT_PORT"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' "$BROKER_PORT" > "$dir/mosquitto.conf"
      mosquitto -c "$dir/mosquitto.conf" > "$dir/broker.log" 2>&1 &
      BROKER_PID=$!
      ;;
    realtime-web)
      next_port "$RTW_MQTT_PORT"; BROKER_PORT="$NEXT_PORT"
      next_port "$RTW_HTTP_PORT"; local http_port="$NEXT_PORT"
      mkdir -p "$dir/data"
      RTW_MQTT__LISTEN="127.0.0.1:$BROKER_PORT" RTW_HTTP__LISTEN="127.0.0.1:$http_port" \
        RTW_STORAGE__DIR="$dir/data" "$RTW_BIN" > "$dir/broker.log" 2>&1 &
      BROKER_PID=$!
      ;;
  esac
  if ! wait_port "$BROKER_PORT" 30; then
    tail -20 "$dir/broker.log" >&2 || true
    stop_broker
    return 1
  fi
}

# --- one measurement ---------------------------------------------------------
# kv LINE KEY -> value of KEY=... in a RESULT line
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

RAW="$WORK/results.txt"
: > "$RAW"

# run_one broker scenario -> sets RUN_LINE to the loadgen RESULT line ("" if none).
# Not called in $(...): the broker PID must stay visible to the EXIT trap.
RUN_LINE=""
run_one() {
  local broker="$1" sc="$2" args=()
  RUN_LINE=""
  if ! start_broker "$broker"; then log "$broker failed to start"; return; fi
  case "$sc" in
    a) args=(throughput --qos 0 --subscribers 1 --messages "$MSGS_A" --payload "$PAYLOAD") ;;
    b) args=(throughput --qos 1 --subscribers 1 --messages "$MSGS_B" --payload "$PAYLOAD") ;;
    c) args=(throughput --qos 0 --subscribers "$FANOUT" --messages "$MSGS_C" --payload "$PAYLOAD") ;;
    d) args=(throughput --qos 1 --subscribers "$FANOUT" --messages "$MSGS_D" --payload "$PAYLOAD") ;;
    e) args=(idle-conns --conns "$CONNS" --concurrency "$IDLE_CONCURRENCY" --broker-pid "$BROKER_PID") ;;
    f) args=(conn-storm --conns "$CONNS" --conn-timeout "$STORM_CONN_TIMEOUT") ;;
  esac
  RUN_LINE="$(timeout -k 5 "$STEP_TIMEOUT" "$LOADGEN" --port "$BROKER_PORT" --label "$broker" \
            --max-secs $(( STEP_TIMEOUT - 5 )) "${args[@]}" 2>>"$WORK/loadgen.err" | grep '^RESULT' | tail -1 || true)"
  stop_broker
  echo "$sc $RUN_LINE" >> "$RAW"
  log "$sc $broker: ${RUN_LINE:-no result (see bench/.tools/last-loadgen.err)}"
}

# value LINE KEY -> the metric, '*'-suffixed if the run was incomplete, or "fail"
value() {
  local v status
  [[ -z "$1" ]] && { echo fail; return; }
  v="$(kv "$1" "$2")"; status="$(kv "$1" status)"
  [[ -z "$v" || "$v" == "-" ]] && { echo fail; return; }
  # Mark incomplete runs (lost messages, failed connections) with '*'.
  if [[ "$status" == "ok" ]]; then echo "$v"; else echo "${v}*"; fi
}

median() { # values... ("fail" ignored); keeps a '*' if any kept run had one
  local star="" vals=() v
  for v in "$@"; do
    [[ "$v" == fail ]] && continue
    [[ "$v" == *\* ]] && star="*"
    vals+=("${v%\*}")
  done
  [[ ${#vals[@]} -eq 0 ]] && { echo fail; return; }
  printf '%s\n' "${vals[@]}" | sort -g | awk -v s="$star" '{a[NR]=$1} END{print a[int((NR+1)/2)] s}'
}

# --- main --------------------------------------------------------------------
START=$(date +%s)
ensure_mosquitto
ensure_loadgen
ensure_rtw

# File descriptors: each broker and the load generator hold CONNS sockets.
HARD_NOFILE="$(ulimit -Hn)"
WANT=$(( CONNS + 1024 ))
if [[ "$HARD_NOFILE" != unlimited && "$HARD_NOFILE" -lt "$WANT" ]]; then
  CONNS=$(( HARD_NOFILE - 1024 ))
  log "hard nofile limit $HARD_NOFILE: reducing connections to $CONNS"
fi
# Raise the soft limit as far as allowed (inherited by brokers and loadgen).
if [[ "$HARD_NOFILE" == unlimited ]]; then ulimit -n 1048576 2>/dev/null || ulimit -n "$WANT"; else ulimit -n "$HARD_NOFILE"; fi

CPU_MODEL="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
MEM_TOTAL="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
MOSQ_VER="$( (mosquitto -h 2>/dev/null || true) | sed -n 's/^mosquitto version //p' | head -1)"
RTW_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"

sysctl_val() { cat "/proc/sys/$1" 2>/dev/null | tr '\t' ' ' || echo "?"; }
echo "Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, $MEM_TOTAL RAM, Linux $(uname -r)"
echo "Kernel: somaxconn=$(sysctl_val net/core/somaxconn) tcp_max_syn_backlog=$(sysctl_val net/ipv4/tcp_max_syn_backlog) syncookies=$(sysctl_val net/ipv4/tcp_syncookies) nofile=$(ulimit -n)"
echo "Brokers: mosquitto ${MOSQ_VER:-?} (ports from $MOSQ_PORT)$([[ $PEER_ONLY -eq 0 ]] && echo ", realtime-web $RTW_REV (ports from $RTW_MQTT_PORT)")"
echo "Workload: payload ${PAYLOAD} B; a=$MSGS_A b=$MSGS_B msgs; c=$MSGS_C d=$MSGS_D msgs x $FANOUT subs; e,f=$CONNS conns; median of $RUNS run(s)"
echo "Load generator and broker share the same $(nproc) CPUs (loopback)."
LOAD1="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$LOAD1" 'BEGIN{exit !(l > 0.5)}'; then
  echo "WARNING: load average $LOAD1 before the run: other work is using the CPUs, numbers will be low and noisy."
fi
echo

BROKERS=(mosquitto)
[[ $PEER_ONLY -eq 0 ]] && BROKERS=(realtime-web mosquitto)

# Table rows: row id -> scenario, RESULT key, label, unit.
ROWS=(a b c d e e2 f f2 f3)
declare -A ROW_SC=([a]=a [b]=b [c]=c [d]=d [e]=e [e2]=e [f]=f [f2]=f [f3]=f)
declare -A ROW_KEY=([a]=msgs_per_s [b]=msgs_per_s [c]=msgs_per_s [d]=msgs_per_s
  [e]=bytes_per_conn [e2]=conns_per_s [f]=conns_per_s_90 [f2]=p99_ms [f3]=failed)
declare -A NAME=(
  [a]="a  1->1  QoS0" [b]="b  1->1  QoS1" [c]="c  1->${FANOUT} QoS0" [d]="d  1->${FANOUT} QoS1"
  [e]="e  idle conns (${CONNS})" [e2]="e  connect, ${IDLE_CONCURRENCY} in flight" [f]="f  conn storm (${CONNS})" [f2]="f  storm p99 latency" [f3]="f  storm failed clients"
)
declare -A UNIT=([a]="msgs/s" [b]="msgs/s" [c]="msgs/s" [d]="msgs/s"
  [e]="bytes/conn (lower is better)" [e2]="conns/s" [f]="conns/s, first 90% of clients" [f2]="ms (lower is better)"
  [f3]="of ${CONNS} (lower is better)")
declare -A LINES=()  # "sc,broker,run" -> RESULT line
declare -A RES=()    # "row,broker" -> median

IFS=',' read -r -a SC_LIST <<<"$SCENARIOS"
for sc in "${SC_LIST[@]}"; do
  [[ "$sc" =~ ^[a-f]$ ]] || die "unknown scenario '$sc' (a..f)"
done
for sc in "${SC_LIST[@]}"; do
  for r in $(seq 1 "$RUNS"); do
    for b in "${BROKERS[@]}"; do   # interleaved, so machine noise hits both
      run_one "$b" "$sc"
      LINES[$sc,$b,$r]="$RUN_LINE"
      sleep 1
    done
  done
done
SEL_ROWS=()
for row in "${ROWS[@]}"; do
  sc="${ROW_SC[$row]}"
  [[ ",$SCENARIOS," == *",$sc,"* ]] || continue
  SEL_ROWS+=("$row")
  for b in "${BROKERS[@]}"; do
    vals=()
    for r in $(seq 1 "$RUNS"); do vals+=("$(value "${LINES[$sc,$b,$r]}" "${ROW_KEY[$row]}")"); done
    RES[$row,$b]="$(median "${vals[@]}")"
  done
done

ratio() { # rtw mosq
  local x="${1%\*}" y="${2%\*}"
  if [[ "$x" =~ ^[0-9.]+$ && "$y" =~ ^[0-9.]+$ ]] && awk -v y="$y" 'BEGIN{exit !(y>0)}'; then
    awk -v x="$x" -v y="$y" 'BEGIN{printf "%.2f", x/y}'
  else
    echo "-"
  fi
}

TABLE="$WORK/table.md"
{
  printf '| %-26s | %-31s | %14s | %14s | %13s |\n' scenario metric realtime-web mosquitto "rtw / mosq"
  printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..33})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..15})"
  for row in "${SEL_ROWS[@]}"; do
    rtw="${RES[$row,realtime-web]:--}"
    mq="${RES[$row,mosquitto]:--}"
    printf '| %-26s | %-31s | %14s | %14s | %13s |\n' "${NAME[$row]}" "${UNIT[$row]}" "$rtw" "$mq" "$(ratio "$rtw" "$mq")"
  done
} > "$TABLE"
cat "$TABLE"
echo
echo "'*' = a run was incomplete (lost messages or failed connections); 'fail' = no result."
echo "Total time: $(( $(date +%s) - START ))s"

mkdir -p "$TOOLS"
cp "$RAW" "$TOOLS/last-results.txt"
cp "$TABLE" "$TOOLS/last-table.md"
if [[ -s "$WORK/loadgen.err" ]]; then
  cp "$WORK/loadgen.err" "$TOOLS/last-loadgen.err"
  echo "Load generator messages: bench/.tools/last-loadgen.err"
fi
echo "Raw RESULT lines: bench/.tools/last-results.txt"
