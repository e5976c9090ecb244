#!/usr/bin/env bash
# Cross-check with a neutral crates.io load tool: mqttwrk (bytebeam), 1 -> 1,
# QoS 0 and QoS 1, against realtime-web and Mosquitto in the same run.
#
#   bench/mqttwrk.sh              both brokers, QoS 0 and 1
#   bench/mqttwrk.sh --peer-only  Mosquitto only
#   bench/mqttwrk.sh --help
#
# Each step runs, with a fresh broker:
#   mqttwrk bench -S 127.0.0.1 -P <port> -n $COUNT -p 1 -s 1 --publish-qos Q --subscribe-qos Q -m $PAYLOAD
# bounded by `timeout $STEP_TIMEOUT` (default 120 s). mqttwrk's subscriber only
# returns once it has every message, so a step that does not finish in time
# means lost messages (or a stalled broker). Reported per step: completed or
# not, the wall time, mqttwrk's own aggregate figures (messages the subscriber
# got, its and the publisher's msgs/s) and the broker's counters
# (received, sent, dropped: realtime-web /metrics, Mosquitto $SYS).
#
# mqttwrk is installed once with `cargo install mqttwrk --version 0.2.0 --root
# bench/.tools/mqttwrk` (bounded by 1,500 s); when it does not build, the script
# says so, keeps the compiler's error in bench/.tools/mqttwrk-install.log and
# exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
defaults COUNT=100000 PAYLOAD=100 STEP_TIMEOUT=120 "QOS_LIST=0 1" MQTTWRK_VERSION=0.2.0

USAGE_LINES=2,7
# shellcheck source=bench/brokers.sh
source "$ROOT/bench/brokers.sh"
broker_args "" "$@"

MQTTWRK="$TOOLS/mqttwrk/bin/mqttwrk"
ensure_mqttwrk() {
  [[ -x "$MQTTWRK" ]] && return
  mkdir -p "$TOOLS"
  log "installing mqttwrk $MQTTWRK_VERSION from crates.io into bench/.tools/mqttwrk (once)"
  if ! timeout 1500 cargo install mqttwrk --version "$MQTTWRK_VERSION" --root "$TOOLS/mqttwrk" \
       > "$TOOLS/mqttwrk-install.log" 2>&1; then
    grep -E '^error' -A8 "$TOOLS/mqttwrk-install.log" | head -40 >&2 || tail -20 "$TOOLS/mqttwrk-install.log" >&2
    die "mqttwrk $MQTTWRK_VERSION did not build with $(rustc --version) (full log: bench/.tools/mqttwrk-install.log)"
  fi
}

ensure_mosquitto
ensure_rtw
ensure_mqttwrk

run_header "Tool: mqttwrk $MQTTWRK_VERSION; 1 publisher -> 1 subscriber, $COUNT messages of $PAYLOAD B, QoS: $QOS_LIST; ${STEP_TIMEOUT}s per step"

OUT="$WORK/mqttwrk-results.txt"
: > "$OUT"
for q in $QOS_LIST; do
  for b in "${BROKERS[@]}"; do
    start_broker "$b" || { log "$b failed to start"; echo "RESULT tool=mqttwrk label=$b qos=$q status=no-broker" >> "$OUT"; continue; }
    before="$(counters_before "$b")"
    log "$b QoS $q: mqttwrk bench -n $COUNT -p 1 -s 1 (timeout ${STEP_TIMEOUT}s)"
    t0=$(date +%s.%N)
    rc=0
    timeout -k 5 "$STEP_TIMEOUT" "$MQTTWRK" bench -S 127.0.0.1 -P "$BROKER_PORT" -n "$COUNT" -p 1 -s 1 \
      --publish-qos "$q" --subscribe-qos "$q" -m "$PAYLOAD" > "$WORK/mqttwrk-$b-$q.out" 2>&1 || rc=$?
    secs="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')"
    after="$(broker_counters "$b")"
    stop_broker
    case "$rc" in
      0) status=completed ;;
      124|137) status=timeout ;;
      *) status="exit-$rc" ;;
    esac
    counters=" $(counter_delta "$before" "$after")"
    # mqttwrk's aggregate subscriber stats: messages received and its msgs/s.
    clean="$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/mqttwrk-$b-$q.out")"
    sub_rx="$(awk '/Aggregate SubStats/{f=1} f && /publish_count:/{gsub(",","",$2); print $2; exit}' <<<"$clean")"
    sub_rate="$(awk '/Aggregate SubStats/{f=1} f && /throughput:/{gsub(",","",$2); printf "%.0f", $2; exit}' <<<"$clean")"
    pub_rate="$(awk '/Aggregate PubStats/{f=1} f && /throughput:/{gsub(",","",$2); printf "%.0f", $2; exit}' <<<"$clean")"
    line="RESULT tool=mqttwrk label=$b qos=$q status=$status messages=$COUNT sub_received=${sub_rx:--} sub_msgs_per_s=${sub_rate:--} pub_msgs_per_s=${pub_rate:--} wall_s=$secs$counters"
    echo "$line" >> "$OUT"
    log "$line"
    # mqttwrk's own summary (ANSI colours stripped).
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/mqttwrk-$b-$q.out" | grep -v '^\s*$' | tail -8 | sed 's/^/    /' >&2  || true
    cp "$WORK/mqttwrk-$b-$q.out" "$TOOLS/mqttwrk-last-$b-qos$q.out" 2>/dev/null || true
    sleep 1
  done
done
echo
cat "$OUT"
cp "$OUT" "$TOOLS/mqttwrk-last-results.txt"
echo
echo "mqttwrk output per step: bench/.tools/mqttwrk-last-<broker>-qos<Q>.out"
