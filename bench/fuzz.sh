#!/usr/bin/env bash
# Fuzzes realtime-web's input parsers with cargo-fuzz (libFuzzer), each target for a bounded time.
#
#   bench/fuzz.sh                 # every target, 60 s each
#   bench/fuzz.sh 300             # every target, 300 s each
#   bench/fuzz.sh 120 jwt config  # these targets, 120 s each
#
# Targets (fuzz/Cargo.toml; bodies in broker::fuzzing, bridge::fuzzing, src/settings.rs):
#   mqtt_decode     the edge's packet decoder, 3.1.1 and 5, and peek_hello
#   mqtt_translate  3.1.1 <-> 5: decode as a client sent it, encode for the core and for clients
#   http_topic      /topics/{path} -> topic, ?qos=, the /events and /poll query parser
#   jwt             bearer-token verification with an HS256 secret (and signed fuzzed claims)
#   config          the config file loader (defaults + TOML) and what the binary derives from it
#
# Seeds are fuzz/corpus/<target>/ (read only here). New interesting inputs go to
# bench/.tools/fuzz/corpus/<target>/, crashes to bench/.tools/fuzz/artifacts/<target>/. To keep a
# crash fixed: fix it, copy the input into fuzz/corpus/<target>/ (tests/fuzz_corpus.rs replays
# every file there in the ordinary test run).
#
# Bounds: -max_total_time per target plus an outer `timeout`, 2 GB RSS limit, 10 s per input.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS="${1:-60}"
shift || true
ALL=(mqtt_decode mqtt_translate http_topic jwt config)
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")

TOOLS="$PWD/bench/.tools"
WORK="$TOOLS/fuzz"
mkdir -p "$WORK"

# cargo-fuzz from crates.io, into bench/.tools (not on the PATH of the machine).
if [[ ! -x "$TOOLS/bin/cargo-fuzz" ]]; then
  echo "installing cargo-fuzz into $TOOLS"
  cargo install --locked cargo-fuzz --root "$TOOLS"
fi

# Only a stable toolchain is available here, and no other can be installed. cargo-fuzz builds with
# nightly-only flags (-Zsanitizer=address, sanitizer-coverage options). RUSTC_BOOTSTRAP=1 tells a
# stable rustc to accept unstable flags (it is how the compiler builds its own standard library);
# the instrumented binaries are for fuzzing only and are never shipped.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$WORK/target"
FUZZ=("$TOOLS/bin/cargo-fuzz" fuzz)

echo "building ${#TARGETS[@]} target(s)"
for t in "${TARGETS[@]}"; do
  "${FUZZ[@]}" build --fuzz-dir fuzz "$t" >"$WORK/build-$t.log" 2>&1 || {
    tail -40 "$WORK/build-$t.log"
    echo "build of $t failed (log: $WORK/build-$t.log)"
    exit 1
  }
done

BIN="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"
failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t"
  echo "=== $t: ${SECS}s"
  set +e
  # The binary cargo-fuzz built, run directly (`cargo fuzz run` would rebuild first if a source
  # changed since, outside this time bound).
  timeout --kill-after=10 $((SECS + 60)) \
    "$BIN/$t" "$WORK/corpus/$t" "fuzz/corpus/$t" \
      -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -max_len=8192 \
      -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 \
      >"$WORK/run-$t.log" 2>&1
  rc=$?
  set -e
  grep -E "^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$WORK/run-$t.log" || true
  if [[ $rc -ne 0 ]]; then
    failed+=("$t")
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$WORK/run-$t.log" | head -20 || true
    echo "$t: FAILED (exit $rc; log: $WORK/run-$t.log)"
  else
    echo "$t: ok ($(ls "$WORK/corpus/$t" | wc -l) corpus entries)"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "crashes in: ${failed[*]} (inputs in $WORK/artifacts/)"
  exit 1
fi
echo "all ${#TARGETS[@]} target(s) ran ${SECS}s without a crash"
