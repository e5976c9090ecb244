// The Mercure checks of tests/webapps.rs (`webapps.mjs --mode mercure`), in headless Chromium
// with EventSource and fetch from a page on a second loopback origin (the hub's CORS allows it).
//
// Each check opens subscribers (EventSource, collecting {id, type, data} per name), publishes
// with fetch (form body, Bearer token), then publishes a sentinel every subscriber also follows
// (`urn:rtw:sentinel:<n>`) and waits until each has it: what a subscriber holds then is all it
// was ever going to get before the sentinel, so "did not receive" is proved without sleeping.
// Tokens come from the Rust side (--tokens JSON: pub_all, pub_narrow, pub_none, forged,
// sub_private).

const T = 15_000;

export async function mercure(ctx, srv, args, summary, step, check) {
  const tokens = JSON.parse(args.tokens);
  const hub = `http://127.0.0.1:${args.http}/.well-known/mercure`;
  const page = await ctx.newPage();
  page.on("pageerror", (e) => summary.page_errors.push(e.message));
  await page.goto(`http://127.0.0.1:${srv.address().port}/`, { timeout: T });
  await page.evaluate(({ hub, tokens }) => {
    window.pubToken = tokens.pub_all;
    window.got = {};
    window.sources = {};
    window.M = {
      // Opens a subscriber; resolves once it is open (the hub has registered it).
      listen(name, topics, { query = "", credentials = false } = {}) {
        const u = new URL(hub);
        for (const t of topics) u.searchParams.append("topic", t);
        const url = u.toString() + query;
        window.got[name] = [];
        return new Promise((resolve, reject) => {
          const es = new EventSource(url, { withCredentials: credentials });
          window.sources[name] = es;
          const push = (type) => (e) => window.got[name].push({ id: e.lastEventId, type, data: e.data });
          es.onmessage = push("message");
          for (const t of ["gap", "upd"]) es.addEventListener(t, push(t));
          es.onopen = () => resolve(true);
          es.onerror = () => { if (es.readyState === EventSource.CLOSED) reject(new Error(`EventSource ${name} failed`)); };
        });
      },
      close(name) { window.sources[name].close(); },
      // Chromium keeps at most 6 HTTP/1.1 connections per host: close a step's streams.
      closeAll() { for (const es of Object.values(window.sources)) es.close(); },
      async publish(fields, token) {
        const body = new URLSearchParams();
        for (const [k, v] of fields) body.append(k, v);
        const headers = token ? { authorization: `Bearer ${token}` } : {};
        const r = await fetch(hub, { method: "POST", body, headers });
        return { status: r.status, ct: r.headers.get("content-type"), text: await r.text() };
      },
      data(name) { return window.got[name].map((m) => m.data); },
    };
  }, { hub, tokens });
  const P = (fields, token = tokens.pub_all) => page.evaluate(({ f, t }) => window.M.publish(f, t), { f: fields, t: token });
  const listen = (name, topics, opts) => Promise.race([
    page.evaluate(({ n, t, o }) => window.M.listen(n, t, o), { n: name, t: topics, o: opts || {} }),
    new Promise((_, rej) => setTimeout(() => rej(new Error(`subscriber ${name} did not open`)), T)),
  ]);
  const closeAll = () => page.evaluate(() => window.M.closeAll());
  let sentinels = 0;
  // Publishes a sentinel and waits until every subscriber in `names` has it.
  async function settle(names) {
    const s = `urn:rtw:sentinel:${++sentinels}`;
    const r = await P([["topic", s], ["data", s]]);
    check(r.status === 200, `sentinel publish: ${JSON.stringify(r)}`);
    await page.waitForFunction(({ names, s }) => names.every((n) => window.got[n].some((m) => m.data === s)), { names, s }, { timeout: T })
      .catch(async () => { throw new Error(`sentinel ${s} did not reach ${names}: ${JSON.stringify(await page.evaluate(() => window.got))}`); });
    const got = await page.evaluate((names) => Object.fromEntries(names.map((n) => [n, window.M.data(n)])), names);
    for (const n of names) got[n] = got[n].filter((d) => !d.startsWith("urn:rtw:sentinel:"));
    return got;
  }
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

  step("mercure: selectors match and don't");
  const sentinel = "urn:rtw:sentinel:{n}";
  await listen("exact", ["https://example.com/books/1", sentinel]);
  await listen("template", ["https://example.com/books/{id}", sentinel]);
  await listen("raw", ["foo bar", sentinel]);
  await listen("all", ["*"]);
  for (const [t, d] of [
    ["https://example.com/books/1", "one"],
    ["https://example.com/books/2", "two"],
    ["https://example.com/books/2/reviews/3", "three"],
    ["foo bar", "raw"],
    ["https://example.com/authors/1", "author"],
  ]) {
    const r = await P([["topic", t], ["data", d]]);
    check(r.status === 200, `publish ${t}: ${JSON.stringify(r)}`);
  }
  let got = await settle(["exact", "template", "raw", "all"]);
  summary.selectors = got;
  check(same(got.exact, ["one"]), `exact selector got ${JSON.stringify(got.exact)}`);
  check(same(got.template, ["one", "two"]), `URI template selector got ${JSON.stringify(got.template)}`);
  check(same(got.raw, ["raw"]), `raw-string selector got ${JSON.stringify(got.raw)}`);
  check(same(got.all, ["one", "two", "three", "raw", "author"]), `* got ${JSON.stringify(got.all)}`);

  await closeAll();
  step("mercure: several topics per update, multi-line data, type, ids");
  await listen("alt", ["https://example.com/alt/{id}", sentinel]);
  await listen("canon", ["https://example.com/canon/1", sentinel]);
  const multi = "line one\nline two\n\nline four";
  const given = `urn:rtw:given:${Date.now()}`;
  const r1 = await P([["topic", "https://example.com/canon/1"], ["topic", "https://example.com/alt/1"], ["data", multi], ["id", given], ["type", "upd"]]);
  check(r1.status === 200 && /^text\/plain/.test(r1.ct) && r1.text === given, `publish with an id answered ${JSON.stringify(r1)}`);
  const r2 = await P([["topic", "https://example.com/alt/2"], ["data", "generated"]]);
  check(r2.status === 200 && /^text\/plain/.test(r2.ct) && /^urn:uuid:[0-9a-f-]{36}$/.test(r2.text), `publish without an id answered ${JSON.stringify(r2)}`);
  got = await settle(["alt", "canon"]);
  const altMsgs = await page.evaluate(() => window.got.alt.filter((m) => !m.data.startsWith("urn:rtw:sentinel:")));
  summary.alternates = altMsgs;
  check(same(got.canon, [multi]), `canonical subscriber got ${JSON.stringify(got.canon)}`);
  check(same(altMsgs, [{ id: given, type: "upd", data: multi }, { id: r2.text, type: "message", data: "generated" }]),
    `alternate-topic subscriber got ${JSON.stringify(altMsgs)}`);

  await closeAll();
  step("mercure: private updates");
  await listen("anon", ["https://example.com/private/{id}", sentinel]);
  await listen("allowed", ["https://example.com/private/{id}", sentinel], { query: `&authorization=${encodeURIComponent(tokens.sub_private)}` });
  let r = await P([["topic", "https://example.com/private/1"], ["data", "secret"], ["private", "on"]]);
  check(r.status === 200, `private publish: ${JSON.stringify(r)}`);
  r = await P([["topic", "https://example.com/private/2"], ["data", "public"]]);
  got = await settle(["anon", "allowed"]);
  summary.private = got;
  check(same(got.anon, ["public"]), `an anonymous subscriber got ${JSON.stringify(got.anon)}`);
  check(same(got.allowed, ["secret", "public"]), `a subscriber allowed by its token got ${JSON.stringify(got.allowed)}`);

  await closeAll();
  step("mercure: token in the mercureAuthorization cookie");
  await page.evaluate((t) => { document.cookie = `mercureAuthorization=${t}; path=/; SameSite=Strict`; }, tokens.sub_private);
  await listen("cookie", ["https://example.com/private/{id}", sentinel], { credentials: true });
  await listen("anon2", ["https://example.com/private/{id}", sentinel]);
  await page.evaluate(() => { document.cookie = "mercureAuthorization=; path=/; max-age=0"; });
  r = await P([["topic", "https://example.com/private/3"], ["data", "cookie secret"], ["private", "on"]]);
  got = await settle(["cookie", "anon2"]);
  summary.cookie = got;
  check(same(got.cookie, ["cookie secret"]), `the cookie subscriber got ${JSON.stringify(got.cookie)}`);
  check(same(got.anon2, []), `an anonymous subscriber got ${JSON.stringify(got.anon2)}`);

  await closeAll();
  step("mercure: lastEventID replays exactly what was missed");
  await listen("replay1", ["https://example.com/replay", sentinel]);
  const first = await P([["topic", "https://example.com/replay"], ["data", "r1"]]);
  await settle(["replay1"]);
  await page.evaluate(() => window.M.close("replay1"));
  const missed = [];
  for (const d of ["r2", "r3"]) missed.push(await P([["topic", "https://example.com/replay"], ["data", d]]));
  await P([["topic", "https://example.com/other-replay"], ["data", "not for it"]]);
  await listen("replay2", ["https://example.com/replay", sentinel], { query: `&lastEventID=${encodeURIComponent(first.text)}` });
  await P([["topic", "https://example.com/replay"], ["data", "r4"]]);
  got = await settle(["replay2"]);
  const replayIds = await page.evaluate(() => window.got.replay2.filter((m) => /^r/.test(m.data)).map((m) => m.id));
  summary.replay = { got: got.replay2, ids: replayIds };
  check(same(got.replay2, ["r2", "r3", "r4"]), `lastEventID=${first.text} replayed ${JSON.stringify(got.replay2)}`);
  check(same(replayIds.slice(0, 2), missed.map((m) => m.text)), `replayed ids ${replayIds} vs published ${missed.map((m) => m.text)}`);
  // The hub's own Last-Event-ID header on a subscription answer.
  const head = await page.evaluate(async (hub) => {
    const ac = new AbortController();
    const res = await fetch(`${hub}?topic=x`, { signal: ac.signal });
    const h = res.headers.get("last-event-id");
    ac.abort();
    return h;
  }, hub);
  summary.last_event_id_header = head;
  check(typeof head === "string" && head.length > 0 && head !== "earliest", `Last-Event-ID response header: ${head}`);

  await closeAll();
  step("mercure: 401 and 403");
  const codes = {};
  codes.none = (await P([["topic", "https://example.com/books/1"], ["data", "x"]], null)).status;
  codes.forged = (await P([["topic", "https://example.com/books/1"], ["data", "x"]], tokens.forged)).status;
  codes.no_claim = (await P([["topic", "https://example.com/books/1"], ["data", "x"]], tokens.pub_none)).status;
  codes.wrong_topic = (await P([["topic", "https://example.com/books/1"], ["data", "x"]], tokens.pub_narrow)).status;
  codes.one_topic_outside = (await P([["topic", "https://example.com/other/1"], ["topic", "https://example.com/books/1"], ["data", "x"]], tokens.pub_narrow)).status;
  codes.narrow_ok = (await P([["topic", "https://example.com/other/1"], ["data", "x"]], tokens.pub_narrow)).status;
  summary.codes = codes;
  check(same(codes, { none: 401, forged: 401, no_claim: 403, wrong_topic: 403, one_topic_outside: 403, narrow_ok: 200 }), `status codes ${JSON.stringify(codes)}`);

  await closeAll();
  step("mercure: Mercure → MQTT and /events, MQTT → Mercure");
  const ws = `ws://127.0.0.1:${args.http}/mqtt`;
  await listen("frommqtt", ["https://example.com/from-mqtt/{id}", sentinel]);
  const bridged = await page.evaluate(({ ws, hubBase }) => new Promise((resolve) => {
    const out = { mqtt: null, events: null };
    const t = setTimeout(() => resolve({ ...out, error: "timeout" }), 12000);
    const es = new EventSource(`${hubBase}/events?topic=${encodeURIComponent("mercure/#")}`);
    es.onmessage = (e) => {
      const v = JSON.parse(e.data);
      if (v.topic === "mercure/https://example.com/to-mqtt/1") out.events = v;
    };
    const c = window.mqtt.connect(ws, { protocolVersion: 5, reconnectPeriod: 0, clientId: `merc-${Date.now()}` });
    c.on("error", (e) => resolve({ error: String(e) }));
    c.on("connect", () => {
      c.subscribe("mercure/#", { qos: 1 }, async () => {
        c.on("message", (topic, payload, packet) => {
          if (topic === "mercure/https://example.com/to-mqtt/1") {
            out.mqtt = { topic, payload: payload.toString(), props: packet.properties && packet.properties.userProperties };
          }
        });
        await new Promise((r) => es.readyState === 1 ? r() : (es.onopen = r));
        out.id = (await window.M.publish([["topic", "https://example.com/to-mqtt/1"], ["data", "to mqtt"]], window.pubToken)).text;
        c.publish("mercure/https://example.com/from-mqtt/7", "from mqtt", { qos: 1 });
        const wait = () => (out.mqtt && out.events ? (clearTimeout(t), es.close(), c.end(), resolve(out)) : setTimeout(wait, 50));
        wait();
      });
    });
  }), { ws, hubBase: `http://127.0.0.1:${args.http}` });
  summary.bridged = bridged;
  check(bridged.mqtt && bridged.mqtt.payload === "to mqtt", `the Mercure update did not reach MQTT: ${JSON.stringify(bridged)}`);
  const mid = bridged.mqtt.props && bridged.mqtt.props["mercure-id"];
  check(mid === bridged.id, `the MQTT message's mercure-id ${mid} is not the update's id ${bridged.id}`);
  check(bridged.events && bridged.events.payload === "to mqtt", `the Mercure update did not reach /events: ${JSON.stringify(bridged)}`);
  got = await settle(["frommqtt"]);
  summary.from_mqtt = got.frommqtt;
  check(same(got.frommqtt, ["from mqtt"]), `the MQTT publish reached the Mercure subscriber as ${JSON.stringify(got.frommqtt)}`);
}
