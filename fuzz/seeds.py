#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (run from anywhere; idempotent).

Real inputs of each kind: MQTT 3.1.1 and 5 packets as clients send them, request paths and
queries, tokens and claims, config files. libFuzzer mutates from these; tests/fuzz_corpus.rs
replays them (and every crash input added later) as an ordinary test.
"""
import base64, hashlib, hmac, json, os, struct, time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def pkt(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def p_u8(i, v): return bytes([i, v])
def p_u16(i, v): return bytes([i]) + struct.pack(">H", v)
def p_u32(i, v): return bytes([i]) + struct.pack(">I", v)
def p_str(i, v): return bytes([i]) + s(v)
def p_pair(k, v): return b"\x26" + s(k) + s(v)
def p_var(i, v): return bytes([i]) + varint(v)


def connect(level, cid, clean=True, keep=60, will=None, user=None, pw=None, cprops=b""):
    flags = 0x02 if clean else 0
    payload = s(cid)
    if level == 5:
        vh = s("MQTT") + bytes([5])
    else:
        vh = s("MQTT") + bytes([level])
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        if level == 5:
            payload += props(p_u32(0x18, 5), p_str(0x03, "text/plain"))
        payload += s(topic) + s(msg)
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if pw is not None:
        flags |= 0x40
        payload += s(pw)
    vh += bytes([flags]) + struct.pack(">H", keep)
    if level == 5:
        vh += props(*cprops) if isinstance(cprops, (list, tuple)) else props(cprops) if cprops else props()
    return pkt(0x10, vh + payload)


def publish(level, topic, payload, qos=0, retain=False, dup=False, pkid=1, pprops=()):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = s(topic)
    if qos:
        body += struct.pack(">H", pkid)
    if level == 5:
        body += props(*pprops)
    return pkt(first, body + payload)


def subscribe(level, pkid, filters, sprops=()):
    body = struct.pack(">H", pkid)
    if level == 5:
        body += props(*sprops)
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return pkt(0x82, body)


def unsubscribe(level, pkid, filters):
    body = struct.pack(">H", pkid)
    if level == 5:
        body += props()
    return pkt(0xA2, body + b"".join(s(f) for f in filters))


def ack(kind, pkid, level=4, reason=None):
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    body = struct.pack(">H", pkid)
    if level == 5 and reason is not None:
        body += bytes([reason]) + props()
    return pkt(first, body)


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def mqtt():
    """MQTT 3.1.1 and 5 packets as clients send them (and a few broken ones)."""
    c4 = connect(4, "sensor-1")
    c5 = connect(5, "app-7", cprops=[p_u32(0x11, 3600), p_u16(0x21, 20), p_u32(0x27, 65536), p_u16(0x22, 10)])
    return {
        "connect_v4": c4,
        "connect_v4_will_login": connect(4, "dev", clean=False, will=("dev/status", "offline", 1, True), user="alice", pw="secret"),
        "connect_v31": connect(3, "old"),
        "connect_v4_empty_id": connect(4, ""),
        "connect_v5": c5,
        "connect_v5_will": connect(5, "w", will=("a/will", "bye", 2, False), user="u", pw=b"\x00\x01"),
        "connect_v5_auth_method": connect(5, "x", cprops=[p_str(0x15, "SCRAM-SHA-1")]),
        "connect_wrong_name": pkt(0x10, s("MQIsdp") + bytes([3, 2, 0, 60]) + s("c")),
        "publish_v4_qos0": publish(4, "a/b", b"hello"),
        "publish_v4_qos1_retain": publish(4, "state/room1", b'{"t":21.5}', qos=1, retain=True, pkid=7),
        "publish_v4_qos2_dup": publish(4, "x", b"\xff\x00", qos=2, dup=True, pkid=65535),
        "publish_v5_qos0": publish(5, "a/b", b"hi"),
        "publish_v5_props": publish(5, "req/1", b"ping", qos=1, pkid=3, pprops=[
            p_u8(0x01, 1), p_u32(0x02, 60), p_str(0x03, "application/json"), p_str(0x08, "rsp/1"),
            p_str(0x09, "corr-1"), p_pair("k", "v"), p_pair("$rtw", "10abc.1")]),
        "publish_v5_alias": publish(5, "", b"aliased", pprops=[p_u16(0x23, 1)]),
        "publish_v5_alias_set": publish(5, "t/alias", b"x", qos=2, pkid=9, pprops=[p_u16(0x23, 2)]),
        "publish_v5_subid": publish(5, "s", b"", pprops=[p_var(0x0B, 268435455)]),
        "subscribe_v4": subscribe(4, 1, [("a/+/c", 1), ("#", 0), ("$SYS/#", 2)]),
        "subscribe_v4_bad_qos": subscribe(4, 2, [("a", 3)]),
        "subscribe_v5": subscribe(5, 1, [("a/#", 0x2D), ("$share/g/t/+", 1)], sprops=[p_var(0x0B, 42), p_pair("a", "b")]),
        "subscribe_v5_nolocal": subscribe(5, 5, [("chat/room", 0x06)]),
        "unsubscribe_v4": unsubscribe(4, 3, ["a/+/c", "#"]),
        "unsubscribe_v5": unsubscribe(5, 4, ["a/#"]),
        "puback_v4": ack("puback", 1),
        "puback_v5_reason": ack("puback", 2, 5, 0x10),
        "pubrec_v4": ack("pubrec", 3),
        "pubrel_v4": ack("pubrel", 3),
        "pubrel_v5_reason": ack("pubrel", 4, 5, 0x92),
        "pubcomp_v4": ack("pubcomp", 3),
        "pingreq": b"\xc0\x00",
        "disconnect_v4": b"\xe0\x00",
        "disconnect_v5_reason": b"\xe0\x01\x04",
        "disconnect_v5_props": pkt(0xE0, b"\x00" + props(p_u32(0x11, 0), p_str(0x1F, "bye"))),
        "auth_v5": pkt(0xF0, b"\x18" + props(p_str(0x15, "x"))),
        "connack_from_client": b"\x20\x02\x00\x00",
        "stream_v4": c4 + subscribe(4, 1, [("t/#", 1)]) + publish(4, "t/1", b"a", qos=1, pkid=2) + ack("puback", 2) + b"\xc0\x00" + b"\xe0\x00",
        "stream_v5": c5 + subscribe(5, 1, [("t/#", 2)]) + publish(5, "t/1", b"b", qos=2, pkid=2) + ack("pubrel", 2) + b"\xe0\x00",
        "varint_4bytes": b"\x30\xff\xff\xff\x7f",
        "varint_5bytes": b"\x30\xff\xff\xff\xff\x01",
        "truncated_connect": c5[:9],
        "long_topic": publish(4, "a/" * 200, b"x" * 300),
    }


def http():
    """/topics/{path} paths with queries, and /events and /poll queries."""
    return {
        "simple": "a/b/c",
        "qos": "sensors/room%201/temp?qos=2",
        "retain": "state/x?qos=1&retain=true&expiry=60",
        "bad_qos": "a?qos=3",
        "pct_slash": "a%2Fb",
        "pct_utf8": "caf%C3%A9/%F0%9F%98%80",
        "pct_invalid_utf8": "a/%FF%FE",
        "pct_nul": "a/%00",
        "wildcard": "a/%2B/%23",
        "dollar": "%24SYS/broker",
        "empty_levels": "//",
        "events": "?topic=a/%2B&topic=b/%23&retained=false&last_event_id=abc-12",
        "poll": "?topic=x&since=e1-5&timeout=30",
        "events_share": "?topic=%24share/g/a",
        "events_bad": "?topic=a%23b&topic=",
        "plus_space": "a+b?topic=a+b",
        "long": "x/" * 300 + "?topic=" + "+/" * 100 + "#",
        "two_qos": "a/b?qos=1&qos=2",
        "qos_empty": "a?qos=",
        "retain_bad": "a?retain=maybe",
        "expiry_zero": "a?expiry=0",
        "pct_truncated": "a/%4",
        "pct_lower": "a%2fb%2bc",
        "trailing_slash": "a/b/",
        "leading_slash": "/a",
        "events_many": "?" + "&".join(f"topic=t/{i}/%2B" for i in range(40)),
        "events_hash_mid": "?topic=a/%23/b",
        "events_lastid": "?topic=a&lastEventId=00000000-18446744073709551615",
        "poll_timeout_huge": "?topic=a&timeout=99999999999999999999",
        "form_plus": "?topic=a+b%20c&retained=0",
    }


def b64(x):
    return base64.urlsafe_b64encode(x).rstrip(b"=").decode()


def hs256(claims, secret=b"fuzz-secret", header=None):
    h = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{sig}"


def jwt():
    """Bearer tokens (signed with the targets' secret or not) and bare claims."""
    exp = 4102444800  # 2100-01-01: seeds stay valid
    good = {"sub": "alice", "exp": exp, "rtw": {"pub": ["{sub}/#"], "sub": ["a/+"], "admin": False}}
    return {
        "valid": hs256(good),
        "valid_no_rtw": hs256({"sub": "bob", "exp": exp}),
        "valid_kid": hs256(good, header={"alg": "HS256", "kid": "k1"}),
        "expired": hs256({"sub": "c", "exp": 1000}),
        "wrong_secret": hs256(good, secret=b"other"),
        "alg_none": b64(b'{"alg":"none"}') + "." + b64(json.dumps(good).encode()) + ".",
        "rs256_header": hs256(good, header={"alg": "RS256"}),
        "garbage": "not.a.token",
        "two_parts": "eyJhbGciOiJIUzI1NiJ9.e30",
        "claims_plain": json.dumps(good),
        "claims_nbf_aud": json.dumps({"sub": "d", "exp": exp, "nbf": 1, "aud": ["x"], "iss": "me"}),
        "claims_exp_huge": json.dumps({"sub": "e", "exp": 18446744073709551615}),
        "claims_exp_float": json.dumps({"sub": "f", "exp": 1e300}),
        "claims_admin": json.dumps({"exp": exp, "rtw": {"admin": True, "pub": ["#"], "sub": ["{client_id}/{username}/#"]}}),
        "claims_weird_types": json.dumps({"sub": 5, "exp": "soon", "rtw": [1, 2]}),
        "claims_exp_negative": json.dumps({"sub": "g", "exp": -1}),
        "claims_exp_max_i64": json.dumps({"sub": "h", "exp": 9223372036854775807}),
        "claims_exp_9999": json.dumps({"sub": "i", "exp": 253402300800}),
        "claims_nested_rtw": json.dumps({"exp": exp, "rtw": {"pub": ["{sub}/{sub}/#", "+"], "sub": [""], "admin": "yes"}}),
        "claims_unicode_sub": json.dumps({"sub": "\u00e9\u0000/#", "exp": exp, "rtw": {"sub": ["{sub}/x"]}}),
        "valid_hs512": hs256(good, header={"alg": "HS512"}),
        "token_spaces": " " + hs256(good) + " \n",
        "bearer_prefix": "Bearer " + hs256(good),
        "header_not_json": b64(b"not json") + ".e30.sig",
        "huge_header": b64(json.dumps({"alg": "HS256", "x": "y" * 2000}).encode()) + ".e30.AA",
    }


def config():
    """Config files."""
    return {
        "empty": "",
        "listeners": '[mqtt]\nlisten = "0.0.0.0:1883"\n[http]\nlisten = "127.0.0.1:8080"\n',
        "tls": '[mqtts]\nlisten = "0.0.0.0:8883"\ncert = "certs/server.pem"\nkey = "certs/server.key"\n',
        "limits": "[limits]\nmax_connections = 10\nmax_packet_size = 4096\nconnect_timeout_secs = 0\nmax_inflight = 0\nwrite_timeout_secs = 18446744073709551615\n",
        "auth": '[auth]\nallow_anonymous = true\njwt_secret = "s3cret"\nissuer = "me"\naudience = "you"\nleeway_secs = 5\ndeny_action = "disconnect"\n\n[[auth.rules]]\nuser = "*"\npublish = ["a/#"]\nsubscribe = ["#"]\nadmin = true\n',
        "bridge": '[bridge]\nmax_body = 100\ncors_origins = ["*"]\nws_origins = ["https://example.com"]\nhistory_size = 0\n',
        "rpc": '[rpc]\ndefault_timeout_secs = 1\n\n[[rpc.routes]]\npath = "/api/echo/{name}"\ntopic = "svc/echo/{name}"\n',
        "storage_log": '[storage]\ndir = "/tmp/rtw"\n[log]\nlevel = "debug"\nformat = "json"\n',
        "unknown_key": "[limits]\nbogus = 1\n",
        "wrong_type": '[limits]\nmax_connections = "many"\n',
        "negative": "[limits]\nmax_inflight = -1\n",
        "bad_toml": "[mqtt\nlisten = ",
        "dotted": 'mqtt.listen = "1.2.3.4:1"\nsys.interval_secs = 0\n',
        "arrays_tables": "[[mqtt]]\nlisten = 1\n",
        "core_sys": "[core]\nlisteners = 0\nsegment_size = 1024\nsegment_count = 0\n[sys]\ninterval_secs = 18446744073709551615\n",
        "rpc_methods": '[[rpc.routes]]\nmethods = ["GET", "post"]\npath = "/x/{rest...}"\ntopic = "y/{rest}"\nconvention = "topic"\nenvelope = true\n',
        "jwt_keys": '[auth]\njwt_public_keys = ["k1=/nonexistent.pem", "/dev/null"]\nusername_claim = "sub"\n',
        "password_file": '[auth]\npassword_file = "/nonexistent"\nallow_query_token = true\ncookie_name = ""\n',
        "listen_ipv6": '[mqtt]\nlisten = "[::]:1883"\n[http]\nlisten = ""\n',
        "listen_garbage": '[mqtt]\nlisten = "not an address"\n',
        "bool_as_string": '[auth]\nallow_anonymous = "true"\n',
        "inline_tables": 'limits = { max_connections = 1 }\nbridge = { max_body = 0 }\n',
        "unicode_keys": '["mqtt"]\n"listen" = "127.0.0.1:1"\n["ünknown"]\nx = 1\n',
        "deny_action_bad": '[auth]\ndeny_action = "explode"\n',
    }


# Which seeds go to which targets' corpora.
CORPORA = [
    (mqtt, ("mqtt_decode", "mqtt_translate")),
    (http, ("http_topic",)),
    (jwt, ("jwt",)),
    (config, ("config",)),
]


if __name__ == "__main__":
    for seeds, targets in CORPORA:
        for name, data in seeds().items():
            for target in targets:
                write(target, name, data)
    for t in sorted(os.listdir(ROOT)):
        print(t, len(os.listdir(os.path.join(ROOT, t))))
