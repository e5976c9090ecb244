#!/usr/bin/env python3
"""A paho-mqtt 2.1 client driven by the Rust integration tests (tests/clients.rs, sessions.rs).

It prints one JSON object per line on stdout (flushed at once) so the test can follow it live:
  {"event": "connected", "reason": 0, "session_present": false, "props": {...}}
  {"event": "ready"}                               after every SUBACK of `sub`, or after CONNACK
  {"event": "msg", "topic": ..., "payload": ..., "payload_hex": ..., "qos": ..,
   "retain": .., "dup": .., "props": {...}}
  {"event": "published", "count": N}                every message of `pub` is acknowledged
  {"event": "disconnected", "reason": N}            the broker closed or dropped the connection
  {"event": "done"} / {"event": "timeout"}

Modes:
  sub   connect, subscribe to every --topic at --qos, print messages until --count arrived
        (exit 0) or --timeout passed (exit 3). A disconnect ends it with exit 4: it never
        reconnects, so a dropped connection cannot hide behind paho's reconnect.
  pub   connect, publish every --message (in order, at its --msg-qos or else --qos, with --props)
        to the first --topic, wait until all are
        acknowledged, DISCONNECT, exit 0.
  hold  connect (with the --will-* options) and wait to be killed (or --timeout).

The test decides what is right; this script only reports what the client saw.
"""

import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def props_dict(p):
    """The MQTT 5 properties of a received message (or CONNACK) as a plain dict."""
    if p is None:
        return {}
    out = {}
    for name, key in [
        ("ResponseTopic", "response_topic"),
        ("ContentType", "content_type"),
        ("PayloadFormatIndicator", "payload_format"),
        ("MessageExpiryInterval", "message_expiry"),
        ("SubscriptionIdentifier", "subscription_ids"),
        ("AssignedClientIdentifier", "assigned_client_id"),
        ("SessionExpiryInterval", "session_expiry"),
    ]:
        if hasattr(p, name):
            out[key] = getattr(p, name)
    if hasattr(p, "CorrelationData"):
        out["correlation_data_hex"] = bytes(p.CorrelationData).hex()
    if hasattr(p, "UserProperty"):
        out["user_properties"] = [list(kv) for kv in p.UserProperty]
    return out


