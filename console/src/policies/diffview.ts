// A policy diff, rule by rule: added, removed and changed policies (by @id, compared by meaning
// on the engine), each changed one with its text side by side, line by line.

import { h, type Child } from "../ui";
import type { PolicyDiff, PolicySummary } from "./model";

type Row = { kind: "same" | "del" | "add"; text: string };

/** Longest-common-subsequence line diff: policies are short, so O(n·m) is fine. */
export function lineDiff(a: string, b: string): Row[] {
  const x = a.split("\n");
  const y = b.split("\n");
  const n = x.length;
  const m = y.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const rows: Row[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      rows.push({ kind: "same", text: x[i] });
      i++;
      j++;
    } else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) rows.push({ kind: "add", text: y[j++] });
    else rows.push({ kind: "del", text: x[i++] });
  }
  return rows;
}

function summary(p: PolicySummary): Child {
  return h(
    "span",
    { class: "muted" },
    ` ${p.effect}${p.priority !== null && p.priority !== undefined ? `, priority ${p.priority}` : ""} · ${p.file}:${p.line}`,
  );
}

function policyCard(kind: "added" | "removed", p: PolicySummary): HTMLElement {
  return h(
    "article",
    { class: `rule ${kind}`, "data-policy": p.id },
    h("h4", null, h("span", { class: `badge ${kind}` }, kind === "added" ? "Added" : "Removed"), " ", h("code", null, p.id), summary(p)),
    h("pre", { class: "code" }, p.text),
  );
}

function changedCard(id: string, from: PolicySummary, to: PolicySummary): HTMLElement {
  const rows = lineDiff(from.text, to.text);
  return h(
    "article",
    { class: "rule changed", "data-policy": id },
    h("h4", null, h("span", { class: "badge changed" }, "Changed"), " ", h("code", null, id), summary(to)),
    h(
      "pre",
      { class: "code diff", "aria-label": `Changes to ${id}: lines starting with minus were removed, plus were added` },
      ...rows.map((r) => h("span", { class: `line ${r.kind}` }, `${r.kind === "add" ? "+" : r.kind === "del" ? "-" : " "} ${r.text}\n`)),
    ),
  );
}

export function renderDiff(d: PolicyDiff, fromLabel: string, toLabel: string): HTMLElement {
  const other: string[] = [];
  if (d.schema_changed) other.push("the schema changed");
  if (d.entities_changed) other.push("the entities changed");
  if (d.tests_changed.length) other.push(`test suites changed: ${d.tests_changed.join(", ")}`);
  const nothing = !d.added.length && !d.removed.length && !d.changed.length && !other.length;
  return h(
    "div",
    { class: "diff-view" },
    h(
      "p",
      { class: "summary" },
      `From ${fromLabel} to ${toLabel}: `,
      h("strong", null, `${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed`),
      `, ${d.unchanged} unchanged.`,
      other.length ? ` Also: ${other.join("; ")}.` : "",
    ),
    nothing ? h("p", null, "No policy means anything different (reformatting and moving policies do not count).") : null,
    ...d.changed.map((c) => changedCard(c.id, c.from, c.to)),
    ...d.added.map((p) => policyCard("added", p)),
    ...d.removed.map((p) => policyCard("removed", p)),
  );
}
