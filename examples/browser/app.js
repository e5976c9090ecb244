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
    const c = mqtt.connect(url, options);
    client = c;
    // Events from a client replaced by a later connect() must not touch the page's state.
    const current = () => c === client;
    c.on("connect", () => {
      if (!current()) return;
      window.rtw.connected = true;
      $("state").textContent = `connected (MQTT ${version === 5 ? "5" : "3.1.1"})`;
      log("mqtt", `connected to ${url}`);
      resolve(c);
    });
    c.on("message", (topic, payload, packet) => {
      if (!current()) return;
      const text = new TextDecoder().decode(payload);
      window.rtw.mqtt.push({ topic, payload: text, version, retain: packet.retain });
      log("mqtt", `${topic}  ${text}`);
    });
    c.on("error", (e) => {
      if (!current()) return;
      window.rtw.errors.push(String(e));
      log("error", String(e));
      reject(e);
    });
    c.on("close", () => {
      if (!current()) return;
      window.rtw.connected = false;
      $("state").textContent = "disconnected";
      reject(new Error(`connection to ${url} closed`)); // no-op once connected
    });
  });
}

function connected() {
  return client && client.connected ? Promise.resolve(client) : Promise.reject(new Error("not connected: press Connect MQTT first"));
}

function subscribe(filter) {
  return connected().then((c) => new Promise((resolve, reject) =>
    c.subscribe(filter, { qos: 1 }, (err, granted) => (err ? reject(err) : resolve(granted)))));
}

function publish(topic, payload) {
  return connected().then((c) => new Promise((resolve, reject) =>
    c.publish(topic, payload, { qos: 1 }, (err) => (err ? reject(err) : resolve()))));
}

let source = null;

// Opens an EventSource on `filter`; the token travels in the cookie EventSource sends.
function listen(filter) {
  if (source) source.close();
  if (token()) document.cookie = `rtw_token=${encodeURIComponent(token())}; path=/; SameSite=Strict`;
  return new Promise((resolve, reject) => {
    const s = new EventSource(`/events?topic=${encodeURIComponent(filter)}`);
    source = s;
    s.onopen = () => { log("sse", `listening on ${filter}`); resolve(); };
    s.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      window.rtw.sse.push(m);
      log("sse", `${m.topic}  ${m.payload}`);
    };
    s.onerror = () => {
      // CLOSED: refused (bad filter, token); otherwise the browser retries by itself.
      const refused = s.readyState === EventSource.CLOSED;
      log("error", refused ? `event stream on ${filter} refused` : "event stream error (retrying)");
      if (refused) reject(new Error(`event stream on ${filter} refused`));
    };
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

// Button clicks log failures instead of leaving unhandled rejections.
const report = (e) => log("error", e && e.message ? e.message : String(e));
$("connect").onclick = () => connect(Number($("version").value)).catch(() => {}); // logged by the "error" handler
$("subscribe").onclick = () => subscribe($("filter").value).then((g) => log("mqtt", `subscribed ${JSON.stringify(g)}`), report);
$("publish").onclick = () => publish($("topic").value, $("payload").value).catch(report);
$("listen").onclick = () => listen($("sseFilter").value).catch(report);
$("call").onclick = () => call($("rpcPath").value, $("rpcBody").value).catch(report);
