// Shared by the headless-Chromium scripts of tests/browser (run.mjs, dashboard.mjs,
// webapps.mjs): their `--key value` arguments, the JSON summary with its steps (printed as the
// one line on stdout, exit 0 or 1), the whole-run watchdog, launching Debian's Chromium
// (playwright-core, no bundled browser) with a fresh profile, and waiting in a page with an
// error message that says what was seen instead.

import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

// `--key value` pairs into an object (chromium: /usr/bin/chromium unless given); throws on a
// malformed argument or a missing one of `required`.
export function parseArgs(argv, required) {
  const out = { chromium: "/usr/bin/chromium" };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (!k.startsWith("--") || v === undefined) throw new Error(`bad argument ${k}`);
    out[k.slice(2)] = v;
  }
  for (const k of required) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  return out;
}

export const execFileP = promisify(execFile);

// The run's summary and its steps. `tag` prefixes the progress lines on stderr ("[tag] step"),
// `what` names the run in the failure line ("WHAT FAILED at step …"). `summary` starts as
// { ok: false, ...fields, steps, page_errors }. `until(page, fn, arg, why)` is waitFor with
// `stepTimeout`.
export function createRun(tag, what, stepTimeout, fields = {}) {
  const summary = { ok: false, ...fields, steps: [], page_errors: [] };
  let current = "start";
  const done = (code) => {
    process.stdout.write(JSON.stringify(summary) + "\n");
    process.exit(code);
  };
  const fail = (e) => {
    summary.ok = false;
    summary.failed_step = current;
    summary.error = `${current}: ${e && e.message ? e.message : String(e)}`;
    process.stderr.write(`${what} FAILED at step "${current}": ${summary.error}\n`);
    done(1);
  };
  const step = (name) => {
    current = name;
    summary.steps.push(name);
    process.stderr.write(`[${tag}] ${name}\n`);
  };
  // Runs `body` (async), then `cleanup` (async, also after a failure), and exits: 0 with
  // summary.ok when body returned, 1 with the error otherwise. Bounded by `watchdog` ms.
  const main = (watchdog, body, cleanup) => {
    setTimeout(() => fail(new Error(`the whole run took over ${watchdog} ms`)), watchdog).unref();
    (async () => {
      try {
        await body();
        summary.ok = true;
        current = "done";
      } catch (e) {
        await cleanup();
        fail(e);
        return;
      }
      await cleanup();
      done(0);
    })().catch(fail);
  };
  const until = (page, fn, arg, why) => waitFor(page, fn, arg, stepTimeout, why);
  return { summary, step, fail, main, until };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

// Chromium from `executable`, headless, in a persistent context on a fresh profile (which
// Chromium needs for --ignore-certificate-errors-spki-list to take effect), with `flags` after
// the common ones. Returns { context, close }: close() closes it (10 s at most) and removes
// the profile.
export async function launch(executable, { flags = [], viewport } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "rtw-chromium-"));
  let context;
  const close = async () => {
    try {
      if (context) await withTimeout(context.close(), 10_000, "closing Chromium");
    } catch (_) {
      /* the process exits anyway */
    }
    rmSync(profile, { recursive: true, force: true });
  };
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: executable,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        ...flags,
      ],
      ...(viewport ? { viewport } : {}),
      timeout: 60_000,
    });
  } catch (e) {
    await close();
    throw e;
  }
  return { context, close };
}

// Waits until `fn(arg)` is truthy in `page` (`timeout` ms); otherwise throws
// Error(await why()), `why` a string or an (async) function of nothing.
export async function waitFor(page, fn, arg, timeout, why) {
  await page.waitForFunction(fn, arg, { timeout }).catch(async () => {
    throw new Error(typeof why === "function" ? await why() : why);
  });
}
