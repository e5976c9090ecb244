#!/usr/bin/env bash
# Tour of the HTTP bridge with curl: publish, read state, stream, and call a service.
# Usage: examples/curl.sh [http://127.0.0.1:8080]   (a running realtime-web; for the RPC call,
# also `cargo run --example echo` in another terminal). With auth on, set TOKEN=… first.
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

echo "# clear the state"
curl -sS "${AUTH[@]}" -X DELETE "$BASE/topics/demo/lamp" -w 'HTTP %{http_code}\n'
