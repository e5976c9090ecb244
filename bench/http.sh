#!/usr/bin/env bash
# Bounded HTTP bridge benchmark: realtime-web vs a hyper hello-world, loopback only.
#
#   bench/http.sh            publish rate (qos 1 and 0) vs hello-world, then 10,000 SSE streams
#   bench/http.sh --quick    smaller counts (1,000 streams, 1 run, 3 s per rate step): a smoke test
#   bench/http.sh --streams-only   only the /events and Mercure stream rows (no loader, no hello)
#   bench/http.sh --help
#
# What it measures, in one run (see bench/README.md, "HTTP bridge"):
#   1. HTTP publish requests/s: `oha` posts a PAYLOAD-byte body to
#      POST /topics/bench/x?qos=1 and ?qos=0 over PUB_CONNS keep-alive connections, each step
#      bounded by a request count (PUB_REQS) and a time (PUB_SECS, SIGINT makes oha report what
#      it did so far); the same load against bench/hello (hyper 1.x hello-world, answers 200 with
#      13 bytes after reading the body) gives the baseline. RUNS runs, alternating the servers,
#      a fresh server process per run; the median is reported.
#   2. STREAMS concurrent SSE streams on GET /events?topic=bench/sse&retained=false, opened by
#      bench/ssebench; then ROUNDS publishes over HTTP, each timed from just before the POST to
#      its arrival on every stream (p50/p99 over all streams and rounds; the last stream's time
#      per round is the fan-out latency), and the server's VmRSS growth per open stream; the
#      same number of connections held open on the hello-world server is the memory baseline.
#   3. The same STREAMS and ROUNDS through the Mercure hub (issue 13): STREAMS anonymous
#      subscribers on GET /.well-known/mercure?topic=urn:bench:mercure, each round a form POST to
#      /.well-known/mercure with an HS256 publisher token (minted here with openssl); publish ->
#      last stream and VmRSS per stream, side by side with the /events row.
#
# Tools: oha (crates.io, `cargo install --locked oha --root bench/.tools`; if that fails, wrk
# from apt), bench/hello and bench/ssebench (standalone Cargo projects built once into
# bench/.tools/target), target/release/realtime-web (built if missing; RTW_BIN overrides).
# Every process is started by this script, killed by PID on exit (trap); every step has a
# timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/bench/.tools"
RTW_BIN="${RTW_BIN:-$ROOT/target/release/realtime-web}"
# realtime-web reads every RTW_* variable as configuration (RTW_BIN would be a section "bin"
# and refused): keep the path in a plain shell variable, out of the servers' environment.
export -n RTW_BIN
HELLO="$TOOLS/target/release/rtw-hello"
SSEBENCH="$TOOLS/target/release/rtw-ssebench"

PUB_CONNS="${PUB_CONNS:-64}"        # keep-alive connections for the publish rate
PUB_REQS="${PUB_REQS:-300000}"      # request bound per step
PUB_SECS="${PUB_SECS:-8}"           # time bound per step
PAYLOAD="${PAYLOAD:-64}"            # body bytes
RUNS="${RUNS:-3}"                   # runs per server; median reported
STREAMS="${STREAMS:-10000}"         # concurrent SSE streams
ROUNDS="${ROUNDS:-5}"               # measured publishes to the streams (plus one warm-up)
SSE_CONCURRENCY="${SSE_CONCURRENCY:-256}"  # stream set-ups in flight
STEP_TIMEOUT="${STEP_TIMEOUT:-180}" # seconds, per load-tool run
PORT_BASE="${PORT_BASE:-24880}"     # first loopback port tried

STREAMS_ONLY=0
USAGE_LINES=2,8
LOG_TAG=http-bench
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
flag() {
  case "$1" in
    --quick) STREAMS=1000; RUNS=1; PUB_SECS=3; PUB_REQS=50000; ROUNDS=3 ;;
    --streams-only) STREAMS_ONLY=1 ;;
    *) return 1 ;;
  esac
}
parse_args flag "$@"
start_work rtw-http-bench

