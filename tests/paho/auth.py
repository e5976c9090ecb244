#!/usr/bin/env python3
"""A paho-mqtt 2.1 client for tests/security.rs: connects with a user name and password (a
token, or a password-file user), over TCP or WebSocket, and reports what the broker answered,
one JSON object per line:

  {"event": "connack", "reason": N}              the CONNACK reason code (3.1.1 codes as 3.1.1)
  {"event": "suback", "codes": [N, ...]}         after --subscribe (one SUBSCRIBE, every filter)
  {"event": "puback", "reason": N}               after --publish (QoS 1; 3.1.1 gives 0)
  {"event": "msg", "topic": ..., "payload": ...} each message received until --wait elapses
  {"event": "disconnected", "reason": N}         the broker closed the connection
  {"event": "done"}

Exit 0 in every case: the test decides what is right.
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    ap.add_argument("--version", choices=["311", "5"], default="5")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--origin", help="WebSocket Origin header")
    ap.add_argument("--subscribe", action="append", default=[])
    ap.add_argument("--publish", help="topic for one QoS 1 message")
    ap.add_argument("--wait", type=float, default=0.5, help="seconds to listen at the end")
    a = ap.parse_args()

    v5 = a.version == "5"
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        transport=a.transport,
    )
    if a.transport == "websockets":
        headers = {"Origin": a.origin} if a.origin else None
        c.ws_set_options(path="/mqtt", headers=headers)
    if a.username is not None or a.password is not None:
        c.username_pw_set(a.username or "", a.password)

    connack = threading.Event()
    suback = threading.Event()
    puback = threading.Event()
    state = {"ok": False}

    # paho reports a 3.1.1 CONNACK code as the MQTT 5 reason of the same name: undo that.
    v311_codes = {0: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}

    def on_connect(client, userdata, flags, reason, properties):
        code = reason.value if v5 else v311_codes.get(reason.value, reason.value)
        emit(event="connack", reason=code)
        state["ok"] = not reason.is_failure
        connack.set()

    def on_subscribe(client, userdata, mid, reasons, properties):
        emit(event="suback", codes=[r.value for r in reasons])
        suback.set()

    def on_publish(client, userdata, mid, reason, properties):
        emit(event="puback", reason=reason.value)
        puback.set()

    def on_message(client, userdata, m):
        emit(event="msg", topic=m.topic, payload=m.payload.decode("utf-8", "replace"))

    def on_disconnect(client, userdata, flags, reason, properties):
        emit(event="disconnected", reason=reason.value)
        connack.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    c.on_message = on_message
    c.on_disconnect = on_disconnect
    try:
        c.connect("127.0.0.1", a.port, keepalive=30)
    except Exception as e:  # the WebSocket handshake refused, for one
        emit(event="error", error=str(e))
        emit(event="done")
        return
    c.loop_start()
    connack.wait(10)
    if state["ok"]:
        if a.subscribe:
            c.subscribe([(f, 1) for f in a.subscribe])
            suback.wait(10)
        if a.publish:
            c.publish(a.publish, b"from-paho", qos=1)
            puback.wait(10)
        time.sleep(a.wait)
        c.disconnect()
    c.loop_stop()
    emit(event="done")


if __name__ == "__main__":
    main()
