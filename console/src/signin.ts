// Sign-in: paste a token; or, when the engine runs in development mode on loopback, mint one for
// any subject and roles (clearly marked: it exists only there).

import { api, describe } from "./api";
import { claims, ROLES, signIn, takeSignOutReason, type Role } from "./session";
import { field, h, notice, replace } from "./ui";

const ROLE_HELP: Record<Role, string> = {
  policy_author: "write, test, simulate and activate policies",
  auditor: "read, verify and export the decision log",
  admin: "register assets, manage webhooks, read the log",
  regulator: "submit orders as an authority",
  coordinator: "take pre-emption leases",
  chain: "read a chain's own feed",
  monitor: "scrape metrics",
};

function after(): void {
  location.hash = "#/";
}

export function signInPage(main: HTMLElement): void {
  const why = takeSignOutReason();
  const status = h("div", { "aria-live": "polite" });
  const token = h("textarea", { name: "token", rows: 4, spellcheck: "false", autocomplete: "off", required: true });
  const pasted = h(
    "form",
    {
      class: "panel",
      "aria-labelledby": "signin-token",
      onsubmit: (e: Event) => {
        e.preventDefault();
        try {
          claims(token.value);
          signIn(token.value);
          after();
        } catch (err) {
          replace(status, notice("error", `That is not a usable token: ${(err as Error).message}.`));
        }
      },
    },
    h("h2", { id: "signin-token" }, "Sign in with a token"),
    h("p", null, "Paste the bearer token (a JWT) you were issued. It stays in this browser tab only."),
    field("Token", token, "For example the output of: regulator token --sub alice --roles policy_author"),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  const dev = h("div");
  main.append(h("h1", null, "Sign in"), ...(why ? [notice("info", why)] : []), status, h("div", { class: "columns" }, pasted, dev));

  api<{ dev_sign_in: boolean }>("GET", "/v1/console/config", { anonymous: true })
    .then(({ body }) => {
      if (body.dev_sign_in) replace(dev, devSignIn(status));
    })
    .catch(() => {
      // An engine without the console's config endpoint offers token sign-in only.
    });
}

function devSignIn(status: HTMLElement): HTMLElement {
  const subject = h("input", { name: "subject", value: "alice", required: true, autocomplete: "username" });
  const boxes = ROLES.map((role) =>
    h(
      "label",
      { class: "check" },
      h("input", { type: "checkbox", name: "role", value: role, checked: role === "policy_author" }),
      ` ${role} `,
      h("small", { class: "muted" }, ROLE_HELP[role]),
    ),
  );
  return h(
    "form",
    {
      class: "panel dev",
      "aria-labelledby": "signin-dev",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const roles = boxes
          .map((b) => b.querySelector("input") as HTMLInputElement)
          .filter((i) => i.checked)
          .map((i) => i.value);
        if (roles.length === 0) {
          replace(status, notice("error", "Pick at least one role."));
          return;
        }
        try {
          const { body } = await api<{ token: string }>("POST", "/v1/dev/sign-in", {
            anonymous: true,
            body: { subject: subject.value.trim(), roles },
          });
          signIn(body.token);
          after();
        } catch (err) {
          replace(status, notice("error", `Development sign-in failed: ${describe(err)}`));
        }
      },
    },
    h("h2", { id: "signin-dev" }, h("span", { class: "badge dev" }, "Development only"), " Development sign-in"),
    h(
      "p",
      null,
      "This engine runs in development mode on a loopback address, so it will mint a token for any subject and roles. A production engine has no such door.",
    ),
    field("Subject", subject, "Who you act as: a person, or an authority such as US-SEC"),
    h("fieldset", null, h("legend", null, "Roles"), ...boxes),
    h("button", { type: "submit", class: "primary" }, "Sign in for development"),
  );
}