# --- servers -----------------------------------------------------------------
SERVER_PID=""; SERVER_PORT=""
MERCURE_KEY="bench-mercure-key-$RANDOM$RANDOM$RANDOM"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# An HS256 publisher token with mercure.publish ["*"] (no exp, as Mercure's own).
mercure_token() {
  local h p
  h="$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)"
  p="$(printf '%s' '{"mercure":{"publish":["*"]}}' | b64url)"
  printf '%s.%s.%s' "$h" "$p" "$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -hmac "$MERCURE_KEY" -binary | b64url)"
}
start_server() { # rtw|hello -> SERVER_PID, SERVER_PORT
  local name="$1" dir="$WORK/$1-$RANDOM"
  mkdir -p "$dir"
  next_port "$PORT_BASE"; SERVER_PORT="$NEXT_PORT"
  case "$name" in
    rtw|rtw-mercure)
      next_port "$PORT_BASE"; local mqtt="$NEXT_PORT"
      mkdir -p "$dir/data"
      local -a extra=()
      [[ "$name" == rtw-mercure ]] && extra=(RTW_MERCURE__PUBLISHER_JWT_KEY="$MERCURE_KEY" RTW_MERCURE__ANONYMOUS=true)
      env "${extra[@]}" RTW_HTTP__LISTEN="127.0.0.1:$SERVER_PORT" RTW_MQTT__LISTEN="127.0.0.1:$mqtt" \
        RTW_STORAGE__DIR="$dir/data" RTW_LIMITS__MAX_CONNECTIONS_PER_IP=$(( STREAMS + 1000 )) RTW_BRIDGE__MAX_CONNECTIONS_PER_IP=$(( STREAMS + 1000 )) \
        RTW_LOG__LEVEL=warn "$RTW_BIN" > "$dir/server.log" 2>&1 &
      ;;
    hello)
      "$HELLO" "127.0.0.1:$SERVER_PORT" > "$dir/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  if ! wait_port "$SERVER_PORT" 30 "$SERVER_PID"; then
    tail -20 "$dir/server.log" >&2 || true
    stop_pids "$SERVER_PID"
    die "$name did not start"
  fi
}
stop_server() { stop_pids "$SERVER_PID"; SERVER_PID=""; }

# --- measurements ------------------------------------------------------------
BODY="$(head -c "$PAYLOAD" /dev/zero | tr '\0' 'x')"
printf '%s' "$BODY" > "$WORK/body"
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = "$BODY"
EOF

# Reads oha's JSON report: rps p50_ms p99_ms ok non_2xx
oha_fields() {
  awk '
    /"requests_per_sec"/ && rps == "" { gsub(/[,]/, "", $2); rps = $2 }
    /"latency_ms"/ { inlat = 1 }
    inlat && /"p50"/ && p50 == "" { gsub(/[,]/, "", $2); p50 = $2 }
    inlat && /"p99"/ && p99 == "" { gsub(/[,]/, "", $2); p99 = $2; inlat = 0 }
    /"statusCodeDistribution"/ { insc = 1; next }
    insc && /}/ { insc = 0 }
    insc { k = $1; gsub(/[",:]/, "", k); v = $2; gsub(/,/, "", v); if (k ~ /^2/) ok += v; else bad += v }
    END { printf "%s %s %s %d %d\n", rps, p50, p99, ok, bad }
  ' "$1"
}

# rate URL -> "rps p50_ms p99_ms ok non_2xx"
rate() {
  local url="$1" out="$WORK/rate.json"
  if [[ "$LOADER" == oha ]]; then
    timeout -s INT -k 10 "$PUB_SECS" "$OHA" -n "$PUB_REQS" -c "$PUB_CONNS" -m POST \
      -D "$WORK/body" -T text/plain --no-tui --output-format json "$url" > "$out" 2>>"$WORK/loader.err" || true
    oha_fields "$out"
  else
    wrk -t 2 -c "$PUB_CONNS" -d "${PUB_SECS}s" --latency -s "$WORK/post.lua" "$url" > "$out" 2>>"$WORK/loader.err" || true
    awk '/Requests\/sec/ { rps = $2 }
         /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
         /Non-2xx/ { bad = $NF }
         /requests in/ { n = $1 }
         END { printf "%s %s %s %d %d\n", rps, p50, p99, n - bad, bad }' "$out"
  fi
}

# --- main --------------------------------------------------------------------
HARD="$(ulimit -Hn)"
ulimit -n "$HARD" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited && $(ulimit -n) -lt $(( STREAMS + 1024 )) ]]; then
  STREAMS=$(( $(ulimit -n) - 1024 ))
  log "ulimit -n is $(ulimit -n): streams reduced to $STREAMS"
fi

if (( ! STREAMS_ONLY )); then
  ensure_loader
  build_tool hello "$HELLO"
fi
build_tool ssebench "$SSEBENCH"
ensure_release_bin "$RTW_BIN"

LOADER_VERSION="-"
(( STREAMS_ONLY )) || LOADER_VERSION="$([[ $LOADER == oha ]] && "$OHA" --version 2>/dev/null || wrk -v 2>&1 | head -1)"
{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  echo "ulimit -n $(ulimit -n); somaxconn $(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?')"
  echo "loader: $LOADER_VERSION; $(rustc --version 2>/dev/null || true)"
  echo "publish: $PAYLOAD-byte body, $PUB_CONNS connections, each step <= $PUB_REQS requests and <= $PUB_SECS s, $RUNS run(s)"
  echo "sse: $STREAMS streams, $ROUNDS rounds (+1 warm-up), $SSE_CONCURRENCY set-ups in flight"
} | tee "$WORK/header.txt" >&2

