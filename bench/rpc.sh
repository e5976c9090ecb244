#!/usr/bin/env bash
# Request/response benchmark: HTTP round trips per second and p50/p99 latency through
# realtime-web's RPC bridge and the echo example, against a hyper hello-world baseline
# measured in the same run, same load tool, same connections, loopback only.
#
#   bench/rpc.sh             3 runs x 15 s per row (about 3-4 minutes with the builds done)
#   bench/rpc.sh --quick     1 run x 3 s per row (smoke test)
#   bench/rpc.sh --help
#
# Rows (every request: POST, a 64-byte body, 64 keep-alive connections):
#   hello       POST /                on bench/hello (hyper 1, answers at once): the ceiling
#   rpc-v5      POST /rpc/bench/echo  HTTP -> MQTT 5 request (Response Topic + Correlation
#                                     Data) -> echo example -> reply -> HTTP response
#   rpc-v311    POST /svc/bench       [[rpc.routes]] topic convention (req/... -> res/...)
#                                     -> echo example --v311 -> HTTP response
#
# Binaries: target/release/realtime-web and target/release/examples/echo
# (`cargo build --release --bin realtime-web --example echo`, run every time: a no-op when
# nothing changed), bench/hello built into bench/.tools/target. Load tool: oha, installed
# from crates.io into bench/.tools (`cargo install --locked oha --root bench/.tools`); wrk
# from apt if that fails. NO_BUILD=1 skips the realtime-web build; if that build fails, the
# existing binaries are used with a warning. Everything is bounded: fixed durations, `timeout`
# around every load run and build, processes killed by PID on exit (trap).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/bench/.tools"
RTW_BIN="$ROOT/target/release/realtime-web"
ECHO_BIN="$ROOT/target/release/examples/echo"
HELLO_BIN="$TOOLS/target/release/rtw-hello"

