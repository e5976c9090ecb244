#!/usr/bin/env bash
# Request/response benchmark: HTTP round trips per second and p50/p99 latency through
# realtime-web's RPC bridge and the echo example, against a hyper hello-world baseline
# measured in the same run, same load tool, same connections, loopback only.
#
#   bench/rpc.sh             3 runs x 15 s per row (about 3-4 minutes with the builds done)
#   bench/rpc.sh --quick     1 run x 3 s per row (smoke test)
#   bench/rpc.sh --help
#   bench/rpc.sh --streams-only   only the streamed and drain rows below (no oha needed)
#
# Rows (every request: POST, a 64-byte body, 64 keep-alive connections):
#   hello       POST /                on bench/hello (hyper 1, answers at once): the ceiling
#   rpc-v5      POST /rpc/bench/echo  HTTP -> MQTT 5 request (Response Topic + Correlation
#                                     Data) -> echo example -> reply -> HTTP response
#   rpc-v311    POST /svc/bench       [[rpc.routes]] topic convention (req/... -> res/...)
#                                     -> echo example --v311 -> HTTP response
#
# Streamed rows (issue 17; a fresh realtime-web, so its peak RSS is the streams' own), a file
# of STREAM_MB MiB (default 512; 128 with --quick) sent and fetched once per run with curl:
#   stream-up   curl -T file PUT /rpc/files/bench.bin   -> chunks (rtw-chunk/rtw-ack) -> files example
#   stream-down curl GET /rpc/files/bench.bin           <- reply chunks <- files example
#   plain-up    curl -T file PUT /bench.bin   on bench/hello --files (hyper, no bridge): the ceiling
#   plain-down  curl GET /bench.bin           on the same
# reported as MB/s (median) and ratio to the plain row, plus realtime-web's RSS before the
# streams and its peak (VmHWM) after them.
# Drain row: DRAIN_N (default 200) calls with `RTW-Wait: 60` made while no responder runs, all
# waiting (rpc.waiting), then the echo starts: seconds until every call is answered (200).
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
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RTW_BIN="$TARGET/release/realtime-web"
ECHO_BIN="$TARGET/release/examples/echo"
FILES_BIN="$TARGET/release/examples/files"
HELLO_BIN="$TOOLS/target/release/rtw-hello"

MQTT_PORT="${MQTT_PORT:-24883}"
HTTP_PORT="${HTTP_PORT:-24880}"
HELLO_PORT="${HELLO_PORT:-24890}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-15}"   # seconds per measurement
WARMUP="${WARMUP:-3}"        # seconds, before each row's first run
RUNS="${RUNS:-3}"            # runs per row, alternating rows; the median is reported
BODY_BYTES="${BODY_BYTES:-64}"
STREAM_MB="${STREAM_MB:-512}"
DRAIN_N="${DRAIN_N:-200}"
STREAMS_ONLY=0

USAGE_LINES=2,35
LOG_TAG=rpc-bench
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
flag() {
  case "$1" in
    --quick) DURATION=3 WARMUP=1 RUNS=1 STREAM_MB="${STREAM_MB_QUICK:-128}" ;;
    --streams-only) STREAMS_ONLY=1 ;;
    --runs) RUNS="$2"; SHIFT=2 ;;
    --duration) DURATION="$2"; SHIFT=2 ;;
    *) return 1 ;;
  esac
}
parse_args flag "$@"
start_work rtw-rpc-bench

