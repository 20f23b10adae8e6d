// The live view: the decision feed as Server-Sent Events, and each chain's convergence.
//
// EventSource cannot send an Authorization header, so the feed is read with fetch and parsed
// here; on a drop it reconnects with Last-Event-ID, as the feed is built for, and loses nothing.

import { api, describe, raw } from "./api";
import { badge, fmtInt, fmtTime, h, notice, replace } from "./ui";
import { targetText, type Decision } from "./audit/json";

const SHOWN = 200;
const RECONCILE_MS = 5000;
/** Reconciliation statuses, worst first: what needs a person comes first. */
const STATUS_ORDER = ["diverged", "escalated", "failed", "lagging", "pending", "converged"];

interface ChainSummary {
  chain: string;
  targets: number;
  converged: number;
  pending: number;
  lagging: number;
  diverged: number;
  failed: number;
  escalated: number;
}

interface TargetReport {
  chain: string;
  asset: string;
  holder?: string | null;
  status: string;
  version: number;
  decided_at?: string | null;
  differences: string[];
  divergences: number;
}

/** Reads `text/event-stream` frames from a body; calls `onEvent` per complete event. */
export async function readEvents(body: ReadableStream<Uint8Array<ArrayBuffer>>, onEvent: (id: string | null, event: string, data: string) => void): Promise<void> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end: number;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let id: string | null = null;
      let event = "message";
      const data: string[] = [];
      for (const line of frame.split(/\r?\n/)) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "id") id = val;
        else if (name === "event") event = val;
        else if (name === "data") data.push(val);
      }
      if (data.length) onEvent(id, event, data.join("\n"));
    }
  }
}

export function livePage(main: HTMLElement): () => void {
  const abort = new AbortController();
  let last = 0;
  let received = 0;
  const feedState = h("p", { class: "muted", role: "status" }, "Connecting…");
  const feed = h("ol", { class: "feed", "aria-label": "Decisions, newest first" });
  const chains = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const fromSeq = h("input", { type: "number", min: 0, id: "live-from", name: "from", inputmode: "numeric" });
  let restart: (() => void) | null = null;

  main.append(
    h("h1", null, "Live"),
    h(
      "div",
      { class: "live" },
      h(
        "section",
        { class: "panel", "aria-labelledby": "feed-title" },
        h("h2", { id: "feed-title" }, "Decision feed"),
        h(
          "form",
          {
            class: "row",
            onsubmit: (e: Event) => {
              e.preventDefault();
              last = Number(fromSeq.value) || 0;
              feed.replaceChildren();
              restart?.();
            },
          },
          h("label", { for: "live-from" }, "Replay from after seq"),
          fromSeq,
          h("button", { type: "submit" }, "Replay"),
        ),
        feedState,
        feed,
      ),
      h("section", { class: "panel", "aria-labelledby": "chains-title" }, h("h2", { id: "chains-title" }, "Chains: convergence"), chains),
    ),
  );

  const show = (seq: number, d: Decision) => {
    const item = h(
      "li",
      { "data-seq": seq },
      h("a", { href: `#/audit/decisions/${seq}` }, `#${seq}`),
      " ",
      badge(d.outcome),
      ` ${d.kind} by ${d.issuer} on ${targetText(d.target)}`,
      h("small", { class: "muted" }, ` · ${fmtTime(d.decided_at)}${d.determining_policies.length ? ` · ${d.determining_policies.join(", ")}` : ""}`),
    );
    feed.prepend(item);
    while (feed.children.length > SHOWN) feed.lastElementChild?.remove();
  };

  let session = new AbortController();
  const connect = async () => {
    let delay = 500;
    while (!abort.signal.aborted) {
      session = new AbortController();
      const signal = AbortSignal.any([abort.signal, session.signal]);
      try {
        const response = await raw("GET", "/v1/decisions/stream", { headers: { accept: "text/event-stream", "last-event-id": String(last) }, signal });
        feedState.textContent = `Connected: decisions after seq ${last} appear here as they are made.`;
        delay = 500;
        await readEvents(response.body!, (id, event, data) => {
          if (event !== "decision" || !id) return;
          last = Number(id);
          received++;
          show(last, JSON.parse(data) as Decision);
          feedState.textContent = `Connected · ${fmtInt(received)} decisions received, the last seq ${last}.`;
        });
      } catch (err) {
        if (abort.signal.aborted) return;
        if (session.signal.aborted) continue;
        feedState.textContent = `Disconnected (${describe(err)}); reconnecting after seq ${last}…`;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  };
  restart = () => session.abort();

  // Start at the latest signed checkpoint, so opening the page does not replay the whole log.
  api<{ tree_size: number }>("GET", "/v1/audit/checkpoints/latest")
    .then(({ body }) => (last = Math.max(0, body.tree_size - 20)))
    .catch(() => (last = 0))
    .finally(() => {
      fromSeq.value = String(last);
      void connect();
    });

  const reconcile = async () => {
    try {
      const { body } = await api<{ chains: ChainSummary[]; targets: TargetReport[] }>("GET", "/v1/reconciliation", { signal: abort.signal });
      replace(chains, renderChains(body.chains, body.targets));
    } catch (err) {
      if (!abort.signal.aborted) replace(chains, notice("error", `Reconciliation unavailable: ${describe(err)}`));
    }
  };
  void reconcile();
  const timer = window.setInterval(reconcile, RECONCILE_MS);

  return () => {
    abort.abort();
    window.clearInterval(timer);
  };
}

function renderChains(summaries: ChainSummary[], targets: TargetReport[]): HTMLElement {
  if (!summaries.length) return h("p", null, "No chain reports what it applies yet.");
  const rank = (s: string) => {
    const i = STATUS_ORDER.indexOf(s);
    return i < 0 ? STATUS_ORDER.length : i;
  };
  return h(
    "div",
    null,
    ...summaries.map((c) => {
      const mine = targets.filter((t) => t.chain === c.chain).sort((a, b) => rank(a.status) - rank(b.status) || b.divergences - a.divergences);
      return h(
        "article",
        { class: "chain", "data-chain": c.chain },
        h("h3", null, c.chain, h("small", { class: "muted" }, ` · ${fmtInt(c.targets)} targets`)),
        h(
          "ul",
          { class: "status-counts" },
          ...STATUS_ORDER.map((s) => h("li", null, badge(s), ` ${fmtInt((c as unknown as Record<string, number>)[s] ?? 0)}`)),
        ),
        mine.length
          ? h(
              "div",
              { class: "scroll" },
              h(
                "table",
                null,
                h("caption", { class: "visually-hidden" }, `Targets on ${c.chain}, diverged first`),
                h("thead", null, h("tr", null, ...["Status", "Target", "Decided version", "Differences"].map((t) => h("th", { scope: "col" }, t)))),
                h(
                  "tbody",
                  null,
                  ...mine.slice(0, 100).map((t) =>
                    h(
                      "tr",
                      { class: t.status },
                      h("td", null, badge(t.status), t.divergences ? h("small", null, ` ×${t.divergences}`) : null),
                      h("td", null, targetText(t)),
                      h("td", { class: "num" }, String(t.version)),
                      h("td", null, t.differences.join("; ")),
                    ),
                  ),
                ),
              ),
            )
          : null,
      );
    }),
  );
}
