#!/usr/bin/env bash
# Bounded MQTT broker benchmark: realtime-web vs Mosquitto, loopback only.
#
#   bench/broker.sh              both brokers (builds target/release/realtime-web if missing)
#   bench/broker.sh --peer-only  Mosquitto only (realtime-web columns print "-")
#   bench/broker.sh --quick      10x smaller counts, 1,000 connections, 1 run (smoke test)
#   bench/broker.sh --client rumqttc   a-d with rumqttc clients instead of raw ones
#   bench/broker.sh --help
#
# Scenarios (see bench/README.md):
#   a  1 -> 1  QoS 0   delivered msgs/s at the subscriber
#   b  1 -> 1  QoS 1   delivered msgs/s
#   bp 1 -> 1  QoS 1   delivered msgs/s, the subscriber a persistent session
#      (Clean Session 0): realtime-web writes each message to its session store
#      (fsync'd) before the PUBACK; Mosquitto runs with `persistence true`
#      (its default autosave: in memory, written every 30 min and at exit)
#   c  1 -> 50 QoS 0   delivered msgs/s (sum over the 50 subscribers)
#   d  1 -> 50 QoS 1   delivered msgs/s
#   e  idle connections (CONNECT only): broker VmRSS growth / N, descriptors / N
#   es idle clients, each subscribed to its own topic (clean sessions): same
#   ep idle persistent sessions (Clean Session 0), each subscribed: same
#   f  connection storm: N clients released at once, CONNACKs per second
# Every run also records the brokers' own counters (published received, sent,
# dropped: realtime-web's /metrics, Mosquitto's $SYS) next to the load
# generator's delivered / lost counts, and prints them per run at the end.
#
# Load generator: bench/loadgen (rtw-loadgen), built once into bench/.tools/target.
# Its clients are raw MQTT 3.1.1 (about 0.1 µs of CPU per message: it shares
# the two CPUs with the broker under test); CLIENT=rumqttc (or --client rumqttc)
# drives a-d with rumqttc 0.25 clients instead, as recorded runs did until
# BENCHMARKS.md's "2026-12-04 (late night)". Steady traffic:
# bench/steady.sh. A neutral crates.io tool as a cross-check: bench/mqttwrk.sh.
#
# Every step is bounded: fixed message/connection counts, `timeout` around each
# load run and broker start, and each broker is killed by PID on exit (trap).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER_ONLY=0

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
SCENARIOS="${SCENARIOS:-a,b,bp,c,d,e,es,ep,f}"
CLIENT="${CLIENT:-raw}"      # a-d: the load generator's MQTT client (raw | rumqttc)

USAGE_LINES=2,10
flag() {
  case "$1" in
    --quick) MSGS_A=20000 MSGS_B=10000 MSGS_C=2000 MSGS_D=1000 CONNS=1000 RUNS=1 ;;
    --runs) RUNS="$2"; SHIFT=2 ;;
    --conns) CONNS="$2"; SHIFT=2 ;;
    --scenarios) SCENARIOS="$2"; SHIFT=2 ;;
    --client) CLIENT="$2"; SHIFT=2 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=bench/brokers.sh
source "$ROOT/bench/brokers.sh"
broker_args flag "$@"

# --- one measurement ---------------------------------------------------------
RAW="$WORK/results.txt"
: > "$RAW"

