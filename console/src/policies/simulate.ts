// "What if": replay the recorded orders against the draft as a job on the engine, with its
// progress, then the counts by transition and every changed decision, each opening to the
// recorded and the simulated verdicts side by side.

import { api, describe } from "../api";
import { has } from "../session";
import { announce, field, fmtInt, fmtTime, h, notice, replace, select, type Child } from "../ui";
import { targetText } from "../audit/json";
import type { Files, Report, SimulationStatus, Verdict } from "./model";

const POLL_MS = 250;

function verdictTable(recorded: Verdict, simulated: Verdict, differs: string[]): HTMLElement {
  const row = (label: string, key: string, a: Child, b: Child) =>
    h("tr", { class: differs.includes(key) ? "differs" : null }, h("th", { scope: "row" }, label), h("td", null, a), h("td", null, b));
  const policies = (v: Verdict) => (v.determining_policies.length ? v.determining_policies.join(", ") : "none");
  return h(
    "table",
    { class: "verdicts" },
    h("thead", null, h("tr", null, h("td"), h("th", { scope: "col" }, "Recorded"), h("th", { scope: "col" }, "With the draft"))),
    h(
      "tbody",
      null,
      row("Outcome", "outcome", recorded.outcome, simulated.outcome),
      row("Priority", "priority", String(recorded.priority), String(simulated.priority)),
      row("Determining policies", "determining_policies", policies(recorded), policies(simulated)),
      row("Reason", "reason_code", recorded.reason_code, simulated.reason_code),
    ),
  );
}

export function renderReport(r: Report): HTMLElement {
  const transitions = Object.entries(r.counts.transitions);
  return h(
    "div",
    { class: "report" },
    h(
      "p",
      { class: "summary" },
      `Replayed ${fmtInt(r.orders)} recorded orders (seq ${r.from_seq} to ${r.to_seq}) in ${fmtInt(r.elapsed_ms)} ms. `,
      h("strong", null, r.counts.changed === 0 ? "The draft decides every one of them as recorded." : `${fmtInt(r.counts.changed)} would be decided differently`),
      r.counts.changed ? `: ${fmtInt(r.counts.outcome)} in outcome, ${fmtInt(r.counts.priority)} in priority, ${fmtInt(r.counts.determining_policies)} in determining policies.` : "",
    ),
    transitions.length
      ? h(
          "table",
          { class: "counts" },
          h("caption", null, "Outcome changes by transition"),
          h("thead", null, h("tr", null, h("th", { scope: "col" }, "Recorded → with the draft"), h("th", { scope: "col" }, "Orders"))),
          h("tbody", null, ...transitions.map(([t, n]) => h("tr", null, h("td", null, t.replace("->", "→")), h("td", { class: "num" }, fmtInt(n))))),
        )
      : null,
    r.changes.length ? h("h4", null, "Changed decisions") : null,
    h(
      "ul",
      { class: "changes" },
      ...r.changes.map((c) =>
        h(
          "li",
          null,
          h(
            "details",
            { "data-seq": c.seq },
            h(
              "summary",
              null,
              h("span", { class: "seq" }, `#${c.seq}`),
              ` ${c.kind} by ${c.issuer} on ${targetText(c.target)}: `,
              h("strong", null, c.recorded.outcome === c.simulated.outcome ? c.differs.join(", ") : `${c.recorded.outcome} → ${c.simulated.outcome}`),
            ),
            h("p", { class: "muted" }, `Decided ${fmtTime(c.decided_at)} · order ${c.order_id}`, has("auditor", "admin") ? [" · ", h("a", { href: `#/audit/decisions/${c.seq}` }, "open in the audit log")] : null),
            verdictTable(c.recorded, c.simulated, c.differs),
          ),
        ),
      ),
    ),
    r.truncated ? notice("info", `Only the first ${fmtInt(r.changes.length)} changed decisions are listed; the counts above are complete.`) : null,
  );
}

