// Drives Debian's headless Chromium (playwright-core, no bundled browser) through the browser
// example and the dashboard that a running realtime-web serves. Run by tests/browser.rs:
//
//   node tests/browser/run.mjs --http PORT --https PORT --spki BASE64 --screenshot FILE
//
// Checks, in order: the dashboard at `/` shows figures (read before any traffic); the example
// page loads from the binary with MQTT.js; MQTT.js round trips (subscribe, publish, receive)
// with MQTT 3.1.1 and 5 over ws; an SSE message published by curl reaches the page; an RPC call
// through the echo example answers 200 'ping'; the same MQTT round trips over wss from the
// https page, the development certificate trusted only through
// --ignore-certificate-errors-spki-list; the dashboard's counters have moved; a screenshot of
// the dashboard is saved.
//
// Prints one JSON summary line on stdout ({"ok":true,…} or {"ok":false,"error":…}) and exits
// 0 on success, 1 on failure. Progress goes to stderr.

import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";

import { createRun, execFileP, launch, parseArgs, withTimeout } from "./lib.mjs";

const STEP_TIMEOUT = 15_000;
const { summary, step, main, until } = createRun("browser", "browser test", STEP_TIMEOUT, { console_errors: [] });

// Dashboard figures are formatted ("1.2k"); turn them back into numbers.
function num(text) {
  const m = /^([0-9.]+)([kMG]?)$/.exec(String(text).trim());
  if (!m) return NaN;
  return Number(m[1]) * { "": 1, k: 1e3, M: 1e6, G: 1e9 }[m[2]];
}

const DASH_IDS = ["c_total", "c_ws", "c_wss", "m_in", "m_out", "b_in", "b_out", "subs", "streams", "rpc_req"];

async function readDashboard(page) {
  return page.evaluate((ids) => {
    const o = {};
    for (const id of ids) o[id] = document.getElementById(id).textContent;
    o.ready = document.getElementById("ready").textContent;
    return o;
  }, DASH_IDS);
}

function watchPage(page, label) {
  page.on("pageerror", (e) => summary.page_errors.push(`${label}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") summary.console_errors.push(`${label}: ${m.text()}`);
  });
}

// One MQTT.js round trip on the example page: connect with `version`, subscribe, publish,
// and wait for the message to come back.
async function roundTrip(page, version, topic) {
  const payload = `hello over MQTT ${version === 5 ? "5" : "3.1.1"} ${Math.random().toString(16).slice(2)}`;
  const proto = await withTimeout(
    page.evaluate(
      async ({ version, topic, payload }) => {
        const c = await window.rtw.connect(version);
        await window.rtw.subscribe(topic);
        await window.rtw.publish(topic, payload);
        return { version: c.options.protocolVersion, url: `${c.options.protocol}://${c.options.host}:${c.options.port}` };
      },
      { version, topic, payload },
    ),
    STEP_TIMEOUT,
    `connect/subscribe/publish (MQTT ${version})`,
  );
  await until(
    page,
    ({ topic, payload }) => window.rtw.mqtt.some((m) => m.topic === topic && m.payload === payload),
    { topic, payload },
    `MQTT ${version}: the published message did not come back on ${topic}`,
  );
  if (proto.version !== version) throw new Error(`MQTT.js connected with protocol ${proto.version}, want ${version}`);
  return { version, topic, payload, url: proto.url };
}

async function stats(page) {
  return page.evaluate(async () => (await fetch("/api/stats")).json());
}

// The MQTT 3.1.1 and 5 round trips of `page` over `scheme` (ws or wss), a step each; MQTT.js
// must have used that scheme and /api/stats must count such a connection.
async function roundTrips(page, scheme) {
  const out = [];
  for (const [version, name] of [[4, "3.1.1"], [5, "5"]]) {
    step(`MQTT ${name} over ${scheme}`);
    const rt = await roundTrip(page, version, `browser/rt/${scheme}/${version === 4 ? "v311" : "v5"}`);
    if (!rt.url.startsWith(`${scheme}://`)) throw new Error(`MQTT.js used ${rt.url}, want ${scheme}://`);
    out.push(rt);
  }
  const st = await stats(page);
  if (st.connections[scheme] < 1) throw new Error(`/api/stats shows no ${scheme} connection: ${JSON.stringify(st.connections)}`);
  return out;
}