# run_one broker scenario -> sets RUN_LINE to the loadgen RESULT line ("" if none).
# Not called in $(...): the broker PID must stay visible to the EXIT trap.
RUN_LINE=""
run_one() {
  local broker="$1" sc="$2" args=()
  RUN_LINE=""
  MOSQ_PERSISTENCE=0; [[ "$sc" == bp ]] && MOSQ_PERSISTENCE=1
  if ! start_broker "$broker"; then log "$broker failed to start"; return; fi
  case "$sc" in
    a) args=(throughput --qos 0 --subscribers 1 --messages "$MSGS_A" --payload "$PAYLOAD" --client "$CLIENT") ;;
    b) args=(throughput --qos 1 --subscribers 1 --messages "$MSGS_B" --payload "$PAYLOAD" --client "$CLIENT") ;;
    bp) args=(throughput --qos 1 --subscribers 1 --messages "$MSGS_B" --payload "$PAYLOAD" --persistent --client "$CLIENT") ;;
    c) args=(throughput --qos 0 --subscribers "$FANOUT" --messages "$MSGS_C" --payload "$PAYLOAD" --client "$CLIENT") ;;
    d) args=(throughput --qos 1 --subscribers "$FANOUT" --messages "$MSGS_D" --payload "$PAYLOAD" --client "$CLIENT") ;;
    e) args=(idle-conns --conns "$CONNS" --concurrency "$IDLE_CONCURRENCY" --broker-pid "$BROKER_PID") ;;
    es) args=(idle-conns --conns "$CONNS" --concurrency "$IDLE_CONCURRENCY" --broker-pid "$BROKER_PID" --subscribe) ;;
    ep) args=(idle-conns --conns "$CONNS" --concurrency "$IDLE_CONCURRENCY" --broker-pid "$BROKER_PID" --persistent) ;;
    f) args=(conn-storm --conns "$CONNS" --conn-timeout "$STORM_CONN_TIMEOUT") ;;
  esac
  local before after
  before="$(counters_before "$broker")"
  RUN_LINE="$(timeout -k 5 "$STEP_TIMEOUT" "$LOADGEN" --port "$BROKER_PORT" --label "$broker" \
            --max-secs $(( STEP_TIMEOUT - 5 )) "${args[@]}" 2>>"$WORK/loadgen.err" | grep '^RESULT' | tail -1 || true)"
  after="$(broker_counters "$broker")"
  # The broker's own counters over the run, prefixed "broker_" (before -> after).
  RUN_LINE="${RUN_LINE:-RESULT status=none} $(counter_delta "$before" "$after")"
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

