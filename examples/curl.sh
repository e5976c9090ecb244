#!/usr/bin/env bash
# Tour of the HTTP bridge with curl: publish, read state, stream, and call a service.
# Usage: examples/curl.sh [http://127.0.0.1:8080]   (a running realtime-web; for the RPC call,
# also `cargo run --example echo` in another terminal; for the 1 GB upload and download,
# `cargo run --release --example files -- --dir /tmp/rtw-files`). With auth on, set TOKEN=… first.
# BIG_MB sets the size of the large transfer (default 1024 MiB; 0 skips it).
set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
AUTH=()
[ -n "${TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $TOKEN")

echo "# publish (QoS 1, answered once the broker accepted it)"
curl -sS "${AUTH[@]}" -X POST -H 'Content-Type: text/plain' --data 'hello' "$BASE/topics/demo/greeting?qos=1"; echo

echo "# set retained state, then read it back (with its ETag)"
curl -sS "${AUTH[@]}" -X PUT -H 'Content-Type: application/json' --data '{"on":true}' "$BASE/topics/demo/lamp"; echo
curl -sS "${AUTH[@]}" -i "$BASE/topics/demo/lamp"; echo

echo "# stream: retained first, then live messages (3 s)"
curl -sS "${AUTH[@]}" -N --max-time 3 "$BASE/events?topic=demo/%23" &
sleep 1
curl -sS "${AUTH[@]}" -X POST --data 'live!' "$BASE/topics/demo/live" >/dev/null
wait || true

echo "# long poll: wait up to 2 s for the next message"
curl -sS "${AUTH[@]}" "$BASE/poll?topic=demo/%23&timeout=2" -w ' (HTTP %{http_code})\n'

echo "# request/response through an MQTT service (examples/echo), 5 s timeout"
curl -sS "${AUTH[@]}" -i -X POST -H 'Content-Type: text/plain' -H 'x-echo-status: 200' --data 'ping' "$BASE/rpc/demo/echo?timeout=5"; echo

echo "# a call that waits up to 10 s for its responder to (re)start, instead of 503 at once"
curl -sS "${AUTH[@]}" -X POST -H 'RTW-Wait: 10' --data 'queued ping' "$BASE/rpc/demo/echo?timeout=15" -w ' (HTTP %{http_code})\n'

echo "# clear the state"
curl -sS "${AUTH[@]}" -X DELETE "$BASE/topics/demo/lamp" -w 'HTTP %{http_code}\n'

# Large bodies through request/response (examples/files, the chunk protocol): a 1 GB upload
# streamed to the responder in 256 KiB chunks as curl sends it, and streamed back as it is read.
BIG_MB=${BIG_MB:-1024}
if [ "$BIG_MB" -gt 0 ]; then
  BIG=$(mktemp /tmp/rtw-big.XXXXXX)
  trap 'rm -f "$BIG" "$BIG.back"' EXIT
  echo "# ${BIG_MB} MiB of random bytes up to examples/files, then down again"
  head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom >"$BIG"
  curl -sS "${AUTH[@]}" -X PUT -H 'RTW-Wait: 10' -H 'RTW-Timeout: 60' -T "$BIG" \
    "$BASE/rpc/files/big.bin" -w ' (HTTP %{http_code}, %{speed_upload} bytes/s)\n'
  curl -sS "${AUTH[@]}" -H 'RTW-Timeout: 60' -o "$BIG.back" "$BASE/rpc/files/big.bin" \
    -w 'downloaded %{size_download} bytes (HTTP %{http_code}, %{speed_download} bytes/s)\n'
  if cmp -s "$BIG" "$BIG.back"; then echo "same bytes both ways"; else echo "the copy differs" >&2; exit 1; fi
  curl -sS "${AUTH[@]}" -X DELETE "$BASE/rpc/files/big.bin"; echo
fi
