// One decision, as an auditor reads it: the order, the outcome and why, the policies that
// determined it with their text from the version that decided, the state before and after,
// the hash; and "Verify", which checks its evidence in this browser.

import { api, describe } from "../api";
import { badge, facts, fmtTime, h, notice, replace, announce, type Child } from "../ui";
import { auditRecords, subjectKind, targetText, type Decision, type RawRecord, type TargetState } from "./json";
import { verifyDecision, webCryptoAvailable, type Verification } from "./verify";
import { policiesIn, type FoundPolicy } from "../policies/cedar";
import { version, versions, type VersionView } from "../policies/model";
import type { Route } from "../main";

const PIN_KEY = "regulator.pinned-key-id";

export function decisionPage(main: HTMLElement, route: Route): void {
  const seq = Number(route.path[0]);
  main.append(h("p", null, h("a", { href: "#/audit", onclick: (e: Event) => { if (history.length > 1) { e.preventDefault(); history.back(); } } }, "← Back to the decisions")));
  if (!Number.isInteger(seq) || seq < 1) {
    main.append(notice("error", "A decision is named by its sequence number."));
    return;
  }
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", null, `Decision ${seq}`), body);
  api<string>("GET", `/v1/audit/decisions?from_seq=${seq}&to_seq=${seq}&limit=1`)
    .then(({ text }) => {
      const record = auditRecords(text).records[0];
      if (!record) {
        replace(body, notice("error", `There is no decision ${seq} (it may be a ledger event, such as a policy activation).`));
        return;
      }
      replace(body, ...render(record));
    })
    .catch((err) => replace(body, notice("error", describe(err))));
}

function stateFacts(s: TargetState): HTMLElement {
  return facts([
    ["Level", `${s.level} (${s.level_number})`],
    ["Frozen", s.frozen],
    ["Asset version", String(s.version)],
    ["Holds", s.holds.length ? h("ul", { class: "plain" }, ...s.holds.map((x) => h("li", null, h("code", null, x)))) : "none"],
  ]);
}

function render(r: RawRecord): Child[] {
  const d = r.decision;
  const o = d.order;
  const instruction = o ? Object.entries(o.instruction).filter(([k, v]) => k !== "kind" && v !== null) : [];
  const policies = h("div", null, h("p", { class: "muted" }, "Loading the policies from the version that decided…"));
  void loadPolicies(d, policies);
  return [
    h(
      "section",
      { class: "panel", "aria-labelledby": "outcome-title" },
      h("h2", { id: "outcome-title" }, badge(d.outcome), ` ${d.kind} by ${d.issuer}`),
      h("p", { class: "reason" }, d.reason, d.reason !== d.reason_code ? [" ", h("code", { class: "muted" }, d.reason_code)] : null),
      facts([
        ["Target", targetText(d.target)],
        ["Asset", `issued in ${d.asset_attributes.issuer_jurisdiction}, class ${d.asset_attributes.asset_class}`],
        ["Priority", String(d.priority)],
        ["Decided at", fmtTime(d.decided_at)],
        ["Conflict group", d.group ? (d.group === d.seq ? "decided alone or first of its group" : `decided with the group that began at seq ${d.group}`) : null],
        ["Subject", subjectKind(d) === "expiry" ? "the expiry of a hold" : "an order"],
      ]),
    ),
    o
      ? h(
          "section",
          { class: "panel", "aria-labelledby": "order-title" },
          h("h2", { id: "order-title" }, "The order"),
          facts([
            ["Issuer", o.issuer],
            ["Instruction", [o.instruction.kind, ...instruction.map(([k, v]) => ` · ${k} ${String(v)}`)].join("")],
            ["Legal basis", `${o.legal_basis.instrument}: ${o.legal_basis.reference}`],
            ["Received", fmtTime(o.intake_at)],
            ["Order id", h("code", null, o.id)],
          ]),
        )
      : null,
    h("section", { class: "panel", "aria-labelledby": "policies-title" }, h("h2", { id: "policies-title" }, "Determining policies"), policies),
    h(
      "section",
      { class: "panel states", "aria-labelledby": "state-title" },
      h("h2", { id: "state-title" }, "The target's state"),
      h("div", { class: "columns" }, h("div", null, h("h3", null, "Before"), stateFacts(d.state_before)), h("div", null, h("h3", null, "After"), stateFacts(d.state_after))),
    ),
    h(
      "section",
      { class: "panel", "aria-labelledby": "evidence-title" },
      h("h2", { id: "evidence-title" }, "Evidence"),
      facts([
        ["Record hash", h("code", { class: "hash" }, r.hash)],
        ["Previous record's hash", h("code", { class: "hash" }, d.prev_hash)],
        ["Policy version hash", h("code", { class: "hash" }, d.policy_version)],
      ]),
      verifyPanel(r),
      h("details", null, h("summary", null, "The exact record text (what was hashed)"), h("pre", { class: "code record" }, r.text)),
    ),
  ];
}

