#!/usr/bin/env bash
# bench/cluster.sh: what crossing nodes costs. One nats-server (JetStream on), two clustered
# realtime-web nodes (A, B) and one lone node (S), all on loopback, measured in the same run:
#
#   1to1-q0   1 publisher -> 1 subscriber, QoS 0: delivered msgs/s
#   1to1-q1   the same at QoS 1
#   fanout-q0 1 publisher -> 50 subscribers, QoS 0: delivered msgs/s (sum)
#   latency   publish -> receive, QoS 0, 500 msgs/s for 4 s: median / p99 / max (ms)
#
# each on S alone ("single": publisher and subscribers on S) and across nodes ("cross":
# publisher on A, subscribers on B, every message through NATS), plus the CPU nats-server used
# during each cross run. Prints the loadgen RESULT lines, then a table with the cross/single
# ratios. CI does not run it; results go in BENCHMARKS.md.
#
# Usage: bench/cluster.sh        Env: RTW_BIN (default: $CARGO_TARGET_DIR or target,
#   release/realtime-web, built if missing), MSGS (1to1 QoS 0 messages, default 100000).
# Installs what it needs on Debian (nats-server, python3-paho-mqtt) when missing. Every step is
# bounded (timeout), every process is killed by its PID on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=cluster
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
pick_rtw_bin
MSGS="${MSGS:-100000}"
LOADGEN="$ROOT/bench/.tools/target/release/rtw-loadgen"
die() { echo "cluster.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
ensure_paho nats-server
ensure_release_bin "$BIN"
build_tool loadgen "$LOADGEN"

start_work rtw-cluster
listening() { wait_port "$1" 10 || die "nothing listens on $1"; }

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
listening "$NATS_PORT"

# node NAME CLUSTER(0|1) -> sets NODE_MQTT
node() {
  local name=$1 clustered=$2 mqtt http
  mqtt=$(free_port); http=$(free_port)
  local env=(RTW_MQTT__LISTEN="127.0.0.1:$mqtt" RTW_HTTP__LISTEN="127.0.0.1:$http"
             RTW_STORAGE__DIR="$WORK/$name" RTW_LOG__LEVEL=warn)
  [[ $clustered -eq 1 ]] && env+=(RTW_CLUSTER__NATS="nats://127.0.0.1:$NATS_PORT" RTW_CLUSTER__NODE="$name")
  env "${env[@]}" "$BIN" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  listening "$mqtt"
  NODE_MQTT=$mqtt
}
node A 1; A=$NODE_MQTT
node B 1; B=$NODE_MQTT
node S 0; S=$NODE_MQTT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

RESULTS="$WORK/results.txt"; : >"$RESULTS"
# run LABEL SUB_PORT PUB_PORT loadgen-args… -> prints "rate nats_cpu_s"
run() {
  local label=$1 sub=$2 pub=$3; shift 3
  local t0 t1 line
  t0=$(cpu_ticks "$NATS_PID")
  line=$(timeout 60 "$LOADGEN" --port "$sub" --pub-port "$pub" --max-secs 50 --label "$label" \
    throughput "$@" 2>>"$WORK/loadgen.err" | grep '^RESULT' | tail -1 || true)
  t1=$(cpu_ticks "$NATS_PID")
  echo "$line nats_cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}')" | tee -a "$RESULTS" >&2
  local rate; rate=$(grep -o 'msgs_per_s=[0-9]*' <<<"$line" | cut -d= -f2)
  echo "${rate:-0} $(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}')"
}

# latency LABEL SUB_PORT PUB_PORT -> prints "median p99 max" (ms)
latency() {
  timeout 30 python3 - "$2" "$3" <<'PY' 2>>"$WORK/latency.err" | tee -a "$RESULTS" >&2
import sys, time, threading
import paho.mqtt.client as mqtt
sub_port, pub_port = int(sys.argv[1]), int(sys.argv[2])
lat, ready = [], threading.Event()
def on_msg(c, u, m):
    lat.append((time.perf_counter_ns() - int(m.payload)) / 1e6)
def client(cid):
    try:
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    except AttributeError:
        return mqtt.Client(client_id=cid)
s = client("lat-sub"); s.on_message = on_msg
s.on_subscribe = lambda *a: ready.set()
s.connect("127.0.0.1", sub_port); s.subscribe("lat/x", 0); s.loop_start()
ready.wait(10)
p = client("lat-pub"); p.connect("127.0.0.1", pub_port); p.loop_start()
n, rate = 2000, 500
start = time.perf_counter()
for i in range(n):
    p.publish("lat/x", str(time.perf_counter_ns()), qos=0)
    delay = start + (i + 1) / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
deadline = time.time() + 5
while len(lat) < n and time.time() < deadline:
    time.sleep(0.05)
lat.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
print("LATENCY received=%d/%d median_ms=%.3f p99_ms=%.3f max_ms=%.3f" % (len(lat), n, q(0.5), q(0.99), lat[-1] if lat else float("nan")))
PY
  grep '^LATENCY' "$RESULTS" | tail -1 | awk '{for(i=1;i<=NF;i++){split($i,a,"="); v[a[1]]=a[2]} print v["median_ms"], v["p99_ms"], v["max_ms"]}'
}

log "nats-server $(nats-server --version | awk '{print $2}'), binary $BIN, $(nproc) cores"
read -r s1 _ < <(run single-1to1-q0 "$S" "$S" --qos 0 --messages "$MSGS")
read -r c1 n1 < <(run cross-1to1-q0 "$B" "$A" --qos 0 --messages "$MSGS")
read -r s2 _ < <(run single-1to1-q1 "$S" "$S" --qos 1 --messages $((MSGS / 2)))
read -r c2 n2 < <(run cross-1to1-q1 "$B" "$A" --qos 1 --messages $((MSGS / 2)))
read -r s3 _ < <(run single-fanout-q0 "$S" "$S" --qos 0 --subscribers 50 --messages $((MSGS / 5)))
read -r c3 n3 < <(run cross-fanout-q0 "$B" "$A" --qos 0 --subscribers 50 --messages $((MSGS / 5)))
read -r lsm lsp lsx < <(latency single "$S" "$S")
read -r lcm lcp lcx < <(latency cross "$B" "$A")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
per_msg() { awk -v cpu="$1" -v n="$2" 'BEGIN{ if (n > 0) printf "%.1f", cpu*1e6/n; else print "-" }'; }
echo
echo "cluster.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -m), $(nproc) cores, nats-server $(nats-server --version | awk '{print $2}')"
echo "scenario | single node | across nodes (A -> NATS -> B) | cross/single | nats-server CPU s (µs per crossing message)"
echo "1to1 QoS 0 msgs/s | $s1 | $c1 | $(ratio "$c1" "$s1") | $n1 ($(per_msg "$n1" "$MSGS"))"
echo "1to1 QoS 1 msgs/s | $s2 | $c2 | $(ratio "$c2" "$s2") | $n2 ($(per_msg "$n2" $((MSGS / 2))))"
echo "1to50 QoS 0 deliveries/s | $s3 | $c3 | $(ratio "$c3" "$s3") | $n3 ($(per_msg "$n3" $((MSGS / 5))))"
echo "latency QoS 0 at 500/s median/p99/max ms | $lsm/$lsp/$lsx | $lcm/$lcp/$lcx | $(ratio "$lcm" "$lsm") (median) | -"
