// The policy workspace: the draft's files in an editor that validates as you type, and the
// panels that take a draft to a decision: tests, the diff against the active version, the
// simulation over recorded history, and storing and activating it.

import { api, describe, Problem, type SourceError } from "../api";
import { announce, h, notice, replace, tabs } from "../ui";
import { FileEditor } from "./editor";
import { renderDiff } from "./diffview";
import { storePanel, testsPanel } from "./lifecycle";
import { discardDraft, loadDraft, saveDraft, sortedNames, validFileName, version, versions, type Draft, type Files, type PolicyDiff } from "./model";
import { simulatePanel } from "./simulate";

const VALIDATE_DELAY_MS = 400;

export function workspacePage(main: HTMLElement): () => void {
  let editor: FileEditor | null = null;
  let stopped = false;
  main.append(h("h1", null, "Policy workspace"), h("p", { class: "muted" }, "Loading the active version…"));

  (async () => {
    const list = await versions();
    const active = list.active;
    if (!active) {
      replace(main, h("h1", null, "Policy workspace"), notice("info", "No version is active yet: the engine activates its first version when it first leads."));
      return;
    }
    let draft = loadDraft();
    if (!draft) {
      const base = await version(active.version);
      draft = { base: active.version, files: { ...base.files } };
    }
    const baseFiles = (await version(draft.base)).files;
    if (stopped) return;
    editor = build(main, draft, baseFiles, active.version);
  })().catch((err) => replace(main, h("h1", null, "Policy workspace"), notice("error", `Could not load the policies: ${describe(err)}`)));

  return () => {
    stopped = true;
    editor?.destroy();
  };
}

