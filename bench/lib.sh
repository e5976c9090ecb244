# Shared shell functions of the bench/ scripts (sourced, not run): logging, argument parsing,
# installing tools (apt, oha, the bench/ Cargo projects, the realtime-web release binary),
# loopback ports, starting and stopping processes by PID, a temporary work directory removed
# on exit, and the small number helpers the result tables use. Defines functions (and the
# variables they keep) and starts nothing, so a script may source it first thing
# (bench/brokers.sh builds on it).
#
# The sourcing script sets ROOT (the repository) and may set LOG_TAG (the tag of log lines,
# default "bench") and USAGE_LINES (the lines of its header comment --help prints).

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# defaults NAME=VALUE...: sets each NAME to VALUE unless the environment gives it a non-empty
# value (a script's knobs).
defaults() {
  local kv name
  for kv in "$@"; do
    name="${kv%%=*}"
    [[ -n "${!name:-}" ]] || printf -v "$name" '%s' "${kv#*=}"
  done
}

# --help: the script's header comment (lines USAGE_LINES of it, without the "# ").
usage() { sed -n "${USAGE_LINES:-2,8}p" "$0" | sed 's/^# \{0,1\}//'; }

# parse_args FLAG_FN ARG...: calls FLAG_FN with each argument and the ones after it; FLAG_FN
# handles "$1", sets SHIFT=2 when it also took "$2", and returns 1 for an argument it does not
# know (then: usage on stderr, exit 2). -h/--help print the usage and exit 0.
parse_args() {
  local fn="$1"; shift
  while [[ $# -gt 0 ]]; do
    SHIFT=1
    case "$1" in
      -h|--help) usage; exit 0 ;;
      *) "$fn" "$@" || { echo "unknown argument: $1" >&2; usage >&2; exit 2; } ;;
    esac
    shift "$SHIFT"
  done
}

# --- work directory and processes --------------------------------------------------------------
# start_work NAME: WORK = a fresh /tmp/NAME.XXXXXX. On exit every PID in PIDS is stopped
# (stop_pids), then the function named by ON_EXIT (if set) runs, then WORK is removed.
PIDS=()
start_work() {
  WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
  trap finish_work EXIT
  trap 'exit 130' INT TERM
}
finish_work() {
  [[ -n "${ON_EXIT:-}" ]] && "$ON_EXIT"
  stop_pids "${PIDS[@]}"
  rm -rf "$WORK"
}

# stop_pids PID...: SIGTERM to each (empty ones skipped), up to 5 s for each to exit, then
# SIGKILL; reaps them.
stop_pids() {
  local p
  for p in "$@"; do [[ -z "$p" ]] || kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    [[ -n "$p" ]] || continue
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  return 0
}

