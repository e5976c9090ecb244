#!/usr/bin/env python3
"""Load generators for bench/abuse.sh (issue 19's abuse loads), each bounded in time.

  bystander  PORT TOKEN SECS         an MQTT 5 client (paho) publishing QoS 1 to itself every
                                     20 ms; prints "rtt_ms median p99 max count"
  mqtt-pw    PORT USERS CONC SECS    CONC threads sending MQTT 5 CONNECTs with wrong passwords for
                                     random users of USERS (comma-separated), each from a rotating
                                     127.0.0.x source address; prints CONNACK codes seen
  http-pw    PORT USERS CONC SECS    the same with HTTP Basic on GET /topics/x; prints statuses
  bodies     PORT N SECS             N unauthenticated POSTs declaring 1 MiB and sending all but
                                     one byte, held open; prints statuses answered
  polls      PORT TOKEN CONC SECS    CONC callers looping long polls of 32 new filters each
  props      PORT TOKEN N BYTES      N QoS 1 PUBLISHes with BYTES of user properties and a 1-byte
                                     payload, one subscriber reading; prints PUBACK codes

Only for loopback servers this script started. The raw CONNECT below is a load generator's
minimum (CONNECT out, CONNACK code in), not a client.
"""

import collections
import os
import random
import socket
import statistics
import sys
import threading
import time

# The MQTT packet encoder of the fuzz seeds (fuzz/seeds.py), for the raw CONNECT (no .pyc left
# in fuzz/).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz"))
from seeds import connect  # noqa: E402


def connect5(client_id, user, password):
    return connect(5, client_id, keep=30, user=user, pw=password)


def source(i):
    return ("127.0.0.%d" % (2 + i % 250), 0)


def hammer(conc, secs, attempt):
    """CONC threads calling attempt(thread, n) (n = 1, 2, ...) until SECS have passed; returns
    how often each outcome came back (an OSError counts as its type's name)."""
    end = time.time() + secs
    codes = collections.Counter()
    lock = threading.Lock()

    def run(t):
        n = 0
        while time.time() < end:
            n += 1
            try:
                code = attempt(t, n)
            except OSError as e:
                code = type(e).__name__
            with lock:
                codes[code] += 1

    ts = [threading.Thread(target=run, args=(t,)) for t in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return dict(codes)


def mqtt_pw(port, users, conc, secs):
    users = users.split(",")

    def attempt(t, n):
        s = socket.create_connection(("127.0.0.1", port), timeout=15,
                                     source_address=source(t * 1000 + n))
        s.sendall(connect5("a%d-%d" % (t, n), random.choice(users), "wrong-%d" % n))
        ack = s.recv(5)
        s.close()
        return "0x%02x" % ack[3] if len(ack) >= 4 else "closed"

    print("connack", hammer(conc, secs, attempt))


def http_status(port, path, headers, source_address=None):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=source_address)
    c.request("GET", path, headers=headers)
    st = c.getresponse().status
    c.close()
    return st


def http_pw(port, users, conc, secs):
    import base64
    users = users.split(",")

    def attempt(t, n):
        cred = base64.b64encode(("%s:wrong-%d" % (random.choice(users), n)).encode())
        return http_status(port, "/topics/x", {"Authorization": "Basic " + cred.decode()},
                           source(t * 1000 + n))

    print("http", hammer(conc, secs, attempt))


def bodies(port, n, secs):
    socks = []
    head = ("POST /topics/abuse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
            % (1 << 20)).encode()
    chunk = b"x" * ((1 << 20) - 1)
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=source(i))
            s.sendall(head)
            s.setblocking(False)
            try:
                s.send(chunk)
            except BlockingIOError:
                pass
            socks.append(s)
        except OSError:
            pass
    time.sleep(secs)
    statuses = collections.Counter()
    for s in socks:
        s.setblocking(True)
        s.settimeout(0.2)
        try:
            line = s.recv(64).split(b"\r\n")[0].decode(errors="replace")
            statuses[line[9:12] or "closed"] += 1
        except OSError:
            statuses["no answer"] += 1
        s.close()
    print("bodies", len(socks), "opened; answered:", dict(statuses))


def polls(port, token, conc, secs):
    def attempt(t, n):
        q = "&".join("topic=abuse/%d/%d/%d" % (t, n, f) for f in range(32))
        return http_status(port, "/poll?%s&timeout=1" % q, {"Authorization": "Bearer " + token})

    print("polls", hammer(conc, secs, attempt))


def paho_client(port, token, cid):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set("bench", token)
    return c


def props(port, token, n, size):
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    got = []
    sub = paho_client(port, token, "abuse-props-sub")
    sub.on_message = lambda c, u, m: got.append(len(m.payload))
    sub.connect("127.0.0.1", port)
    sub.subscribe("abuse/props", qos=1)
    sub.loop_start()
    codes = collections.Counter()
    pub = paho_client(port, token, "abuse-props-pub")
    pub.on_publish = lambda c, u, mid, rc, p: codes.update(["0x%02x" % rc.value])
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.5)
    pr = Properties(PacketTypes.PUBLISH)
    per = 1000
    pr.UserProperty = [("k%d" % i, "v" * per) for i in range(max(1, size // (per + 8)))]
    for _ in range(n):
        pub.publish("abuse/props", b"x", qos=1, properties=pr).wait_for_publish(10)
    deadline = time.time() + 10
    while len(got) < codes.get("0x00", 0) and time.time() < deadline:
        time.sleep(0.1)
    pub.disconnect()
    sub.disconnect()
    print("props", n, "sent,", size, "bytes each; PUBACK", dict(codes), "; received", len(got))


def bystander(port, token, secs):
    done = threading.Event()
    sent = {}
    rtts = []
    c = paho_client(port, token, "abuse-bystander")

    def on_message(cl, u, m):
        t0 = sent.pop(m.payload, None)
        if t0 is not None:
            rtts.append((time.perf_counter() - t0) * 1000)

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    # paho leaves Nagle on: small publishes would wait for delayed ACKs (~20 ms floor).
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.subscribe("bystander/rtt", qos=1)
    c.loop_start()
    time.sleep(0.5)
    end = time.time() + secs
    i = 0
    while time.time() < end:
        i += 1
        key = b"%d" % i
        sent[key] = time.perf_counter()
        c.publish("bystander/rtt", key, qos=1)
        time.sleep(0.02)
    time.sleep(1)
    c.loop_stop()
    done.set()
    if not rtts:
        print("rtt_ms - - - 0")
        return
    rtts.sort()
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    print("rtt_ms %.2f %.2f %.2f %d lost=%d" % (statistics.median(rtts), p99, rtts[-1],
                                                len(rtts), len(sent)))


def main():
    a = sys.argv[1:]
    cmd = a[0]
    if cmd == "bystander":
        bystander(int(a[1]), a[2], float(a[3]))
    elif cmd == "mqtt-pw":
        mqtt_pw(int(a[1]), a[2], int(a[3]), float(a[4]))
    elif cmd == "http-pw":
        http_pw(int(a[1]), a[2], int(a[3]), float(a[4]))
    elif cmd == "bodies":
        bodies(int(a[1]), int(a[2]), float(a[3]))
    elif cmd == "polls":
        polls(int(a[1]), a[2], int(a[3]), float(a[4]))
    elif cmd == "props":
        props(int(a[1]), a[2], int(a[3]), int(a[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