let chromium; // { context, close } once launched

main(150_000, async () => {
  const args = parseArgs(process.argv.slice(2), ["http", "https", "spki", "screenshot"]);
  const http = `http://127.0.0.1:${args.http}`;
  const https = `https://127.0.0.1:${args.https}`;
  step("launch chromium");
  chromium = await launch(args.chromium, {
    flags: [`--ignore-certificate-errors-spki-list=${args.spki}`],
    viewport: { width: 1280, height: 800 },
  });
  const { context } = chromium;
  summary.chromium = context.browser() ? context.browser().version() : "(persistent context)";

  step("dashboard before traffic");
  const dash = context.pages()[0] || (await context.newPage());
  watchPage(dash, "dashboard");
  const r0 = await dash.goto(`${http}/`, { timeout: STEP_TIMEOUT });
  if (!r0 || r0.status() !== 200) throw new Error(`GET / answered ${r0 && r0.status()}`);
  await until(
    dash,
    () => document.getElementById("ready").textContent === "ready" && document.getElementById("m_in").textContent !== "–",
    null,
    async () => `the dashboard never showed "ready" with figures: ${JSON.stringify(await readDashboard(dash))}`,
  );
  const before = await readDashboard(dash);
  summary.dashboard_before = before;

  step("example page over http");
  const page = await context.newPage();
  watchPage(page, "example(http)");
  const r1 = await page.goto(`${http}/examples/browser/index.html`, { timeout: STEP_TIMEOUT });
  if (!r1 || r1.status() !== 200) throw new Error(`GET /examples/browser/index.html answered ${r1 && r1.status()}`);
  const loaded = await page.evaluate(() => ({ mqtt: typeof window.mqtt, rtw: typeof window.rtw, connect: typeof (window.rtw && window.rtw.connect) }));
  if (loaded.mqtt !== "object" || loaded.connect !== "function") {
    throw new Error(`MQTT.js or app.js did not load (window.mqtt: ${loaded.mqtt}, rtw.connect: ${loaded.connect}); is examples/browser/node_modules installed (npm ci)?`);
  }

  step("example page buttons");
  // As a person would: Subscribe before connecting is reported, then Connect (MQTT 5),
  // Subscribe and Publish with the page's default values.
  await page.click("#subscribe");
  await until(page, () => /not connected/.test(document.getElementById("log").textContent), null,
    "Subscribe before Connect logged no error");
  await page.selectOption("#version", "5");
  await page.click("#connect");
  await until(page, () => document.getElementById("state").textContent === "connected (MQTT 5)", null,
    async () => `Connect MQTT: state is ${JSON.stringify(await page.textContent("#state"))}`);
  await page.click("#subscribe");
  await until(page, () => /subscribed/.test(document.getElementById("log").textContent), null,
    "the Subscribe button did not subscribe");
  await page.click("#publish");
  await until(page, () => window.rtw.mqtt.some((m) => m.topic === "browser/hello" && m.payload === "hi from MQTT.js"), null,
    "the Publish button's message did not come back");

  summary.ws = await roundTrips(page, "ws");

  step("SSE message published by curl");
  await withTimeout(page.evaluate(() => window.rtw.listen("browser/#")), STEP_TIMEOUT, "EventSource open");
  const ssePayload = `from curl ${Date.now()}`;
  const { stdout: curlOut } = await execFileP(
    "curl",
    ["-sS", "--fail-with-body", "-m", "10", "-X", "POST", "-H", "Content-Type: text/plain", "--data-binary", ssePayload, `${http}/topics/browser/x`],
    { timeout: 15_000 },
  ).catch((e) => {
    throw new Error(`curl -X POST ${http}/topics/browser/x failed: ${e.message} ${e.stdout || ""}`);
  });
  await until(
    page,
    (p) => window.rtw.sse.some((m) => m.topic === "browser/x" && m.payload === p),
    ssePayload,
    async () => `the curl message did not reach window.rtw.sse (curl said ${curlOut.trim()}; sse: ${JSON.stringify(await page.evaluate(() => window.rtw.sse))})`,
  );
  summary.sse = { topic: "browser/x", payload: ssePayload, curl: curlOut.trim() };

  step("RPC through the echo example");
  const rpc = await withTimeout(page.evaluate(() => window.rtw.call("demo/echo", "ping")), STEP_TIMEOUT, "rtw.call");
  if (rpc.status !== 200 || rpc.body !== "ping") throw new Error(`rtw.call('demo/echo','ping') gave ${rpc.status} ${JSON.stringify(rpc.body)}, want 200 "ping"`);
  summary.rpc = rpc;

  step("example page over https");
  const secure = await context.newPage();
  watchPage(secure, "example(https)");
  const r2 = await secure.goto(`${https}/examples/browser/index.html`, { timeout: STEP_TIMEOUT }).catch((e) => {
    throw new Error(`loading the https page failed (is the SPKI hash ${args.spki} the server certificate's?): ${e.message}`);
  });
  if (!r2 || r2.status() !== 200) throw new Error(`GET https …/examples/browser/index.html answered ${r2 && r2.status()}`);
  const proto = await secure.evaluate(() => location.protocol);
  if (proto !== "https:") throw new Error(`the page is on ${proto}, want https:`);

  summary.wss = await roundTrips(secure, "wss");

  step("publish a burst for the dashboard");
  const burst = 10;
  await withTimeout(
    secure.evaluate(async (n) => {
      for (let i = 0; i < n; i++) await window.rtw.publish("browser/burst", `m${i}`);
    }, burst),
    STEP_TIMEOUT,
    "burst publish",
  );
  const minIn = num(before.m_in) + 4 + burst; // four round trips and the burst, at least

  step("dashboard topic tester");
  await dash.bringToFront();
  await dash.click("#subBtn");
  await until(dash, () => document.getElementById("subState").textContent === "subscribed to dashboard/#", null,
    async () => `dashboard Subscribe: ${JSON.stringify(await dash.textContent("#subState"))}`);
  await dash.click("#pubBtn");
  await until(dash, () => {
    const t = document.getElementById("log").textContent;
    return /publish dashboard\/test → 200/.test(t) && /dashboard\/test {2}hello/.test(t);
  }, null,
    async () => `dashboard Publish did not come back on its stream: ${JSON.stringify(await dash.textContent("#log"))}`);

  step("dashboard after traffic");
  await until(
    dash,
    ({ minIn }) => {
      const t = document.getElementById("m_in").textContent.trim();
      const m = /^([0-9.]+)([kMG]?)$/.exec(t);
      return m && Number(m[1]) * { "": 1, k: 1e3, M: 1e6, G: 1e9 }[m[2]] >= minIn;
    },
    { minIn },
    async () => `the dashboard's "in (total)" did not reach ${minIn}: before ${JSON.stringify(before)}, now ${JSON.stringify(await readDashboard(dash))}`,
  );
  const after = await readDashboard(dash);
  summary.dashboard_after = after;
  for (const id of ["m_in", "m_out", "b_in", "b_out"]) {
    if (!(num(after[id]) > num(before[id]))) throw new Error(`dashboard #${id} did not grow: ${before[id]} → ${after[id]}`);
  }
  if (!(num(after.c_total) >= 1 && num(after.c_wss) >= 1)) {
    throw new Error(`dashboard connections do not show the wss client: ${JSON.stringify(after)}`);
  }
  const readyColor = await dash.evaluate(() => getComputedStyle(document.getElementById("ready")).color);
  if (readyColor !== "rgb(62, 207, 142)") throw new Error(`the dashboard's "ready" is ${readyColor}, not green`);
  if (num(after.rpc_req) < num(before.rpc_req) + 1) throw new Error(`dashboard RPC requests did not grow: ${before.rpc_req} → ${after.rpc_req}`);

  step("screenshots");
  mkdirSync(dirname(args.screenshot), { recursive: true });
  await dash.screenshot({ path: args.screenshot, fullPage: true });
  summary.screenshot = args.screenshot;
  const exampleShot = join(dirname(args.screenshot), "example.png");
  await secure.bringToFront();
  await secure.screenshot({ path: exampleShot, fullPage: true });
  summary.example_screenshot = exampleShot;

  if (summary.page_errors.length) throw new Error(`uncaught errors in the pages: ${summary.page_errors.join("; ")}`);
}, async () => {
  if (chromium) await chromium.close();
});
