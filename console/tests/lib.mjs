// What the browser flows share: Chromium (Debian's, through playwright-core), the engine's
// address and tokens from the environment, screenshots, and failing on any page error or
// Content-Security-Policy violation.

import { chromium } from "playwright-core";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { tmpdir } from "node:os";

export const BASE = need("REGULATOR_BASE");
const SHOTS = process.env.REGULATOR_SCREENSHOTS ?? "";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set: run this flow through tests/console_browser.rs (cargo nextest run --test console_browser)`);
    process.exit(2);
  }
  return v;
}

export function step(text) {
  console.log(`· ${text}`);
}

export function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

/** Starts Chromium and a page; `problems` collects page errors and CSP violations. */
export async function open({ width = 1280, height = 800 } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  // The legal flow pastes its edit, as a person pasting a drafted clause would.
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A refused request (a 422 while typing) is logged by Chromium too; those are expected.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
  });
  page.on("dialog", (d) => d.accept());
  return { browser, context, page, problems };
}

/** Saves a screenshot; `focus` (a locator) is scrolled to the top of the window first. */
export async function shot(page, name, focus) {
  if (!SHOTS) return;
  if (focus) await focus.evaluate((el) => el.scrollIntoView({ block: "start" }));
  await mkdir(SHOTS, { recursive: true });
  // Let transitions and the last paint settle so the picture shows what a person sees.
  await page.waitForTimeout(150);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
  step(`screenshot ${name}.png`);
}

/** Signs in by pasting a token, as a person given one would. */
export async function signInWithToken(page, token) {
  await page.goto(`${BASE}/console`);
  await page.getByRole("textbox", { name: "Token" }).fill(token);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
}

/** Calls the engine's API from the test (not through the page). */
export async function apiCall(method, route, token, body) {
  const response = await fetch(`${BASE}${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Runs a flow; exits 0 only if it finished with no page error or CSP violation. */
export async function run(name, flow) {
  let session;
  try {
    session = await open();
    await flow(session);
    check(session.problems.length === 0, `no page errors or CSP violations, got:\n  ${session.problems.join("\n  ")}`);
    console.log(`${name}: passed`);
  } catch (e) {
    console.error(`${name}: FAILED: ${e.stack ?? e}`);
    if (session?.problems.length) console.error(`page problems:\n  ${session.problems.join("\n  ")}`);
    if (session) {
      const file = path.join(process.env.REGULATOR_FAILURE_DIR ?? tmpdir(), `console-failure-${name}.png`);
      await session.page.screenshot({ path: file, fullPage: true }).then(() => console.error(`the page at the failure: ${file}`), () => {});
    }
    process.exitCode = 1;
  } finally {
    await session?.browser.close();
  }
}
