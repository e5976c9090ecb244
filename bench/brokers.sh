# Shared by bench/broker.sh, bench/steady.sh and bench/mqttwrk.sh (sourced, not run):
# installing Mosquitto, building the load generator, starting and stopping one
# broker at a time on a fresh loopback port, and reading the brokers' own
# message counters. Builds on bench/lib.sh (the helpers of every bench script).
#
# The sourcing script sets ROOT, and may set RTW_BIN, MOSQ_PORT, RTW_MQTT_PORT,
# RTW_HTTP_PORT, PEER_ONLY before calling these, then parses its arguments with
# broker_args. It gets WORK (a temporary directory removed on exit), BROKERS,
# BROKER_PID, BROKER_PORT, BROKER_HTTP_PORT, and an EXIT trap that stops the
# broker by PID.
#
# Counters (broker_counters): realtime-web's rtw_messages_received_total,
# rtw_messages_sent_total and rtw_messages_dropped_total from its /metrics
# (HTTP port; anonymous callers are admins in loopback-only mode); Mosquitto's
# $SYS/broker/publish/messages/{received,sent,dropped} (retained, refreshed
# every second with `sys_interval 1` in the generated config).

# shellcheck source=bench/lib.sh
declare -F parse_args >/dev/null || source "$ROOT/bench/lib.sh"

TOOLS="$ROOT/bench/.tools"
LOADGEN="$TOOLS/target/release/rtw-loadgen"
RTW_BIN="${RTW_BIN:-$ROOT/target/release/realtime-web}"
MOSQ_PORT="${MOSQ_PORT:-21883}"
RTW_MQTT_PORT="${RTW_MQTT_PORT:-22883}"
RTW_HTTP_PORT="${RTW_HTTP_PORT:-23880}"
PEER_ONLY="${PEER_ONLY:-0}"

BROKER_PID=""
BROKER_PORT=""
BROKER_HTTP_PORT=""
stop_broker() {
  stop_pids "$BROKER_PID"
  BROKER_PID=""
}
ON_EXIT=stop_broker
start_work rtw-bench

# broker_args FLAG_FN ARG...: parse_args with --peer-only (Mosquitto alone) handled here and
# every other flag by FLAG_FN ("" when the script has none); then BROKERS = the brokers to
# run, in order.
broker_args() {
  BROKER_FLAG_FN="$1"; shift
  parse_args broker_flag "$@"
  BROKERS=(mosquitto)
  if [[ $PEER_ONLY -eq 0 ]]; then BROKERS=(realtime-web mosquitto); fi
}
broker_flag() {
  if [[ "$1" == --peer-only ]]; then PEER_ONLY=1; return 0; fi
  [[ -n "$BROKER_FLAG_FN" ]] && "$BROKER_FLAG_FN" "$@"
}

# run_header WORKLOAD: the machine, the workload line, the realtime-web binary (unless
# --peer-only) and a blank line.
run_header() {
  machine_header
  echo "$1"
  if [[ $PEER_ONLY -eq 0 ]]; then echo "realtime-web: $RTW_BIN ($(date -u -r "$RTW_BIN" '+built %Y-%m-%d %H:%M UTC'))"; fi
  echo
}

# --- tools -------------------------------------------------------------------
ensure_mosquitto() {
  command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null && return
  log "installing mosquitto and mosquitto-clients (apt)"
  apt_install mosquitto mosquitto-clients
  # The package may start the system service on 1883: we do not need it.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    as_root systemctl stop mosquitto 2>/dev/null || true
  elif command -v service >/dev/null; then
    as_root service mosquitto stop >/dev/null 2>&1 || true
  fi
}

ensure_loadgen() { build_tool loadgen "$LOADGEN"; }

ensure_rtw() {
  [[ $PEER_ONLY -eq 1 ]] && return
  ensure_release_bin "$RTW_BIN" "use --peer-only to bench Mosquitto alone"
}

# raise_nofile CONNS -> raises the soft limit to the hard one; sets CONNS lower
# (and says so) when the hard limit cannot hold CONNS + 1024 descriptors in one
# process (each broker and the load generator is its own process).
raise_nofile() {
  local hard want
  hard="$(ulimit -Hn)"; want=$(( CONNS + 1024 ))
  if [[ "$hard" != unlimited && "$hard" -lt "$want" ]]; then
    CONNS=$(( hard - 1024 ))
    log "hard nofile limit $hard: reducing connections to $CONNS"
  fi
  if [[ "$hard" == unlimited ]]; then ulimit -n 1048576 2>/dev/null || ulimit -n "$want"; else ulimit -n "$hard"; fi
}