# --- ports -------------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port -> a loopback port the kernel just handed out (and released).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT SECONDS [PID]: until something listens on PORT; fails after SECONDS or as soon
# as PID (when given) has exited.
wait_port() {
  local i
  for i in $(seq 1 $(( $2 * 10 ))); do
    port_open "$1" && return 0
    [[ -z "${3:-}" ]] || kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Every server start takes the next port (base, base+1, ...): after a run with many
# connections the old client sockets sit in TIME-WAIT for 60 s, and reusing the same
# destination port made the next connection storm 5-10x slower (measured). Fresh ports keep
# runs independent.
PORT_SEQ=0
next_port() { # BASE -> NEXT_PORT, the first free port at BASE+PORT_SEQ..
  local p
  for _ in $(seq 1 200); do
    p=$(( $1 + PORT_SEQ )); PORT_SEQ=$(( PORT_SEQ + 1 ))
    if ! port_open "$p" && ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
      NEXT_PORT="$p"; return 0
    fi
  done
  die "no free port near $1"
}

# --- tools -------------------------------------------------------------------------------------
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

# apt_install PKG...: Debian packages, quietly (root or sudo).
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_paho [CMD...]: python3 with paho-mqtt and the given commands (each from the apt package
# of the same name), installed with apt when missing.
ensure_paho() {
  local need=() c
  for c in python3 "$@"; do command -v "$c" >/dev/null || need+=("$c"); done
  python3 -c 'import paho.mqtt' 2>/dev/null || need+=(python3-paho-mqtt)
  [[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}" || die "cannot install ${need[*]}"
}

# build_tool PROJECT BINARY: builds the standalone Cargo project bench/PROJECT into
# bench/.tools/target (release, --locked) unless BINARY is newer than its sources.
build_tool() {
  local proj="$1" bin="$2" newest
  newest="$(find "$ROOT/bench/$proj/src" "$ROOT/bench/$proj/Cargo.toml" "$ROOT/bench/$proj/Cargo.lock" -newer "$bin" 2>/dev/null | head -1 || true)"
  if [[ -x "$bin" && -z "$newest" ]]; then return; fi
  log "building bench/$proj into bench/.tools/target"
  mkdir -p "$ROOT/bench/.tools"
  CARGO_TARGET_DIR="$ROOT/bench/.tools/target" timeout 1800 \
    cargo build --release --locked --quiet --manifest-path "$ROOT/bench/$proj/Cargo.toml"
}

# pick_rtw_bin -> BIN = RTW_BIN, or release/realtime-web under $CARGO_TARGET_DIR (or target/).
# realtime-web reads RTW_<SECTION>__<KEY> variables as configuration; RTW_BIN is not one, but it
# is kept out of the servers' environment anyway.
pick_rtw_bin() {
  BIN="${RTW_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/realtime-web}"
  export -n RTW_BIN 2>/dev/null || true
}

# ensure_release_bin PATH: builds realtime-web (release) when PATH is missing; dies if it is
# still missing then.
ensure_release_bin() {
  if [[ ! -x "$1" ]]; then
    log "building realtime-web (release)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin realtime-web) || true
  fi
  [[ -x "$1" ]] || die "no realtime-web binary at $1${2:+ ($2)}"
}

# ensure_loader -> LOADER=oha (installed from crates.io into bench/.tools/bin once; OHA is its
# path) or, when that does not build, LOADER=wrk (apt).
LOADER=""
ensure_loader() {
  local tools="$ROOT/bench/.tools"
  OHA="$tools/bin/oha"
  if [[ -x "$OHA" ]]; then LOADER=oha; return; fi
  log "installing oha from crates.io into bench/.tools (once)"
  mkdir -p "$tools"
  if CARGO_TARGET_DIR="$tools/target-oha" timeout 3600 \
       cargo install --locked oha --root "$tools" > "$tools/oha-install.log" 2>&1 && [[ -x "$OHA" ]]; then
    LOADER=oha; return
  fi
  log "oha did not build (see bench/.tools/oha-install.log); using wrk from apt"
  command -v wrk >/dev/null || apt_install wrk
  command -v wrk >/dev/null || die "neither oha nor wrk is available"
  LOADER=wrk
}

# --- numbers -----------------------------------------------------------------------------------
# kv LINE KEY -> value of KEY=... in a RESULT line
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# median: of the numbers on stdin, one a line ("-" when there are none; the mean of the middle
# two for an even count).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# counter_delta "received=.. sent=.. dropped=.." (before) (after) -> broker_received=.. ...
counter_delta() {
  local k b a out=""
  for k in received sent dropped; do
    b="$(sed -n "s/.*$k=\([^ ]*\).*/\1/p" <<<"$1")"; a="$(sed -n "s/.*$k=\([^ ]*\).*/\1/p" <<<"$2")"
    if [[ "$a" =~ ^[0-9]+$ && "$b" =~ ^[0-9]+$ ]]; then out+="broker_$k=$(( a - b )) "; else out+="broker_$k=- "; fi
  done
  echo "${out% }"
}
