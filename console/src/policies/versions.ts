// The versions and their timeline: who stored what and why, who activated which version and
// from which seq, activation and rollback; and any version's files, read-only.

import { api, describe } from "../api";
import { has } from "../session";
import { fmtTime, h, notice, replace, type Child } from "../ui";
import { renderDiff } from "./diffview";
import { FileEditor } from "./editor";
import { activate, rollbackControl } from "./lifecycle";
import { activations, saveDraft, sortedNames, version, versions, type ActivationView, type PolicyDiff, type VersionView } from "./model";
import type { Route } from "../main";

export function versionsPage(main: HTMLElement, route: Route): void | (() => void) {
  const n = Number(route.path[0]);
  if (route.path.length && Number.isInteger(n) && n > 0) return browse(main, n);
  main.append(h("h1", null, "Versions and timeline"));
  // What an activation or rollback answered stays above the tables they reload.
  const out = h("div", { "aria-live": "polite" });
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  main.append(out, body);
  const load = async () => {
    const [list, history] = await Promise.all([versions(), activations()]);
    replace(body, ...render(list.versions, history, list.active?.version ?? null, out, load));
  };
  load().catch((err) => replace(body, notice("error", describe(err))));
}

function render(all: VersionView[], history: ActivationView[], active: number | null, out: HTMLElement, reload: () => Promise<void>): Child[] {
  const author = has("policy_author");
  const rows = all.map((v) => {
    const actions: Child[] = [h("a", { href: `#/policies/versions/${v.version}` }, "Browse")];
    if (author && v.version !== active) {
      const b = h("button", { type: "button", class: "link" }, `Activate`);
      b.addEventListener("click", () => {
        b.disabled = true;
        void activate(`/v1/policies/versions/${v.version}/activate`, undefined, out, () => void reload()).finally(() => (b.disabled = false));
      });
      actions.push(" · ", b);
    }
    return h(
      "tr",
      { "data-version": v.version },
      h("td", { class: "num" }, String(v.version), v.version === active ? [" ", h("span", { class: "badge active" }, "active")] : null),
      h("td", null, v.message),
      h("td", null, v.author),
      h("td", null, fmtTime(v.created_at)),
      h("td", null, h("code", { title: v.hash }, `${v.hash.slice(0, 12)}…`)),
      h("td", null, ...actions),
    );
  });

  type Event = { at: string; text: Child[] };
  const events: Event[] = [
    ...all.map((v) => ({ at: v.created_at, text: [h("strong", null, v.author), ` stored version ${v.version}: “${v.message}”`] })),
    ...history.map((a, i) => {
      const replaced = history[i + 1];
      const again = history.slice(i + 1).some((b) => b.version === a.version);
      return {
        at: a.recorded_at,
        text: [
          h("strong", null, a.actor),
          ` activated version ${a.version} at seq ${a.seq}`,
          replaced ? ` (replacing version ${replaced.version}${again ? "; it had been active before" : ""})` : " (the first activation)",
        ],
      };
    }),
  ].sort((a, b) => b.at.localeCompare(a.at));

  return [
    h("h2", null, "Versions"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "versions" },
        h("thead", null, h("tr", null, ...["Version", "Message", "Stored by", "When", "Hash", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", null, ...rows),
      ),
    ),
    author ? [h("h2", null, "Roll back"), rollbackControl(history, out, () => void reload())] : null,
    h("h2", null, "Timeline"),
    h("ol", { class: "timeline", reversed: true }, ...events.map((e) => h("li", null, h("time", { datetime: e.at }, fmtTime(e.at)), " ", ...e.text))),
  ];
}

function browse(main: HTMLElement, n: number): () => void {
  let editor: FileEditor | null = null;
  main.append(h("p", null, h("a", { href: "#/policies/versions" }, "← Versions")), h("h1", null, `Version ${n}`));
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  main.append(body);
  (async () => {
    const [v, list] = await Promise.all([version(n), versions()]);
    const names = sortedNames(v.files);
    const host = h("div", { class: "editor-host" });
    const title = h("h2", { class: "file-title", id: "browse-title" });
    const buttons = names.map((name) =>
      h("li", null, h("button", { type: "button", class: "file", "data-file": name, onclick: () => open(name) }, name)),
    );
    const open = (name: string) => {
      editor?.open(name, v.files[name]);
      title.textContent = name;
      buttons.forEach((b) => {
        const button = b.querySelector("button") as HTMLButtonElement;
        if (button.dataset.file === name) button.setAttribute("aria-current", "true");
        else button.removeAttribute("aria-current");
      });
    };
    const diffOut = h("div");
    const active = list.active?.version;
    const compare =
      active && active !== n
        ? h("button", {
            type: "button",
            onclick: async () => {
              try {
                const { body } = await api<PolicyDiff>("GET", `/v1/policies/diff?from=${active}&to=${n}`);
                replace(diffOut, renderDiff(body, `version ${active} (active)`, `version ${n}`));
              } catch (err) {
                replace(diffOut, notice("error", describe(err)));
              }
            },
          }, `Compare with version ${active} (active)`)
        : null;
    const startDraft = has("policy_author")
      ? h("button", {
          type: "button",
          onclick: () => {
            if (!confirm(`Replace your draft with version ${n}'s files?`)) return;
            saveDraft({ base: n, files: { ...v.files } });
            location.hash = "#/policies";
          },
        }, "Start a draft from this version")
      : null;
    replace(
      body,
      h(
        "p",
        null,
        `Stored by ${v.author} on ${fmtTime(v.created_at)}: “${v.message}”`,
        n === active ? [" ", h("span", { class: "badge active" }, "active")] : null,
        h("br"),
        h("code", null, v.hash),
      ),
      h("div", { class: "actions" }, compare, startDraft),
      diffOut,
      h(
        "div",
        { class: "workspace" },
        h("aside", { class: "file-pane", "aria-label": "Files" }, h("ul", { class: "files" }, ...buttons)),
        h("section", { class: "editor-pane", "aria-labelledby": "browse-title" }, title, host),
      ),
    );
    editor = new FileEditor(host, true, () => undefined);
    open(names[0]);
  })().catch((err) => replace(body, notice("error", describe(err))));
  return () => editor?.destroy();
}
