// DOM building without a framework. The console's Content-Security-Policy forbids inline
// styles, so nothing here ever sets a `style` attribute: looks come from classes in console.css.

export type Child = Node | string | number | null | undefined | false | Child[];
type Handler = (event: Event) => void;
export type Attrs = Record<string, string | number | boolean | Handler | null | undefined>;

/** `h("button", {class: "primary", onclick: go}, "Run")`: an element with attributes and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "style") throw new Error("inline styles are refused by the CSP: use a class");
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(value);
    } else if (name === "checked" && "checked" in el) {
      (el as HTMLInputElement).checked = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `el`. */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** Says `text` to screen readers (the page's polite live region). */
export function announce(text: string): void {
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}

/** A short-lived status line: `kind` is `ok`, `error` or `info`. */
export function notice(kind: "ok" | "error" | "info", ...children: Child[]): HTMLElement {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  // UTC, to the second: auditors compare these with the log, which is in UTC.
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function fmtInt(n: number): string {
  return n.toLocaleString("en-US");
}

/** A row of tabs over panels, with arrow-key navigation (WAI-ARIA tabs pattern). */
export function tabs(
  label: string,
  items: { id: string; title: string; panel: HTMLElement }[],
  onSelect?: (id: string) => void,
): { root: HTMLElement; select: (id: string) => void } {
  const list = h("div", { role: "tablist", "aria-label": label, class: "tabs" });
  const buttons: HTMLButtonElement[] = [];
  const panels = h("div", { class: "tab-panels" });
  const select = (id: string, focus = false) => {
    items.forEach((item, i) => {
      const on = item.id === id;
      buttons[i].setAttribute("aria-selected", String(on));
      buttons[i].tabIndex = on ? 0 : -1;
      item.panel.hidden = !on;
      if (on && focus) buttons[i].focus();
    });
    onSelect?.(id);
  };
  items.forEach((item, i) => {
    const button = h(
      "button",
      {
        role: "tab",
        id: `tab-${item.id}`,
        "aria-controls": `panel-${item.id}`,
        type: "button",
        onclick: () => select(item.id),
        onkeydown: (e: Event) => {
          const key = (e as KeyboardEvent).key;
          const step = key === "ArrowRight" ? 1 : key === "ArrowLeft" ? -1 : 0;
          if (key === "Home") select(items[0].id, true);
          else if (key === "End") select(items[items.length - 1].id, true);
          else if (step) select(items[(i + step + items.length) % items.length].id, true);
          else return;
          e.preventDefault();
        },
      },
      item.title,
    );
    buttons.push(button);
    list.appendChild(button);
    item.panel.id = `panel-${item.id}`;
    item.panel.setAttribute("role", "tabpanel");
    item.panel.setAttribute("aria-labelledby", `tab-${item.id}`);
    item.panel.tabIndex = 0;
    panels.appendChild(item.panel);
  });
  select(items[0].id);
  return { root: h("div", { class: "tabbed" }, list, panels), select: (id) => select(id) };
}

/** A label and its input, tied together by id. */
export function field(
  label: string,
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
  hint?: string,
): HTMLElement {
  if (!input.id) input.id = `f-${Math.random().toString(36).slice(2, 9)}`;
  const children: Child[] = [h("label", { for: input.id }, label), input];
  if (hint) {
    const hintId = `${input.id}-hint`;
    input.setAttribute("aria-describedby", hintId);
    children.push(h("small", { id: hintId, class: "muted" }, hint));
  }
  return h("div", { class: "field" }, ...children);
}

export function select(name: string, options: [string, string][], value = ""): HTMLSelectElement {
  return h(
    "select",
    { name },
    ...options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

/** A definition list from pairs; null values are left out. */
export function facts(pairs: [string, Child][]): HTMLElement {
  return h(
    "dl",
    { class: "facts" },
    ...pairs
      .filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v))),
  );
}

export function badge(text: string, kind = text.toLowerCase()): HTMLElement {
  return h("span", { class: `badge ${kind}` }, text);
}
