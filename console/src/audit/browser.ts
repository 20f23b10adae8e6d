// The audit browser: filter the decision log (the filters live in the page's address, so a
// query can be bookmarked or sent), page through it in seq order, open a decision, and export
// the current filter as CSV through the engine's export API.

import { describe, query, raw, api } from "../api";
import { field, fmtTime, h, notice, replace, select, badge } from "../ui";
import { auditRecords, subjectKind, targetText, type RawRecord } from "./json";
import type { Route } from "../main";

const PAGE = 50;
const FILTERS = ["chain", "asset", "holder", "issuer", "kind", "outcome", "policy", "subject", "from_time", "to_time"] as const;
const KINDS = ["MONITOR", "PREEMPT", "SUSPEND", "FREEZE", "SEIZE", "CONFISCATE", "RELEASE"];
const OUTCOMES = ["APPLIED", "REJECTED", "SUPERSEDED", "ESCALATED"];

/** `datetime-local` values are read as UTC, like every time the log shows. */
function toUtc(local: string): string {
  return local ? new Date(`${local.length === 16 ? `${local}:00` : local}Z`).toISOString() : "";
}
function fromUtc(iso: string): string {
  return iso ? iso.replace(/(\.\d+)?Z$/, "").slice(0, 19) : "";
}

export function auditPage(main: HTMLElement, route: Route): void {
  const p = route.params;
  const input = (name: string, label: string, hint?: string, attrs: Record<string, string> = {}) => {
    const el = h("input", { name, value: p.get(name) ?? "", autocomplete: "off", ...attrs });
    return field(label, el, hint);
  };
  const form = h(
    "form",
    {
      class: "filters panel",
      "aria-label": "Filter decisions",
      onsubmit: (e: Event) => {
        e.preventDefault();
        const data = new FormData(form);
        const params: Record<string, string> = {};
        for (const f of FILTERS) {
          const v = String(data.get(f) ?? "").trim();
          if (v) params[f] = f.endsWith("_time") ? toUtc(v) : v;
        }
        location.hash = `#/audit${query(params)}`;
      },
    },
    h(
      "div",
      { class: "grid" },
      input("chain", "Chain", "e.g. ethereum"),
      input("asset", "Asset", "needs the chain"),
      input("holder", "Holder"),
      input("issuer", "Authority", "the order's issuer, e.g. US-SEC"),
      field("Kind", select("kind", [["", "Any kind"], ...KINDS.map((k): [string, string] => [k, k])], p.get("kind") ?? "")),
      field("Outcome", select("outcome", [["", "Any outcome"], ...OUTCOMES.map((k): [string, string] => [k, k])], p.get("outcome") ?? "")),
      input("policy", "Determining policy", "a policy @id"),
      field("Subject", select("subject", [["", "Orders and expiries"], ["order", "Orders"], ["expiry", "Expiries"]], p.get("subject") ?? "")),
      field("Decided from (UTC)", h("input", { type: "datetime-local", name: "from_time", step: 1, value: fromUtc(p.get("from_time") ?? "") })),
      field("Decided before (UTC)", h("input", { type: "datetime-local", name: "to_time", step: 1, value: fromUtc(p.get("to_time") ?? "") })),
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("a", { href: "#/audit", class: "button" }, "Clear"),
    ),
  );

  const filters: Record<string, string> = {};
  for (const f of FILTERS) {
    const v = p.get(f);
    if (v) filters[f] = v;
  }
  const after = Number(p.get("after") ?? 0) || 0;
  const back = p.getAll("back").map(Number);

  const results = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const exportOut = h("div", { "aria-live": "polite" });
  const exportButton = h("button", { type: "button" }, "Export this filter as CSV");
  exportButton.addEventListener("click", async () => {
    exportButton.disabled = true;
    replace(exportOut, notice("info", "Exporting…"));
    try {
      const response = await raw("GET", `/v1/audit/export${query({ ...filters, format: "csv" })}`, { headers: { accept: "text/csv" } });
      const blob = await response.blob();
      const rows = Math.max(0, (await blob.text()).split("\n").filter(Boolean).length - 1);
      const a = h("a", { href: URL.createObjectURL(blob), download: "decisions.csv", class: "download" }, "decisions.csv");
      document.body.appendChild(a);
      a.click();
      a.remove();
      replace(exportOut, notice("ok", `Exported decisions.csv: ${rows} decision${rows === 1 ? "" : "s"} (every match, not only this page), each with its hash and exact record.`));
    } catch (err) {
      replace(exportOut, notice("error", `Export failed: ${describe(err)}`));
    } finally {
      exportButton.disabled = false;
    }
  });

  main.append(h("h1", null, "Audit: decisions"), form, h("div", { class: "actions" }, exportButton), exportOut, results);

  api<string>("GET", `/v1/audit/decisions${query({ ...filters, after, limit: PAGE })}`)
    .then(({ text }) => {
      const page = auditRecords(text);
      replace(results, table(page.records, filters, after, back, page.next_after));
    })
    .catch((err) => replace(results, notice("error", describe(err))));
}

function table(records: RawRecord[], filters: Record<string, string>, after: number, back: number[], next: number): HTMLElement {
  const link = (cursor: number, stack: number[]) => {
    const q = new URLSearchParams(filters);
    if (cursor) q.set("after", String(cursor));
    for (const b of stack) q.append("back", String(b));
    return `#/audit?${q}`;
  };
  const more = records.length === PAGE;
  return h(
    "div",
    null,
    records.length === 0
      ? h("p", null, after ? "No more decisions match." : "No decision matches these filters.")
      : h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { class: "decisions" },
            h("caption", null, `Decisions ${records[0].seq} to ${records[records.length - 1].seq} that match, in sequence order`),
            h("thead", null, h("tr", null, ...["Seq", "Decided (UTC)", "Target", "Kind", "Authority", "Outcome", "Determining policies"].map((t) => h("th", { scope: "col" }, t)))),
            h(
              "tbody",
              null,
              ...records.map((r) => {
                const d = r.decision;
                return h(
                  "tr",
                  { "data-seq": r.seq },
                  h("td", { class: "num" }, h("a", { href: `#/audit/decisions/${r.seq}`, "aria-label": `Open decision ${r.seq}` }, String(r.seq))),
                  h("td", null, fmtTime(d.decided_at)),
                  h("td", null, targetText(d.target)),
                  h("td", null, d.kind, subjectKind(d) === "expiry" ? h("small", { class: "muted" }, " (expiry)") : null),
                  h("td", null, d.issuer),
                  h("td", null, badge(d.outcome)),
                  h("td", null, d.determining_policies.join(", ") || h("span", { class: "muted" }, "none")),
                );
              }),
            ),
          ),
        ),
    h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      after ? h("a", { href: link(back[back.length - 1] ?? 0, back.slice(0, -1)), rel: "prev" }, "← Previous page") : null,
      more ? h("a", { href: link(next, [...back, after]), rel: "next" }, "Next page →") : null,
    ),
  );
}
