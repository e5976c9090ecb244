// Web apps on their own origin, in Debian's headless Chromium (playwright-core). Run by
// tests/webapps.rs:
//
//   node tests/browser/webapps.mjs --mode MODE --http PORT [--token JWT] [--tokens JSON]
//
// The script serves a bare page (and MQTT.js) from its own HTTP server on a second loopback
// port, and Chromium maps `evil.test` to 127.0.0.1 (--host-resolver-rules), so the same page can
// be loaded from a loopback origin and from a foreign one. Modes:
//
// * `origins` (realtime-web in loopback-only mode): from http://127.0.0.1:P2 MQTT.js does a
//   QoS 1 round trip over ws://127.0.0.1:PORT/mqtt; from http://evil.test:P2 the upgrade is
//   refused (the page sees the WebSocket fail, never a CONNACK).
// * `origins-auth` (JWT authentication on): from http://evil.test:P2 MQTT.js connects with
//   --token as password and does a QoS 1 round trip.
// * `mercure`: the Mercure checks (see mercure() below), with EventSource and fetch from
//   http://127.0.0.1:P2, against the hub at http://127.0.0.1:PORT/.well-known/mercure.
//
// Prints one JSON summary line on stdout ({"ok":true,…} or {"ok":false,"error":…}); exit 0/1.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

import { createRun, launch, parseArgs } from "./lib.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const STEP_TIMEOUT = 15_000;

let args = {}; // parsed first thing in the run
const { summary, step, main } = createRun("webapps", "webapps", STEP_TIMEOUT);
function check(cond, what) {
  if (!cond) throw new Error(what);
}

// The second origin: a page and MQTT.js.
const mqttJs = readFileSync(join(here, "../../examples/browser/node_modules/mqtt/dist/mqtt.min.js"));
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>web app</title>
<script src="/mqtt.min.js"></script></head><body><p id="p">web app</p></body></html>`;
function serve() {
  return new Promise((resolve) => {
    const srv = createServer((req, res) => {
      if (req.url === "/mqtt.min.js") {
        res.writeHead(200, { "content-type": "text/javascript" });
        res.end(mqttJs);
      } else {
        res.writeHead(200, { "content-type": "text/html" });
        res.end(PAGE);
      }
    });
    srv.listen(0, "127.0.0.1", () => resolve(srv));
  });
}

// In the page: connect, subscribe QoS 1, publish QoS 1, wait for the message. Resolves with
// {ok:true,…} or {ok:false,error} (a refused upgrade is an error event, never a CONNACK).
async function mqttRoundTrip(page, url, opts, topic) {
  return page.evaluate(
    ({ url, opts, topic }) =>
      new Promise((resolve) => {
        const c = window.mqtt.connect(url, { ...opts, reconnectPeriod: 0, connectTimeout: 8000 });
        const payload = `qos1 ${Math.random()}`;
        const t = setTimeout(() => { c.end(true); resolve({ ok: false, error: "timeout" }); }, 12000);
        c.on("error", (e) => { clearTimeout(t); c.end(true); resolve({ ok: false, error: String(e && e.message || e) }); });
        c.on("close", () => { clearTimeout(t); resolve({ ok: false, error: "closed before the round trip" }); });
        c.on("connect", () => {
          c.subscribe(topic, { qos: 1 }, (err, granted) => {
            if (err) { resolve({ ok: false, error: `subscribe: ${err}` }); return; }
            c.on("message", (tp, msg, packet) => {
              if (tp === topic && msg.toString() === payload) {
                clearTimeout(t);
                c.removeAllListeners("close");
                c.end();
                resolve({ ok: true, qos: packet.qos, granted: granted[0].qos, origin: location.origin });
              }
            });
            c.publish(topic, payload, { qos: 1 }, (e) => { if (e) resolve({ ok: false, error: `publish: ${e}` }); });
          });
        });
      }),
    { url, opts, topic },
  );
}

async function origins(ctx, srv, withAuth) {
  const port = srv.address().port;
  const ws = `ws://127.0.0.1:${args.http}/mqtt`;
  const page = await ctx.newPage();
  page.on("pageerror", (e) => summary.page_errors.push(e.message));
  if (!withAuth) {
    step("loopback origin: QoS 1 round trip");
    await page.goto(`http://127.0.0.1:${port}/`, { timeout: STEP_TIMEOUT });
    const rt = await mqttRoundTrip(page, ws, { protocolVersion: 4, clientId: `wa-${Date.now()}` }, "webapps/loopback");
    summary.loopback = rt;
    check(rt.ok && rt.qos === 1 && rt.granted === 1, `loopback origin round trip: ${JSON.stringify(rt)}`);

    step("foreign origin: refused");
    await page.goto(`http://evil.test:${port}/`, { timeout: STEP_TIMEOUT });
    const refused = await mqttRoundTrip(page, ws, { protocolVersion: 4, clientId: `wa-evil-${Date.now()}` }, "webapps/evil");
    summary.foreign = { ...refused, origin: await page.evaluate(() => location.origin) };
    check(!refused.ok, `the foreign origin was not refused: ${JSON.stringify(refused)}`);
  } else {
    step("foreign origin with a token: QoS 1 round trip");
    await page.goto(`http://evil.test:${port}/`, { timeout: STEP_TIMEOUT });
    const rt = await mqttRoundTrip(
      page,
      ws,
      { protocolVersion: 5, clientId: `wa-auth-${Date.now()}`, username: "webapp", password: args.token },
      "webapps/auth",
    );
    summary.foreign_auth = rt;
    check(rt.ok && rt.qos === 1 && rt.origin === `http://evil.test:${port}`, `foreign origin with a token: ${JSON.stringify(rt)}`);
  }
}

let chromium; // { context, close } once launched
let srv;

main(170_000, async () => {
  args = parseArgs(process.argv.slice(2), ["mode", "http"]);
  summary.mode = args.mode;
  srv = await serve();
  step("launch chromium");
  chromium = await launch(args.chromium, { flags: ["--host-resolver-rules=MAP evil.test 127.0.0.1"] });
  const ctx = chromium.context;
  if (args.mode === "origins") await origins(ctx, srv, false);
  else if (args.mode === "origins-auth") await origins(ctx, srv, true);
  else if (args.mode === "mercure") await (await import("./mercure.mjs")).mercure(ctx, srv, args, summary, step, check);
  else throw new Error(`unknown --mode ${args.mode}`);
}, async () => {
  if (chromium) await chromium.close();
  if (srv) srv.close();
});
