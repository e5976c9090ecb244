"""MQTT 5 features through a third-party client library (Eclipse Paho, paho-mqtt 2.1).

Usage: python3 features.py PORT. Exits 0 after printing "OK", non-zero with the failed check.
Run by tests/mqtt5.rs (`paho_client_sees_mqtt5_features`) against a fresh realtime-web.
Every wait is bounded.
"""

import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
WAIT = 5.0
QUIET = 1.0


class Client:
    """A paho client whose callbacks feed queues the checks read with timeouts."""

    def __init__(self, client_id, props=None, keepalive=60):
        self.connack = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.published = queue.Queue()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.c.on_connect = lambda c, u, flags, rc, p: self.connack.put((flags, rc, p))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put((mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, p: self.unsubacks.put((mid, rcs))
        self.c.on_publish = lambda c, u, mid, rc, p: self.published.put((mid, rc))
        self.c.connect("127.0.0.1", PORT, keepalive=keepalive, clean_start=True, properties=props)
        self.c.loop_start()
        _, rc, self.props = self.connack.get(timeout=WAIT)
        check(not rc.is_failure, f"{client_id}: CONNACK {rc}")

    def subscribe(self, topics, sub_id=None):
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        _, mid = self.c.subscribe(topics, properties=props)
        got_mid, rcs = self.subacks.get(timeout=WAIT)
        check(got_mid == mid, "SUBACK for another SUBSCRIBE")
        return [rc.value for rc in rcs]

    def publish(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos == 0:
            return 0
        while True:
            mid, rc = self.published.get(timeout=WAIT)
            if mid == info.mid:
                return rc.value

    def message(self):
        return self.messages.get(timeout=WAIT)

    def quiet(self):
        try:
            m = self.messages.get(timeout=QUIET)
        except queue.Empty:
            return
        fail(f"unexpected message on {m.topic}: {m.payload!r}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def fail(why):
    print(f"FAILED: {why}")
    sys.exit(1)


def check(ok, why):
    if not ok:
        fail(why)


def prop(msg, name, default=None):
    return getattr(msg.properties, name, default) if msg.properties else default


def main():
    # CONNACK: assigned client identifier and the limits the broker announces.
    anon = Client("")
    check(getattr(anon.props, "AssignedClientIdentifier", ""), "no assigned client identifier")
    check(getattr(anon.props, "ReceiveMaximum", 0) >= 1, "no receive maximum")
    check(getattr(anon.props, "TopicAliasMaximum", 0) >= 1, "no topic alias maximum")
    anon.close()

    sub = Client("paho-sub")
    pub = Client("paho-pub")

    # Overlapping subscriptions with identifiers: one message, both identifiers.
    check(sub.subscribe([("paho/+", SubscribeOptions(qos=1))], sub_id=11) == [1], "SUBACK")
    check(sub.subscribe([("paho/#", SubscribeOptions(qos=2))], sub_id=22) == [2], "SUBACK")
    check(pub.publish("paho/a", b"one", qos=2) == 0, "PUBREC for QoS 2")
    m = sub.message()
    check(m.payload == b"one" and m.qos == 2, f"overlap: {m.payload!r} QoS {m.qos}")
    ids = sorted(prop(m, "SubscriptionIdentifier", []))
    check(ids == [11, 22], f"subscription identifiers {ids}")
    sub.quiet()

    # Request/response properties and user properties, unchanged and in order.
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "paho/reply"
    p.CorrelationData = b"\x00\x01corr"
    p.UserProperty = [("k", "v1"), ("k", "v2"), ("other", "x")]
    p.ContentType = "text/plain"
    p.PayloadFormatIndicator = 1
    check(pub.publish("paho/req", "héllo".encode(), props=p) == 0, "publish with properties")
    m = sub.message()
    check(prop(m, "ResponseTopic") == "paho/reply", "response topic")
    check(prop(m, "CorrelationData") == b"\x00\x01corr", "correlation data")
    check(
        prop(m, "UserProperty") == [("k", "v1"), ("k", "v2"), ("other", "x")],
        f"user properties {prop(m, 'UserProperty')}",
    )
    check(prop(m, "ContentType") == "text/plain", "content type")
    check(prop(m, "PayloadFormatIndicator") == 1, "payload format indicator")

    # Payload format indicator 1 with bytes that are not UTF-8: PUBACK 0x99.
    p = Properties(PacketTypes.PUBLISH)
    p.PayloadFormatIndicator = 1
    rc = pub.publish("paho/bad", b"\xff\xfe", props=p)
    check(rc == 0x99, f"PUBACK for invalid UTF-8 payload: {rc:#x}")
    sub.quiet()

    # No local: own messages are not delivered, others' are.
    nl = Client("paho-nl")
    check(nl.subscribe([("paho-nl/t", SubscribeOptions(qos=1, noLocal=True))]) == [1], "SUBACK")
    nl.publish("paho-nl/t", b"mine")
    pub.publish("paho-nl/t", b"theirs")
    m = nl.message()
    check(m.payload == b"theirs", f"no local delivered {m.payload!r}")
    nl.quiet()

    # Retained messages: retain handling 2 sends none, 0 sends it with the retain flag;
    # retain as published keeps the flag on live messages.
    pub.publish("paho-r/t", b"kept", retain=True)
    r = Client("paho-r")
    check(r.subscribe([("paho-r/#", SubscribeOptions(qos=1, retainHandling=2))]) == [1], "SUBACK")
    r.quiet()
    r.subscribe([("paho-r/#", SubscribeOptions(qos=1, retainHandling=0, retainAsPublished=True))])
    m = r.message()
    check(m.payload == b"kept" and m.retain, "retained message on subscribe")
    pub.publish("paho-r/t", b"live", retain=True)
    m = r.message()
    check(m.payload == b"live" and m.retain, "retain as published")

    # Message expiry: a retained message with expiry 1 s is gone 2 s later.
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = 1
    pub.publish("paho-e/t", b"short", retain=True, props=p)
    time.sleep(2.1)
    e = Client("paho-e")
    e.subscribe([("paho-e/#", SubscribeOptions(qos=1))])
    e.quiet()

    # Topic alias from the client: set, then used with an empty topic.
    p = Properties(PacketTypes.PUBLISH)
    p.TopicAlias = 3
    pub.publish("paho/alias", b"set", props=p)
    pub.publish("", b"used", props=p)
    for want in (b"set", b"used"):
        m = sub.message()
        check(m.topic == "paho/alias" and m.payload == want, f"alias: {m.topic} {m.payload!r}")

    for c in (sub, pub, nl, r, e):
        c.close()
    print("OK")


if __name__ == "__main__":
    main()
