// Drives Debian's headless Chromium (playwright-core) through the dashboard of a running
// realtime-web (issue 18). Run by tests/dashboard.rs:
//
//   node tests/browser/dashboard.mjs --http PORT --mqtt PORT --client ID --filter F \
//        --retained TOPIC --value TEXT --out DIR
//
// While it runs it makes traffic of its own: HTTP publishes with curl (which the mosquitto_sub
// started by the Rust side receives over MQTT), MQTT publishes with mosquitto_pub, and RPC
// calls with curl (answered by the Rust side's responder on rpc/dash/#). Checks, in
// order: the charts drew points, and they move (more points later, a different picture); the
// clients table lists client ID with its subscription F, and its detail view opens; the topic
// tree shows TOPIC (set by curl before the page opened) with its value, reached by expanding
// its levels; deleting it from the page clears it on the server and drops it from the tree.
// Screenshots go to DIR.
//
// Prints one JSON summary line on stdout ({"ok":true,…} or {"ok":false,"error":…}) and exits
// 0 on success, 1 on failure. Progress goes to stderr.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { createRun, execFileP, launch, parseArgs, sleep } from "./lib.mjs";

const STEP_TIMEOUT = 20_000;
const { summary, step, main, until } = createRun("dashboard", "dashboard test", STEP_TIMEOUT, {
  console_errors: [],
  screenshots: [],
});

// Traffic while the page is open: one HTTP publish and one MQTT publish every 250 ms (bounded
// by the run's watchdog; stopped at the end).
function startTraffic(args) {
  let stop = false;
  let sent = 0;
  const loop = (async () => {
    for (let i = 0; !stop && i < 2000; i++) {
      await execFileP("curl", ["-sS", "-m", "5", "-o", "/dev/null", "-X", "POST", "--data-binary", `http ${i}`,
        `http://127.0.0.1:${args.http}/topics/dash/sub/http`], { timeout: 10_000 }).catch(() => {});
      await execFileP("mosquitto_pub", ["-h", "127.0.0.1", "-p", args.mqtt, "-V", "mqttv5", "-q", "1",
        "-t", "dash/sub/mqtt", "-m", `mqtt ${i}`], { timeout: 10_000 }).catch(() => {});
      await execFileP("curl", ["-sS", "-m", "5", "-o", "/dev/null", "-X", "POST", "--data-binary", `rpc ${i}`,
        `http://127.0.0.1:${args.http}/rpc/dash/echo?timeout=2`], { timeout: 10_000 }).catch(() => {});
      sent += 3;
      await sleep(250);
    }
  })();
  return { stop: async () => { stop = true; await loop; return sent; } };
}

// What the charts hold now: points per chart, the newest time, the biggest rates, and a picture.
async function chartState(page) {
  return page.evaluate(() => {
    const c = window.rtwCharts;
    const o = {};
    for (const [id, u] of Object.entries(c)) {
      const t = u.data[0];
      o[id] = {
        points: t.length,
        last_t: t.length ? t[t.length - 1] : 0,
        max: u.data.slice(1).map((s) => Math.max(0, ...s.filter((v) => v !== null))),
        picture: u.ctx.canvas.toDataURL().length + ":" + u.ctx.canvas.toDataURL().slice(-200),
      };
    }
    return o;
  });
}

async function shot(page, args, name) {
  const path = join(args.out, name);
  await page.screenshot({ path, fullPage: true });
  summary.screenshots.push(path);
}

let chromium; // { context, close } once launched
let traffic;

