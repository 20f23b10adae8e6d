// Running a draft's test suites, storing it as a version, activating and rolling back: the
// steps that change what decides, each with what the engine answered.

import { api, describe, Problem } from "../api";
import { announce, h, notice, replace, type Child } from "../ui";
import type { ActivationView, Files, TestReport, VersionView } from "./model";

export function renderTests(r: TestReport): HTMLElement {
  const byFile = new Map<string, TestReport["results"]>();
  for (const c of r.results) byFile.set(c.file, [...(byFile.get(c.file) ?? []), c]);
  return h(
    "div",
    { class: "tests" },
    h(
      "p",
      { class: `summary ${r.passed ? "ok" : "error"}` },
      r.passed ? `All ${r.cases} test cases pass.` : `${r.failed} of ${r.cases} test cases fail.`,
    ),
    ...[...byFile].map(([file, cases]) =>
      h(
        "table",
        { class: "cases" },
        h("caption", null, `${file}: ${cases.filter((c) => c.passed).length} of ${cases.length} pass`),
        h("thead", null, h("tr", null, h("th", { scope: "col" }, "Result"), h("th", { scope: "col" }, "Case"))),
        h(
          "tbody",
          null,
          ...cases.map((c) =>
            h(
              "tr",
              { class: c.passed ? "pass" : "fail" },
              h("td", null, h("span", { class: `badge ${c.passed ? "pass" : "fail"}` }, c.passed ? "pass" : "fail")),
              h("td", null, c.name, c.failures.length ? h("ul", { class: "failures" }, ...c.failures.map((f) => h("li", null, f))) : null),
            ),
          ),
        ),
      ),
    ),
  );
}

export function testsPanel(files: () => Files, onInvalid: () => void): HTMLElement {
  const out = h("div", { "aria-live": "polite" });
  const run = h("button", { type: "button", class: "primary" }, "Run the test suites");
  run.addEventListener("click", async () => {
    run.disabled = true;
    replace(out, notice("info", "Running…"));
    try {
      const { body } = await api<TestReport>("POST", "/v1/policies/test", { body: { files: files() } });
      replace(out, renderTests(body));
      announce(body.passed ? "All test cases pass." : `${body.failed} test cases fail.`);
    } catch (err) {
      if (err instanceof Problem && err.slug === "policy-invalid") {
        replace(out, notice("error", "The draft does not validate, so its tests cannot run: see Problems."));
        onInvalid();
      } else replace(out, notice("error", describe(err)));
    } finally {
      run.disabled = false;
    }
  });
  return h("div", null, h("p", null, "Runs every suite in tests/*.toml against this draft, with the same requests live orders make."), run, out);
}

interface Activated {
  seq: number;
  active: { version: number; hash: string };
  previous?: { version: number; hash: string } | null;
  rollback: boolean;
  actor: string;
  recorded_at: string;
}

/** Activates (or rolls back) and says what the ledger recorded; waits out a queued request. */
export async function activate(path: string, body: unknown, out: HTMLElement, done: () => void): Promise<void> {
  replace(out, notice("info", "Asking the sequencer to record the activation…"));
  try {
    const answer = await api<Activated | { status: string; request: number }>("POST", path, { body });
    let recorded: Activated | null = null;
    if (answer.status === 202) {
      const location = answer.headers.get("location");
      for (let i = 0; i < 120 && location; i++) {
        await new Promise((r) => setTimeout(r, 500));
        const { body: s } = await api<{ status: string; seq?: number; reason?: string }>("GET", location);
        if (s.status === "refused") throw new Error(`the sequencer refused it: ${s.reason}`);
        if (s.status === "recorded") {
          replace(out, notice("ok", `Recorded at seq ${s.seq}.`));
          done();
          return;
        }
      }
      throw new Error("still queued after a minute; see the timeline");
    }
    recorded = answer.body as Activated;
    const msg = `Version ${recorded.active.version} is active from seq ${recorded.seq} on: every later order is decided by it${
      recorded.previous ? ` (it replaced version ${recorded.previous.version})` : ""
    }.`;
    replace(out, notice("ok", msg));
    announce(msg);
    done();
  } catch (err) {
    replace(out, notice("error", `Not activated: ${err instanceof Error && !(err instanceof Problem) ? err.message : describe(err)}`));
  }
}

interface Created extends VersionView {
  created: boolean;
  tests: { cases: number; failed: number };
}

export function storePanel(files: () => Files, onStored: (v: number) => void, onActivated: (v: number) => void): HTMLElement {
  const message = h("textarea", { name: "message", rows: 3, required: true, maxlength: 2000, id: "store-message" });
  const out = h("div", { "aria-live": "polite" });
  const next = h("div");
  const form = h(
    "form",
    {
      class: "stack",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const button = form.querySelector("button[type=submit]") as HTMLButtonElement;
        button.disabled = true;
        replace(next);
        try {
          const { body } = await api<Created>("POST", "/v1/policies/versions", { body: { files: files(), message: message.value } });
          const tests = body.tests.failed ? `${body.tests.failed} of ${body.tests.cases} test cases fail, so it cannot be activated yet` : `all ${body.tests.cases} test cases pass`;
          replace(
            out,
            notice(
              body.tests.failed ? "error" : "ok",
              body.created ? `Stored as version ${body.version} (hash ${body.hash.slice(0, 12)}…); ${tests}.` : `This draft is already version ${body.version}, stored by ${body.author}; ${tests}.`,
            ),
          );
          onStored(body.version);
          if (!body.tests.failed) {
            const activateButton = h("button", { type: "button", class: "primary" }, `Activate version ${body.version}`);
            const activationOut = h("div", { "aria-live": "polite" });
            activateButton.addEventListener("click", () => {
              activateButton.disabled = true;
              void activate(`/v1/policies/versions/${body.version}/activate`, undefined, activationOut, () => onActivated(body.version)).finally(() => {
                activateButton.disabled = false;
              });
            });
            replace(next, h("p", null, "Activating is a ledger event: from the next sequence number on, every order is decided by this version."), activateButton, activationOut);
          }
        } catch (err) {
          replace(out, notice("error", `Not stored: ${describe(err)}`));
        } finally {
          button.disabled = false;
        }
      },
    },
    h("label", { for: "store-message" }, "What is this change for?"),
    h("small", { class: "muted" }, "Kept with the version for the people who review and audit it (1 to 2,000 characters)."),
    message,
    h("button", { type: "submit", class: "primary" }, "Store as a new version"),
  );
  return h("div", null, form, out, next);
}

/** A rollback control: back to the version the current activation replaced. */
export function rollbackControl(history: ActivationView[], out: HTMLElement, done: () => void): Child {
  if (history.length < 2) return h("p", { class: "muted" }, "Only one version has ever been active: there is nothing to roll back to.");
  const [current, previous] = history;
  const button = h("button", { type: "button", class: "danger" }, `Roll back to version ${previous.version}`);
  button.addEventListener("click", async () => {
    if (!confirm(`Roll back from version ${current.version} to version ${previous.version}? Every order from the next seq on will be decided by version ${previous.version}.`)) return;
    button.disabled = true;
    await activate("/v1/policies/rollback", {}, out, done);
    button.disabled = false;
  });
  return h("div", { class: "rollback" }, h("p", null, `Version ${current.version} is active; it replaced version ${previous.version}.`), button);
}
