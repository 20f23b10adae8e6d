// The legal team's flow, in a real browser against the real engine: sign in (development
// sign-in), edit a policy, see the validation error at its place, fix it, run the test suites,
// see the change rule by rule, simulate it over the recorded history and see the changed
// decisions, store it and activate it. tests/console_browser.rs then checks that the next order
// is decided by the new version. `node legal.mjs rollback` then rolls back from the versions page.
//
// Environment: REGULATOR_BASE, REGULATOR_AUTHOR_TOKEN (to read the active files from the test),
// REGULATOR_EXPECT_CHANGED (how many seeded orders the change turns from REJECTED to APPLIED).

import { apiCall, BASE, check, need, run, shot, step } from "./lib.mjs";

const AUTHOR = need("REGULATOR_AUTHOR_TOKEN");
const EXPECT_CHANGED = Number(need("REGULATOR_EXPECT_CHANGED"));

export const NEW_POLICY_ID = "us-sec-freeze-foreign-security";
// The change a lawyer makes, with a typo on its last condition (`asset_clas`).
const ADDITION = `
// The SEC reaches a foreign-issued security through the issuer's courts (mutual legal
// assistance): its court-ordered freeze applies, ranking below domestic orders.
@id("${NEW_POLICY_ID}")
@priority("500")
permit (
  principal == Authority::"US-SEC",
  action == Action::"FREEZE",
  resource
)
when {
  context.legal_basis.instrument == "court_order" &&
  !(resource.issuer_jurisdiction in Jurisdiction::"US") &&
  resource.asset_clas == "security"
};
`;

if (process.argv[2] === "rollback") {
  await run("legal-rollback", async ({ page }) => {
    step("development sign-in; roll back from the versions page");
    await page.goto(`${BASE}/console`);
    const dev = page.getByRole("form", { name: /Development sign-in/ });
    await dev.getByLabel("Subject").fill("bob");
    await dev.getByRole("button", { name: "Sign in for development" }).click();
    await page.getByRole("heading", { name: "Policy workspace" }).waitFor();
    await page.getByRole("link", { name: "Versions" }).click();
    // The confirmation dialog is accepted (lib.mjs).
    await page.getByRole("button", { name: "Roll back to version 1" }).click();
    await page.locator(".notice.ok").filter({ hasText: "Version 1 is active from seq" }).waitFor();
    await page.locator("ol.timeline").filter({ hasText: "bob activated version 1 at seq" }).waitFor();
    const text = await page.locator("ol.timeline").textContent();
    check(text.includes("replacing version 2; it had been active before"), "the timeline says version 1 comes back");
    check((await page.locator('tr[data-version="1"] .badge.active').count()) === 1, "version 1 is marked active");
    await page.getByRole("heading", { name: "Roll back" }).waitFor();
    await shot(page, "rollback", page.locator("ol.timeline"));
  });
  process.exit();
}