async function loadPolicies(d: Decision, out: HTMLElement): Promise<void> {
  try {
    const list = await versions();
    const v: VersionView | undefined = list.versions.find((x) => x.hash === d.policy_version);
    if (!v) {
      replace(out, notice("error", `No stored version has the hash ${d.policy_version}: the decision names a policy version this engine does not hold.`));
      return;
    }
    const detail = await version(v.version);
    const found = new Map<string, FoundPolicy>();
    for (const [file, text] of Object.entries(detail.files)) if (file.endsWith(".cedar")) for (const p of policiesIn(file, text)) found.set(p.id, p);
    const intro = h(
      "p",
      null,
      "Decided by ",
      h("a", { href: `#/policies/versions/${v.version}` }, `policy version ${v.version}`),
      `, stored by ${v.author} on ${fmtTime(v.created_at)}. The text below is that version's.`,
    );
    if (!d.determining_policies.length) {
      const forbids = (d.reason_detail.forbids as string[] | undefined) ?? [];
      replace(
        out,
        intro,
        h("p", null, d.outcome === "REJECTED" && !forbids.length ? "No policy permitted this order, and none was needed to refuse it: an order is refused unless a policy permits it." : "No policy determined this decision."),
        ...forbids.map((id) => policyBlock(id, found.get(id), "forbid that refused it")),
      );
      return;
    }
    replace(out, intro, ...d.determining_policies.map((id) => policyBlock(id, found.get(id), null)));
  } catch (err) {
    replace(out, notice("error", `Could not load the policy version: ${describe(err)}`));
  }
}

function policyBlock(id: string, p: FoundPolicy | undefined, role: string | null): HTMLElement {
  return h(
    "article",
    { class: "rule", "data-policy": id },
    h("h3", null, h("code", null, id), role ? h("span", { class: "muted" }, ` (${role})`) : null, p ? h("span", { class: "muted" }, ` · ${p.file}:${p.line}`) : null),
    p ? h("pre", { class: "code" }, p.text) : notice("error", `The version has no policy with @id("${id}").`),
  );
}

function verifyPanel(r: RawRecord): HTMLElement {
  const out = h("div", { class: "verification", "aria-live": "polite" });
  const pin = h("input", { id: "pin-key", name: "pin", value: localStorage.getItem(PIN_KEY) ?? "", placeholder: "16 hex digits", pattern: "[0-9a-fA-F]{16}", size: 18, autocomplete: "off" });
  pin.addEventListener("change", () => {
    if (pin.value && pin.checkValidity()) localStorage.setItem(PIN_KEY, pin.value.toLowerCase());
    if (!pin.value) localStorage.removeItem(PIN_KEY);
  });
  const button = h("button", { type: "button", class: "primary" }, "Verify");
  const run = async () => {
    if (!webCryptoAvailable()) {
      replace(out, notice("error", "This page is not in a secure context (HTTPS or localhost), so the browser offers no WebCrypto: nothing can be verified here."));
      return;
    }
    button.disabled = true;
    replace(out, notice("info", "Verifying in this browser…"));
    try {
      const pinned = pin.value && pin.checkValidity() ? pin.value : null;
      const v = await verifyDecision(r.seq, r.text, r.hash, pinned);
      replace(out, verification(v, r.seq, run));
      announce(v.ok ? `Verified: decision ${r.seq}.` : `Verification failed for decision ${r.seq}.`);
    } catch (err) {
      replace(out, notice("error", `Could not verify: ${describe(err)}`));
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener("click", run);
  return h(
    "div",
    { class: "verify" },
    h("p", null, "Verify recomputes this record's hash from its exact text, checks that it is a leaf of the tree of the latest signed checkpoint, and checks that checkpoint's Ed25519 signature — all in this browser, with WebCrypto."),
    h("div", { class: "row" }, button, h("label", { for: "pin-key" }, "Expected key id (optional)"), pin),
    out,
  );
}

function verification(v: Verification, seq: number, again: () => void): HTMLElement {
  const needsCheckpoint = v.steps.some((s) => !s.ok && s.title.startsWith("The decision is covered"));
  let publish: Child = null;
  if (needsCheckpoint) {
    const b = h("button", { type: "button" }, "Publish a checkpoint now");
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await api("POST", "/v1/audit/checkpoints");
        again();
      } catch (err) {
        b.replaceWith(notice("error", `Publishing was refused: ${describe(err)}`));
      }
    });
    publish = b;
  }
  return h(
    "div",
    { class: `result ${v.ok ? "ok" : "error"}`, "data-verified": v.ok ? "yes" : "no", role: v.ok ? "status" : "alert" },
    h("h3", null, v.ok ? `Verified: decision ${seq} is in the signed log as recorded` : `Verification FAILED for decision ${seq}`),
    v.ok ? h("p", null, v.summary) : h("p", null, "At least one check failed: do not rely on this record. The failed checks say what does not hold."),
    h(
      "ul",
      { class: "steps" },
      ...v.steps.map((s) => h("li", { class: s.ok ? "ok" : "error" }, h("strong", null, s.ok ? "✓ " : "✗ ", s.title), h("div", { class: "muted" }, s.detail))),
    ),
    publish,
  );
}