export function simulatePanel(files: () => Files): HTMLElement {
  const scope = select("scope", [
    ["all", "The whole recorded history"],
    ["time", "Decisions in a time range (UTC)"],
    ["seq", "Decisions in a sequence range"],
  ]);
  const fromTime = h("input", { type: "datetime-local", name: "from_time", step: 1 });
  const toTime = h("input", { type: "datetime-local", name: "to_time", step: 1 });
  const fromSeq = h("input", { type: "number", name: "from_seq", min: 1, inputmode: "numeric" });
  const toSeq = h("input", { type: "number", name: "to_seq", min: 1, inputmode: "numeric" });
  const timeRange = h("div", { class: "row", hidden: true }, field("From (UTC)", fromTime), field("To (UTC, not included)", toTime));
  const seqRange = h("div", { class: "row", hidden: true }, field("From seq", fromSeq), field("To seq", toSeq));
  scope.addEventListener("change", () => {
    timeRange.hidden = scope.value !== "time";
    seqRange.hidden = scope.value !== "seq";
  });
  const maxChanges = h("input", { type: "number", name: "max_changes", min: 1, max: 100000, value: 1000 });
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Orders replayed" });
  const progressText = h("span", { class: "muted" });
  const progressRow = h("div", { class: "progress", hidden: true }, progress, progressText);
  const out = h("div", { "aria-live": "polite" });
  const run = h("button", { type: "submit", class: "primary" }, "Simulate against recorded history");
  let generation = 0;

  const utc = (v: string) => (v ? new Date(`${v.length === 16 ? `${v}:00` : v}Z`).toISOString() : undefined);

  const form = h(
    "form",
    {
      class: "stack",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const mine = ++generation;
        const body: Record<string, unknown> = { files: files(), max_changes: Number(maxChanges.value) || 1000 };
        if (scope.value === "time") {
          body.from_time = utc(fromTime.value);
          body.to_time = utc(toTime.value);
        }
        if (scope.value === "seq") {
          if (fromSeq.value) body.from_seq = Number(fromSeq.value);
          if (toSeq.value) body.to_seq = Number(toSeq.value);
        }
        run.disabled = true;
        replace(out);
        progressRow.hidden = false;
        progress.removeAttribute("value");
        progressText.textContent = "Starting…";
        try {
          const started = await api<SimulationStatus>("POST", "/v1/policies/simulations", { body });
          const location = started.headers.get("location") ?? `/v1/policies/simulations/${started.body.id}`;
          let status = started.body;
          while (status.status === "running" && mine === generation) {
            show(status);
            await new Promise((r) => setTimeout(r, POLL_MS));
            status = (await api<SimulationStatus>("GET", location)).body;
          }
          if (mine !== generation) return;
          show(status);
          if (status.status === "done" && status.report) {
            replace(out, renderReport(status.report));
            announce(`Simulation done: ${status.report.counts.changed} decisions would change.`);
          } else {
            replace(out, notice("error", `The simulation failed: ${status.error?.detail ?? status.error?.title ?? "no reason given"}`));
          }
        } catch (err) {
          progressRow.hidden = true;
          replace(out, notice("error", `The simulation could not run: ${describe(err)}`));
        } finally {
          if (mine === generation) run.disabled = false;
        }
      },
    },
    h("p", null, "Replays the recorded orders against this draft, each against the state it really met, and lists every decision that would come out differently. Nothing is changed."),
    h("div", { class: "row" }, field("Which decisions", scope), field("List at most", maxChanges, "changed decisions (the counts are always complete)")),
    timeRange,
    seqRange,
    run,
  );

  function show(s: SimulationStatus) {
    progress.max = Math.max(s.total, 1);
    progress.value = s.status === "done" ? progress.max : s.replayed;
    progressText.textContent = `${fmtInt(s.replayed)} of ${fmtInt(s.total)} orders replayed${s.status === "running" ? "…" : "."}`;
  }

  return h("div", null, form, progressRow, out);
}