# 1. Publish rate.
: > "$WORK/rates.txt"
for run in $( (( STREAMS_ONLY )) || seq 1 "$RUNS"); do
  order=(rtw hello); (( run % 2 == 0 )) && order=(hello rtw)
  for srv in "${order[@]}"; do
    start_server "$srv"
    if [[ "$srv" == rtw ]]; then
      for q in 1 0; do
        r="$(rate "http://127.0.0.1:$SERVER_PORT/topics/bench/x?qos=$q")"
        echo "rtw-q$q $r" >> "$WORK/rates.txt"
        log "run $run realtime-web qos=$q: rps p50_ms p99_ms ok non2xx = $r"
      done
    else
      r="$(rate "http://127.0.0.1:$SERVER_PORT/topics/bench/x?qos=1")"
      echo "hello $r" >> "$WORK/rates.txt"
      log "run $run hello-world: rps p50_ms p99_ms ok non2xx = $r"
    fi
    stop_server
  done
done

col() { awk -v k="$1" -v c="$2" '$1 == k { print $c }' "$WORK/rates.txt" | median; }
bad_total() { awk -v k="$1" '$1 == k { s += $6 } END { print s + 0 }' "$WORK/rates.txt"; }

# 2. SSE streams.
start_server rtw
SSE_LINE="$(timeout -k 5 "$STEP_TIMEOUT" "$SSEBENCH" --addr "127.0.0.1:$SERVER_PORT" --streams "$STREAMS" \
  --rounds "$ROUNDS" --pid "$SERVER_PID" --concurrency "$SSE_CONCURRENCY" --max-secs $(( STEP_TIMEOUT - 5 )) \
  2>>"$WORK/ssebench.err" | grep '^RESULT' | tail -1 || true)"
sed 's/^/  /' "$WORK/ssebench.err" >&2 || true
kill -0 "$SERVER_PID" 2>/dev/null && SSE_ALIVE=yes || SSE_ALIVE=no
stop_server
# Baseline for the memory row: the hello-world server holding as many keep-alive connections
# (each made one GET), read the same way.
HELLO_LINE=""
(( STREAMS_ONLY )) || start_server hello
(( STREAMS_ONLY )) || HELLO_LINE="$(timeout -k 5 "$STEP_TIMEOUT" "$SSEBENCH" --addr "127.0.0.1:$SERVER_PORT" --streams "$STREAMS" \
  --rounds 0 --pid "$SERVER_PID" --concurrency "$SSE_CONCURRENCY" --max-secs $(( STEP_TIMEOUT - 5 )) \
  2>>"$WORK/hello-conns.err" | grep '^RESULT' | tail -1 || true)"
sed 's/^/  hello: /' "$WORK/hello-conns.err" >&2 || true
(( STREAMS_ONLY )) || stop_server
# 3. The same load through the Mercure hub.
start_server rtw-mercure
MERCURE_LINE="$(timeout -k 5 "$STEP_TIMEOUT" "$SSEBENCH" --addr "127.0.0.1:$SERVER_PORT" --streams "$STREAMS" \
  --rounds "$ROUNDS" --pid "$SERVER_PID" --concurrency "$SSE_CONCURRENCY" --max-secs $(( STEP_TIMEOUT - 5 )) \
  --topic urn:bench:mercure --mercure-token "$(mercure_token)" \
  2>>"$WORK/mercure.err" | grep '^RESULT' | tail -1 || true)"
sed 's/^/  mercure: /' "$WORK/mercure.err" >&2 || true
kill -0 "$SERVER_PID" 2>/dev/null && MERCURE_ALIVE=yes || MERCURE_ALIVE=no
stop_server

# --- table -------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.*f", d, v }'; }