main(150_000, async () => {
  const args = parseArgs(process.argv.slice(2), ["http", "mqtt", "client", "filter", "retained", "value", "out"]);
  mkdirSync(args.out, { recursive: true });
  const http = `http://127.0.0.1:${args.http}`;
  step("launch chromium");
  chromium = await launch(args.chromium, { viewport: { width: 1400, height: 900 } });
  const { context } = chromium;
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => summary.page_errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") summary.console_errors.push(m.text()); });
  page.on("dialog", (d) => d.accept());
  const requests = [];
  page.on("request", (r) => requests.push({ t: Date.now(), url: r.url() }));

  step("open the dashboard");
  const r0 = await page.goto(`${http}/`, { timeout: STEP_TIMEOUT });
  if (!r0 || r0.status() !== 200) throw new Error(`GET / answered ${r0 && r0.status()}`);
  const hasUplot = await page.evaluate(() => typeof window.uPlot);
  if (hasUplot !== "function") throw new Error(`uPlot did not load from /assets (window.uPlot is ${hasUplot})`);
  traffic = startTraffic(args);

  step("charts draw points");
  await until(page, () => {
    const c = window.rtwCharts;
    return c && c.msgs && c.msgs.data[0].length >= 3 && c.msgs.data[1].some((v) => v > 0);
  }, null, async () => `the message chart has no points with traffic: ${JSON.stringify(await chartState(page))}`);
  const before = await chartState(page);
  summary.charts_before = Object.fromEntries(Object.entries(before).map(([k, v]) => [k, { points: v.points, last_t: v.last_t, max: v.max }]));

  step("charts move");
  await until(page, (t0) => window.rtwCharts.msgs.data[0].at(-1) >= t0 + 2, before.msgs.last_t,
    "no newer samples reached the charts within the step timeout");
  const after = await chartState(page);
  summary.charts_after = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, { points: v.points, last_t: v.last_t, max: v.max }]));
  for (const id of ["msgs", "conns", "http"]) {
    if (!(after[id].last_t > before[id].last_t)) throw new Error(`chart ${id}: no newer point (${before[id].last_t} → ${after[id].last_t})`);
    if (after[id].picture === before[id].picture) throw new Error(`chart ${id}: the picture did not change`);
  }
  if (!(after.msgs.max[0] > 0 && after.msgs.max[1] > 0)) throw new Error(`messages in/out never above 0: ${JSON.stringify(after.msgs.max)}`);
  if (!(after.conns.max[0] >= 1)) throw new Error(`the tcp connections chart never showed mosquitto_sub: ${JSON.stringify(after.conns.max)}`);
  if (!(after.http.max[0] > 0)) throw new Error(`the HTTP requests chart never moved: ${JSON.stringify(after.http.max)}`);
  if (!(after.rpc.max[0] > 0)) throw new Error(`the RPC calls chart never moved: ${JSON.stringify(after.rpc.max)}`);
  if (!(after.lat.max[0] > 0 && after.lat.max[1] >= after.lat.max[0])) throw new Error(`the RPC latency chart shows no p50/p99: ${JSON.stringify(after.lat.max)}`);
  await shot(page, args, "dashboard-charts.png");

  step("clients table lists the subscriber");
  const row = `#clientsTable tr[data-id="${args.client}"]`;
  await page.waitForSelector(row, { timeout: STEP_TIMEOUT }).catch(async () => {
    throw new Error(`no row for ${args.client}: ${await page.textContent("#clientsTable")}`);
  });
  const cells = await page.$$eval(`${row} td`, (tds) => tds.map((t) => t.textContent));
  summary.client_row = cells;
  if (!cells.some((c) => c.includes(args.filter))) throw new Error(`the row of ${args.client} does not show ${args.filter}: ${JSON.stringify(cells)}`);
  if (cells[1] !== "5" || cells[2] !== "tcp") throw new Error(`the row says MQTT ${cells[1]} over ${cells[2]}, want 5 over tcp`);
  await page.click(`${row} td`);
  await until(page, (id) => document.getElementById("clientDetail").textContent.includes("Client " + id), args.client,
    "clicking the row opened no detail view");
  await page.locator("#clients-card").screenshot({ path: join(args.out, "dashboard-clients.png") });
  summary.screenshots.push(join(args.out, "dashboard-clients.png"));

  step("topic tree shows the retained topic");
  const levels = args.retained.split("/");
  for (let i = 1; i < levels.length; i++) {
    const t = levels.slice(0, i).join("/");
    const sel = `#tree .tl[data-topic="${t}"] .tname`;
    await page.waitForSelector(sel, { timeout: STEP_TIMEOUT }).catch(async () => {
      throw new Error(`level ${t} is not in the tree: ${await page.textContent("#tree")}`);
    });
    await page.click(sel);
  }
  const leaf = `#tree .tl[data-topic="${args.retained}"]`;
  await page.waitForSelector(leaf, { timeout: STEP_TIMEOUT }).catch(async () => {
    throw new Error(`${args.retained} is not in the tree: ${await page.textContent("#tree")}`);
  });
  const leafText = await page.textContent(leaf);
  summary.tree_leaf = leafText;
  if (!leafText.includes(args.value)) throw new Error(`the tree shows ${JSON.stringify(leafText)} for ${args.retained}, not its value ${args.value}`);
  if (!leafText.includes("text/plain")) throw new Error(`the tree does not show the content type: ${JSON.stringify(leafText)}`);
  await page.locator("#tree-card").scrollIntoViewIfNeeded();
  await shot(page, args, "dashboard-tree.png");

  step("delete the retained topic from the tree");
  await page.click(`${leaf} button.danger`);
  await page.waitForSelector(leaf, { state: "detached", timeout: STEP_TIMEOUT }).catch(async () => {
    throw new Error(`${args.retained} stayed in the tree after Delete: ${await page.textContent("#tree")}`);
  });
  const { stdout: code } = await execFileP("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", `${http}/topics/${args.retained}`], { timeout: 10_000 });
  summary.get_after_delete = code;
  if (code !== "404") throw new Error(`GET /topics/${args.retained} answered ${code} after the delete, want 404`);
  await shot(page, args, "dashboard-after-delete.png");

  step("polling rate");
  // The dashboard's own API calls: each poll kind at most once a second (a few may land
  // together after a click, so count over a window).
  const span = (requests.at(-1).t - requests[0].t) / 1000;
  const count = (re) => requests.filter((r) => re.test(new URL(r.url).pathname)).length;
  summary.polls = { seconds: Math.round(span), stats: count(/^\/api\/stats$/), history: count(/^\/api\/history$/), clients: count(/^\/api\/clients$/) };

  if (summary.page_errors.length) throw new Error(`uncaught errors in the page: ${summary.page_errors.join("; ")}`);
}, async () => {
  if (traffic) summary.traffic_sent = await traffic.stop();
  if (chromium) await chromium.close();
});
