#!/usr/bin/env bash
# Steady-traffic benchmark: does the broker deliver everything and does its
# memory level off? realtime-web and Mosquitto, one after the other, same run.
#
#   bench/steady.sh               both brokers, 240 s each (about 9 minutes)
#   bench/steady.sh --peer-only   Mosquitto only
#   bench/steady.sh --quick       30 s each, a smoke test
#   bench/steady.sh --help
#
# Workload (rtw-loadgen steady, see bench/README.md): SUBSCRIBERS subscribers
# (default 1,000), each on a topic of its own, QoS 0; one publisher sends RATE
# messages/s (2,000) of PAYLOAD bytes (200), round-robin over those topics, for
# DURATION seconds (240); the broker's VmRSS is sampled every SAMPLE_SECS (10).
# Reported per broker: published vs delivered, the broker's own counters
# (realtime-web /metrics, Mosquitto $SYS: received, sent, dropped), the RSS
# samples, and whether memory plateaus: growth over the last half of the run
# (the sample at the middle vs the last one) below PLATEAU_PCT (5%).
#
# Bounded: `timeout` around each load-generator run (DURATION + 120 s) and the
# same deadline inside it; each broker is killed by PID when its run ends.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
defaults SUBSCRIBERS=1000 RATE=2000 PAYLOAD=200 DURATION=240 SAMPLE_SECS=10 PLATEAU_PCT=5 QOS=0

USAGE_LINES=2,8
flag() {
  case "$1" in
    --quick) DURATION=30 SAMPLE_SECS=5 ;;
    --duration) DURATION="$2"; SHIFT=2 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=bench/brokers.sh
source "$ROOT/bench/brokers.sh"
broker_args flag "$@"

ensure_mosquitto
ensure_loadgen
ensure_rtw
CONNS=$(( SUBSCRIBERS + 1 ))
raise_nofile
[[ $CONNS -gt $SUBSCRIBERS ]] || die "nofile limit too low for $SUBSCRIBERS subscribers"

run_header "Workload: $SUBSCRIBERS subscribers on their own topics, QoS $QOS, 1 publisher at $RATE msg/s of $PAYLOAD B round-robin, ${DURATION} s; VmRSS every ${SAMPLE_SECS} s; plateau = last-half growth < ${PLATEAU_PCT}%"

OUT="$WORK/steady-results.txt"
: > "$OUT"
STEP_TIMEOUT=$(( DURATION + 120 ))
for b in "${BROKERS[@]}"; do
  start_broker "$b" || { log "$b failed to start"; echo "$b RESULT status=no-broker" >> "$OUT"; continue; }
  log "$b: ${DURATION}s of steady traffic (pid $BROKER_PID, port $BROKER_PORT)"
  before="$(counters_before "$b")"
  line="$(timeout -k 5 "$STEP_TIMEOUT" "$LOADGEN" --port "$BROKER_PORT" --label "$b" --max-secs $(( STEP_TIMEOUT - 5 )) \
          steady --subscribers "$SUBSCRIBERS" --rate "$RATE" --payload "$PAYLOAD" --duration "$DURATION" \
          --qos "$QOS" --broker-pid "$BROKER_PID" --sample-secs "$SAMPLE_SECS" --plateau-pct "$PLATEAU_PCT" \
          2>>"$WORK/loadgen.err" | grep '^RESULT' | tail -1 || true)"
  after="$(broker_counters "$b")"
  fds="$(ls "/proc/$BROKER_PID/fd" 2>/dev/null | wc -l)"
  stop_broker
  counters=" $(counter_delta "$before" "$after")"
  line="${line:-RESULT status=none}$counters"
  echo "$line" >> "$OUT"
  log "$b: $line"
  sleep 1
done

echo
printf '| %-12s | %-10s | %9s | %9s | %6s | %9s | %9s | %9s | %8s | %8s | %9s |\n' broker status published delivered lost "b. drop" "RSS start" "RSS mid" "RSS end" "growth" plateau
printf '|--------------|------------|-----------|-----------|--------|-----------|-----------|-----------|----------|----------|-----------|\n'
while read -r line; do
  mb() { awk -v k="$1" 'BEGIN{ if (k ~ /^[0-9]+$/) printf "%.1f MiB", k/1024; else print "-" }'; }
  printf '| %-12s | %-10s | %9s | %9s | %6s | %9s | %9s | %9s | %8s | %8s | %9s |\n' \
    "$(kv "$line" label)" "$(kv "$line" status)" "$(kv "$line" published)" "$(kv "$line" delivered)" "$(kv "$line" lost)" \
    "$(kv "$line" broker_dropped)" "$(mb "$(kv "$line" rss_start_kb)")" "$(mb "$(kv "$line" rss_mid_kb)")" \
    "$(mb "$(kv "$line" rss_end_kb)")" "$(kv "$line" growth_last_half_pct)%" "$(kv "$line" plateau)"
done < "$OUT"
echo
echo "RSS samples (seconds:kB) are in the raw lines: bench/.tools/steady-last-results.txt"
mkdir -p "$TOOLS"
cp "$OUT" "$TOOLS/steady-last-results.txt"
[[ -s "$WORK/loadgen.err" ]] && cp "$WORK/loadgen.err" "$TOOLS/steady-last-loadgen.err" && echo "Load generator messages: bench/.tools/steady-last-loadgen.err"
exit 0