# --- tools and binaries ----------------------------------------------------------------------
build() {
  if [[ "${NO_BUILD:-0}" == 1 ]]; then
    log "NO_BUILD=1: using the existing release binaries"
  else
    log "building realtime-web and the echo and files examples (release)"
    if ! (cd "$ROOT" && timeout 3600 cargo build --release --quiet --bin realtime-web --example echo --example files); then
      [[ -x "$RTW_BIN" && -x "$ECHO_BIN" && -x "$FILES_BIN" ]] || die "the release build failed"
      log "WARNING: the release build failed (working tree mid-edit?); using the existing binaries"
    fi
  fi
  [[ -d "$ROOT/bench/hello" ]] || die "bench/hello is missing"
  build_tool hello "$HELLO_BIN"
  for b in "$RTW_BIN" "$ECHO_BIN" "$FILES_BIN" "$HELLO_BIN"; do [[ -x "$b" ]] || die "missing $b"; done
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

# start_rtw LOG MQTT_PORT HTTP_PORT DATA_DIR [ARG...]: a realtime-web (warn-level log to LOG),
# up once /healthz answers; RTW_PID is its PID.
start_rtw() {
  local log="$1" mqtt="$2" http="$3" data="$4"; shift 4
  RTW_MQTT__LISTEN="127.0.0.1:$mqtt" RTW_HTTP__LISTEN="127.0.0.1:$http" \
    RTW_STORAGE__DIR="$data" RTW_LOG__LEVEL=warn "$RTW_BIN" "$@" >"$log" 2>&1 &
  RTW_PID=$!
  PIDS+=("$RTW_PID")
  local deadline=$((SECONDS + 20))
  until curl -s -o /dev/null "http://127.0.0.1:$http/healthz"; do
    (( SECONDS < deadline )) || die "realtime-web did not start: $(tail -5 "$log")"
    sleep 0.1
  done
}

start_all() {
  cat >"$WORK/config.toml" <<'EOF'
[[rpc.routes]]
path = "/svc/{name...}"
topic = "req/svc/{name}"
convention = "topic"
EOF
  "$HELLO_BIN" "127.0.0.1:$HELLO_PORT" >"$WORK/hello.log" 2>&1 &
  PIDS+=("$!")
  start_rtw "$WORK/rtw.log" "$MQTT_PORT" "$HTTP_PORT" "$WORK/data" --config "$WORK/config.toml"
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
  if [[ $LOADER == oha ]]; then
    timeout $((secs + 60)) "$OHA" --no-tui --output-format json -w \
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

# --- round trips (the original rows) ----------------------------------------------------------
round_trips() {
start_all

ROWS=(hello rpc-v5 rpc-v311)
declare -A URL=(
  [hello]="http://127.0.0.1:$HELLO_PORT/"
  [rpc-v5]="http://127.0.0.1:$HTTP_PORT/rpc/bench/echo"
  [rpc-v311]="http://127.0.0.1:$HTTP_PORT/svc/bench"
)
log "tool $LOADER, $CONNS connections, ${DURATION} s x $RUNS runs per row, $BODY_BYTES-byte POST bodies, $(nproc) CPUs"
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
}

# --- streamed rows and the drain row ------------------------------------------------------------
SPORT_MQTT="${SPORT_MQTT:-24983}"
SPORT_HTTP="${SPORT_HTTP:-24980}"
SPORT_PLAIN="${SPORT_PLAIN:-24990}"

rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# one transfer with curl: prints MB/s (curl's average speed, bytes/s -> MB/s) or dies
transfer() { # up|down url file
  local out code speed
  if [[ $1 == up ]]; then
    out="$(timeout 600 curl -sS -o "$WORK/curl.out" -w '%{http_code} %{speed_upload}' \
      -X PUT -H 'RTW-Timeout: 60' -H 'Content-Type: application/octet-stream' -T "$3" "$2")"
  else
    out="$(timeout 600 curl -sS -o "$3" -w '%{http_code} %{speed_download}' -H 'RTW-Timeout: 60' "$2")"
  fi
  read -r code speed <<<"$out"
  [[ $code == 200 || $code == 201 ]] || die "$1 $2: HTTP $code $(head -c 300 "$WORK/curl.out" 2>/dev/null)"
  awk -v b="$speed" 'BEGIN {printf "%.1f\n", b / 1e6}'
}

streams() {
  local data="$WORK/streams" pid_rtw
  mkdir -p "$data/files" "$data/plain"
  "$HELLO_BIN" "127.0.0.1:$SPORT_PLAIN" --files "$data/plain" >"$WORK/plain.log" 2>&1 &
  PIDS+=("$!")
  start_rtw "$WORK/rtw-streams.log" "$SPORT_MQTT" "$SPORT_HTTP" "$data/rtw"
  pid_rtw=$RTW_PID
  "$FILES_BIN" --port "$SPORT_MQTT" --id bench-files --dir "$data/files" >"$WORK/files.log" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$SPORT_HTTP/rpc/files/probe?timeout=2" 201 20
  log "making a $STREAM_MB MiB file of random bytes"
  head -c "$((STREAM_MB * 1024 * 1024))" /dev/urandom >"$data/src.bin"
  local sum; sum="$(sha256sum <"$data/src.bin" | cut -d' ' -f1)"
  local rss0; rss0="$(rss_kb "$pid_rtw" VmRSS)"
  declare -A URLS=(
    [stream-up]="http://127.0.0.1:$SPORT_HTTP/rpc/files/bench.bin"
    [stream-down]="http://127.0.0.1:$SPORT_HTTP/rpc/files/bench.bin"
    [plain-up]="http://127.0.0.1:$SPORT_PLAIN/bench.bin"
    [plain-down]="http://127.0.0.1:$SPORT_PLAIN/bench.bin"
  )
  local run r mbs
  for run in $(seq 1 "$RUNS"); do
    for r in plain-up plain-down stream-up stream-down; do
      if [[ $r == *-up ]]; then
        mbs="$(transfer up "${URLS[$r]}" "$data/src.bin")"
      else
        mbs="$(transfer down "${URLS[$r]}" "$data/got.bin")"
        [[ "$(sha256sum <"$data/got.bin" | cut -d' ' -f1)" == "$sum" ]] || die "$r: checksum differs"
        rm -f "$data/got.bin"
      fi
      echo "$mbs" >>"$WORK/$r.txt"
      log "run $run $r: $mbs MB/s ($STREAM_MB MiB, sha256 ok)"
    done
  done
  local hwm rss1 st
  hwm="$(rss_kb "$pid_rtw" VmHWM)"
  rss1="$(rss_kb "$pid_rtw" VmRSS)"
  st="$(curl -s "http://127.0.0.1:$SPORT_HTTP/api/stats" | jq -c '.rpc | {streams, stream_errors, in_flight}' 2>/dev/null || echo '{}')"
  printf '\n%-12s %10s %14s\n' "row" "MB/s" "ratio/plain"
  for r in stream-up stream-down plain-up plain-down; do
    local m p
    m="$(median <"$WORK/$r.txt")"
    p="$(median <"$WORK/plain-${r#*-}.txt")"
    printf '%-12s %10.1f %14s\n' "$r" "$m" "$(awk -v a="$m" -v b="$p" 'BEGIN {printf "%.3f", a / b}')"
  done
  printf '\n(%d MiB per transfer, median of %d runs; realtime-web RSS before the streams %d MB, peak %d MB (growth %d MB), after %d MB; rpc counters %s)\n' \
    "$STREAM_MB" "$RUNS" "$((rss0 / 1024))" "$((hwm / 1024))" "$(((hwm - rss0) / 1024))" "$((rss1 / 1024))" "$st"
}

drain() {
  local base="http://127.0.0.1:$SPORT_HTTP" i n t0 t1 ok calls=()
  for i in $(seq 1 "$DRAIN_N"); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST -H 'RTW-Wait: 60' -H 'RTW-Timeout: 60' \
      --data "call $i" "$base/rpc/drain/$i" >>"$WORK/drain.txt" &
    calls+=("$!")
  done
  local deadline=$((SECONDS + 60))
  until [[ "$(curl -s "$base/api/stats" | jq '.rpc.waiting')" == "$DRAIN_N" ]]; do
    (( SECONDS < deadline )) || die "the $DRAIN_N calls did not all wait"
    sleep 0.05
  done
  t0="$(date +%s.%N)"
  "$ECHO_BIN" --port "$SPORT_MQTT" --id bench-drain-echo --filter 'rpc/drain/#' >"$WORK/drain-echo.log" 2>&1 &
  PIDS+=("$!")
  wait "${calls[@]}" 2>/dev/null || true
  t1="$(date +%s.%N)"
  ok="$(grep -c '^200$' "$WORK/drain.txt" || true)"
  n="$(wc -l <"$WORK/drain.txt")"
  printf '\n%-12s %8s %8s %14s %12s\n' "row" "calls" "200s" "drain seconds" "calls/s"
  printf '%-12s %8d %8d %14.3f %12.0f\n' "drain" "$n" "$ok" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    "$(awk -v a="$t0" -v b="$t1" -v n="$ok" 'BEGIN {print n / (b - a)}')"
  printf '(%d calls waiting with RTW-Wait when the echo started; seconds from its start to the last answer, including its connect)\n' "$DRAIN_N"
}

# --- main -------------------------------------------------------------------------------------
[[ $STREAMS_ONLY == 1 ]] || ensure_loader
build
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ $STREAMS_ONLY == 1 ]] || round_trips
log "streamed rows: $STREAM_MB MiB x $RUNS runs; drain row: $DRAIN_N calls"
streams
drain
