// The auditor's flow, in a real browser against the real engine.
//
// `node auditor.mjs pass`: sign in with a pasted token, filter the log, page, open a decision
// (its determining policy's text from the version that decided), verify it in the browser,
// export the filter as CSV, and watch the live feed receive a new decision.
// `node auditor.mjs fail`: after tests/console_browser.rs has rewritten that decision in the
// database, verifying it again fails, visibly.
//
// Environment: REGULATOR_BASE, REGULATOR_AUDITOR_TOKEN, REGULATOR_REGULATOR_TOKEN (US-SEC, to
// submit an order while the live view is open), REGULATOR_SEQ (the decision to verify),
// REGULATOR_EXPECT_ROWS (how many decisions the filter selects).

import { readFile } from "node:fs/promises";
import { apiCall, BASE, check, need, run, shot, signInWithToken, step } from "./lib.mjs";

const AUDITOR = need("REGULATOR_AUDITOR_TOKEN");
const SEQ = Number(need("REGULATOR_SEQ"));
const phase = process.argv[2];

async function verify(page) {
  await page.goto(`${BASE}/console#/audit/decisions/${SEQ}`);
  await page.getByRole("heading", { name: `Decision ${SEQ}` }).waitFor();
  await page.getByRole("button", { name: "Verify", exact: true }).click();
  const result = page.locator(".verification .result");
  await result.waitFor();
  return result;
}

if (phase === "pass") {
  const SEC = need("REGULATOR_REGULATOR_TOKEN");
  const EXPECT_ROWS = Number(need("REGULATOR_EXPECT_ROWS"));
  await run("auditor-pass", async ({ page }) => {
    step("sign in with a pasted token");
    await signInWithToken(page, AUDITOR);
    await page.getByRole("heading", { name: "Audit: decisions" }).waitFor();

    step("filter: the SEC's applied freezes on ethereum");
    await page.getByLabel("Chain").fill("ethereum");
    await page.getByLabel("Authority").fill("US-SEC");
    await page.getByLabel("Kind").selectOption("FREEZE");
    await page.getByLabel("Outcome").selectOption("APPLIED");
    // Enter in a field submits the filters, as in any form.
    await page.getByLabel("Authority").press("Enter");
    await page.waitForURL(/issuer=US-SEC/);
    const rows = page.locator("table.decisions tbody tr");
    await rows.first().waitFor();
    const firstPage = await rows.count();
    check(firstPage === Math.min(EXPECT_ROWS, 50), `the first page holds ${Math.min(EXPECT_ROWS, 50)} rows, got ${firstPage}`);
    for (const cell of await page.locator("table.decisions tbody tr td:nth-child(6)").allTextContents()) check(cell === "APPLIED", "every row is APPLIED");
    await shot(page, "audit");
    if (EXPECT_ROWS > 50) {
      step("page forward and back");
      await page.getByRole("link", { name: "Next page →" }).click();
      await page.waitForURL(/after=/);
      await rows.first().waitFor();
      check((await rows.count()) === EXPECT_ROWS - 50, `the second page holds the other ${EXPECT_ROWS - 50}`);
      await page.getByRole("link", { name: "← Previous page" }).click();
      await page.waitForFunction(() => !location.hash.includes("after="));
      await page.locator("table.decisions tbody tr").nth(49).waitFor();
    }

    step("export the filter as CSV");
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export this filter as CSV" }).click()]);
    const csv = await readFile(await download.path(), "utf8");
    const lines = csv.trim().split("\n");
    check(lines[0].startsWith("seq,decided_at,chain,asset,holder,kind,issuer,outcome"), "the CSV has the export's header");
    check(lines.length - 1 === EXPECT_ROWS, `the CSV holds every match (${EXPECT_ROWS}), got ${lines.length - 1}`);

    step(`open decision ${SEQ}`);
    await page.getByRole("link", { name: `Open decision ${SEQ}`, exact: true }).click();
    await page.getByRole("heading", { name: `Decision ${SEQ}` }).waitFor();
    const policy = page.locator('article.rule[data-policy="us-sec-freeze-court-order"] pre');
    await policy.waitFor();
    check((await policy.textContent()).includes('@id("us-sec-freeze-court-order")'), "the determining policy's text is shown");
    check((await page.locator("#policies-title + div").textContent()).includes("policy version 1"), "from the version that decided");
    check((await page.locator("section", { hasText: "The order" }).textContent()).includes("court_order"), "the order's legal basis is shown");

    await shot(page, "decision");

    step("verify it in the browser");
    await page.getByRole("button", { name: "Verify", exact: true }).click();
    const result = page.locator(".verification .result");
    await result.waitFor();
    check((await result.getAttribute("data-verified")) === "yes", `verification passes: ${await result.textContent()}`);
    check((await result.locator("li.ok").count()) === (await result.locator("li").count()), "every step holds");
    check((await result.textContent()).includes("Ed25519 signature is valid"), "the signature was checked");
    await shot(page, "decision-verified", page.locator("#evidence-title"));

    step("the live feed");
    await page.getByRole("link", { name: "Live" }).click();
    await page.getByText(/^Connected/).waitFor();
    // The feed starts a little before the latest checkpoint: wait until it has caught up.
    const { tree_size } = await apiCall("GET", "/v1/audit/checkpoints/latest", AUDITOR);
    await page.locator(`ol.feed li[data-seq="${tree_size}"]`).waitFor();
    const before = await page.locator("ol.feed li").count();
    const order = {
      target: { chain: "ethereum", asset: "0xACME-BOND-2031", holder: "0xLIVE" },
      legal_basis: { instrument: "court_order", reference: "SEC v. Acme (live)" },
      instruction: { kind: "FREEZE" },
    };
    const response = await fetch(`${BASE}/v1/orders`, {
      method: "POST",
      headers: { authorization: `Bearer ${SEC}`, "content-type": "application/json", "idempotency-key": "live-1" },
      body: JSON.stringify(order),
    });
    const { decision } = await response.json();
    await page.locator(`ol.feed li[data-seq="${decision.seq}"]`).waitFor();
    check((await page.locator("ol.feed li").count()) === before + 1, "the new decision arrived once");
    check((await page.locator("ol.feed li").first().getAttribute("data-seq")) === String(decision.seq), "newest first");
    await page.locator(".chain, #chains-title + div p").first().waitFor();
    await shot(page, "live");

    step("a narrow window");
    await page.setViewportSize({ width: 400, height: 800 });
    await page.goto(`${BASE}/console#/audit/decisions/${SEQ}`);
    await page.locator('article.rule[data-policy="us-sec-freeze-court-order"] pre').waitFor();
    await shot(page, "decision-narrow");
  });
} else if (phase === "fail") {
  await run("auditor-fail", async ({ page }) => {
    step("sign in; open the decision that was rewritten in the database");
    await signInWithToken(page, AUDITOR);
    await page.getByRole("heading", { name: "Audit: decisions" }).waitFor();
    const result = await verify(page);
    check((await result.getAttribute("data-verified")) === "no", "verification fails");
    check((await result.locator("h3").textContent()).includes("Verification FAILED"), "the failure is said plainly");
    const failed = result.locator("li.error");
    check((await failed.first().textContent()).includes("was changed after it was hashed"), `it says the record was changed: ${await failed.first().textContent()}`);
    check((await result.locator("li.error").filter({ hasText: "The record is in the signed tree" }).count()) === 1, "and that it is not the record the signed tree holds");
    await shot(page, "decision-verify-failed", page.locator("#evidence-title"));
  });
} else {
  console.error("usage: node auditor.mjs pass|fail");
  process.exit(2);
}