H_RPS="$(col hello 2)"; H_P50="$(col hello 3)"; H_P99="$(col hello 4)"
{
  echo
  if (( ! STREAMS_ONLY )); then
    echo "| measurement | realtime-web | hello-world (hyper 1) | realtime-web / hello |"
    echo "|---|---:|---:|---:|"
    for q in 1 0; do
      R_RPS="$(col "rtw-q$q" 2)"; R_P50="$(col "rtw-q$q" 3)"; R_P99="$(col "rtw-q$q" 4)"
      echo "| POST /topics/bench/x?qos=$q, $PUB_CONNS conns: requests/s | $(fmt "$R_RPS") | $(fmt "$H_RPS") | $(ratio "$R_RPS" "$H_RPS") |"
      echo "| qos=$q latency p50 / p99, ms (lower is better) | $(fmt "$R_P50" 2) / $(fmt "$R_P99" 2) | $(fmt "$H_P50" 2) / $(fmt "$H_P99" 2) | $(ratio "$R_P50" "$H_P50") / $(ratio "$R_P99" "$H_P99") |"
      echo "| qos=$q non-2xx answers (all runs) | $(bad_total "rtw-q$q") | $(bad_total hello) | |"
    done
  else
    echo "| measurement | realtime-web | | |"
    echo "|---|---:|---:|---:|"
  fi
  if [[ -n "$SSE_LINE" ]]; then
    echo "| SSE: streams open / failed | $(kv "$SSE_LINE" streams) / $(kv "$SSE_LINE" failed) (in $(kv "$SSE_LINE" open_secs) s) | - | |"
    R_MEM="$(kv "$SSE_LINE" rss_per_stream_bytes)"; H_MEM="$(kv "$HELLO_LINE" rss_per_stream_bytes)"
    echo "| SSE: server VmRSS per open stream (hello: per idle keep-alive connection), bytes (lower is better) | $R_MEM | ${H_MEM:--} | $(ratio "$R_MEM" "$H_MEM") |"
    echo "| SSE: publish -> stream latency p50 / p99, ms | $(kv "$SSE_LINE" lat_p50_ms) / $(kv "$SSE_LINE" lat_p99_ms) | - | |"
    echo "| SSE: publish -> last stream, median / worst of $(kv "$SSE_LINE" rounds) rounds, ms | $(kv "$SSE_LINE" last_p50_ms) / $(kv "$SSE_LINE" last_max_ms) | - | |"
    echo "| SSE: deliveries / expected | $(kv "$SSE_LINE" delivered) / $(kv "$SSE_LINE" expected) | - | |"
  else
    echo "| SSE: $STREAMS streams | fail (see the ssebench lines above) | - | |"
  fi
  if [[ -n "$MERCURE_LINE" && -n "$SSE_LINE" ]]; then
    echo
    echo "| Mercure hub vs /events, $STREAMS streams | Mercure (/.well-known/mercure) | SSE (/events) | Mercure / SSE |"
    echo "|---|---:|---:|---:|"
    echo "| streams open / failed | $(kv "$MERCURE_LINE" streams) / $(kv "$MERCURE_LINE" failed) | $(kv "$SSE_LINE" streams) / $(kv "$SSE_LINE" failed) | |"
    M_MEM="$(kv "$MERCURE_LINE" rss_per_stream_bytes)"; S_MEM="$(kv "$SSE_LINE" rss_per_stream_bytes)"
    echo "| server VmRSS per open stream, bytes (lower is better) | $M_MEM | $S_MEM | $(ratio "$M_MEM" "$S_MEM") |"
    M_LAST="$(kv "$MERCURE_LINE" last_p50_ms)"; S_LAST="$(kv "$SSE_LINE" last_p50_ms)"
    echo "| publish -> last stream, median of $ROUNDS rounds, ms (lower is better) | $M_LAST | $S_LAST | $(ratio "$M_LAST" "$S_LAST") |"
    echo "| publish -> stream p50 / p99, ms | $(kv "$MERCURE_LINE" lat_p50_ms) / $(kv "$MERCURE_LINE" lat_p99_ms) | $(kv "$SSE_LINE" lat_p50_ms) / $(kv "$SSE_LINE" lat_p99_ms) | |"
    echo "| deliveries / expected | $(kv "$MERCURE_LINE" delivered) / $(kv "$MERCURE_LINE" expected) | $(kv "$SSE_LINE" delivered) / $(kv "$SSE_LINE" expected) | |"
  else
    echo "| Mercure: $STREAMS streams | fail (see the mercure lines above) | - | |"
  fi
  echo
  echo "server alive after the SSE run: $SSE_ALIVE; after the Mercure run: $MERCURE_ALIVE"
} | tee "$WORK/table.md"

mkdir -p "$TOOLS"
cp "$WORK/rates.txt" "$TOOLS/http-last-rates.txt"
cat "$WORK/header.txt" "$WORK/table.md" > "$TOOLS/http-last-table.md"
echo "RESULT-SSE $SSE_LINE" >> "$TOOLS/http-last-rates.txt"
echo "RESULT-HELLO-CONNS $HELLO_LINE" >> "$TOOLS/http-last-rates.txt"
echo "RESULT-MERCURE $MERCURE_LINE" >> "$TOOLS/http-last-rates.txt"