# --- brokers -----------------------------------------------------------------
start_broker() { # name -> sets BROKER_PID, BROKER_PORT, BROKER_HTTP_PORT
  local name="$1" dir="$WORK/$1-$RANDOM"
  mkdir -p "$dir"
  BROKER_HTTP_PORT=""
  case "$name" in
    mosquitto)
      next_port "$MOSQ_PORT"; BROKER_PORT="$NEXT_PORT"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nsys_interval 1\n' \
        "$BROKER_PORT" > "$dir/mosquitto.conf"
      # MOSQ_PERSISTENCE=1: Mosquitto's own persistence (sessions and queues saved to
      # mosquitto.db at autosave and at exit).
      if [[ "${MOSQ_PERSISTENCE:-0}" == 1 ]]; then
        printf 'persistence true\npersistence_location %s/\n' "$dir" >> "$dir/mosquitto.conf"
      fi
      mosquitto -c "$dir/mosquitto.conf" > "$dir/broker.log" 2>&1 &
      BROKER_PID=$!
      ;;
    realtime-web)
      next_port "$RTW_MQTT_PORT"; BROKER_PORT="$NEXT_PORT"
      next_port "$RTW_HTTP_PORT"; BROKER_HTTP_PORT="$NEXT_PORT"
      mkdir -p "$dir/data"
      RTW_MQTT__LISTEN="127.0.0.1:$BROKER_PORT" RTW_HTTP__LISTEN="127.0.0.1:$BROKER_HTTP_PORT" \
        RTW_STORAGE__DIR="$dir/data" "$RTW_BIN" > "$dir/broker.log" 2>&1 &
      BROKER_PID=$!
      ;;
    *) die "unknown broker $name" ;;
  esac
  BROKER_LOG="$dir/broker.log"
  if ! wait_port "$BROKER_PORT" 30 "$BROKER_PID" || { [[ -n "$BROKER_HTTP_PORT" ]] && ! wait_port "$BROKER_HTTP_PORT" 10 "$BROKER_PID"; }; then
    tail -20 "$dir/broker.log" >&2 || true
    stop_broker
    return 1
  fi
}

# counters_before NAME -> the counters to subtract from the ones after a run. Mosquitto's are
# read too (as before every run), but taken as 0: each run starts a fresh process.
counters_before() {
  local c
  c="$(broker_counters "$1")"
  [[ "$1" == mosquitto ]] && c="received=0 sent=0 dropped=0"
  echo "$c"
}

# broker_counters NAME -> prints "received=R sent=S dropped=D" (the broker's own
# PUBLISH counters since it started; "-" where unreadable). Mosquitto's come from
# $SYS, which it refreshes every second (sys_interval 1): 2.5 s after the run they
# are up to date (1.2 s was not always enough).
broker_counters() {
  local r="-" s="-" d="-" text
  case "$1" in
    realtime-web)
      text="$(curl -sf -m 5 "http://127.0.0.1:$BROKER_HTTP_PORT/metrics" 2>/dev/null || true)"
      r="$(awk '$1=="rtw_messages_received_total"{print $2}' <<<"$text")"
      s="$(awk '$1=="rtw_messages_sent_total"{print $2}' <<<"$text")"
      d="$(awk '$1=="rtw_messages_dropped_total"{print $2}' <<<"$text")"
      ;;
    mosquitto)
      sleep 2.5
      # Listen 2 s and keep the last value of each: a counter can arrive twice
      # (the retained value, then a refresh), so "the first 3 messages" may miss one.
      text="$(timeout 5 mosquitto_sub -p "$BROKER_PORT" -i "bench-sys-$RANDOM" -v -W 2 \
              -t '$SYS/broker/publish/messages/received' -t '$SYS/broker/publish/messages/sent' \
              -t '$SYS/broker/publish/messages/dropped' 2>/dev/null || true)"
      r="$(awk '$1 ~ /received$/ {v=$2} END{print v}' <<<"$text")"
      s="$(awk '$1 ~ /sent$/ {v=$2} END{print v}' <<<"$text")"
      d="$(awk '$1 ~ /dropped$/ {v=$2} END{print v}' <<<"$text")"
      ;;
  esac
  echo "received=${r:--} sent=${s:--} dropped=${d:--}"
}

machine_header() { # prints the machine, kernel and load lines
  local cpu mem
  cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  mem="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  sysctl_val() { cat "/proc/sys/$1" 2>/dev/null | tr '\t' ' ' || echo "?"; }
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r)"
  echo "Kernel: somaxconn=$(sysctl_val net/core/somaxconn) tcp_max_syn_backlog=$(sysctl_val net/ipv4/tcp_max_syn_backlog) syncookies=$(sysctl_val net/ipv4/tcp_syncookies) nofile=$(ulimit -n)"
  echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN{exit !(l > 0.5)}'; then
    echo "WARNING: other work is using the CPUs, numbers will be low and noisy."
  fi
}
