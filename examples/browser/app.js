// The browser example: MQTT.js, EventSource and fetch against the server that served the page.
// Every result is logged to #log and kept in `window.rtw` so tests can read it.
"use strict";
const $ = (id) => document.getElementById(id);
window.rtw = { mqtt: [], sse: [], rpc: [], errors: [], connected: false };

function log(kind, text) {
  const line = document.createElement("div");
  line.textContent = `[${kind}] ${text}`;
  line.dataset.kind = kind;
  $("log").prepend(line);
}

function token() {
  return $("token").value.trim();
}

let client = null;

// Connects with MQTT.js; `version` 4 (3.1.1) or 5. Resolves once connected.
function connect(version) {
  if (client) client.end(true);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/mqtt`;
  const options = { protocolVersion: version, clientId: `browser-${Math.random().toString(16).slice(2, 10)}`, reconnectPeriod: 0 };
  if (token()) { options.username = "browser"; options.password = token(); }
  return new Promise((resolve, reject) => {
    client = mqtt.connect(url, options);
    client.on("connect", () => {
      window.rtw.connected = true;
      $("state").textContent = `connected (MQTT ${version === 5 ? "5" : "3.1.1"})`;
      log("mqtt", `connected to ${url}`);
      resolve(client);
    });
    client.on("message", (topic, payload, packet) => {
      const text = new TextDecoder().decode(payload);
      window.rtw.mqtt.push({ topic, payload: text, version, retain: packet.retain });
      log("mqtt", `${topic}  ${text}`);
    });
    client.on("error", (e) => { window.rtw.errors.push(String(e)); log("error", String(e)); reject(e); });
    client.on("close", () => { window.rtw.connected = false; $("state").textContent = "disconnected"; });
  });
}

function subscribe(filter) {
  return new Promise((resolve, reject) =>
    client.subscribe(filter, { qos: 1 }, (err, granted) => (err ? reject(err) : resolve(granted))));
}

function publish(topic, payload) {
  return new Promise((resolve, reject) =>
    client.publish(topic, payload, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
}

let source = null;

// Opens an EventSource on `filter`; the token travels in the cookie EventSource sends.
function listen(filter) {
  if (source) source.close();
  if (token()) document.cookie = `rtw_token=${encodeURIComponent(token())}; path=/; SameSite=Strict`;
  return new Promise((resolve) => {
    source = new EventSource(`/events?topic=${encodeURIComponent(filter)}`);
    source.onopen = () => { log("sse", `listening on ${filter}`); resolve(); };
    source.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      window.rtw.sse.push(m);
      log("sse", `${m.topic}  ${m.payload}`);
    };
    source.onerror = () => log("error", "event stream error");
  });
}

// Calls a service behind MQTT through the bridge.
async function call(path, body) {
  const headers = { "Content-Type": "text/plain" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const r = await fetch(`/rpc/${path}?timeout=5`, { method: "POST", headers, body });
  const text = await r.text();
  window.rtw.rpc.push({ status: r.status, body: text });
  log("rpc", `${r.status} ${text}`);
  return { status: r.status, body: text };
}

window.rtw.connect = connect;
window.rtw.subscribe = subscribe;
window.rtw.publish = publish;
window.rtw.listen = listen;
window.rtw.call = call;

$("connect").onclick = () => connect(Number($("version").value)).catch(() => {});
$("subscribe").onclick = () => subscribe($("filter").value);
$("publish").onclick = () => publish($("topic").value, $("payload").value);
$("listen").onclick = () => listen($("sseFilter").value);
$("call").onclick = () => call($("rpcPath").value, $("rpcBody").value);