MQTT_PORT="${MQTT_PORT:-24883}"
HTTP_PORT="${HTTP_PORT:-24880}"
HELLO_PORT="${HELLO_PORT:-24890}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-15}"   # seconds per measurement
WARMUP="${WARMUP:-3}"        # seconds, before each row's first run
RUNS="${RUNS:-3}"            # runs per row, alternating rows; the median is reported
BODY_BYTES="${BODY_BYTES:-64}"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) DURATION=3 WARMUP=1 RUNS=1 ;;
    --runs) RUNS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[rpc-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

WORK="$(mktemp -d /tmp/rtw-rpc-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools and binaries ----------------------------------------------------------------------
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

TOOL=""
ensure_tool() {
  if [[ -x "$TOOLS/bin/oha" ]]; then TOOL=oha; return; fi
  log "installing oha into bench/.tools (cargo install --locked; once)"
  mkdir -p "$TOOLS"
  if CARGO_TARGET_DIR="$TOOLS/target-oha" timeout 3600 cargo install --locked --quiet oha --root "$TOOLS" \
      && [[ -x "$TOOLS/bin/oha" ]]; then
    TOOL=oha; return
  fi
  log "oha failed to install; falling back to wrk (apt)"
  if ! command -v wrk >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends wrk >/dev/null
  fi
  command -v wrk >/dev/null || die "neither oha nor wrk is available"
  TOOL=wrk
}

build() {
  if [[ "${NO_BUILD:-0}" == 1 ]]; then
    log "NO_BUILD=1: using the existing release binaries"
  else
    log "building realtime-web and the echo example (release)"
    if ! (cd "$ROOT" && timeout 3600 cargo build --release --quiet --bin realtime-web --example echo); then
      [[ -x "$RTW_BIN" && -x "$ECHO_BIN" ]] || die "the release build failed"
      log "WARNING: the release build failed (working tree mid-edit?); using the existing binaries"
    fi
  fi
  [[ -d "$ROOT/bench/hello" ]] || die "bench/hello is missing"
  log "building bench/hello into bench/.tools/target"
  CARGO_TARGET_DIR="$TOOLS/target" timeout 1800 \
    cargo build --release --quiet --manifest-path "$ROOT/bench/hello/Cargo.toml"
  for b in "$RTW_BIN" "$ECHO_BIN" "$HELLO_BIN"; do [[ -x "$b" ]] || die "missing $b"; done
}

# --- processes --------------------------------------------------------------------------------
wait_http() { # url expected-code seconds
  local deadline=$((SECONDS + $3)) code
  while (( SECONDS < deadline )); do
    code="$(curl -s -o /dev/null -w '%{http_code}' -X POST --data x "$1" || true)"
    [[ "$code" == "$2" ]] && return 0
    sleep 0.1
  done
  die "$1 did not answer $2 within $3 s (last: ${code:-none})"
}

start_all() {
  cat >"$WORK/config.toml" <<'EOF'
[[rpc.routes]]
path = "/svc/{name...}"
topic = "req/svc/{name}"
convention = "topic"
EOF
  RTW_MQTT__LISTEN="127.0.0.1:$MQTT_PORT" RTW_HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
    RTW_STORAGE__DIR="$WORK/data" RTW_LOG__LEVEL=warn \
    "$RTW_BIN" --config "$WORK/config.toml" >"$WORK/rtw.log" 2>&1 &
  PIDS+=("$!")
  "$HELLO_BIN" "127.0.0.1:$HELLO_PORT" >"$WORK/hello.log" 2>&1 &
  PIDS+=("$!")
  local deadline=$((SECONDS + 20))
  until curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/healthz"; do
    (( SECONDS < deadline )) || die "realtime-web did not start: $(tail -5 "$WORK/rtw.log")"
    sleep 0.1
  done
  "$ECHO_BIN" --port "$MQTT_PORT" --id bench-echo-v5 >"$WORK/echo5.log" 2>&1 &
  PIDS+=("$!")
  "$ECHO_BIN" --port "$MQTT_PORT" --id bench-echo-v311 --v311 >"$WORK/echo311.log" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$HELLO_PORT/" 200 20
  wait_http "http://127.0.0.1:$HTTP_PORT/rpc/bench/echo?timeout=2" 200 20
  wait_http "http://127.0.0.1:$HTTP_PORT/svc/bench?timeout=2" 200 20
}

# --- one measurement: prints "rps p50_ms p99_ms ok errors" -------------------------------------
BODY="$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')"
measure() { # url seconds
  local url="$1" secs="$2" out="$WORK/out.json"
  if [[ $TOOL == oha ]]; then
    timeout $((secs + 60)) "$TOOLS/bin/oha" --no-tui --output-format json -w \
      -z "${secs}s" -c "$CONNS" -t 10s -m POST -T text/plain -d "$BODY" "$url" >"$out"
    jq -r '[.summary.requestsPerSec,
            (.latencyPercentiles.p50 * 1000), (.latencyPercentiles.p99 * 1000),
            ((.statusCodeDistribution["200"] // 0)),
            (([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
             + ([.errorDistribution | to_entries[] | .value] | add // 0))]
           | map(tostring) | join(" ")' "$out"
  else
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = "$BODY"
wrk.headers["Content-Type"] = "text/plain"
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write
             + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %f %f %f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests - errs, errs))
end
EOF
    timeout $((secs + 60)) wrk -t 2 -c "$CONNS" -d "${secs}s" --timeout 10s -s "$WORK/post.lua" "$url" \
      | awk '/^RESULT/ {print $2, $3, $4, $5, $6}'
  fi
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# --- main -------------------------------------------------------------------------------------
ensure_tool
build
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
start_all

ROWS=(hello rpc-v5 rpc-v311)
declare -A URL=(
  [hello]="http://127.0.0.1:$HELLO_PORT/"
  [rpc-v5]="http://127.0.0.1:$HTTP_PORT/rpc/bench/echo"
  [rpc-v311]="http://127.0.0.1:$HTTP_PORT/svc/bench"
)
log "tool $TOOL, $CONNS connections, ${DURATION} s x $RUNS runs per row, $BODY_BYTES-byte POST bodies, $(nproc) CPUs"
for r in "${ROWS[@]}"; do
  log "warm-up $r (${WARMUP} s)"
  measure "${URL[$r]}" "$WARMUP" >/dev/null
done
for run in $(seq 1 "$RUNS"); do
  for r in "${ROWS[@]}"; do
    line="$(measure "${URL[$r]}" "$DURATION")"
    [[ -n "$line" ]] || die "no result for $r"
    echo "$line" >>"$WORK/$r.txt"
    log "run $run $r: $(awk '{printf "%.0f/s p50 %.2f ms p99 %.2f ms ok %d errors %d", $1, $2, $3, $4, $5}' <<<"$line")"
  done
done

STATS="$(curl -s "http://127.0.0.1:$HTTP_PORT/api/stats" | jq -c '.rpc' 2>/dev/null || echo '{}')"

base_rps="$(cut -d' ' -f1 "$WORK/hello.txt" | median)"
printf '\n%-10s %14s %10s %10s %12s %10s %14s\n' "row" "round trips/s" "p50 ms" "p99 ms" "ok" "errors" "ratio/hello"
for r in "${ROWS[@]}"; do
  rps="$(cut -d' ' -f1 "$WORK/$r.txt" | median)"
  p50="$(cut -d' ' -f2 "$WORK/$r.txt" | median)"
  p99="$(cut -d' ' -f3 "$WORK/$r.txt" | median)"
  ok="$(awk '{s += $4} END {print s}' "$WORK/$r.txt")"
  errs="$(awk '{s += $5} END {print s}' "$WORK/$r.txt")"
  ratio="$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {printf "%.3f", a / b}')"
  printf '%-10s %14.0f %10.2f %10.2f %12d %10d %14s\n' "$r" "$rps" "$p50" "$p99" "$ok" "$errs" "$ratio"
done
printf '\n(median of %d runs each; ok/errors summed over the runs; realtime-web rpc counters after the runs: %s)\n' \
  "$RUNS" "$STATS"
