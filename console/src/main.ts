// The console's shell: the header, the navigation by role, and a hash router (so every page has
// an address an auditor can bookmark or send, and the server serves one file).

import { h, replace } from "./ui";
import { has, onSessionChange, session, signOut, type Role } from "./session";
import { signInPage } from "./signin";
import { workspacePage } from "./policies/workspace";
import { versionsPage } from "./policies/versions";
import { auditPage } from "./audit/browser";
import { decisionPage } from "./audit/decision";
import { livePage } from "./live";

/** A page renders into `main` and may return a function that stops what it started. */
export type Page = (main: HTMLElement, route: Route) => void | (() => void);

export interface Route {
  path: string[];
  params: URLSearchParams;
}

interface Entry {
  prefix: string;
  title: string;
  roles: Role[];
  page: Page;
  nav?: string;
}

const ROUTES: Entry[] = [
  { prefix: "policies/versions", title: "Versions and timeline", roles: ["policy_author", "auditor", "admin"], page: versionsPage, nav: "Versions" },
  { prefix: "policies", title: "Policy workspace", roles: ["policy_author"], page: workspacePage, nav: "Draft" },
  { prefix: "audit/decisions", title: "Decision", roles: ["auditor", "admin"], page: decisionPage },
  { prefix: "audit", title: "Audit", roles: ["auditor", "admin"], page: auditPage, nav: "Audit" },
  { prefix: "live", title: "Live", roles: ["auditor", "admin"], page: livePage, nav: "Live" },
];
const NAV_ORDER = ["policies", "policies/versions", "audit", "live"];

let stop: (() => void) | void;

export function parseRoute(): Route {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, q] = hash.split("?", 2);
  return { path: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? "") };
}

export function go(hash: string): void {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function home(): string {
  if (has("policy_author")) return "#/policies";
  if (has("auditor", "admin")) return "#/audit";
  return "#/signin";
}

function header(active: string): void {
  const top = document.getElementById("top");
  if (!top) return;
  const s = session();
  const links = s
    ? NAV_ORDER.map((p) => ROUTES.find((r) => r.prefix === p))
        .filter((r): r is Entry => !!r && !!r.nav && has(...r.roles))
        .map((r) =>
          h("a", { href: `#/${r.prefix}`, "aria-current": r.prefix === active ? "page" : null }, r.nav ?? r.title),
        )
    : [];
  replace(
    top,
    h(
      "div",
      { class: "bar" },
      h("a", { class: "brand", href: "#/" }, "Regulator console"),
      h("nav", { "aria-label": "Main" }, ...links),
      s
        ? h(
            "div",
            { class: "who" },
            h("span", { title: `Roles: ${s.roles.join(", ")}` }, s.sub, h("small", null, ` · ${s.roles.join(", ")}`)),
            h("button", { type: "button", class: "link", onclick: () => signOut(null) }, "Sign out"),
          )
        : null,
    ),
  );
}

function render(): void {
  if (stop) stop();
  stop = undefined;
  const main = document.getElementById("main");
  if (!main) return;
  const route = parseRoute();
  const joined = route.path.join("/");
  if (!session() || joined === "signin") {
    header("");
    document.title = "Sign in · Regulator console";
    main.replaceChildren();
    signInPage(main);
    return;
  }
  const entry = ROUTES.find((r) => joined === r.prefix || joined.startsWith(`${r.prefix}/`));
  if (!entry) {
    location.replace(home());
    return;
  }
  header(entry.nav ? entry.prefix : entry.prefix.split("/")[0]);
  document.title = `${entry.title} · Regulator console`;
  main.replaceChildren();
  if (!has(...entry.roles)) {
    main.appendChild(
      h(
        "section",
        { class: "panel" },
        h("h1", null, entry.title),
        h("p", null, `This page needs one of the roles ${entry.roles.join(", ")}; your token has ${session()?.roles.join(", ") || "none"}.`),
      ),
    );
    return;
  }
  route.path = route.path.slice(entry.prefix.split("/").length);
  stop = entry.page(main, route);
}

window.addEventListener("hashchange", render);
onSessionChange(() => {
  if (!session()) location.hash = "#/signin";
  else render();
});
render();