await run("legal", async ({ page }) => {
  step("development sign-in as a policy author");
  await page.goto(`${BASE}/console`);
  const dev = page.getByRole("form", { name: /Development sign-in/ });
  await dev.waitFor();
  await shot(page, "sign-in");
  await dev.getByLabel("Subject").fill("alice");
  // policy_author is ticked by default; the roles are checkboxes a keyboard can reach.
  await dev.getByRole("button", { name: "Sign in for development" }).click();
  await page.getByRole("heading", { name: "Policy workspace" }).waitFor();
  await page.locator(".validation.ok").waitFor();

  const { active } = await apiCall("GET", "/v1/policies/versions", AUTHOR);
  const activeFiles = (await apiCall("GET", `/v1/policies/versions/${active.version}`, AUTHOR)).files;
  await shot(page, "workspace");

  step("edit us.cedar: add a policy, with a typo");
  await page.locator('button.file[data-file="us.cedar"]').click();
  await page.locator(".cm-content").click();
  await page.keyboard.press("Control+End");
  await page.evaluate((text) => navigator.clipboard.writeText(text), ADDITION);
  await page.keyboard.press("Control+V");
  // The line the typo landed on, in the document as the editor holds it (the draft it saves).
  await page.waitForFunction(() => (localStorage.getItem("regulator.draft.alice") ?? "").includes("asset_clas =="));
  const draft = JSON.parse(await page.evaluate(() => localStorage.getItem("regulator.draft.alice")));
  check(draft.files["us.cedar"] === activeFiles["us.cedar"] + ADDITION, "the draft is the active us.cedar with the addition");
  const typoLine = draft.files["us.cedar"].split("\n").findIndex((l) => l.includes("asset_clas ==")) + 1;

  step(`the error is shown at its place: us.cedar line ${typoLine}`);
  await page.locator(".validation.error").waitFor();
  const marked = page.locator(".cm-lintRange-error");
  await marked.first().waitFor();
  check((await marked.first().textContent()).includes("asset_clas"), `the lint mark covers the typo, got ${await marked.first().textContent()}`);
  const problem = page.locator(".problem-list li").filter({ hasText: "asset_clas" });
  check((await problem.count()) === 1, "one problem names the unknown attribute");
  const where = await problem.getByRole("button").textContent();
  check(where.startsWith(`us.cedar:${typoLine}:`), `the problem is at us.cedar:${typoLine}, got ${where}`);
  check((await problem.textContent()).includes("did you mean `asset_class`?"), "the engine's hint is shown");
  check((await page.locator('button.file[data-file="us.cedar"] .badge.error').textContent()) === "1", "the file list counts the problem");
  await marked.first().hover();
  await page.locator(".cm-tooltip-lint").waitFor();
  await shot(page, "editor-error");

  step("fix the typo");
  await page.locator(".cm-line").filter({ hasText: "resource.asset_clas ==" }).click();
  await page.keyboard.press("End");
  for (let i = 0; i < ' == "security"'.length; i++) await page.keyboard.press("ArrowLeft");
  await page.keyboard.type("s");
  await page.locator(".validation.ok").waitFor();
  check((await page.locator(".cm-lintRange-error").count()) === 0, "no error is marked once fixed");

  step("run the test suites");
  await page.getByRole("tab", { name: "Tests" }).click();
  await page.getByRole("button", { name: "Run the test suites" }).click();
  const summary = page.locator(".tests .summary");
  await summary.waitFor();
  check((await summary.getAttribute("class")).includes("ok"), `every case passes: ${await summary.textContent()}`);
  check((await page.locator(".tests tr.pass").count()) > 10, "per-case results are listed");
  await shot(page, "tests", page.locator(".tabs"));

  step("the change, rule by rule (by keyboard)");
  await page.getByRole("tab", { name: "Tests" }).focus();
  await page.keyboard.press("ArrowRight");
  check((await page.getByRole("tab", { name: "Changes" }).getAttribute("aria-selected")) === "true", "the arrow key moves to the next tab");
  check(await page.getByRole("tab", { name: "Changes" }).evaluate((el) => el === document.activeElement), "and focuses it");
  await page.getByRole("button", { name: "Compare with the active version" }).focus();
  await page.keyboard.press("Enter");
  const added = page.locator(`article.rule.added[data-policy="${NEW_POLICY_ID}"]`);
  await added.waitFor();
  check((await page.locator(".diff-view .summary").textContent()).includes("1 added, 0 removed, 0 changed"), "one policy added, nothing else");
  await shot(page, "diff", page.locator(".tabs"));

  step("simulate against the recorded history");
  await page.getByRole("tab", { name: "Simulate" }).click();
  await page.getByRole("button", { name: "Simulate against recorded history" }).click();
  const report = page.locator(".report");
  await report.waitFor({ timeout: 60_000 });
  const progress = await page.locator(".progress").textContent();
  check(/(\d[\d,]*) of \1 orders replayed\./.test(progress), `the progress reached the total: ${progress}`);
  const transition = page.locator("table.counts tr").filter({ hasText: "REJECTED → APPLIED" });
  check((await transition.locator("td.num").textContent()) === String(EXPECT_CHANGED), `${EXPECT_CHANGED} orders go from REJECTED to APPLIED`);
  const changes = page.locator("ul.changes details");
  check((await changes.count()) === EXPECT_CHANGED, `${EXPECT_CHANGED} changed decisions are listed`);
  await changes.first().locator("summary").click();
  const outcomeRow = changes.first().locator("table.verdicts tr.differs").filter({ hasText: "Outcome" });
  check((await outcomeRow.locator("td").nth(0).textContent()) === "REJECTED", "recorded: REJECTED");
  check((await outcomeRow.locator("td").nth(1).textContent()) === "APPLIED", "with the draft: APPLIED");
  check((await changes.first().textContent()).includes(NEW_POLICY_ID), "the simulated verdict names the new policy");
  await shot(page, "simulate", page.locator(".tabs"));

  step("store the draft as a version, then activate it");
  await page.getByRole("tab", { name: "Store and activate" }).click();
  await page.getByLabel("What is this change for?").fill("SEC court-ordered freezes reach foreign-issued securities (MLAT), at priority 500");
  await page.getByRole("button", { name: "Store as a new version" }).click();
  const stored = page.locator("#panel-store .notice.ok").first();
  await stored.waitFor();
  const version = Number(/version (\d+)/.exec(await stored.textContent())[1]);
  check(version === active.version + 1, `stored as version ${active.version + 1}`);
  await page.getByRole("button", { name: `Activate version ${version}` }).click();
  await page.locator("#panel-store .notice.ok").filter({ hasText: `Version ${version} is active from seq` }).waitFor();
  await shot(page, "activated", page.locator(".tabs"));

  step("the timeline says who did what");
  await page.getByRole("link", { name: "Versions" }).click();
  const timeline = page.locator("ol.timeline");
  await timeline.waitFor();
  const text = await timeline.textContent();
  check(text.includes(`alice activated version ${version} at seq`), "the activation is on the timeline");
  check(text.includes(`alice stored version ${version}`), "the storing is on the timeline");
  check((await page.locator(`tr[data-version="${version}"] .badge.active`).count()) === 1, "the new version is marked active");
  await shot(page, "versions");

  step("a narrow window");
  await page.setViewportSize({ width: 400, height: 800 });
  await page.goto(`${BASE}/console#/policies`);
  await page.locator(".validation.ok").waitFor();
  await shot(page, "workspace-narrow");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing overflows a 400 px window sideways (by ${overflow} px)`);
  console.log(JSON.stringify({ version }));
});