function build(main: HTMLElement, draft: Draft, baseFiles: Files, activeVersion: number): FileEditor {
  let errors: SourceError[] = [];
  let validation = 0;
  let timer: number | undefined;
  const files = () => draft.files;

  const fileList = h("ul", { class: "files", "aria-label": "Files of the draft" });
  const status = h("p", { class: "validation", role: "status" });
  const problems = h("div", { class: "problems" });
  const editorHost = h("div", { class: "editor-host" });
  const fileTitle = h("h2", { class: "file-title" });
  const draftBar = h("div", { class: "draft-bar" });

  const editor = new FileEditor(editorHost, false, (file, text) => {
    draft.files[file] = text;
    saveDraft(draft);
    renderFiles();
    renderBar();
    schedule();
  });

  function changed(name: string): boolean {
    return baseFiles[name] !== draft.files[name];
  }

  function renderBar() {
    const edited = Object.keys({ ...baseFiles, ...draft.files }).filter((n) => baseFiles[n] !== draft.files[n]).length;
    replace(
      draftBar,
      h(
        "p",
        null,
        `Draft based on version ${draft.base}`,
        draft.base === activeVersion ? " (the active version)" : ` (the active version is now ${activeVersion})`,
        ` · ${edited === 0 ? "no changes yet" : `${edited} file${edited === 1 ? "" : "s"} changed`}. Kept in this browser until you store it.`,
      ),
      h(
        "button",
        {
          type: "button",
          class: "link",
          onclick: async () => {
            if (edited && !confirm("Discard every change in this draft and start again from the active version?")) return;
            discardDraft();
            const fresh = await version(activeVersion);
            draft.base = activeVersion;
            draft.files = { ...fresh.files };
            baseFiles = fresh.files;
            for (const n of Object.keys(draft.files)) editor.forget(n);
            openFile(sortedNames(draft.files)[0]);
            renderFiles();
            renderBar();
            schedule();
          },
        },
        "Discard the draft",
      ),
    );
  }

  function renderFiles() {
    const counts = new Map<string, number>();
    for (const e of errors) counts.set(e.file, (counts.get(e.file) ?? 0) + 1);
    replace(
      fileList,
      ...sortedNames(draft.files).map((name) =>
        h(
          "li",
          null,
          h(
            "button",
            {
              type: "button",
              class: "file",
              "data-file": name,
              "aria-current": editor.file === name ? "true" : null,
              onclick: () => openFile(name),
            },
            name,
            changed(name) ? h("span", { class: "badge changed", title: "Changed in this draft" }, baseFiles[name] === undefined ? "new" : "edited") : null,
            counts.get(name) ? h("span", { class: "badge error", title: "Problems" }, String(counts.get(name))) : null,
          ),
        ),
      ),
    );
  }

  function openFile(name: string) {
    editor.open(name, draft.files[name]);
    fileTitle.textContent = name;
    editor.showErrors(errors);
    renderFiles();
  }

  function renderProblems() {
    if (!errors.length) {
      replace(problems, h("p", null, "No problems: the draft validates against its schema."));
      return;
    }
    replace(
      problems,
      h(
        "ul",
        { class: "problem-list" },
        ...errors.map((e) =>
          h(
            "li",
            null,
            h(
              "button",
              {
                type: "button",
                class: "link",
                onclick: () => {
                  if (draft.files[e.file] !== undefined) {
                    openFile(e.file);
                    if (e.line) editor.reveal(e.line, e.column ?? 1);
                  }
                },
              },
              `${e.file}${e.line ? `:${e.line}:${e.column ?? 1}` : ""}`,
            ),
            " ",
            e.message,
            e.hint ? h("div", { class: "muted" }, e.hint) : null,
          ),
        ),
      ),
    );
  }

  function schedule() {
    window.clearTimeout(timer);
    status.textContent = "Checking…";
    status.className = "validation pending";
    timer = window.setTimeout(validate, VALIDATE_DELAY_MS);
  }

  async function validate() {
    const mine = ++validation;
    try {
      const { body } = await api<{ hash: string; policies: number; test_suites: number }>("POST", "/v1/policies/validate", { body: { files: files() } });
      if (mine !== validation) return;
      errors = [];
      status.textContent = `Valid: ${body.policies} policies, ${body.test_suites} test suites · would be version hash ${body.hash.slice(0, 12)}…`;
      status.className = "validation ok";
    } catch (err) {
      if (mine !== validation) return;
      if (err instanceof Problem && err.slug === "policy-invalid") {
        errors = err.errors;
        status.textContent = `${errors.length} problem${errors.length === 1 ? "" : "s"}: the draft does not validate.`;
        status.className = "validation error";
        announce(status.textContent);
      } else {
        status.textContent = `Could not check the draft: ${describe(err)}`;
        status.className = "validation error";
        return;
      }
    }
    editor.showErrors(errors);
    renderFiles();
    renderProblems();
  }

  const newFile = h("form", {
    class: "new-file",
    onsubmit: (e: Event) => {
      e.preventDefault();
      const input = newFile.querySelector("input") as HTMLInputElement;
      const name = input.value.trim();
      if (!validFileName(name)) {
        input.setCustomValidity("A bundle holds <name>.cedar files and tests/<name>.toml suites (letters, digits, '-', '_', '.').");
        input.reportValidity();
        return;
      }
      if (draft.files[name] === undefined) draft.files[name] = name.endsWith(".toml") ? 'description = ""\n' : "";
      saveDraft(draft);
      input.value = "";
      openFile(name);
      schedule();
    },
  });
  newFile.append(
    h("label", { for: "new-file-name" }, "New file"),
    h("input", { id: "new-file-name", name: "name", placeholder: "eu-new.cedar or tests/eu-new.toml", oninput: (e: Event) => (e.target as HTMLInputElement).setCustomValidity("") }),
    h("button", { type: "submit" }, "Add"),
  );

  const remove = h("button", {
    type: "button",
    class: "link",
    onclick: () => {
      const name = editor.file;
      if (!name || !confirm(`Remove ${name} from the draft?`)) return;
      delete draft.files[name];
      editor.forget(name);
      saveDraft(draft);
      openFile(sortedNames(draft.files)[0]);
      schedule();
    },
  }, "Remove this file");

  const diffOut = h("div", { "aria-live": "polite" });
  const diffButton = h("button", { type: "button", class: "primary" }, `Compare with the active version`);
  diffButton.addEventListener("click", async () => {
    diffButton.disabled = true;
    try {
      const { body } = await api<PolicyDiff>("POST", "/v1/policies/diff", { body: { files: files() } });
      replace(diffOut, renderDiff(body, `version ${activeVersion} (active)`, "this draft"));
    } catch (err) {
      replace(diffOut, notice("error", err instanceof Problem && err.slug === "policy-invalid" ? "The draft does not validate: see Problems." : describe(err)));
    } finally {
      diffButton.disabled = false;
    }
  });

  const panels = tabs("Work on the draft", [
    { id: "problems", title: "Problems", panel: h("div", null, problems) },
    { id: "tests", title: "Tests", panel: testsPanel(files, () => void validate()) },
    { id: "diff", title: "Changes", panel: h("div", null, h("p", null, "Policy by policy, what this draft changes against the active version."), diffButton, diffOut) },
    { id: "simulate", title: "Simulate", panel: simulatePanel(files) },
    {
      id: "store",
      title: "Store and activate",
      panel: storePanel(
        files,
        (stored) => {
          // The draft is now that version: further edits are changes to it.
          draft.base = stored;
          baseFiles = { ...draft.files };
          saveDraft(draft);
          renderFiles();
          renderBar();
        },
        (activated) => {
          activeVersion = activated;
          renderBar();
        },
      ),
    },
  ]);

  replace(
    main,
    h("h1", null, "Policy workspace"),
    draftBar,
    h(
      "div",
      { class: "workspace" },
      h("aside", { class: "file-pane", "aria-label": "Files" }, fileList, newFile),
      h("section", { class: "editor-pane", "aria-labelledby": "editing-title" }, h("div", { class: "editor-head" }, fileTitle, remove), editorHost, status),
    ),
    panels.root,
  );
  fileTitle.id = "editing-title";
  renderBar();
  const first = sortedNames(draft.files)[0];
  openFile(first);
  void validate();
  return editor;
}