def publish_props(spec):
    """Publish properties from the --props JSON."""
    if not spec:
        return None
    d = json.loads(spec)
    p = Properties(PacketTypes.PUBLISH)
    if "response_topic" in d:
        p.ResponseTopic = d["response_topic"]
    if "correlation_data_hex" in d:
        p.CorrelationData = bytes.fromhex(d["correlation_data_hex"])
    if "content_type" in d:
        p.ContentType = d["content_type"]
    if "payload_format" in d:
        p.PayloadFormatIndicator = d["payload_format"]
    if "message_expiry" in d:
        p.MessageExpiryInterval = d["message_expiry"]
    if "user_properties" in d:
        p.UserProperty = [tuple(kv) for kv in d["user_properties"]]
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sub", "pub", "hold"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    ap.add_argument("--path", default="/mqtt", help="WebSocket path")
    ap.add_argument("--cafile", help="enable TLS, trusting this CA")
    ap.add_argument("--version", choices=["311", "5"], default="5")
    ap.add_argument("--id", default="")
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--no-clean", action="store_true", help="clean session / clean start off")
    ap.add_argument("--expiry", type=int, help="MQTT 5 session expiry interval")
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--qos", type=int, default=0)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--message", action="append", default=[])
    ap.add_argument(
        "--msg-qos", action="append", type=int, default=[], help="QoS of each --message, in order"
    )
    ap.add_argument("--retain", action="store_true")
    ap.add_argument("--props", help="publish properties as JSON")
    ap.add_argument("--will-topic")
    ap.add_argument("--will-payload", default="")
    ap.add_argument("--will-qos", type=int, default=0)
    ap.add_argument("--will-retain", action="store_true")
    ap.add_argument("--will-delay", type=int)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()

    v5 = a.version == "5"
    kw = dict(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=a.id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        transport=a.transport,
    )
    if not v5:
        kw["clean_session"] = not a.no_clean
    c = mqtt.Client(**kw)
    if a.transport == "websockets":
        c.ws_set_options(path=a.path)
    if a.cafile:
        c.tls_set(ca_certs=a.cafile)
    if a.will_topic:
        wp = None
        if v5 and a.will_delay is not None:
            wp = Properties(PacketTypes.WILLMESSAGE)
            wp.WillDelayInterval = a.will_delay
        c.will_set(a.will_topic, a.will_payload, a.will_qos, a.will_retain, wp)

    state = {"connected": False, "gone": False, "subs": 0, "msgs": 0, "acked": set()}

    def on_connect(client, userdata, flags, reason, properties):
        emit(
            event="connected",
            reason=reason.value,
            session_present=bool(flags.session_present),
            props=props_dict(properties),
        )
        state["connected"] = not reason.is_failure

    def on_subscribe(client, userdata, mid, reasons, properties):
        state["subs"] += 1
        if state["subs"] == len(a.topic):
            emit(event="ready", granted=[r.value for r in reasons])

    def on_message(client, userdata, m):
        state["msgs"] += 1
        emit(
            event="msg",
            topic=m.topic,
            payload=m.payload.decode("utf-8", "replace"),
            payload_hex=m.payload.hex(),
            qos=m.qos,
            retain=bool(m.retain),
            dup=bool(m.dup),
            props=props_dict(getattr(m, "properties", None)),
        )

    def on_publish(client, userdata, mid, reason, properties):
        state["acked"].add(mid)

    def on_disconnect(client, userdata, flags, reason, properties):
        state["gone"] = True
        emit(event="disconnected", reason=reason.value)

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.on_publish = on_publish
    c.on_disconnect = on_disconnect

    cprops = None
    if v5 and a.expiry is not None:
        cprops = Properties(PacketTypes.CONNECT)
        cprops.SessionExpiryInterval = a.expiry
    ckw = dict(keepalive=a.keepalive, properties=cprops)
    if v5:
        ckw["clean_start"] = not a.no_clean
    deadline = time.monotonic() + a.timeout
    c.connect(a.host, a.port, **ckw)

    def pump(until):
        """Runs the network loop until `until()` or the deadline; False on timeout or loss."""
        while not until():
            if state["gone"] or time.monotonic() > deadline:
                return False
            rc = c.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS and not state["gone"]:
                state["gone"] = True
                emit(event="disconnected", reason=-rc)
        return True

    if not pump(lambda: state["connected"]):
        emit(event="timeout" if not state["gone"] else "lost")
        return 4 if state["gone"] else 3

    if a.mode == "sub":
        for t in a.topic:
            c.subscribe(t, a.qos)
        if not pump(lambda: state["msgs"] >= a.count):
            emit(event="timeout" if not state["gone"] else "lost")
            return 4 if state["gone"] else 3
        emit(event="done")
        c.disconnect()
        pump(lambda: state["gone"])
        return 0

    if a.mode == "pub":
        topic = a.topic[0]
        props = publish_props(a.props) if v5 else None
        mids = []
        for i, m in enumerate(a.message):
            qos = a.msg_qos[i] if i < len(a.msg_qos) else a.qos
            info = c.publish(topic, m.encode(), qos, a.retain, props)
            mids.append(info.mid)
        if not pump(lambda: all(m in state["acked"] for m in mids)):
            emit(event="timeout" if not state["gone"] else "lost")
            return 4 if state["gone"] else 3
        emit(event="published", count=len(mids))
        c.disconnect()
        pump(lambda: state["gone"])
        return 0

    # hold
    emit(event="ready")
    pump(lambda: False)
    return 4 if state["gone"] else 0


if __name__ == "__main__":
    sys.exit(main())