median_marked() { # values... ("fail" ignored); keeps a '*' if any kept run had one
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
raise_nofile

MOSQ_VER="$( (mosquitto -h 2>/dev/null || true) | sed -n 's/^mosquitto version //p' | head -1)"
RTW_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
machine_header
echo "Brokers: mosquitto ${MOSQ_VER:-?} (ports from $MOSQ_PORT)$([[ $PEER_ONLY -eq 0 ]] && echo ", realtime-web $RTW_BIN ($(date -u -r "$RTW_BIN" '+built %Y-%m-%d %H:%M UTC'); ports from $RTW_MQTT_PORT)")"
echo "Workload: payload ${PAYLOAD} B; a=$MSGS_A b=$MSGS_B msgs; c=$MSGS_C d=$MSGS_D msgs x $FANOUT subs; e,es,ep,f=$CONNS conns; median of $RUNS run(s)"
echo "Load generator ($CLIENT clients for a-d) and broker share the same $(nproc) CPUs (loopback)."
echo

# Table rows: row id -> scenario, RESULT key, label, unit.
ROWS=(a b bp c d e efd e2 es esfd es2 ep epfd ep2 f f2 f3)
declare -A ROW_SC=([a]=a [b]=b [bp]=bp [c]=c [d]=d [e]=e [efd]=e [e2]=e [es]=es [esfd]=es [es2]=es
  [ep]=ep [epfd]=ep [ep2]=ep [f]=f [f2]=f [f3]=f)
declare -A ROW_KEY=([a]=msgs_per_s [b]=msgs_per_s [bp]=msgs_per_s [c]=msgs_per_s [d]=msgs_per_s
  [e]=bytes_per_conn [efd]=fds_per_conn [e2]=conns_per_s
  [es]=bytes_per_conn [esfd]=fds_per_conn [es2]=conns_per_s
  [ep]=bytes_per_conn [epfd]=fds_per_conn [ep2]=conns_per_s
  [f]=conns_per_s_90 [f2]=p99_ms [f3]=failed)
declare -A NAME=(
  [a]="a  1->1  QoS0" [b]="b  1->1  QoS1" [bp]="bp 1->1  QoS1 persistent" [c]="c  1->${FANOUT} QoS0" [d]="d  1->${FANOUT} QoS1"
  [e]="e  idle conns (${CONNS})" [efd]="e  idle conns" [e2]="e  connect, ${IDLE_CONCURRENCY} in flight"
  [es]="es idle subscribed (${CONNS})" [esfd]="es idle subscribed" [es2]="es connect+subscribe"
  [ep]="ep idle persistent (${CONNS})" [epfd]="ep idle persistent" [ep2]="ep connect+subscribe"
  [f]="f  conn storm (${CONNS})" [f2]="f  storm p99 latency" [f3]="f  storm failed clients"
)
declare -A UNIT=([a]="msgs/s" [b]="msgs/s" [bp]="msgs/s, durable store" [c]="msgs/s" [d]="msgs/s"
  [e]="bytes/conn (lower is better)" [efd]="descriptors/conn" [e2]="conns/s"
  [es]="bytes/conn (lower is better)" [esfd]="descriptors/conn" [es2]="conns/s"
  [ep]="bytes/conn (lower is better)" [epfd]="descriptors/conn" [ep2]="conns/s"
  [f]="conns/s, first 90% of clients" [f2]="ms (lower is better)"
  [f3]="of ${CONNS} (lower is better)")
declare -A LINES=()  # "sc,broker,run" -> RESULT line
declare -A RES=()    # "row,broker" -> median
ORDER=()             # "sc,broker,run" in the order run

IFS=',' read -r -a SC_LIST <<<"$SCENARIOS"
for sc in "${SC_LIST[@]}"; do
  [[ "$sc" =~ ^([a-f]|es|ep|bp)$ ]] || die "unknown scenario '$sc' (a..f, bp, es, ep)"
done
for sc in "${SC_LIST[@]}"; do
  for r in $(seq 1 "$RUNS"); do
    for b in "${BROKERS[@]}"; do   # interleaved, so machine noise hits both
      run_one "$b" "$sc"
      LINES[$sc,$b,$r]="$RUN_LINE"
      ORDER+=("$sc,$b,$r")
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
    RES[$row,$b]="$(median_marked "${vals[@]}")"
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
echo
COUNTS="$WORK/counters.md"
{
  echo "Loss and drop counters, every run (load generator: published / delivered / lost; broker: its own"
  echo "PUBLISH counters over the run, received from clients / sent to clients / dropped):"
  echo
  printf '| %-3s | %-12s | %3s | %-10s | %9s | %10s | %8s | %9s | %10s | %8s |\n' \
    sc broker run status published delivered lost "b. recv" "b. sent" "b. drop"
  printf '|-----|--------------|-----|------------|-----------|------------|----------|-----------|------------|----------|\n'
  for key in "${ORDER[@]}"; do
    IFS=',' read -r sc b r <<<"$key"
    l="${LINES[$key]}"
    pub="$(kv "$l" published)"; [[ -z "$pub" ]] && pub="$(kv "$l" messages)"; exp="$(kv "$l" expected)"; del="$(kv "$l" delivered)"; lost="$(kv "$l" lost)"
    [[ -n "$exp" && -n "$pub" && "$exp" != "$pub" ]] && pub="$pub x$(kv "$l" subscribers)"
    printf '| %-3s | %-12s | %3s | %-10s | %9s | %10s | %8s | %9s | %10s | %8s |\n' "$sc" "$b" "$r" \
      "$(kv "$l" status)" "${pub:--}" "${del:--}" "${lost:--}" \
      "$(kv "$l" broker_received)" "$(kv "$l" broker_sent)" "$(kv "$l" broker_dropped)"
  done
} > "$COUNTS"
cat "$COUNTS"
echo
echo "Total time: $(( $(date +%s) - START ))s"

mkdir -p "$TOOLS"
cp "$RAW" "$TOOLS/last-results.txt"
cp "$TABLE" "$TOOLS/last-table.md"
cp "$COUNTS" "$TOOLS/last-counters.md"
if [[ -s "$WORK/loadgen.err" ]]; then
  cp "$WORK/loadgen.err" "$TOOLS/last-loadgen.err"
  echo "Load generator messages: bench/.tools/last-loadgen.err"
fi
echo "Raw RESULT lines: bench/.tools/last-results.txt; counters: bench/.tools/last-counters.md"
